"""Benchmarks that print ratios against a baseline timed in the same process.

    python -m npnn.bench optimizer [--shapes mnist poker] [--rounds 30] [--steps 10]
    python -m npnn.bench kernels [--rounds 30]
    python -m npnn.bench epoch [--dataset poker|mnist] [--sizes ...] [--epochs N] [--data-dir DIR] [--set KEY=VALUE ...]
    python -m npnn.bench lightning [--sizes 43 44 35 24] [--rounds 5]
    python -m npnn.bench sklearn [--rounds 1]
    python -m npnn.bench eval [--nets poker mnist mnist-wide] [--rounds 5]
    python -m npnn.bench profile [--sizes 231 283 274 111] [--epochs 1] [--set KEY=VALUE ...]
    python -m npnn.bench threads [--counts 1 2] [--sizes 231 283 274 111] [--epochs 1] [--rounds 3]
    python -m npnn.bench table1 [--rounds 30] [--steps 5] [--out results]

``sklearn`` times ``NonparametricClassifier().fit`` on scikit-learn's digits (all 1,797 rows, defaults,
``random_state=0``) against ``MLPClassifier().fit`` behind a ``StandardScaler`` on the same rows, in CPU
seconds (``time.process_time``; run it with ``OMP_NUM_THREADS=1`` for one core).

``epoch`` times epochs of the app (``python train.py dataset=poker``; ``--dataset mnist``: the
Fig. 3 setting, ``experiment=fig3_mnist``), starting from ``--sizes``, against a plain PyTorch
loop training a BatchNorm net of the app's size with RMSprop, validating as often: every
interval between two validations of the app is followed by a plain-loop segment of as many
steps, and the ratios are printed.

``kernels`` times each fused CPU kernel (:mod:`npnn.fused`) against the eager code it replaces,
on poker's and mnist's shapes.

``optimizer`` times one optimizer step (gradients given) on the weight shapes of the
paper's MNIST net (784-1000-1000-10) and a poker-like net (10-300-260-260-130-2):
AdaRad (fused CPU kernel, :mod:`npnn.fused`), AdaRad's eager reference, AdaRadM, SGD, SGD with l2 group
shrinkage, and torch's foreach RMSprop and
Adam. Optimizers are timed in interleaved rounds; the median over rounds is reported
with its ratio to SGD. Table 1 of the paper: AdaRad needs fewer operations per
weight than RMSprop.
"""
from __future__ import annotations

import argparse
import logging
import statistics
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from npnn import fused as npnn_fused
from npnn.optim import AdaRad, AdaRadM, group_shrink_

SHAPES = {"mnist": [784, 1000, 1000, 10], "poker": [10, 300, 260, 260, 130, 2]}


class GroupShrinkSGD(torch.optim.SGD):
    """SGD followed by l2 group shrinkage of every row: ``w *= max(0, 1 - lr * lam / |w|)``."""

    def __init__(self, params, lr: float, lam: float) -> None:
        super().__init__(params, lr=lr, foreach=True)
        self.lam = lam

    def step(self, closure=None):
        loss = super().step(closure)
        for group in self.param_groups:
            group_shrink_(group["params"], group["lr"] * self.lam)
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
        "AdaRad eager": AdaRad(make_weights(dims), alpha_r=1 / (5 * lam), alpha_phi=10.0, lam=lam, dataset_size=n,
                               fused=False),
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
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; median of {rounds} rounds x {steps} steps; "
          f"AdaRad: the fused CPU kernel ({'built' if npnn_fused.load() else 'NOT available: eager'}), "
          f"AdaRad eager: the reference tensor code")
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
        print(f"{'optimizer':<14}{'median us/step':>16}{'/ SGD':>9}{'/ RMSprop':>11}")
        for k, t in medians.items():
            print(f"{k:<14}{t * 1e6:>16.1f}{t / medians['SGD']:>9.2f}{t / medians['RMSprop']:>11.2f}")
    return results


def batchnorm_net(num_features: int, sizes: list[int], num_classes: int) -> torch.nn.Sequential:
    """The plain loop's network: Linear (no bias) -> BatchNorm -> ReLU per hidden layer, Linear out."""
    dims = [num_features, *sizes]
    layers: list[torch.nn.Module] = []
    for a, b in zip(dims[:-1], dims[1:]):
        layers += [torch.nn.Linear(a, b, bias=False), torch.nn.BatchNorm1d(b), torch.nn.ReLU()]
    return torch.nn.Sequential(*layers, torch.nn.Linear(dims[-1], num_classes, bias=False))


