"""Callbacks, which act at validations: the rewind protocols (7.4.1 / 7.4.2), the unit logs and the
progress bar.

Unit growth and pruning (Alg. 1 lines 18-24) belong to every step: :class:`npnn.module.Growth`,
run by the module's ``train_step``.
"""
from __future__ import annotations

import csv
import io
import logging
import math
from pathlib import Path
from typing import Any, TypeVar

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback, TQDMProgressBar

from npnn.module import NonparametricModule
from npnn.record import PHASES, find, open_text, write_atomic

__all__ = ["RewindProtocol", "UnitLogger", "RunProgressBar", "epochs_to_steps", "find_callback", "set_hparam",
           "apply_resume_changes"]

log = logging.getLogger(__name__)

C = TypeVar("C")


def find_callback(trainer: pl.Trainer, kind: type[C]) -> C | None:
    """The trainer's first callback of type ``kind``, or None."""
    return next((cb for cb in trainer.callbacks if isinstance(cb, kind)), None)


def epochs_to_steps(epochs: float, trainer: pl.Trainer) -> int:
    """A duration in (possibly fractional) epochs, in optimizer steps (at least 1)."""
    return max(1, round(epochs * trainer.lightning_module.steps_per_epoch))


class RewindProtocol(Callback):
    """The training protocols of section 7.4 as a state machine on validation classification error (VCE).

    Nonparametric (``kind="nonparametric"``):

    1. ``grow``: until VCE has not improved for ``patience`` epochs; rewind to the best VCE, stop adding units.
    2. ``prune``: until no unit was eliminated and VCE has not improved for ``patience`` epochs
       (or, if ``max_prune_epochs`` is set, that long after the stage began); rewind those epochs
       (to the best VCE or the last elimination, whichever came later: the pruned network is
       kept), set lambda = 0.
    3. ``fit``: until VCE has not improved for ``patience`` epochs; rewind, divide the step size by ``factor``.
    4. ``anneal``: until VCE has not improved for ``anneal_patience`` epochs; rewind, divide by ``factor``
       again, and so on.

    Parametric (``kind="parametric"``): ``fit`` then ``anneal`` as above.

    Stop rule (the paper: "until the step size was too small to change the VCE"): an anneal
    stage that ends without improving the best VCE is a stall; after ``max_stalls``
    consecutive stalls, or once the step size would fall below ``min_step_size``, the run
    stops at the best state. A rewind restores the network with its shape, the optimizer
    state, the unit records, the step counter and the RNG states (torch and growth) of the
    best validation point; the training data order is not rewound. The protocol is the one
    writer of lambda and the step size, which live in the optimizer's ``param_groups``: a rewind
    keeps them, and each stage change sets them.
    """

    PHASES = PHASES

    def __init__(self, kind: str = "nonparametric", patience: float = 100.0, anneal_patience: float = 5.0,
                 factor: float = 3.0, max_stalls: int = 1, min_step_size: float = 0.0,
                 max_prune_epochs: float | None = None) -> None:
        if kind not in self.PHASES:
            raise ValueError(f"protocol.kind must be one of {sorted(self.PHASES)}, got {kind!r}")
        for key, value in (("patience", patience), ("anneal_patience", anneal_patience)):
            if not (_number(value) and 0 < value < math.inf):
                raise ValueError(f"protocol.{key} must be a finite number of epochs > 0, got {value!r}")
        if not (_number(factor) and 1 < factor < math.inf):
            raise ValueError(f"protocol.factor (step-size divisor) must be a finite number > 1, got {factor!r}")
        if not (isinstance(max_stalls, int) and not isinstance(max_stalls, bool) and max_stalls >= 1):
            raise ValueError(f"protocol.max_stalls must be an integer >= 1, got {max_stalls!r}")
        if not (_number(min_step_size) and 0 <= min_step_size < math.inf):
            raise ValueError("protocol.min_step_size must be a finite number >= 0 (0: no limit), "
                             f"got {min_step_size!r}")
        if max_prune_epochs is not None and not (_number(max_prune_epochs) and 0 < max_prune_epochs < math.inf):
            raise ValueError(f"protocol.max_prune_epochs must be a finite number > 0 or null (no limit), "
                             f"got {max_prune_epochs!r}")
        self.max_prune_epochs = None if max_prune_epochs is None else float(max_prune_epochs)
        self.kind, self.patience, self.anneal_patience = kind, float(patience), float(anneal_patience)
        self.factor, self.max_stalls, self.min_step_size = float(factor), int(max_stalls), float(min_step_size)
        self.phase = self.PHASES[kind][0]
        self.best: dict[str, Any] | None = None  # snapshot of the best-VCE state
        self.anchor: dict[str, Any] | None = None  # where the patience window started (= best outside prune)
        self._last_validation_step = 0
        self.stage_improved = False
        self.stalls = 0
        self.done = False
        self.history: list[dict[str, Any]] = []

    @property
    def best_vce(self) -> float:
        return self.best["vce"] if self.best is not None else math.inf

    @property
    def best_step(self) -> int:
        return self.best["step"] if self.best is not None else 0

    # ------------------------------------------------------------------ hooks
    def on_fit_start(self, trainer, module: NonparametricModule) -> None:
        if self.done:
            trainer.should_stop = True

    def on_validation_end(self, trainer, module: NonparametricModule) -> None:
        if trainer.sanity_checking or self.done:
            return
        vce, step = module.last_val_error, module.step_count
        if vce < self.best_vce:
            self.stage_improved = True
            self.best = self.anchor = self._snapshot(trainer, module, vce)
        elif self.phase == "prune" and module.last_removal_step > self._last_validation_step and self.best is not None:
            self.anchor = self._snapshot(trainer, module, vce)  # units were eliminated: the window restarts here
        self._last_validation_step = step
        if self.anchor is None:  # NaN VCE before any snapshot: nothing to rewind to yet
            return
        patience = self.anneal_patience if self.phase == "anneal" else self.patience
        if step - self.anchor["step"] >= epochs_to_steps(patience, trainer) or self._prune_too_long(trainer, step):
            self._advance(trainer, module)
        phase = float(self.PHASES[self.kind].index(self.phase)) if not self.done else -1.0
        for logger in trainer.loggers:  # self.log is not allowed in on_validation_end
            logger.log_metrics({"protocol/phase": phase}, step=trainer.global_step)

    def _prune_too_long(self, trainer, step: int) -> bool:
        """The prune stage's length limit: units that keep trickling out one by one can keep the
        paper's rule (no elimination for ``patience`` epochs) from ever holding (README)."""
        if self.phase != "prune" or self.max_prune_epochs is None:
            return False
        stage_start = self.history[-1]["step"] if self.history else 0  # where the grow stage rewound to
        return step - stage_start >= epochs_to_steps(self.max_prune_epochs, trainer)

    def _snapshot(self, trainer, module: NonparametricModule, vce: float) -> dict[str, Any]:
        return {"module": module.snapshot(), "vce": vce, "step": module.step_count}

    def on_fit_end(self, trainer, module: NonparametricModule) -> None:
        """Whatever ended the run (stop rule or budget), the final network is the best one."""
        if self.best is not None and module.step_count != self.best_step:
            self.anchor = self.best
            self._rewind(module)

    # ------------------------------------------------------------ transitions
    def _advance(self, trainer, module: NonparametricModule) -> None:
        old = self.phase
        self._rewind(module)
        if self.phase == "grow":
            self.phase = "prune"
            if module.growth is not None:
                module.growth.enabled = False
        elif self.phase == "prune":
            self.phase = "fit"
            set_hparam(module, "lam", 0.0)
        else:  # fit, anneal
            stalled = self.phase == "anneal" and not self.stage_improved
            self.stalls = self.stalls + 1 if stalled else 0
            new_step = module.step_size / self.factor
            if self.stalls >= self.max_stalls or new_step < self.min_step_size:
                self.done, trainer.should_stop = True, True
            else:
                self.phase = "anneal"
                set_hparam(module, module.step_size_key, new_step)
        self.stage_improved = False
        event = {"step": module.step_count, "from": old, "to": "stop" if self.done else self.phase,
                 "best_vce": self.best_vce, "lambda": module.lam, "step_size": module.step_size}
        self.history.append(event)
        log.info("protocol: %s -> %s at step %d (best VCE %.5f, lambda %g, step size %g)", old, event["to"],
                 module.step_count, self.best_vce, module.lam, module.step_size)

    def _rewind(self, module: NonparametricModule) -> None:
        """Back to the anchor: the best-VCE state, or in the prune phase the later state after the last
        elimination (the paper rewinds "the last P1 epochs"), which then counts as the best."""
        module.restore(self.anchor["module"])
        self.best = self.anchor
        self._last_validation_step = self.anchor["step"]

    # ------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("phase", "best", "anchor", "stage_improved",
                                               "stalls", "done", "history", "_last_validation_step")}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k, v in state.items():
            setattr(self, k, v)


