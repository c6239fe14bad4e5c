"""Plot one run: ``python -m npnn.plot RUN_DIR [--out STEM]``.

Reads the run's ``logs/version_*/metrics.csv`` (:func:`npnn.record.read_metrics`: a resumed run's versions in
order; a step logged twice keeps its later row) and draws, over Lightning's optimizer steps (training
time: a rewind does not move them back), the validation and test classification error, the
train cross-entropy, the hidden sizes, the step size and lambda, with the protocol's phases
shaded. Writes ``STEM.png`` and ``STEM.pdf`` (default ``RUN_DIR/plots/run``).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from npnn.record import PHASES, read_metrics, read_summary

__all__ = ["read_metrics", "phases", "plot_run", "main"]

COLOURS = {"grow": "#d9f0d3", "prune": "#fde0c5", "fit": "#dde8f6", "anneal": "#ece2f0"}


def _kind(run_dir: Path) -> str:
    summary = read_summary(run_dir)
    if summary is not None:
        return summary.get("model", "nonparametric")
    config = run_dir / ".hydra" / "config.yaml"
    if config.is_file():
        from omegaconf import OmegaConf

        return OmegaConf.load(config).model.kind
    return "nonparametric"


def phases(rows: list[dict[str, float]], kind: str) -> list[tuple[str, float, float]]:
    """``(phase, first step, last step)`` spans from the protocol's ``protocol/phase`` codes."""
    names, spans = PHASES[kind], []
    marks = [(r["step"], int(r["protocol/phase"])) for r in rows if "protocol/phase" in r]  # the phase from then on
    ends = [step for step, _ in marks[1:]] + [rows[-1]["step"]] if marks else []
    for (start, code), end in zip(marks, ends):
        name = names[code] if 0 <= code < len(names) else "stop"
        if spans and spans[-1][0] == name:
            spans[-1] = (name, spans[-1][1], end)
        elif name != "stop":
            spans.append((name, start, end))
    return spans


def plot_run(run_dir: str | Path, out: str | Path | None = None):
    """Draw the run and write ``out`` + ``.png`` / ``.pdf``; returns the matplotlib figure."""
    from matplotlib.figure import Figure

    run_dir = Path(run_dir)
    rows = read_metrics(run_dir)
    val = [r for r in rows if "val/error" in r]
    if not val:
        raise ValueError(f"{run_dir}: metrics.csv has no validation rows yet")
    step = [r["step"] for r in val]
    layers = sorted({k for r in val for k in r if k.startswith("size/layer")}, key=lambda k: int(k[len("size/layer"):]))
    panels = [("classification error (%)", [("validation", "val/error"), ("test", "test/error")], 100.0, "log"),
              ("train cross-entropy (nats)", [("train", "train/ce")], 1.0, "log"),
              ("hidden units", [(f"layer {k[len('size/layer'):]}", k) for k in layers], 1.0, "linear"),
              ("step size", [("step size", "step_size")], 1.0, "log"),
              ("lambda", [("lambda", "lambda")], 1.0, "symlog")]  # symlog: lambda = 0 after the prune stage
    fig = Figure(figsize=(8, 11), layout="constrained")
    axes = fig.subplots(len(panels), 1, sharex=True)
    spans = phases(rows, _kind(run_dir))
    for ax, (label, series, scale, yscale) in zip(axes, panels):
        for name, first, last in spans:
            ax.axvspan(first, last, color=COLOURS[name], lw=0, label=f"phase: {name}" if ax is axes[0] else None)
        for legend, key in series:
            points = [(s, r[key] * scale) for s, r in zip(step, val) if key in r]
            if yscale == "log":
                points = [(s, v) for s, v in points if v > 0]
            if points:
                thin = key == "test/error"  # under the validation error, which the protocol follows
                ax.plot(*zip(*points), label=legend, lw=0.8 if thin else 1.2, alpha=0.8 if thin else 1.0)
        if yscale == "symlog" and ax.lines:
            positive = [v for line in ax.lines for v in line.get_ydata() if v > 0]
            ax.set_yscale("symlog", linthresh=min(positive) / 10 if positive else 1e-12)
        elif yscale == "log" and ax.lines:
            ax.set_yscale("log")
        ax.set_ylabel(label)
        if ax.lines:
            ax.legend(loc="best", fontsize=8, ncol=2 if ax is axes[0] else 1)
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("optimizer steps (training time)")
    fig.suptitle(f"{run_dir.name}: {len(val)} validations")
    out = Path(out) if out is not None else run_dir / "plots" / "run"
    out.parent.mkdir(parents=True, exist_ok=True)
    for suffix in (".png", ".pdf"):
        fig.savefig(out.with_suffix(suffix), dpi=110)
    return fig


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m npnn.plot", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", help="a run directory (train.py's hydra.run.dir)")
    parser.add_argument("--out", default=None, help="output path without suffix (default: RUN_DIR/plots/run)")
    args = parser.parse_args(argv)
    try:
        plot_run(args.run_dir, args.out)
    except (FileNotFoundError, ValueError) as err:
        parser.exit(1, f"{parser.prog}: error: {err}\n")
    out = Path(args.out) if args.out else Path(args.run_dir) / "plots" / "run"
    print(f"wrote {out.with_suffix('.png')} and {out.with_suffix('.pdf')}")


if __name__ == "__main__":
    main()
