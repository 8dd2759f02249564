"""Files that load but do not fit, or never end (issue #24 rows 6-10): every command answers one
line and a non-zero exit, in bounded time and memory, and control characters from files are
shown escaped.
"""
from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import onnx
import pytest
import torch
from torch import nn

from mnist_cnn.cli import main
from mnist_cnn.export import export_onnx
from mnist_cnn.inference import META_CLASS_NAMES, load_classifier
from mnist_cnn.runs import CHECKPOINT

ESC_NAME = "\x1b[31mred"


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `mnist-cnn ARGV`; any escaping exception fails the test."""
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as e:
        rc = e.code
    except BaseException as e:  # what would have been a traceback
        pytest.fail(f"mnist-cnn {' '.join(map(str, argv))} raised {type(e).__name__}: {str(e)[:300]}")
    out, err = capsys.readouterr()
    return rc, out, err


def one_line_error(rc: int, err: str, expected_rc: int | None = None) -> str:
    lines = err.splitlines()
    assert rc != 0 and (expected_rc is None or rc == expected_rc), (rc, err)
    assert len(lines) == 1 and lines[0].startswith("mnist-cnn: error:"), err
    return lines[0]


@pytest.fixture(scope="module")
def digit_png(tmp_path_factory) -> Path:
    from PIL import Image, ImageDraw

    path = tmp_path_factory.mktemp("img") / "digit.png"
    im = Image.new("L", (56, 56), 0)
    ImageDraw.Draw(im).line([(28, 8), (28, 48)], fill=255, width=5)
    im.save(path)
    return path


# ---------------------------------------------------------------- row 6: an .onnx that loads but does not fit
class TwoInputs(nn.Module):
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a.flatten(1)[:, :10] + b.flatten(1)[:, :10]


def onnx_file(path: Path, model: nn.Module, inputs: tuple[torch.Tensor, ...], meta: dict[str, str]) -> Path:
    names = [f"in{i}" for i in range(len(inputs))]
    torch.onnx.export(model.eval(), inputs, str(path), dynamo=False, input_names=names, output_names=["logits"],
                      dynamic_axes={n: {0: "batch"} for n in [*names, "logits"]})
    proto = onnx.load(str(path))
    for k, v in meta.items():
        proto.metadata_props.add(key=k, value=v)
    onnx.save(proto, str(path))
    return path


TEN = json.dumps([str(k) for k in range(10)])
CONFIG = json.dumps({"model": "seed", "dataset": "mnist"})
MISFITS = {
    "input (N,3,32,32)": (lambda: nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10)), ((1, 3, 32, 32),),
                          {META_CLASS_NAMES: TEN}, "takes input of shape (batch, 3, 32, 32)"),
    "20 outputs": (lambda: nn.Sequential(nn.Flatten(), nn.Linear(784, 20)), ((1, 1, 28, 28),),
                   {META_CLASS_NAMES: TEN}, "gives output of shape (batch, 20) for 10 class names"),
    "two inputs": (TwoInputs, ((1, 1, 28, 28), (1, 1, 28, 28)), {META_CLASS_NAMES: TEN}, "has 2 inputs"),
    "class names a dict": (lambda: nn.Sequential(nn.Flatten(), nn.Linear(784, 10)), ((1, 1, 28, 28),),
                           {META_CLASS_NAMES: '{"a": 1}'}, "must be a non-empty JSON list of strings"),
    "class names empty": (lambda: nn.Sequential(nn.Flatten(), nn.Linear(784, 10)), ((1, 1, 28, 28),),
                          {META_CLASS_NAMES: "[]"}, "must be a non-empty JSON list of strings"),
    "global step abc": (lambda: nn.Sequential(nn.Flatten(), nn.Linear(784, 10)), ((1, 1, 28, 28),),
                        {META_CLASS_NAMES: TEN, "mnist_cnn.global_step": "abc"}, "bad mnist_cnn.global_step"),
}


@pytest.mark.parametrize("case", MISFITS)
def test_onnx_that_does_not_fit_is_one_line_for_predict_evaluate_and_serve(case, tmp_path, digit_png, capsys,
                                                                           monkeypatch, data_env):
    make, shapes, meta, words = MISFITS[case]
    path = onnx_file(tmp_path / "misfit.onnx", make(), tuple(torch.zeros(s) for s in shapes),
                     {**meta, "mnist_cnn.config": CONFIG})
    import mnist_cnn.serve.server as server

    def started(*args, **kw):
        raise AssertionError("serve started with a model that does not fit")

    monkeypatch.setattr(server, "bind", started)
    for argv in (["predict", path, digit_png], ["evaluate", path], ["serve", path, "--port", "0"]):
        rc, out, err = run_cli(argv, capsys)
        line = one_line_error(rc, err)
        assert words in line and str(path) in line, (argv, line)


def test_onnx_from_export_still_loads(tmp_path):
    from mnist_cnn.models import create_model

    path = tmp_path / "ok.onnx"
    export_onnx(create_model("seed", num_classes=3), path, class_names=["a", "b", "c"], config={"model": "seed"})
    classifier = load_classifier(path)
    assert classifier.class_names == ("a", "b", "c") and classifier.logits(torch.zeros(2, 1, 28, 28, dtype=torch.uint8)).shape == (2, 3)


# ---------------------------------------------------------------- row 7: control characters in class names
def escaped_run(toy_trained_run: Path, tmp_path: Path) -> Path:
    run = tmp_path / "esc-run"
    shutil.copytree(toy_trained_run, run)
    state = torch.load(run / CHECKPOINT, weights_only=True)
    state["class_names"] = [f"{ESC_NAME}{k}" for k in range(len(state["class_names"]))]
    torch.save(state, run / CHECKPOINT)
    return run


def test_control_characters_in_class_names_are_shown_escaped(toy_trained_run, tmp_path, digit_png, capsys):
    from mnist_cnn.models import create_model
    from mnist_cnn.serve.predictor import Predictor

    onnx_path = tmp_path / "esc.onnx"
    export_onnx(create_model("seed"), onnx_path, class_names=[f"{ESC_NAME}{k}" for k in range(10)], config={"model": "seed"})
    for source in (escaped_run(toy_trained_run, tmp_path), onnx_path):
        rc, out, err = run_cli(["predict", source, digit_png], capsys)
        assert rc == 0 and "\x1b" not in out + err and "\\x1b[31mred" in out, out
        predictor = Predictor(source, "cpu")                      # what serve prints and answers
        assert all(name.startswith("\\x1b[31mred") for name in predictor.info["class_names"])
    rc, out, err = run_cli(["predict", tmp_path / "no\x1b[2Jsuch", digit_png], capsys)
    assert "\x1b" not in err and "no\\x1b[2Jsuch" in one_line_error(rc, err)


# ---------------------------------------------------------------- rows 8-9: settings files nested or endless
DEEP = {
    "deep.json": "[" * 100_000 + "]" * 100_000,
    "deep-object.json": '{"a": ' * 100_000 + "1" + "}" * 100_000,
    "deep.toml": "lr = " + "[" * 100_000 + "]" * 100_000,
    "deep-inline.toml": "lr = " + "{a = " * 100_000 + "1" + "}" * 100_000,
}
COMMAND = {"config": ["train"], "space": ["tune", "--study", "s", "--trials", "1"]}


@pytest.mark.parametrize("name", DEEP)
@pytest.mark.parametrize("flag", ["config", "space"])
def test_deeply_nested_settings_file_is_one_line_exit_2(name, flag, tmp_path, capsys, data_env):
    path = tmp_path / name
    path.write_text(DEEP[name])
    rc, out, err = run_cli([*COMMAND[flag], f"--{flag}", path, "--out", tmp_path / "runs"], capsys)
    assert "nested too deeply" in one_line_error(rc, err, 2)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


@pytest.mark.parametrize("flag", ["config", "space"])
def test_endless_or_huge_settings_file_is_refused_in_one_line(flag, tmp_path, capsys, data_env):
    big = tmp_path / "big.json"
    big.write_text('{"lr": 0.001, "pad": "' + "x" * (2 << 20) + '"}')
    for path in ("/dev/zero", big):
        rc, out, err = run_cli([*COMMAND[flag], f"--{flag}", path, "--out", tmp_path / "runs"], capsys)
        assert "larger than 1 MiB" in one_line_error(rc, err, 2), err


# ---------------------------------------------------------------- row 10: a tensor that claims 10^9 elements
def test_expanded_weight_is_refused_before_it_is_materialised(toy_trained_run, tmp_path, digit_png, capsys, monkeypatch):
    run = tmp_path / "expanded"
    shutil.copytree(toy_trained_run, run)
    state = torch.load(run / CHECKPOINT, weights_only=True)
    bad = copy.copy(state)
    for key in ("model", "ema"):
        if bad.get(key) is not None:
            bad[key] = {**bad[key], next(iter(bad[key])): torch.zeros(1).expand(10**9)}
    torch.save(bad, run / CHECKPOINT)
    assert (run / CHECKPOINT).stat().st_size < 5 << 20              # the storage saved is one float
    largest: list[int] = []
    real_isfinite = torch.isfinite

    def counting_isfinite(t: torch.Tensor) -> torch.Tensor:
        largest.append(t.numel())
        if t.numel() > 10**8:
            raise AssertionError(f"isfinite on a tensor of {t.numel():,} elements")
        return real_isfinite(t)

    monkeypatch.setattr(torch, "isfinite", counting_isfinite)
    for argv in (["predict", run, digit_png], ["evaluate", run]):
        rc, out, err = run_cli(argv, capsys)
        assert "does not fit this model: size mismatch" in one_line_error(rc, err, 1)
    assert all(n < 10**8 for n in largest)


# ---------------------------------------------------------------- serve's Host patterns (TrustedHostMiddleware)
def test_allow_host_patterns_are_checked_and_given_to_trusted_host_middleware(tmp_path, capsys):
    from mnist_cnn.serve.guard import trusted_host_patterns

    assert trusted_host_patterns(("digits.example.", "fe80::1", "*.lan")) == [
        "localhost", "localhost.", "127.0.0.1", "127.0.0.1.", "[::1]", "digits.example", "digits.example.",
        "[fe80::1]", "*.lan", "*.lan."]
    for bad in ("a*b", "*example.com", ""):
        rc, out, err = run_cli(["serve", tmp_path, "--allow-host", bad], capsys)
        assert "--allow-host takes a host name" in one_line_error(rc, err, 2)