def set_hparam(module: NonparametricModule, key: str, value: float) -> None:
    """Set lambda (``lam``) or the step size in every param group: the protocol's stage changes, and a resume's
    accepted changes (:func:`apply_resume_changes`), are the only writers."""
    for group in module.optimizer.param_groups:
        group[key] = float(value)


def apply_resume_changes(module: NonparametricModule, old: dict, new: dict,
                         protocol: RewindProtocol | None) -> None:
    """A resume's accepted config changes (``resume_changes``; ``old`` and ``new`` resolved) to what a checkpoint
    carries: the optimizer's settings and whether units are added. What the protocol set stays unless its own
    key changed: the annealed step size, and lambda = 0 after the prune stage (a new lambda then acts through
    alpha_r = alpha_r_lambda / lambda only)."""
    keep = set()
    if old["optimizer"].get(module.step_size_key) == new["optimizer"].get(module.step_size_key):
        keep.add(module.step_size_key)
    if old["lambda"] == new["lambda"]:
        keep.add("lam")
    elif protocol is not None and protocol.kind == "nonparametric" and protocol.phase in ("fit", "anneal"):
        keep.add("lam")
        log.warning("resume: lambda stays 0, as the protocol sets it after its prune stage; the new lambda "
                    "%s acts through alpha_r = alpha_r_lambda / lambda only", new["lambda"])
    scheduled = ("lam", module.step_size_key)
    for group, configured in zip(module.optimizer.param_groups, module.configured_hparams):
        group.update({k: v for k, v in configured.items() if k not in scheduled})  # e.g. alpha_r, beta
    for key in scheduled:
        if key not in keep:
            set_hparam(module, key, module.configured_hparams[0][key])
    if old["model"].get("growth") != new["model"].get("growth") and module.growth is not None:
        until = new["model"]["growth"].get("until")  # e.g. a later growth.until
        module.growth.enabled = (protocol is None or protocol.phase == "grow") and \
            (until is None or module.step_count < round(until * module.steps_per_epoch))


