"""Fig. 2 (section 4.1): test error against network size, NP representatives against P winners."""
from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

from npnn.figures.common import pct, save
from npnn.record import FINISHED
from npnn.sweeps import best_settings, gather, representatives

__all__ = ["PAPER_FIG2", "fig2", "fig2_points", "fig2_figure"]

# The paper gives Fig. 2 as a plot only; its text (section 4.1) says this of each data set
PAPER_FIG2 = {
    "mnist": "NP nets substantially outperform P nets of the same size; the best NP net is close to the best P "
             "net while substantially smaller (144 first-layer units against 694). lambda: 3e-3, 1e-3, 3e-4.",
    "rectangles_images": "NP nets underperform P nets of the same size at large lambda and outperform them at "
                         "small lambda; the best NP net is the globally best. lambda: 3e-5, 1e-6.",
    "convex": "NP nets perform badly: P nets of the same size are substantially better, with a smaller range "
              "over reruns; NP nets converge to relatively small sizes. lambda: 1e-5, 1e-8.",
}
FIG2_STYLE = {  # kind: colour, legend
    "nonparametric": ("black", "nonparametric: representative run (range over its seeds)"),
    "parametric": ("tab:red", "parametric, same size: grid winner (median, range over seeds)"),
    "random": ("tab:blue", "parametric, random search: best settings (median, range over seeds)"),
}


def _point(kind: str, runs: list[dict[str, Any]], representative: dict[str, Any] | None = None,
           median_vce: float | None = None) -> dict[str, Any]:
    """One point of Fig. 2: a representative run's size and TCE (NP), or the median TCE of a setting's seeds
    (P), with the range over the seeds."""
    tce, weights = [float(r["test_error"]) for r in runs], [float(r["weights"]) for r in runs]
    ref = representative or runs[0]
    return {"kind": kind, "setting": ref["setting"], "hidden_sizes": ref["hidden_sizes"], "runs": len(runs),
            "weights": float(ref["weights"]) if representative else statistics.median(weights),
            "test_error": float(ref["test_error"]) if representative else statistics.median(tce),
            "tce_min": min(tce), "tce_max": max(tce), "weights_min": min(weights), "weights_max": max(weights),
            "val_error": statistics.median(float(r["val_error"]) for r in runs) if median_vce is None else median_vce,
            "run_dir": ref["run_dir"], "what": f"lambda = {float(ref['lambda']):g}" if kind == "nonparametric" else
            f"{ref['optimizer']}, alpha = {float(ref['step_size']):g}, {ref['norm']}"}


def fig2_points(np_rows: list[dict[str, Any]], p_rows: list[dict[str, Any]] = (),
                random_rows: list[dict[str, Any]] = (), random_top: int = 3) -> list[dict[str, Any]]:
    """Fig. 2's points from gathered runs (``npnn.sweeps.gather``), chosen by VCE only (7.4.1 steps 2, 4, 6):

    - per NP setting (its seeds), the representative run (``npnn.sweeps.representatives``);
    - per hidden size of the P runs, the setting with the lowest median VCE (a failed seed counts as 1);
    - of the random search's runs, the ``random_top`` settings with the lowest median VCE.
    """
    def finished(rows, key):
        return [r for r in rows if r["setting"] == key and r["stopped_by"] in FINISHED]

    points = [_point("nonparametric", finished(np_rows, key), run)
              for key, (run, _) in representatives(np_rows).items()]
    p_rows = [r for r in p_rows if r["model"] == "parametric"]
    for sizes in {r["hidden_sizes"] for r in p_rows}:
        same = [r for r in p_rows if r["hidden_sizes"] == sizes]
        ranked = [(key, vce) for key, vce, _ in best_settings(same, len(same)) if finished(same, key)]
        if ranked:  # the lowest median VCE among the settings with a finished seed
            points.append(_point("parametric", finished(same, ranked[0][0]), median_vce=ranked[0][1]))
    for key, vce, _ in best_settings(list(random_rows), random_top):
        if finished(random_rows, key):
            points.append(_point("random", finished(random_rows, key), median_vce=vce))
    return sorted(points, key=lambda p: (list(FIG2_STYLE).index(p["kind"]), p["weights"]))


