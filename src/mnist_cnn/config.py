"""One typed configuration for training, the named presets, and the flag generator every
command's settings share.

Every field carries its unit and meaning in `help`; the CLI builds its flags from these fields
(`add_flags`), so a field added here is a flag there; serve's, tune's and lr-find's settings
dataclasses are declared with the same `setting` and get their flags the same way. Values are
checked in `validate`; unknown keys are rejected in `from_dict`. The resolved config is written
into every run directory and checkpoint.

Data sets, models and augmentations are imported inside the functions that check them: the
CLI builds `--help` from this module, which must not import torch.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import MISSING, dataclass, field
from pathlib import Path
from typing import Any

from mnist_cnn.errors import UsageError
from mnist_cnn.fileio import read_settings_file


def setting(default: Any = MISSING, help: str = "", choices: tuple[str, ...] | None = None, *,
            flag: str | None = "", metavar: str | None = None) -> Any:
    """A field of a settings dataclass, with what its command-line flag needs: `help` (unit and
    meaning; --help adds the default), `choices`, and `flag`: "" = --field-name, "NAME" (no
    dashes) = a positional argument, None = no flag (set from Python or by the command itself)."""
    return field(default=default, metadata={"help": help, "choices": choices, "flag": flag, "metavar": metavar})


def _kind(f: dataclasses.Field) -> str:
    return f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))


def flag_fields(settings: type) -> list[dataclasses.Field]:
    """The fields of a settings dataclass that have a flag."""
    return [f for f in dataclasses.fields(settings) if "help" in f.metadata and f.metadata["flag"] is not None]


def add_flags(parser: Any, settings: type, exclude: tuple[str, ...] = ()) -> None:
    """One argparse argument per flagged field of the dataclass `settings`, typed from the field.
    Options default to None (= not given: the dataclass's default applies, see `given_flags`)."""
    for f in flag_fields(settings):
        if f.name in exclude:
            continue
        kind, choices, flag = _kind(f), f.metadata["choices"], f.metadata["flag"] or "--" + f.name.replace("_", "-")
        # argparse %-formats help strings: a literal "10%" in a field's help would crash --help.
        shown = "" if f.default is MISSING else f" (default: {f.default if f.default != () else 'none'})"
        help_text = (f.metadata["help"] + shown).replace("%", "%%")
        if not flag.startswith("-"):
            parser.add_argument(f.name, metavar=flag, help=help_text)
        elif kind == "bool":
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif kind.startswith("tuple"):  # repeatable: each use adds one value
            parser.add_argument(flag, dest=f.name, action="append", default=None, metavar=f.metadata["metavar"],
                                help=help_text)
        else:
            convert = int if kind.startswith("int") else float if kind.startswith("float") else str
            metavar = f.metadata["metavar"] or (None if choices else f.name.upper())
            parser.add_argument(flag, dest=f.name, type=convert, default=None, choices=choices, metavar=metavar,
                                required=f.default is MISSING and f.default_factory is MISSING, help=help_text)


def given_flags(settings: type, args: argparse.Namespace) -> dict[str, Any]:
    """The flagged fields of `settings` given on the command line (those left out are None)."""
    values = {f.name: getattr(args, f.name, None) for f in flag_fields(settings)}
    return {k: tuple(v) if isinstance(v, list) else v for k, v in values.items() if v is not None}


@dataclass
class TrainConfig:
    # What to train on what.
    model: str = setting("seed", "registered network name (see `mnist-cnn models`)")
    dataset: str = setting("mnist", "data set name: mnist, fashion-mnist, kmnist or emnist-digits (see mnist_cnn.data.DATASETS), or folder (your own images in --data-dir)")
    data_dir: str | None = setting(None, "directory holding the four IDX files (plain or .gz), tried first; "
                                         "with --dataset folder, the image folders (<class>/*.png)")
    validation_size: int = setting(5000, "images taken from the START of the official training file for validation")
    train_subset: int = setting(0, "train on only the first N training images, 0 = all (quick trials)")
    # How to train.
    epochs: int = setting(6, "passes over the training set")
    steps: int = setting(0, "optimizer steps of the whole run, the schedule's length; 0 = epochs x steps per epoch. "
                         "When set, the run spans ceil(steps / steps per epoch) epochs, the last one possibly "
                         "partial (it still validates and checkpoints), and config.json records those epochs")
    budget: float = setting(0.0, "minutes of wall time for the whole run on this machine, 0 = off: measures a "
                            "training step, a validation pass and a checkpoint, then sets --steps so the schedule "
                            "ends inside the budget; config.json keeps the resolved steps with budget 0, so "
                            "--config RUN/config.json repeats the run without measuring; not with --epochs, --steps or "
                            "preset seed (docs/training.md)",
                            metavar="MINUTES")
    members: int = setting(1, "networks trained one after another into RUN/members/1..K and used as one model, "
                           "their probabilities averaged (evaluate, predict, serve, export and the Python API take "
                           "RUN as one model); member k uses seed x K + k - 1 (its own init, data order and "
                           "augmentation draws; ensembles of seeds 0, 1, 2 share no member); with --budget each member gets "
                           "budget / K (docs/training.md)",
                           metavar="K")
    batch_size: int = setting(128, "images per optimizer step")
    optimizer: str = setting("adam", "optimizer", ("adam", "adamw", "sgd"))
    lr: float = setting(3e-3, "learning rate (the peak rate when a schedule is used)")
    weight_decay: float = setting(0.0, "weight decay (L2 for adam/sgd, decoupled for adamw)")
    momentum: float = setting(0.9, "SGD momentum (sgd only)")
    schedule: str = setting("onecycle", "learning-rate schedule over all steps", ("constant", "onecycle", "linear"))
    warmup: float = setting(0.25, "fraction of all steps spent warming up (onecycle, linear)")
    label_smoothing: float = setting(0.0, "cross-entropy label smoothing, 0 = plain softmax cross-entropy")
    augment: str = setting("none", "training-batch augmentation, batched on the device, parts joined by '+' "
                           "(see augment.py): affine = random rotation +-10 deg, zoom +-10%, shift +-2 px; "
                           "elastic = affine plus a smooth random distortion (Simard et al. 2003); crop = shift "
                           "by up to +-2 px with zero fill; flip = left-right mirror, half the images (refused "
                           "for data sets whose classes are not mirror-symmetric: digits, letters); erase = "
                           "a random rectangle of noise (2-40% of the image) on half the images; "
                           "fashion = crop+flip+erase; none = off")
    ema: float = setting(0.0, "decay per optimizer step of an exponential moving average of the weights, "
                         "used for validation and saved for evaluation; 0 = off (0.999 ~ last 1000 steps)")
    # Network shape, for the networks that take it (see `mnist-cnn models`); refused for the others.
    depth: int = setting(0, "residual blocks per stage (resnet: 3 stages at 28, 14 and 7 px, 2 convs a block, "
                         "6*depth+2 weight layers); 0 = the network's default (resnet: 1)")
    width: int = setting(0, "channels of the first stage, doubled at each later one (resnet: stages w, 2w, 4w; "
                         "best: convs w, 2w, 4w; pyramid: w at 28 px .. 32w at 1 px); 0 = the network's default "
                         "(resnet: 32, best: 24, pyramid: 8)")
    # Reproducibility and machine.
    seed: int = setting(0, "seeds model init, data order and every RNG")
    device: str = setting("auto", "auto = cuda when available, else cpu", ("auto", "cpu", "cuda"))
    threads: int = setting(0, "CPU threads for torch, 0 = torch's default (one per core)")
    channels_last: bool = setting(True, "NHWC memory layout (faster convolutions on CPU)")
    amp: str = setting("auto", "mixed precision: bf16 = forward and loss under torch.autocast(bfloat16), weights, "
                       "optimizer state and checkpoints stay float32; auto = bf16 where the device does it natively "
                       "(CUDA, or a CPU with AMX-BF16 or AVX512-BF16), else float32; bf16 is refused where it is "
                       "emulated (10-100x slower); preset seed always trains in float32 (docs/speed.md)",
                       ("auto", "off", "bf16"))
    compile: str = setting("auto", "torch.compile the training model: on, off, or auto = only networks measured to "
                           "gain from it (resnet), only when the run's steps repay the ~30 s of compiling; never "
                           "preset seed (docs/speed.md)", ("auto", "on", "off"))
    # Saving.
    checkpoint_every: int = setting(0, "also checkpoint every N optimizer steps (0 = only at epoch ends)")
    preset: str = setting("default", "the preset these values started from (informational)")


# ---------------------------------------------------------------- the other commands' settings

@dataclass
class TuneSettings:
    """`mnist-cnn tune`'s settings; the command's flags and --help are generated from these fields."""

    study: str = setting(help="study name: its trials and results go in OUT/tune-NAME (and it names the study "
                              "in its storage)", metavar="NAME")
    trials: int = setting(help="finished (complete or pruned) trials the study should reach; run again to continue",
                          metavar="N")
    preset: str = setting("default", "the preset trials start from", flag=None)  # the CLI's --preset
    fixed: dict[str, Any] = field(default_factory=dict)   # config fields given on the command line
    space_file: str | None = setting(None, "TOML or JSON search space replacing the preset's default "
                                           "(see docs/tuning.md)", flag="--space", metavar="FILE")
    out_dir: str = setting("runs", "parent of the study folder", flag="--out", metavar="DIR")
    storage: str | None = setting(None, "database shared by several machines, e.g. "
                                        "postgresql://user:password@host/db (none: a journal file in the study "
                                        "folder)", metavar="URL")
    jobs: int = setting(1, "worker processes on this machine, each with --threads cores/K unless --threads is "
                           "given", metavar="K")
    timeout: float | None = setting(None, "start no new trial after this long, seconds (per worker)",
                                    metavar="SECONDS")
    heartbeat_s: float = 10.0                    # RDB storage: seconds between a trial's heartbeats
    continue_command: str = ""                   # printed when interrupted, to carry on
    startup_trials: int = 4                      # trials that finish before the pruner judges any
    sampler_seed: int | None = None              # TPE's seed (+ worker index); None = fresh each run, as a
                                                 # resumed or parallel search cannot replay its order anyway

    @property
    def study_dir(self) -> Path:
        return Path(self.out_dir) / f"tune-{self.study}"


@dataclass
class LrFindSettings:
    """`mnist-cnn lr-find`'s own settings (the config flags say what is trained); its flags and
    --help are generated from these fields."""

    start: float = setting(1e-7, "first learning rate")
    end: float = setting(10.0, "last learning rate")
    steps: int = setting(200, "optimizer steps of the sweep")
    out_dir: str = setting("lr-find", "where lr-find.csv and lr-find.png go; no run directory is made",
                           flag="--out", metavar="DIR")


# Presets are named overrides of the defaults above.
PRESETS: dict[str, dict[str, Any]] = {
    # The lesson exactly: Adam 1e-4, batch 100 (550 steps an epoch), 100 epochs, constant rate.
    "seed": dict(epochs=100, batch_size=100, optimizer="adam", lr=1e-4, schedule="constant",
                 warmup=0.0, label_smoothing=0.0),
    # The lesson's network trained the modern way: one-cycle Adam at a 30x higher peak rate.
    "default": dict(),
    # Fastest to 99% test accuracy on a CPU: the small batch-norm `fast` net, one-cycle Adam,
    # label smoothing, 2 epochs of 429 steps.
    "fast": dict(model="fast", epochs=2, batch_size=128, optimizer="adam", lr=3e-3, schedule="onecycle",
                 warmup=0.25, label_smoothing=0.1),
    # The strongest recipe here: batch-norm CNN, affine augmentation, label smoothing, EMA weights.
    # 460 steps an epoch; EMA horizon 1/(1-0.999) = 1000 steps ~ 2.2 epochs.
    # best trains on 59,000 images, validating on the first 1,000: more training images helped
    # more than a larger validation set (docs, Results).
    "best": dict(model="best", epochs=15, batch_size=128, optimizer="adamw", lr=3e-3, weight_decay=0.01,
                 schedule="onecycle", warmup=0.2, label_smoothing=0.1, augment="affine", ema=0.999,
                 validation_size=1000),
    # Issue 16's recipes (docs/accuracy.md): the `resnet` network under best's optimiser, augmentation
    # per data set, 5,000 fixed validation images. Sized for the slowest 2-core machine measured (AMD
    # EPYC Zen 3): a width-24 step costs ~1.7x a best step there, so 16 epochs of 430 steps fit a
    # 30-minute run at 2 threads.
    # Clothes: mirror and pad-and-crop; random erasing (augment=fashion) lost on validation at this
    # length. Sets dataset, and refuses digit data sets.
    "resnet-fashion": dict(model="resnet", dataset="fashion-mnist", depth=1, width=24, epochs=16,
                           batch_size=128, optimizer="adamw", lr=3e-3, weight_decay=0.01, schedule="onecycle",
                           warmup=0.2, label_smoothing=0.1, augment="crop+flip", ema=0.999,
                           validation_size=5000),
    # Digits (mnist, kmnist, emnist-digits): best's affine warp, never a flip. Ties `best` on MNIST
    # validation and test in twice the time (docs/accuracy.md).
    "resnet-digits": dict(model="resnet", depth=1, width=24, epochs=16, batch_size=128, optimizer="adamw",
                          lr=3e-3, weight_decay=0.01, schedule="onecycle", warmup=0.2, label_smoothing=0.1,
                          augment="affine", ema=0.999, validation_size=5000),
}
# Issue 23: the most MNIST accuracy in 30 minutes of wall time. Longer single runs of `best` and the
# twice-as-costly resnet did not beat a 15-epoch `best` on validation, so the time buys two of them,
# averaged (docs/accuracy.md).
PRESETS["best-ensemble"] = dict(PRESETS["best"], members=2, budget=30.0)
# Issue 23: the most Fashion-MNIST accuracy in 30 minutes. resnet-fashion's recipe on `pyramid`,
# which keeps its 28x28 maps thin: its step is cheaper than resnet's on a 2-core CPU and it beat
# resnet-fashion on validation in a 10-minute budget; wider pyramids lost (docs/accuracy.md).
PRESETS["pyramid-fashion"] = dict(PRESETS["resnet-fashion"], model="pyramid", depth=0, width=8, budget=30.0)


def preset_names() -> list[str]:
    return sorted(PRESETS)


def config_fields() -> list[dataclasses.Field]:
    return list(dataclasses.fields(TrainConfig))


def make_config(preset: str = "default", **overrides: Any) -> TrainConfig:
    """The preset's config with `overrides` applied, validated."""
    if preset not in PRESETS:
        raise UsageError(f"unknown preset {preset!r}; choose one of: {', '.join(preset_names())}")
    given = {k: v for k, v in overrides.items() if v is not None}
    base = dict(PRESETS[preset])
    if ("epochs" in given or "steps" in given) and "budget" not in given:
        base["budget"] = 0.0  # a length given outright replaces the preset's time budget
    values = {**base, **given, "preset": preset}
    return from_dict(values)


def read_config_file(path: str | Path) -> dict[str, Any]:
    """TrainConfig fields from a JSON or TOML file (by suffix; JSON otherwise), e.g. a tune
    study's best-config.json. Only the keys are checked here; `make_config` checks the values."""
    path = Path(path)
    values = read_settings_file(path, "config file")
    if not isinstance(values, dict):
        raise UsageError(f"config file {path} must hold one object of config fields, not {type(values).__name__}")
    unknown = sorted(set(values) - {f.name for f in config_fields()})
    if unknown:
        raise UsageError(f"config file {path}: unknown config key(s): {', '.join(unknown)}")
    return values


def config_from_file(path: str | Path, **overrides: Any) -> TrainConfig:
    """The file's config (on top of the preset it names, else default) with `overrides` applied."""
    values = read_config_file(path)
    preset = overrides.pop("preset", None) or values.pop("preset", "default")
    values.pop("preset", None)
    return make_config(preset, **{**values, **{k: v for k, v in overrides.items() if v is not None}})


def from_dict(values: dict[str, Any]) -> TrainConfig:
    """Build and validate a config; unknown keys and ill-typed values are errors."""
    names = {f.name: f for f in config_fields()}
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise UsageError(f"unknown config key(s): {', '.join(unknown)}")
    for key, value in values.items():
        values[key] = _coerce(names[key], value)
    config = TrainConfig(**values)
    validate(config)
    return config


def to_dict(config: TrainConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)


def _coerce(f: dataclasses.Field, value: Any) -> Any:
    kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    if value is None:
        if "None" in kind:
            return None
        raise UsageError(f"{f.name} needs a value")
    try:
        if kind.startswith("bool"):
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
                return value.lower() in ("true", "1", "yes")
            raise ValueError
        if kind.startswith("int"):
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if kind.startswith("float"):
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if isinstance(value, bool) and "on" in (f.metadata.get("choices") or ()):
            return "on" if value else "off"  # `compile` was a bool before it had "auto": old checkpoints
        return str(value)
    except (TypeError, ValueError):
        raise UsageError(f"{f.name}: {value!r} is not a valid {kind.split(' ')[0]}") from None


def validate(c: TrainConfig) -> None:
    """Reject values that cannot train, with the reason."""
    # At call time: these import torch, and the CLI builds --help from this module.
    from mnist_cnn.data.registry import get_spec
    from mnist_cnn.models import model_names

    def need(ok: bool, message: str) -> None:
        if not ok:
            raise UsageError(message)

    for f in config_fields():
        choices = f.metadata.get("choices")
        value = getattr(c, f.name)
        need(choices is None or value in choices, f"{f.name} must be one of {', '.join(choices or ())}, not {value!r}")
    need(c.model in model_names(), f"unknown model {c.model!r}; choose one of: {', '.join(model_names())}")
    _validate_model_shape(c)
    if c.dataset == "folder":  # people's own images (mnist_cnn.data.folder), found in data_dir
        need(bool(c.data_dir), "dataset folder needs --data-dir DIR holding DIR/<class>/*.png "
                               "(or DIR/train/<class>/ and DIR/test/<class>/)")
    else:
        get_spec(c.dataset)  # UsageError listing the registered data sets, before any run directory exists
    need(c.epochs > 0, f"epochs must be a positive integer, not {c.epochs}")
    need(c.steps >= 0, f"steps must be >= 0 (0 = epochs x steps per epoch), not {c.steps}")
    _validate_budget(c)
    need(c.batch_size > 0, f"batch_size must be a positive integer, not {c.batch_size}")
    need(math.isfinite(c.lr) and c.lr > 0, f"lr must be a positive finite number, not {c.lr}")
    need(math.isfinite(c.weight_decay) and c.weight_decay >= 0, f"weight_decay must be >= 0, not {c.weight_decay}")
    need(0 <= c.momentum < 1, f"momentum must be in [0, 1), not {c.momentum}")
    need(0 <= c.warmup < 1, f"warmup must be a fraction in [0, 1), not {c.warmup}")
    need(0 <= c.label_smoothing < 1, f"label_smoothing must be in [0, 1), not {c.label_smoothing}")
    need(0 <= c.ema < 1, f"ema must be a decay in [0, 1) (0 = off), not {c.ema}")
    need(c.validation_size > 0, f"validation_size must be a positive integer, not {c.validation_size}")
    need(c.train_subset >= 0, f"train_subset must be >= 0 (0 = all), not {c.train_subset}")
    need(c.threads >= 0, f"threads must be >= 0, not {c.threads}")
    need(c.checkpoint_every >= 0, f"checkpoint_every must be >= 0, not {c.checkpoint_every}")
    need(0 <= c.seed < 2**32, f"seed must be in 0..4294967295 (numpy's seed range), not {c.seed}")
    need(1 <= c.members <= MAX_MEMBERS, f"members must be from 1 to {MAX_MEMBERS}, not {c.members}")
    need(member_seed(c, c.members) < 2**32, f"seed {c.seed} x {c.members} members runs past 4294967295, the last seed")
    _validate_augment(c)


# Members of one ensemble: each is a whole run, trained one after another.
MAX_MEMBERS = 64


def member_seed(c: TrainConfig, k: int) -> int:
    """The seed of an ensemble's member k (1-based): seed x K + k - 1, so member 1 of an ensemble
    of seed 0 is the single run of seed 0, and ensembles of different seeds share no member."""
    return c.seed * c.members + k - 1
# A year of minutes: far beyond any run, and the planning's arithmetic stays finite below it.
MAX_BUDGET_MINUTES = 525_600


def _validate_budget(c: TrainConfig) -> None:
    """A budget sets the run's length itself: never with --steps, never for the lesson's exact run."""
    if not (math.isfinite(c.budget) and 0 <= c.budget <= MAX_BUDGET_MINUTES):
        raise UsageError(f"budget must be a number of minutes from 0 (off) to {MAX_BUDGET_MINUTES:,d}, not {c.budget}")
    if c.budget and c.steps:
        raise UsageError(f"budget ({c.budget:g} min) and steps ({c.steps}) both set the run's length; "
                         "give one (--steps 0 to let the budget choose)")
    if c.budget and c.preset == "seed":
        raise UsageError("--budget does not apply to preset seed: the lesson's run is 100 epochs exactly")


def _validate_model_shape(c: TrainConfig) -> None:
    """depth and width: >= 0, and non-zero only for networks that take them (never silently ignored)."""
    # At call time: these import torch, and the CLI builds --help from this module.
    from mnist_cnn.models import SHAPE_OPTIONS, shape_options

    for option in SHAPE_OPTIONS:
        value = getattr(c, option)
        if value < 0:
            raise UsageError(f"{option} must be >= 0 (0 = the network's default), not {value}")
        if value and option not in shape_options(c.model):
            raise UsageError(f"--{option} does not apply to model {c.model!r} (its {option} is fixed); "
                             f"set it to 0 or use a model that takes it (see `mnist-cnn models`)")


def _validate_augment(c: TrainConfig) -> None:
    """A known --augment value; mirror images only for data sets whose classes survive a mirror."""
    # At call time: these import torch, and the CLI builds --help from this module.
    from mnist_cnn.augment import FLIP_PARTS, parse_augment
    from mnist_cnn.data.registry import DATASETS

    parts = parse_augment(c.augment)
    flips = [p for p in parts if p in FLIP_PARTS]
    symmetric = [name for name, spec in DATASETS.items() if spec.flip_symmetric]
    if flips and not (c.dataset in DATASETS and DATASETS[c.dataset].flip_symmetric):
        raise UsageError(f"augment {c.augment!r} mirrors images left-right, which can change the class of "
                         f"{c.dataset} images; flips are allowed for {', '.join(symmetric)} only")
