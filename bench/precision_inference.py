"""Inference in float32 against bf16 autocast (issue 22): argmax changes and images/s at batch 1000.

    python bench/precision_inference.py RUN             # a trained run: argmax changes on its test set, and speed
    python bench/precision_inference.py --network seed  # speed only, untrained weights, MNIST's test images

For a run, every test image is classified twice, in float32 and under bf16 autocast (what
`evaluate`, `predict` and `serve` use for a bf16 run on a CPU with native bf16), and the images
whose predicted class changes are counted. Speed: full passes over the test images at batch 1000,
PyTorch float32, PyTorch bf16 autocast and ONNX Runtime float32 (when installed), interleaved
A B C A B C, median of --repeats. Where the CPU lacks native bf16 the bf16 column is torch's
emulation and says nothing about a native-bf16 CPU: the JSON marks it. Writes
bench/results/precision-inference-<date>-<host>.json.
"""
from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import torch

from mnist_cnn import precision
from mnist_cnn.inference import load_classifier, predict_logits, to_input_numpy

ROOT = Path(__file__).resolve().parent
GOAL_IMAGES_PER_S = 120_000  # issue 22: the lesson's network at batch 1000 on a native-bf16 CPU
CPU = torch.device("cpu")


def argmax_changes(model: torch.nn.Module, images_u8: torch.Tensor, labels: torch.Tensor,
                   channels_last: bool) -> dict[str, Any]:
    """How many predictions bf16 autocast changes against float32, and both accuracies."""
    fp32 = predict_logits(model, images_u8, channels_last=channels_last)
    with precision.autocast(CPU, True):
        bf16 = predict_logits(model, images_u8, channels_last=channels_last)
    changed = fp32.argmax(1) != bf16.argmax(1)
    return {"images": len(labels), "argmax_changes": int(changed.sum()),
            "changed_indices": changed.nonzero().flatten().tolist()[:100],
            "accuracy_fp32": float((fp32.argmax(1) == labels).float().mean()),
            "accuracy_bf16": float((bf16.argmax(1) == labels).float().mean()),
            "max_abs_logit_difference": float((fp32 - bf16).abs().max())}


def onnx_runner(model: torch.nn.Module, class_names: tuple[str, ...], images_u8: torch.Tensor,
                workdir: Path) -> Callable[[torch.Tensor], Any] | None:
    try:
        import onnxruntime as ort

        from mnist_cnn.export import export_onnx
    except ImportError:
        return None
    path = workdir / "model.onnx"
    export_onnx(model, path, class_names=class_names, check_images=images_u8[:512], force=True)
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda batch: session.run(None, {name: to_input_numpy(batch)})[0]


def images_per_s(runners: dict[str, Callable[[torch.Tensor], Any]], images_u8: torch.Tensor,
                 repeats: int) -> dict[str, dict[str, Any]]:
    """Passes over `images_u8` at batch 1000 by each runner in turn (A B C A B C ...)."""
    for run in runners.values():
        run(images_u8[:1000])  # warm-up: allocation and kernel choice
    passes: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(repeats):
        for name, run in runners.items():
            started = time.perf_counter()
            for i in range(0, len(images_u8), 1000):
                run(images_u8[i:i + 1000])
            passes[name].append(time.perf_counter() - started)
    return {name: {"images_per_s": len(images_u8) / statistics.median(t), "pass_seconds": t}
            for name, t in passes.items()}


def load(args: argparse.Namespace) -> tuple[torch.nn.Module, dict[str, Any], tuple[str, ...], Any]:
    """(model, config, class names, test split) of the run, or of an untrained --network."""
    if args.run:
        from mnist_cnn.evaluate import load_split

        classifier = load_classifier(args.run, "cpu")
        if classifier.model is None:
            raise SystemExit("bench: give a run directory or .pt checkpoint, not an .onnx file")
        return classifier.model, classifier.config, classifier.class_names, load_split(classifier.config, "test")
    from mnist_cnn.data import load_dataset
    from mnist_cnn.models import create_model

    test = load_dataset("mnist").test
    return create_model(args.network).eval(), {"model": args.network}, tuple(str(i) for i in range(10)), test


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", nargs="?", help="run directory or .pt checkpoint (argmax changes need trained weights)")
    p.add_argument("--network", default="seed", help="without RUN: an untrained registered network (speed only)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--repeats", type=int, default=5, help="timed passes of each backend")
    p.add_argument("--images", type=int, default=0, help="use only the first N test images (0 = all; smoke runs)")
    p.add_argument("--out", type=Path, default=ROOT / "results")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model, config, class_names, test = load(args)
    images, labels = (test.images[:args.images], test.labels[:args.images]) if args.images else (test.images, test.labels)
    channels_last = bool(config.get("channels_last", True))
    support = precision.bf16_support(CPU)
    results: dict[str, Any] = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                               "source": args.run or f"untrained {args.network}", "model": config.get("model"),
                               "run_amp": config.get("amp"), "native_bf16": support.as_dict(),
                               "torch": torch.__version__, "torch_threads": torch.get_num_threads()}
    if args.run:
        results["predictions"] = argmax_changes(model, images, labels, channels_last)

    def bf16(batch: torch.Tensor) -> torch.Tensor:
        with precision.autocast(CPU, True):
            return predict_logits(model, batch, channels_last=channels_last)

    runners = {"pytorch_fp32": lambda batch: predict_logits(model, batch, channels_last=channels_last),
               "pytorch_bf16" if support.native else "pytorch_bf16_emulated": bf16}
    with tempfile.TemporaryDirectory(prefix="mnist-cnn-precision-") as tmp:
        if (ort := onnx_runner(model, class_names, images, Path(tmp))) is not None:
            runners["onnxruntime_fp32"] = ort
        results["speed"] = images_per_s(runners, images, args.repeats)
    best = max(results["speed"].values(), key=lambda r: r["images_per_s"])["images_per_s"]
    results["goal_images_per_s"] = {"goal": GOAL_IMAGES_PER_S, "best": best,
                                    "met": best >= GOAL_IMAGES_PER_S if support.native else None}
    print(json.dumps({k: v for k, v in results.items() if k != "speed"}, indent=1, default=str))
    for name, r in results["speed"].items():
        print(f"{name:24s} {r['images_per_s']:>10,.0f} img/s at batch 1000")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"precision-inference-{datetime.now():%Y-%m-%d-%H%M}-{socket.gethostname()}.json"
    path.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
