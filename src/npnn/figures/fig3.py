"""Figs. 3 and 4 (section 4.2): one NP run in detail, with its P comparisons."""
from __future__ import annotations

import math
import random
from pathlib import Path

from npnn.figures.common import hydra_config, pct, save, summary
from npnn.record import read_metrics, read_unit_lengths, read_units, steps_per_epoch
from npnn.units import layer_stats

__all__ = ["PAPER_FIG3", "fig3", "fig3_figures", "lifetimes", "tracking_marks", "tracked_units"]

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
    s = summary(run_dir)
    if not s:
        return Path(run_dir).name
    def g(value):
        return f"{value:g}" if isinstance(value, (int, float)) else "?"

    sizes, step, lam = "-".join(map(str, s.get("hidden_sizes") or [])), g(s.get("step_size")), g(s.get("lambda"))
    if s.get("model") == "nonparametric":
        return f"NP {sizes}, {s.get('optimizer')}, alpha_phi {step}, lambda {lam}"
    return f"P {sizes}, {s.get('optimizer')}, alpha {step}, lambda {lam} ({s.get('norm')})"


def _end_step(run_dir: Path) -> float:
    s = summary(run_dir)
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


def tracked_units(run_dir: str | Path, layer: int, until: float | None = None,
                  seed: int = 0) -> tuple[list[int], list[int]]:
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
    return save(fig, out / "fig3") + save(fig4, out / "fig4") + _fig3_tables(np_run, p_runs, out)


def fig3_figures(np_run: str | Path, sgd_run: str | Path | None = None, rmsprop_run: str | Path | None = None,
                 paper_sizes: tuple[int, ...] | None = PAPER_FIG3["sizes"]):
    """The matplotlib figures of :func:`fig3`: Fig. 3 (axes A-F in reading order) and Fig. 4."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter

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
        c.plot([r["epoch_float"] for r in metrics], [r[layer] for r in metrics],
               color=colour, label=f"layer {layer[10:]}")
    for size, colour in zip(paper_sizes or (), ("tab:blue", "tab:orange")):
        c.axhline(size, color=colour, ls="--", lw=0.8, label=f"the paper's final size, {size}")
    c.set(title="(C) hidden sizes (NP run)", xlabel="epoch", ylabel="hidden units")
    c.legend(fontsize=8)
    c.grid(alpha=0.3)
    _draw_lifetimes(d, np_run, 1, "(D) lifetimes of layer 1's units")
    config = hydra_config(np_run)
    until = config.model.growth.get("until") if config is not None else None
    lengths = read_unit_lengths(np_run)
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
        ax.legend(handles=[Line2D([], [], color="#1f4e9c", label="fan-in"),
                           Line2D([], [], color="#b22222", label="fan-out"),
                           Line2D([], [], color="#8fb3e8", label="fan-in, late survivor"),
                           Line2D([], [], color="#f2a0a0", label="fan-out, late survivor")], fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(f"Fig. 3: {summary(np_run).get('dataset', '')} NP run {np_run}")
    fig4 = Figure(figsize=(7, 4.5), layout="constrained")
    _draw_lifetimes(fig4.add_subplot(), np_run, 2, f"Fig. 4: lifetimes of layer 2's units, NP run {np_run}")
    return fig, fig4


def _fig3_tables(np_run: Path, p_runs: list[Path], out: Path) -> list[Path]:
    stats = {s["layer"]: s for s in layer_stats(np_run)}
    s = summary(np_run)

    def cells(key, fmt):  # one value per hidden layer
        return ", ".join(f"layer {l}: {'none' if math.isnan(stats[l][key]) else fmt(stats[l][key])}"
                         for l in sorted(stats))

    lines = ["# Fig. 3: one NP training run in detail (section 4.2)", "", "| | the paper | this run |", "|---|---|---|",
             f"| final hidden sizes | {'-'.join(map(str, PAPER_FIG3['sizes']))} | "
             f"{'-'.join(map(str, s.get('hidden_sizes', [])))} |",
             f"| first elimination | {PAPER_FIG3['first_elimination']} | "
             f"{cells('first_elimination', lambda v: f'epoch {v:.1f}')} |",
             f"| lifetime of eliminated units, median | {PAPER_FIG3['lifetime']} | "
             f"{cells('life_median', lambda v: f'{v:.1f} epochs')} |",
             "| units ever / alive at the end | - | " +
             ", ".join(f"layer {l}: {stats[l]['units']} / {stats[l]['alive']}" for l in sorted(stats)) + " |",
             "", "| run | final VCE | final TCE | lowest train CE | the paper's train CE |", "|---|---|---|---|---|"]
    for run in [np_run, *p_runs]:
        rs = summary(run)
        ce = min((v for v in _series(run, "train/ce")[1] if not math.isnan(v)), default=math.nan)
        paper = "not near zero (about 30 of 50,000 training examples misclassified)" if run == np_run else \
            PAPER_FIG3["p_train_ce"]
        lines.append(f"| {_label(run)} | {pct(rs.get('val_error', math.nan))} | "
                     f"{pct(rs.get('test_error', math.nan))} | "
                     f"{ce:.3g} | {paper} |")
    (out / "fig3.md").write_text("\n".join(lines) + "\n")
    l2 = stats.get(2, {})
    (out / "fig4.md").write_text(
        "# Fig. 4: lifetimes of the second hidden layer's units\n\n| | the paper | this run |\n|---|---|---|\n"
        f"| eliminated units' median lifetime | {PAPER_FIG3['lifetime']} | "
        f"{l2.get('life_median', float('nan')):.1f} epochs |\n"
        f"| units ever / alive at the end | - | {l2.get('units', 0)} / {l2.get('alive', 0)} |\n")
    return [out / "fig3.md", out / "fig4.md"]