def fig2_figure(points: list[dict[str, Any]], dataset: str):
    """The matplotlib figure of Fig. 2 from :func:`fig2_points`: one errorbar series per kind (NP black, P grid red,
    random search blue); x the weights (NP: the range over seeds too), y the TCE in % with its range."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter

    fig = Figure(figsize=(7, 5), layout="constrained")
    ax = fig.add_subplot()
    for kind, (colour, label) in FIG2_STYLE.items():
        group = [p for p in points if p["kind"] == kind]
        if not group:
            continue
        x, y = [p["weights"] for p in group], [100 * p["test_error"] for p in group]
        yerr = [[yi - 100 * p["tce_min"] for p, yi in zip(group, y)],
                [100 * p["tce_max"] - yi for p, yi in zip(group, y)]]
        xerr = [[xi - p["weights_min"] for p, xi in zip(group, x)], [p["weights_max"] - xi for p, xi in zip(group, x)]]
        ax.errorbar(x, y, yerr=yerr, xerr=xerr, fmt="s", ms=5, color=colour, capsize=3, lw=1, label=label)
        for p, xi, yi in zip(group, x, y):  # the hidden sizes in brackets, below (NP) or above (P)
            ax.annotate(f"[{p['hidden_sizes']}]", (xi, yi), textcoords="offset points", ha="center", fontsize=8,
                        xytext=(0, -13 if kind == "nonparametric" else 7), color=colour,
                        bbox={"fc": "white", "ec": "none", "alpha": 0.7, "pad": 0.3})
    ax.set_xscale("log")
    def thousands(v, _=None, minor=False):  # 20k, 50k, 100k, 200k; no label on the other minor ticks
        if v <= 0 or (minor and round(v / 10 ** math.floor(math.log10(v))) not in (2, 5)):
            return ""
        return f"{v / 1e6:g}M" if v >= 1e6 else f"{v / 1000:g}k" if v >= 1000 else f"{v:g}"

    ax.xaxis.set_major_formatter(FuncFormatter(thousands))
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: thousands(v, minor=True)))
    ax.set_xlabel("network size (weights)")
    ax.set_ylabel("test classification error (%)")
    ax.set_title(f"Fig. 2, {dataset}: test error against network size")
    ax.legend(fontsize=8, loc="best")
    ax.grid(alpha=0.3)
    ax.margins(x=0.15, y=0.15)
    return fig


def fig2(np_dirs, p_dirs=(), random_dirs=(), out: str | Path = "results", datasets=None,
         random_top: int = 3) -> list[Path]:
    """Fig. 2 per data set: test error against network size (weights) of the NP representatives (black), the P
    grid winners at their sizes (red) and the random search's best settings (blue), hidden sizes in brackets;
    writes ``fig2_<dataset>.png/.pdf/.md``."""
    out, written = Path(out), []
    np_rows, p_rows, random_rows = gather(np_dirs), gather(p_dirs), gather(random_dirs)
    if not any(r["model"] == "nonparametric" and r["stopped_by"] in FINISHED for r in np_rows):
        raise ValueError(f"no finished nonparametric run under {', '.join(map(str, np_dirs))}")
    for dataset in datasets or sorted({r["dataset"] for r in np_rows}):
        def mine(rows):
            return [r for r in rows if r["dataset"] == dataset]

        points = fig2_points(mine(np_rows), mine(p_rows), mine(random_rows), random_top)
        fig = fig2_figure(points, dataset)
        written += save(fig, out / f"fig2_{dataset}")
        lines = [f"# Fig. 2, {dataset}: test error against network size", "",
                 "NP: the representative run of each setting, the run closest to the median weights and TCE of its "
                 "seeds (7.4.1 step 2: the only choice that reads the TCE, as in the paper); P: the median over the "
                 "seeds of the setting with the lowest median VCE.",
                 "", "| kind | setting | hidden sizes | weights | TCE | TCE range | median VCE | seeds | "
                     "representative run |",
                 "|---" * 9 + "|"]
        for p in points:
            run = f"`{p['run_dir']}`" if p["kind"] == "nonparametric" else "-"
            lines.append(f"| {p['kind']} | {p['what']} | {p['hidden_sizes']} | {p['weights']:.0f} | "
                         f"{pct(p['test_error'])} | {pct(p['tce_min'])} - {pct(p['tce_max'])} | "
                         f"{pct(p['val_error'])} | {p['runs']} | {run} |")
        lines += ["", f"The paper (section 4.1, a figure without a table): {PAPER_FIG2.get(dataset, '-')}"]
        (out / f"fig2_{dataset}.md").write_text("\n".join(lines) + "\n")
        written.append(out / f"fig2_{dataset}.md")
    return written
