"""Build a run from its Hydra config, train it under the protocol, write a summary.

``python train.py ...`` (the repository's thin entry point) calls :func:`main`.
Run directory contents: ``checkpoints/last.ckpt``, ``logs/version_*/metrics.csv``,
``units.csv``, ``unit_lengths.csv``, ``summary.json``. What a run guarantees (atomic
checkpoints, signals, run-directory rules, resume checks) is :mod:`npnn.runs`.
"""
from __future__ import annotations

import copy
import json
import logging
import math
import os
import platform
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import InterpolationResolutionError
from pytorch_lightning.accelerators import CPUAccelerator
from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint, Timer
from pytorch_lightning.plugins.environments import LightningEnvironment, SLURMEnvironment

from npnn import fused as npnn_fused
from npnn.callbacks import RewindProtocol, RunProgressBar, UnitLogger, find_callback
from npnn.checkpoint import CheckpointError, read_checkpoint
from npnn.data import Splits
from npnn.data.datamodule import InMemoryDataModule
from npnn.data.download import DataUnavailableError
from npnn.data.tabular import AUTO_KEYS, DataError, auto_lambda, auto_settings
from npnn.module import Growth, NonparametricModule, TrainingError
from npnn.nn import GROWABLE_NORMS
from npnn.optim import ParametricOptimizer
from npnn.record import FINISHED, MODEL_SUMMARY_FIELDS, write_atomic, write_summary
from npnn.runs import (
    AtomicCheckpointIO,
    LastCheckpoint,
    ResumeChanges,
    RunInterrupted,
    SettingConflictError,
    StopOnSignal,
    check_resume,
    delete_run,
    existing_run,
    is_relaunch,
    lock_run_dir,
    prepare_run_dir,
    run_config,
    setting_conflicts,
    unlock_run_dir,
)
from npnn.trained import MODEL_FILE, MODEL_JSON, save_model

__all__ = ["main", "run", "build", "validate_config", "steps_per_call", "ConfigError", "final_errors", "load_data",
           "resolve_auto"]

log = logging.getLogger(__name__)
MODEL_KINDS = ("nonparametric", "parametric")
KNOWN_KEYS = {"seed", "lambda", "ckpt_path", "resume_changes", "overwrite", "resume_existing", "sweep_failure_value",
              "data_dir", "checkpoint_every_steps", "checkpoint_every_seconds", "steps_per_call", "unit_lengths_every",
              "test_every", "divergence", "dataset", "model", "optimizer", "protocol", "logger", "callbacks",
              "trainer", "hydra", "random_search"}  # conf/config.yaml's, and hparams_search=p_random's node


class ConfigError(ValueError):
    """A configuration value that cannot work; the message names the key and the valid choices."""


