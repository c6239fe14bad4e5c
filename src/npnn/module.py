"""The LightningModule: one growing network, trained by manual optimization (Algorithm 1)."""
from __future__ import annotations

import copy
import math
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from torchmetrics.classification import MulticlassAccuracy

from npnn.nn import NonparametricMLP
from npnn.optim import AdaRad, group_shrink_
from npnn.regularizers import objective

__all__ = ["NonparametricModule", "TrainingError", "NonFiniteLossError", "ConstantNetworkError",
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


def _group_settings(optimizer: torch.optim.Optimizer) -> list[dict[str, Any]]:
    """Each param group's hyperparameters (everything but its ``params``)."""
    return [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]


class NonparametricModule(pl.LightningModule):
    """Trains a :class:`NonparametricMLP` (nonparametric with CapNorm, or the parametric BatchNorm baseline).

    The loss of a step is the batch's summed cross-entropy divided by the training-set
    size ``|D|`` (Algorithm 1 line 8). With AdaRad / AdaRad-M the l2 fan-in penalty is the
    optimizer's group shrinkage (line 17); with a torch optimizer and ``lam > 0`` the same
    shrinkage, ``lr * lam * |D^t| / |D|`` per row, follows each step (proximal step).

    Args:
        net: constructor arguments of :class:`NonparametricMLP`.
        optimizer: a Hydra config (``_target_`` + arguments) of the optimizer; for AdaRad the
            keys ``lam``, ``dataset_size`` and ``batch_size`` are filled in here, and
            ``alpha_r: null`` means ``alpha_r_lambda / lam`` (Table 3: 1 / (50 lam)).
        lam: the fan-in regulariser lambda.
        dataset_size: ``|D|``.
        batch_size: ``|D^t|`` of a full batch.
        divergence: limits checked at every validation (:meth:`check_not_diverged`), each ``None`` to
            switch it off: ``max_train_ce`` (train cross-entropy, in multiples of the uniform
            predictor's ``ln(classes)``), ``max_step_angle`` (AdaRad's rotation per step of a
            typical row, ``alpha_phi sqrt(phi_max / c_max)`` in radians, Alg. 1 lines 14 and 16)
            and ``max_fan_in_length``; at the end, ``max_final_val_error`` (the final network's
            validation error, in multiples of the majority-class predictor's:
            :meth:`check_better_than_majority`). ``divergence=None`` uses the defaults;
            non-finite weights always stop the run.
    """

    DIVERGENCE_DEFAULTS = {"max_train_ce": 5.0, "max_step_angle": 1.0, "max_fan_in_length": 1e4,
                           "max_final_val_error": 1.0}

    def __init__(self, net: dict, optimizer: dict, lam: float, dataset_size: int, batch_size: int,
                 divergence: dict | None = None) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.net = NonparametricMLP(**net)
        self.optimizer_cfg = dict(optimizer)
        self.lam = self.configured_lam = float(lam)  # lam: the current one (the protocol sets it to 0 later)
        self.dataset_size, self.batch_size = int(dataset_size), int(batch_size)
        unknown = set(divergence or {}) - set(self.DIVERGENCE_DEFAULTS)
        if unknown:
            raise ValueError(f"divergence: unknown keys {sorted(unknown)}; the limits are "
                             f"{sorted(self.DIVERGENCE_DEFAULTS)}")
        self.divergence = {**self.DIVERGENCE_DEFAULTS, **(divergence or {})}
        self._plain_backward = False  # set in on_train_start
        self._step_callbacks: list = []  # callbacks with after_step(trainer, module), set in on_train_start
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
        self.last_metrics: dict[str, float] = {}

    # ------------------------------------------------------------- optimizer
    def configure_optimizers(self):
        cfg = dict(self.optimizer_cfg)
        alpha_r_lambda = cfg.pop("alpha_r_lambda", None)
        target = cfg.get("_target_", "")
        if target.startswith("npnn.optim.AdaRad"):
            if cfg.get("alpha_r") is None:
                lam = self.configured_lam  # not a resumed checkpoint's current lambda
                if lam <= 0 or alpha_r_lambda is None:
                    raise ValueError("optimizer.alpha_r is null, so alpha_r = alpha_r_lambda / lambda, which needs "
                                     f"lambda > 0 and alpha_r_lambda set (got lambda={lam}, alpha_r_lambda="
                                     f"{alpha_r_lambda}); set optimizer.alpha_r explicitly")
                cfg["alpha_r"] = alpha_r_lambda / lam
            cfg.update(lam=self.lam, dataset_size=self.dataset_size, batch_size=self.batch_size)
        optimizer = instantiate(cfg, self.net.parameters())
        self._adarad = isinstance(optimizer, AdaRad)  # decided once: training_step asks every step
        # the settings as configured, before a checkpoint's param_groups replace them (npnn.runs.ResumeChanges)
        self.configured_hparams = _group_settings(optimizer)
        return optimizer

    @property
    def raw_optimizer(self) -> torch.optim.Optimizer:
        opt = self.optimizers()
        return getattr(opt, "optimizer", opt)

    @property
    def uses_adarad(self) -> bool:
        return self._adarad

    @property
    def step_size_key(self) -> str:
        """The step size the protocol divides: AdaRad's angular ``alpha_phi``, else ``lr``."""
        return "alpha_phi" if self.uses_adarad else "lr"

    def get_step_size(self) -> float:
        return float(self.raw_optimizer.param_groups[0][self.step_size_key])

    def set_step_size(self, value: float) -> None:
        for group in self.raw_optimizer.param_groups:
            group[self.step_size_key] = float(value)

    def set_lambda(self, lam: float) -> None:
        self.lam = float(lam)
        if self.uses_adarad:
            for group in self.raw_optimizer.param_groups:
                group["lam"] = self.lam

    # --------------------------------------------------------------- training
    def on_train_start(self) -> None:
        # manual_backward adds precision scaling, strategy and callback hooks (on_before_backward,
        # on_after_backward) around loss.backward(); in full precision on one device they do not
        # change the step, and on a small net they cost a tenth of it
        trainer = self.trainer
        self._plain_backward = (str(trainer.precision) in ("32-true", "32", "64-true", "64")
                                and trainer.world_size == 1 and self.fast_backward)
        self._step_callbacks = [cb for cb in trainer.callbacks if hasattr(cb, "after_step")]

    fast_backward = True  # set False to keep Lightning's backward hooks (e.g. for a callback that uses them)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx: int) -> None:
        """One optimizer step per batch; ``batch`` is one ``(x, y)`` or a list of them (the loader's
        ``steps_per_item``). After every step, callbacks with ``after_step`` (Growth) run."""
        for x, y in batch if isinstance(batch, list) else [batch]:
            self._step(x, y)
            for callback in self._step_callbacks:
                callback.after_step(self.trainer, self)

    def _step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        opt = self.optimizers()
        loss = F.cross_entropy(self.net(x), y, reduction="sum") / self.dataset_size  # Alg. 1 line 8
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"the training loss is {loss.item()} at step {self.step_count}: training cannot go on. The last "
                f"checkpoint before it is intact; resume from it with smaller step sizes (optimizer.alpha_phi / lr)")
        opt.zero_grad(set_to_none=True)
        if self._plain_backward:  # 32-bit, one device: what manual_backward does, without its hooks
            loss.backward()
        else:
            self.manual_backward(loss)
        if self.uses_adarad:
            opt.step(batch_size=len(y))
        else:
            opt.step()
            if self.lam > 0:  # proximal l2 group shrinkage of every fan-in
                group_shrink_(self.net.weights, self.get_step_size() * self.lam * len(y) / self.dataset_size)
        self.step_count += 1
        if self._train_ce.device != loss.device:
            self._train_ce = self._train_ce.to(loss.device)
        self._train_ce.add_(loss.detach())  # batch sums / |D|; times |D| when logged
        self._train_n += len(y)

    # ------------------------------------------------------------- validation
    def validation_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        x, y = batch
        logits = self.net(x)
        if dataloader_idx == 0:
            self.val_accuracy.update(logits, y)
            self._val_ce = self._val_ce.to(logits.device) + F.cross_entropy(logits, y, reduction="sum")
            self._val_n += len(y)
        else:
            self.test_accuracy.update(logits, y)

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
            "step_size": self.get_step_size(),
        }
        if self.test_accuracy.update_count:
            metrics["test/error"] = 1.0 - self.test_accuracy.compute().item()
        metrics["objective"] = objective(metrics["train/ce"], self.net.weights, self.lam).item()  # equation 1
        for l, width in enumerate(self.net.hidden_sizes):
            metrics[f"size/layer{l + 1}"] = float(width)
        if self.uses_adarad and self.raw_optimizer.phi_max is not None:
            metrics["phi_max"] = self.raw_optimizer.phi_max.item()
        self.last_val_error = metrics["val/error"]
        self.last_metrics = metrics
        # straight to the loggers (as RewindProtocol logs its phase): these are already epoch-level
        # floats, and Lightning's self.log costs about a millisecond per key on a CPU
        for logger in self.loggers:
            logger.log_metrics(metrics, step=self.global_step)
            logger.save()  # written now: a run that dies keeps its metrics
        self.check_not_diverged(metrics)
        self.val_accuracy.reset(), self.test_accuracy.reset()
        self._val_ce, self._val_n = torch.zeros(()), 0
        self._train_ce, self._train_n = torch.zeros(()), 0
        self.units_added = self.units_removed = 0

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
        if self.uses_adarad and limits["max_step_angle"] is not None and self.raw_optimizer.phi_max is not None:
            opt = self.raw_optimizer
            angle = self.get_step_size() * math.sqrt(opt.phi_max.item() / max(opt.c_max.item(), 1e-300))
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
                + "; ".join(why) + ". Lower the step sizes (optimizer.alpha_phi / lr, or alpha_r through "
                "optimizer.alpha_r_lambda)." + hint + " The limits are the divergence.* settings")

    def check_better_than_majority(self, val_error: float, y_val: torch.Tensor) -> None:
        """A run that ends no better than always predicting the validation set's majority class says so."""
        limit = self.divergence["max_final_val_error"]
        if limit is None or len(y_val) == 0:
            return
        majority = 1.0 - torch.bincount(y_val).max().item() / len(y_val)
        if not val_error < limit * majority:
            hint = "optimizer.alpha_phi" if self.uses_adarad else "optimizer.lr"
            raise ChanceLevelError(
                f"the final network's validation error is {100 * val_error:.2f}%, no better than always predicting "
                f"the majority class ({100 * majority:.2f}%): the run learned nothing. The step size may be far too "
                f"large ({hint}={self.get_step_size():g}) or lambda too large; the train cross-entropy in "
                f"metrics.csv shows when it went wrong (limit: divergence.max_final_val_error)")

    # ------------------------------------------------- snapshots (rewinds)
    def snapshot(self) -> dict[str, Any]:
        """Everything a rewind restores: shape and weights, optimizer state, unit records, step, RNG."""
        return copy.deepcopy({
            "net": self.net.state_dict(),
            "optimizer": self.raw_optimizer.state_dict(),
            "step_count": self.step_count,
            "torch_rng": torch.get_rng_state(),
        })

    def restore(self, snap: dict[str, Any]) -> None:
        """Back to a snapshot's state. Settings (the optimizer's hyperparameters) stay as they are now:
        the protocol sets lambda and the step size after a rewind."""
        snap = copy.deepcopy(snap)
        self.net.load_state_dict(snap["net"], resize=True)
        opt = self.raw_optimizer
        settings = _group_settings(opt)
        opt.load_state_dict(snap["optimizer"])
        for group, kept in zip(opt.param_groups, settings):
            group.update(kept)
        self.step_count = self.last_removal_step = snap["step_count"]
        torch.set_rng_state(snap["torch_rng"])

    # ------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["model_config"] = self.net.config()
        checkpoint["npnn"] = {"step_count": self.step_count, "last_removal_step": self.last_removal_step,
                              "lam": self.lam}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if "model_config" not in checkpoint:
            raise ValueError("this checkpoint has no 'model_config': it was not written by npnn")
        mine, theirs = self.net.config(), checkpoint["model_config"]
        fixed = {k: v for k, v in theirs.items() if k != "hidden_sizes"}
        if {k: v for k, v in mine.items() if k != "hidden_sizes"} != fixed or \
                len(theirs["hidden_sizes"]) != len(mine["hidden_sizes"]):
            raise ValueError(f"the checkpoint's network {theirs} does not fit this run's {mine}: resume with the "
                             f"run's own configuration (same dataset, model and depth; a checkpoint written before "
                             f"CapNorm on the logits became the default needs model.output_norm=false)")
        if theirs["hidden_sizes"] != mine["hidden_sizes"]:
            self.net._resize_to(theirs["hidden_sizes"])  # the shape first, then Lightning loads the weights
        state = checkpoint["npnn"]
        self.step_count, self.last_removal_step, self.lam = state["step_count"], state["last_removal_step"], state["lam"]
