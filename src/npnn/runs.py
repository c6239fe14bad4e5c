"""What a run guarantees (README): atomic checkpoints, a clean stop on SIGTERM / SIGINT, run
directories that are never overwritten by accident, and resumes that refuse changed settings.

- :class:`AtomicCheckpointIO` writes every checkpoint to a temporary file in its own directory,
  fsyncs it and renames it over the old one (``os.replace``): whatever fails during a save, the
  previous checkpoint is still there and still loads. :func:`npnn.record.write_atomic` does the same for
  ``summary.json`` and ``units.csv``.
- :class:`StopOnSignal`: on SIGTERM or SIGINT the run finishes its current training step, writes
  ``checkpoints/last.ckpt`` and stops with :class:`RunInterrupted` (``stopped_by: signal``); a
  second signal stops it at once. Under submitit (``hydra/launcher=slurm``) its SIGUSR2 (timeout or
  preemption) does the same, then hands over to submitit, which requeues the job.
- :func:`prepare_run_dir` / :class:`RunDirGuard`: a fresh run refuses a directory that holds a
  run, unless it resumes that run or ``overwrite=true``.
- :func:`check_resume` / :class:`ResumeChanges`: a resume compares its config with the one
  stored in the checkpoint; a difference other than budgets, paths and display settings is
  refused unless listed in ``resume_changes``, and then it is applied and recorded.
"""
from __future__ import annotations

import io
import logging
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.experimental.callback import Callback as HydraCallback
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.plugins.io import TorchCheckpointIO
from pytorch_lightning.trainer.states import TrainerFn

from npnn.callbacks import RewindProtocol, apply_resume_changes, find_callback
from npnn.checkpoint import CheckpointError, check_format, read_checkpoint
from npnn.module import TrainingError
from npnn.record import RESUME_FREE_KEYS, RUN_FILES, UNFINISHED, RecordError, read_summary, save_atomic

__all__ = ["AtomicCheckpointIO", "LastCheckpoint", "CheckpointError", "RunDirError", "SettingConflictError",
           "RunInterrupted", "StopOnSignal", "ResumeChanges", "RunDirGuard", "read_checkpoint", "prepare_run_dir",
           "delete_run", "holds_run", "existing_run", "setting_conflicts", "lock_run_dir", "unlock_run_dir",
           "config_changes", "check_resume", "FIXED_KEYS"]

log = logging.getLogger(__name__)

# keys no resume may change: the data, its order, the network's structure, the algorithm
FIXED_KEYS = ("seed", "steps_per_call", "dataset.loader", "dataset.source", "dataset.batch_size",
              "dataset.path", "dataset.target", "dataset.features", "dataset.val_path", "dataset.test_path",
              "dataset.val_fraction", "dataset.test_fraction", "dataset.split_seed", "dataset.standardize",
              "dataset.hidden_layers", "model.kind", "model.norm", "model.output_norm", "model.hidden_layers",
              "model.hidden_sizes", "model.start_units", "model.capnorm_eval_stats", "model.norm_momentum",
              "optimizer._target_", "optimizer.algorithm", "optimizer.scale", "protocol._target_")


class RunDirError(FileExistsError):
    """A fresh run pointed at a directory that already holds a run."""


class SettingConflictError(RunDirError):
    """A relaunched sweep found an ended run of another setting in one of its run directories."""


class RunInterrupted(TrainingError):
    """SIGTERM or SIGINT: the run stopped after a step and wrote its checkpoint."""

    stopped_by = "signal"

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum


# ------------------------------------------------------------------- files
class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint IO with saves that cannot destroy the previous checkpoint.

    Lightning's own save writes to the system temp directory and moves the file; across
    filesystems that move is a plain copy, and a full disk leaves a truncated checkpoint.
    Here the file is written next to its target, fsynced and renamed over it.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        if storage_options is not None:
            raise TypeError(f"AtomicCheckpointIO.save_checkpoint takes no storage_options, got {storage_options!r}")
        buffer = io.BytesIO()  # serialised first: a failed write is then a plain OSError
        torch.save(checkpoint, buffer)
        save_atomic(path, lambda f: f.write(buffer.getbuffer()))

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict[str, Any]:
        return read_checkpoint(path)  # onto the CPU; Lightning moves the state to the run's device


