"""Benchmarks that print ratios against a baseline timed in the same process.

    python -m npnn.bench optimizer [--shapes mnist poker] [--rounds 30] [--steps 10]

``optimizer`` times one optimizer step (gradients given) on the weight shapes of the
paper's MNIST net (784-1000-1000-10) and a poker-like net (10-300-260-260-130-2):
AdaRad, AdaRadM, SGD, SGD with l2 group shrinkage, and torch's foreach RMSprop and
Adam. Optimizers are timed in interleaved rounds; the median over rounds is reported
with its ratio to SGD. Table 1 of the paper: AdaRad needs fewer operations per
weight than RMSprop.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from npnn.optim import AdaRad, AdaRadM

SHAPES = {"mnist": [784, 1000, 1000, 10], "poker": [10, 300, 260, 260, 130, 2]}


class GroupShrinkSGD(torch.optim.SGD):
    """SGD followed by l2 group shrinkage of every row: ``w *= max(0, 1 - lr * lam / |w|)``."""

    def __init__(self, params, lr: float, lam: float) -> None:
        super().__init__(params, lr=lr, foreach=True)
        self.lam = lam

    @torch.no_grad()
    def step(self, closure=None):
        loss = super().step(closure)
        for group in self.param_groups:
            for p in group["params"]:
                norm = torch.linalg.vector_norm(p, dim=1, keepdim=True)
                p.mul_((1 - group["lr"] * self.lam / norm.clamp_min(1e-30)).clamp_min(0))
        return loss


def make_weights(dims: list[int], seed: int = 0) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    params = []
    for d_in, d_out in zip(dims[:-1], dims[1:]):
        p = torch.nn.Parameter(torch.randn(d_out, d_in, generator=g) / d_in ** 0.5)
        p.grad = torch.randn(d_out, d_in, generator=g) * 1e-5
        params.append(p)
    return params


def optimizers(dims: list[int]) -> dict[str, torch.optim.Optimizer]:
    """Each optimizer on its own copy of the same weights and gradients."""
    lam, n = 1e-6, 800_000
    return {
        "SGD": torch.optim.SGD(make_weights(dims), lr=1.0, foreach=True),
        "SGD+shrink": GroupShrinkSGD(make_weights(dims), lr=1.0, lam=lam),
        "AdaRad": AdaRad(make_weights(dims), alpha_r=1 / (5 * lam), alpha_phi=10.0, lam=lam, dataset_size=n),
        "AdaRadM": AdaRadM(make_weights(dims), alpha_r=1 / (5 * lam), alpha_phi=10.0, lam=lam, dataset_size=n),
        "RMSprop": torch.optim.RMSprop(make_weights(dims), lr=1e-3, alpha=0.995, eps=1e-8, foreach=True),
        "Adam": torch.optim.Adam(make_weights(dims), lr=1e-3, betas=(0.9, 0.995), eps=1e-8, foreach=True),
    }


def time_steps(opt: torch.optim.Optimizer, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        opt.step()
    return (time.perf_counter() - start) / steps


def bench_optimizer(shapes: list[str], rounds: int, steps: int) -> dict[str, dict[str, float]]:
    results = {}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; median of {rounds} rounds x {steps} steps")
    for name in shapes:
        dims = SHAPES[name]
        opts = optimizers(dims)
        for opt in opts.values():  # warm-up: state allocation, first-call overheads
            time_steps(opt, 3)
        times = {k: [] for k in opts}
        for _ in range(rounds):
            for k, opt in opts.items():
                times[k].append(time_steps(opt, steps))
        medians = {k: statistics.median(v) for k, v in times.items()}
        results[name] = medians
        n_weights = sum(a * b for a, b in zip(dims[:-1], dims[1:]))
        print(f"\n{name} {'-'.join(map(str, dims))} ({n_weights:,} weights)")
        print(f"{'optimizer':<12}{'median us/step':>16}{'/ SGD':>9}{'/ RMSprop':>11}")
        for k, t in medians.items():
            print(f"{k:<12}{t * 1e6:>16.1f}{t / medians['SGD']:>9.2f}{t / medians['RMSprop']:>11.2f}")
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m npnn.bench", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    p_opt = sub.add_parser("optimizer", help="time one optimizer step on the paper's weight shapes")
    p_opt.add_argument("--shapes", nargs="+", choices=sorted(SHAPES), default=["mnist", "poker"])
    p_opt.add_argument("--rounds", type=int, default=30)
    p_opt.add_argument("--steps", type=int, default=10)
    p_opt.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.what == "optimizer":
        bench_optimizer(args.shapes, args.rounds, args.steps)


if __name__ == "__main__":
    main()