def validate_config(cfg: DictConfig) -> None:
    """Checks that involve several keys, before any work. Each part of the run checks its own
    arguments when :func:`build` constructs it (:class:`ConfigError` naming its group)."""
    # the run's own keys, which main reads
    unknown = sorted(set(cfg) - KNOWN_KEYS)
    if unknown:
        raise ConfigError(f"unknown config key(s) {unknown}: npnn reads none such (a typo, or a +key= that is not "
                          f"one of {', '.join(sorted(KNOWN_KEYS - {'hydra'}))})")
    seed = cfg.get("seed")
    if not (isinstance(seed, int) and not isinstance(seed, bool) and 0 <= seed < 2**32):
        raise ConfigError(f"seed must be an integer in [0, 2**32), got {seed!r}")
    lam = cfg.get("lambda")
    if lam != "auto" and not (isinstance(lam, (int, float)) and not isinstance(lam, bool) and 0 <= lam < math.inf):
        raise ConfigError(f"lambda must be a finite number >= 0 (or auto: 1 / |D|, your own data), got {lam!r}")
    lengths_every = cfg.get("unit_lengths_every", 1)
    if not (isinstance(lengths_every, int) and not isinstance(lengths_every, bool) and lengths_every >= 0):
        raise ConfigError(f"unit_lengths_every must be an integer >= 0 (validations between rows of "
                          f"unit_lengths.csv; 0: never), got {lengths_every!r}")
    every_seconds = cfg.get("checkpoint_every_seconds")
    if every_seconds is not None and not (isinstance(every_seconds, (int, float))
                                          and not isinstance(every_seconds, bool) and 0 <= every_seconds < math.inf):
        raise ConfigError(f"checkpoint_every_seconds must be null or a finite number of seconds >= 0 (0: a checkpoint "
                          f"at every validation), got {every_seconds!r}")
    test_every = cfg.get("test_every", 0)
    if not (isinstance(test_every, int) and not isinstance(test_every, bool) and test_every >= 0):
        raise ConfigError(f"test_every must be an integer >= 0 (validations between test-set evaluations; 0: only "
                          f"at a new lowest validation error and for the final network), got {test_every!r}")
    max_time = cfg.trainer.get("max_time")
    if max_time is not None and not _positive_duration(max_time):
        raise ConfigError(f"trainer.max_time must be null (no limit) or a positive duration \"DD:HH:MM:SS\", e.g. "
                          f"00:12:00:00 for 12 hours, got {max_time!r}")
    for key in ("overwrite", "resume_existing"):
        if not isinstance(cfg.get(key, False), bool):
            raise ConfigError(f"{key} must be true or false, got {cfg.get(key)!r}")
    changes = cfg.get("resume_changes") or []
    if not (OmegaConf.is_list(changes) or isinstance(changes, list)) or not all(isinstance(c, str) for c in changes):
        raise ConfigError(f"resume_changes must be a list of config keys, e.g. 'resume_changes=[lambda]', "
                          f"got {changes!r}")
    model = cfg.model
    if model.kind not in MODEL_KINDS:
        raise ConfigError(f"model.kind must be one of {MODEL_KINDS}, got {model.kind!r}")
    if model.kind == "nonparametric":
        if model.norm not in GROWABLE_NORMS:
            raise ConfigError(f"model.norm={model.norm!r} cannot grow: "
                              f"a nonparametric model needs one of {GROWABLE_NORMS}")
        if cfg.optimizer.get("algorithm") in ParametricOptimizer.NORMALISED:  # one bias weight per parameter
            raise ConfigError(f"optimizer={cfg.optimizer.algorithm} normalises with one running average per weight "
                              f"and cannot start new units fairly: a growing network needs optimizer=adarad (the "
                              f"paper's), adarad_m, or sgd / momentum / nesterov")
        if not (isinstance(model.hidden_layers, int) and model.hidden_layers >= 1):
            raise ConfigError(f"model.hidden_layers must be an integer >= 1, got {model.hidden_layers!r}")
        units = model.start_units
        per_layer = [units] if isinstance(units, int) else list(units) if OmegaConf.is_list(units) else [units]
        if not all(isinstance(u, int) and u >= 1 for u in per_layer) or \
                (OmegaConf.is_list(units) and len(per_layer) != model.hidden_layers):
            raise ConfigError(f"model.start_units must be an integer >= 1 (or a list of {model.hidden_layers} of "
                              f"them, one per hidden layer), got {units!r}")
    else:
        sizes = OmegaConf.select(cfg, "model.hidden_sizes", throw_on_missing=False)
        if OmegaConf.is_missing(model, "hidden_sizes") or not sizes or \
                not all(isinstance(h, int) and h >= 1 for h in sizes):
            raise ConfigError("model=parametric needs model.hidden_sizes, a list of positive widths, "
                              f"e.g. model.hidden_sizes=[23,24,15,4]; got {sizes!r}")
    for key in ("max_epochs", "max_steps"):  # Lightning would train nothing (0) or fail an assert (0.5)
        budget = cfg.trainer.get(key)
        if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int) or
                                   not (budget == -1 or budget >= 1)):
            raise ConfigError(f"trainer.{key} must be -1 (no limit: the protocol ends the run) or an integer >= 1, "
                              f"got {budget!r}")
    precision = str(cfg.trainer.get("precision") or "32")
    if precision not in ("32", "32-true", "64", "64-true"):  # module.train_step backpropagates the loss itself
        raise ConfigError(f"trainer.precision={precision!r}: npnn trains in full precision (32 or 64); mixed "
                          f"precision would need the loss scaling that its training step does not do")
    try:
        cfg.optimizer.get("alpha_r")  # alpha_r_lambda / lambda (conf/optimizer/adarad.yaml)
    except InterpolationResolutionError as err:
        raise ConfigError(str(err.__cause__ or err)) from None


def _positive_duration(value: Any) -> bool:
    """Lightning's ``max_time``, ``DD:HH:MM:SS`` of whole numbers or a mapping such as ``{hours: 12}``, of more
    than zero seconds."""
    if OmegaConf.is_dict(value) or isinstance(value, dict):
        units = {"days": 86400, "hours": 3600, "minutes": 60, "seconds": 1}
        return set(value) <= set(units) and all(isinstance(v, (int, float)) and not isinstance(v, bool) and
                                                0 <= v < math.inf for v in value.values()) and \
            sum(v * units[k] for k, v in value.items()) > 0
    parts = str(value).split(":")
    if len(parts) != 4 or not all(p.strip().isdigit() for p in parts):
        return False
    return sum(int(p) * f for p, f in zip(parts, (86400, 3600, 60, 1))) > 0


