"""What a run guarantees: atomic checkpoints, signals, run-directory rules, resume checks, clear errors."""
from __future__ import annotations

import builtins
import errno
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from npnn.baselines import main as baselines_main
from npnn.config import compose
from npnn.data.download import ChecksumError
from npnn.data.mnist import MNIST_FILES, mnist_file
from npnn.module import ChanceLevelError
from npnn.runs import CheckpointError, RunDirError, RunInterrupted, StopOnSignal
from npnn.train import ConfigError, build, main, steps_per_call

ROOT = Path(__file__).resolve().parents[1]
QUIET = ["trainer.enable_progress_bar=false", "logger=none"]


def tiny(*overrides: str):
    return compose("dataset=synthetic", "lambda=1e-3", *QUIET, *overrides)


def train_cli(run_dir: Path, *overrides: str, cwd: Path) -> subprocess.Popen:
    """``python train.py`` on the synthetic data in a subprocess."""
    return subprocess.Popen([sys.executable, str(ROOT / "train.py"), "dataset=synthetic", "lambda=1e-3", *QUIET,
                             f"hydra.run.dir={run_dir}", *overrides], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def tensors_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a if torch.is_tensor(a[k]))


# ------------------------------------------------------------ 1. checkpoints
def test_a_save_that_fails_midway_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    trainer, module, dm = build(tiny("trainer.max_steps=20", "protocol=none"), tmp_path)
    trainer.fit(module, datamodule=dm)
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    before = ckpt.read_bytes()
    # the disk of the run dir fills up after 4 KB of a save; the system temp dir is on another
    # filesystem (a rename from there fails with EXDEV, so a move becomes a copy)
    real_open, real_rename = builtins.open, os.rename

    class FullDisk:
        def __init__(self, f):
            self.f, self.written = f, 0

        def write(self, data):
            if self.written + len(data) > 4096:
                raise OSError(errno.ENOSPC, "No space left on device")
            self.written += len(data)
            return self.f.write(data)

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    def full_disk_open(file, mode="r", *args, **kwargs):
        f = real_open(file, mode, *args, **kwargs)
        in_run_dir = isinstance(file, (str, os.PathLike)) and Path(file).parent == ckpt.parent
        return FullDisk(f) if in_run_dir and ("w" in mode or "a" in mode) else f

    def other_filesystem_rename(src, dst, *args, **kwargs):
        if Path(src).parent != Path(dst).parent:
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        return real_rename(src, dst, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", full_disk_open)
    monkeypatch.setattr(os, "rename", other_filesystem_rename)
    monkeypatch.setattr(shutil, "_USE_CP_SENDFILE", False)  # copies through write()
    with pytest.raises(OSError, match="No space left"):
        trainer.save_checkpoint(ckpt)
    monkeypatch.undo()
    assert ckpt.read_bytes() == before  # the previous checkpoint, whole
    assert torch.load(ckpt, weights_only=False)["npnn"]["step_count"] == 20
    assert sorted(p.name for p in ckpt.parent.iterdir()) == ["last.ckpt"]  # no temporary file left


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 half a zip"])
def test_a_truncated_or_empty_checkpoint_is_named(tmp_path, content):
    bad = tmp_path / "last.ckpt"
    bad.write_bytes(content)
    with pytest.raises(CheckpointError, match=rf"cannot read the checkpoint {bad} \({len(content)} bytes\).*truncated"):
        main(tiny("trainer.max_steps=5", f"ckpt_path={bad}"), tmp_path / "run")
    with pytest.raises(CheckpointError, match="no such file"):
        main(tiny("trainer.max_steps=5", f"ckpt_path={tmp_path / 'missing.ckpt'}"), tmp_path / "run")


# ---------------------------------------------------------------- 2. signals
def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    end = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.stdout.read()
        assert time.time() < end, f"{path} did not appear"
        time.sleep(0.05)


def test_sigterm_checkpoints_exits_non_zero_and_the_resume_equals_the_uninterrupted_run(tmp_path):
    budget = ["protocol=none", "trainer.max_epochs=40", "dataset.growth_every=0.35"]  # units added mid-epoch
    full = train_cli(tmp_path / "full", *budget, cwd=tmp_path)
    stopped = train_cli(tmp_path / "stopped", *budget, cwd=tmp_path)
    wait_for(tmp_path / "stopped" / "units.csv", stopped)  # the first validation is behind it
    stopped.send_signal(signal.SIGTERM)
    out = stopped.communicate(timeout=120)[0]
    assert stopped.returncode == 128 + signal.SIGTERM, out
    summary = json.loads((tmp_path / "stopped" / "summary.json").read_text())
    assert summary["stopped_by"] == "signal" and "SIGTERM" in summary["error"], summary
    ckpt = torch.load(tmp_path / "stopped" / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["npnn"]["step_count"] == summary["steps_trained"] < 800  # saved at the stop, not before
    resumed = train_cli(tmp_path / "stopped", *budget, f"ckpt_path={tmp_path / 'stopped/checkpoints/last.ckpt'}",
                        cwd=tmp_path)
    assert resumed.wait(timeout=300) == 0, resumed.stdout.read()
    assert full.wait(timeout=300) == 0, full.stdout.read()
    a, b = (json.loads((tmp_path / d / "summary.json").read_text()) for d in ("full", "stopped"))
    for key in ("hidden_sizes", "weights", "val_error", "test_error", "steps_trained", "stopped_by"):
        assert a[key] == b[key], key
    ca, cb = (torch.load(tmp_path / d / "checkpoints" / "last.ckpt", weights_only=False) for d in ("full", "stopped"))
    assert tensors_equal(ca["state_dict"], cb["state_dict"])
    assert (tmp_path / "full" / "units.csv").read_text() == (tmp_path / "stopped" / "units.csv").read_text()
    assert (tmp_path / "full" / "unit_lengths.csv").read_text() == \
        (tmp_path / "stopped" / "unit_lengths.csv").read_text()


NETS = {"nonparametric": ["protocol.patience=2", "lambda=3e-3", "optimizer.alpha_r=100"],  # AdaRad, growth
        "parametric": ["model=parametric", "model.hidden_sizes=[8,8]", "optimizer=rmsprop", "optimizer.alpha=30",
                       "lambda=0", "dataset.patience=2", "dataset.anneal_patience=1"]}  # RMSprop, the P protocol


@pytest.mark.parametrize("net", NETS)
@pytest.mark.parametrize("at_step", [19, 20])  # 20 ends an epoch: a validation follows that step
def test_a_signal_at_any_step_resumes_to_the_uninterrupted_run(tmp_path, at_step, net):
    overrides = ["trainer.max_epochs=14", "steps_per_call=1", *NETS[net]]
    full = main(tiny(*overrides), tmp_path / "full")
    assert len(full["protocol"]) >= 2  # the protocol rewinds and changes stage in this run

    class Kill(pl.Callback):
        def on_train_batch_end(self, trainer, module, *args):
            if module.step_count == at_step:
                os.kill(os.getpid(), signal.SIGTERM)  # the real signal, through StopOnSignal's handler

    trainer, module, dm = build(tiny(*overrides), tmp_path / "stopped")
    trainer.callbacks.insert(0, Kill())
    stop = next(cb for cb in trainer.callbacks if isinstance(cb, StopOnSignal))
    stop.install()
    try:
        with pytest.raises(RunInterrupted, match="SIGTERM received"):
            trainer.fit(module, datamodule=dm)
    finally:
        stop.restore()
    ckpt = tmp_path / "stopped" / "checkpoints" / "last.ckpt"
    assert torch.load(ckpt, weights_only=False)["npnn"]["step_count"] == at_step
    resumed = main(tiny(*overrides, f"ckpt_path={ckpt}"), tmp_path / "stopped")
    for key in ("hidden_sizes", "val_error", "test_error", "epochs", "steps_trained", "protocol", "best_val_error",
                "test_error_at_best", "best_epoch"):
        assert resumed[key] == full[key], key
    for name in ("units.csv", "unit_lengths.csv"):
        assert (tmp_path / "full" / name).read_text() == (tmp_path / "stopped" / name).read_text(), name


def test_submitits_requeue_signal_gets_a_checkpoint_first(tmp_path):
    """Under submitit, SIGUSR2 (a SLURM job timed out or preempted) is submitit's: it requeues the job.
    StopOnSignal writes the checkpoint at the step first, then calls submitit's handler."""
    calls = []
    previous = signal.signal(signal.SIGUSR2, lambda signum, frame: calls.append(signum))  # as submitit's
    try:
        class Kill(pl.Callback):
            def on_train_batch_end(self, trainer, module, *args):
                if module.step_count == 7:
                    os.kill(os.getpid(), signal.SIGUSR2)

        trainer, module, dm = build(tiny("trainer.max_epochs=3", "steps_per_call=1", "protocol=none"), tmp_path)
        trainer.callbacks.insert(0, Kill())
        stop = next(cb for cb in trainer.callbacks if isinstance(cb, StopOnSignal))
        stop.install()
        try:
            with pytest.raises(RunInterrupted, match="SIGUSR2 received"):
                trainer.fit(module, datamodule=dm)
        finally:
            stop.restore()
        assert calls == [signal.SIGUSR2]  # handed over once the checkpoint was written
        assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)["npnn"]["step_count"] == 7
        assert signal.getsignal(signal.SIGUSR2) is not stop._handle  # restored
    finally:
        signal.signal(signal.SIGUSR2, previous)


def test_sigint_stops_the_same_way(tmp_path):
    run = train_cli(tmp_path / "run", "protocol=none", "trainer.max_epochs=200", cwd=tmp_path)
    wait_for(tmp_path / "run" / "units.csv", run)
    run.send_signal(signal.SIGINT)
    out = run.communicate(timeout=120)[0]
    assert run.returncode == 128 + signal.SIGINT, out
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["stopped_by"] == "signal"
    assert "finishing this training step" in out


# ------------------------------------------------------------------ 3. resume
def test_a_resume_refuses_changed_settings_and_applies_the_opted_in_ones(tmp_path, caplog):
    main(tiny("trainer.max_epochs=1"), tmp_path / "a")
    ckpt = tmp_path / "a" / "checkpoints" / "last.ckpt"
    with pytest.raises(CheckpointError, match=r"lambda: checkpoint 0.001, this run 0.1"):
        main(tiny("lambda=1e-1", "trainer.max_epochs=3", f"ckpt_path={ckpt}"), tmp_path / "b")
    assert not (tmp_path / "b" / "summary.json").exists()
    with pytest.raises(CheckpointError, match=r"cannot change on resume"):
        main(tiny("seed=3", "trainer.max_epochs=3", f"ckpt_path={ckpt}", "resume_changes=[seed]"), tmp_path / "b")
    # a budget changes freely; an opted-in value is used and recorded
    summary = main(tiny("lambda=1e-2", "trainer.max_epochs=3", f"ckpt_path={ckpt}", "resume_changes=[lambda]",
                        "logger=csv"), tmp_path / "b")
    assert summary["lambda"] == 0.01 and summary["changed_on_resume"] == {"lambda": [0.001, 0.01]}
    rows = (tmp_path / "b" / "logs" / "version_0" / "metrics.csv").read_text().splitlines()
    column = rows[0].split(",").index("lambda")
    assert [float(r.split(",")[column]) for r in rows[1:] if r.split(",")[column]] == [0.01, 0.01]  # epochs 2, 3
    saved = torch.load(tmp_path / "b" / "checkpoints" / "last.ckpt", weights_only=False)
    group = saved["optimizer_states"][0]["param_groups"][0]
    assert group["lam"] == 0.01 and group["alpha_r"] == pytest.approx(0.02 / 0.01)  # alpha_r_lambda / lambda
    assert saved["npnn_config"]["lambda"] == 0.01
    # a budget the checkpoint has already spent: nothing trains, so no change is recorded as applied
    with caplog.at_level(logging.WARNING, logger="npnn.train"):
        summary = main(tiny("lambda=1e-1", "trainer.max_epochs=1", f"ckpt_path={ckpt}", "resume_changes=[lambda]"),
                       tmp_path / "c")
    assert summary["changed_on_resume"] == {} and summary["epochs"] == 1.0 and "had no effect (lambda)" in caplog.text
    assert summary["lambda"] == 0.001 and summary["config"]["lambda"] == 0.001  # the run's own, as trained


def test_an_opted_in_lambda_is_used_by_the_parametric_protocol_too(tmp_path):
    net = ["model=parametric", "model.hidden_sizes=[8,8]", "model.norm=batchnorm", "logger=csv"]
    main(tiny(*net, "trainer.max_epochs=1"), tmp_path / "a")
    ckpt = tmp_path / "a" / "checkpoints" / "last.ckpt"
    main(tiny(*net, "lambda=1e-2", "trainer.max_epochs=2", f"ckpt_path={ckpt}", "resume_changes=[lambda]"),
         tmp_path / "b")
    rows = (tmp_path / "b" / "logs" / "version_0" / "metrics.csv").read_text().splitlines()
    column = rows[0].split(",").index("lambda")
    assert [float(r.split(",")[column]) for r in rows[1:] if r.split(",")[column]] == [0.01]


# ---------------------------------------------------------------- 4. run dirs
def test_a_fresh_run_refuses_a_directory_that_holds_a_run(tmp_path):
    main(tiny("trainer.max_epochs=2", "protocol=none", "logger=csv"), tmp_path)
    before = {p: p.read_bytes() for p in (tmp_path / "summary.json", tmp_path / "units.csv")}
    with pytest.raises(RunDirError, match=r"already holds a run .*overwrite=true"):
        main(tiny("trainer.max_epochs=3", "lambda=1e-2"), tmp_path)
    assert all(p.read_bytes() == b for p, b in before.items())
    with pytest.raises(ConfigError, match="protocol.patience"):  # a run that fails its checks deletes nothing
        main(tiny("overwrite=true", "protocol.patience=0"), tmp_path)
    assert all(p.read_bytes() == b for p, b in before.items())
    summary = main(tiny("trainer.max_epochs=3", "protocol=none", "overwrite=true", "logger=csv"), tmp_path)
    assert summary["epochs"] == 3.0  # replaced it
    assert [p.name for p in (tmp_path / "logs").iterdir()] == ["version_0"]
    rows = (tmp_path / "unit_lengths.csv").read_text().splitlines()
    assert rows[0].startswith("step,") and sorted({int(r.split(",")[0]) for r in rows[1:]}) == [20, 40, 60]
    assert "step,epoch" not in "".join(rows[1:])  # one run's rows, not two runs' appended


def test_the_cli_refuses_a_used_run_dir_before_hydra_writes_into_it(tmp_path):
    first = train_cli(tmp_path / "run", "trainer.max_epochs=2", cwd=tmp_path)
    assert first.wait(timeout=300) == 0, first.stdout.read()
    overrides = (tmp_path / "run" / ".hydra" / "overrides.yaml").read_text()
    second = train_cli(tmp_path / "run", "trainer.max_epochs=2", "lambda=1e-2", cwd=tmp_path)
    out = second.communicate(timeout=300)[0]
    assert second.returncode == 1 and "already holds a run" in out and "Traceback" not in out, out
    assert (tmp_path / "run" / ".hydra" / "overrides.yaml").read_text() == overrides


def test_a_resume_drops_unit_length_rows_written_after_its_checkpoint(tmp_path):
    def run(run_dir, steps, *extra):
        cfg = tiny(f"trainer.max_steps={steps}", "protocol=none", *extra)
        trainer, module, dm = build(cfg, run_dir)
        trainer.fit(module, datamodule=dm, ckpt_path=cfg.ckpt_path)

    run(tmp_path / "full", 85)
    run(tmp_path / "killed", 85, "checkpoint_every_steps=47", "steps_per_call=1")  # dies at 85; checkpoint at 47
    run(tmp_path / "killed", 85, "steps_per_call=1", f"ckpt_path={tmp_path / 'killed/checkpoints/last.ckpt'}")
    assert (tmp_path / "killed" / "unit_lengths.csv").read_text() == \
        (tmp_path / "full" / "unit_lengths.csv").read_text()


# ------------------------------------------------------ 5. checked constraints
def test_steps_per_call_must_divide_the_steps_between_validations_and_checkpoints(tmp_path):
    with pytest.raises(ConfigError, match=r"steps_per_call=3 must divide the 20 steps of an epoch"):
        build(tiny("steps_per_call=3"), tmp_path)
    poker = tiny("dataset=poker", "steps_per_call=32")
    with pytest.raises(ConfigError,
                       match=r"800 steps of an epoch, and keep the validations every 80 steps .* every 64"):
        steps_per_call(poker, 800)
    assert steps_per_call(tiny("dataset=poker"), 800) == 8 and steps_per_call(tiny("dataset=mnist"), 50) == 5
    assert steps_per_call(tiny("dataset=poker", "checkpoint_every_steps=100"), 800) == 5
    with pytest.raises(ConfigError, match=r"steps_per_call=8 must divide .*checkpoint_every_steps=100"):
        steps_per_call(tiny("dataset=poker", "checkpoint_every_steps=100", "steps_per_call=8"), 800)
    assert steps_per_call(tiny("trainer.val_check_interval=10"), 20) == 1  # an integer interval counts calls
    assert steps_per_call(tiny("dataset=poker", "dataset.batch_size=512"), 1563) == 3  # every 156 steps either way
    assert steps_per_call(tiny("trainer.max_steps=44"), 20) == 4
    with pytest.raises(ConfigError, match=r"checkpoint_every_steps must be null .* or an integer >= 1, got 0"):
        steps_per_call(tiny("checkpoint_every_steps=0"), 20)
    main(tiny("trainer.max_steps=40", "protocol=none"), tmp_path / "a")  # auto: 5
    ckpt = tmp_path / "a" / "checkpoints" / "last.ckpt"
    with pytest.raises(CheckpointError, match=r"cannot change on resume"):  # it would move the validations
        main(tiny("steps_per_call=2", "trainer.max_steps=60", "protocol=none", "resume_changes=[steps_per_call]",
                  f"ckpt_path={ckpt}"), tmp_path / "a")
    with pytest.raises(ConfigError, match=r"the checkpoint's run made 5 optimizer steps per training-step call"):
        main(tiny("trainer.max_steps=44", "protocol=none", f"ckpt_path={ckpt}"), tmp_path / "a")  # 5 does not fit
    main(tiny("trainer.max_steps=44", "protocol=none"), tmp_path / "b")  # auto: 4
    b_ckpt = tmp_path / "b" / "checkpoints" / "last.ckpt"
    main(tiny("trainer.max_steps=60", "protocol=none", f"ckpt_path={b_ckpt}"), tmp_path / "b")
    assert torch.load(b_ckpt, weights_only=False)["npnn"]["steps_per_call"] == 4  # auto keeps it (not 5)
    # Lightning counts calls: 0.29 of 200 steps is 57 steps between validations for k = 1, 56 for k = 2
    assert steps_per_call(tiny("dataset.val_every=0.29"), 200) == 1
    assert steps_per_call(tiny("+trainer.limit_train_batches=7"), 20) == 1  # an integer limit counts calls
    old = torch.load(ckpt, weights_only=False)
    old["npnn"]["format"] = 2
    torch.save(old, ckpt.with_name("old.ckpt"))
    with pytest.raises(CheckpointError, match=r"old.ckpt was written by an older npnn \(checkpoint format 2"):
        main(tiny("trainer.max_steps=60", "protocol=none", f"ckpt_path={ckpt.with_name('old.ckpt')}"), tmp_path / "a")


# ------------------------------------------------------------- 6. clear errors
def test_a_run_that_learns_nothing_is_reported(tmp_path):
    cfg = tiny("optimizer.alpha_phi=1e9", "divergence.max_step_angle=null", "trainer.max_epochs=3", "protocol=none")
    with pytest.raises(ChanceLevelError, match=r"no better than always predicting the majority class \(47.00%\)"):
        main(cfg, tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["stopped_by"] == "chance_level" and summary["val_error"] >= 0.47


@pytest.mark.parametrize("read_only", [False, True])
def test_a_corrupt_mnist_file_is_named_and_left_alone(tmp_path, monkeypatch, read_only):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    name = "t10k-labels-idx1-ubyte"
    (raw / name).write_bytes(b"\x00\x00\x08\x01 truncated")
    if read_only:  # a read-only data dir: every write into it fails with EROFS
        real_open, real_replace = builtins.open, os.replace

        def ro(path):
            return isinstance(path, (str, os.PathLike)) and Path(path).resolve().is_relative_to(raw)

        def read_only_open(file, mode="r", *args, **kwargs):
            if ro(file) and any(c in mode for c in "wax+"):
                raise OSError(errno.EROFS, "Read-only file system", str(file))
            return real_open(file, mode, *args, **kwargs)

        def read_only_replace(src, dst, *args, **kwargs):
            if ro(src) or ro(dst):
                raise OSError(errno.EROFS, "Read-only file system", str(dst))
            return real_replace(src, dst, *args, **kwargs)

        monkeypatch.setattr(builtins, "open", read_only_open)
        monkeypatch.setattr(os, "replace", read_only_replace)
    with pytest.raises(ChecksumError) as err:
        mnist_file(name, raw, ["file:///nonexistent-mirror/"])
    msg = str(err.value)
    assert f"{raw / name} has md5 " in msg and "truncated or corrupt" in msg
    assert f"Put a good copy of {name} (md5 {MNIST_FILES[name][1]}) at {raw / name}" in msg
    monkeypatch.undo()
    assert sorted(p.name for p in raw.iterdir()) == [name]  # not renamed, nothing half-written


def test_module_clis_print_help_and_name_bad_arguments(monkeypatch, capsys):
    import npnn.fused

    monkeypatch.setattr(npnn.fused, "_build", lambda verbose: pytest.fail("--help must not build the kernels"))
    with pytest.raises(SystemExit) as exit_:
        npnn.fused.main(["--help"])
    assert exit_.value.code == 0 and "usage: python -m npnn.fused" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_:
        baselines_main(["--datasets", "foo"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "invalid choice: 'foo'" in err and "'poker'" in err
    assert "Traceback" not in err
