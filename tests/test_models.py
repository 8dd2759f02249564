"""Every registered model passes the same checks (timm-style), plus the lesson network's specifics."""
import math

import pytest
import torch
import torch.nn.functional as F

from mnist_cnn.models import count_parameters, create_model, model_names
from mnist_cnn.inference import to_input
from synthetic import toy_split

ALL = model_names()


@pytest.fixture(scope="module")
def tiny_batch():
    split = toy_split(20, seed=5)
    return to_input(split.images, False), split.labels


def test_registry_has_the_lesson_and_best_networks():
    assert {"seed", "best"} <= set(ALL)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("n", [1, 7])
def test_output_shape_and_finite(name, n):
    torch.manual_seed(0)
    model = create_model(name)
    x = torch.rand(n, 1, 28, 28)
    for training in (True, False):
        model.train(training)
        out = model(x)
        assert out.shape == (n, 10) and out.dtype == torch.float32
        assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", ALL)
def test_other_class_counts_and_channels(name):
    out = create_model(name, num_classes=26, in_channels=3).eval()(torch.rand(2, 3, 28, 28))
    assert out.shape == (2, 26)


@pytest.mark.parametrize("name", ALL)
def test_every_parameter_gets_a_gradient(name, tiny_batch):
    torch.manual_seed(0)
    model = create_model(name).train()
    x, y = tiny_batch
    F.cross_entropy(model(x), y).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, pname


@pytest.mark.parametrize("name", ALL)
def test_overfits_a_tiny_batch(name, tiny_batch):
    """20 toy images learned to 100% within 200 Adam steps.

    Judged in training mode (batch-norm layers use the batch's statistics): eval mode would also
    wait for BN's running averages to catch up, which measures BN momentum, not learning.
    """
    torch.manual_seed(0)
    model = create_model(name).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    x, y = tiny_batch
    for step in range(1, 201):
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 5 == 0 and bool((logits.argmax(1) == y).all()) and loss.item() < 0.1:
            break
    else:
        pytest.fail(f"{name} did not fit 20 images in 200 steps (last loss {loss.item():.3f})")


@pytest.mark.parametrize("name", ALL)
def test_init_is_deterministic_per_seed(name):
    def weights(seed):
        torch.manual_seed(seed)
        return create_model(name).state_dict()

    a, b, c = weights(0), weights(0), weights(1)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


# ------------------------------------------------------------- the lesson's network
def test_seed_parameter_count_layer_by_layer():
    model = create_model("seed")
    counts = {name: count_parameters(layer) for name, layer in model.named_children() if count_parameters(layer)}
    assert counts == {"conv1": 5 * 5 * 1 * 6 + 6, "conv2": 5 * 5 * 6 * 16 + 16,
                      "fc1": 784 * 128 + 128, "fc2": 128 * 10 + 10}
    assert count_parameters(model) == 104_342


def test_seed_layer_output_sizes_same_padding():
    model = create_model("seed").eval()
    x, sizes = torch.rand(2, 1, 28, 28), {}
    for name, layer in model.named_children():
        x = layer(x)
        sizes[name] = tuple(x.shape[1:])
    assert sizes["conv1"] == (6, 28, 28) and sizes["pool1"] == (6, 14, 14)
    assert sizes["conv2"] == (16, 14, 14) and sizes["pool2"] == (16, 7, 7)
    assert sizes["flatten"] == (784,) and sizes["fc1"] == (128,) and sizes["fc2"] == (10,)


def test_seed_init_is_the_lessons_truncated_normal():
    torch.manual_seed(0)
    model = create_model("seed")
    # A normal(0, 0.05) redrawn beyond 2 stddev has std 0.05 * 0.8796 (truncation at +-2 sigma).
    trunc_std = 0.05 * math.sqrt(1 - 4 * math.exp(-2) / math.sqrt(2 * math.pi) / math.erf(2 / math.sqrt(2)))
    assert math.isclose(trunc_std, 0.05 * 0.88, rel_tol=2e-3)
    for name in ("conv1", "conv2", "fc1", "fc2"):
        layer = getattr(model, name)
        w = layer.weight.detach()
        assert w.abs().max() <= 0.1, name
        assert torch.all(layer.bias == 0.05), name
        # Standard error of a std estimate ~ std / sqrt(2n): 5 of those, at least 2%.
        tolerance = max(0.02, 5 / math.sqrt(2 * w.numel()))
        assert math.isclose(w.std().item(), trunc_std, rel_tol=tolerance), (name, w.std().item())
        assert abs(w.mean().item()) < 5 * trunc_std / math.sqrt(w.numel()), name
