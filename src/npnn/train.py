"""Build a run from its Hydra config, train it under the protocol, write a summary.

``python train.py ...`` (the repository's thin entry point) calls :func:`main`.
Run directory contents: ``checkpoints/last.ckpt``, ``logs/version_*/metrics.csv``,
``units.csv``, ``unit_lengths.csv``, ``summary.json``. What a run guarantees (atomic
checkpoints, signals, run-directory rules, resume checks) is :mod:`npnn.runs`.
"""
from __future__ import annotations

import json
import logging
import math
import time
from numbers import Number
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import ModelCheckpoint

from npnn.callbacks import Growth, RewindProtocol, UnitLogger
from npnn.data import InMemoryDataModule, Splits
from npnn.module import NonparametricModule, TrainingError
from npnn.nn import GROWABLE_NORMS, NORMS
from npnn.runs import (AtomicCheckpointIO, ResumeChanges, StopOnSignal, check_resume, delete_run, prepare_run_dir,
                       read_checkpoint, write_atomic)

__all__ = ["main", "build", "validate_config", "ConfigError", "evaluate"]

log = logging.getLogger(__name__)
MODEL_KINDS = ("nonparametric", "parametric")


class ConfigError(ValueError):
    """A configuration value that cannot work; the message names the key and the valid choices."""


def _number(cfg: DictConfig, key: str, low: float, strict: bool = False) -> float:
    value = OmegaConf.select(cfg, key)
    ok = isinstance(value, Number) and not isinstance(value, bool) and math.isfinite(value) and \
        (value > low if strict else value >= low)
    if not ok:
        raise ConfigError(f"{key} must be a number {'>' if strict else '>='} {low}, got {value!r}")
    return value


def _integer(cfg: DictConfig, key: str, what: str) -> int:
    value = OmegaConf.select(cfg, key)
    if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        raise ConfigError(f"{key} must be an integer >= 1 {what}, got {value!r}")
    return value