# --------------------------------------------------------------- run dirs
def holds_run(run_dir: str | Path) -> list[str]:
    """The run files (``RUN_FILES``) that ``run_dir`` holds, as paths relative to it."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    return sorted({str(p.relative_to(run_dir)) for pattern in RUN_FILES for p in run_dir.glob(pattern) if p.is_file()})


_LOCKS: dict[Path, int] = {}  # run directories this process holds: path -> the directory's open descriptor


def lock_run_dir(run_dir: str | Path) -> bool:
    """Hold an exclusive ``flock`` on the (existing) run directory until :func:`unlock_run_dir` or the process
    ends, so that a second run there is refused before it writes anything. Returns whether this call took
    it (False: this process holds it already)."""
    path = Path(run_dir).resolve()
    if path in _LOCKS:
        return False
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RunDirError(f"{run_dir} is in use by another run, still going (it holds the directory's lock): "
                          f"wait for it to end, or give this run another directory (hydra.run.dir=...)") from None
    except OSError as err:  # a filesystem without flock (some network or FUSE mounts): run without the lock
        os.close(fd)
        log.warning("%s: no lock on the run directory (%s); nothing stops a second run there", run_dir, err)
        return False
    _LOCKS[path] = fd
    return True


def unlock_run_dir(run_dir: str | Path) -> None:
    fd = _LOCKS.pop(Path(run_dir).resolve(), None)
    if fd is not None:
        os.close(fd)  # releases the flock


def _resumes(run_dir: Path, ckpt_path: str | None) -> bool:
    return ckpt_path is not None and Path(run_dir).resolve() in Path(ckpt_path).resolve().parents


def prepare_run_dir(run_dir: str | Path, ckpt_path: str | None = None, overwrite: bool = False) -> list[Path]:
    """Refuse a directory that holds another run. With ``overwrite``, return that run's files: the caller
    deletes them (:func:`delete_run`) once the new run has passed its checks."""
    run_dir = Path(run_dir)
    found = holds_run(run_dir)
    if not found or _resumes(run_dir, ckpt_path):
        return []
    if not overwrite:
        names = sorted({name.split("/")[0] for name in found})
        raise RunDirError(
            f"{run_dir} already holds a run ({', '.join(names)}). Resume it with ckpt_path={run_dir}/checkpoints/"
            f"last.ckpt, choose another directory (hydra.run.dir=...), or replace it with overwrite=true")
    return [run_dir / name for name in found]


def is_relaunch(resume_existing: Any, overwrite: Any, ckpt_path: Any) -> bool:
    """Whether a launch is a relaunch that looks for an earlier run in its directory (``resume_existing=true``,
    neither ``overwrite=true`` nor a ``ckpt_path`` of its own): :func:`existing_run` says what it finds."""
    return resume_existing is True and overwrite is not True and ckpt_path is None


def existing_run(run_dir: str | Path) -> dict | Path | None:
    """What a relaunch (``resume_existing=true``) finds in ``run_dir``: the summary of a run that ended by
    itself (``FINISHED``, or a failure such as ``diverged``), else the checkpoint to resume (a run stopped by
    a signal or ``trainer.max_time``, or killed), else None (start afresh)."""
    run_dir = Path(run_dir)
    try:
        found = read_summary(run_dir)
    except RecordError as err:
        raise RunDirError(f"{err}; it cannot say whether the run ended") from None
    if found is not None and found.get("stopped_by") not in UNFINISHED:
        return found
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    return ckpt if ckpt.is_file() else None


def setting_conflicts(run_dir: str | Path, cfg: DictConfig, summary: dict | None = None) -> dict[str, tuple[Any, Any]]:
    """``{key: (stored, now)}`` where the config stored in ``run_dir``'s last checkpoint gives another value than
    ``cfg`` (budgets, paths and the logger aside; a key only one of them has is no conflict): a relaunch that
    would skip an ended run checks that it is this setting's (a search's ``trial<k>`` directory from another
    search). Without a checkpoint (a run record committed without it) the config in ``summary`` (the run's
    ``summary.json``, as :func:`existing_run` read it) is used. Nothing to compare (neither holds a config: runs
    before it was recorded): ``{}``."""
    ckpt = Path(run_dir) / "checkpoints" / "last.ckpt"
    stored = read_checkpoint(ckpt).get("npnn_config") if ckpt.is_file() else None
    if stored is None:
        stored = (summary or {}).get("config")
    if stored is None:
        return {}
    allowed = list(cfg.get("resume_changes") or [])
    return {k: v for k, v in setting_changes(stored, cfg).items() if "<absent>" not in v and not _under(k, allowed)}


def delete_run(paths: list[Path], run_dir: str | Path) -> None:
    """Delete an earlier run's files (:func:`prepare_run_dir`) in ``run_dir``, and the folders they leave empty;
    any other file there stays."""
    if not paths:
        return
    run_dir = Path(run_dir)
    log.warning("overwrite=true: deleting the earlier run's %d files in %s", len(paths), run_dir)
    for target in paths:
        target.unlink(missing_ok=True)
    for folder in sorted({p.parent for p in paths}, key=lambda f: len(f.parts), reverse=True):
        while folder != run_dir and run_dir in folder.parents:
            try:
                folder.rmdir()  # only if empty
            except OSError:
                break
            folder = folder.parent


class RunDirGuard(HydraCallback):
    """Hydra callback (``hydra.callbacks`` in ``conf/config.yaml``): checks the run directory before
    Hydra writes its ``.hydra`` files into it, so a refused run leaves the earlier one untouched."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        run_dir = Path(config.hydra.run.dir)
        try:  # held through the run (npnn.train.run releases it): a second run here stops now, writing nothing
            run_dir.mkdir(parents=True, exist_ok=True)  # Hydra makes it next, for its .hydra files
            lock_run_dir(run_dir)
        except RunDirError as err:
            raise SystemExit(f"npnn: error: {err}") from None
        except OSError as err:
            raise SystemExit(_unwritable(run_dir, err, "hydra.run.dir")) from None
        self._check(run_dir, config)
        if config.get("ckpt_path") is not None:  # a refused resume must not rewrite the run's .hydra files
            try:
                check_resume(read_checkpoint(config.ckpt_path), config, config.ckpt_path, quiet=True)
            except CheckpointError as err:
                raise SystemExit(f"npnn: error: {err}") from None

    def on_run_end(self, config: DictConfig, **kwargs: Any) -> None:
        unlock_run_dir(config.hydra.run.dir)  # also where the run ended before training (skipped, refused)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweep = Path(config.hydra.sweep.dir)
        try:
            sweep.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise SystemExit(_unwritable(sweep, err, "hydra.sweep.dir")) from None
        if config.get("ckpt_path") is None and sweep.is_dir():
            for job_dir in sorted(p for p in sweep.iterdir() if p.is_dir()):
                self._check(job_dir, config)

    @staticmethod
    def _check(run_dir: Path, config: DictConfig) -> None:
        if config.get("overwrite") is True or config.get("resume_existing") is True:
            return  # npnn.train.main deletes the earlier run's files, or skips or resumes it
        try:
            prepare_run_dir(run_dir, config.get("ckpt_path"))
        except RunDirError as err:
            raise SystemExit(f"npnn: error: {err}") from None


