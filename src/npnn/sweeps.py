"""Gather the runs of sweeps into one table and make the paper's picks (sections 7.4.1 / 7.4.2).

    python -m npnn.sweeps DIR [DIR ...] [--out runs.csv] [--top 10] [--write-picks PICKS]
    python -m npnn.sweeps --draws N OVERRIDE [OVERRIDE ...]

Reads every ``summary.json`` under the directories (a run's own, or a Hydra multirun's), with
the run's overrides (``.hydra/overrides.yaml``), writes them as one CSV and prints the picks:

- per nonparametric setting (all overrides but ``seed``), the representative run (7.4.1 step 2):
  the run closest to the median of both weight count and test error (TCE) across its seeds, by
  ``|w - median w| / range w + |TCE - median TCE| / range TCE`` (each term 0 when the range is 0);
- the best parametric settings by median validation error (VCE) across their seeds (steps 4 and 6);
  ``--write-picks`` writes them as config files for the next step's seeds (``hparams_search=p_seeds``).

``--draws N`` prints a random search's first N trials (``hparams_search=p_random*``) as plain runs, one
command per trial into the trial's directory: run them on any cores or machines, and the search launched
again on that ``hydra.sweep.dir`` skips the trials that ended (:func:`draws`).
"""
from __future__ import annotations

import argparse
import csv
import math
import os
import shlex
import statistics
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from npnn.record import FINISHED, is_run_independent, read_summary, run_state

__all__ = ["gather", "write_table", "setting", "representatives", "best_settings", "pick_config", "write_picks",
           "grid_table", "sweep_size", "progress", "draws", "SweepProgress", "COLUMNS"]

COLUMNS = ("run_dir", "setting", "dataset", "model", "norm", "optimizer", "step_size", "lambda", "seed",
           "hidden_sizes", "weights", "val_error", "test_error", "best_val_error", "test_error_at_best", "best_epoch",
           "epochs", "wall_time_s", "cpu_time_s", "time_complete", "resumed_from", "stopped_by")


def _overrides(run_dir: Path) -> list[str]:
    path = run_dir / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return []
    from omegaconf import OmegaConf

    return [str(o) for o in OmegaConf.load(path)]


def setting(overrides: Iterable[str]) -> str:
    """A run's setting: its overrides but the seed and the keys that do not define a run
    (:data:`npnn.record.RUN_INDEPENDENT_KEYS`: paths, display, ...)."""
    return ",".join(sorted(o for o in overrides
                           if not o.lstrip("+~").startswith("seed=") and not is_run_independent(o)))


def gather(dirs: Iterable[str | Path]) -> list[dict[str, Any]]:
    """One row per ``summary.json`` under ``dirs``, sorted by run directory."""
    rows = []
    for top in dirs:
        for path in sorted(Path(top).rglob("summary.json")):
            summary = read_summary(path.parent)
            row = {key: summary.get(key) for key in COLUMNS}
            row["run_dir"] = str(path.parent)
            row["setting"] = setting(summary.get("overrides") or _overrides(path.parent))  # else .hydra/overrides.yaml
            row["hidden_sizes"] = "-".join(map(str, summary.get("hidden_sizes") or []))
            rows.append(row)
    return rows


