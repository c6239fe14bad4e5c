"""The paper's figures and tables, regenerated: ``python -m npnn.figures ARTEFACT [--out results] ...``.

Each artefact writes a Markdown table (and, for figures, PNG and PDF) into ``--out``, with the
paper's numbers beside ours where the paper gives them. So far:

- ``table1``: Table 1 measured, the optimizer step cost per weight of SGD, SGD with l2
  shrinkage, AdaRad, AdaRad-M, RMSprop and Adam (``python -m npnn.bench optimizer``'s timing),
  beside the paper's operation counts.
"""
from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["PAPER_TABLE1", "table1", "main"]

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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m npnn.figures", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="artefact", required=True)
    t1 = sub.add_parser("table1", help="Table 1 measured: optimizer step cost per weight")
    t1.add_argument("--rounds", type=int, default=30)
    t1.add_argument("--steps", type=int, default=5)
    t1.add_argument("--out", default="results", help="the results folder (default: results)")
    args = parser.parse_args(argv)
    if args.artefact == "table1":
        print(table1(args.out, args.rounds, args.steps))
        print(f"wrote {Path(args.out) / 'table1.md'}")


if __name__ == "__main__":
    main()