def load_data(cfg: DictConfig) -> Splits:
    """The run's :class:`Splits` (``dataset.loader``); a problem with the data is one :class:`DataError` line."""
    try:
        splits = instantiate(cfg.dataset.loader)
    except InstantiationException as err:
        cause = err.__cause__
        if isinstance(cause, (DataError, DataUnavailableError)):
            raise cause from None  # the loader's own message names the file and the fix
        if isinstance(cause, (TypeError, ValueError)):  # an argument the loader does not take, or a bad value
            raise ConfigError(f"dataset.loader: {cause}") from None
        raise
    if not isinstance(splits, Splits):
        raise ConfigError(f"dataset.loader ({cfg.dataset.loader.get('_target_')}) returned a "
                          f"{type(splits).__name__}, not npnn.data.Splits")
    return splits


def resolve_auto(cfg: DictConfig, splits: Splits) -> tuple[DictConfig, dict[str, Any]]:
    """A copy of ``cfg`` with every ``auto`` setting (``dataset=csv``, ``tensors``) derived from the training rows
    (:func:`npnn.data.tabular.auto_settings`), and ``{key: value}`` of those it set; ``cfg`` as it is where none
    is ``auto`` (the paper's data sets). The run's stored config keeps ``auto``: the same data gives the same values."""
    dataset = cfg.dataset
    autos = [k for k in AUTO_KEYS if dataset.get(k) == "auto"]
    derived: dict[str, Any] = {}
    if autos or cfg.get("lambda") == "auto":
        n_train = splits.sizes[0]
        try:
            values = auto_settings(n_train, {k: dataset.get(k) for k in AUTO_KEYS if k in dataset})
        except ValueError as err:
            raise ConfigError(str(err)) from None
        derived = {f"dataset.{k}": values[k] for k in autos}
        if cfg.get("lambda") == "auto":
            derived["lambda"] = auto_lambda(n_train)
        cfg = copy.deepcopy(cfg)
        for key, value in derived.items():
            OmegaConf.update(cfg, key, value, force_add=True)
    batch = cfg.dataset.get("batch_size")
    if isinstance(batch, int) and not isinstance(batch, bool) and batch > splits.sizes[0]:
        raise DataError(f"dataset.batch_size={batch} is more than the {splits.sizes[0]} training rows: lower it "
                        f"(dataset.batch_size=auto picks min(1000, max(32, rows / 20)))")
    return cfg, derived


def data_record(splits: Splits) -> dict[str, Any] | None:
    """``data.json``: what a prediction needs to read raw features and give back the user's labels (your own
    data; ``None`` for the paper's data sets)."""
    if splits.classes is None:
        return None
    return {"name": splits.name, "features": splits.feature_names, "classes": splits.classes,
            "standardize": {"mean": splits.feature_mean, "std": splits.feature_std},
            "rows": dict(zip(("train", "val", "test"), splits.sizes))}


def resolved_config(cfg: DictConfig, derived: dict[str, Any]) -> dict[str, Any]:
    """The run's config with interpolations resolved and ``auto`` values derived, without Hydra's node."""
    cfg = copy.deepcopy(cfg)
    with open_dict(cfg):
        cfg.pop("hydra", None)
    for key, value in derived.items():
        OmegaConf.update(cfg, key, value, force_add=True)
    try:
        return OmegaConf.to_container(cfg, resolve=True)
    except Exception:  # an interpolation that needs Hydra's runtime: as written
        return OmegaConf.to_container(cfg, resolve=False)


def _construct(group: str, make: Callable[[], Any]) -> Any:
    """``make()``; a value its constructor refuses becomes a :class:`ConfigError` naming the config group."""
    try:
        return make()
    except InstantiationException as err:
        cause = err.__cause__ if err.__cause__ is not None else err
        raise ConfigError(f"{group}: {cause}") from None
    except (ValueError, TypeError) as err:
        raise ConfigError(f"{group}: {err}") from None