def validate_config(cfg: DictConfig) -> None:
    """Fail before any work, naming the key and what it may be."""
    _number(cfg, "lambda", 0)
    if not isinstance(cfg.get("seed"), int):
        raise ConfigError(f"seed must be an integer, got {cfg.get('seed')!r}")
    for key in ("dataset.batch_size", "dataset.eval_batch_size"):
        if OmegaConf.select(cfg, key) is not None:
            _integer(cfg, key, "(examples per batch)")
    for key in ("dataset.val_every", "trainer.val_check_interval"):
        every = OmegaConf.select(cfg, key)
        if every is not None:
            _number(cfg, key, 0, strict=True)
            if isinstance(every, float) and every > 1:
                raise ConfigError(f"{key} must be a fraction of an epoch in (0, 1] (or an integer number of "
                                  f"training-step calls), got {every!r}; to validate every N epochs use "
                                  f"trainer.check_val_every_n_epoch=N")
    if not isinstance(cfg.get("overwrite", False), bool):
        raise ConfigError(f"overwrite must be true or false, got {cfg.get('overwrite')!r}")
    changes = cfg.get("resume_changes") or []
    if not (OmegaConf.is_list(changes) or isinstance(changes, list)) or not all(isinstance(c, str) for c in changes):
        raise ConfigError(f"resume_changes must be a list of config keys, e.g. 'resume_changes=[lambda]', "
                          f"got {changes!r}")
    k = _integer(cfg, "dataset.steps_per_call", "(optimizer steps per training-step call)") \
        if "steps_per_call" in cfg.dataset else 1
    every = cfg.get("checkpoint_every_steps")
    if every is not None and (not isinstance(every, int) or every < 1 or every % k):
        raise ConfigError(f"checkpoint_every_steps must be null (at every validation) or a positive multiple of "
                          f"dataset.steps_per_call={k}, got {every!r}")
    model = cfg.model
    if model.kind not in MODEL_KINDS:
        raise ConfigError(f"model.kind must be one of {MODEL_KINDS}, got {model.kind!r}")
    if model.norm not in NORMS:
        raise ConfigError(f"model.norm must be one of {NORMS}, got {model.norm!r}")
    if model.kind == "nonparametric":
        if model.norm not in GROWABLE_NORMS:
            raise ConfigError(f"model.norm={model.norm!r} cannot grow: a nonparametric model needs one of {GROWABLE_NORMS}")
        if not (isinstance(model.hidden_layers, int) and model.hidden_layers >= 1):
            raise ConfigError(f"model.hidden_layers must be an integer >= 1, got {model.hidden_layers!r}")
        units = model.start_units
        per_layer = [units] if isinstance(units, int) else list(units) if OmegaConf.is_list(units) else [units]
        if not all(isinstance(u, int) and u >= 1 for u in per_layer) or \
                (OmegaConf.is_list(units) and len(per_layer) != model.hidden_layers):
            raise ConfigError(f"model.start_units must be an integer >= 1 (or a list of {model.hidden_layers} of "
                              f"them, one per hidden layer), got {units!r}")
        _number(cfg, "model.growth.rate", 0)
        _number(cfg, "model.growth.every", 0, strict=True)
    else:
        sizes = OmegaConf.select(cfg, "model.hidden_sizes", throw_on_missing=False)
        if OmegaConf.is_missing(model, "hidden_sizes") or not sizes or \
                not all(isinstance(h, int) and h >= 1 for h in sizes):
            raise ConfigError("model=parametric needs model.hidden_sizes, a list of positive widths, "
                              f"e.g. model.hidden_sizes=[23,24,15,4]; got {sizes!r}")
    if cfg.protocol is not None and cfg.protocol.get("_target_"):
        if cfg.protocol.kind != model.kind:
            raise ConfigError(f"protocol.kind={cfg.protocol.kind!r} does not match model.kind={model.kind!r}: "
                              f"use protocol={model.kind} (or protocol=none)")
        _number(cfg, "protocol.patience", 0, strict=True)
        _number(cfg, "protocol.anneal_patience", 0, strict=True)
    opt = cfg.optimizer
    for key in ("alpha_phi", "lr"):
        if key in opt:
            _number(cfg, f"optimizer.{key}", 0)
    for key, value in (cfg.get("divergence") or {}).items():
        if key not in NonparametricModule.DIVERGENCE_DEFAULTS:
            raise ConfigError(f"divergence.{key} is not a setting; the limits are "
                              f"{sorted(NonparametricModule.DIVERGENCE_DEFAULTS)}")
        if value is not None:
            _number(cfg, f"divergence.{key}", 0, strict=True)
    if "alpha_r" in opt and opt.alpha_r is None and cfg["lambda"] == 0:
        raise ConfigError("lambda=0 leaves alpha_r = alpha_r_lambda / lambda undefined: set optimizer.alpha_r")


def check_steps_per_call(cfg: DictConfig, steps_per_epoch: int) -> None:
    """``dataset.steps_per_call`` > 1 trains exactly as 1 only if validations fall on the same steps:
    it must divide the steps of an epoch and the steps between validations."""
    k = cfg.dataset.get("steps_per_call", 1)
    every = cfg.trainer.get("val_check_interval", 1.0)  # what Lightning uses (default: dataset.val_every)
    if k == 1 or every is None:
        return
    between = every * steps_per_epoch if isinstance(every, float) else every * k
    if steps_per_epoch % k or abs(between - round(between)) > 1e-9 or round(between) % k:
        raise ConfigError(
            f"dataset.steps_per_call={k} must divide the {steps_per_epoch} optimizer steps of an epoch and the "
            f"{between:g} steps between validations (trainer.val_check_interval={every}, from dataset.val_every); "
            f"otherwise validations move to other steps and the run differs from steps_per_call=1. Use a divisor "
            f"of both, e.g. steps_per_call=1")


