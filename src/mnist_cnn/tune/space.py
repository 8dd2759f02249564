"""What `mnist-cnn tune` searches: a default space per preset, or one read from a TOML/JSON file.

A space maps TrainConfig field names to a range (`low`/`high`, optional `log`, `step`) or a
list of `choices`. Fields fixed on the command line are left out of the default space and
refused in a file, so what a trial varies is never silently overridden.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mnist_cnn import config as cfg
from mnist_cnn.errors import UsageError
from mnist_cnn.fileio import read_settings_file


@dataclass(frozen=True)
class Param:
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items() if v not in (None, False)}


def _range(low: float, high: float, log: bool = False) -> Param:
    return Param(low=low, high=high, log=log)


def _choices(*values: Any) -> Param:
    return Param(choices=tuple(values))


# Ranges bracket each preset's hand-set value (config.PRESETS) by about 10x on rates. Adam's
# weight decay is an L2 term (large values hurt), AdamW's is decoupled (1e-4..0.1 is usual).
# Model width and dropout are not config fields (the networks fix them), so they are not searched.
_COMMON = {
    "lr": _range(3e-4, 3e-2, log=True),
    "batch_size": _choices(32, 64, 128, 256),
    "weight_decay": _range(1e-6, 1e-3, log=True),
    "warmup": _range(0.05, 0.5),
    "label_smoothing": _range(0.0, 0.2),
    "augment": _choices("none", "affine"),
    "ema": _choices(0.0, 0.99, 0.999),
}
DEFAULT_SPACES: dict[str, dict[str, Param]] = {
    "default": _COMMON,
    "fast": _COMMON,
    # The lesson's constant-rate Adam: no warmup to search, and its rate sits lower (1e-4).
    "seed": {**{k: v for k, v in _COMMON.items() if k != "warmup"}, "lr": _range(1e-5, 3e-3, log=True)},
    "best": {**_COMMON, "lr": _range(1e-3, 1e-2, log=True), "weight_decay": _range(1e-4, 0.1, log=True),
             "augment": _choices("none", "affine", "elastic")},
}


def default_space(preset: str, fixed: dict[str, Any]) -> dict[str, Param]:
    """The preset's default space, less the fields fixed on the command line."""
    if preset not in DEFAULT_SPACES:
        raise UsageError(f"unknown preset {preset!r}; choose one of: {', '.join(sorted(DEFAULT_SPACES))}")
    return {k: v for k, v in DEFAULT_SPACES[preset].items() if k not in fixed}


def read_space_file(path: str | Path) -> dict[str, Param]:
    """A space from TOML (`[lr]` / `low = 1e-4` ...) or JSON (`{"lr": {"low": ...}}`); a bare
    list is a set of choices: `augment = ["none", "affine"]`."""
    path = Path(path)
    raw = read_settings_file(path, "space file")
    if not isinstance(raw, dict) or not raw:
        raise UsageError(f"space file {path} must map config fields to ranges or choices")
    return {name: _param(path, name, spec) for name, spec in raw.items()}


def _param(path: Path, name: str, spec: Any) -> Param:
    if isinstance(spec, list):
        spec = {"choices": spec}
    if not isinstance(spec, dict):
        raise UsageError(f"space file {path}: {name} must be a list of choices or a table with low/high")
    unknown = sorted(set(spec) - {"low", "high", "log", "step", "choices"})
    if unknown:
        raise UsageError(f"space file {path}: {name} has unknown key(s) {', '.join(unknown)} "
                         "(use low, high, log, step or choices)")
    if "choices" in spec:
        if set(spec) != {"choices"} or not isinstance(spec["choices"], list) or not spec["choices"]:
            raise UsageError(f"space file {path}: {name} needs a non-empty list of choices and nothing else")
        return Param(choices=tuple(spec["choices"]))
    if "low" not in spec or "high" not in spec:
        raise UsageError(f"space file {path}: {name} needs low and high (or choices)")
    return Param(low=spec["low"], high=spec["high"], log=bool(spec.get("log", False)), step=spec.get("step"))


def check_space(space: dict[str, Param], preset: str, fixed: dict[str, Any]) -> None:
    """Refuse fields the config lacks or the command line fixes, and values the config rejects."""
    fields = {f.name: f for f in cfg.config_fields()}
    for name, p in space.items():
        if name not in fields or name == "preset":
            raise UsageError(f"search space names {name!r}, which is not a config field (see mnist-cnn train --help)")
        if name in fixed:
            raise UsageError(f"search space names {name!r}, but --{name.replace('_', '-')} is fixed on the command line")
        kind = str(fields[name].type)
        if p.choices is None:
            if not (kind.startswith("int") or kind.startswith("float")):
                raise UsageError(f"search space: {name} is not numeric; give it a list of choices")
            if not p.low < p.high or (p.log and p.low <= 0):
                raise UsageError(f"search space: {name} needs low < high{' and low > 0 for log' if p.log else ''}")
        for value in p.choices if p.choices is not None else (p.low, p.high):
            try:
                cfg.make_config(preset, **{**fixed, name: value})
            except UsageError as e:
                raise UsageError(f"search space: {name} = {value!r} is not a valid config: {e}") from None


def suggest(trial: Any, space: dict[str, Param], integer_fields: set[str]) -> dict[str, Any]:
    """One trial's values, drawn by the Optuna trial's sampler."""
    values = {}
    for name, p in space.items():
        if p.choices is not None:
            values[name] = trial.suggest_categorical(name, list(p.choices))
        elif name in integer_fields:
            values[name] = trial.suggest_int(name, int(p.low), int(p.high), step=int(p.step or 1), log=p.log)
        else:
            values[name] = trial.suggest_float(name, float(p.low), float(p.high), step=p.step, log=p.log)
    return values


def integer_fields() -> set[str]:
    return {f.name for f in cfg.config_fields() if str(f.type).startswith("int")}


def format_space(space: dict[str, Param]) -> str:
    parts = []
    for name, p in space.items():
        if p.choices is not None:
            parts.append(f"{name} in {{{', '.join(map(str, p.choices))}}}")
        else:
            parts.append(f"{name} in [{p.low:g}, {p.high:g}]{' log' if p.log else ''}")
    return "; ".join(parts)