def steps_per_call(cfg: DictConfig, steps_per_epoch: int, resumed: int | None = None) -> int:
    """The run's ``steps_per_call`` (README, Benchmarks): optimizer steps per call of Lightning's training
    step. A value trains the same run as 1 if it divides the steps of an epoch, ``checkpoint_every_steps``
    and ``trainer.max_steps``, and Lightning, which counts calls, then validates on the same steps;
    ``auto`` takes the largest such value up to 8 (poker: 8, mnist: 5), or a resume's own (``resumed``)."""
    every = cfg.trainer.get("val_check_interval", 1.0)  # what Lightning uses (default: dataset.val_every)
    every = 1.0 if every is None else every
    if isinstance(every, bool) or not isinstance(every, (int, float)) or not every > 0 or \
            (isinstance(every, float) and not every <= 1):
        raise ConfigError(f"trainer.val_check_interval (default: dataset.val_every) must be a fraction of an epoch "
                          f"in (0, 1] or a whole number of calls >= 1 (time-based intervals are not supported), got "
                          f"{every!r}")
    limit = cfg.trainer.get("limit_train_batches")

    def steps_between_validations(k: int) -> tuple[int, int]:
        """(steps an epoch, steps between validations) with lists of k, as Lightning counts them in calls."""
        calls = math.ceil(steps_per_epoch / k)
        if isinstance(limit, float) and not isinstance(limit, bool):
            calls = int(calls * limit)
        elif isinstance(limit, int) and not isinstance(limit, bool):
            calls = min(limit, calls)
        between = max(1, int(calls * every)) if isinstance(every, float) else every
        return min(calls * k, steps_per_epoch), between * k

    must_divide = {f"the {steps_per_epoch} steps of an epoch": steps_per_epoch}
    every_steps = cfg.get("checkpoint_every_steps")
    if every_steps is not None:
        if isinstance(every_steps, bool) or not isinstance(every_steps, int) or every_steps < 1:
            raise ConfigError(f"checkpoint_every_steps must be null (at every validation) or an integer >= 1, "
                              f"got {every_steps!r}")
        must_divide[f"checkpoint_every_steps={every_steps}"] = every_steps
    max_steps = OmegaConf.select(cfg, "trainer.max_steps")
    if isinstance(max_steps, int) and max_steps > 0:
        must_divide[f"trainer.max_steps={max_steps}"] = max_steps

    def fits(k: int) -> bool:
        return all(n % k == 0 for n in must_divide.values()) and \
            steps_between_validations(k) == steps_between_validations(1)

    k = cfg.get("steps_per_call", "auto")
    if k == "auto":
        return resumed if resumed is not None and fits(resumed) else max(k for k in range(1, 9) if fits(k))
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(f"steps_per_call must be auto or an integer >= 1, got {k!r}")
    if not fits(k):
        epoch, between = steps_between_validations(1)
        raise ConfigError(
            f"steps_per_call={k} must divide {', '.join(must_divide)}, and keep the validations every {between} "
            f"steps (trainer.val_check_interval={every}; with lists of {k}: every "
            f"{steps_between_validations(k)[1]}): otherwise validations, checkpoints or the end move to other "
            f"steps than with steps_per_call=1. Use steps_per_call=auto (or 1)")
    return k


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