def rmsprop(net: torch.nn.Module) -> torch.optim.RMSprop:
    return torch.optim.RMSprop(net.parameters(), lr=1e-3, alpha=0.995, eps=1e-8)


def plain_step(net, opt, xb, yb, dataset_size: int, backward=torch.Tensor.backward) -> None:
    """One step of the plain loop: loss = batch sum / |D| (as the app), backward, RMSprop."""
    loss = torch.nn.functional.cross_entropy(net(xb), yb, reduction="sum") / dataset_size
    opt.zero_grad(set_to_none=True)
    backward(loss)
    opt.step()


class PlainLoop:
    """A plain PyTorch loop: a fixed BatchNorm net, RMSprop, batches of 1000 by permutation, and a
    validation (forward passes over the validation and test sets) after every segment."""

    def __init__(self, splits, batch_size: int = 1000, eval_batch_size: int = 25_000) -> None:
        self.splits, self.batch_size, self.eval_batch_size = splits, batch_size, eval_batch_size
        self.generator = torch.Generator().manual_seed(0)
        self.perm = torch.randperm(len(splits.y_train), generator=self.generator)
        self.position = 0

    def segment(self, sizes: list[int], steps: int) -> float:
        """Seconds for ``steps`` training steps and one validation of a fresh net of ``sizes``."""
        s = self.splits
        net = batchnorm_net(s.num_features, sizes, s.num_classes)
        opt = rmsprop(net)
        x, y, n = s.x_train, s.y_train, len(s.y_train)
        start = time.perf_counter()
        for _ in range(steps):
            if self.position + self.batch_size > n:
                self.perm, self.position = torch.randperm(n, generator=self.generator), 0
            idx = self.perm[self.position:self.position + self.batch_size]
            self.position += self.batch_size
            plain_step(net, opt, x.index_select(0, idx), y.index_select(0, idx), n)  # gathered as the app's loader
        net.eval()
        with torch.no_grad():
            for xs in (s.x_val, s.x_test):
                for j in range(0, len(xs), self.eval_batch_size):
                    net(xs[j:j + self.eval_batch_size]).argmax(1)
        return time.perf_counter() - start


class _Interleave(pl.Callback):
    """Times the app from one validation's end to the next (training steps, growth, pruning, the
    validation, logging, checkpoints) and, after each such interval (outside its time), a plain-loop
    segment of as many steps at the app's sizes: the pairs share the machine's state of the moment."""

    def __init__(self, plain: PlainLoop) -> None:
        self.plain, self.app, self.plain_times, self.sizes = plain, [], [], []
        self._start = self._step = None

    def on_train_start(self, trainer, module) -> None:
        self._start, self._step = time.perf_counter(), module.step_count

    def on_validation_end(self, trainer, module) -> None:
        if self._start is None or trainer.sanity_checking:
            return
        self.app.append(time.perf_counter() - self._start)
        self.sizes.append(module.net.hidden_sizes)
        with torch.inference_mode(False), torch.enable_grad():  # Lightning validates under inference mode
            self.plain_times.append(self.plain.segment(module.net.hidden_sizes, module.step_count - self._step))
        self._start, self._step = time.perf_counter(), module.step_count


EPOCH_SETTINGS = {  # the app's config for `epoch`, the default starting sizes and epochs (30 validations)
    "poker": (["dataset=poker", "lambda=1e-3", "optimizer.alpha_phi=100"], [23, 24, 15, 4], 3),
    "mnist": (["experiment=fig3_mnist"], [190, 20], 30),  # Fig. 3 grows to 218-17
}