def divergence_limits(cfg: DictConfig) -> dict:
    """The run's ``divergence.*`` limits; ``divergence: null`` switches every check off."""
    if cfg.get("divergence") is None:
        return {key: None for key in NonparametricModule.DIVERGENCE_DEFAULTS}
    return OmegaConf.to_container(cfg.divergence, resolve=True)


def hidden_sizes(model: DictConfig) -> list[int]:
    if model.kind == "nonparametric":
        if isinstance(model.start_units, int):
            return [int(model.start_units)] * int(model.hidden_layers)
        return [int(h) for h in model.start_units]
    return [int(h) for h in model.hidden_sizes]


def build(cfg: DictConfig, run_dir: str | Path) -> tuple[pl.Trainer, NonparametricModule, InMemoryDataModule]:
    """Everything a run needs, from its config."""
    validate_config(cfg)
    run_dir = Path(run_dir)
    stored, changes = None, {}
    if cfg.get("ckpt_path") is not None:  # read it now: a bad file or changed settings fail before any work
        checkpoint = read_checkpoint(cfg.ckpt_path)
        stored, changes = checkpoint.get("npnn_config"), check_resume(checkpoint, cfg, cfg.ckpt_path)
        del checkpoint
    pl.seed_everything(cfg.seed, workers=True)
    splits: Splits = instantiate(cfg.dataset.loader)
    datamodule = InMemoryDataModule(splits, batch_size=cfg.dataset.batch_size,
                                    eval_batch_size=cfg.dataset.get("eval_batch_size", 10_000), seed=cfg.seed,
                                    steps_per_item=cfg.dataset.get("steps_per_call", 1))
    check_steps_per_call(cfg, datamodule.train_batches.num_batches)
    model = cfg.model
    net = dict(in_features=splits.num_features, hidden_sizes=hidden_sizes(model), out_features=splits.num_classes,
               norm=model.norm, output_norm=model.output_norm, capnorm_eval_stats=model.capnorm_eval_stats,
               norm_momentum=model.norm_momentum)
    module = NonparametricModule(net=net, optimizer=OmegaConf.to_container(cfg.optimizer, resolve=True),
                                 lam=cfg["lambda"], dataset_size=splits.sizes[0], batch_size=cfg.dataset.batch_size,
                                 divergence=divergence_limits(cfg))
    callbacks: list[pl.Callback] = []
    if model.kind == "nonparametric":
        callbacks.append(Growth(rate=model.growth.rate, every=model.growth.every, until=model.growth.get("until"),
                                seed=cfg.seed + 1))
    if cfg.protocol is not None and cfg.protocol.get("_target_"):
        callbacks.append(instantiate(cfg.protocol))
    callbacks.append(UnitLogger(run_dir, lengths_every=cfg.get("unit_lengths_every", 1)))
    callbacks.append(ResumeChanges(cfg, stored, changes))
    callbacks.append(StopOnSignal(run_dir / "checkpoints" / "last.ckpt"))
    every = cfg.get("checkpoint_every_steps")  # default: at every validation
    # one file, checkpoints/last.ckpt, overwritten at each save (Lightning >= 2.6 writes save_last only
    # after a top-k save, so the latest checkpoint is the one "top-k" file, named last)
    callbacks.append(ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="last", save_top_k=1, monitor=None,
                                     save_last=False, enable_version_counter=False, every_n_train_steps=every))
    logger = False
    if cfg.logger is not None and cfg.logger.get("_target_"):
        logger = instantiate(cfg.logger, save_dir=str(run_dir))
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=logger, default_root_dir=str(run_dir),
                          plugins=[AtomicCheckpointIO()])
    return trainer, module, datamodule