def build(cfg: DictConfig, run_dir: str | Path,
          splits: Splits | None = None) -> tuple[pl.Trainer, NonparametricModule, InMemoryDataModule]:
    """Everything a run needs, from its config (``splits``: the data, already loaded; else ``dataset.loader``).
    The datamodule's ``auto_settings`` are the values :func:`resolve_auto` derived."""
    validate_config(cfg)
    run_dir = Path(run_dir)
    stored, changes, resumed_k, resumed_epoch = None, {}, None, 0
    if cfg.get("ckpt_path") is not None:  # read it now: a bad file or changed settings fail before any work
        checkpoint = read_checkpoint(cfg.ckpt_path)
        stored, changes = checkpoint.get("npnn_config"), check_resume(checkpoint, cfg, cfg.ckpt_path)
        resumed_k, resumed_epoch = checkpoint["npnn"]["steps_per_call"], int(checkpoint.get("epoch", 0))
        resumed_auto = checkpoint.get("npnn_auto_settings", {})
        del checkpoint
    written = cfg  # as the user wrote it (auto kept): stored in checkpoints, compared on resume
    splits = load_data(cfg) if splits is None else splits
    cfg, derived = resolve_auto(cfg, splits)
    if stored is not None and resumed_auto != derived:  # the same config, but the data has changed
        differ = ", ".join(f"{k}: checkpoint {resumed_auto.get(k)!r}, now {derived.get(k)!r}"
                           for k in sorted(set(resumed_auto) | set(derived)) if resumed_auto.get(k) != derived.get(k))
        raise CheckpointError(f"{cfg.ckpt_path}: the settings derived from the data differ from the checkpoint's "
                              f"({differ}): the data file has changed since the run began; resume with its data, or "
                              f"start a new run")
    if derived:
        validate_config(cfg)
    pl.seed_everything(cfg.seed, workers=True)
    model = cfg.model
    growth = None
    if model.kind == "nonparametric":
        growth = _construct("model.growth", lambda: Growth(rate=model.growth.rate, every=model.growth.every,
                                                            until=model.growth.get("until"), seed=cfg.seed + 1))
    callbacks: list[pl.Callback] = []
    if cfg.protocol is not None and cfg.protocol.get("_target_"):  # the protocol for the model's kind
        callbacks.append(_construct("protocol", lambda: instantiate(cfg.protocol, kind=model.kind)))
    datamodule = _construct("dataset", lambda: InMemoryDataModule(
        splits, batch_size=cfg.dataset.batch_size, eval_batch_size=cfg.dataset.get("eval_batch_size", 10_000),
        seed=cfg.seed))
    datamodule.auto_settings = derived
    k = steps_per_call(cfg, datamodule.train_batches.num_batches, resumed_k)
    if resumed_k is not None and k != resumed_k:  # Lightning's restored loop counts calls of the checkpoint's size
        raise ConfigError(f"the checkpoint's run made {resumed_k} optimizer steps per training-step call, and this "
                          f"resume's settings do not allow it (steps_per_call would be {k}): keep steps_per_call as "
                          f"it was and choose a trainer.max_steps and checkpoint_every_steps that {resumed_k} divides")
    datamodule.train_batches.steps_per_call = k
    net = dict(in_features=splits.num_features, hidden_sizes=hidden_sizes(model), out_features=splits.num_classes,
               norm=model.norm, output_norm=model.output_norm, capnorm_eval_stats=model.capnorm_eval_stats,
               norm_momentum=model.norm_momentum)
    module = _construct("model", lambda: NonparametricModule(
        net=net, optimizer=_construct("optimizer", lambda: instantiate(cfg.optimizer)), lam=cfg["lambda"],
        dataset_size=splits.sizes[0], batch_size=cfg.dataset.batch_size, growth=growth,
        divergence=divergence_limits(cfg), steps_per_call=k, test_every=cfg.get("test_every", 0)))
    _construct("optimizer", module.configure_optimizers)  # its checks now, not once training has begun
    callbacks.append(_construct("config", lambda: UnitLogger(run_dir, lengths_every=cfg.get("unit_lengths_every", 1))))
    if cfg.trainer.get("enable_progress_bar", True):
        callbacks.append(RunProgressBar())  # sizes, VCE, phase and step size on the bar
    callbacks.append(ResumeChanges(written, stored, changes, derived))
    callbacks.append(StopOnSignal(run_dir / "checkpoints" / "last.ckpt"))
    # checkpoints/last.ckpt, overwritten at validations at most every checkpoint_every_seconds (or every
    # checkpoint_every_steps steps)
    callbacks.append(LastCheckpoint(dirpath=run_dir / "checkpoints", filename="last", save_top_k=1, monitor=None,
                                    save_last=False, enable_version_counter=False,
                                    every_n_train_steps=cfg.get("checkpoint_every_steps"),
                                    every_seconds=cfg.get("checkpoint_every_seconds") or 0))
    callbacks += user_callbacks(cfg, run_dir)
    # the logger group: one logger (csv), none (none), or several by name (wandb: the CSV files and W&B)
    specs = [] if cfg.logger is None else [cfg.logger] if "_target_" in cfg.logger else list(cfg.logger.values())
    logger = [instantiate(spec, save_dir=str(run_dir)) for spec in specs if spec.get("_target_")] or False
    # callbacks=: npnn's and the user's (user_callbacks has taken trainer.callbacks in)
    trainer = _construct("trainer", lambda: instantiate(cfg.trainer, callbacks=callbacks, logger=logger,
                                                        default_root_dir=str(run_dir),
                                                        plugins=[AtomicCheckpointIO(), cluster_environment()]))
    if trainer.max_epochs not in (None, -1) and resumed_epoch > trainer.max_epochs:
        # a budget lowered below the checkpoint's epoch (Lightning would refuse it): the run ends at its
        # checkpoint, stopped by its budget (its epochs are the checkpoint's, more than the budget)
        log.warning("%s is at epoch %d, past trainer.max_epochs=%d: the run ends there (stopped_by: budget)",
                    cfg.ckpt_path, resumed_epoch, trainer.max_epochs)
        trainer.fit_loop.max_epochs = resumed_epoch
    return trainer, module, datamodule