def bench_epoch(dataset: str, sizes: list[int] | None, epochs: int | None, data_dir: str = "data",
                overrides: list[str] = ()) -> float:
    """Epochs of ``python train.py`` on ``dataset`` (protocol or not as configured, growth, validations,
    checkpoints), starting from ``sizes``, paired interval by interval with a plain loop at the app's sizes."""
    import tempfile

    from npnn.config import compose
    from npnn.train import build

    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    setting, default_sizes, default_epochs = EPOCH_SETTINGS[dataset]
    sizes, epochs = sizes or default_sizes, epochs or default_epochs
    cfg = compose(*setting, f"data_dir={data_dir}", f"model.start_units={list(sizes)}",
                  f"trainer.max_epochs={epochs}", "trainer.enable_progress_bar=false", *overrides)
    with tempfile.TemporaryDirectory() as run_dir:
        trainer, module, dm = build(cfg, run_dir)
        timer = _Interleave(PlainLoop(dm.splits, dm.batch_size, dm.eval_batch_size))
        trainer.callbacks.append(timer)
        trainer.fit(module, datamodule=dm)
    per_epoch = len(timer.app) // epochs
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {dataset}, {epochs} epochs of the app (fused "
          f"kernels {'on' if npnn_fused.active(torch.zeros(1)) else 'off'}, steps_per_call "
          f"{dm.train_batches.steps_per_call}"
          f"{', ' + ' '.join(overrides) if overrides else ''}), {per_epoch} validation(s) an epoch "
          f"(validation + test sets); each interval between validations paired with a plain-loop segment of as "
          f"many steps")
    for e in range(epochs):
        sl = slice(e * per_epoch, (e + 1) * per_epoch)
        app, plain = sum(timer.app[sl]), sum(timer.plain_times[sl])
        print(f"epoch {e}: app {app:.2f} s (sizes at its end {'-'.join(map(str, timer.sizes[sl][-1]))}), plain loop "
              f"{plain:.2f} s, ratio {app / plain:.2f}")
    ratios = [a / p for a, p in zip(timer.app, timer.plain_times)]
    total = sum(timer.app) / sum(timer.plain_times)
    quartiles = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else ratios * 3
    print(f"ratio app / plain: all epochs {total:.2f}; median over {len(ratios)} intervals "
          f"{statistics.median(ratios):.2f} (quartiles {quartiles[0]:.2f}-{quartiles[2]:.2f})")
    return statistics.median(ratios)


def _median_time(fn, rounds: int, calls: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - start) / calls)
    return statistics.median(times)


def bench_kernels(rounds: int) -> dict[str, float]:
    """Each fused kernel against the eager code it replaces (``npnn.fused.use(False)``), median per call."""
    from npnn.nn import CapNorm, NonparametricMLP

    if not npnn_fused.load():
        raise SystemExit("the fused kernels are not available here (python -m npnn.fused says why)")
    g = torch.Generator().manual_seed(0)
    cases = {}
    for name, batch, widths in (("poker", 1000, [10, 43, 44, 35, 24]), ("mnist", 1000, [784, 190, 20])):
        norm = CapNorm(widths[1])
        z = torch.randn(batch, widths[1], generator=g).requires_grad_()
        length = torch.rand(widths[1], generator=g) + 0.5
        dy = torch.randn(batch, widths[1], generator=g)

        def train_step(norm=norm, z=z, length=length, dy=dy):
            norm(z, length, relu=True).backward(dy)

        net = NonparametricMLP(widths[0], widths[1:-1], widths[-1])

        def dead_check(net=net):
            net.remove_dead_units()

        cases[f"{name}: CapNorm forward + backward, {batch} x {widths[1]}"] = train_step
        cases[f"{name}: dead-unit check, {'-'.join(map(str, widths))}"] = dead_check
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; median of {rounds} rounds; eager: "
          f"npnn.fused.use(False). (The AdaRad kernel: python -m npnn.bench optimizer)")
    print(f"{'kernel, shape':<52}{'fused us':>10}{'eager us':>10}{'eager / fused':>15}")
    ratios = {}
    for label, fn in cases.items():
        calls = 200
        fused = _median_time(fn, rounds, calls)
        with npnn_fused.use(False):
            eager = _median_time(fn, rounds, calls)
        ratios[label] = eager / fused
        print(f"{label:<52}{fused * 1e6:>10.1f}{eager * 1e6:>10.1f}{eager / fused:>15.2f}")
    print("\nCapNorm evaluation (stored statistics; no kernel) against torch's BatchNorm1d evaluation, "
          "ReLU after both")
    print(f"{'shape':<52}{'CapNorm us':>10}{'BatchNorm us':>13}{'ratio':>12}")
    for name, rows, width in (("poker", 25_000, 43), ("mnist", 10_000, 190)):
        z, length = torch.randn(rows, width, generator=g), torch.rand(width, generator=g) + 0.5
        capnorm, batchnorm = CapNorm(width).eval(), torch.nn.BatchNorm1d(width).eval()

        def capnorm_eval(z=z, length=length, norm=capnorm):
            with torch.no_grad():
                norm(z, length, relu=True)

        def batchnorm_eval(z=z, norm=batchnorm):
            with torch.no_grad():
                torch.relu(norm(z))

        ours, theirs = _median_time(capnorm_eval, rounds, 20), _median_time(batchnorm_eval, rounds, 20)
        ratios[f"{name}: CapNorm evaluation / BatchNorm"] = ours / theirs
        print(f"{f'{name}: {rows} x {width}':<52}{ours * 1e6:>10.1f}{theirs * 1e6:>13.1f}{ours / theirs:>12.2f}")
    return ratios


