"""Issue 16's pieces: data-set-aware augmentation (flip, crop, erase), the `resnet` network's shape
options, and the per-data-set presets. The invariant that matters most: digits are never flipped."""
import math

import pytest
import torch

from mnist_cnn import config as cfg
from mnist_cnn.augment import (COMBINATIONS, CROP_PAD, ERASE_AREA, FLIP_PARTS, PARTS, augment, erase_boxes,
                               parse_augment, random_crop, random_erase, random_flip, tta_views)
from mnist_cnn.evaluate import classifier_log_probs
from mnist_cnn.cli import main
from mnist_cnn.data.registry import DATASETS
from mnist_cnn.errors import UsageError
from mnist_cnn.models import count_parameters, create_model, model_names, shape_options
from mnist_cnn.inference import load_classifier
from mnist_cnn.train import train
from synthetic import toy_dataset

QUIET = dict(print_fn=lambda s: None, progress=False)
NOT_SYMMETRIC = [name for name, spec in DATASETS.items() if not spec.flip_symmetric]
FLIPPING = [v for v in PARTS + tuple(COMBINATIONS) if set(parse_augment(v)) & set(FLIP_PARTS)]


def batch(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 28, 28, generator=g)


# ------------------------------------------------------------- flips never reach digits
def test_digits_and_letters_are_not_marked_mirror_symmetric():
    assert {"mnist", "kmnist", "emnist-digits"} <= set(NOT_SYMMETRIC)
    assert DATASETS["fashion-mnist"].flip_symmetric
    assert FLIPPING == ["flip", "fashion"]


@pytest.mark.parametrize("dataset", NOT_SYMMETRIC)
@pytest.mark.parametrize("value", FLIPPING + ["crop+flip", "erase+flip+affine"])
def test_flip_augmentation_is_refused_for_digit_data_sets(dataset, value):
    with pytest.raises(UsageError, match="mirrors images left-right") as e:
        cfg.make_config("default", dataset=dataset, augment=value)
    assert "\n" not in str(e.value)


def test_flip_is_refused_for_folder_data_sets_whose_symmetry_is_unknown():
    with pytest.raises(UsageError, match="mirrors images left-right"):
        cfg.make_config("default", dataset="folder", data_dir="/nonexistent", augment="flip")


@pytest.mark.parametrize("preset", cfg.preset_names())
@pytest.mark.parametrize("dataset", NOT_SYMMETRIC)
def test_no_preset_flips_a_digit_data_set(preset, dataset):
    """Every preset, asked for a digit data set, is either refused or resolves to flip-free augmentation."""
    try:
        config = cfg.make_config(preset, dataset=dataset)
    except UsageError as e:
        assert "mirrors images left-right" in str(e)
        return
    assert not set(parse_augment(config.augment)) & set(FLIP_PARTS)


def test_cli_refuses_flips_for_mnist_in_one_line(capsys):
    assert main(["train", "--preset", "resnet-fashion", "--dataset", "mnist"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "mirrors images left-right" in err and "fashion-mnist" in err


def test_tta_views_are_five_shifts_and_optionally_their_mirrors():
    x = batch(4)
    plain, mirrored = tta_views(x), tta_views(x, flip=True)
    assert len(plain) == 5 and len(mirrored) == 10
    assert all(torch.equal(a, b) for a, b in zip(plain, mirrored[:5]))
    assert all(torch.equal(a.flip(-1), b) for a, b in zip(plain, mirrored[5:]))


class CountingClassifier:
    """A real (linear) classifier that counts its forward passes."""

    def __init__(self, dataset):
        self.config, self.calls = {"dataset": dataset, "augment": "crop+flip"}, 0
        self.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))

    def logits(self, images_u8):
        self.calls += 1
        return self.net(images_u8.float() / 255)


def test_evaluate_tta_never_mirrors_not_even_flip_trained_fashion_runs():
    # Mirrored views tied with shifts alone on Fashion-MNIST validation (docs/accuracy.md), so --tta
    # runs the 5 shifted views for every data set: a mirror would be a 6th..10th forward pass.
    images = (batch(6) * 255).to(torch.uint8)
    for dataset, views in (("mnist", 5), ("kmnist", 5), ("fashion-mnist", 5)):
        c = CountingClassifier(dataset)
        lp = classifier_log_probs(c, images, tta=True)
        assert c.calls == views and lp.shape == (6, 10) and torch.allclose(lp.exp().sum(1), torch.ones(6, dtype=lp.dtype))


# ------------------------------------------------------------- parsing
def test_augment_values_parse_into_parts_in_a_fixed_order():
    assert parse_augment("none") == ()
    assert parse_augment("fashion") == ("crop", "flip", "erase")
    assert parse_augment("erase+flip") == ("flip", "erase")
    assert parse_augment("erase+affine") == ("affine", "erase")
    for bad in ("cutout", "flip+flip", "fashion+crop", "affine+elastic", "", "crop+"):
        with pytest.raises(UsageError):
            parse_augment(bad)


# ------------------------------------------------------------- the transforms
@pytest.mark.parametrize("value", ["flip", "crop", "erase", "fashion", "crop+erase", "affine+erase", "elastic+crop"])
def test_shape_dtype_range_and_layout_are_kept(value):
    torch.manual_seed(0)
    for x in (batch(), batch().contiguous(memory_format=torch.channels_last)):
        out = augment(x, value)
        assert out.shape == x.shape and out.dtype == x.dtype and out.device == x.device
        assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
        assert out.is_contiguous(memory_format=torch.channels_last) == x.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("value", ["flip", "crop", "erase", "fashion"])
