"""Callbacks: unit growth and pruning (Alg. 1 lines 18-24), the rewind protocols (7.4.1 / 7.4.2), unit logs."""
from __future__ import annotations

import csv
import io
import logging
import math
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback

from npnn.module import NonparametricModule
from npnn.runs import write_atomic

__all__ = ["Growth", "RewindProtocol", "UnitLogger", "epochs_to_steps"]

log = logging.getLogger(__name__)


def epochs_to_steps(epochs: float, trainer: pl.Trainer) -> int:
    """A duration in (possibly fractional) epochs, in optimizer steps (at least 1)."""
    return max(1, round(epochs * trainer.lightning_module.steps_per_epoch))


class Growth(Callback):
    """Removes dead units after every step and adds ``rate`` units to every hidden layer every ``every`` epochs.

    Removal: every hidden unit whose fan-in AdaRad's shrinkage made exactly zero (Alg. 1
    lines 18-19). Addition: ``rate`` units per layer (``Poisson(rate)`` if not an integer,
    line 23) with random fan-in and zero fan-out (line 24), every ``every`` epochs (Table 3:
    once an epoch; poker ten times an epoch), while ``enabled`` and before epoch ``until``
    (Fig. 3: 1000). The protocol switches addition off; removal goes on.
    """

    def __init__(self, rate: float = 1.0, every: float = 1.0, until: float | None = None, seed: int = 0,
                 enabled: bool = True) -> None:
        if not (rate >= 0 and math.isfinite(rate)):
            raise ValueError(f"growth.rate must be a finite number >= 0, got {rate!r}")
        if not every > 0:
            raise ValueError(f"growth.every (epochs between additions) must be > 0, got {every!r}")
        if until is not None and not until >= 0:
            raise ValueError(f"growth.until (epoch after which no units are added) must be >= 0 or null, got {until!r}")
        self.rate, self.every, self.enabled = float(rate), float(every), bool(enabled)
        self.until = None if until is None else float(until)
        self.generator = torch.Generator().manual_seed(int(seed))

    def after_step(self, trainer, module: NonparametricModule) -> None:
        """Called by the module after every optimizer step."""
        opt = module.raw_optimizer
        removed = sum(module.net.remove_dead_units(step=module.step_count, optimizer=opt))
        if removed:
            module.units_removed += removed
            module.last_removal_step = module.step_count
        if self.until is not None and module.step_count >= round(self.until * module.steps_per_epoch):
            self.enabled = False
        if self.enabled and module.step_count % epochs_to_steps(self.every, trainer) == 0:
            module.units_added += sum(module.net.grow(self.rate, step=module.step_count, optimizer=opt,
                                                      generator=self.generator))

    def state_dict(self) -> dict[str, Any]:
        return {"enabled": self.enabled, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.enabled = state["enabled"]
        self.generator.set_state(state["generator"])


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
    best validation point; the training data order is not rewound. The protocol owns lambda
    and the step size: it sets them again after every rewind.
    """

    PHASES = {"nonparametric": ("grow", "prune", "fit", "anneal"), "parametric": ("fit", "anneal")}

    def __init__(self, kind: str = "nonparametric", patience: float = 100.0, anneal_patience: float = 5.0,
                 factor: float = 3.0, max_stalls: int = 1, min_step_size: float = 0.0,
                 max_prune_epochs: float | None = None) -> None:
        if kind not in self.PHASES:
            raise ValueError(f"protocol.kind must be one of {sorted(self.PHASES)}, got {kind!r}")
        if not (patience > 0 and anneal_patience > 0):
            raise ValueError(f"protocol.patience and protocol.anneal_patience must be > 0 epochs, "
                             f"got {patience!r} and {anneal_patience!r}")
        if not factor > 1:
            raise ValueError(f"protocol.factor (step-size divisor) must be > 1, got {factor!r}")
        if max_stalls < 1:
            raise ValueError(f"protocol.max_stalls must be >= 1, got {max_stalls!r}")
        if max_prune_epochs is not None and not max_prune_epochs > 0:
            raise ValueError(f"protocol.max_prune_epochs must be > 0 or null (no limit), got {max_prune_epochs!r}")
        self.max_prune_epochs = None if max_prune_epochs is None else float(max_prune_epochs)
        self.kind, self.patience, self.anneal_patience = kind, float(patience), float(anneal_patience)
        self.factor, self.max_stalls, self.min_step_size = float(factor), int(max_stalls), float(min_step_size)
        self.phase = self.PHASES[kind][0]
        self.best: dict[str, Any] | None = None  # snapshot of the best-VCE state
        self.anchor: dict[str, Any] | None = None  # where the patience window started (= best outside prune)
        self._last_validation_step = 0
        self.stage_improved = False
        self.stalls = 0
        self.lam: float | None = None  # the protocol's lambda and step size, set on fit start
        self.step_size: float | None = None
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
        if self.step_size is None:
            self.lam, self.step_size = module.lam, module.get_step_size()
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
        return {"module": module.snapshot(), "growth": self._growth_state(trainer), "vce": vce,
                "step": module.step_count}

    def on_fit_end(self, trainer, module: NonparametricModule) -> None:
        """Whatever ended the run (stop rule or budget), the final network is the best one."""
        if self.best is not None and module.step_count != self.best_step:
            self.anchor = self.best
            self._rewind(trainer, module)

    # ------------------------------------------------------------ transitions
    def _advance(self, trainer, module: NonparametricModule) -> None:
        old = self.phase
        self._rewind(trainer, module)
        if self.phase == "grow":
            self.phase = "prune"
            for growth in self._growth_callbacks(trainer):
                growth.enabled = False
        elif self.phase == "prune":
            self.phase, self.lam = "fit", 0.0
        else:  # fit, anneal
            stalled = self.phase == "anneal" and not self.stage_improved
            self.stalls = self.stalls + 1 if stalled else 0
            new_step = self.step_size / self.factor
            if self.stalls >= self.max_stalls or new_step < self.min_step_size:
                self.done, trainer.should_stop = True, True
            else:
                self.phase, self.step_size = "anneal", new_step
        self.stage_improved = False
        self._apply(module)
        event = {"step": module.step_count, "from": old, "to": "stop" if self.done else self.phase,
                 "best_vce": self.best_vce, "lambda": self.lam, "step_size": self.step_size}
        self.history.append(event)
        log.info("protocol: %s -> %s at step %d (best VCE %.5f, lambda %g, step size %g)", old, event["to"],
                 module.step_count, self.best_vce, self.lam, self.step_size)

    def _rewind(self, trainer, module: NonparametricModule) -> None:
        """Back to the anchor: the best-VCE state, or in the prune phase the later state after the last
        elimination (the paper rewinds "the last P1 epochs"), which then counts as the best."""
        target = self.anchor
        module.restore(target["module"])
        self.best = target
        self._last_validation_step = target["step"]
        for growth, state in zip(self._growth_callbacks(trainer), target["growth"]):
            enabled = growth.enabled
            growth.load_state_dict(state)
            growth.enabled = enabled  # the protocol, not the snapshot, decides whether units are added
        self._apply(module)

    def _apply(self, module: NonparametricModule) -> None:
        module.set_lambda(self.lam)
        module.set_step_size(self.step_size)

    @staticmethod
    def _growth_callbacks(trainer) -> list[Growth]:
        return [cb for cb in trainer.callbacks if isinstance(cb, Growth)]

    def _growth_state(self, trainer) -> list[dict]:
        return [{k: (v.clone() if torch.is_tensor(v) else v) for k, v in g.state_dict().items()}
                for g in self._growth_callbacks(trainer)]

    # ------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("phase", "best", "anchor", "stage_improved",
                                               "stalls", "lam", "step_size", "done", "history",
                                               "_last_validation_step")}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k, v in state.items():
            setattr(self, k, v)


class UnitLogger(Callback):
    """Writes the unit records (id, layer, birth, death) and the fan-in / fan-out lengths of live units.

    ``units.csv`` is rewritten at every validation; ``unit_lengths.csv`` gains one row per
    live unit every ``lengths_every`` validations (Fig. 3E/F). Steps are optimizer steps;
    ``epoch = step * batch_size / |D|``.
    """

    def __init__(self, directory: str | Path, lengths_every: int = 1) -> None:
        self.directory = Path(directory)
        self.lengths_every = int(lengths_every)
        self._validations = 0
        self._rows = 0  # rows of unit_lengths.csv written (a resume drops those written after its checkpoint)

    def on_fit_start(self, trainer, module: NonparametricModule) -> None:
        path = self.directory / "unit_lengths.csv"
        if path.exists():
            lines = path.read_text().splitlines(keepends=True)
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
                    for i, fi, fo in zip(lengths["ids"].tolist(), lengths["fan_in"].tolist(), lengths["fan_out"].tolist()):
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
