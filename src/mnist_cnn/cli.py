"""The `mnist-cnn` command: parses arguments and calls library functions, nothing more.

Every failure a user can cause ends as one line on stderr: exit 2 for usage errors, 1 for
runtime errors, 130 for an interrupted run. Each command's flags come from its settings
dataclass (config.add_flags: TrainConfig, ServeConfig, TuneSettings, LrFindSettings) or are
written below; each imports the library inside its add_/run_ functions, so that `--help` and a
mistyped flag answer without importing torch.
"""
from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence

from mnist_cnn.errors import MnistCnnError, UsageError, escape_controls
from mnist_cnn.version import __version__


def path_arg(what: str) -> Callable[[str], str]:
    """argparse `type` for names that become files or folders: refused (one line, exit 2) before
    anything is created when empty, holding control characters, or too long for the file system."""
    def check(value: str) -> str:
        from mnist_cnn.runs import check_path_name

        try:
            return check_path_name(value, what)
        except UsageError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    return check


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's default prints the whole usage block
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# ---------------------------------------------------------------- train
# Config fields only train takes: a run's length from a step count or a clock (lr-find sweeps its
# own --steps; a tune trial's length is its epochs, which the pruner counts), and ensembles (a
# trial or a sweep is one network).
TRAIN_ONLY_FIELDS = ("steps", "budget", "members")


def add_config_flags(p: argparse.ArgumentParser, exclude: tuple[str, ...] = TRAIN_ONLY_FIELDS) -> None:
    """--preset and one flag per TrainConfig field but `exclude` (train, tune and lr-find share them)."""
    from mnist_cnn import config as cfg

    p.add_argument("--preset", default=None, choices=cfg.preset_names(),
                   help="named starting config; the times are wall time on a 2-core AMD EPYC: 'seed' is the lesson "
                        "exactly (100 epochs, ~11 min), 'default' the lesson's network trained the modern way (~1 min), "
                        "'fast' a small net reaching 99%% in seconds, 'best' the most accurate single MNIST network "
                        "(~14 min), 'resnet-digits' a residual net that ties it in twice the time (~28 min), "
                        "'resnet-fashion' a residual net for Fashion-MNIST (~29 min), 'pyramid-fashion' the most "
                        "accurate Fashion-MNIST one, in a budget of 30 min, 'best-ensemble' two 'best' "
                        "networks used as one model, in a budget of 30 min (--epochs or --steps replace a preset's "
                        "budget; docs/accuracy.md) (default: default)")
    cfg.add_flags(p.add_argument_group("config overrides (defaults shown are the 'default' preset's)"),
                  cfg.TrainConfig, exclude=("preset", *exclude))
    p.set_defaults(config_excluded=exclude)  # for config_overrides


def config_overrides(args: argparse.Namespace) -> dict:
    """The config fields given on the command line (None = not given)."""
    from mnist_cnn import config as cfg

    excluded = ("preset", *getattr(args, "config_excluded", ()))
    return {f.name: getattr(args, f.name) for f in cfg.flag_fields(cfg.TrainConfig) if f.name not in excluded}


