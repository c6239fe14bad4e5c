"""Unit statistics of finished (or running) runs: how many units each layer gained, kept and lost.

``python -m npnn.units RUN_DIR [RUN_DIR ...]`` reads each run's ``units.csv`` (every unit's
birth and death step, on the protocol's final timeline) and ``summary.json``, and prints one
row per hidden layer: units it ever had, units alive at the end, the surviving fraction, the
epoch of the first elimination, and the median and quartile lifetimes of the eliminated
units in epochs (the paper, section 4.2: about 50 epochs with alpha_r =
1 / (50 lambda), i.e. 5 on poker with 1 / (5 lambda)). ``--deaths-from EPOCH`` also prints
the eliminations of each epoch from ``EPOCH`` on (how the prune stage's eliminations fade);
``--lengths`` the fan-in lengths and pre-activation standard deviations (``sigma``, over
10,000 training examples) of every layer of the run's last checkpoint, the output layer
included (section 4.2: output fan-ins of length 3.5-4.5; CapNorm caps ``sigma`` at 1).
"""
from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from npnn.record import read_units, steps_per_epoch

__all__ = ["read_units", "layer_stats", "steps_per_epoch", "deaths_per_epoch", "layer_lengths"]


def layer_stats(run_dir: str | Path) -> list[dict]:
    """One dict per hidden layer: ``units`` (ever), ``alive``, ``eliminated``, the epoch of the first
    elimination and the quartile lifetimes of eliminated units (epochs)."""
    rows = read_units(run_dir)
    per_epoch = steps_per_epoch(Path(run_dir))
    stats = []
    for layer in sorted({r["layer"] for r in rows}):
        units = [r for r in rows if r["layer"] == layer]
        lives = sorted((r["death"] - r["birth"]) / per_epoch for r in units if r["death"] is not None)
        if len(lives) > 1:
            quartiles = statistics.quantiles(lives, n=4, method="inclusive")
        else:
            quartiles = lives * 3 or [float("nan")] * 3
        deaths = [r["death"] / per_epoch for r in units if r["death"] is not None]
        stats.append({"layer": layer, "units": len(units), "alive": sum(1 for r in units if r["death"] is None),
                      "eliminated": len(lives), "first_elimination": min(deaths, default=float("nan")),
                      "life_q1": quartiles[0], "life_median": quartiles[1],
                      "life_q3": quartiles[2]})
    return stats


def deaths_per_epoch(run_dir: str | Path, start: float = 0.0) -> dict[int, int]:
    """Eliminations (all layers) per whole epoch, for the epochs from ``start`` to the last elimination."""
    per_epoch = steps_per_epoch(Path(run_dir))
    epochs = [r["death"] / per_epoch for r in read_units(run_dir) if r["death"] is not None]
    epochs = [e for e in epochs if e >= start]
    counts = {e: 0 for e in range(int(start), int(max(epochs, default=start)) + 1)}
    for e in epochs:
        counts[int(e)] += 1
    return counts


def layer_lengths(run_dir: str | Path, n: int = 10_000) -> list[dict]:
    """Per layer of the run's ``checkpoints/last.ckpt``: quartiles of fan-in length and of pre-activation
    sigma over the first ``n`` training examples (the run's data, from its ``.hydra/config.yaml``)."""
    import torch
    from omegaconf import OmegaConf

    from npnn.checkpoint import read_checkpoint
    from npnn.data import load_recorded
    from npnn.nn import CapNorm, NonparametricMLP

    run_dir = Path(run_dir)
    checkpoint = read_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    net = NonparametricMLP(**checkpoint["model_config"])
    net.load_state_dict({k[len("net."):]: v for k, v in checkpoint["state_dict"].items() if k.startswith("net.")},
                        resize=True)
    cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    x = load_recorded(OmegaConf.to_container(cfg.dataset.loader, resolve=True)).x_train[:n]
    rows = []
    with torch.no_grad():
        h = x
        for l, lin in enumerate(net.linears):
            z = h @ lin.weight.T
            length = lin.weight.norm(dim=1)
            q = torch.tensor([0.0, 0.5, 1.0], dtype=z.dtype)
            rows.append({"layer": l + 1, "length": length.quantile(q).tolist(), "sigma": z.std(0).quantile(q).tolist()})
            if l < net.num_hidden_layers:  # as in training: batch statistics
                norm = net.norms[l].train()
                h = torch.relu(norm(z, length) if isinstance(norm, CapNorm) else norm(z))
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m npnn.units", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dirs", nargs="+", type=Path)
    parser.add_argument("--deaths-from", type=float, default=None, metavar="EPOCH",
                        help="also print the eliminations of every epoch from EPOCH on")
    parser.add_argument("--lengths", action="store_true",
                        help="also print fan-in lengths and pre-activation sigma per layer of the last checkpoint")
    args = parser.parse_args(argv)
    print("| run | layer | units | alive | survived | first elimination, epoch | lifetime of eliminated units, "
          "epochs (q1 / median / q3) |")
    print("|---|---|---|---|---|---|---|")
    for run_dir in args.run_dirs:
        for s in layer_stats(run_dir):
            print(f"| {run_dir.name} | {s['layer']} | {s['units']} | {s['alive']} | {s['alive'] / s['units']:.0%} | "
                  f"{s['first_elimination']:.1f} | {s['life_q1']:.2f} / {s['life_median']:.2f} / {s['life_q3']:.2f} |")
    if args.lengths:
        print("\n| run | layer | fan-in length (min / median / max) | pre-activation sigma (min / median / max) |")
        print("|---|---|---|---|")
        for run_dir in args.run_dirs:
            for r in layer_lengths(run_dir):
                print(f"| {run_dir.name} | {r['layer']} | {' / '.join(f'{v:.3g}' for v in r['length'])} | "
                      f"{' / '.join(f'{v:.3g}' for v in r['sigma'])} |")
    if args.deaths_from is not None:
        for run_dir in args.run_dirs:
            counts = deaths_per_epoch(run_dir, args.deaths_from)
            print(f"{run_dir.name}: eliminations per epoch from epoch {int(args.deaths_from)} on "
                  f"({sum(counts.values())} in all): {' '.join(map(str, counts.values()))}")


if __name__ == "__main__":
    main()