def bench_lightning(sizes: list[int], rounds: int) -> float:
    """The cost of Lightning's training loop alone: the plain loop's training steps (BatchNorm net,
    RMSprop, no validation) as a bare loop and inside a minimal manual-optimization LightningModule,
    one epoch of each per round, interleaved."""
    from npnn.data.loaders import PermutationBatches
    from npnn.data.poker import load_poker

    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    splits = load_poker()
    x, y, n = splits.x_train, splits.y_train, len(splits.y_train)

    def make_net():
        return batchnorm_net(splits.num_features, sizes, splits.num_classes)

    class Minimal(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net, self.automatic_optimization = make_net(), False

        def configure_optimizers(self):
            return rmsprop(self.net)

        def training_step(self, batch, batch_idx):
            [(xb, yb)] = batch  # a list of steps_per_call = 1 batch
            plain_step(self.net, self.optimizers(), xb, yb, n, self.manual_backward)

    class EpochTimer(pl.Callback):
        def on_train_epoch_start(self, trainer, module) -> None:
            self.start = time.perf_counter()

        def on_train_epoch_end(self, trainer, module) -> None:
            self.seconds = time.perf_counter() - self.start

    bare, light = [], []
    for r in range(rounds):
        net = make_net()
        opt = rmsprop(net)
        start = time.perf_counter()
        for [(xb, yb)] in PermutationBatches(x, y, 1000, seed=r):
            plain_step(net, opt, xb, yb, n)
        bare.append(time.perf_counter() - start)
        timer = EpochTimer()
        trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                             enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
                             callbacks=[timer], accelerator="cpu")
        trainer.fit(Minimal(), train_dataloaders=PermutationBatches(x, y, 1000, seed=r))
        light.append(timer.seconds)
    ratio = statistics.median(l / b for l, b in zip(light, bare))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; poker epoch (800 steps, no validation) of a "
          f"{'-'.join(map(str, sizes))} BatchNorm net with RMSprop, {rounds} rounds")
    print(f"bare loop median {statistics.median(bare):.2f} s, "
          f"inside Lightning median {statistics.median(light):.2f} s, "
          f"ratio (median over rounds) {ratio:.2f}: Lightning's loop costs "
          f"{(statistics.median(light) - statistics.median(bare)) / 800 * 1e3:.2f} ms a step")
    return ratio


def bench_sklearn(rounds: int) -> float:
    """CPU seconds of ``NonparametricClassifier().fit`` on digits, and the ratio to ``MLPClassifier().fit``'s."""
    import warnings

    from sklearn.datasets import load_digits
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from npnn.sklearn import NonparametricClassifier

    X, y = load_digits(return_X_y=True)
    nonparametric, mlp, sizes = [], [], None
    for _ in range(rounds):
        start = time.process_time()
        sizes = NonparametricClassifier(random_state=0).fit(X, y).hidden_sizes_
        nonparametric.append(time.process_time() - start)
        start = time.process_time()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            make_pipeline(StandardScaler(), MLPClassifier(random_state=0)).fit(X, y)
        mlp.append(time.process_time() - start)
    np_s, mlp_s = statistics.median(nonparametric), statistics.median(mlp)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; "
          "digits (1,797 rows, 64 features, 10 classes), "
          f"{rounds} round(s)")
    print(f"NonparametricClassifier().fit: {np_s:.1f} CPU s (final sizes {'-'.join(map(str, sizes))}); "
          f"MLPClassifier().fit: {mlp_s:.2f} CPU s; ratio {np_s / mlp_s:.1f}")
    return np_s


# ------------------------------------------------------------------------------------ the evaluation path
EVAL_SETTINGS = {  # name: (inputs, hidden sizes, classes, rows): the default run's final net and Fig. 3's
    "poker": (10, [231, 283, 274, 111], 10, 125_010),
    "mnist": (784, [218, 17], 10, 10_000),
    "mnist-wide": (784, [1000, 1000], 10, 10_000),
}