def add_train(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE",
                   help="start from this JSON or TOML file of config fields (e.g. a tune study's best-config.json); "
                        "flags given here override it, unknown keys are refused")
    p.add_argument("--resume", metavar="RUN", help="continue an interrupted run from its last checkpoint")
    p.add_argument("--out", default="runs", metavar="DIR", type=path_arg("path"),
                   help="parent directory of run directories (default: runs)")
    p.add_argument("--name", type=path_arg("run name"),
                   help="run directory name: no '/', control characters or more than 255 bytes (default: <preset>-<date>-<time>)")
    p.add_argument("--force", action="store_true",
                   help="replace an existing run directory of the same name (never a symbolic link, nor a folder that is not a run)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="show a progress bar (default: only on a terminal)")
    add_config_flags(p, exclude=())


def resolve_config(args: argparse.Namespace):
    """The TrainConfig the flags describe: --config FILE (if any), else --preset, then the overrides."""
    from mnist_cnn import config as cfg

    if getattr(args, "config", None):
        return cfg.config_from_file(args.config, preset=args.preset, **config_overrides(args))
    return cfg.make_config(args.preset or "default", **config_overrides(args))


def run_train(args: argparse.Namespace) -> int:
    from mnist_cnn.train import train

    if args.resume:
        given = sorted(k for k, v in config_overrides(args).items() if v is not None)
        if given or args.name or args.force or args.config:
            raise UsageError("--resume continues a run with its saved config; do not combine it with overrides "
                             f"({', '.join('--' + g.replace('_', '-') for g in given) or '--name/--force/--config'})")
        train(resume=args.resume, progress=args.progress)
        return 0
    if args.budget and args.epochs is not None:  # a preset's or a config file's epochs give way to the budget
        raise UsageError("--budget chooses the run's length itself; give --budget or --epochs, not both")
    train(resolve_config(args), out_dir=args.out, name=args.name, force=args.force, progress=args.progress)
    return 0


# ---------------------------------------------------------------- tune
def add_tune(p: argparse.ArgumentParser) -> None:
    from mnist_cnn import config as cfg
    cfg.add_flags(p, cfg.TuneSettings)
    add_config_flags(p)
    p.epilog = "Config flags given here are fixed for every trial; the search space varies the others."


def run_tune(args: argparse.Namespace) -> int:
    import shlex

    from mnist_cnn import config as cfg
    from mnist_cnn.tune import format_report, tune

    fixed = {k: v for k, v in config_overrides(args).items() if v is not None}
    settings = cfg.TuneSettings(**cfg.given_flags(cfg.TuneSettings, args), preset=args.preset or "default", fixed=fixed,
                            continue_command="mnist-cnn " + shlex.join(args.argv))
    print(format_report(tune(settings)))
    return 0


# ---------------------------------------------------------------- lr-find
def add_lr_find(p: argparse.ArgumentParser) -> None:
    from mnist_cnn import config as cfg
    cfg.add_flags(p, cfg.LrFindSettings)
    p.add_argument("--write-config", metavar="FILE",
                   help="write the config with the suggested lr as JSON (for mnist-cnn train --config FILE)")
    p.add_argument("--config", metavar="FILE", help="start from this JSON or TOML config file")
    add_config_flags(p)


def run_lr_find(args: argparse.Namespace) -> int:
    from dataclasses import asdict, replace

    from mnist_cnn import config as cfg
    from mnist_cnn.fileio import write_json
    from mnist_cnn.lr_find import lr_find

    config = resolve_config(args)
    r = lr_find(config, **asdict(cfg.LrFindSettings(**cfg.given_flags(cfg.LrFindSettings, args))))
    stop = f"stopped at lr {r.diverged_at:.3g} (loss > 4x its best)" if r.diverged_at else "ran all steps"
    print(f"Swept {len(r.lrs)} steps from {r.lrs[0]:.3g} to {r.lrs[-1]:.3g}; {stop}.")
    print(f"Suggested lr {r.suggested_lr:.3g} (steepest descent of the smoothed loss); "
          f"minimum/10 rule: {r.min_lr_over_10:.3g}")
    print(f"Wrote {r.csv_path}, {r.png_path}")
    if args.write_config:
        try:
            write_json(args.write_config, cfg.to_dict(replace(config, lr=float(f"{r.suggested_lr:.3g}"))))
        except OSError as e:
            raise UsageError(f"cannot write {args.write_config}: {e.strerror or e}") from None
        print(f"Config with lr {r.suggested_lr:.3g}: {args.write_config} (train it: mnist-cnn train --config {args.write_config})")
    return 0


# ---------------------------------------------------------------- evaluate
def add_evaluate(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", metavar="RUN", nargs="+",
                   help="run directory (an ensemble run counts as its members), a .pt checkpoint file, or an "
                        "exported .onnx file; several = an ensemble (their probabilities averaged)")
    p.add_argument("--tta", action="store_true",
                   help="test-time augmentation: average each model's probabilities over the image and its four "
                        "1-pixel shifts (5x the compute)")
    p.add_argument("--split", default="test", choices=("train", "validation", "test"), help="which split (default: test)")
    p.add_argument("--data-dir", help="directory holding the IDX files, tried first")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--out", metavar="DIR", type=path_arg("path"),
                   help="where to write the report and figures (default: RUN/evaluation)")
    p.add_argument("--json", action="store_true", help="print the full report as JSON instead of text")
    p.add_argument("--no-files", dest="files", action="store_false",
                   help="only print; write no PNG/JSON/TensorBoard files")


def run_evaluate(args: argparse.Namespace) -> int:
    import json

    from mnist_cnn.evaluate import evaluate, format_members, format_report, write_report
    from mnist_cnn.inference import load_classifier

    many = len(args.run) > 1 or args.tta
    models = args.run if many else load_classifier(args.run[0], args.device)
    result = evaluate(models, args.split, data_dir=args.data_dir, tta=args.tta, device=args.device)
    # An ensemble has no run directory of its own: its files are written only with --out.
    out = args.out or (None if many else models.output_dir("evaluation"))
    if args.files and out:
        write_report(result, result.split_data.images, out, 0 if many else models.global_step)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
        return 0
    if result.members:  # several runs, an ensemble run, or TTA: each model alone, then together
        print(format_members(result) + "\n")
    print(format_report(result))
    if result.files:
        print("\nWrote " + ", ".join(result.files[k] for k in ("report", "confusion", "mistakes"))
              + ("" if many else f"\nTensorBoard images: tensorboard --logdir {result.files['tensorboard']}"))
    return 0


