"""The paper's figures and tables, regenerated: ``python -m npnn.figures ARTEFACT [--out results] ...``.

Each artefact writes a Markdown table (and, for figures, PNG and PDF) into ``--out``, with the
paper's numbers beside ours where the paper gives them:

- ``table1``: Table 1 measured, the optimizer step cost per weight of SGD, SGD with l2
  shrinkage, AdaRad, AdaRad-M, RMSprop and Adam (``python -m npnn.bench optimizer``'s timing),
  beside the paper's operation counts.
- ``table2 --np DIR.. [--p DIR..] [--baselines JSON]``: Table 2 (poker) from run directories.
- ``fig2 --np DIR.. [--p DIR..] [--random DIR..]``: Fig. 2, test error against size, from sweeps.
- ``fig3 NP_RUN [--sgd RUN] [--rmsprop RUN]``: Figs. 3 (A-F) and 4 from one NP run and its P comparisons.
- ``claim --np RUN.. --random DIR``: the practical claim, one NP run's CPU time against the CPU time a random
  search needs before its pick matches the NP run's test error.

``bash reproduce.sh`` runs every stage and then these (README "Results").
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import random
import re
import statistics
from pathlib import Path
from typing import Any

from npnn.plot import read_metrics
from npnn.runs import FINISHED, UNFINISHED
from npnn.sweeps import best_settings, gather, representatives
from npnn.units import layer_stats, read_units, steps_per_epoch

__all__ = ["PAPER_TABLE1", "PAPER_TABLE2", "PAPER_FIG2", "PAPER_FIG3", "table1", "table2", "fig2", "fig2_points",
           "fig3", "fig3_figures", "fig2_figure", "lifetimes", "tracking_marks", "tracked_units", "unit_lengths",
           "search_curve", "claim", "main"]

# Table 1 of the paper: cost per mini-batch and weight of an efficient implementation
PAPER_TABLE1 = {
    "SGD": "1 multiplication (no l2 shrinkage)",
    "SGD+shrink": "3 multiplications",
    "AdaRad": "4 multiplications (with or without l2 shrinkage)",
    "AdaRad eager": "(the same algorithm: npnn's reference tensor code)",
    "AdaRadM": "not in Table 1",
    "RMSprop": "4 multiplications, 1 division, 1 square root (no l2 shrinkage)",
    "Adam": "not in Table 1",
}


def table1(out: str | Path, rounds: int = 30, steps: int = 5) -> str:
    """Time one step of each optimizer on the paper's mnist and a poker-like net; write ``table1.md``."""
    from npnn.bench import SHAPES, bench_optimizer  # noqa: PLC0415

    results = bench_optimizer(list(SHAPES), rounds, steps)
    weights = {name: sum(a * b for a, b in zip(dims[:-1], dims[1:])) for name, dims in SHAPES.items()}
    columns = [f"{name} {'-'.join(map(str, SHAPES[name]))}: ns / weight (x RMSprop)" for name in SHAPES]
    lines = ["# Table 1, measured: optimizer step cost per weight",
             "",
             f"`python -m npnn.figures table1 --rounds {rounds} --steps {steps}` (medians of {rounds} interleaved "
             f"rounds of {steps} steps; gradients given, so only the update is timed, as in the paper's table)",
             "",
             f"| algorithm | {' | '.join(columns)} | the paper (operations per weight) |",
             "|---" * (len(columns) + 2) + "|"]
    for algorithm in results[next(iter(SHAPES))]:
        cells = [f"{results[n][algorithm] / weights[n] * 1e9:.3f} ({results[n][algorithm] / results[n]['RMSprop']:.2f})"
                 for n in SHAPES]
        lines.append(f"| {algorithm} | {' | '.join(cells)} | {PAPER_TABLE1.get(algorithm, '')} |")
    text = "\n".join(lines) + "\n"
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table1.md").write_text(text)
    return text


def _save(fig, stem: Path) -> list[Path]:
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_suffix(suffix) for suffix in (".png", ".pdf")]
    for path in paths:
        fig.savefig(path, dpi=110)
    return paths