def write_table(rows: list[dict[str, Any]], path: str | Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def _groups(rows: list[dict[str, Any]], model: str, finished_only: bool = True) -> dict[str, list[dict[str, Any]]]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        if row["model"] == model and (row["stopped_by"] in FINISHED or not finished_only):
            groups.setdefault(row["setting"], []).append(row)
    return groups


def representatives(rows: list[dict[str, Any]]) -> dict[str, tuple[dict[str, Any], float]]:
    """Per nonparametric setting, the run closest to the median weight count and TCE of its seeds, and its
    distance (7.4.1 step 2)."""
    picks = {}
    for key, runs in _groups(rows, "nonparametric").items():
        weights, errors = [float(r["weights"]) for r in runs], [float(r["test_error"]) for r in runs]
        mid_w, mid_e = statistics.median(weights), statistics.median(errors)
        span_w, span_e = max(weights) - min(weights), max(errors) - min(errors)

        def distance(run: dict[str, Any]) -> float:
            return (abs(float(run["weights"]) - mid_w) / span_w if span_w else 0.0) + \
                (abs(float(run["test_error"]) - mid_e) / span_e if span_e else 0.0)

        best = min(runs, key=lambda r: (distance(r), r["run_dir"]))
        picks[key] = (best, distance(best))
    return picks


def best_settings(rows: list[dict[str, Any]], top: int = 10) -> list[tuple[str, float, int]]:
    """The parametric settings with the lowest median VCE over their seeds: ``(setting, median VCE, runs)``;
    a run that failed (diverged, ...) counts as VCE 1."""
    ranked = [(key, statistics.median(float(r["val_error"]) if r["stopped_by"] in FINISHED else 1.0 for r in runs),
               len(runs)) for key, runs in _groups(rows, "parametric", finished_only=False).items()]
    return sorted(ranked, key=lambda t: (t[1], t[0]))[:top]


def _first_parametric_run(rows: list[dict[str, Any]], key: str) -> dict[str, Any]:
    """A parametric run of the setting ``key`` (its seeds share everything the picks need)."""
    return next(r for r in rows if r["setting"] == key and r["model"] == "parametric")


def pick_config(overrides: Iterable[str], hidden_sizes: list[int] | None = None, note: str = "") -> str:
    """A config file (``# @package _global_``) that sets what ``overrides`` set: a group choice becomes a
    defaults-list override, a value a key. The seed, the sweep config (``hparams_search``), the random
    search's draws (``random_search.*``) and what :func:`setting` ignores are left out; ``hidden_sizes``
    (a parametric run's) is written as ``model.hidden_sizes``."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    from npnn.config import CONF_DIR

    kept = [o for o in overrides
            if setting([o]) and not o.lstrip("+").startswith(("hparams_search=", "random_search."))]
    groups, values = [], OmegaConf.create({})
    for override in OverridesParser.create().parse_overrides(kept):
        key = override.key_or_group
        if override.is_delete() or override.is_sweep_override():
            raise ValueError(f"cannot write a setting with the override {override.input_line!r}")
        if (CONF_DIR / key).is_dir():
            groups.append({f"override /{key}": override.value()})
        else:
            OmegaConf.update(values, key, override.value(), force_add=True)
    if hidden_sizes is not None:
        OmegaConf.update(values, "model.hidden_sizes", list(hidden_sizes), force_add=True)
    body = OmegaConf.to_yaml(OmegaConf.create({"defaults": groups, **OmegaConf.to_container(values)}))
    return "# @package _global_\n" + "".join(f"# {line}\n" for line in note.splitlines()) + body


def write_picks(rows: list[dict[str, Any]], out_dir: str | Path, top: int = 10) -> list[Path]:
    """The ``top`` parametric settings by median VCE as config files ``<out_dir>/pick/top01.yaml`` ... for
    ``hparams_search=p_seeds`` (7.4.1 steps 4 and 6); earlier picks in that folder are replaced."""
    folder = Path(out_dir) / "pick"
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("top*.yaml"):
        old.unlink()
    written = []
    for rank, (key, vce, n) in enumerate(best_settings(rows, top), start=1):
        run = _first_parametric_run(rows, key)
        sizes = [int(h) for h in str(run["hidden_sizes"]).split("-") if h]
        note = f"rank {rank} by median VCE ({100 * vce:.3f}% over {n} run(s)), from {run['run_dir']}"
        path = folder / f"top{rank:02d}.yaml"
        path.write_text(pick_config(_overrides(Path(run["run_dir"])), sizes, note))
        written.append(path)
    return written


def grid_table(rows: list[dict[str, Any]], key: str, value: str = "val_error") -> str:
    """A Markdown table of a grid over ``key``: one row per setting of the other overrides (those all runs
    share said once above it), one column per value of ``key``, each cell the median ``value`` (a VCE
    column) over the seeds in percent (a failed seed counts as 1), ``div`` where every run failed or
    stopped early; the lowest cell of each row in bold."""
    runs = [(row, [o for o in _overrides(Path(row["run_dir"])) if setting([o])]) for row in rows]
    runs = [(row, overrides) for row, overrides in runs if any(o.split("=", 1)[0] == key for o in overrides)]
    common = set.intersection(*(set(o) for _, o in runs)) if runs else set()  # said once, above the table
    table: dict[str, dict[str, list[float]]] = {}
    for row, overrides in runs:
        mine = [o.split("=", 1)[1] for o in overrides if o.split("=", 1)[0] == key]
        label = ",".join(sorted(o for o in overrides if o.split("=", 1)[0] != key and o not in common)) or "-"
        failed = row["stopped_by"] not in FINISHED or row.get(value) in (None, "")
        table.setdefault(label, {}).setdefault(mine[-1], []).append(math.nan if failed else float(row[value]))
    if not table:
        raise ValueError(f"no run of these directories sets {key!r}")

    def order(v: str):
        try:
            return (0, float(v), v)
        except ValueError:
            return (1, 0.0, v)

    columns = sorted({c for cells in table.values() for c in cells}, key=order)
    lines = [f"All runs: {','.join(sorted(common))}; median {value} in %\n",
             f"| setting \\ {key} | {' | '.join(columns)} |", "|---" * (len(columns) + 1) + "|"]
    for label in sorted(table):
        # a failed seed counts as VCE 1, as in best_settings; a cell whose seeds all failed is "div"
        medians = {c: math.nan if all(math.isnan(x) for x in vals) else
                   statistics.median(1.0 if math.isnan(x) else x for x in vals) for c, vals in table[label].items()}
        best = min((m for m in medians.values() if not math.isnan(m)), default=None)
        cells = ["" if c not in medians else "div" if math.isnan(medians[c]) else
                 (f"**{100 * medians[c]:.2f}**" if medians[c] == best else f"{100 * medians[c]:.2f}") for c in columns]
        lines.append(f"| {label} | {' | '.join(cells)} |")
    return "\n".join(lines)


def sweep_size(overrides: Iterable[str]) -> int | None:
    """The number of runs a grid of Hydra overrides makes (``a=1,2 b=range(3)``: 6); None if it has no end."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    last = {o.split("=", 1)[0].lstrip("+~"): o for o in overrides}  # a key given twice: the last one counts
    size = 1
    for override in OverridesParser.create().parse_overrides(list(last.values())):
        if override.is_sweep_override():
            if override.is_interval_sweep():
                return None
            size *= sum(1 for _ in override.sweep_iterator())
    return size


def _search_params(sweeper) -> list[str]:
    """A sweeper's search space as overrides (``hydra.sweeper.params``), as the optuna sweeper reads it."""
    return [f"{k!s}={v}" for k, v in (sweeper.get("params") or {}).items()]


def draws(overrides: Iterable[str], n: int) -> list[tuple[str, tuple[str, ...]]]:
    """The first ``n`` trials of the optuna random search that ``python train.py -m <overrides>`` runs, as
    ``(run directory, overrides)``: ``python train.py <overrides>`` runs that trial in that directory.

    hydra-optuna-sweeper 1.2 (``OptunaSweeper.sweep``) draws each trial's values of the search space
    (``hydra.sweeper.params``, then sweep overrides of the command line) from its seeded RandomSampler, trial
    after trial, and adds the command line's other overrides as fixed values; this asks the sampler the same
    way. Each trial's overrides are the drawn ones, the fixed ones, the command line's ``hydra`` overrides and
    ``hydra.job.num``. A sampler without a seed, or one that learns from results (TPE), draws otherwise:
    refused."""
    import optuna
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.utils import instantiate
    from hydra_plugins.hydra_optuna_sweeper._impl import create_params_from_overrides

    from npnn.config import compose

    parsed = OverridesParser.create().parse_overrides(list(overrides))
    task = [o.input_line for o in parsed if not o.is_hydra_override()]  # the sweeper's `arguments`
    hydra = [o.input_line for o in parsed
             if o.is_hydra_override() and o.key_or_group not in ("hydra.mode", "hydra.run.dir")]
    if not any(o.key_or_group == "hydra.sweep.dir" for o in parsed):
        raise ValueError("give the search's hydra.sweep.dir=...: the trials run in its trial directories, where "
                         "the search launched again finds them")
    plain = [o.input_line for o in parsed if not o.is_sweep_override()]
    sweeper = compose(*plain, return_hydra_config=True).hydra.sweeper
    sampler = sweeper.get("sampler") or {}
    if sampler.get("_target_") != "optuna.samplers.RandomSampler" or sampler.get("seed") is None \
            or sweeper.get("custom_search_space"):
        raise ValueError(f"--draws needs an optuna random search with a seed (hparams_search=p_random...), got "
                         f"{sweeper.get('_target_')} with sampler {sampler.get('_target_')}, seed "
                         f"{sampler.get('seed')}, custom_search_space {sweeper.get('custom_search_space')}: "
                         f"no other search draws its trials again")
    space, fixed = create_params_from_overrides([*_search_params(sweeper), *task])
    for name in fixed:
        space.pop(name, None)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=instantiate(sweeper.sampler))
    trials = []
    for num in range(min(n, sweeper.n_trials)):
        trial = study.ask()
        for name, distribution in space.items():
            trial._suggest(name, distribution)  # as OptunaSweeper._configure_trials
        study.tell(trial, 0.0)  # the random sampler's next draws do not depend on the value
        trial_overrides = (*(f"{k}={v}" for k, v in {**trial.params, **fixed}.items()), *hydra, f"hydra.job.num={num}")
        sweep = compose(*trial_overrides, return_hydra_config=True).hydra.sweep  # its directory, as the sweep's
        trials.append((os.path.join(sweep.dir, sweep.subdir), trial_overrides))
    return trials