# ---------------------------------------------------------------- predict
def add_predict(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", metavar="RUN", help="run directory, a .pt checkpoint file (the file named is the one loaded), or an exported .onnx file")
    p.add_argument("images", metavar="IMAGE", nargs="+",
                   help="image files (PNG, JPEG, BMP, GIF, WebP, TIFF) or directories of them")
    p.add_argument("--top-k", type=int, default=3, metavar="K", help="classes shown per image (default: 3)")
    p.add_argument("--json", action="store_true", help="print one JSON list of results")
    p.add_argument("--save-preprocessed", metavar="DIR", type=path_arg("path"),
                   help="write the 28x28 image the model saw, per file")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))


def run_predict(args: argparse.Namespace) -> int:
    import json

    from mnist_cnn.inference import load_classifier
    from mnist_cnn.predict import format_prediction, predict_images, predictions_json

    classifier = load_classifier(args.run, args.device)
    results = predict_images(classifier, args.images, args.top_k, args.save_preprocessed)
    for r in results:
        if not r.ok:
            print(f"mnist-cnn: error: {r.error}", file=sys.stderr)
        elif not args.json:
            print(format_prediction(r))
    if args.json:
        print(json.dumps(predictions_json(results), indent=2))
    return 0 if all(r.ok for r in results) else 1