def bench_eval(names: list[str], rounds: int) -> dict[str, float]:
    """One validation pass (inference mode, CapNorm with running statistics): the module's blocks of rows
    (:func:`npnn.module.eval_rows`) against one call on the whole loader batch (``dataset.eval_batch_size`` rows,
    25,000 on poker), median CPU seconds over interleaved rounds; checks that the logits are the same floats."""
    from npnn.module import eval_rows
    from npnn.nn import NonparametricMLP

    ratios = {}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {rounds} interleaved rounds")
    for name in names:
        d_in, sizes, classes, n = EVAL_SETTINGS[name]
        torch.manual_seed(0)
        net = NonparametricMLP(d_in, sizes, classes).eval()
        for norm in net.norms:
            norm.running_mean.normal_()
            norm.running_var.uniform_(0.5, 2.0)
        x, loader_rows, rows = torch.randn(n, d_in), min(n, 25_000), eval_rows(net)

        def evaluate(block: int) -> torch.Tensor:
            with torch.inference_mode():
                return torch.cat([net.evaluate(batch, block) for batch in x.split(loader_rows)])

        same = torch.equal(evaluate(rows), evaluate(loader_rows))
        times: dict[int, list[float]] = {loader_rows: [], rows: []}
        for _ in range(rounds):
            for block in times:
                start = time.process_time()
                evaluate(block)
                times[block].append(time.process_time() - start)
        one, blocked = statistics.median(times[loader_rows]), statistics.median(times[rows])
        ratios[name] = blocked / one
        print(f"{name} {d_in}-{'-'.join(map(str, sizes))}-{classes}, {n} rows: one call per {loader_rows} rows "
              f"{one:.3f} s, blocks of {rows} rows {blocked:.3f} s, ratio {blocked / one:.2f}; logits "
              f"{'the same floats' if same else 'DIFFERENT'}")
    return ratios


# ------------------------------------------------------------------------------------ where a run's time goes
PROFILE_PARTS = (  # (label, owner, method): disjoint parts of an epoch, each timed around its method
    ("training steps (Algorithm 1, growth)", "npnn.module:NonparametricModule", "training_step"),
    ("validation set", "npnn.module:NonparametricModule", "validation_step:0"),
    ("test set at validations", "npnn.module:NonparametricModule", "validation_step:1"),
    ("metrics and their logging", "npnn.module:NonparametricModule", "on_validation_epoch_end"),
    ("protocol (snapshots at new bests)", "npnn.callbacks:RewindProtocol", "on_validation_end"),
    ("unit records and lengths", "npnn.callbacks:UnitLogger", "on_validation_end"),
    ("checkpoint writes", "pytorch_lightning:Trainer", "save_checkpoint"),
)


def _default_run(sizes: list[int], epochs: int, overrides=()):
    """The default run's config (``python train.py``) at hidden ``sizes`` from the start, for ``epochs``."""
    from hydra.errors import HydraException

    from npnn.config import compose

    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    try:
        return compose(f"model.start_units={list(sizes)}", f"trainer.max_epochs={epochs}",
                       "trainer.enable_progress_bar=false", *overrides)
    except HydraException as err:
        raise SystemExit(f"npnn.bench: the config overrides (--set) do not compose: {err}") from None


def _fit(cfg) -> tuple[Any, Any, float, float]:
    """One fit of ``cfg`` in a temporary run directory: the trainer, the module, wall and CPU seconds."""
    import tempfile

    from npnn.train import build

    with tempfile.TemporaryDirectory() as run_dir:
        trainer, module, dm = build(cfg, run_dir)
        start, start_cpu = time.perf_counter(), time.process_time()
        trainer.fit(module, datamodule=dm)
        return trainer, module, time.perf_counter() - start, time.process_time() - start_cpu