class UnitLogger(Callback):
    """Writes the unit records (id, layer, birth, death) and the fan-in / fan-out lengths of live units.

    ``units.csv`` is rewritten at every validation; ``unit_lengths.csv`` gains one row per
    live unit every ``lengths_every`` validations (Fig. 3E/F). Steps are optimizer steps;
    ``epoch = step * batch_size / |D|``.
    """

    def __init__(self, directory: str | Path, lengths_every: int = 1) -> None:
        if not (isinstance(lengths_every, int) and not isinstance(lengths_every, bool) and lengths_every >= 0):
            raise ValueError(f"unit_lengths_every must be an integer >= 0 (validations; 0: never), "
                             f"got {lengths_every!r}")
        self.directory = Path(directory)
        self.lengths_every = int(lengths_every)
        self._validations = 0
        self._rows = 0  # rows of unit_lengths.csv written (a resume drops those written after its checkpoint)

    def on_fit_start(self, trainer, module: NonparametricModule) -> None:
        path = self.directory / "unit_lengths.csv"
        packed = find(path)
        if packed is not None and packed != path:  # a compressed record resumed: its rows, plain, go on
            with open_text(packed) as f:
                write_atomic(path, f.read())
            packed.unlink()
        if path.exists():
            with open_text(path) as f:  # newline="": the csv module's line ends, kept as written
                lines = f.read().splitlines(keepends=True)
            if self._rows is None:  # a checkpoint from before rows were counted: keep them all
                self._rows = max(len(lines) - 1, 0)
            elif len(lines) > self._rows + 1:
                write_atomic(path, "".join(lines[:self._rows + 1]))
        elif self._rows is None:
            self._rows = 0

    def on_validation_end(self, trainer, module: NonparametricModule) -> None:
        if trainer.sanity_checking:
            return
        self.write_records(module)
        self._validations += 1
        if self.lengths_every > 0 and self._validations % self.lengths_every == 0:
            path = self.directory / "unit_lengths.csv"
            new = not path.exists()
            epoch = module.step_count * module.batch_size / module.dataset_size
            with path.open("a", newline="") as f:
                w = csv.writer(f)
                if new:
                    w.writerow(["step", "epoch", "layer", "id", "fan_in", "fan_out"])
                for layer, lengths in enumerate(module.net.unit_lengths()):
                    for i, fi, fo in zip(lengths["ids"].tolist(), lengths["fan_in"].tolist(),
                                         lengths["fan_out"].tolist()):
                        w.writerow([module.step_count, f"{epoch:.4f}", layer + 1, i, f"{fi:.6g}", f"{fo:.6g}"])
                        self._rows += 1

    def on_fit_end(self, trainer, module: NonparametricModule) -> None:
        self.write_records(module)

    def write_records(self, module: NonparametricModule) -> None:
        f = io.StringIO(newline="")
        w = csv.DictWriter(f, fieldnames=["id", "layer", "birth", "death"])
        w.writeheader()
        for r in module.net.unit_records():
            w.writerow({**r, "layer": r["layer"] + 1, "death": "" if r["death"] is None else r["death"]})
        write_atomic(self.directory / "units.csv", f.getvalue())

    def state_dict(self) -> dict[str, Any]:
        return {"validations": self._validations, "rows": self._rows}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._validations = state["validations"]
        self._rows = state.get("rows")


class RunProgressBar(TQDMProgressBar):
    """Lightning's progress bar with what a run is doing: the hidden sizes, the last validation error,
    the protocol's phase and the step size (instead of Lightning's ``v_num``)."""

    def get_metrics(self, trainer, module: NonparametricModule) -> dict[str, Any]:
        shown: dict[str, Any] = {"sizes": "-".join(map(str, module.net.hidden_sizes))}
        if not math.isnan(module.last_val_error):
            shown["VCE"] = f"{100 * module.last_val_error:.3f}%"
        protocol = find_callback(trainer, RewindProtocol)
        if protocol is not None:
            shown["phase"] = "stop" if protocol.done else protocol.phase
        if trainer.strategy.optimizers:
            shown["step size"] = f"{module.step_size:.3g}"
        return shown


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