# ---------------------------------------------------------------- export
def add_export(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", metavar="RUN", help="run directory or a .pt checkpoint file")
    p.add_argument("--format", default="onnx", choices=("onnx",), help="file format (default: onnx)")
    p.add_argument("--out", metavar="FILE", type=path_arg("path"),
                   help="output file (default: RUN/model.onnx; for a checkpoint file X.pt, X.onnx beside it)")
    p.add_argument("--force", action="store_true", help="replace an existing output file")
    p.add_argument("--data-dir", help="directory holding the IDX files, tried first (for the parity check)")


def run_export(args: argparse.Namespace) -> int:
    from mnist_cnn.export import default_onnx_path, export_onnx

    out = args.out or default_onnx_path(args.run)
    r = export_onnx(args.run, out, data_dir=args.data_dir, force=args.force)
    print(f"Wrote {r.path} ({r.bytes / 1024:.0f} KiB, dynamic batch) in {r.seconds:.1f} s")
    print(f"Checked against PyTorch on {r.images_checked} images ({r.check_data}) with ONNX Runtime:")
    print(f"- predicted class identical on {r.images_checked - r.argmax_mismatches}/{r.images_checked}")
    print(f"- max |logit difference| {r.max_abs_logit_diff:.3g}")
    if r.onnx_accuracy is not None:
        print(f"- accuracy: ONNX {r.onnx_accuracy:.4f}, PyTorch {r.torch_accuracy:.4f}")
    return 0


# ---------------------------------------------------------------- show
def add_show(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", metavar="RUN", help="run directory or a .pt checkpoint file (not an .onnx file: "
                                              "the feature maps need the PyTorch layers)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--index", type=int, default=None, metavar="N", help="test image number (default: 0)")
    which.add_argument("--image", metavar="FILE", help="your own image file instead of a test image")
    p.add_argument("--out", metavar="DIR", type=path_arg("path"), help="where to write the PNGs (default: RUN/show)")
    p.add_argument("--data-dir", help="directory holding the IDX files, tried first")
    p.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"))


def run_show(args: argparse.Namespace) -> int:
    from mnist_cnn.show import show_run

    r = show_run(args.run, index=args.index if args.index is not None else 0, image=args.image, out_dir=args.out,
                 data_dir=args.data_dir, device=args.device)
    truth = f", true {r.true}" if r.true is not None else ""
    print(f"{r.image_source}{truth}: predicted {r.predicted} ({r.confidence:.1%})")
    print(f"Feature-map layers: {' '.join(r.layers)}")
    for name, path in r.files.items():
        if name != "tensorboard":
            print(f"- {name}: {path}")
    print(f"TensorBoard images: tensorboard --logdir {r.files['tensorboard']}")
    return 0


# ---------------------------------------------------------------- export-csv
def add_export_csv(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", metavar="RUN", help="run directory holding train/ and validation/ event files")
    p.add_argument("--out", metavar="DIR", type=path_arg("path"), help="where to write the CSV files (default: RUN/csv)")


def run_export_csv(args: argparse.Namespace) -> int:
    from mnist_cnn.tbexport import export_csv

    for path in export_csv(args.run, args.out):
        print(path)
    return 0


# ---------------------------------------------------------------- models
def add_models(p: argparse.ArgumentParser) -> None:
    pass


def run_models(args: argparse.Namespace) -> int:
    from mnist_cnn.models import count_parameters, create_model, model_names

    for name in model_names():
        model = create_model(name)
        doc = (model.__doc__ or "").strip().splitlines()[0] if model.__doc__ else ""
        print(f"{name:12s} {count_parameters(model):>10,d} parameters  {doc}")
    return 0


# ---------------------------------------------------------------- serve
def add_serve(p: argparse.ArgumentParser) -> None:
    from mnist_cnn import config as cfg
    from mnist_cnn.serve.config import ServeConfig

    cfg.add_flags(p, ServeConfig)


def run_serve(args: argparse.Namespace) -> int:
    from mnist_cnn import config as cfg
    from mnist_cnn.serve.config import ServeConfig
    from mnist_cnn.serve.server import serve

    serve(ServeConfig(**cfg.given_flags(ServeConfig, args)))
    return 0


# ---------------------------------------------------------------- compare
def add_compare(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", metavar="RUN", nargs="+", help="run directories to put side by side")
    p.add_argument("--plot", metavar="FILE", default="compare.png", type=path_arg("path"),
                   help="PNG of their validation curves (default: compare.png; an existing file is replaced)")
    p.add_argument("--no-plot", dest="plot", action="store_const", const=None, help="print the table only")
    p.add_argument("--json", action="store_true", help="print the rows as JSON instead of a table")


def run_compare(args: argparse.Namespace) -> int:
    import json

    from mnist_cnn.compare import compare_runs, format_table, tensorboard_command

    summaries = compare_runs(args.runs)
    if args.json:
        print(json.dumps([s.to_dict() for s in summaries], indent=2))
    else:
        print(format_table(summaries))
    if args.plot:
        from mnist_cnn.plots import plot_comparison

        try:
            plot_comparison([(s.name, s.history) for s in summaries], args.plot)
        except OSError as e:
            raise UsageError(f"cannot write {args.plot}: {e.strerror or e}") from None
        if not args.json:
            print(f"\nValidation curves: {args.plot}")
    if not args.json:
        print(f"Hyperparameters side by side (HPARAMS tab): {tensorboard_command(summaries)}")
    return 0


COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {
    "train": ("train a network (the lesson's with --preset seed)", add_train, run_train),
    "tune": ("search hyperparameters with Optuna: every trial a run, pruned when it lags; best config to a file",
             add_tune, run_tune),
    "lr-find": ("learning-rate range test: loss vs an exponentially growing rate, and a suggested rate",
                add_lr_find, run_lr_find),
    "evaluate": ("test loss, accuracy, per-class metrics, confusion matrix and worst mistakes of a run",
                 add_evaluate, run_evaluate),
    "predict": ("classify your own image files with a trained run or .onnx", add_predict, run_predict),
    "export": ("export a run to ONNX, verified against PyTorch on the test set", add_export, run_export),
    "show": ("PNGs of a run's conv filters and its layers' feature maps for one image", add_show, run_show),
    "export-csv": ("write TensorBoard's CSV downloads (Wall time,Step,Value) for a run", add_export_csv, run_export_csv),
    "models": ("list the registered networks", add_models, run_models),
    "compare": ("several runs side by side: accuracy, epochs, time, size; PNG of their curves", add_compare, run_compare),
    "serve": ("a local web page and JSON API: draw a digit and see what a run predicts", add_serve, run_serve),
}


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="mnist-cnn", description="Train, inspect and use small CNNs on MNIST-family images.")
    parser.add_argument("--version", action="version", version=f"mnist-cnn {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)
    for name, (summary, add, run) in COMMANDS.items():
        p = sub.add_parser(name, help=summary, description=summary[0].upper() + summary[1:] + ".")
        add(p)
        p.set_defaults(command_fn=run)  # not `run`: commands take a positional RUN argument
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # tune prints it as the command to continue
    try:
        return args.command_fn(args)
    except MnistCnnError as e:
        print(f"mnist-cnn: error: {escape_controls(str(e))}", file=sys.stderr)   # paths, names from files
        return e.exit_code
    except KeyboardInterrupt:
        print("mnist-cnn: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `mnist-cnn models | head -1`
        return 1
