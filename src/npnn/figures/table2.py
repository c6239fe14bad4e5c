"""Table 2 (section 4.3, poker): the baselines, the NP rows and the P rows at the NP sizes."""
from __future__ import annotations

import json
from pathlib import Path
from statistics import median
from typing import Any

from npnn.figures.common import hydra_config, pct, test_examples
from npnn.record import FINISHED, UNFINISHED
from npnn.sweeps import gather, representatives

__all__ = ["PAPER_TABLE2", "table2"]

PAPER_TABLE2 = {  # lambda: (starting size, final size, test error)
    "np": {1e-3: ("10-10-10-10", "23-24-15-4", "0.62%"), 1e-5: ("10-10-10-10", "94-135-105-35", "0.022%"),
           1e-6: ("10-10-10-10", "210-251-224-104", "0.001%"), 1e-7: ("10-10-10-10", "299-258-259-129", "0%")},
    "p": {"23-24-15-4": "0.20%", "94-135-105-35": "0.003%", "210-251-224-104": "0.003%", "299-258-259-129": "0.002%"},
    "baselines": {"logistic_regression": "49.9% (the paper's)", "naive_bayes": "48.3% (OpenML)",
                  "decision_tree": "26.8% (OpenML)"},
}


def _wall(run: dict[str, Any]) -> str:
    """A run's wall time, over every fit; a resumed run whose earlier fits went unrecorded says so."""
    partial = run["time_complete"] is False or (run["resumed_from"] is not None and run["cpu_time_s"] is None)
    return f"{float(run['wall_time_s']):.0f} s{' (the last fit only: resumed)' if partial else ''}"


def _by_total_units(sizes) -> list[str]:
    """Hidden sizes such as "39-17-17-7", smallest net first."""
    return sorted(set(sizes), key=lambda h: sum(map(int, h.split("-"))))


def _unended(run: dict[str, Any]) -> str:
    """How a run that did not end is labelled: "not ended" resumes on a relaunch, "failed" does not."""
    return f"{'not ended' if run['stopped_by'] in UNFINISHED else 'failed'} ({run['stopped_by']})"


def table2(np_dirs, p_dirs=(), baselines: str | Path | None = None, out: str | Path = "results",
           seed_dirs=()) -> str:
    """Table 2 (poker): the baselines (``python -m npnn.baselines --out FILE``'s JSON), the NP runs (one row per
    setting: its representative), and per P size the run with the lowest VCE (7.4.2 step 2), beside the paper's
    rows (a P row of ours sits beside the paper's P row of the NP row whose size it has). With ``seed_dirs`` (more
    NP runs: other seeds), per lambda of several NP runs each run against the P pick at its sizes, and exact
    tests of the difference (:func:`seed_lines`)."""
    lines = ["# Table 2 (poker): test classification error", "",
             "| model | lambda | starting size | final size | test error | epochs | wall | the paper |",
             "|---" * 8 + "|"]
    if baselines:
        errors = json.loads(Path(baselines).read_text()).get("poker", {})
        for name, paper in PAPER_TABLE2["baselines"].items():
            if name in errors:
                lines.append(f"| {name.replace('_', ' ')} | | | | {pct(errors[name])} | | | {paper} |")
    np_rows = [r for r in gather(np_dirs) if r["model"] == "nonparametric" and r["dataset"] == "poker"]
    paper_p_of = {}  # our NP size -> the paper's P error at the NP size of that lambda
    for key, (run, _) in sorted(representatives(np_rows).items(), key=lambda kv: -float(kv[1][0]["lambda"])):
        lam = float(run["lambda"])
        config = hydra_config(Path(run["run_dir"]))
        start = "-".join([str(config.model.start_units)] * int(config.model.hidden_layers)) \
            if config is not None else ""
        paper = PAPER_TABLE2["np"].get(lam)
        paper_p_of[run["hidden_sizes"]] = PAPER_TABLE2["p"].get(paper[1]) if paper else None
        seeds = sum(r["setting"] == key for r in np_rows)
        lines.append(f"| nonparametric{f' ({seeds} runs: representative)' if seeds > 1 else ''} | {lam:g} | {start} | "
                     f"{run['hidden_sizes']} | {pct(float(run['test_error']))} | {float(run['epochs']):.1f} | "
                     f"{_wall(run)} | {f'{paper[1]}, {paper[2]}' if paper else '-'} |")
    picked = {key for key in representatives(np_rows)}
    for key in sorted({r["setting"] for r in np_rows} - picked):  # a setting none of whose runs ended: said so
        run = next(r for r in np_rows if r["setting"] == key)
        paper = PAPER_TABLE2["np"].get(float(run["lambda"]))
        lines.append(f"| nonparametric: {_unended(run)} | {float(run['lambda']):g} | | {run['hidden_sizes']} | "
                     f"- | {float(run['epochs']):.1f} | {_wall(run)} | "
                     f"{f'{paper[1]}, {paper[2]}' if paper else '-'} |")
    p_all = [r for r in gather(p_dirs) if r["model"] == "parametric" and r["dataset"] == "poker"]
    p_rows = [r for r in p_all if r["stopped_by"] in FINISHED]
    bests = {}  # per size, the run with the lowest VCE (7.4.2 step 2)
    for sizes in _by_total_units(r["hidden_sizes"] for r in p_rows):
        runs = [r for r in p_rows if r["hidden_sizes"] == sizes]
        best = bests[sizes] = min(runs, key=lambda r: (float(r["val_error"]), r["run_dir"]))
        paper = PAPER_TABLE2["p"].get(sizes) or paper_p_of.get(sizes)
        lines.append(f"| parametric, RMSprop alpha = {float(best['step_size']):g} "
                     f"(lowest VCE of {len(runs)}) | | {sizes} | "
                     f"unchanged | {pct(float(best['test_error']))} | {float(best['epochs']):.1f} | "
                     f"{_wall(best)} | {paper or '-'} |")
    lines += _p_grid_lines(p_all, bests)
    if seed_dirs:
        seed_rows = {r["run_dir"]: r for r in gather([*np_dirs, *seed_dirs])  # a run given twice counts once
                     if r["model"] == "nonparametric" and r["dataset"] == "poker"}
        lines += seed_lines(list(seed_rows.values()), p_rows)
    text = "\n".join(lines) + "\n"
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table2.md").write_text(text)
    return text


