"""The run record: what a run directory holds, and the one reader of each file (standard library only).

A run directory holds ``summary.json`` (:data:`SUMMARY_FIELDS`, written once the run has ended), ``units.csv``
(every unit's birth and death step), ``unit_lengths.csv`` (fan-in and fan-out lengths of live units),
``logs/version_<k>/metrics.csv`` (one version per fit: a resume adds one), ``model.safetensors`` and
``model.json`` (the trained network, :mod:`npnn.trained`) and ``checkpoints/last.ckpt``. A committed record
keeps its per-step logs compressed (``metrics.csv.xz``, ``unit_lengths.csv.xz``; ``python -m npnn.record
compress RUNS``); every reader here takes either form.

The analysis tools (``npnn.plot``, ``npnn.sweeps``, ``npnn.figures``, ``npnn.units``, ``npnn.mistakes``) read
runs through this module and never import the training stack.
"""
from __future__ import annotations

import argparse
import csv
import gzip
import json
import logging
import lzma
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any

__all__ = ["RUN_FILES", "FINISHED", "UNFINISHED", "PHASES", "RUN_INDEPENDENT_KEYS", "RESUME_FREE_KEYS",
           "SUMMARY_FIELDS", "MODEL_SUMMARY_FIELDS", "RecordError", "write_atomic", "save_atomic", "write_summary",
           "find",
           "open_text", "read_summary", "read_metrics", "read_units", "read_unit_lengths", "steps_per_epoch",
           "run_state", "is_run_independent", "compress", "compare", "RESULT_FIELDS"]

log = logging.getLogger(__name__)

COMPRESSED = (".xz", ".gz")  # a committed record's per-step logs; the readers take the plain file or these
PER_STEP_LOGS = ("logs/version_*/metrics.csv", "unit_lengths.csv")

# what a run writes (glob patterns in its directory): all that a fresh run refuses to overwrite and
# overwrite=true deletes
RUN_FILES = ("summary.json", "units.csv", "unit_lengths.csv", "unit_lengths.csv.*", "data.json",
             "model.safetensors", "model.json", "checkpoints/*.ckpt", "checkpoints/*.ckpt.tmp",
             "logs/version_*/metrics.csv", "logs/version_*/metrics.csv.*", "logs/version_*/hparams.yaml",
             "tensorboard/version_*/events.out.tfevents.*", "tensorboard/version_*/hparams.yaml",
             "export/model.*", "plots/run.png", "plots/run.pdf")

FINISHED = ("protocol", "budget", "early_stopping")  # how a run that ran to its end stopped (summary's stopped_by)
UNFINISHED = ("signal", "time")  # stopped from outside: a relaunch resumes it; any other stopped_by is a failure

# the protocol's stages (section 7.4), in order; metrics.csv's protocol/phase is the index (-1: stopped)
PHASES = {"nonparametric": ("grow", "prune", "fit", "anneal"), "parametric": ("fit", "anneal")}

# keys that do not define a run: paths, relaunch switches, display, the logger, the checkpoint cadence, the time
# budget, the test set's extra evaluations. The settings that npnn.sweeps groups seeds by leave them out, and so
# do a sweep's directory names (conf/config.yaml's hydra.job.config.override_dirname.exclude_keys: these and
# hparams_search, the sweep's own config, the same for all its runs; tests/test_record.py checks it)
RUN_INDEPENDENT_KEYS = ("data_dir", "ckpt_path", "overwrite", "resume_existing", "trainer.enable_progress_bar",
                        "logger", "trainer.max_time", "checkpoint_every_steps", "checkpoint_every_seconds",
                        "test_every", "sweep_failure_value")
# keys a resume may change without asking: the above, and budgets, Lightning callbacks and display
RESUME_FREE_KEYS = (*RUN_INDEPENDENT_KEYS, "resume_changes", "trainer.enable_model_summary", "callbacks",
                    "trainer.max_epochs", "trainer.max_steps")

