"""The `best` recipe's pieces: batched affine augmentation, EMA weights, test-time views, and a
bit-exact resume with both switched on."""
import math

import pytest
import torch
from torch import nn

from mnist_cnn import config as cfg
from mnist_cnn.augment import augment, elastic_field, random_affine, random_elastic, tta_views
from mnist_cnn.checkpoint import load_checkpoint
from mnist_cnn.cli import main
from mnist_cnn.ema import EMA
from mnist_cnn.errors import UsageError
from mnist_cnn.inference import load_classifier, to_input
from mnist_cnn.train import TrainingInterrupted, train
from synthetic import toy_dataset

QUIET = dict(print_fn=lambda s: None, progress=False)


@pytest.fixture(scope="module")
def toy():
    return toy_dataset()


def test_affine_is_per_image_in_range_and_keeps_layout(toy):
    x = to_input(toy.train.images[:1].repeat(8, 1, 1, 1), channels_last=True)  # 8 copies of one image
    torch.manual_seed(0)
    out = augment(x, "affine")
    assert out.shape == x.shape and out.dtype == torch.float32
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert out.min() >= 0 and out.max() <= 1
    # Every copy got its own warp: no two outputs equal, none equal to the input.
    flat = out.flatten(1)
    assert torch.cdist(flat, flat).add(torch.eye(8) * 1e9).min() > 1
    assert (flat - x.flatten(1)).abs().sum(1).min() > 1
    # Small warps: ink mass changes at most by the zoom squared (1.1^2), plus interpolation blur.
    mass_ratio = out.sum((1, 2, 3)) / x.sum((1, 2, 3))
    assert mass_ratio.min() > 0.75 and mass_ratio.max() < 1.3
    torch.manual_seed(0)
    assert torch.equal(augment(x, "affine"), out)  # reproducible from torch's RNG state
    assert augment(x, "none") is x


def test_zero_magnitude_affine_is_the_identity(toy):
    x = to_input(toy.train.images[:4], channels_last=False)
    assert torch.allclose(random_affine(x, degrees=0, scale=0, shift_pixels=0), x, atol=1e-6)


def test_a_2_pixel_shift_moves_the_ink_2_pixels():
    x = torch.zeros(1, 1, 28, 28)
    x[0, 0, 10:14, 10:14] = 1
    torch.manual_seed(0)
    u = torch.rand(1, 4) * 2 - 1  # what random_affine draws first, to know the shift it picks
    torch.manual_seed(0)
    out = random_affine(x, degrees=0, scale=0, shift_pixels=2)
    ys, xs = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
    com = lambda t: ((t[0, 0] * xs).sum() / t.sum(), (t[0, 0] * ys).sum() / t.sum())  # noqa: E731
    (x0, y0), (x1, y1) = com(x), com(out)
    # theta maps output to input coordinates, so the content moves by MINUS the drawn shift.
    assert math.isclose(x1 - x0, -2 * u[0, 2].item(), abs_tol=0.05)
    assert math.isclose(y1 - y0, -2 * u[0, 3].item(), abs_tol=0.05)


def test_elastic_is_the_affine_warp_plus_a_smooth_field_of_about_1_4_pixels(toy):
    x = to_input(toy.train.images[:1].repeat(8, 1, 1, 1), channels_last=True)
    torch.manual_seed(0)
    out = augment(x, "elastic")
    assert out.shape == x.shape and out.is_contiguous(memory_format=torch.channels_last)
    assert out.min() >= 0 and out.max() <= 1
    flat = out.flatten(1)
    assert torch.cdist(flat, flat).add(torch.eye(8) * 1e9).min() > 1  # every copy its own warp
    torch.manual_seed(0)
    assert torch.equal(augment(x, "elastic"), out)  # reproducible from torch's RNG state
    # It draws the affine warp first, so with no elastic part it IS the affine warp.
    torch.manual_seed(1)
    plain = random_affine(x)
    torch.manual_seed(1)
    assert torch.allclose(random_elastic(x, alpha=0), plain, atol=1e-6)
    torch.manual_seed(1)
    assert (random_elastic(x) - plain).abs().sum() > 1


def test_elastic_field_has_simards_size_and_smoothness():
    torch.manual_seed(0)
    d = elastic_field(500, 28, 28)                       # (N, 2, H, W) pixels, alpha 34, sigma 4
    assert d.shape == (500, 2, 28, 28)
    inner = d[:, :, 8:20, 8:20]
    assert 1.0 < inner.std() < 1.8                       # ~1.4 px: bends strokes, keeps the digit
    # Smooth: neighbouring pixels move almost together (white noise would differ by ~sqrt(2) std).
    step = (inner[..., 1:] - inner[..., :-1]).std()
    assert step < 0.2 * inner.std()
    assert d[:, 0].flatten(1).std(1).min() > 0          # a fresh field per image