def _p_grid_lines(p_all: list[dict[str, Any]], bests: dict[str, dict[str, Any]]) -> list[str]:
    """Every P run of Table 2 by size and step size, so a reader sees whether the lowest VCE lies inside the grid
    (7.4.2 step 2) or on its edge, where the grid wants widening."""
    if not p_all:
        return []
    lines = ["", "The P rows' step sizes (the lowest VCE of each size is the row above):", "",
             "| size | alpha | VCE | TCE | epochs | CPU | |", "|---" * 7 + "|"]
    for sizes in _by_total_units(r["hidden_sizes"] for r in p_all):
        runs = sorted((r for r in p_all if r["hidden_sizes"] == sizes), key=lambda r: float(r["step_size"]))
        best = bests.get(sizes)
        edges = (float(runs[0]["step_size"]), float(runs[-1]["step_size"])) if len(runs) > 1 else ()
        for r in runs:
            ok = r["stopped_by"] in FINISHED
            note = "" if ok else _unended(r)
            if r is best:
                note = "lowest VCE"
                if float(r["step_size"]) in edges:  # a VCE of 0 no other step size can beat
                    note += ": on the grid's edge, " + ("but no validation error" if float(r["val_error"]) == 0
                                                        else "widen it")
            elif ok and best is not None and float(r["val_error"]) == float(best["val_error"]):
                note = "ties the lowest VCE (a tie goes to the first run directory by name)"
            cpu = f"{float(r['cpu_time_s']):.0f} s" if r["cpu_time_s"] is not None else "-"
            vce, tce = (pct(float(r["val_error"])), pct(float(r["test_error"]))) if ok else ("-", "-")
            lines.append(f"| {sizes} | {float(r['step_size']):g} | {vce} | {tce} | {float(r['epochs']):.1f} | {cpu} | "
                         f"{note} |")
    return lines


def _hands(run: dict[str, Any]) -> int:
    """A run's test error as a number of its test hands."""
    examples = test_examples(run["run_dir"])
    if examples is None:
        raise ValueError(f"{run['run_dir']}: its .hydra/config.yaml does not say how many test examples it has "
                         f"(dataset.loader.split): its error cannot be counted")
    return round(float(run["test_error"]) * examples)