# summary.json: every field a run writes, and what it holds (errors are fractions, times seconds)
SUMMARY_FIELDS = {
    "dataset": "the data set's name",
    "lambda": "the fan-in penalty (an auto value as derived from the data)",
    "seed": "the run's seed",
    "model": "nonparametric or parametric",
    "norm": "capnorm, batchnorm, batchnorm_affine or none",
    "optimizer": "AdaRad, AdaRadM or the parametric algorithm",
    "step_size": "the configured step size (AdaRad's alpha_phi, else alpha)",
    "hidden_sizes": "the final network's hidden layer sizes",
    "weights": "the final network's weight count",
    "val_error": "the final network's validation classification error",
    "test_error": "the final network's test classification error",
    "best_val_error": "the lowest validation error seen at a validation",
    "test_error_at_best": "the test error at that validation",
    "best_epoch": "the epoch of that validation",
    "epochs": "epochs trained, on the protocol's timeline (rewinds move it back)",
    "steps_per_epoch": "optimizer steps per epoch",
    "steps_trained": "optimizer steps trained (rewinds do not move it back)",
    "wall_time_s": "wall time of training and evaluation over every fit of the run",
    "cpu_time_s": "CPU time of the same (every thread)",
    "fit_wall_time_s": "wall time of this fit alone",
    "threads": "torch's threads",
    "machine": "cpu, cpu_capability, torch: the same config gives the same floats on the same kind of CPU",
    "stopped_by": "FINISHED, UNFINISHED, or the failure (diverged, nan_loss, chance_level, ...)",
    "protocol": "the protocol's stage changes: step, from, to, best_vce, lambda, step_size",
    "config": "the run's config as written",
    "auto_settings": "optional: the config's auto values, as derived from the data",
    "overrides": "optional: the command line's overrides (a run launched by Hydra)",
    "resumed_from": "optional: the checkpoint this fit resumed",
    "changed_on_resume": "optional: {key: [old, new]} applied on that resume",
    "time_complete": "optional, false: an earlier fit's time is unknown and not counted",
    "error": "optional: the failure's message",
}
MODEL_SUMMARY_FIELDS = ("hidden_sizes", "val_error", "test_error", "epochs", "stopped_by", "lambda", "seed")


class RecordError(ValueError):
    """A run record that is missing or damaged; the message names the file."""


# ------------------------------------------------------------------ writing
def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # not every platform opens directories
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_atomic(path: str | Path, write: Callable[[IO[bytes]], Any]) -> None:
    """``write(f)`` into ``<path>.tmp`` in ``path``'s directory, fsync, rename over ``path``: a reader sees
    the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        log.error("could not write %s (%s); the previous %s is unchanged", path, err, path.name)
        raise
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def write_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` as :func:`save_atomic` does."""
    save_atomic(path, lambda f: f.write(text.encode()))


def write_summary(run_dir: str | Path, summary: dict[str, Any]) -> None:
    """Write ``summary.json``, the mark that the run has ended; every field must be one of :data:`SUMMARY_FIELDS`,
    and every field not marked optional must be there."""
    unknown = sorted(set(summary) - set(SUMMARY_FIELDS))
    missing = sorted(k for k, what in SUMMARY_FIELDS.items() if not what.startswith("optional") and k not in summary)
    if unknown or missing:
        raise ValueError(f"summary.json: fields not in npnn.record.SUMMARY_FIELDS {unknown}, missing {missing}")
    write_atomic(Path(run_dir) / "summary.json", json.dumps(summary, indent=2, default=str))


# ------------------------------------------------------------------ reading
def find(path: str | Path) -> Path | None:
    """``path``, or its compressed form (``.xz``, ``.gz``), whichever exists; None if neither."""
    path = Path(path)
    for candidate in (path, *(path.with_name(path.name + suffix) for suffix in COMPRESSED)):
        if candidate.is_file():
            return candidate
    return None


def open_text(path: str | Path) -> IO[str]:
    """A text file for reading (``newline=""``, for csv), decompressing ``.xz`` and ``.gz``."""
    path = Path(path)
    if path.suffix == ".xz":
        return lzma.open(path, "rt", newline="")
    if path.suffix == ".gz":
        return gzip.open(path, "rt", newline="")
    return open(path, newline="")


def read_summary(run_dir: str | Path) -> dict[str, Any] | None:
    """The run's ``summary.json`` (:data:`SUMMARY_FIELDS`), or None if it has none (not ended yet)."""
    path = Path(run_dir) / "summary.json"
    if not path.is_file():
        return None
    try:
        summary = json.loads(path.read_text())
    except ValueError as err:
        raise RecordError(f"{path} is damaged ({type(err).__name__}: {err}): delete it and launch the run again "
                          f"with resume_existing=true (it resumes checkpoints/last.ckpt, or starts afresh), or "
                          f"replace the run with overwrite=true") from None
    if not isinstance(summary, dict):
        raise RecordError(f"{path} is damaged (a JSON {type(summary).__name__}, not an object): delete it and "
                          f"launch the run again with resume_existing=true, or replace the run with overwrite=true")
    return summary


def run_state(summary: dict[str, Any] | None) -> str:
    """``finished`` (ran to its end), ``running`` (no summary yet, or stopped from outside: it resumes) or
    ``failed`` (diverged, chance level, ...)."""
    stopped_by = None if summary is None else summary.get("stopped_by")
    return "finished" if stopped_by in FINISHED else \
        "running" if stopped_by is None or stopped_by in UNFINISHED else "failed"


def _metrics_files(run_dir: Path) -> list[Path]:
    found: dict[int, Path] = {}
    for version in run_dir.glob("logs/version_*"):
        path = find(version / "metrics.csv")
        if path is not None:
            found[int(version.name.split("_")[1])] = path
    return [found[k] for k in sorted(found)]