def user_callbacks(cfg: DictConfig, run_dir: Path) -> list[pl.Callback]:
    """The ``callbacks`` group's entries and any ``trainer.callbacks``, to go after npnn's own (never dropped).
    A monitored ``ModelCheckpoint`` without a ``dirpath`` writes into ``<run dir>/checkpoints``."""
    specs = [(f"callbacks.{name}", spec) for name, spec in (cfg.get("callbacks") or {}).items() if spec is not None]
    listed = cfg.trainer.get("callbacks")
    if listed is not None:
        if not OmegaConf.is_list(listed):
            raise ConfigError(f"trainer.callbacks must be a list of callbacks ({{_target_: ...}}), got {listed!r}; "
                              f"or add them by name to the callbacks group: +callbacks.name={{_target_: ...}}")
        specs += [(f"trainer.callbacks[{i}]", spec) for i, spec in enumerate(listed)]
    made = []
    for where, spec in specs:
        if not (OmegaConf.is_dict(spec) and spec.get("_target_")):
            raise ConfigError(f"{where} must be a callback's config with a _target_ (e.g. "
                              f"{{_target_: pytorch_lightning.callbacks.EarlyStopping, monitor: val/error}}), got "
                              f"{spec!r}")
        callback = _construct(where, lambda: instantiate(spec))
        if not isinstance(callback, pl.Callback):
            raise ConfigError(f"{where}: {spec._target_} made a {type(callback).__name__}, not a Lightning Callback")
        if isinstance(callback, ModelCheckpoint) and callback.dirpath is None:
            callback.dirpath = str(run_dir / "checkpoints")
        made.append(callback)
    return made


def model_feature_names(cfg: DictConfig, splits: Splits) -> list[str] | None:
    """The feature names a model file records: a table's columns; none for ``dataset=tensors`` (its ``x0 ...``
    are positions, and ``npnn.predict`` reads such input by position)."""
    target = OmegaConf.select(cfg, "dataset.loader._target_", default=None)
    return None if target == "npnn.data.tabular.load_tensors" else splits.feature_names


def cluster_environment() -> LightningEnvironment | SLURMEnvironment:
    """Lightning's cluster environment, given rather than detected: npnn (:class:`~npnn.runs.StopOnSignal`) and
    submitit own the signals and the requeue. In a SLURM job, Lightning's SLURM environment without its own
    SIGUSR1 requeue handler; elsewhere the plain one (no "srun is available but not used" warning on a
    cluster's login node)."""
    if "SLURM_NTASKS" in os.environ and os.environ.get("SLURM_JOB_NAME") not in ("bash", "interactive"):
        return SLURMEnvironment(auto_requeue=False)
    return LightningEnvironment()


def final_errors(trainer: pl.Trainer, module: NonparametricModule, datamodule: InMemoryDataModule) -> dict[str, float]:
    """The classification errors of the module's network now, ``{"val": ..., "test": ...}`` (``trainer.test``)."""
    trainer.test(module, dataloaders=datamodule.val_dataloader(), verbose=False)
    return module.final_errors


def machine() -> dict[str, str]:
    """What a run's floats depend on beside its config and thread count: the CPU's model, the vector
    instructions torch dispatches to on it (``torch.backends.cpu.get_cpu_capability()``) and torch's version."""
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass  # not Linux: platform's name
    return {"cpu": cpu, "cpu_capability": torch.backends.cpu.get_cpu_capability(), "torch": torch.__version__}


def main(cfg: DictConfig, run_dir: str | Path | None = None) -> dict[str, Any]:
    """Train one run; returns (and writes to ``summary.json``) its final sizes and errors.

    A run that cannot go on (diverged, constant network, chance level, a signal) still writes
    ``summary.json`` with ``stopped_by`` and ``error``; then the error is raised again.
    """
    return run(cfg, run_dir)[0]


def run(cfg: DictConfig, run_dir: str | Path | None = None,
        splits: Splits | None = None) -> tuple[dict[str, Any], NonparametricModule | None]:
    """:func:`main`, and the trained module (``None``: a relaunch that skipped an ended run). ``splits``: the data,
    already in memory (:class:`npnn.sklearn.NonparametricClassifier`); else the config's ``dataset.loader``."""
    launched_by_hydra = run_dir is None
    if launched_by_hydra:
        run_dir = HydraConfig.get().runtime.output_dir
    run_dir = Path(run_dir)
    validate_config(cfg)
    overwrite = cfg.get("overwrite", False)
    if is_relaunch(cfg.get("resume_existing"), overwrite, cfg.get("ckpt_path")):  # a relaunched sweep
        found = existing_run(run_dir)
        conflicts = setting_conflicts(run_dir, cfg, found) if isinstance(found, dict) else {}
        if conflicts:  # e.g. trial<k> of another random search: skipping it would report another setting's run
            lines = "\n".join(f"  {k}: that run {old!r}, this run {new!r}" for k, (old, new) in conflicts.items())
            raise SettingConflictError(f"{run_dir} holds an ended run of another setting:\n{lines}\nGive this sweep "
                                       f"its own hydra.sweep.dir, or overwrite=true to replace that run")
        if isinstance(found, dict) and found.get("stopped_by") in FINISHED:
            log.info("%s holds this run, finished (stopped_by %s): skipped", run_dir, found.get("stopped_by"))
            return found, None
        if isinstance(found, dict):  # it failed by itself, and would again: the sweep still says so
            failure = TrainingError(f"{run_dir} holds this run, which stopped earlier ({found.get('stopped_by')}): "
                                    f"{found.get('error', '')}; overwrite=true runs it again")
            failure.stopped_by = found.get("stopped_by")
            raise failure
        if found is not None:
            log.info("%s holds this run, unfinished: resuming from %s", run_dir, found)
            cfg = copy.deepcopy(cfg)
            OmegaConf.update(cfg, "ckpt_path", str(found))
        overwrite = True  # nothing to resume: what the earlier attempt left is replaced
    prepare_run_dir(run_dir, cfg.get("ckpt_path"), overwrite=overwrite)
    splits = load_data(cfg) if splits is None else splits  # bad data: one line, before anything is written
    resolve_auto(cfg, splits)
    run_dir.mkdir(parents=True, exist_ok=True)
    locked = lock_run_dir(run_dir)  # a second run here is refused (the Hydra app's guard may hold it already)
    try:
        return _run_locked(cfg, run_dir, splits, overwrite, launched_by_hydra)
    finally:
        if locked or launched_by_hydra:
            unlock_run_dir(run_dir)


