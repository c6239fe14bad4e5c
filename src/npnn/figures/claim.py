"""The practical claim (section 4.4): one NP run's CPU time against the CPU time a random search needs."""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from npnn.figures.common import pct, save, test_examples
from npnn.record import FINISHED, UNFINISHED
from npnn.sweeps import gather

__all__ = ["search_curve", "claim", "within_noise"]

NOISE_LEVEL = 0.05


def within_noise(tce: float, target: float, examples: int) -> bool:
    """Whether a test error ``tce`` is as low as ``target`` within the noise of counting errors on ``examples``
    test examples: at most as many errors, or more, but not so many more that the exact conditional binomial test
    (two Poisson counts at one rate split as Binomial(k + m, 1/2)) tells them apart at the 5% level (two-sided).
    Lenient: it leaves out that both nets are scored on the same examples; where they share errors a paired
    test (McNemar's, which needs each example's prediction) would tell more of them apart."""
    from scipy.stats import binomtest

    if math.isnan(tce):
        return False
    k, m = round(tce * examples), round(target * examples)
    return k <= m or binomtest(k, k + m).pvalue >= NOISE_LEVEL

def _job_number(run_dir: str | Path) -> int:
    """The order in which a random search launched a run (``hydra.job.num``): its directory is ``trial<num>``
    (``hparams_search=p_random``'s ``hydra.sweep.subdir``), else ``.hydra/hydra.yaml`` says it."""
    trial = re.fullmatch(r"trial(\d+)", Path(run_dir).name)
    if trial:
        return int(trial.group(1))
    from omegaconf import OmegaConf

    path = Path(run_dir) / ".hydra" / "hydra.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing, and {Path(run_dir).name} is not a trial<k> directory: the claim "
                                f"needs the random search's own run directories")
    return int(OmegaConf.load(path).hydra.job.num)


def _timed(row: dict[str, Any]) -> bool:
    """Whether a run's summary holds its whole CPU time (not resumed from a checkpoint without that record)."""
    return row["cpu_time_s"] is not None and row["time_complete"] is not False


def _cpu_s(row: dict[str, Any]) -> float:
    if not _timed(row):
        raise ValueError(f"{row['run_dir']}: its summary.json has no complete cpu_time_s (written by npnn before "
                         f"the record of compute time, or resumed from such a checkpoint): run it again")
    return float(row["cpu_time_s"])