def read_metrics(run_dir: str | Path) -> list[dict[str, float]]:
    """The run's metrics rows by step (numbers; empty cells left out), over its ``logs/version_*/metrics.csv``
    in order: a step logged twice (a resume's) keeps the later row's values."""
    versions = _metrics_files(Path(run_dir))
    if not versions:
        raise FileNotFoundError(f"{run_dir} has no logs/version_*/metrics.csv: is it a run directory written with "
                                f"the csv logger (logger=csv, the default)?")
    by_step: dict[float, dict[str, float]] = {}
    for path in versions:
        with open_text(path) as f:
            for row in csv.DictReader(f):
                values = {k: float(v) for k, v in row.items() if v not in ("", None)}
                step = values.get("step")
                if step is not None:
                    by_step.setdefault(step, {}).update(values)
    return [by_step[s] for s in sorted(by_step)]


def read_units(run_dir: str | Path) -> list[dict[str, Any]]:
    """The run's ``units.csv``: per unit its ``id``, ``layer``, ``birth`` step and ``death`` step (None: alive)."""
    path = find(Path(run_dir) / "units.csv")
    if path is None:
        raise FileNotFoundError(f"{Path(run_dir) / 'units.csv'} is missing: units.csv is written at every "
                                f"validation of an npnn run")
    with open_text(path) as f:
        return [{"id": int(r["id"]), "layer": int(r["layer"]), "birth": int(r["birth"]),
                 "death": int(r["death"]) if r["death"] else None} for r in csv.DictReader(f)]


def read_unit_lengths(run_dir: str | Path) -> dict[tuple[int, int], list[tuple[float, float, float]]]:
    """``(layer, id) -> [(epoch, fan-in length, fan-out length), ...]`` from the run's ``unit_lengths.csv``."""
    path = find(Path(run_dir) / "unit_lengths.csv")
    if path is None:
        raise FileNotFoundError(f"{Path(run_dir) / 'unit_lengths.csv'} is missing: run with unit_lengths_every "
                                f">= 1 (the data set's default)")
    series: dict[tuple[int, int], list[tuple[float, float, float]]] = {}
    with open_text(path) as f:
        for r in csv.DictReader(f):
            series.setdefault((int(r["layer"]), int(r["id"])), []).append(
                (float(r["epoch"]), float(r["fan_in"]), float(r["fan_out"])))
    return series


def steps_per_epoch(run_dir: str | Path) -> float:
    """Optimizer steps per epoch of a run, from ``summary.json`` or the first row of ``unit_lengths.csv``."""
    summary = read_summary(run_dir) or {}
    if summary.get("steps_per_epoch"):
        return float(summary["steps_per_epoch"])
    path = find(Path(run_dir) / "unit_lengths.csv")
    if path is not None:
        with open_text(path) as f:
            for row in csv.DictReader(f):
                if float(row["epoch"]) > 0:
                    return int(row["step"]) / float(row["epoch"])
    raise FileNotFoundError(f"{run_dir}: neither summary.json with steps_per_epoch nor unit_lengths.csv with a row "
                            f"after step 0: is this an npnn run directory?")


def is_run_independent(override: str) -> bool:
    """Whether a command-line override (``key=value``, ``+key=...``) sets a key that does not define the run
    (:data:`RUN_INDEPENDENT_KEYS`, or Hydra's own ``hydra.*``)."""
    key = override.lstrip("+~").split("=", 1)[0]
    return any(key == k or key.startswith(k + ".") for k in ("hydra", *RUN_INDEPENDENT_KEYS))



RESULT_FIELDS = ("hidden_sizes", "weights", "val_error", "test_error", "best_val_error", "test_error_at_best",
                 "best_epoch", "epochs", "steps_trained", "stopped_by", "protocol")  # what a run trained, not its cost