def seed_lines(np_rows: list[dict[str, Any]], p_rows: list[dict[str, Any]]) -> list[str]:
    """Per lambda with two or more ended NP runs (seeds): each run's test errors against those of the P net of its
    sizes with the lowest VCE (7.4.2 step 2; no test error picks anything), and two exact tests of NP against P:
    the sign test over the seeds (is one better at most seeds?) and, pooled, the conditional binomial test (two
    Poisson counts at one rate split as Binomial(k + m, 1/2)) with the exact 95% interval of the rate ratio. The
    pooled test counts every error as independent, so the spread between seeds makes it too sure of itself; both
    tests leave out that the two nets are scored on the same hands, and a paired test (McNemar's) would only find
    a difference clearer where the nets share errors. One run per seed: the first by directory name, the others
    named."""
    from scipy.stats import binomtest

    by_lambda: dict[float, dict[int, list[dict[str, Any]]]] = {}
    for run in sorted(np_rows, key=lambda r: r["run_dir"]):
        if run["stopped_by"] in FINISHED:
            by_lambda.setdefault(float(run["lambda"]), {}).setdefault(int(run["seed"] or 0), []).append(run)
    lines = []
    for lam, by_seed in sorted(by_lambda.items(), key=lambda kv: -kv[0]):
        if len(by_seed) < 2:
            continue
        runs = [by_seed[seed][0] for seed in sorted(by_seed)]
        twins = [r for seed in sorted(by_seed) for r in by_seed[seed][1:]]
        paper = PAPER_TABLE2["np"].get(lam)
        lines += ["", f"## lambda = {lam:g}: {len(runs)} NP runs (seeds), each against the P net of its sizes", "",
                  "| seed | NP final size | NP VCE | NP test errors | P: alpha (lowest VCE of) | P VCE | P test errors "
                  "| NP record |", "|---" * 8 + "|"]
        pairs, np_errors = [], []
        for run in runs:
            at_size = [r for r in p_rows if r["hidden_sizes"] == run["hidden_sizes"]]
            errors = _hands(run)
            np_errors.append(errors)
            p_cells = "| - | - | -"
            if at_size:
                best = min(at_size, key=lambda r: (float(r["val_error"]), r["run_dir"]))
                pairs.append((errors, _hands(best)))
                p_cells = (f"| {float(best['step_size']):g} ({len(at_size)}) | {pct(float(best['val_error']))} | "
                           f"{pairs[-1][1]}")
            lines.append(f"| {run['seed']} | {run['hidden_sizes']} | {pct(float(run['val_error']))} | {errors} "
                         f"{p_cells} | `{run['run_dir']}` |")
        np_errors.sort()
        sizes = {test_examples(r["run_dir"]) for r in runs}
        if len(sizes) > 1:
            raise ValueError(f"the NP runs at lambda = {lam:g} have test sets of different sizes ({sorted(sizes)}): "
                             f"their errors cannot be compared")
        lines += ["", f"NP test errors over the {len(runs)} runs: {', '.join(map(str, np_errors))} (median "
                      f"{median(np_errors):g}; of {sizes.pop():,} test hands)"
                      + (f"; the paper's one run: {paper[2]}." if paper else ".")]
        if twins:
            lines.append("Left out, a second run of a seed: " + ", ".join(f"`{r['run_dir']}`" for r in twins) + ".")
        if pairs:
            nps, ps = [a for a, _ in pairs], [b for _, b in pairs]
            more, fewer = sum(a > b for a, b in pairs), sum(a < b for a, b in pairs)
            sign_p = binomtest(more, more + fewer).pvalue if more + fewer else 1.0
            lines.append(f"P at the same sizes ({len(pairs)} of the {len(runs)}): {', '.join(map(str, sorted(ps)))} "
                         f"(median {median(ps):g}).")
            lines.append(f"Sign test over the pairs: NP makes more errors than P in {more}, fewer in {fewer}, as many "
                         f"in {len(pairs) - more - fewer}; exact two-sided p = {sign_p:.3g}.")
            k, m = sum(nps), sum(ps)
            if k + m:
                pooled = binomtest(k, k + m)
                ci = pooled.proportion_ci(method="exact")
                ratio = "inf" if m == 0 else f"{k / m:.3g}"
                high = "inf" if ci.high >= 1 else f"{ci.high / (1 - ci.high):.3g}"
                lines.append(f"Pooled: NP {k} and P {m} errors; at one error rate NP's share of the {k + m} would "
                             f"be Binomial({k + m}, 1/2): exact two-sided p = {pooled.pvalue:.3g}; the rate ratio "
                             f"NP / P is {ratio}, exact 95% interval {ci.low / (1 - ci.low):.3g} to {high}.")
    return lines
