"""Recipe selection on validation accuracy only, and a separate, explicit final test evaluation.

    python bench/selection.py --preset resnet-fashion --seeds 0 --set epochs=3 threads=1   # a short probe
    python bench/selection.py --preset best --dataset fashion-mnist --seeds 0 1 2          # a full candidate
    python bench/selection.py --preset resnet-fashion --seeds 0 1 2 --final                # once, at the end

Every run holds out the same 5,000 validation images (the first 5,000 of the official training
file; issue 16's method), whatever the preset says, so recipes are compared on one fixed split.
Without --final the TEST split is never read: each tried recipe's validation accuracy (mean +-
sample std over the seeds, with and without test-time augmentation) is appended to
bench/results/selection-log.json and as a row to docs/accuracy-log.md. With --final the same runs
(trained here when missing) are evaluated on the test split, once per recipe: the result is written
to bench/results/final-<recipe>-<date>.json and a "final" row in both logs; a second --final for a
recipe already evaluated is refused. Runs live in runs/select/<recipe>-s<seed> and are reused.

`--final --fit` is the final fit of a recipe already selected on the fixed split (it needs a
candidate entry): each seed trains on all but the first 1,000 training images, which only watch the
run (a budget or the preset's epochs set its length, nothing is chosen on them), and the test split
is read once for recipe `<recipe>-fit`.
"""
from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from recipes import machine, mean_std, parse_set  # bench/recipes.py: same helpers, same machine line

from mnist_cnn import config as cfg
from mnist_cnn.augment import TTA_SHIFTS
from mnist_cnn.compare import summarize_run
from mnist_cnn.evaluate import evaluate
from mnist_cnn.errors import MnistCnnError
from mnist_cnn.fileio import read_json
from mnist_cnn.train import train

VALIDATION_SIZE = 5000   # images, fixed for every compared recipe
FIT_VALIDATION = 1000    # images a final fit holds back, only to watch its runs
ROOT = Path(__file__).resolve().parent.parent
JSON_LOG = ROOT / "bench" / "results" / "selection-log.json"
MD_LOG = ROOT / "docs" / "accuracy-log.md"
MD_HEADER = ("# Accuracy selection log\n\nWritten by `bench/selection.py` (see docs/accuracy.md). Rows marked "
             "probe are short trials (fewer epochs or images than the recipe), not results. Validation = the "
             "fixed first 5,000 training images; test is read only by `--final` rows.\n\n"
             "| date | kind | recipe | data set | settings | seeds | validation % | validation TTA % "
             "| test % | min/run | machine |\n|---|---|---|---|---|---|---|---|---|---|---|\n")


# Overrides that change where or how fast a run goes, not the recipe: left out of its name.
NOT_RECIPE = ("threads", "device", "data_dir")
RESOLVED = ("amp", "compile")   # "auto" is saved as what this machine resolved it to: any saved value matches it
BUDGET_RESOLVED = ("budget", "steps", "epochs")


def recipe_name(preset: str, dataset: str, overrides: dict[str, str]) -> str:
    return f"{preset}-{dataset}" + "".join(f"-{k}{v}" for k, v in sorted(overrides.items()) if k not in NOT_RECIPE)


def train_seeds(preset: str, dataset: str | None, overrides: dict[str, str], seeds: list[int],
                out: Path, fit: bool = False) -> tuple[str, cfg.TrainConfig, list[Path]]:
    """One complete run per seed (reused when complete); all with the fixed validation split, or
    for a final `fit` all with FIT_VALIDATION held back."""
    runs, config, suffix = [], None, "-fit" if fit else ""
    for seed in seeds:
        config = cfg.make_config(preset, dataset=dataset, seed=seed,
                                 **{**overrides, "validation_size": FIT_VALIDATION if fit else VALIDATION_SIZE})
        name = f"{recipe_name(preset, config.dataset, overrides)}{suffix}-s{seed}"
        run = out / name
        if (run / "run.json").is_file() and read_json(run / "run.json").get("status") == "complete":
            check_same_recipe(run, config)
            print(f"{name}: reusing the complete run", flush=True)
        else:
            train(config, out_dir=out, name=name, force=True, progress=False)
        runs.append(run)
    return recipe_name(preset, config.dataset, overrides) + suffix, config, runs