def _unwritable(folder: Path, err: OSError, key: str) -> str:
    return (f"npnn: error: cannot write the run directory {folder} ({err.strerror or err}): give {key} a folder "
            f"you can write to")


# ----------------------------------------------------------------- resume
def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out if out or not prefix else {prefix[:-1]: {}}
    return {prefix[:-1]: node}


def _under(key: str, prefixes) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def config_changes(old: dict, new: dict) -> dict[str, tuple[Any, Any]]:
    """``{key: (old, new)}`` for every dotted key whose value differs (``"<absent>"`` where missing),
    on the configs as written (interpolations unresolved: the keys a user changed)."""
    a, b = _flatten(old), _flatten(new)
    return {k: (a.get(k, "<absent>"), b.get(k, "<absent>")) for k in sorted(set(a) | set(b))
            if a.get(k, "<absent>") != b.get(k, "<absent>")}


def run_config(cfg: DictConfig) -> dict:
    """The config a checkpoint stores (as written, without Hydra's own node)."""
    container = OmegaConf.to_container(cfg, resolve=False)
    container.pop("hydra", None)
    return container


def setting_changes(stored: dict, cfg: DictConfig) -> dict[str, tuple[Any, Any]]:
    """``{key: (stored, now)}`` for each key whose value ``cfg`` changes from the stored run config's, budgets,
    paths and display aside (``npnn.record.RESUME_FREE_KEYS``)."""
    return {k: v for k, v in config_changes(stored, run_config(cfg)).items() if not _under(k, RESUME_FREE_KEYS)}