def _summary(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / "summary.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _run_config(run_dir: Path):
    from omegaconf import OmegaConf  # noqa: PLC0415

    path = Path(run_dir) / ".hydra" / "config.yaml"
    return OmegaConf.load(path) if path.is_file() else None


def _pct(x: float) -> str:
    return f"{100 * x:.3g}%"


# ------------------------------------------------------------------------------------------------ Fig. 2
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

    points = [_point("nonparametric", finished(np_rows, key), run) for key, (run, _) in representatives(np_rows).items()]
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
    from matplotlib.figure import Figure  # noqa: PLC0415
    from matplotlib.ticker import FuncFormatter  # noqa: PLC0415

    fig = Figure(figsize=(7, 5), layout="constrained")
    ax = fig.add_subplot()
    for kind, (colour, label) in FIG2_STYLE.items():
        group = [p for p in points if p["kind"] == kind]
        if not group:
            continue
        x, y = [p["weights"] for p in group], [100 * p["test_error"] for p in group]
        yerr = [[yi - 100 * p["tce_min"] for p, yi in zip(group, y)], [100 * p["tce_max"] - yi for p, yi in zip(group, y)]]
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
        written += _save(fig, out / f"fig2_{dataset}")
        lines = [f"# Fig. 2, {dataset}: test error against network size", "",
                 "NP: the representative run of each setting, the run closest to the median weights and TCE of its "
                 "seeds (7.4.1 step 2: the only choice that reads the TCE, as in the paper); P: the median over the "
                 "seeds of the setting with the lowest median VCE.",
                 "", "| kind | setting | hidden sizes | weights | TCE | TCE range | median VCE | seeds | representative run |",
                 "|---" * 9 + "|"]
        for p in points:
            run = f"`{p['run_dir']}`" if p["kind"] == "nonparametric" else "-"
            lines.append(f"| {p['kind']} | {p['what']} | {p['hidden_sizes']} | {p['weights']:.0f} | "
                         f"{_pct(p['test_error'])} | {_pct(p['tce_min'])} - {_pct(p['tce_max'])} | "
                         f"{_pct(p['val_error'])} | {p['runs']} | {run} |")
        lines += ["", f"The paper (section 4.1, a figure without a table): {PAPER_FIG2.get(dataset, '-')}"]
        (out / f"fig2_{dataset}.md").write_text("\n".join(lines) + "\n")
        written.append(out / f"fig2_{dataset}.md")
    return written


# ------------------------------------------------------------------------------------------ Figs. 3, 4
PAPER_FIG3 = {"sizes": (193, 36), "first_elimination": "about epoch 50 (alpha_r = 1 / (50 lambda))",
              "lifetime": "about 50 epochs", "p_train_ce": "about 1e-6 (lambda = 0) and 1e-4 (SGD, lambda > 0)"}


def _series(run_dir: Path, key: str, scale: float = 1.0) -> tuple[list[float], list[float]]:
    """``key`` over epochs, from the run's ``metrics.csv`` files; a rewind (the epoch going back) breaks the line."""
    epochs, values = [], []
    for r in (r for r in read_metrics(run_dir) if key in r and "epoch_float" in r):
        if epochs and r["epoch_float"] < epochs[-1]:
            epochs.append(math.nan)
            values.append(math.nan)
        epochs.append(r["epoch_float"])
        values.append(r[key] * scale)
    return epochs, values


def _label(run_dir: Path) -> str:
    s = _summary(run_dir)
    if not s:
        return Path(run_dir).name
    def g(value):
        return f"{value:g}" if isinstance(value, (int, float)) else "?"

    sizes, step, lam = "-".join(map(str, s.get("hidden_sizes") or [])), g(s.get("step_size")), g(s.get("lambda"))
    if s.get("model") == "nonparametric":
        return f"NP {sizes}, {s.get('optimizer')}, alpha_phi {step}, lambda {lam}"
    return f"P {sizes}, {s.get('optimizer')}, alpha {step}, lambda {lam} ({s.get('norm')})"


def _end_step(run_dir: Path) -> float:
    s = _summary(run_dir)
    if s.get("epochs") is not None:
        return float(s["epochs"]) * steps_per_epoch(run_dir)
    return max(r["step"] for r in read_metrics(run_dir))


def lifetimes(run_dir: str | Path, layer: int) -> list[tuple[float, float, bool]]:
    """``(epoch added, epochs present, survived to the end)`` of every unit of hidden layer ``layer`` (from 1)."""
    run_dir = Path(run_dir)
    per_epoch, end = steps_per_epoch(run_dir), _end_step(run_dir)
    return [(u["birth"] / per_epoch, ((u["death"] if u["death"] is not None else end) - u["birth"]) / per_epoch,
             u["death"] is None) for u in read_units(run_dir) if u["layer"] == layer]


def tracking_marks(until: float) -> list[float]:
    """The epochs whose first added unit Fig. 3 E/F tracks: 0, 25, 50, 100, 200, ..., 1000 for 1000 epochs of
    growth, scaled to ``until``."""
    return sorted({0.0, until / 40, until / 20, *(until * k / 10 for k in range(1, 11))})


def tracked_units(run_dir: str | Path, layer: int, until: float | None = None, seed: int = 0) -> tuple[list[int], list[int]]:
    """Fig. 3 E/F's units of hidden layer ``layer``: (dark) 3 random initial units and the unit added nearest
    each of :func:`tracking_marks` (within an epoch: growth until epoch 1000 adds its last unit at 999), and
    (light) the 3 latest-added units that survived to the end."""
    run_dir = Path(run_dir)
    per_epoch = steps_per_epoch(run_dir)
    units = sorted((u for u in read_units(run_dir) if u["layer"] == layer), key=lambda u: (u["birth"], u["id"]))
    initial = [u["id"] for u in units if u["birth"] == 0]
    added = [u for u in units if u["birth"] > 0]
    if until is None:
        until = added[-1]["birth"] / per_epoch if added else 0.0
    dark = sorted(random.Random(seed).sample(initial, min(3, len(initial))))
    for mark in tracking_marks(until):  # the unit added nearest the mark, if one was within an epoch of it
        near = [u for u in added if abs(u["birth"] - mark * per_epoch) <= per_epoch and u["id"] not in dark]
        if near:
            dark.append(min(near, key=lambda u: (abs(u["birth"] - mark * per_epoch), u["birth"]))["id"])
    light = [u["id"] for u in reversed(added) if u["death"] is None and u["id"] not in dark][:3]
    return dark, light


def unit_lengths(run_dir: str | Path) -> dict[tuple[int, int], list[tuple[float, float, float]]]:
    """``(layer, id) -> [(epoch, fan-in length, fan-out length), ...]`` from the run's ``unit_lengths.csv``."""
    path = Path(run_dir) / "unit_lengths.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run with unit_lengths_every >= 1 (the data set's default)")
    series: dict[tuple[int, int], list[tuple[float, float, float]]] = {}
    with path.open() as f:
        for r in csv.DictReader(f):
            series.setdefault((int(r["layer"]), int(r["id"])), []).append(
                (float(r["epoch"]), float(r["fan_in"]), float(r["fan_out"])))
    return series