def test_tta_views_are_the_image_and_four_one_pixel_shifts():
    x = torch.arange(2 * 28 * 28, dtype=torch.float32).reshape(2, 1, 28, 28)
    views = tta_views(x)
    assert len(views) == 5 and views[0] is x
    up, down, left, right = views[1:]
    assert torch.equal(up[..., :27, :], x[..., 1:, :]) and torch.all(up[..., 27, :] == 0)
    assert torch.equal(down[..., 1:, :], x[..., :27, :]) and torch.all(down[..., 0, :] == 0)
    assert torch.equal(left[..., :, :27], x[..., :, 1:]) and torch.all(left[..., :, 27] == 0)
    assert torch.equal(right[..., :, 1:], x[..., :, :27])


def test_ema_follows_the_formula_for_parameters_and_batchnorm_buffers():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    ema = EMA(model, decay=0.9)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model[0].weight.add_(1.0)
    model.train()(torch.randn(5, 3))  # moves BN running stats, counts one batch
    ema.update(model, step=1)
    d = min(0.9, 2 / 11)  # the warm-up decay at step 1
    now = model.state_dict()
    for k, v in ema.state_dict().items():
        if v.dtype.is_floating_point:
            assert torch.allclose(v, d * start[k] + (1 - d) * now[k], atol=1e-6), k
        else:
            assert torch.equal(v, now[k]), k  # num_batches_tracked copied
    for _ in range(200):
        ema.update(model, step=1000)  # decay 0.9 from here on: converges to the live weights
    assert torch.allclose(ema.model[0].weight, model[0].weight, atol=1e-6)
    assert not any(p.requires_grad for p in ema.model.parameters())


def small(**kw):
    # 300 images / 50 = 6 steps an epoch.
    return cfg.make_config("default", **{"epochs": 2, "batch_size": 50, "train_subset": 300, "checkpoint_every": 4,
                                         "augment": "affine", "ema": 0.9, **kw})


def test_resume_with_augmentation_and_ema_is_bit_identical(toy, tmp_path):
    # Bit-identity on one machine: both runs are made here, on this CPU, with the same threads.
    config = small()
    full = train(config, out_dir=tmp_path, name="full", dataset=toy, **QUIET)
    with pytest.raises(TrainingInterrupted):  # at step 8 = mid-epoch 2, after the epoch-1 checkpoint
        train(config, out_dir=tmp_path, name="cut", dataset=toy, stop_after_steps=8, **QUIET)
    resumed = train(resume=tmp_path / "cut", dataset=toy, **QUIET)
    a, b = load_checkpoint(tmp_path / "full" / "checkpoint.pt"), load_checkpoint(tmp_path / "cut" / "checkpoint.pt")
    for part in ("model", "ema"):
        for key, value in a[part].items():
            assert torch.equal(value, b[part][key]), (part, key)
    assert [r.validation_accuracy for r in full.history] == [r.validation_accuracy for r in resumed.history]


def test_ema_weights_are_validated_and_loaded_for_evaluation(toy, tmp_path):
    result = train(small(train_subset=0), out_dir=tmp_path, name="run", dataset=toy, **QUIET)
    state = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    loaded = load_classifier(tmp_path / "run", "cpu").model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state["ema"].items())
    assert not all(torch.equal(state["model"][k], v) for k, v in state["ema"].items())
    assert all(torch.equal(result.model.state_dict()[k], v) for k, v in state["ema"].items())
    assert result.history[-1].validation_accuracy > 0.8  # the toy task is easy, EMA must not break it


def test_best_preset_trains_end_to_end_on_toy_data(toy, tmp_path):
    config = cfg.make_config("best", epochs=1, batch_size=50, train_subset=200)
    assert (config.model, config.augment, config.label_smoothing) == ("best", "affine", 0.1)
    assert config.validation_size == 1000  # trains on 59,000 of the 60,000 official training images
    assert config.ema > 0
    result = train(config, out_dir=tmp_path, name="best", dataset=toy, **QUIET)
    assert math.isfinite(result.history[-1].validation_loss)
    assert load_checkpoint(tmp_path / "best" / "checkpoint.pt")["ema"] is not None


def test_bad_recipe_values_are_one_line_errors(capsys):
    with pytest.raises(UsageError, match="ema must be a decay"):
        cfg.make_config("best", ema=1.0)
    with pytest.raises(UsageError, match="augment must be one of"):
        cfg.make_config("default", augment="cutout")
    assert main(["train", "--dataset", "cifar10"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown data set 'cifar10'" in err and "fashion-mnist" in err