def progress(sweep_dir: str | Path) -> dict[str, int]:
    """Runs of a sweep directory so far: ``finished``, ``failed`` (ended another way: diverged, chance level...)
    and ``running`` (started, no summary yet, or stopped from outside by a signal or time limit: it resumes)."""
    counts = {"finished": 0, "failed": 0, "running": 0}
    for run_dir in (p for p in Path(sweep_dir).iterdir() if p.is_dir() and (p / ".hydra").is_dir()):
        counts[run_state(read_summary(run_dir))] += 1
    return counts


try:
    from hydra.experimental.callback import Callback as _HydraCallback
except ImportError:  # pragma: no cover - hydra is a dependency
    _HydraCallback = object


class SweepProgress(_HydraCallback):
    """Hydra callback (``hydra.callbacks`` in ``conf/config.yaml``): after each job of a multirun, one line
    with the sweep's runs finished, failed and running, of how many."""

    def on_job_end(self, config, job_return=None, **kwargs: Any) -> None:
        from hydra.types import RunMode
        from omegaconf import OmegaConf

        if config.hydra.mode != RunMode.MULTIRUN:
            return
        sweep_dir = Path(config.hydra.sweep.dir)
        total = config.hydra.sweeper.get("n_trials")  # the optuna sweeper's trials
        try:  # a grid: the sweep's own overrides, which Hydra wrote at its start (the command line's last)
            sweep = OmegaConf.load(sweep_dir / "multirun.yaml").hydra
            total = total or sweep_size([*_search_params(sweep.sweeper), *sweep.overrides.task])
        except Exception:  # no multirun.yaml, or a syntax this count does not know: no total
            pass
        try:
            counts = progress(sweep_dir)
        except Exception as err:  # a progress line must never fail a job
            print(f"sweep {sweep_dir}: no progress count ({type(err).__name__}: {err})", flush=True)
            return
        counted = sum(counts.values())
        of = f" of {total}" if total else ""
        if total and counted > total:  # earlier sweeps into the same directory (a grid widened)
            of = f" (this sweep has {total}, the directory {counted})"
        print(f"sweep {sweep_dir}: {counts['finished']}{of} runs finished, {counts['failed']} failed, "
              f"{counts['running']} running or stopped early", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m npnn.sweeps", description=__doc__.split("\n\n")[0])
    parser.add_argument("dirs", nargs="+", help="run or sweep directories (searched for summary.json); with "
                        "--draws: the random search's overrides")
    parser.add_argument("--draws", metavar="N", type=int, default=None,
                        help="print the random search's first N trials as plain runs (train.py commands)")
    parser.add_argument("--out", default=None, help="write the table as CSV here")
    parser.add_argument("--top", type=int, default=10, help="parametric settings to list (and to write)")
    parser.add_argument("--grid", metavar="KEY", default=None,
                        help="print a Markdown table of the grid over KEY (e.g. optimizer.alpha): "
                             "median VCE per setting")
    parser.add_argument("--value", default="val_error", choices=["val_error", "best_val_error"],
                        help="the VCE of --grid: the final network's (default) or the lowest seen at a validation")
    parser.add_argument("--representative-sizes", action="store_true",
                        help="print only the representatives' hidden sizes, one per line (a,b,...), by weight count")
    parser.add_argument("--write-picks", metavar="DIR", default=None,
                        help="write the --top parametric settings as DIR/pick/top01.yaml ... "
                             "for hparams_search=p_seeds")
    args = parser.parse_args(argv)
    if args.draws is not None:
        from hydra.errors import HydraException
        from omegaconf.errors import OmegaConfBaseException

        if args.draws < 1 or args.out or args.grid or args.write_picks or args.representative_sizes:
            parser.error("--draws N takes N >= 1 and a search's overrides, and none of the table's options")
        try:
            trials = draws(args.dirs, args.draws)
        except (ValueError, HydraException, OmegaConfBaseException) as err:  # a bad override or another search
            parser.exit(2, f"{parser.prog}: {err}\n")
        for run_dir, overrides in trials:
            print(shlex.join(["python", "train.py", *overrides, f"hydra.run.dir={run_dir}"]))
        return
    missing = [d for d in args.dirs if not Path(d).is_dir()]
    if missing:
        parser.error(f"no such directory: {', '.join(missing)}")
    rows = gather(args.dirs)
    if not rows:
        parser.exit(1, f"{parser.prog}: no summary.json under {', '.join(args.dirs)}\n")
    if args.out:
        write_table(rows, args.out)
    if args.representative_sizes:  # for scripts: python train.py ... model.hidden_sizes=[<a line>]
        picks = sorted((run for run, _ in representatives(rows).values()),
                       key=lambda r: (float(r["weights"]), r["run_dir"]))
        if not picks:
            parser.exit(1, f"{parser.prog}: no finished nonparametric run under {', '.join(args.dirs)}\n")
        print("\n".join(r["hidden_sizes"].replace("-", ",") for r in picks))
        return
    done = sum(r["stopped_by"] in FINISHED for r in rows)
    print(f"{len(rows)} runs ({done} finished, {len(rows) - done} stopped otherwise)"
          + (f"; table: {args.out}" if args.out else ""))
    for key, (run, dist) in representatives(rows).items():
        print(f"representative of [{key}]: {run['run_dir']} (seed {run['seed']}, {run['weights']} weights, "
              f"{run['hidden_sizes']}, TCE {100 * float(run['test_error']):.3f}%, distance {dist:.3f})")
    for key, vce, n in best_settings(rows, args.top):
        run = _first_parametric_run(rows, key)
        print(f"parametric [{key}]: median VCE {100 * vce:.3f}% over {n} run(s) ({run['optimizer']}, step size "
              f"{run['step_size']}, {run['norm']}, {run['hidden_sizes']})")
    if args.grid:
        print(grid_table(rows, args.grid, args.value))
    if args.write_picks:
        picks = write_picks(rows, args.write_picks, args.top)
        where = Path(args.write_picks).resolve()
        names = "" if len(picks) == 10 else " +pick=" + ",".join(p.stem for p in picks)  # p_seeds: top01..top10
        print(f"{len(picks)} settings written to {where / 'pick'}; their seeds: python train.py -m "
              f"hparams_search=p_seeds hydra.searchpath=[file://{where}]{names}")


if __name__ == "__main__":
    main()
