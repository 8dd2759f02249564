"""show: filters and feature maps (any model's conv/pool/ReLU modules), PNG + TensorBoard images;
and the training-time TensorBoard extras: weight histograms per epoch and the HParams dashboard."""
from __future__ import annotations

import shutil

import pytest
import torch
from PIL import Image, ImageDraw
from torch import nn
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mnist_cnn.cli import main
from mnist_cnn.errors import UsageError
from mnist_cnn.models import create_model, model_names
from mnist_cnn.show import feature_maps, show_run


def test_seed_net_feature_maps_are_the_lessons_layers():
    maps, logits = feature_maps(create_model("seed").eval(), torch.rand(1, 1, 28, 28))
    assert list(maps) == ["conv1", "pool1", "relu1", "conv2", "pool2", "relu2"]  # relu3 is the 1-D head: skipped
    assert [tuple(m.shape) for m in maps.values()] == [(6, 28, 28), (6, 14, 14), (6, 14, 14),
                                                         (16, 14, 14), (16, 7, 7), (16, 7, 7)]
    assert torch.equal(maps["relu1"], maps["pool1"].clamp_min(0)) and logits.shape == (10,)


@pytest.mark.parametrize("name", model_names())
def test_every_registered_model_has_feature_maps(name):
    model = create_model(name).eval()
    maps, logits = feature_maps(model, torch.rand(1, 1, 28, 28))
    assert maps and all(m.dim() == 3 and torch.isfinite(m).all() for m in maps.values())
    assert any(isinstance(model.get_submodule(n), nn.Conv2d) for n in maps) and logits.shape == (10,)
    assert all(not m._forward_hooks for m in model.modules())


def test_other_models_show_the_modules_they_have():
    model = nn.Sequential()
    model.add_module("stem", nn.Conv2d(1, 4, 3, padding=1))
    model.add_module("act", nn.ReLU())
    model.add_module("down", nn.AvgPool2d(2))
    model.add_module("flat", nn.Flatten())
    model.add_module("head", nn.Linear(4 * 14 * 14, 10))
    maps, _ = feature_maps(model.eval(), torch.rand(1, 1, 28, 28))
    assert list(maps) == ["stem", "act", "down"]
    assert not model._forward_hooks and not model.stem._forward_hooks  # hooks removed afterwards


def test_show_user_image_writes_pngs_and_tensorboard(toy_trained_run, tmp_path, capsys):
    image = Image.new("L", (90, 120), 255)
    ImageDraw.Draw(image).line([(20, 20), (70, 20), (40, 100)], fill=0, width=8)
    image.save(tmp_path / "my seven.jpg")
    out = tmp_path / "show"
    assert main(["show", str(toy_trained_run), "--image", str(tmp_path / "my seven.jpg"), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "Feature-map layers: conv1 pool1 relu1 conv2 pool2 relu2" in text
    expected = {"filters-conv1.png", "filters-conv2.png", "my seven-input.png"} | {
        f"my seven-{n}.png" for n in ("conv1", "pool1", "relu1", "conv2", "pool2", "relu2")}
    assert expected <= {p.name for p in out.iterdir()}
    for name in expected:
        with Image.open(out / name) as im:
            assert im.format == "PNG" and im.width >= 200
    ea = EventAccumulator(str(out), size_guidance={"images": 0})
    ea.Reload()
    assert {"filters/conv1", "filters/conv2", "my seven/conv1", "my seven/relu2"} <= set(ea.Tags()["images"])


def test_show_refuses_an_onnx_file(toy_trained_run, tmp_path):
    with pytest.raises(UsageError, match="PyTorch run"):
        show_run(tmp_path / "model.onnx")


def test_training_writes_weight_histograms_per_epoch_and_hparams(toy_trained_run):
    from tensorboard.plugins.hparams import plugin_data_pb2

    train = EventAccumulator(str(toy_trained_run / "train"), size_guidance={"histograms": 0})
    train.Reload()
    tags = train.Tags()["histograms"]
    assert {"weights/conv1.weight", "weights/conv2.weight", "weights/fc1.weight", "weights/fc2.bias"} <= set(tags)
    assert len(train.Histograms("weights/conv1.weight")) == 2  # one per epoch, not per step
    root = EventAccumulator(str(toy_trained_run))
    root.Reload()
    content = root.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    assert start.hparams["epochs"].number_value == 2 and start.hparams["model"].string_value == "seed"
    assert start.hparams["data_dir"].string_value == "none"
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    metrics = {m.name.tag for m in experiment.metric_infos}
    assert "hparam/validation_accuracy" in metrics and metrics <= set(root.Tags()["scalars"])


@pytest.mark.slow
def test_show_command_on_a_test_image_of_a_real_run(trained_mnist_run, real_mnist_env, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained_mnist_run, run)
    assert main(["show", str(run), "--index", "3"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("test #3, true 0: predicted 0")
    assert (run / "show" / "test3-relu2.png").is_file() and (run / "show" / "filters-conv2.png").is_file()
    assert main(["show", str(run), "--index", "10000"]) == 2
    assert "outside the test set" in capsys.readouterr().err
