"""The LightningModule: one growing network, trained by manual optimization (Algorithm 1)."""
from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torchmetrics.classification import MulticlassAccuracy

from npnn.checkpoint import FORMAT, check_format
from npnn.nn import NonparametricMLP
from npnn.optim import AdaRad, group_shrink_, shrinkage_threshold
from npnn.regularizers import objective

__all__ = ["NonparametricModule", "Growth", "TrainingError", "NonFiniteLossError", "ConstantNetworkError",
           "DivergenceError", "ChanceLevelError"]


class TrainingError(RuntimeError):
    """A run that cannot go on; ``npnn.train.main`` records it in ``summary.json`` (``stopped_by``) and re-raises."""

    stopped_by = "failed"


class NonFiniteLossError(TrainingError, FloatingPointError):
    """The training loss became NaN or infinite."""

    stopped_by = "diverged"


class DivergenceError(TrainingError):
    """Training diverged: the train cross-entropy far above a constant predictor's, or weights or steps blown up."""

    stopped_by = "diverged"


class ChanceLevelError(TrainingError):
    """The run ended no better than predicting the majority class."""

    stopped_by = "chance_level"


class ConstantNetworkError(TrainingError):
    """Every fan-in of the output layer (or every unit of a hidden layer) is zero: the network is constant."""

    stopped_by = "constant_network"


EVAL_BLOCK_ELEMENTS = 2 ** 17  # 512 KB of float32 activations: a block of rows stays in a core's L2 cache


def eval_rows(net: NonparametricMLP) -> int:
    """Rows per block of an evaluation: about :data:`EVAL_BLOCK_ELEMENTS` activations in the widest layer, a power
    of 2, at least 512 (``python -m npnn.bench eval`` times the choice)."""
    widest = max([net.in_features, *net.hidden_sizes, net.out_features, 1])
    return max(512, 2 ** round(math.log2(EVAL_BLOCK_ELEMENTS / widest)))


def _group_settings(optimizer: torch.optim.Optimizer) -> list[dict[str, Any]]:
    """Each param group's hyperparameters (everything but its ``params``)."""
    return [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]


