"""The paper's figures and tables, regenerated: ``python -m npnn.figures ARTEFACT [--out results] ...``.

Each artefact writes a Markdown table (and, for figures, PNG and PDF) into ``--out``, with the
paper's numbers beside ours where the paper gives them:

- ``table2 --np DIR.. [--p DIR..] [--baselines JSON] [--seeds DIR..]``: Table 2 (poker) from run directories.
- ``fig2 --np DIR.. [--p DIR..] [--random DIR..]``: Fig. 2, test error against size, from sweeps.
- ``fig3 NP_RUN [--sgd RUN] [--rmsprop RUN]``: Figs. 3 (A-F) and 4 from one NP run and its P comparisons.
- ``claim --np RUN.. --random DIR``: the practical claim, one NP run's CPU time against the CPU time a random
  search needs before its pick matches the NP run's test error.

Table 1 (a timing) is a benchmark: ``python -m npnn.bench table1``. ``bash reproduce.sh`` runs every stage
and then these.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from npnn.figures.claim import claim, search_curve
from npnn.figures.fig2 import PAPER_FIG2, fig2, fig2_figure, fig2_points
from npnn.figures.fig3 import PAPER_FIG3, fig3, fig3_figures, lifetimes, tracked_units, tracking_marks
from npnn.figures.table2 import PAPER_TABLE2, table2

__all__ = ["PAPER_TABLE2", "PAPER_FIG2", "PAPER_FIG3", "table2", "fig2", "fig2_points", "fig2_figure", "fig3",
           "fig3_figures", "lifetimes", "tracking_marks", "tracked_units", "search_curve", "claim", "main"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m npnn.figures", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="artefact", required=True)
    f2 = sub.add_parser("fig2", help="Fig. 2: test error against size, NP representatives and P winners")
    f2.add_argument("--np", nargs="+", required=True, metavar="DIR", help="NP seed sweeps (hparams_search=np_seeds)")
    f2.add_argument("--p", nargs="*", default=[], metavar="DIR",
                    help="P sweeps at the representatives' sizes (p_seeds)")
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
    t2.add_argument("--seeds", nargs="*", default=[], metavar="DIR",
                    help="more NP runs (other seeds): each against the P net of its sizes, with exact tests")
    cl = sub.add_parser("claim", help="the practical claim: one NP run's CPU time against a random search's")
    cl.add_argument("--np", nargs="+", required=True, metavar="DIR", help="NP runs (each a finished run)")
    cl.add_argument("--random", nargs="+", required=True, metavar="DIR", help="the random search (p_random)")
    for p in (f2, f3, t2, cl):
        p.add_argument("--out", default="results", help="the results folder (default: results)")
    args = parser.parse_args(argv)
    for d in [*getattr(args, "np", []), *getattr(args, "p", []), *getattr(args, "random", []),
              *getattr(args, "seeds", [])]:
        if not Path(d).is_dir():
            parser.error(f"no such directory: {d}")
    try:
        if args.artefact == "table2":
            print(table2(args.np, args.p, args.baselines, args.out, args.seeds))
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
