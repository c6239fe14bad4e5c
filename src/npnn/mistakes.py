"""Which test hands a poker run's final network gets wrong, counted by kind; or, for a run on any data, how
many examples of each split its final network gets wrong.

    python -m npnn.mistakes RUN_DIR [RUN_DIR ...]
    python -m npnn.mistakes --splits RUN_DIR [RUN_DIR ...]

For runs on the generated poker data (``dataset=poker``, ``dataset.source=generated``): a mistake's kind is
its hand's UCI class, with the straights split in two, the ace-high straight (10-J-Q-K-A, whose ace is rank 1
in the features, far from 10-13) and the others. The final network is the one ``summary.json`` reports: the
protocol's best state, kept in ``checkpoints/last.ckpt``, or that checkpoint's network for a run without a
protocol (``protocol=none``).
"""
from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

import torch
from omegaconf import OmegaConf

from npnn.checkpoint import read_checkpoint
from npnn.data import load_recorded
from npnn.data.poker import GENERATOR_SEED, HAND_NAMES, deal, hand_class
from npnn.nn import NonparametricMLP

ACE_HIGH = "straight, ace-high"


def hand_kinds(hands: torch.Tensor) -> list[str]:
    """The kind of each hand (``(n, 10)``: suit, rank, ...): its UCI class name, straights split into
    ``"straight, ace-high"`` (A-10-J-Q-K) and ``"straight"`` (the others, the wheel A-2-3-4-5 among them)."""
    labels = hand_class(hands)
    ace_high = (hands[:, 1::2].sort(dim=1).values == torch.tensor([1, 10, 11, 12, 13])).all(1)
    return [ACE_HIGH if c == 4 and a else HAND_NAMES[c] for c, a in zip(labels.tolist(), ace_high.tolist())]


def final_network(run_dir: str | Path) -> NonparametricMLP:
    """The run's final network (eval mode): the protocol's best state, else the checkpoint's network."""
    checkpoint = read_checkpoint(Path(run_dir) / "checkpoints" / "last.ckpt")
    net = NonparametricMLP(**checkpoint["model_config"])
    best = (checkpoint.get("callbacks", {}).get("RewindProtocol") or {}).get("best")
    if best is not None:
        state = best["module"]["net"]
    else:
        state = {k[len("net."):]: v for k, v in checkpoint["state_dict"].items() if k.startswith("net.")}
    net.load_state_dict(state, resize=True)
    return net.eval()


def mistakes(run_dir: str | Path) -> dict:
    """``{"errors", "test_size", "kinds": Counter of the wrong hands' kinds, "totals": Counter of the test
    set's kinds}`` for the run's final network on its test split."""
    run_dir = Path(run_dir)
    cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    loader = cfg.dataset.get("loader", {})
    if not str(loader.get("_target_", "")).endswith("load_poker") or loader.get("source") != "generated":
        raise ValueError(f"{run_dir}: npnn.mistakes counts poker hands, and this run is not on the generated "
                         f"poker data (dataset=poker, dataset.source=generated)")
    splits = load_recorded(OmegaConf.to_container(loader, resolve=True), f"{run_dir}'s dataset.loader")
    n_train, n_val, n_test = (int(s) for s in loader.split)
    hands = deal(n_train + n_val + n_test, torch.Generator().manual_seed(GENERATOR_SEED))[n_train + n_val:]
    kinds = hand_kinds(hands)
    net = final_network(run_dir)
    with torch.no_grad():
        pred = torch.cat([net(x).argmax(1) for x in splits.x_test.split(10_000)])
    wrong = (pred != splits.y_test).nonzero().flatten().tolist()
    return {"errors": len(wrong), "test_size": n_test, "kinds": Counter(kinds[i] for i in wrong),
            "totals": Counter(kinds)}


def split_errors(run_dir: str | Path) -> dict[str, tuple[int, int]]:
    """``{"training": (errors, examples), "validation": ..., "test": ...}``: the run's final network (as
    :func:`final_network`) on each split of its recorded data."""
    run_dir = Path(run_dir)
    cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    splits = load_recorded(OmegaConf.to_container(cfg.dataset.loader, resolve=True), f"{run_dir}'s dataset.loader")
    net = final_network(run_dir)
    counts = {}
    with torch.no_grad():
        for name, x, y in (("training", splits.x_train, splits.y_train), ("validation", splits.x_val, splits.y_val),
                           ("test", splits.x_test, splits.y_test)):
            counts[name] = (int((net.evaluate(x, 10_000).argmax(1) != y).sum()), len(y))
    return counts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m npnn.mistakes", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dirs", nargs="+", type=Path)
    parser.add_argument("--splits", action="store_true",
                        help="any data: the final network's errors on the training, validation and test splits")
    args = parser.parse_args(argv)
    try:
        counted = {run_dir: (split_errors if args.splits else mistakes)(run_dir) for run_dir in args.run_dirs}
    except (FileNotFoundError, ValueError) as err:  # not a run directory, no checkpoint, other data
        parser.exit(1, f"{parser.prog}: error: {err}\n")
    if args.splits:
        print("| run | training errors | validation errors | test errors |")
        print("|---|---|---|---|")
        for run_dir, counts in counted.items():
            print(f"| {run_dir} | " + " | ".join(f"{e:,} of {n:,}" for e, n in counts.values()) + " |")
        return
    results = counted
    order = list(HAND_NAMES[:4]) + [ACE_HIGH] + list(HAND_NAMES[4:])
    columns = [k for k in order if any(r["kinds"][k] for r in results.values())]
    print("| run | test errors | " + " | ".join(columns) + " |")
    print("|---|---|" + "---|" * len(columns))
    for run_dir, r in results.items():
        print(f"| {run_dir} | {r['errors']} of {r['test_size']:,} | " +
              " | ".join(str(r["kinds"][k]) for k in columns) + " |")
    totals = next(iter(results.values()))["totals"]
    print("| (the test set) | | " + " | ".join(f"{totals[k]:,}" for k in columns) + " |")


if __name__ == "__main__":
    main()