def bench_profile(sizes: list[int], epochs: int, overrides: list[str] = ()) -> dict[str, float]:
    """CPU seconds of each part of the default run's epochs (``python train.py``: poker, lambda = 1e-6), at hidden
    ``sizes`` from the start (the default run ends at 231-283-274-111): each part timed around its method
    (:data:`PROFILE_PARTS`), the rest (Lightning's loop, batching) by difference from the whole fit."""
    import importlib

    cfg = _default_run(sizes, epochs, overrides)
    spent = {label: 0.0 for label, _, _ in PROFILE_PARTS}
    patched = []
    for label, owner, method in PROFILE_PARTS:
        module, name = owner.split(":")
        cls = getattr(importlib.import_module(module), name)
        method, _, loader = method.partition(":")
        original = getattr(cls, method)

        def timed(*args, _original=original, _label=label, _loader=loader, **kwargs):
            if _loader and kwargs.get("dataloader_idx", args[3] if len(args) > 3 else 0) != int(_loader):
                return _original(*args, **kwargs)
            start = time.process_time()
            try:
                return _original(*args, **kwargs)
            finally:
                spent[_label] += time.process_time() - start

        patched.append((cls, method, original))
        setattr(cls, method, timed)
    try:
        _, module, _, total = _fit(cfg)
    finally:
        for cls, method, original in reversed(patched):
            setattr(cls, method, original)
    # the two validation_step parts were patched one over the other: each counted its own loader once
    spent["the rest (Lightning's loop, batching, start-up)"] = total - sum(spent.values())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; python train.py at hidden sizes "
          f"{'-'.join(map(str, sizes))} from the start, {epochs} epoch(s), {module.step_count} steps"
          f"{', ' + ' '.join(overrides) if overrides else ''}: {total:.1f} CPU s")
    for label, seconds in spent.items():
        print(f"  {label:<48} {seconds:8.2f} s  {100 * seconds / total:5.1f}%")
    return spent




def bench_threads(sizes: list[int], epochs: int, threads: list[int], rounds: int,
                  overrides: list[str] = ()) -> dict[int, float]:
    """Wall seconds of the default run's epochs (``python train.py``) at hidden ``sizes`` from the start, with
    each number of torch threads in ``threads``, in interleaved rounds: the median per count and its ratio to
    the first. npnn's kernels give the same floats with any count (they split work by rows or columns);
    each count's final validation error is printed, as the BLAS may round otherwise with another count."""
    cfg = _default_run(sizes, epochs, overrides)
    before = torch.get_num_threads()
    wall: dict[int, list[float]] = {n: [] for n in threads}
    cpu: dict[int, list[float]] = {n: [] for n in threads}
    errors: dict[int, float] = {}
    try:
        for _ in range(rounds):
            for n in threads:
                torch.set_num_threads(n)
                trainer, _, seconds, cpu_seconds = _fit(cfg)
                wall[n].append(seconds)
                cpu[n].append(cpu_seconds)
                errors[n] = float(trainer.callback_metrics["val/error"])
    finally:
        torch.set_num_threads(before)
    print(f"torch {torch.__version__}; python train.py at hidden sizes {'-'.join(map(str, sizes))} from the start, "
          f"{epochs} epoch(s){', ' + ' '.join(overrides) if overrides else ''}; median of {rounds} interleaved "
          f"rounds, wall seconds (CPU seconds of all threads)")
    base = statistics.median(wall[threads[0]])
    for n in threads:
        median = statistics.median(wall[n])
        print(f"  {n} thread(s): {median:7.2f} s ({statistics.median(cpu[n]):7.2f} CPU s)  ratio "
              f"{median / base:.2f}  final val/error {errors[n]:.6f}")
    return {n: statistics.median(wall[n]) / base for n in threads}

