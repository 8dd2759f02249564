"""The `mnist-cnn` command: parses arguments and calls library functions, nothing more.

Every failure a user can cause ends as one line on stderr: exit 2 for usage errors, 1 for
runtime errors, 130 for an interrupted run.
"""
from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence

from mnist_cnn.errors import MnistCnnError, UsageError


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's default prints the whole usage block
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# ---------------------------------------------------------------- train
def add_train(p: argparse.ArgumentParser) -> None:
    from mnist_cnn import config as cfg

    p.add_argument("--preset", default="default", choices=cfg.preset_names(),
                   help="named starting config: 'seed' is the lesson exactly, 'default' the fast modern recipe")
    p.add_argument("--resume", metavar="RUN", help="continue an interrupted run from its last checkpoint")
    p.add_argument("--out", default="runs", metavar="DIR", help="parent directory of run directories (default: runs)")
    p.add_argument("--name", help="run directory name (default: <preset>-<date>-<time>)")
    p.add_argument("--force", action="store_true", help="replace an existing run directory of the same name")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="show a progress bar (default: only on a terminal)")
    group = p.add_argument_group("config overrides (defaults shown are the 'default' preset's)")
    for f in cfg.config_fields():
        if f.name == "preset":
            continue
        flag = "--" + f.name.replace("_", "-")
        kind = f.type if isinstance(f.type, str) else f.type.__name__
        help_text = f"{f.metadata['help']} (default: {f.default})"
        if kind == "bool":
            group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            convert = int if kind == "int" else float if kind == "float" else str
            group.add_argument(flag, dest=f.name, type=convert, default=None, choices=f.metadata.get("choices"),
                               metavar=None if f.metadata.get("choices") else f.name.upper(), help=help_text)


def run_train(args: argparse.Namespace) -> int:
    from mnist_cnn import config as cfg
    from mnist_cnn.train import train

    overrides = {f.name: getattr(args, f.name) for f in cfg.config_fields() if f.name != "preset"}
    if args.resume:
        given = sorted(k for k, v in overrides.items() if v is not None)
        if given or args.name or args.force:
            raise UsageError("--resume continues a run with its saved config; do not combine it with overrides "
                             f"({', '.join('--' + g.replace('_', '-') for g in given) or '--name/--force'})")
        train(resume=args.resume, progress=args.progress)
        return 0
    config = cfg.make_config(args.preset, **overrides)
    train(config, out_dir=args.out, name=args.name, force=args.force, progress=args.progress)
    return 0


# ---------------------------------------------------------------- evaluate
def add_evaluate(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", metavar="RUN", help="run directory (or its checkpoint.pt)")
    p.add_argument("--split", default="test", choices=("train", "validation", "test"), help="which split (default: test)")
    p.add_argument("--data-dir", help="directory holding the IDX files, tried first")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))


def run_evaluate(args: argparse.Namespace) -> int:
    from mnist_cnn.evaluate import evaluate_run

    result = evaluate_run(args.run, args.split, args.data_dir, args.device)
    print(f"{result.split.capitalize()} set: {result.images} images")
    print(f"- Loss:\t\t{result.loss:.4f}")
    print(f"- Accuracy:\t{result.accuracy:.4f}")
    return 0


# ---------------------------------------------------------------- export-csv
def add_export_csv(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", metavar="RUN", help="run directory holding train/ and validation/ event files")
    p.add_argument("--out", metavar="DIR", help="where to write the CSV files (default: RUN/csv)")


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


COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {
    "train": ("train a network (the lesson's with --preset seed)", add_train, run_train),
    "evaluate": ("test loss and accuracy of a trained run", add_evaluate, run_evaluate),
    "export-csv": ("write TensorBoard's CSV downloads (Wall time,Step,Value) for a run", add_export_csv, run_export_csv),
    "models": ("list the registered networks", add_models, run_models),
}


def build_parser() -> argparse.ArgumentParser:
    from mnist_cnn import __version__

    parser = Parser(prog="mnist-cnn", description="Train, inspect and use small CNNs on MNIST-family images.")
    parser.add_argument("--version", action="version", version=f"mnist-cnn {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)
    for name, (summary, add, run) in COMMANDS.items():
        p = sub.add_parser(name, help=summary, description=summary[0].upper() + summary[1:] + ".")
        add(p)
        p.set_defaults(run=run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except MnistCnnError as e:
        print(f"mnist-cnn: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("mnist-cnn: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `mnist-cnn models | head -1`
        return 1