def test_augmentation_is_deterministic_per_seed(value):
    x = batch()
    torch.manual_seed(3)
    a = augment(x, value)
    torch.manual_seed(3)
    b = augment(x, value)
    torch.manual_seed(4)
    c = augment(x, value)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_flip_mirrors_whole_images_about_half_the_time():
    torch.manual_seed(0)
    x = batch(2000)
    out = random_flip(x)
    same = (out == x).flatten(1).all(1)
    mirrored = (out == x.flip(-1)).flatten(1).all(1)
    assert torch.all(same ^ mirrored)  # each image is either itself or its mirror, never a mix
    assert 0.45 < mirrored.float().mean() < 0.55
    assert torch.equal(random_flip(x, p=0.0), x) and torch.equal(random_flip(x, p=1.0), x.flip(-1))


def shifted(x, dy, dx):
    """x moved down by dy and right by dx pixels, zero-filled."""
    h, w = x.shape[-2:]
    p = CROP_PAD
    padded = torch.nn.functional.pad(x, (p, p, p, p))
    return padded[..., p - dy:p - dy + h, p - dx:p - dx + w]


def test_crop_only_shifts_the_image_by_at_most_the_padding():
    torch.manual_seed(0)
    x = batch(300)
    out = random_crop(x)
    seen = set()
    for i in range(len(x)):
        matches = [(dy, dx) for dy in range(-CROP_PAD, CROP_PAD + 1) for dx in range(-CROP_PAD, CROP_PAD + 1)
                   if torch.equal(out[i], shifted(x[i], dy, dx))]
        assert len(matches) == 1, i  # exactly one whole-pixel shift, content otherwise untouched
        seen.add(matches[0])
    assert len(seen) == (2 * CROP_PAD + 1) ** 2  # every shift occurs


def test_erasing_fills_one_rectangle_within_the_area_bounds():
    torch.manual_seed(0)
    n, h, w = 2000, 28, 28
    boxes = erase_boxes(n, h, w)[:, 0]
    areas = boxes.flatten(1).sum(1)
    erased = areas > 0
    assert 0.45 < erased.float().mean() < 0.55  # probability 0.5
    assert areas.max() <= ERASE_AREA[1] * h * w
    for i in torch.nonzero(erased).flatten()[:200]:
        rows, cols = boxes[i].any(1).nonzero(), boxes[i].any(0).nonzero()
        assert areas[i] == len(rows) * len(cols)  # a solid rectangle
        assert rows.max() - rows.min() + 1 == len(rows) and cols.max() - cols.min() + 1 == len(cols)
    x = torch.full((n, 1, h, w), 2.0)  # a value the noise fill cannot produce
    out = random_erase(x)
    changed = (out != x).flatten(1)
    assert changed.sum(1).max() <= ERASE_AREA[1] * h * w
    assert torch.all(out[out != 2.0] <= 1)  # the fill is noise in [0, 1]


# ------------------------------------------------------------- the resnet's shape options
def test_resnet_depth_and_width_change_the_network():
    base = create_model("resnet")
    deeper, wider = create_model("resnet", depth=2), create_model("resnet", width=16)
    assert count_parameters(deeper) > count_parameters(base) > count_parameters(wider)
    assert create_model("resnet", depth=2, width=8)(torch.rand(3, 1, 28, 28)).shape == (3, 10)
    assert shape_options("resnet") == ("depth", "width") and "depth" not in shape_options("best")


def test_pyramid_puts_its_parameters_at_the_small_maps():
    """Issue 23's shape: few multiply-adds at 28x28, most parameters at 7x7 and below."""
    model = create_model("pyramid")
    assert shape_options("pyramid") == ("width",)
    assert count_parameters(create_model("pyramid", width=4)) < count_parameters(model)
    big_maps = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)][:3]  # the 28x28 block's convs
    assert sum(count_parameters(m) for m in big_maps) < 0.01 * count_parameters(model)
    x = torch.rand(2, 1, 28, 28)
    sizes = []
    for layer in model:
        x = layer(x)
        if x.dim() == 4:
            sizes.append(x.shape[-1])
    assert sizes == [28, 14, 7, 4, 2, 2, 1]


@pytest.mark.parametrize("name", [n for n in model_names() if "depth" not in shape_options(n)])
def test_depth_is_refused_for_networks_without_it(name):
    with pytest.raises(UsageError, match="does not apply to model") as e:
        cfg.make_config("default", model=name, depth=2)
    assert "\n" not in str(e.value)
    with pytest.raises(UsageError):
        create_model(name, depth=2)


@pytest.mark.parametrize("option", ["depth", "width"])
def test_negative_shape_values_are_refused(option):
    with pytest.raises(UsageError, match=f"{option} must be >= 0"):
        cfg.make_config("default", model="resnet", **{option: -1})


def test_resnet_trains_end_to_end_and_reloads_with_its_shape(tmp_path):
    """A non-default width must reach the network in training and when the run is reloaded."""
    config = cfg.make_config("resnet-digits", width=8, epochs=1, batch_size=50, train_subset=200)
    result = train(config, out_dir=tmp_path, name="r", dataset=toy_dataset(), **QUIET)
    assert math.isfinite(result.history[-1].validation_loss)
    loaded = load_classifier(tmp_path / "r", "cpu").model
    assert count_parameters(loaded) == count_parameters(create_model("resnet", width=8))


def test_fashion_preset_trains_end_to_end_with_its_augmentation(tmp_path):
    config = cfg.make_config("resnet-fashion", width=8, epochs=1, batch_size=50, train_subset=200)
    assert (config.dataset, config.augment, config.validation_size) == ("fashion-mnist", "crop+flip", 5000)
    result = train(config, out_dir=tmp_path, name="f", dataset=toy_dataset(), **QUIET)
    assert math.isfinite(result.history[-1].validation_loss)