def check_same_recipe(run: Path, config: cfg.TrainConfig) -> None:
    """A run is reused by name; refuse one whose recipe differs (a preset changed since it ran)."""
    saved = read_json(run / "config.json")
    wanted = json.loads(json.dumps(cfg.to_dict(config)))
    # A budget is saved as the steps (and epochs) it resolved to on the machine that ran it.
    resolved = RESOLVED + (BUDGET_RESOLVED if wanted["budget"] and not saved.get("budget") else ())
    differ = [k for k in sorted(wanted) if k not in NOT_RECIPE and saved.get(k) != wanted[k]
              and not (k in resolved and (wanted[k] == "auto" or k in BUDGET_RESOLVED))]
    if differ:
        shown = ", ".join(f"{k} {saved.get(k)!r} (now {wanted[k]!r})" for k in differ)
        raise MnistCnnError(f"{run} was trained with another recipe: {shown}; move it away to retrain")


def wall_seconds(run: Path) -> float | None:
    """run.json's start to finish: the whole run's wall time when one call trained it (None when
    a resume restarted the clock or the times are missing)."""
    info = read_json(run / "run.json")
    if info.get("resumed_from_step") or not info.get("finished"):
        return None
    return (datetime.fromisoformat(info["finished"]) - datetime.fromisoformat(info["started"])).total_seconds()


def accuracy_over_seeds(runs: list[Path], split: str) -> dict[str, Any]:
    """Accuracy per seed, plain and with TTA; for ensemble runs also each member's alone."""
    results = [evaluate(r, split, device="auto") for r in runs]
    plain = [e.accuracy for e in results]
    tta = [evaluate(r, split, tta=True, device="auto").accuracy for r in runs]
    (m, s), (tm, ts) = mean_std(plain), mean_std(tta)
    out = {"per_seed": plain, "mean": m, "std": s, "tta_per_seed": tta, "tta_mean": tm, "tta_std": ts}
    if any(e.members for e in results):
        out["members_per_seed"] = [[member.accuracy for member in e.members] for e in results]
    return out


def is_probe(preset: str, overrides: dict[str, str]) -> bool:
    """A run shorter than its recipe (fewer epochs or a training subset) is a probe, not a result."""
    base = cfg.make_config(preset)
    epochs = int(overrides.get("epochs", base.epochs))
    return epochs < base.epochs or int(overrides.get("train_subset", 0)) > 0


def append_logs(entry: dict) -> None:
    log = json.loads(JSON_LOG.read_text()) if JSON_LOG.is_file() else []
    JSON_LOG.parent.mkdir(parents=True, exist_ok=True)
    JSON_LOG.write_text(json.dumps(log + [entry], indent=2) + "\n")
    if not MD_LOG.is_file():
        MD_LOG.parent.mkdir(parents=True, exist_ok=True)
        MD_LOG.write_text(MD_HEADER)
    v, t = entry["validation"], entry.get("test")

    def pct(mean: float, std: float) -> str:
        return f"{100 * mean:.2f} ± {100 * std:.2f}"

    settings = ", ".join(f"{k}={x}" for k, x in entry["overrides"].items()) or "as preset"
    if entry.get("fit"):
        settings += f"; fit: validation {FIT_VALIDATION:,d} images, only watched"
    test = pct(t["mean"], t["std"]) + f" (TTA {pct(t['tta_mean'], t['tta_std'])})" if t else "-"
    row = (f"| {entry['date'][:16]} | {entry['kind']} | {entry['preset']} | {entry['dataset']} | {settings} | "
           f"{' '.join(map(str, entry['seeds']))} | {pct(v['mean'], v['std'])} | {pct(v['tta_mean'], v['tta_std'])} "
           f"({entry['tta_views']} views) "
           f"| {test} | {entry['minutes_per_run']:.1f} | {entry['machine']} |\n")
    with MD_LOG.open("a") as f:
        f.write(row)