# ------------------------------------------------------------------------------------ Table 1, measured
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
    """Table 1 of the paper, measured: time one step of each optimizer on the paper's mnist and a poker-like net
    (:func:`bench_optimizer`), beside the paper's operation counts; write ``OUT/table1.md``."""
    results = bench_optimizer(list(SHAPES), rounds, steps)
    weights = {name: sum(a * b for a, b in zip(dims[:-1], dims[1:])) for name, dims in SHAPES.items()}
    columns = [f"{name} {'-'.join(map(str, SHAPES[name]))}: ns / weight (x RMSprop)" for name in SHAPES]
    lines = ["# Table 1, measured: optimizer step cost per weight",
             "",
             f"`python -m npnn.bench table1 --rounds {rounds} --steps {steps}` (medians of {rounds} interleaved "
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
    parser = argparse.ArgumentParser(prog="python -m npnn.bench", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    p_opt = sub.add_parser("optimizer", help="time one optimizer step on the paper's weight shapes")
    p_opt.add_argument("--shapes", nargs="+", choices=sorted(SHAPES), default=["mnist", "poker"])
    p_opt.add_argument("--rounds", type=int, default=30)
    p_opt.add_argument("--steps", type=int, default=10)
    p_opt.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p_kernels = sub.add_parser("kernels", help="each fused CPU kernel against the eager code it replaces")
    p_kernels.add_argument("--rounds", type=int, default=30)
    p_kernels.add_argument("--threads", type=int, default=None)
    p_epoch = sub.add_parser("epoch", help="epochs of the app vs a plain PyTorch loop")
    p_epoch.add_argument("--dataset", choices=sorted(EPOCH_SETTINGS), default="poker")
    p_epoch.add_argument("--sizes", type=int, nargs="+", default=None,
                         help="starting hidden sizes (poker: 23 24 15 4; mnist: 190 20)")
    p_epoch.add_argument("--epochs", type=int, default=None, help="default: poker 3, mnist 30")
    p_epoch.add_argument("--data-dir", default="data", help="where the data sets are (mnist: its raw files)")
    p_epoch.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                         help="config overrides of the app, e.g. --set steps_per_call=1")
    p_epoch.add_argument("--threads", type=int, default=None)
    p_light = sub.add_parser("lightning", help="Lightning's training loop vs the same steps in a bare loop")
    p_light.add_argument("--sizes", type=int, nargs="+", default=[43, 44, 35, 24])
    p_light.add_argument("--rounds", type=int, default=5)
    p_light.add_argument("--threads", type=int, default=None)
    p_eval = sub.add_parser("eval", help="a validation pass in blocks of rows that fit the cache vs one call")
    p_eval.add_argument("--nets", nargs="+", choices=sorted(EVAL_SETTINGS), default=["poker", "mnist", "mnist-wide"])
    p_eval.add_argument("--rounds", type=int, default=5)
    p_eval.add_argument("--threads", type=int, default=None)
    p_profile = sub.add_parser("profile", help="where the default run's CPU time goes, part by part")
    p_profile.add_argument("--sizes", type=int, nargs="+", default=[231, 283, 274, 111])
    p_profile.add_argument("--epochs", type=int, default=1)
    p_profile.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="config overrides of the app")
    p_profile.add_argument("--threads", type=int, default=None)
    p_threads = sub.add_parser("threads", help="the default run's epochs with 1 and more torch threads, wall time")
    p_threads.add_argument("--sizes", type=int, nargs="+", default=[231, 283, 274, 111])
    p_threads.add_argument("--epochs", type=int, default=1)
    p_threads.add_argument("--counts", type=int, nargs="+", default=None,
                           help="thread counts to compare, the first the baseline (default: 1 and torch's choice)")
    p_threads.add_argument("--rounds", type=int, default=3)
    p_threads.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="config overrides of the app")
    p_threads.set_defaults(threads=None)  # it sets the counts itself
    p_table1 = sub.add_parser("table1", help="Table 1 of the paper measured (optimizer step cost per weight) "
                                             "into OUT/table1.md")
    p_table1.add_argument("--rounds", type=int, default=30)
    p_table1.add_argument("--steps", type=int, default=5)
    p_table1.add_argument("--out", default="results", help="the results folder (default: results)")
    p_table1.add_argument("--threads", type=int, default=None)
    p_sklearn = sub.add_parser("sklearn", help="NonparametricClassifier().fit on digits, in CPU seconds")
    p_sklearn.add_argument("--rounds", type=int, default=1)
    p_sklearn.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.what == "optimizer":
        bench_optimizer(args.shapes, args.rounds, args.steps)
    elif args.what == "kernels":
        bench_kernels(args.rounds)
    elif args.what == "epoch":
        bench_epoch(args.dataset, args.sizes, args.epochs, args.data_dir, args.set)
    elif args.what == "lightning":
        bench_lightning(args.sizes, args.rounds)
    elif args.what == "sklearn":
        bench_sklearn(args.rounds)
    elif args.what == "eval":
        bench_eval(args.nets, args.rounds)
    elif args.what == "profile":
        bench_profile(args.sizes, args.epochs, args.set)
    elif args.what == "threads":
        bench_threads(args.sizes, args.epochs, args.counts or [1, torch.get_num_threads()], args.rounds, args.set)
    elif args.what == "table1":
        print(table1(args.out, args.rounds, args.steps))
        print(f"wrote {Path(args.out) / 'table1.md'}")


if __name__ == "__main__":
    main()