def _draw_lifetimes(ax, run_dir: Path, layer: int, title: str) -> None:
    lives = lifetimes(run_dir, layer)
    for survived, colour, label in ((False, "black", "eliminated"), (True, "tab:green", "survived to the end")):
        chosen = [(b, life) for b, life, s in lives if s == survived]
        if chosen:
            ax.vlines([b for b, _ in chosen], 0, [life for _, life in chosen], colors=colour, lw=0.8,
                      label=f"{label} ({len(chosen)})")
    ax.set_xlabel("epoch the unit was added")
    ax.set_ylabel("epochs present")
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)


def fig3(np_run: str | Path, sgd_run: str | Path | None = None, rmsprop_run: str | Path | None = None,
         out: str | Path = "results", paper_sizes: tuple[int, ...] | None = PAPER_FIG3["sizes"]) -> list[Path]:
    """Fig. 3 (section 4.2) from one NP run and its two P comparisons: (A) validation error and (B) train
    cross-entropy over epochs, (C) hidden sizes, (D) lifetimes of the first hidden layer's units, (E, F) fan-in
    (blue) and fan-out (red) lengths of tracked units of both hidden layers; and Fig. 4 (the second layer's
    lifetimes). Writes ``fig3`` and ``fig4`` ``.png/.pdf/.md``."""
    np_run, out = Path(np_run), Path(out)
    p_runs = [Path(r) for r in (sgd_run, rmsprop_run) if r]
    fig, fig4 = fig3_figures(np_run, sgd_run, rmsprop_run, paper_sizes)
    return _save(fig, out / "fig3") + _save(fig4, out / "fig4") + _fig3_tables(np_run, p_runs, out)