def check_final(args: argparse.Namespace, overrides: dict[str, str], probe: bool) -> None:
    """Exit with one line unless this final may read the test split: a full recipe, not evaluated
    before; a fit only of a recipe selected on the fixed split."""
    if probe:
        sys.exit("--final evaluates a full recipe; drop the epochs/train_subset overrides of a probe")
    name = recipe_name(args.preset, args.dataset or cfg.make_config(args.preset).dataset, overrides)
    log = json.loads(JSON_LOG.read_text()) if JSON_LOG.is_file() else []
    if args.fit and not any(e["kind"] == "candidate" and e["recipe"] == name for e in log):
        sys.exit(f"{name} has no candidate entry: select it on the fixed validation split before its final fit")
    name += "-fit" if args.fit else ""
    done = [e for e in log if e["kind"] == "final" and e["recipe"] == name]
    if done:
        sys.exit(f"{name} already had its final test evaluation on {done[0]['date']}; it is done once")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", required=True, choices=cfg.preset_names())
    p.add_argument("--dataset", help="data set (default: the preset's)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides, e.g. epochs=3")
    p.add_argument("--out", default="runs/select", help="parent directory of the runs")
    p.add_argument("--final", action="store_true", help="evaluate on the TEST split: once per final recipe")
    p.add_argument("--fit", action="store_true",
                   help=f"with --final: train on all but {FIT_VALIDATION:,d} training images, which only watch the "
                        "run; the recipe must have been selected (a candidate entry) first")
    args = p.parse_args()
    overrides = parse_set(args.set)
    if overrides.pop("validation_size", str(VALIDATION_SIZE)) != str(VALIDATION_SIZE):
        sys.exit(f"selection.py compares recipes on the fixed {VALIDATION_SIZE}-image validation split; "
                 "drop validation_size from --set")
    probe = is_probe(args.preset, overrides)
    if args.fit and not args.final:
        sys.exit("--fit is the final fit of a selected recipe: give it with --final")
    if args.final:
        check_final(args, overrides, probe)
    try:
        name, config, runs = train_seeds(args.preset, args.dataset, overrides, args.seeds, Path(args.out), args.fit)
        validation = accuracy_over_seeds(runs, "validation")
        test = accuracy_over_seeds(runs, "test") if args.final else None
    except MnistCnnError as e:
        sys.exit(f"error: {e}")
    minutes = sum(summarize_run(run).minutes for run in runs) / len(runs)  # training epochs only
    wall = [wall_seconds(run) for run in runs]
    entry = {"kind": "final" if args.final else "probe" if probe else "candidate", "recipe": name,
             "preset": args.preset, "dataset": config.dataset, "overrides": overrides, "seeds": args.seeds,
             "runs": [str(r) for r in runs], "validation": validation, "fit": args.fit,
             "validation_size": config.validation_size,
             "tta_views": len(TTA_SHIFTS), "test": test, "minutes_per_run": minutes,
             "wall_seconds_per_run": wall,
             "epochs": config.epochs, "epochs_per_run": [read_json(run / "config.json")["epochs"] for run in runs],
             "machine": machine(), "command": " ".join(sys.argv),
             "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    append_logs(entry)
    if args.final:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        (JSON_LOG.parent / f"final-{name}-{stamp}.json").write_text(json.dumps(entry, indent=2) + "\n")
    print(f"{entry['kind']} {name}: validation {100 * validation['mean']:.2f} ± {100 * validation['std']:.2f}% "
          f"(TTA {100 * validation['tta_mean']:.2f}%)"
          + (f", TEST {100 * test['mean']:.2f} ± {100 * test['std']:.2f}%" if test else "")
          + f", {minutes:.1f} min a run; logged to {MD_LOG}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