def check_resume(checkpoint: dict, cfg: DictConfig, path: str | Path,
                 quiet: bool = False) -> dict[str, tuple[Any, Any]]:
    """Compare the run's config with the checkpoint's; return the accepted changes (``resume_changes``),
    or raise naming every refused key with both values. ``quiet``: no warnings (a first check)."""
    check_format(checkpoint, path)
    stored = checkpoint.get("npnn_config")
    if stored is None:
        if not quiet:
            log.warning("%s stores no config (written by an older npnn): the resume cannot check that its "
                        "settings are the run's; make sure they are", path)
        return {}
    allowed = list(cfg.get("resume_changes") or [])
    bad = [k for k in allowed if _under(k, FIXED_KEYS) or any(_under(f, [k]) for f in FIXED_KEYS)]
    if bad:
        raise CheckpointError(f"resume_changes={bad}: these keys cannot change on resume (the data, its order or the "
                              f"network's structure would differ from the checkpoint's); start a new run instead")
    changes = setting_changes(stored, cfg)
    refused = {k: v for k, v in changes.items() if not _under(k, allowed)}
    if refused:
        lines = "\n".join(f"  {k}: checkpoint {old!r}, this run {new!r}" for k, (old, new) in refused.items())
        raise CheckpointError(
            f"the resume's settings differ from those of the run that wrote {path}:\n{lines}\nResume with the run's "
            f"own settings (its .hydra/overrides.yaml), or apply the new values with resume_changes="
            f"[{','.join(refused)}] (budgets, paths and the logger may change freely)")
    for key, (old, new) in changes.items():
        if not quiet:
            log.warning("resume: %s changes from %r to %r (resume_changes)", key, old, new)
    return changes


class ResumeChanges(pl.Callback):
    """Stores the run's config in every checkpoint, and applies the accepted changes of a resume.

    Most settings are read from the config when the run is built, so a changed value is used
    by itself. Those that a checkpoint carries are set here once the checkpoint is loaded: the
    optimizer's ``param_groups`` (lambda only while the protocol still trains with lambda) and
    whether units are added.
    """

    def __init__(self, cfg: DictConfig, stored: dict | None = None, changes: dict | None = None,
                 auto_settings: dict | None = None) -> None:
        self.config = run_config(cfg)
        self.auto_settings = dict(auto_settings or {})  # the config's auto values as derived from the data
        self.stored, self.changes = stored, dict(changes or {})
        self.applied: dict = {}  # the changes once training resumed (none where the budget was already spent)

    def on_save_checkpoint(self, trainer, module, checkpoint: dict) -> None:
        checkpoint["npnn_config"] = self.config
        checkpoint["npnn_auto_settings"] = self.auto_settings

    def on_train_start(self, trainer, module) -> None:
        if not self.changes:
            return
        old = OmegaConf.to_container(OmegaConf.create(self.stored), resolve=True)
        new = OmegaConf.to_container(OmegaConf.create(self.config), resolve=True)
        apply_resume_changes(module, old, new, find_callback(trainer, RewindProtocol))
        self.applied = dict(self.changes)