def _run_locked(cfg: DictConfig, run_dir: Path, splits: Splits, overwrite: bool,
                launched_by_hydra: bool) -> tuple[dict[str, Any], NonparametricModule | None]:
    earlier = prepare_run_dir(run_dir, cfg.get("ckpt_path"), overwrite=overwrite)  # again, under the lock
    trainer, module, datamodule = build(cfg, run_dir, splits=splits)
    delete_run(earlier, run_dir)  # overwrite=true: only once the new run has passed every check
    derived = datamodule.auto_settings
    if derived:
        log.info("auto settings from the %d training rows: %s", splits.sizes[0],
                 ", ".join(f"{k}={v:.4g}" for k, v in derived.items()))
    record = data_record(splits)
    if record is not None:
        write_atomic(run_dir / "data.json", json.dumps(record, indent=1, default=str))
    for logger in trainer.loggers:  # the whole setting (W&B's run config, hparams.yaml), auto values derived
        logger.log_hyperparams(resolved_config(cfg, derived))
    if isinstance(trainer.accelerator, CPUAccelerator):  # the kernels' first build, while a signal still stops it
        npnn_fused.load()
    stop = find_callback(trainer, StopOnSignal)
    # from before fit (a signal during start-up also ends in a checkpoint after the first step) to the end: one
    # after training ends waits for summary.json, then stops the process all the same (RunInterrupted)
    stop.install()
    try:
        summary = _fit_and_record(cfg, run_dir, trainer, module, datamodule, derived, launched_by_hydra)
    finally:
        stop.restore()
    if stop.received is not None:  # training had ended: its record is written, and the process still stops
        raise RunInterrupted(f"{signal.Signals(stop.received).name} received after training ended; summary.json "
                             f"and the model are written ({run_dir})", stop.received)
    return summary, module