@torch.no_grad()
def evaluate(module: NonparametricModule, x: torch.Tensor, y: torch.Tensor, batch_size: int = 10_000) -> float:
    """Classification error of the module's network (evaluation mode) on ``x, y``."""
    was_training = module.training
    module.eval()
    device = next(module.parameters()).device
    wrong = 0
    for i in range(0, len(y), batch_size):
        pred = module.net(x[i:i + batch_size].to(device)).argmax(1).cpu()
        wrong += int((pred != y[i:i + batch_size]).sum())
    module.train(was_training)
    return wrong / len(y)


def main(cfg: DictConfig, run_dir: str | Path | None = None) -> dict[str, Any]:
    """Train one run; returns (and writes to ``summary.json``) its final sizes and errors.

    A run that cannot go on (diverged, constant network, chance level, a signal) still writes
    ``summary.json`` with ``stopped_by`` and ``error``; then the error is raised again.
    """
    if run_dir is None:
        from hydra.core.hydra_config import HydraConfig
        run_dir = HydraConfig.get().runtime.output_dir
    run_dir = Path(run_dir)
    validate_config(cfg)
    earlier = prepare_run_dir(run_dir, cfg.get("ckpt_path"), overwrite=cfg.get("overwrite", False))
    run_dir.mkdir(parents=True, exist_ok=True)
    trainer, module, datamodule = build(cfg, run_dir)
    delete_run(earlier)  # overwrite=true: only once the new run has passed every check
    stop = next(cb for cb in trainer.callbacks if isinstance(cb, StopOnSignal))
    stop.install()  # before fit: a signal during start-up also ends in a checkpoint after the first step
    start = time.time()
    failure: TrainingError | None = None
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    except TrainingError as err:  # diverged, NaN loss, constant network, signal: summary.json says so, then re-raised
        failure = err
        log.error("run %s stopped: %s: %s", run_dir, type(err).__name__, err)
    except Exception as err:  # said now and in the run's log, not only at the end of a sweep
        log.error("run %s failed: %s: %s", run_dir, type(err).__name__, err)
        raise
    finally:
        stop.restore()
    wall = time.time() - start
    s = datamodule.splits
    val_error = evaluate(module, s.x_val, s.y_val)
    if failure is None:
        try:
            module.check_better_than_majority(val_error, s.y_val)
        except TrainingError as err:
            failure = err
            log.error("run %s: %s", run_dir, err)
    protocol = next((cb for cb in trainer.callbacks if isinstance(cb, RewindProtocol)), None)
    stopped_by = failure.stopped_by if failure is not None else \
        "protocol" if protocol is not None and protocol.done else "budget"
    summary = {
        "dataset": s.name, "lambda": cfg["lambda"], "seed": cfg.seed, "model": cfg.model.kind,
        "hidden_sizes": module.net.hidden_sizes, "weights": module.net.num_weights(),
        "val_error": val_error, "test_error": evaluate(module, s.x_test, s.y_test),
        "epochs": module.step_count * module.batch_size / module.dataset_size,
        "steps_per_epoch": module.steps_per_epoch,
        "steps_trained": trainer.global_step, "wall_time_s": round(wall, 1),
        "stopped_by": stopped_by,
        "protocol": protocol.history if protocol is not None else [],
    }
    if cfg.get("ckpt_path") is not None:
        changes = next(cb for cb in trainer.callbacks if isinstance(cb, ResumeChanges)).changes
        summary["resumed_from"] = str(cfg.ckpt_path)
        summary["changed_on_resume"] = {k: list(v) for k, v in changes.items()}
    if failure is not None:  # sizes and errors above are those of the network at the failure, not the best one
        summary["error"] = f"{type(failure).__name__}: {failure}"
    write_atomic(run_dir / "summary.json", json.dumps(summary, indent=2))
    log.info("%s sizes %s, val error %.4f%%, test error %.4f%%, %.1f epochs, %.0f s -> %s",
             "final" if failure is None else f"stopped ({stopped_by}) at", "-".join(map(str, summary["hidden_sizes"])),
             100 * summary["val_error"], 100 * summary["test_error"], summary["epochs"], wall, run_dir)
    if failure is not None:
        raise failure
    return summary