def search_curve(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A random search as it went: after each trial (in draw order), its cumulative CPU time, the trial it would
    pick (the lowest VCE so far; a failed trial counts as VCE 1) and that trial's TCE, and the lowest TCE so far
    (an oracle that reads the test set: the search's best case, never a choice). The curve stops before the first
    trial that has not ended (one under way, without a summary, or stopped from outside: it resumes)."""
    numbers = [_job_number(r["run_dir"]) for r in rows]
    if len(set(numbers)) != len(numbers):
        raise ValueError("two runs of the search have the same trial number (hydra.job.num): give the claim one "
                         "search's directory, whose runs are named trial0, trial1, ...")
    curve, cpu, pick, oracle = [], 0.0, None, math.inf
    for number, row in sorted(zip(numbers, rows), key=lambda t: t[0]):
        if number != len(curve) or row["stopped_by"] in UNFINISHED:
            break
        cpu += _cpu_s(row)
        ok = row["stopped_by"] in FINISHED
        vce = float(row["val_error"]) if ok else 1.0
        if pick is None or vce < pick[0]:
            pick = (vce, float(row["test_error"]) if ok else math.nan, row)
        if ok:
            oracle = min(oracle, float(row["test_error"]))
        curve.append({"trial": len(curve) + 1, "cpu_s": cpu, "pick_vce": pick[0], "pick_tce": pick[1],
                      "pick_sizes": pick[2]["hidden_sizes"], "oracle_tce": oracle, "row": row})
    return curve


def _first(curve: list[dict[str, Any]], key: str, target: float, examples: int | None = None) -> dict[str, Any] | None:
    """The first point of ``curve`` whose ``key`` is at most ``target`` (with ``examples``: within noise of it)."""
    if examples is None:
        return next((c for c in curve if c[key] <= target), None)
    return next((c for c in curve if within_noise(c[key], target, examples)), None)


def claim(np_dirs, random_dirs, out: str | Path = "results") -> list[Path]:
    """Per data set: each NP run's CPU time and TCE against the random search's CPU time until its pick (lowest
    VCE so far) has a TCE as low, and until its best TCE so far (the oracle) is; ``claim_<dataset>.md/.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    np_rows = [r for r in gather(np_dirs) if r["model"] == "nonparametric" and r["stopped_by"] in FINISHED]
    random_rows = [r for r in gather(random_dirs) if r["model"] == "parametric"]
    if not np_rows:
        raise ValueError(f"no finished nonparametric run under {', '.join(map(str, np_dirs))}")
    out, written = Path(out), []
    out.mkdir(parents=True, exist_ok=True)
    for dataset in sorted({r["dataset"] for r in np_rows}):
        trials = [r for r in random_rows if r["dataset"] == dataset]
        if not trials:
            raise ValueError(f"no random-search run on {dataset} under {', '.join(map(str, random_dirs))}")
        untimed = [r for r in np_rows if r["dataset"] == dataset and not _timed(r)]
        nps = sorted((r for r in np_rows if r["dataset"] == dataset and _timed(r)), key=_cpu_s)
        if not nps:
            raise ValueError(f"no NP run on {dataset} records its whole CPU time (cpu_time_s): run one again")
        curve = search_curve(trials)
        if not curve or math.isinf(curve[-1]["oracle_tce"]):
            raise ValueError(f"no trial of the random search on {dataset} ended: nothing to compare")
        end, later = curve[-1], len(trials) - len(curve)
        examples = {r["run_dir"]: test_examples(r["run_dir"]) for r in nps}
        counted = sorted({n for n in examples.values() if n})
        hours = 3600.0

        def reach(c: dict[str, Any] | None) -> str:
            return f"{c['cpu_s'] / hours:.2f} h (trial {c['trial']})" if c else f"not reached ({len(curve)} trials)"

        lines = [f"# The practical claim, {dataset}: one NP run against a random search", "",
                 f"The random search: {len(curve)} trials, {end['cpu_s'] / hours:.2f} CPU hours in all; after "
                 f"all of them it picks (lowest VCE) a {end['pick_sizes']} net with VCE {pct(end['pick_vce'])}, "
                 f"TCE {pct(end['pick_tce'])}; its lowest TCE of any trial is {pct(end['oracle_tce'])}."
                 + (f" Left out: every trial from trial {len(curve)} on ({later} with a summary), as trial "
                    f"{len(curve)} has not ended (under way, or stopped and resumable)." if later else ""), "",
                 "Trials in draw order (`hydra.job.num`), as one worker would run them; CPU time is each run's "
                 "`cpu_time_s` (process CPU seconds, all threads, over every fit of the run). \"search, pick\": "
                 "the CPU time until the trial with the lowest VCE so far has a TCE at most the NP run's (the "
                 "choice by VCE, as in the paper); \"search, oracle\": until any trial has (the search's best case)."
                 + (f" \"pick, within noise\": until the pick's TCE is at most the NP run's or, as a count of the "
                    f"{' or '.join(f'{n:,}' for n in counted)} test examples, not told apart from it by the exact "
                    f"conditional binomial test (two-sided, 5%; unpaired: lenient where the nets share errors)."
                    if counted else ""), "",
                 "| NP run | sizes | TCE | CPU time | search, pick | search, oracle |"
                 + (" pick, within noise |" if counted else ""), "|---" * (7 if counted else 6) + "|"]
        for r in nps:
            tce = float(r["test_error"])
            lines.append(f"| lambda = {float(r['lambda']):g}, seed {r['seed']} "
                         f"(`{r['run_dir']}`) | {r['hidden_sizes']} "
                         f"| {pct(tce)} | {_cpu_s(r) / hours:.2f} h | {reach(_first(curve, 'pick_tce', tce))} | "
                         f"{reach(_first(curve, 'oracle_tce', tce))} |"
                         + ("" if not counted else " - |" if not examples[r["run_dir"]] else
                            f" {reach(_first(curve, 'pick_tce', tce, examples[r['run_dir']]))} |"))
        lines += ["", "Every trial (`run`: its directory; VCE and TCE of its final network; a failed trial "
                      "counts as VCE 1):", "",
                  "| trial | run | algorithm | alpha | BatchNorm | sizes | VCE | TCE | ended by | CPU | search CPU "
                  "| pick's TCE | lowest TCE |", "|---" * 13 + "|"]
        for c in curve:
            r = c["row"]
            lines.append(f"| {c['trial']} | {Path(r['run_dir']).name} | {r['optimizer']} | {float(r['step_size']):.4g} "
                         f"| {r['norm']} | {r['hidden_sizes']} | {pct(float(r['val_error']))} "
                         f"| {pct(float(r['test_error']))} | {r['stopped_by']} | {_cpu_s(r):.0f} s "
                         f"| {c['cpu_s'] / hours:.2f} h | {pct(c['pick_tce'])} | {pct(c['oracle_tce'])} |")
        if untimed:
            names = ", ".join(f"`{r['run_dir']}`" for r in untimed)
            lines += ["", f"Left out, without a complete CPU time (run before npnn recorded it, or resumed from "
                          f"such a checkpoint): {names}."]
        (out / f"claim_{dataset}.md").write_text("\n".join(lines) + "\n")
        fig, ax = plt.subplots(figsize=(6.5, 4.2))
        x = [c["cpu_s"] / hours for c in curve]
        ax.step(x, [100 * c["pick_tce"] for c in curve], where="post", color="tab:blue",
                label="random search: TCE of its pick (lowest VCE so far)")
        ax.step(x, [100 * c["oracle_tce"] for c in curve], where="post", color="tab:blue", ls=":",
                label="random search: lowest TCE so far (oracle)")
        ax.scatter([_cpu_s(r) / hours for r in nps], [100 * float(r["test_error"]) for r in nps], color="black",
                   zorder=3, label="nonparametric runs (one each)")
        for r in nps:
            ax.annotate(f"lambda {float(r['lambda']):g} [{r['hidden_sizes']}]",
                        (_cpu_s(r) / hours, 100 * float(r["test_error"])), xytext=(5, 4), textcoords="offset points",
                        fontsize=7)
        ax.set(xscale="log", yscale="log", xlabel="CPU time (hours)", ylabel="test error (%)",
               title=f"{dataset}: one NP run against a random search")
        for axis in (ax.xaxis, ax.yaxis):  # 0.1, 0.2, 0.5: not 10^-1
            axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            axis.set_minor_formatter(FuncFormatter(
                lambda v, _: f"{v:g}" if v > 0 and round(v / 10 ** math.floor(math.log10(v))) in (2, 3, 5) else ""))
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
        fig.tight_layout()
        written += save(fig, out / f"claim_{dataset}") + [out / f"claim_{dataset}.md"]
        plt.close(fig)
    return written