def _fit_and_record(cfg: DictConfig, run_dir: Path, trainer: pl.Trainer, module: NonparametricModule,
                    datamodule: InMemoryDataModule, derived: dict[str, Any], launched_by_hydra: bool) -> dict[str, Any]:
    """Train, evaluate the final network, write the model files and ``summary.json``; a run that failed raises
    once its record is written."""
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
    wall = time.time() - start
    used = module.time_used()  # training and evaluation over every fit, before the final evaluation below
    s = datamodule.splits
    errors = final_errors(trainer, module, datamodule)
    val_error = errors["val"]
    if failure is None:
        try:
            module.check_better_than_majority(val_error, s.y_val)
        except TrainingError as err:
            failure = err
            log.error("run %s: %s", run_dir, err)
    protocol = find_callback(trainer, RewindProtocol)
    timer = find_callback(trainer, Timer)  # trainer.max_time
    early = any(isinstance(cb, EarlyStopping) and (str(getattr(cb, "stopping_reason", "")).split(".")[-1]
                                                  not in ("", "NOT_STOPPED") or cb.stopped_epoch > 0)
                for cb in trainer.callbacks)
    stopped_by = failure.stopped_by if failure is not None else \
        "protocol" if protocol is not None and protocol.done else "early_stopping" if early else \
        "time" if timer is not None and timer.time_remaining() <= 0 else "budget"
    summary = {
        "dataset": s.name, "lambda": derived.get("lambda", cfg["lambda"]), "seed": cfg.seed,
        "model": cfg.model.kind, "norm": cfg.model.norm,
        "optimizer": cfg.optimizer.get("algorithm") or cfg.optimizer._target_.rsplit(".", 1)[-1],
        "step_size": module.configured_hparams[0][module.step_size_key],
        "hidden_sizes": module.net.hidden_sizes, "weights": module.net.num_weights(),
        "val_error": val_error, "test_error": errors["test"],
        "best_val_error": module.best_validation.get("val_error"),  # the lowest VCE seen at a validation
        "test_error_at_best": module.best_validation.get("test_error"),
        "best_epoch": module.best_validation.get("epoch"),
        "epochs": module.step_count * module.batch_size / module.dataset_size,
        "steps_per_epoch": module.steps_per_epoch,
        "steps_trained": trainer.global_step,
        # over every fit of the run (a resume adds the checkpoint's); this fit alone: fit_wall_time_s
        "wall_time_s": round(used["wall_s"], 3), "cpu_time_s": round(used["cpu_s"], 3),  # ms: short runs are not 0
        "fit_wall_time_s": round(wall, 3), "threads": torch.get_num_threads(),  # CPU time counts every thread
        "machine": machine(),  # the same config gives the same floats only on the same kind of CPU
        "stopped_by": stopped_by,
        "protocol": protocol.history if protocol is not None else [],
        "config": run_config(cfg),  # a relaunch checks a skipped run's setting against it (no checkpoint needed)
    }
    if derived:
        summary["auto_settings"] = derived  # config's auto values, derived from the data (resolve_auto)
    if launched_by_hydra:  # the run's own setting (.hydra/ holds the last launch that trained here)
        summary["overrides"] = list(HydraConfig.get().overrides.task)
    if cfg.get("ckpt_path") is not None:
        resume = find_callback(trainer, ResumeChanges)
        if resume.changes and not resume.applied:  # Lightning skips training (and on_train_start) when it is done
            log.warning("resume: the checkpoint had spent this run's budget, so nothing trained and resume_changes "
                        "had no effect (%s); raise trainer.max_epochs or max_steps to train on",
                        ", ".join(resume.changes))
            summary["config"] = resume.stored  # the run's, unchanged
            summary["lambda"] = derived.get("lambda", resume.stored["lambda"]) if resume.stored["lambda"] == "auto" \
                else resume.stored["lambda"]
        summary["resumed_from"] = str(cfg.ckpt_path)
        summary["changed_on_resume"] = {k: list(v) for k, v in resume.applied.items()}
    if not used["complete"]:
        summary["time_complete"] = False  # resumed from a checkpoint that did not record its earlier time
    if failure is not None:  # sizes and errors above are those of the network at the failure, not the best one
        summary["error"] = f"{type(failure).__name__}: {failure}"
    # the final network for use (npnn.load, python -m npnn.export / predict), before summary.json marks the end;
    # a run that failed or was stopped has none (an earlier end's is removed: it is not this run's network)
    if failure is None:
        info = {"dataset": s.name, "target": cfg.dataset.get("target"), **{k: summary[k] for k in MODEL_SUMMARY_FIELDS},
                "config": summary["config"], "auto_settings": derived}
        save_model(run_dir, module.net, classes=s.classes, feature_names=model_feature_names(cfg, s),
                   mean=s.feature_mean, std=s.feature_std, info=info)
    else:
        for name in (MODEL_FILE, MODEL_JSON):
            (run_dir / name).unlink(missing_ok=True)
    write_summary(run_dir, summary)
    for logger in trainer.loggers:  # the final network in hparams.yaml; W&B: summary.json as the run's summary
        logger.log_hyperparams({"final": {k: summary[k] for k in MODEL_SUMMARY_FIELDS}})
        logger.save()
        experiment = getattr(logger, "experiment", None)
        if hasattr(experiment, "summary"):
            experiment.summary.update(json.loads(json.dumps(summary, default=str)))
    image_loggers = [lg for lg in trainer.loggers if hasattr(lg, "log_image")]  # W&B: the run's plot as an image
    if image_loggers and any(run_dir.glob("logs/version_*/metrics.csv")):
        from npnn.plot import plot_run

        try:
            plot_run(run_dir)
            for image_logger in image_loggers:
                image_logger.log_image(key="run", images=[str(run_dir / "plots" / "run.png")])
        except Exception as err:  # a plot never fails a run that has ended
            log.warning("run %s: no plot for the logger (%s: %s)", run_dir, type(err).__name__, err)
    log.info("%s sizes %s, val error %.4f%%, test error %.4f%%, %.1f epochs, %.0f s -> %s",
             "final" if failure is None else f"stopped ({stopped_by}) at", "-".join(map(str, summary["hidden_sizes"])),
             100 * summary["val_error"], 100 * summary["test_error"], summary["epochs"], wall, run_dir)
    if failure is not None:
        raise failure
    return summary


if __name__ == "__main__":
    raise SystemExit("npnn.train is the training library; the app is python -m npnn (or npnn-train, or train.py)")