def compare(run_a: str | Path, run_b: str | Path) -> tuple[bool, list[str]]:
    """Whether two ended runs trained the same network, to the last bit of what they recorded: ``units.csv``, every
    validation's step, validation error and cross-entropy and sizes, the test error wherever both evaluated it,
    and summary.json's :data:`RESULT_FIELDS`; with the lines that say so and the two runs' compute (b / a)."""
    same, lines = True, []
    units_a, units_b = read_units(run_a), read_units(run_b)
    if units_a == units_b:
        lines.append(f"units.csv: the same ({len(units_a)} units)")
    else:
        same = False
        first = next((i for i, (u, v) in enumerate(zip(units_a, units_b)) if u != v), min(len(units_a), len(units_b)))
        lines.append(f"units.csv: DIFFERENT from unit row {first + 1} ({len(units_a)} and {len(units_b)} units)")

    def validations(run: str | Path) -> list[tuple]:
        return [(m["step"], m["val/error"], m.get("val/ce"),
                 tuple(v for k, v in sorted(m.items()) if k.startswith("size/")))
                for m in read_metrics(run) if "val/error" in m]

    val_a, val_b = validations(run_a), validations(run_b)
    if val_a == val_b:
        lines.append(f"validations: the same ({len(val_a)}: step, validation error and cross-entropy, sizes)")
    else:
        same = False
        first = next((u for u, v in zip(val_a, val_b) if u != v), None)
        lines.append(f"validations: DIFFERENT ({len(val_a)} and {len(val_b)}" +
                     (f"; first at step {first[0]:.0f})" if first else ")"))
    test_a = {m["step"]: m["test/error"] for m in read_metrics(run_a) if "test/error" in m}
    test_b = {m["step"]: m["test/error"] for m in read_metrics(run_b) if "test/error" in m}
    both = sorted(set(test_a) & set(test_b))
    unequal = [step for step in both if test_a[step] != test_b[step]]
    same &= not unequal
    lines.append(f"test error: evaluated at {len(test_a)} and {len(test_b)} validations; at the {len(both)} of both "
                 + (f"DIFFERENT at {len(unequal)}, first at step {unequal[0]:.0f}" if unequal else "the same"))
    summary_a, summary_b = read_summary(run_a) or {}, read_summary(run_b) or {}
    for key in RESULT_FIELDS:
        if summary_a.get(key) != summary_b.get(key):
            same = False
            lines.append(f"summary.json {key}: DIFFERENT ({summary_a.get(key)!r} and {summary_b.get(key)!r})")
    results_same = all(summary_a.get(k) == summary_b.get(k) for k in RESULT_FIELDS)
    lines.append(f"summary.json: {'the same' if results_same else 'DIFFERENT'} {', '.join(RESULT_FIELDS)}")
    for key in ("cpu_time_s", "wall_time_s", "threads"):
        a, b = summary_a.get(key), summary_b.get(key)
        ratio = f" (b / a = {b / a:.3f})" if isinstance(a, (int, float)) and isinstance(b, (int, float)) and a and \
            key != "threads" else ""
        lines.append(f"{key}: {a} and {b}{ratio}")
    return same, lines

# ------------------------------------------------------------- compression
def compress(dirs: Iterable[str | Path], remove: Iterable[str] = ()) -> list[Path]:
    """xz-compress the per-step logs (``metrics.csv``, ``unit_lengths.csv``) of every ended run under ``dirs``
    (a run without a summary may still be writing them: left alone), and delete the files named ``remove``
    (e.g. ``hparams.yaml``); returns the files written. The result is the same bytes for the same input."""
    written = []
    for summary in sorted(p for top in dirs for p in Path(top).rglob("summary.json")):
        run_dir = summary.parent
        if run_state(read_summary(run_dir)) == "running":
            continue
        for pattern in PER_STEP_LOGS:
            for path in sorted(run_dir.glob(pattern)):
                target = path.with_name(path.name + ".xz")
                data = lzma.compress(path.read_bytes(), preset=9 | lzma.PRESET_EXTREME)
                save_atomic(target, lambda f, data=data: f.write(data))
                path.unlink()
                written.append(target)
        for name in remove:
            for path in run_dir.glob(f"**/{name}"):
                path.unlink()
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m npnn.record", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    pack = sub.add_parser("compress", help="xz-compress the per-step logs of the ended runs under DIRS")
    pack.add_argument("dirs", nargs="+", type=Path)
    pack.add_argument("--remove", nargs="*", default=[], metavar="NAME",
                      help="also delete these files of each run (e.g. hparams.yaml train.log)")
    same = sub.add_parser("compare", help="whether two ended runs trained the same network (exit status 1 if "
                                          "not), and their compute")
    same.add_argument("dirs", nargs=2, type=Path, metavar="RUN")
    args = parser.parse_args(argv)
    missing = [str(d) for d in args.dirs if not d.is_dir()]
    if missing:
        parser.error(f"no such directory: {', '.join(missing)}")
    if args.command == "compare":
        try:
            identical, lines = compare(*args.dirs)
        except (FileNotFoundError, RecordError) as err:
            parser.error(str(err))
        print("\n".join(f"  {line}" for line in [f"a: {args.dirs[0]}", f"b: {args.dirs[1]}", *lines]))
        print("the same network" if identical else "DIFFERENT networks")
        raise SystemExit(0 if identical else 1)
    before = sum(p.stat().st_size for d in args.dirs for p in d.rglob("*") if p.is_file())
    written = compress(args.dirs, args.remove)
    after = sum(p.stat().st_size for d in args.dirs for p in d.rglob("*") if p.is_file())
    print(f"{len(written)} logs compressed; {before / 2**20:.1f} MiB -> {after / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