class Growth:
    """Algorithm 1 lines 18-24, run by the module after every optimizer step.

    Removal: every hidden unit whose fan-in AdaRad's shrinkage made exactly zero (lines
    18-19). Addition: ``rate`` units per layer (``Poisson(rate)`` if not an integer, line 23)
    with random fan-in and zero fan-out (line 24), every ``every`` epochs (Table 3: once an
    epoch; poker ten times an epoch), while ``enabled`` and before epoch ``until`` (Fig. 3:
    1000). The protocol switches addition off; removal goes on.
    """

    def __init__(self, rate: float = 1.0, every: float = 1.0, until: float | None = None, seed: int = 0,
                 enabled: bool = True) -> None:
        def number(value: Any) -> bool:
            return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

        if not (number(rate) and rate >= 0):
            raise ValueError(f"model.growth.rate must be a finite number >= 0, got {rate!r}")
        if not (number(every) and every > 0):
            raise ValueError(f"model.growth.every (epochs between additions) must be a finite number > 0, "
                             f"got {every!r}")
        if until is not None and not (number(until) and until >= 0):
            raise ValueError(f"model.growth.until (epoch after which no units are added) must be a finite number "
                             f">= 0 or null, got {until!r}")
        self.rate, self.every, self.enabled = float(rate), float(every), bool(enabled)
        self.until = None if until is None else float(until)
        self.generator = torch.Generator().manual_seed(int(seed))

    def after_step(self, net: NonparametricMLP, optimizer: torch.optim.Optimizer, step: int,
                   steps_per_epoch: int) -> tuple[int, int]:
        """Remove dead units, then add units on schedule; returns (units removed, units added)."""
        removed = sum(net.remove_dead_units(step=step, optimizer=optimizer))  # lines 18-19
        if self.until is not None and step >= round(self.until * steps_per_epoch):
            self.enabled = False
        added = 0
        if self.enabled and step % max(1, round(self.every * steps_per_epoch)) == 0:  # lines 22-24
            added = sum(net.grow(self.rate, step=step, optimizer=optimizer, generator=self.generator))
        return removed, added

    def state_dict(self) -> dict[str, Any]:
        return {"enabled": self.enabled, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.enabled = state["enabled"]
        self.generator.set_state(state["generator"])


class NonparametricModule(pl.LightningModule):
    """Trains a :class:`NonparametricMLP` (nonparametric with CapNorm, or the parametric BatchNorm baseline).

    One training step (:meth:`train_step`; Lightning's ``training_step`` runs ``steps_per_call`` of
    them) is Algorithm 1's loop body, top to bottom:

    1. forward; loss = the batch's summed cross-entropy / ``|D|`` (line 8);
    2. backward and the optimizer step: AdaRad's radial step, rotation and group shrinkage
       (lines 11-17); another optimizer is followed by the same shrinkage as a proximal step,
       ``step size * lambda * |D^t| / |D|`` per fan-in;
    3. ``growth.after_step``: remove units whose fan-in is zero, add units on schedule (lines 18-24).

    Growth belongs to the step, so the module owns it (a nonparametric net; ``None`` for a
    parametric one). What acts at validations is a callback: the rewind protocol (section 7.4,
    :class:`npnn.callbacks.RewindProtocol`) calls :meth:`snapshot` / :meth:`restore` and writes
    lambda and the step size. The optimizer's ``param_groups`` own both (``lam``, and
    ``alpha_phi`` for AdaRad or ``lr``); everything else reads them, and they are checkpointed
    with the optimizer.

    Args:
        net: constructor arguments of :class:`NonparametricMLP`.
        optimizer: ``optimizer(param_groups)`` builds the optimizer (a Hydra ``_partial_``; None: a module to
            evaluate, as ``load_from_checkpoint(path)`` gives it). It
            gets one param group holding ``lam``, ``dataset_size`` (``|D|``) and ``batch_size``
            (``|D^t|``): AdaRad's own hyperparameters, kept in the group by torch's optimizers.
        lam: the fan-in regulariser lambda.
        dataset_size: ``|D|``.
        batch_size: ``|D^t|`` of a full batch.
        growth: the unit schedule (:class:`Growth`), or ``None``: a network of fixed size.
        divergence: limits checked at every validation (:meth:`check_not_diverged`), each ``None`` to
            switch it off: ``max_train_ce`` (train cross-entropy, in multiples of the uniform
            predictor's ``ln(classes)``), ``max_step_angle`` (AdaRad's rotation per step of a
            typical row, ``alpha_phi sqrt(phi_max / c_max)`` in radians, Alg. 1 lines 14 and 16)
            and ``max_fan_in_length``; at the end, ``max_final_val_error`` (the final network's
            validation error, in multiples of the majority-class predictor's:
            :meth:`check_better_than_majority`). ``divergence=None`` uses the defaults;
            non-finite weights always stop the run.
        test_every: evaluate the test set at every ``test_every``-th validation (0: never); it is always
            evaluated where a result needs it: at a new lowest validation error (``summary.json``'s test error
            at the best validation) and for the final network. Nothing that training reads depends on it.
        steps_per_call: optimizer steps per call of ``training_step`` (the loader's lists; stored in
            checkpoints, as a resume must keep it).
    """

    DIVERGENCE_DEFAULTS = {"max_train_ce": 5.0, "max_step_angle": 1.0, "max_fan_in_length": 1e4,
                           "max_final_val_error": 1.0}
    CHECKPOINT_FORMAT = FORMAT  # npnn.checkpoint

    def __init__(self, net: dict, optimizer: Callable[..., torch.optim.Optimizer] | None = None, lam: float = 0.0,
                 dataset_size: int = 1, batch_size: int = 1, growth: Growth | None = None,
                 divergence: dict | None = None,
                 steps_per_call: int = 1, test_every: int = 0) -> None:
        super().__init__()
        if not (isinstance(lam, (int, float)) and not isinstance(lam, bool) and lam >= 0 and math.isfinite(lam)):
            raise ValueError(f"lambda must be a finite number >= 0, got {lam!r}")
        unknown = set(divergence or {}) - set(self.DIVERGENCE_DEFAULTS)
        if unknown:
            raise ValueError(f"divergence: unknown keys {sorted(unknown)}; the limits are "
                             f"{sorted(self.DIVERGENCE_DEFAULTS)}")
        bad = {k: v for k, v in (divergence or {}).items() if v is not None and not (isinstance(v, (int, float))
                                                                                      and v > 0)}
        if bad:
            raise ValueError(f"divergence: each limit must be a number > 0 or null (off), got {bad}")
        self.save_hyperparameters(ignore=["optimizer", "growth"])
        self.automatic_optimization = False
        self.net = NonparametricMLP(**net)
        self.make_optimizer = optimizer
        self.configured_lam = float(lam)
        self.dataset_size, self.batch_size = int(dataset_size), int(batch_size)
        self.growth = growth
        self.steps_per_call = steps_per_call  # checkpointed: a resume must hand out lists of the same size
        self.test_every = int(test_every)
        self.validations = 0  # validations so far (test_every counts them)
        self._test_now = True
        self.divergence = {**self.DIVERGENCE_DEFAULTS, **(divergence or {})}
        self.steps_per_epoch = math.ceil(self.dataset_size / self.batch_size)
        self.step_count = 0  # optimizer steps on the protocol's timeline (a rewind sets it back)
        self.last_removal_step = 0
        self.units_added = self.units_removed = 0  # since the last validation
        self._train_ce = torch.zeros(())  # summed cross-entropy / |D| since the last validation
        self._train_n = 0
        num_classes = net["out_features"]
        # validate_args=False: the labels come from our own loaders (checked there), and the
        # per-batch value checks cost as much as the forward pass of a small net
        self.val_accuracy = MulticlassAccuracy(num_classes, average="micro", validate_args=False)
        self.test_accuracy = MulticlassAccuracy(num_classes, average="micro", validate_args=False)
        self._val_ce = torch.zeros(())
        self._val_n = 0
        self.last_val_error = math.nan
        self.best_validation: dict[str, float] = {}  # the lowest VCE seen, with the TCE and epoch at it
        self.last_metrics: dict[str, float] = {}
        # compute spent by earlier fits of this run (from the checkpoint; None: one predates this record)
        self.earlier_time: dict[str, float] | None = {"wall_s": 0.0, "cpu_s": 0.0}
        self._fit_start: tuple[float, float] | None = None

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path, map_location=None, hparams_file=None, strict=None,
                             weights_only: bool = True, **kwargs):
        """Lightning's, reading tensors and plain data only (``weights_only=True``, whatever torch's default):
        a checkpoint's pickle never runs code. ``optimizer=`` (a ``functools.partial``) makes it trainable."""
        return super().load_from_checkpoint(checkpoint_path, map_location=map_location, hparams_file=hparams_file,
                                            strict=strict, weights_only=weights_only, **kwargs)

    # ------------------------------------------------------------- compute
    def on_fit_start(self) -> None:
        self._fit_start = (time.time(), time.process_time())

    def time_used(self) -> dict[str, Any]:
        """Wall and CPU seconds (the process's, all threads) spent training and evaluating, over every fit.

        A resumed run adds its checkpoint's; rewinds do not take time back. ``complete`` is False when a
        checkpoint from before this record was resumed (its earlier time is unknown and not counted).
        """
        wall = cpu = 0.0
        if self._fit_start is not None:
            wall, cpu = time.time() - self._fit_start[0], time.process_time() - self._fit_start[1]
        earlier = self.earlier_time or {"wall_s": 0.0, "cpu_s": 0.0}
        return {"wall_s": earlier["wall_s"] + wall, "cpu_s": earlier["cpu_s"] + cpu,
                "complete": self.earlier_time is not None}

    # ------------------------------------------------------------- optimizer
    def configure_optimizers(self) -> torch.optim.Optimizer:
        if self.make_optimizer is None:  # NonparametricModule.load_from_checkpoint(path) alone: for evaluation
            raise ValueError("this module has no optimizer: to train it, pass one, e.g. "
                             "NonparametricModule.load_from_checkpoint(path, optimizer=functools.partial("
                             "npnn.AdaRad, alpha_phi=..., alpha_r=...)); to resume a run, use ckpt_path (README)")
        group = {"params": list(self.net.parameters()), "lam": self.configured_lam,
                 "dataset_size": self.dataset_size, "batch_size": self.batch_size}
        optimizer = self.make_optimizer([group])
        # the settings as configured, before a checkpoint's param_groups replace them (npnn.runs.ResumeChanges)
        self.configured_hparams = _group_settings(optimizer)
        return optimizer

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        """The optimizer itself (not Lightning's wrapper)."""
        return self.trainer.strategy.optimizers[0]

    @property
    def uses_adarad(self) -> bool:
        return isinstance(self.optimizer, AdaRad)

    @property
    def step_size_key(self) -> str:
        """The step size the protocol divides: the optimizer's ``step_size_key`` (AdaRad's angular
        ``alpha_phi``, the paper's ``alpha`` of :class:`npnn.optim.ParametricOptimizer`), else torch's ``lr``."""
        return getattr(self.optimizer, "step_size_key", "lr")

    @property
    def lam(self) -> float:
        """The current lambda (the protocol sets it to 0 in its fit stage)."""
        return float(self.optimizer.param_groups[0]["lam"])

    @property
    def step_size(self) -> float:
        return float(self.optimizer.param_groups[0][self.step_size_key])

    # --------------------------------------------------------------- training
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: list[tuple[torch.Tensor, torch.Tensor]], batch_idx: int) -> None:
        """One optimizer step (:meth:`train_step`) per ``(x, y)`` of the list (``steps_per_call`` of them)."""
        for x, y in batch:
            self.train_step(x, y)

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """One step of Algorithm 1 (lines 8-24)."""
        opt = self.optimizers()
        loss = F.cross_entropy(self.net(x), y, reduction="sum") / self.dataset_size  # line 8
        if not torch.isfinite(loss):
            raise NonFiniteLossError(self._non_finite_message(loss.item()))
        opt.zero_grad(set_to_none=True)
        # a plain backward, not self.manual_backward: one precision plugin, no gradient scaling, and Lightning's
        # on_before / on_after_backward hooks of every callback cost 2-3% of a poker epoch (README, Benchmarks)
        loss.backward()
        if self.uses_adarad:
            opt.step(batch_size=len(y))  # lines 11-17; shrinkage by alpha_r lambda |D^t| / |D|
        else:
            opt.step()
            group = self.optimizer.param_groups[0]
            if group["lam"] > 0:  # the proximal l2 group shrinkage of every fan-in
                group_shrink_(self.net.weights, shrinkage_threshold(self.step_size, group, len(y)))
        self.step_count += 1
        if self.growth is not None:  # lines 18-24
            removed, added = self.growth.after_step(self.net, self.optimizer, self.step_count, self.steps_per_epoch)
            self.units_removed, self.units_added = self.units_removed + removed, self.units_added + added
            if removed:
                self.last_removal_step = self.step_count
        if self._train_ce.device != loss.device:
            self._train_ce = self._train_ce.to(loss.device)
        self._train_ce.add_(loss.detach())  # batch sums / |D|; times |D| when logged
        self._train_n += len(y)

    def _non_finite_message(self, loss: float) -> str:
        saved = bool(getattr(self.trainer.checkpoint_callback, "best_model_path", "")) if self._trainer else False
        group = self.optimizer.param_groups[0] if self._trainer else {}
        alpha_r = group.get("alpha_r")
        hint = (f" AdaRad's radial step alpha_r = alpha_r_lambda / lambda = {alpha_r:.3g} (lambda = {group['lam']:.3g})"
                f" is far too large: raise lambda or lower dataset.alpha_r_lambda."
                if isinstance(alpha_r, (int, float)) and alpha_r > 1e6 else "")
        fix = (f"The last checkpoint before it is intact; resume from it with a smaller step size "
               f"(optimizer.{self.step_size_key})" if saved else
               f"No checkpoint was written before it: start again with a smaller step size "
               f"(optimizer.{self.step_size_key})")
        return f"the training loss is {loss} at step {self.step_count}: training cannot go on.{hint} {fix}"

    # ------------------------------------------------------------- validation
    def evaluate(self, x: torch.Tensor) -> torch.Tensor:
        """The network's logits on ``x``, in blocks of rows that keep a layer's activations in the cache
        (:func:`eval_rows`, :meth:`NonparametricMLP.evaluate`): each row's logits are the same floats as in one call
        on all of ``x``."""
        return self.net.evaluate(x, eval_rows(self.net))

    def validation_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        x, y = batch
        if dataloader_idx == 0:
            logits = self.evaluate(x)
            self.val_accuracy.update(logits, y)
            self._val_ce = self._val_ce.to(logits.device) + F.cross_entropy(logits, y, reduction="sum")
            self._val_n += len(y)
            return
        if batch_idx == 0:  # the validation set is done (the loaders run in turn): is the test set needed?
            val_error = 1.0 - self.val_accuracy.compute().item()
            self._test_now = self._new_best(val_error) or \
                (self.test_every > 0 and self.validations % self.test_every == 0)
        if self._test_now:
            self.test_accuracy.update(self.evaluate(x), y)

    def _new_best(self, val_error: float) -> bool:
        """Whether ``val_error`` is below every validation error so far (``best_validation``)."""
        return val_error < self.best_validation.get("val_error", math.inf)

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            self.val_accuracy.reset(), self.test_accuracy.reset()
            self._val_ce, self._val_n = torch.zeros(()), 0
            return
        self.check_not_constant()
        metrics = {
            "val/error": 1.0 - self.val_accuracy.compute().item(),
            "val/ce": (self._val_ce / max(self._val_n, 1)).item(),
            "train/ce": (self._train_ce * self.dataset_size / self._train_n).item() if self._train_n else math.nan,
            "epoch_float": self.step_count * self.batch_size / self.dataset_size,
            "step": float(self.step_count),
            "weights": float(self.net.num_weights()),
            "units/added": float(self.units_added),
            "units/removed": float(self.units_removed),
            "lambda": self.lam,
            "step_size": self.step_size,
        }
        if self.test_accuracy.update_count:
            metrics["test/error"] = 1.0 - self.test_accuracy.compute().item()
        metrics["objective"] = objective(metrics["train/ce"], self.net.weights, self.lam).item()  # equation 1
        for l, width in enumerate(self.net.hidden_sizes):
            metrics[f"size/layer{l + 1}"] = float(width)
        if self.uses_adarad and self.optimizer.phi_max is not None:
            metrics["phi_max"] = self.optimizer.phi_max.item()
        self.last_val_error = metrics["val/error"]
        if "test/error" in metrics and self._new_best(metrics["val/error"]):
            self.best_validation = {"val_error": metrics["val/error"], "test_error": metrics["test/error"],
                                    "epoch": metrics["epoch_float"]}
        self.last_metrics = metrics
        # straight to the loggers and saved now (as RewindProtocol logs its phase): self.log would keep them
        # until the logger's flush (CSVLogger: every 100 steps), and a run that dies would lose them
        # (tests/test_app.py::test_metrics_are_on_disk_at_every_validation_not_only_at_the_end)
        for logger in self.loggers:
            logger.log_metrics(metrics, step=self.global_step)
            logger.save()  # written now: a run that dies keeps its metrics
        # and in trainer.callback_metrics, for callbacks that monitor one (EarlyStopping, ModelCheckpoint)
        self.log_dict(metrics, logger=False)
        self.check_not_diverged(metrics)
        self.val_accuracy.reset(), self.test_accuracy.reset()
        self._val_ce, self._val_n = torch.zeros(()), 0
        self._train_ce, self._train_n = torch.zeros(()), 0
        self.units_added = self.units_removed = 0
        self.validations += 1

    # ------------------------------------------------------------------- test
    def test_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        """``trainer.test`` on ``[validation, test]`` gives the final network's errors (``final_errors``)."""
        x, y = batch
        wrong, total = self._test_counts.setdefault(dataloader_idx, [0, 0])
        self._test_counts[dataloader_idx] = [wrong + int((self.evaluate(x).argmax(1) != y).sum()), total + len(y)]

    def on_test_epoch_start(self) -> None:
        self._test_counts: dict[int, list[int]] = {}

    def on_test_epoch_end(self) -> None:  # exact fractions (torchmetrics computes in float32)
        self.final_errors = {split: wrong / total if total else math.nan for split, (wrong, total)
                             in zip(("val", "test"), (self._test_counts.get(i, (0, 0)) for i in (0, 1)))}

    def check_not_constant(self) -> None:
        """A network that can no longer learn says so (instead of running on silently)."""
        if not bool((self.net.linears[-1].weight != 0).any()):
            raise ConstantNetworkError(
                f"every fan-in of the output layer has been shrunk to zero by step {self.step_count}: the network "
                f"is constant and cannot learn. lambda={self.lam} is too large for the step sizes: lower lambda, "
                f"or raise optimizer.alpha_phi so that units learn before the shrinkage removes them")
        if 0 in self.net.hidden_sizes:
            raise ConstantNetworkError(
                f"hidden layer {self.net.hidden_sizes.index(0) + 1} has lost all its units by step {self.step_count} "
                f"(sizes {self.net.hidden_sizes}): the network is constant. Lower lambda or raise optimizer.alpha_phi")

    def check_not_diverged(self, metrics: dict[str, float]) -> None:
        """A diverged run stops at once with the reason, instead of training on at chance."""
        limits, why = self.divergence, []
        uniform_ce = math.log(self.net.out_features)  # the uniform predictor's; the best constant one does no worse
        ce = metrics["train/ce"]
        if limits["max_train_ce"] is not None and ce > limits["max_train_ce"] * uniform_ce:
            why.append(f"the train cross-entropy is {ce:.4g}, over {limits['max_train_ce']:g} times a constant "
                       f"(uniform) predictor's ln({self.net.out_features}) = {uniform_ce:.3g}")
        if self.uses_adarad and limits["max_step_angle"] is not None and self.optimizer.phi_max is not None:
            opt = self.optimizer
            angle = self.step_size * math.sqrt(opt.phi_max.item() / max(opt.c_max.item(), 1e-300))
            if not angle <= limits["max_step_angle"]:
                why.append(f"AdaRad's rotation per step alpha_phi sqrt(phi_max / c_max) is {angle:.3g} rad, over "
                           f"{limits['max_step_angle']:g} (phi_max = {opt.phi_max.item():.3g})")
        with torch.no_grad():
            longest = max(float(w.norm(dim=1).max()) if w.numel() else 0.0 for w in self.net.weights)
        if not math.isfinite(longest) or (limits["max_fan_in_length"] is not None
                                          and longest > limits["max_fan_in_length"]):
            why.append(f"the longest fan-in has length {longest:.4g}"
                       + ("" if not math.isfinite(longest) else f" (limit {limits['max_fan_in_length']:g})"))
        if why:
            hint = (" With AdaRad and plain logits (model.output_norm=false) a small lambda makes alpha_r = "
                    "alpha_r_lambda / lambda too large for the output layer: use model.output_norm=true (README)."
                    if self.uses_adarad and not self.net.output_norm else "")
            raise DivergenceError(
                f"training diverged by step {self.step_count} (epoch {metrics['epoch_float']:.2f}): "
                + "; ".join(why) + f". Lower the step sizes (optimizer.{self.step_size_key}"
                + (", or alpha_r through dataset.alpha_r_lambda)." if self.uses_adarad else ").") + hint
                + " The limits are the divergence.* settings")

    def check_better_than_majority(self, val_error: float, y_val: torch.Tensor) -> None:
        """A run that ends no better than always predicting the validation set's majority class says so."""
        limit = self.divergence["max_final_val_error"]
        if limit is None or len(y_val) == 0:
            return
        majority = 1.0 - torch.bincount(y_val).max().item() / len(y_val)
        if not val_error < limit * majority:
            hint = f"optimizer.{self.step_size_key}"
            raise ChanceLevelError(
                f"the final network's validation error is {100 * val_error:.2f}%, no better than always predicting "
                f"the majority class ({100 * majority:.2f}%): the run learned nothing. The step size may be far too "
                f"large ({hint}={self.step_size:g}) or lambda too large; the train cross-entropy in "
                f"metrics.csv shows when it went wrong (limit: divergence.max_final_val_error)")

    # ------------------------------------------------- snapshots (rewinds)
    def snapshot(self) -> dict[str, Any]:
        """Everything a rewind restores: shape and weights, optimizer state, unit records, step, RNGs."""
        return copy.deepcopy({
            "net": self.net.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "growth": self.growth.state_dict() if self.growth is not None else None,
            "step_count": self.step_count,
            "torch_rng": torch.get_rng_state(),
        })

    def restore(self, snap: dict[str, Any]) -> None:
        """Back to a snapshot's state. The settings stay as they are now: the optimizer's hyperparameters
        (the protocol changes lambda or the step size at a stage change) and whether units are added."""
        snap = copy.deepcopy(snap)
        self.net.load_state_dict(snap["net"], resize=True)
        opt = self.optimizer
        settings = _group_settings(opt)
        opt.load_state_dict(snap["optimizer"])
        for group, kept in zip(opt.param_groups, settings):
            group.update(kept)
        if self.growth is not None:
            enabled = self.growth.enabled
            self.growth.load_state_dict(snap["growth"])
            self.growth.enabled = enabled
        self.step_count = self.last_removal_step = snap["step_count"]
        torch.set_rng_state(snap["torch_rng"])

    # ------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["model_config"] = self.net.config()
        checkpoint["npnn"] = {"format": self.CHECKPOINT_FORMAT, "step_count": self.step_count,
                              "steps_per_call": self.steps_per_call,
                              "last_removal_step": self.last_removal_step, "best_validation": self.best_validation,
                              "growth": self.growth.state_dict() if self.growth is not None else None,
                              "time_used": self.time_used(), "validations": self.validations}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        check_format(checkpoint)
        state = checkpoint["npnn"]
        mine, theirs = self.net.config(), checkpoint["model_config"]
        fixed = {k: v for k, v in theirs.items() if k != "hidden_sizes"}
        if {k: v for k, v in mine.items() if k != "hidden_sizes"} != fixed or \
                len(theirs["hidden_sizes"]) != len(mine["hidden_sizes"]):
            raise ValueError(f"the checkpoint's network {theirs} does not fit this run's {mine}: resume with the "
                             f"run's own configuration (same dataset, model and depth; a checkpoint written before "
                             f"CapNorm on the logits became the default needs model.output_norm=false)")
        if theirs["hidden_sizes"] != mine["hidden_sizes"]:
            self.net._resize_to(theirs["hidden_sizes"])  # the shape first, then Lightning loads the weights
        self.step_count, self.last_removal_step = state["step_count"], state["last_removal_step"]
        self.best_validation = dict(state.get("best_validation", {}))
        self.validations = state.get("validations", 0)
        earlier = state.get("time_used")
        self.earlier_time = None if earlier is None or not earlier.get("complete", True) else \
            {"wall_s": float(earlier["wall_s"]), "cpu_s": float(earlier["cpu_s"])}
        if self.growth is not None:
            self.growth.load_state_dict(state["growth"])