# ----------------------------------------------------------------- signals
class StopOnSignal(pl.Callback):
    """SIGTERM / SIGINT: finish the current training step, write ``checkpoint_path``, raise
    :class:`RunInterrupted`. A second signal raises ``KeyboardInterrupt`` at once.

    :meth:`install` sets the handlers (``npnn.train.main`` does, before training, and restores
    the old ones after); ``on_train_start`` sets them again over Lightning's own SIGTERM
    handler, which would end the run at the end of the epoch with exit code 0 and no checkpoint.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)
    # a scheduler's own handler of these (submitit: SIGUSR2, a SLURM job timed out or preempted, which it
    # requeues) is called once the checkpoint is written, so that the requeued job resumes from this step
    CHAINED = (signal.SIGUSR2,) if hasattr(signal, "SIGUSR2") else ()

    def __init__(self, checkpoint_path: str | Path) -> None:
        self.checkpoint_path = Path(checkpoint_path)
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame) -> None:
        if self.received is not None:
            raise KeyboardInterrupt(f"second {signal.Signals(signum).name}")
        self.received = signum
        log.warning("received %s: finishing this training step, then writing %s (send it again to stop at once)",
                    signal.Signals(signum).name, self.checkpoint_path)

    def install(self) -> None:
        try:
            for signum in self.SIGNALS + self.CHAINED:
                previous = signal.getsignal(signum)
                if signum in self.CHAINED and not callable(previous):
                    continue  # no scheduler handles it: leave it alone
                self._previous.setdefault(signum, previous)
                signal.signal(signum, self._handle)
        except ValueError:  # not the main thread: signals cannot be caught here
            log.debug("StopOnSignal: not in the main thread; signals keep their handlers")

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            try:
                signal.signal(signum, handler)
            except ValueError:
                pass
        self._previous.clear()

    def on_train_start(self, trainer, module) -> None:
        self.install()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        # a step followed by a validation stops after it: Lightning resumes a checkpoint written
        # between the step and its validation as if the validation had run, and would skip it
        if self.received is not None and not _validates_after_this_batch(trainer):
            self._stop(trainer, module)

    def on_validation_end(self, trainer, module) -> None:
        if self.received is not None and not trainer.sanity_checking and trainer.state.fn == TrainerFn.FITTING:
            self._stop(trainer, module)

    def _stop(self, trainer, module) -> None:
        trainer.save_checkpoint(self.checkpoint_path)
        name = signal.Signals(self.received).name
        chained = self._previous.get(self.received) if self.received in self.CHAINED else None
        if callable(chained):
            log.warning("%s: checkpoint written at step %d; handing the signal to the scheduler's handler",
                        name, module.step_count)
            chained(self.received, None)  # submitit requeues the job and exits
        raise RunInterrupted(f"{name} received: stopped after step {module.step_count} and wrote "
                             f"{self.checkpoint_path}; resume with ckpt_path={self.checkpoint_path}", self.received)


class LastCheckpoint(ModelCheckpoint):
    """``checkpoints/last.ckpt`` (the top-1 file of an unmonitored ``ModelCheckpoint``, which is the latest),
    written at validations, at most one every ``every_seconds`` of wall time (0: at every one; the first of a fit
    and the one where the fit ends always), or every ``every_n_train_steps`` steps. Each is a resume point as exact
    as any other.

    A periodic save on a step that a validation follows waits for that validation: Lightning resumes a
    checkpoint written between a step and its validation as if the validation had run, and would skip it.
    """

    def __init__(self, *args: Any, every_seconds: float = 0.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._after_validation = False
        self.every_seconds = float(every_seconds)
        self._last_write: float | None = None  # time.monotonic() of this fit's last write

    def _save_checkpoint(self, trainer, filepath: str) -> None:
        super()._save_checkpoint(trainer, filepath)
        self._last_write = time.monotonic()

    def _should_skip_saving_checkpoint(self, trainer) -> bool:
        if super()._should_skip_saving_checkpoint(trainer):
            return True
        return self._every_n_train_steps < 1 and self._last_write is not None and not _fit_ends_here(trainer) \
            and time.monotonic() - self._last_write < self.every_seconds

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        every = self._every_n_train_steps
        if every >= 1 and trainer.global_step % every == 0 and _validates_after_this_batch(trainer):
            self._after_validation = True
            return
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def on_validation_end(self, trainer, pl_module) -> None:
        super().on_validation_end(trainer, pl_module)
        if self._after_validation and not trainer.sanity_checking and trainer.state.fn == TrainerFn.FITTING:
            self._after_validation = False
            candidates = self._monitor_candidates(trainer)
            self._save_topk_checkpoint(trainer, candidates)
            self._save_last_checkpoint(trainer, candidates)


def _fit_ends_here(trainer) -> bool:
    """Whether the fit ends at this validation: the protocol's stop or an early stop (``should_stop``, set by the
    callbacks that run before the checkpoint's), or the step or epoch budget."""
    if trainer.should_stop or (trainer.max_steps is not None and 0 < trainer.max_steps <= trainer.global_step):
        return True
    return trainer.max_epochs not in (None, -1) and trainer.current_epoch + 1 >= trainer.max_epochs and \
        trainer.fit_loop.epoch_loop.batch_progress.is_last_batch


def _validates_after_this_batch(trainer) -> bool:
    """Whether Lightning validates after the training batch that just ended."""
    loop = trainer.fit_loop.epoch_loop
    try:
        return bool(loop._should_check_val_fx(trainer.fit_loop._data_fetcher))  # Lightning's own rule
    except (AttributeError, TypeError):  # its private API moved: the rule for batch-count validation
        every = trainer.val_check_batch
        return loop.batch_progress.is_last_batch or (every != float("inf") and (loop.batch_idx + 1) % every == 0)