def fig3_figures(np_run: str | Path, sgd_run: str | Path | None = None, rmsprop_run: str | Path | None = None,
                 paper_sizes: tuple[int, ...] | None = PAPER_FIG3["sizes"]):
    """The matplotlib figures of :func:`fig3`: Fig. 3 (axes A-F in reading order) and Fig. 4."""
    from matplotlib.figure import Figure  # noqa: PLC0415
    from matplotlib.lines import Line2D  # noqa: PLC0415
    from matplotlib.ticker import FuncFormatter  # noqa: PLC0415

    np_run = Path(np_run)
    runs = [(np_run, "black"), *((Path(r), c) for r, c in ((sgd_run, "tab:red"), (rmsprop_run, "tab:blue")) if r)]
    fig = Figure(figsize=(10, 11), layout="constrained")
    (a, b), (c, d), (e, f) = fig.subplots(3, 2)
    for run, colour in runs:
        a.plot(*_series(run, "val/error", 100.0), color=colour, lw=1, label=_label(run))
        epochs, ce = _series(run, "train/ce")
        b.plot(epochs, [y if y > 0 else math.nan for y in ce], color=colour, lw=1, label=_label(run))
    for ax, title, ylabel in ((a, "(A) validation error", "validation classification error (%)"),
                              (b, "(B) training cross-entropy", "train cross-entropy (nats)")):
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))  # 0.01, 10: not 10^-2
        ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
        ax.set(title=title, xlabel="epoch", ylabel=ylabel)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    a.yaxis.set_minor_formatter(FuncFormatter(  # the VCE spans about a decade: 2, 3 and 5 labelled too
        lambda v, _: f"{v:g}" if v > 0 and round(v / 10 ** math.floor(math.log10(v))) in (2, 3, 5) else ""))
    metrics = [r for r in read_metrics(np_run) if "epoch_float" in r and "size/layer1" in r]
    layers = sorted({k for r in metrics for k in r if k.startswith("size/layer")}, key=lambda k: int(k[10:]))
    for layer, colour in zip(layers, ("tab:blue", "tab:orange", "tab:green", "tab:purple")):
        c.plot([r["epoch_float"] for r in metrics], [r[layer] for r in metrics], color=colour, label=f"layer {layer[10:]}")
    for size, colour in zip(paper_sizes or (), ("tab:blue", "tab:orange")):
        c.axhline(size, color=colour, ls="--", lw=0.8, label=f"the paper's final size, {size}")
    c.set(title="(C) hidden sizes (NP run)", xlabel="epoch", ylabel="hidden units")
    c.legend(fontsize=8)
    c.grid(alpha=0.3)
    _draw_lifetimes(d, np_run, 1, "(D) lifetimes of layer 1's units")
    config = _run_config(np_run)
    until = config.model.growth.get("until") if config is not None else None
    lengths = unit_lengths(np_run)
    for ax, layer, name in ((e, 1, "(E)"), (f, 2, "(F)")):
        dark, light = tracked_units(np_run, layer, until)
        for ids, shade in ((dark, ("#1f4e9c", "#b22222")), (light, ("#8fb3e8", "#f2a0a0"))):
            for uid in ids:
                points = lengths.get((layer, uid), [])
                if points:
                    ax.plot([p[0] for p in points], [p[1] for p in points], color=shade[0], lw=0.9)
                    ax.plot([p[0] for p in points], [p[2] for p in points], color=shade[1], lw=0.9)
        ax.set(title=f"{name} fan-in / fan-out lengths, layer {layer}: {len(dark)} + {len(light)} units",
               xlabel="epoch", ylabel="length (l2 norm)")
        ax.legend(handles=[Line2D([], [], color="#1f4e9c", label="fan-in"), Line2D([], [], color="#b22222", label="fan-out"),
                           Line2D([], [], color="#8fb3e8", label="fan-in, late survivor"),
                           Line2D([], [], color="#f2a0a0", label="fan-out, late survivor")], fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(f"Fig. 3: {_summary(np_run).get('dataset', '')} NP run {np_run}")
    fig4 = Figure(figsize=(7, 4.5), layout="constrained")
    _draw_lifetimes(fig4.add_subplot(), np_run, 2, f"Fig. 4: lifetimes of layer 2's units, NP run {np_run}")
    return fig, fig4


def _fig3_tables(np_run: Path, p_runs: list[Path], out: Path) -> list[Path]:
    stats = {s["layer"]: s for s in layer_stats(np_run)}
    s = _summary(np_run)

    def cells(key, fmt):  # one value per hidden layer
        return ", ".join(f"layer {l}: {'none' if math.isnan(stats[l][key]) else fmt(stats[l][key])}" for l in sorted(stats))

    lines = ["# Fig. 3: one NP training run in detail (section 4.2)", "", "| | the paper | this run |", "|---|---|---|",
             f"| final hidden sizes | {'-'.join(map(str, PAPER_FIG3['sizes']))} | {'-'.join(map(str, s.get('hidden_sizes', [])))} |",
             f"| first elimination | {PAPER_FIG3['first_elimination']} | {cells('first_elimination', lambda v: f'epoch {v:.1f}')} |",
             f"| lifetime of eliminated units, median | {PAPER_FIG3['lifetime']} | {cells('life_median', lambda v: f'{v:.1f} epochs')} |",
             "| units ever / alive at the end | - | " +
             ", ".join(f"layer {l}: {stats[l]['units']} / {stats[l]['alive']}" for l in sorted(stats)) + " |",
             "", "| run | final VCE | final TCE | lowest train CE | the paper's train CE |", "|---|---|---|---|---|"]
    for run in [np_run, *p_runs]:
        rs = _summary(run)
        ce = min((v for v in _series(run, "train/ce")[1] if not math.isnan(v)), default=math.nan)
        paper = "not near zero (about 30 of 50,000 training examples misclassified)" if run == np_run else \
            PAPER_FIG3["p_train_ce"]
        lines.append(f"| {_label(run)} | {_pct(rs.get('val_error', math.nan))} | {_pct(rs.get('test_error', math.nan))} | "
                     f"{ce:.3g} | {paper} |")
    (out / "fig3.md").write_text("\n".join(lines) + "\n")
    l2 = stats.get(2, {})
    (out / "fig4.md").write_text(
        "# Fig. 4: lifetimes of the second hidden layer's units\n\n| | the paper | this run |\n|---|---|---|\n"
        f"| eliminated units' median lifetime | {PAPER_FIG3['lifetime']} | {l2.get('life_median', float('nan')):.1f} epochs |\n"
        f"| units ever / alive at the end | - | {l2.get('units', 0)} / {l2.get('alive', 0)} |\n")
    return [out / "fig3.md", out / "fig4.md"]


# ------------------------------------------------------------------------------------------------ Table 2
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


def table2(np_dirs, p_dirs=(), baselines: str | Path | None = None, out: str | Path = "results") -> str:
    """Table 2 (poker): the baselines (``python -m npnn.baselines --out FILE``'s JSON), the NP runs (one row per
    setting: its representative), and per P size the run with the lowest VCE (7.4.2 step 2), beside the paper's
    rows (a P row of ours sits beside the paper's P row of the NP row whose size it has)."""
    lines = ["# Table 2 (poker): test classification error", "",
             "| model | lambda | starting size | final size | test error | epochs | wall | the paper |", "|---" * 8 + "|"]
    if baselines:
        errors = json.loads(Path(baselines).read_text()).get("poker", {})
        for name, paper in PAPER_TABLE2["baselines"].items():
            if name in errors:
                lines.append(f"| {name.replace('_', ' ')} | | | | {_pct(errors[name])} | | | {paper} |")
    np_rows = [r for r in gather(np_dirs) if r["model"] == "nonparametric" and r["dataset"] == "poker"]
    paper_p_of = {}  # our NP size -> the paper's P error at the NP size of that lambda
    for key, (run, _) in sorted(representatives(np_rows).items(), key=lambda kv: -float(kv[1][0]["lambda"])):
        lam = float(run["lambda"])
        config = _run_config(Path(run["run_dir"]))
        start = "-".join([str(config.model.start_units)] * int(config.model.hidden_layers)) if config is not None else ""
        paper = PAPER_TABLE2["np"].get(lam)
        paper_p_of[run["hidden_sizes"]] = PAPER_TABLE2["p"].get(paper[1]) if paper else None
        seeds = sum(r["setting"] == key for r in np_rows)
        lines.append(f"| nonparametric{f' ({seeds} runs: representative)' if seeds > 1 else ''} | {lam:g} | {start} | "
                     f"{run['hidden_sizes']} | {_pct(float(run['test_error']))} | {float(run['epochs']):.1f} | "
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
        lines.append(f"| parametric, RMSprop alpha = {float(best['step_size']):g} (lowest VCE of {len(runs)}) | | {sizes} | "
                     f"unchanged | {_pct(float(best['test_error']))} | {float(best['epochs']):.1f} | "
                     f"{_wall(best)} | {paper or '-'} |")
    lines += _p_grid_lines(p_all, bests)
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
            vce, tce = (_pct(float(r["val_error"])), _pct(float(r["test_error"]))) if ok else ("-", "-")
            lines.append(f"| {sizes} | {float(r['step_size']):g} | {vce} | {tce} | {float(r['epochs']):.1f} | {cpu} | "
                         f"{note} |")
    return lines


# -------------------------------------------------------------------------------------- the practical claim
def _job_number(run_dir: str | Path) -> int:
    """The order in which a sweep launched a run (``hydra.job.num``): a random search's draw order."""
    from omegaconf import OmegaConf  # noqa: PLC0415

    path = Path(run_dir) / ".hydra" / "hydra.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: the claim needs the sweep's own run directories")
    job = OmegaConf.load(path).hydra.job
    trial = re.fullmatch(r"trial(\d+)", Path(run_dir).name)
    if OmegaConf.is_missing(job, "num") and trial:  # a trial run as a plain run without hydra.job.num (runs/full)
        return int(trial.group(1))
    return int(job.num)


def _timed(row: dict[str, Any]) -> bool:
    """Whether a run's summary holds its whole CPU time (npnn since d66a483, never resumed from an older one)."""
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


def _first(curve: list[dict[str, Any]], key: str, target: float) -> dict[str, Any] | None:
    return next((c for c in curve if c[key] <= target), None)


def claim(np_dirs, random_dirs, out: str | Path = "results") -> list[Path]:
    """Per data set: each NP run's CPU time and TCE against the random search's CPU time until its pick (lowest
    VCE so far) has a TCE as low, and until its best TCE so far (the oracle) is; ``claim_<dataset>.md/.png``."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415
    from matplotlib.ticker import FuncFormatter  # noqa: PLC0415

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
        hours = 3600.0

        def reach(c: dict[str, Any] | None) -> str:
            return f"{c['cpu_s'] / hours:.2f} h (trial {c['trial']})" if c else f"not reached ({len(curve)} trials)"

        lines = [f"# The practical claim, {dataset}: one NP run against a random search", "",
                 f"The random search: {len(curve)} trials, {end['cpu_s'] / hours:.2f} CPU hours in all; after "
                 f"all of them it picks (lowest VCE) a {end['pick_sizes']} net with VCE {_pct(end['pick_vce'])}, "
                 f"TCE {_pct(end['pick_tce'])}; its lowest TCE of any trial is {_pct(end['oracle_tce'])}."
                 + (f" Left out: every trial from trial {len(curve)} on ({later} with a summary), as trial "
                    f"{len(curve)} has not ended (under way, or stopped and resumable)." if later else ""), "",
                 "Trials in draw order (`hydra.job.num`), as one worker would run them; CPU time is each run's "
                 "`cpu_time_s` (process CPU seconds, all threads, over every fit of the run). \"search, pick\": "
                 "the CPU time until the trial with the lowest VCE so far has a TCE at most the NP run's (the "
                 "choice by VCE, as in the paper); \"search, oracle\": until any trial has (the search's best case).",
                 "", "| NP run | sizes | TCE | CPU time | search, pick | search, oracle |", "|---" * 6 + "|"]
        for r in nps:
            tce = float(r["test_error"])
            lines.append(f"| lambda = {float(r['lambda']):g}, seed {r['seed']} (`{r['run_dir']}`) | {r['hidden_sizes']} "
                         f"| {_pct(tce)} | {_cpu_s(r) / hours:.2f} h | {reach(_first(curve, 'pick_tce', tce))} | "
                         f"{reach(_first(curve, 'oracle_tce', tce))} |")
        lines += ["", "Every trial (`run`: its directory; VCE and TCE of its final network; a failed trial "
                      "counts as VCE 1):", "",
                  "| trial | run | algorithm | alpha | BatchNorm | sizes | VCE | TCE | ended by | CPU | search CPU "
                  "| pick's TCE | lowest TCE |", "|---" * 13 + "|"]
        for c in curve:
            r = c["row"]
            lines.append(f"| {c['trial']} | {Path(r['run_dir']).name} | {r['optimizer']} | {float(r['step_size']):.4g} "
                         f"| {r['norm']} | {r['hidden_sizes']} | {_pct(float(r['val_error']))} "
                         f"| {_pct(float(r['test_error']))} | {r['stopped_by']} | {_cpu_s(r):.0f} s "
                         f"| {c['cpu_s'] / hours:.2f} h | {_pct(c['pick_tce'])} | {_pct(c['oracle_tce'])} |")
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
        written += _save(fig, out / f"claim_{dataset}") + [out / f"claim_{dataset}.md"]
        plt.close(fig)
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m npnn.figures", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="artefact", required=True)
    t1 = sub.add_parser("table1", help="Table 1 measured: optimizer step cost per weight")
    t1.add_argument("--rounds", type=int, default=30)
    t1.add_argument("--steps", type=int, default=5)
    f2 = sub.add_parser("fig2", help="Fig. 2: test error against size, NP representatives and P winners")
    f2.add_argument("--np", nargs="+", required=True, metavar="DIR", help="NP seed sweeps (hparams_search=np_seeds)")
    f2.add_argument("--p", nargs="*", default=[], metavar="DIR", help="P sweeps at the representatives' sizes (p_seeds)")
    f2.add_argument("--random", nargs="*", default=[], metavar="DIR", help="the random search's seed sweep (p_seeds)")
    f2.add_argument("--random-top", type=int, default=3, help="random-search settings to show (default 3)")
    f2.add_argument("--datasets", nargs="*", default=None, help="default: every data set of the NP runs")
    f3 = sub.add_parser("fig3", help="Figs. 3 and 4: one NP run in detail, with its P comparisons")
    f3.add_argument("np_run", help="the NP run (experiment=fig3_mnist)")
    f3.add_argument("--sgd", default=None, metavar="RUN", help="P net, SGD, the same step size and lambda")
    f3.add_argument("--rmsprop", default=None, metavar="RUN", help="P net, RMSprop alpha = 300, lambda = 0")
    f3.add_argument("--paper-sizes", nargs="*", type=int, default=list(PAPER_FIG3["sizes"]),
                    help="drawn as dashed lines in (C) (default: 193 36; none: --paper-sizes)")
    t2 = sub.add_parser("table2", help="Table 2 (poker): baselines, NP rows, P rows at the NP sizes")
    t2.add_argument("--np", nargs="+", required=True, metavar="DIR", help="NP poker runs (the table2_np_* experiments)")
    t2.add_argument("--p", nargs="*", default=[], metavar="DIR", help="P sweeps (hparams_search=p_rmsprop_poker)")
    t2.add_argument("--baselines", default=None, metavar="JSON", help="python -m npnn.baselines --out JSON")
    cl = sub.add_parser("claim", help="the practical claim: one NP run's CPU time against a random search's")
    cl.add_argument("--np", nargs="+", required=True, metavar="DIR", help="NP runs (each a finished run)")
    cl.add_argument("--random", nargs="+", required=True, metavar="DIR", help="the random search (p_random)")
    for p in (t1, f2, f3, t2, cl):
        p.add_argument("--out", default="results", help="the results folder (default: results)")
    args = parser.parse_args(argv)
    for d in [*getattr(args, "np", []), *getattr(args, "p", []), *getattr(args, "random", [])]:
        if not Path(d).is_dir():
            parser.error(f"no such directory: {d}")
    try:
        if args.artefact == "table1":
            print(table1(args.out, args.rounds, args.steps))
            written = [Path(args.out) / "table1.md"]
        elif args.artefact == "table2":
            print(table2(args.np, args.p, args.baselines, args.out))
            written = [Path(args.out) / "table2.md"]
        elif args.artefact == "claim":
            written = claim(args.np, args.random, args.out)
        elif args.artefact == "fig2":
            written = fig2(args.np, args.p, args.random, args.out, args.datasets, args.random_top)
        else:
            written = fig3(args.np_run, args.sgd, args.rmsprop, args.out, tuple(args.paper_sizes))
    except (FileNotFoundError, ValueError) as err:
        parser.exit(1, f"{parser.prog}: error: {err}\n")
    print("wrote " + ", ".join(map(str, written)))


if __name__ == "__main__":
    main()
