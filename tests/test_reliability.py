"""Nothing run that should not be, nothing lost: untrusted checkpoints and run directories, exact resumes."""
from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from npnn.config import compose
from npnn.module import NonparametricModule
from npnn.runs import CheckpointError, RunDirError, read_checkpoint
from npnn.train import main

ROOT = Path(__file__).resolve().parents[1]
QUIET = ["trainer.enable_progress_bar=false"]


def validations(run_dir: Path) -> list[int]:
    """The steps of a run's validations, over every fit (a resume writes the next metrics.csv)."""
    import pandas as pd

    files = sorted(run_dir.glob("logs/version_*/metrics.csv"), key=lambda f: int(f.parent.name.split("_")[1]))
    return [int(s) for f in files for s in pd.read_csv(f).dropna(subset=["val/error"])["step"]]


def tiny(*overrides: str):
    return compose("dataset=synthetic", "lambda=1e-3", *QUIET, *overrides)


class RunsCode:
    """Unpickling this runs a shell command (as a malicious checkpoint would)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def evil_checkpoint(path: Path, marker: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {}, "npnn": {"format": 3}, "x": RunsCode(marker)}, path)
    return path


# ---------------------------------------------------- 1. checkpoints are data
def test_a_crafted_checkpoint_runs_no_code_as_ckpt_path_or_in_a_relaunched_sweep(tmp_path):
    marker = tmp_path / "pwned"
    evil = evil_checkpoint(tmp_path / "evil.ckpt", marker)
    with pytest.raises(CheckpointError, match="objects other than tensors and plain data"):
        read_checkpoint(evil)
    with pytest.raises(CheckpointError, match="could run code, so it is refused"):
        main(tiny(f"ckpt_path={evil}"), tmp_path / "run")
    out = subprocess.run([sys.executable, str(ROOT / "train.py"), "dataset=synthetic", *QUIET,
                          f"hydra.run.dir={tmp_path / 'cli'}", f"ckpt_path={evil}"],
                         capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode != 0 and "refused" in out.stderr
    # a sweep relaunched over a run directory whose last.ckpt was replaced
    evil_checkpoint(tmp_path / "sweep" / "dataset=synthetic,lambda=0.001" / "checkpoints" / "last.ckpt", marker)
    out = subprocess.run([sys.executable, str(ROOT / "train.py"), "-m", "dataset=synthetic", "lambda=1e-3", *QUIET,
                          "resume_existing=true", f"hydra.sweep.dir={tmp_path / 'sweep'}"],
                         capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode != 0 and "refused" in out.stderr + out.stdout
    with pytest.raises(pickle.UnpicklingError):  # torch.load(weights_only=True) refuses it
        NonparametricModule.load_from_checkpoint(evil)
    assert not marker.exists()


def test_analysis_tools_instantiate_nothing_a_run_directory_names(tmp_path):
    run_dir = tmp_path / "run"
    out = subprocess.run([sys.executable, str(ROOT / "train.py"), "dataset=synthetic", *QUIET, "trainer.max_epochs=1",
                          f"hydra.run.dir={run_dir}"], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    written = tmp_path / "written.txt"
    config = (run_dir / ".hydra" / "config.yaml").read_text()
    config = config.replace("_target_: npnn.data.synthetic.load_synthetic",
                            f"_target_: pathlib.Path.write_text\n    self: {written}\n    data: pwned")
    (run_dir / ".hydra" / "config.yaml").write_text(config)
    out = subprocess.run([sys.executable, "-m", "npnn.units", str(run_dir), "--lengths"], capture_output=True,
                         text=True)
    assert out.returncode != 0 and "not one of npnn's loaders" in out.stderr
    assert not written.exists()


# ------------------------------------------- 2. a resume from an epoch's end
@pytest.mark.parametrize("protocol", ["none", "rewind"])
def test_a_resume_from_an_epochs_end_equals_the_uninterrupted_run(tmp_path, protocol):
    """val_every=1.0: Lightning writes the checkpoint at the epoch's end; the next epoch's order must follow."""
    settings = ["protocol=none", "trainer.max_epochs=6"] if protocol == "none" else \
        ["dataset.patience=8", "dataset.anneal_patience=3"]  # 9 epochs to the protocol's end
    full = main(tiny(*settings), tmp_path / "full")
    main(tiny(*settings, "trainer.max_epochs=3" if protocol == "none" else "trainer.max_epochs=4"), tmp_path / "cut")
    ckpt = tmp_path / "cut" / "checkpoints" / "last.ckpt"
    assert read_checkpoint(ckpt)["npnn"]["step_count"] % 20 == 0  # 20 steps an epoch: at an epoch's end
    resumed = main(tiny(*settings, f"ckpt_path={ckpt}"), tmp_path / "cut")
    for key in ("hidden_sizes", "val_error", "test_error", "epochs", "steps_trained", "protocol"):
        assert resumed[key] == full[key], key
    assert validations(tmp_path / "cut") == validations(tmp_path / "full")
    for name in ("units.csv", "unit_lengths.csv", "model.safetensors"):
        assert (tmp_path / "cut" / name).read_bytes() == (tmp_path / "full" / name).read_bytes(), name


# ------------------------- 3. a periodic checkpoint on a step that a validation follows
KILL_BEFORE_VALIDATION = """
import os, signal, sys
import pytorch_lightning as pl
from npnn.config import compose
from npnn.train import build
cfg = compose(*sys.argv[2:])
trainer, module, dm = build(cfg, sys.argv[1])
class Kill(pl.Callback):
    def on_validation_start(self, trainer, module):
        if module.step_count == 50:
            os.kill(os.getpid(), signal.SIGKILL)  # kill -9 between step 50 (and its checkpoint) and its validation
trainer.callbacks.append(Kill())
trainer.fit(module, datamodule=dm)
"""


def test_a_kill_between_a_periodic_checkpoint_and_its_validation_resumes_to_the_uninterrupted_run(tmp_path):
    settings = ["dataset=synthetic", "lambda=1e-3", *QUIET, "dataset.patience=8", "dataset.anneal_patience=3",
                "dataset.val_every=0.5", "checkpoint_every_steps=10"]  # a validation and a checkpoint every 10 steps
    full = main(compose(*settings), tmp_path / "full")
    out = subprocess.run([sys.executable, "-c", KILL_BEFORE_VALIDATION, str(tmp_path / "cut"), *settings],
                         capture_output=True, text=True)
    assert out.returncode == -9, out.stderr[-2000:]
    ckpt = tmp_path / "cut" / "checkpoints" / "last.ckpt"
    assert read_checkpoint(ckpt)["npnn"]["step_count"] in (40, 50)
    resumed = main(compose(*settings, f"ckpt_path={ckpt}"), tmp_path / "cut")
    for key in ("hidden_sizes", "val_error", "test_error", "epochs", "steps_trained", "protocol"):
        assert resumed[key] == full[key], key
    assert validations(tmp_path / "cut") == validations(tmp_path / "full")  # none skipped, none twice
    for name in ("units.csv", "model.safetensors"):
        assert (tmp_path / "cut" / name).read_bytes() == (tmp_path / "full" / name).read_bytes(), name


# ------------------------------------------------ 4. a signal after training ended
SIGNAL_IN_FINAL_EVALUATION = """
import os, signal, sys
import npnn.train
evaluate, signum = npnn.train.final_errors, getattr(signal, sys.argv[1])
def final_errors(*args):
    os.kill(os.getpid(), signum)  # as the final network is evaluated
    return evaluate(*args)
npnn.train.final_errors = final_errors
sys.argv = ["train.py", *sys.argv[2:]]
from npnn.app import main
main()
"""


@pytest.mark.parametrize("name, code", [("SIGTERM", 143), ("SIGINT", 130)])
def test_a_signal_in_the_final_evaluation_exits_non_zero_with_the_runs_record(tmp_path, name, code):
    out = subprocess.run([sys.executable, "-c", SIGNAL_IN_FINAL_EVALUATION, name, "dataset=synthetic", *QUIET,
                          "trainer.max_epochs=2", f"hydra.run.dir={tmp_path}"], capture_output=True, text=True,
                         cwd=ROOT)
    assert out.returncode == code, out.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["stopped_by"] == "budget" and summary["epochs"] == 2.0 and (tmp_path / "model.safetensors").is_file()


# ------------------------------------- 7. overwrite deletes only what a run wrote
def test_overwrite_deletes_only_the_files_a_run_wrote(tmp_path):
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "notes.txt").write_text("mine")
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "README").write_text("mine too")
    main(tiny("trainer.max_epochs=1"), tmp_path)  # no run there: user files are no run, nothing is refused
    first = (tmp_path / "model.safetensors").read_bytes()
    main(tiny("trainer.max_epochs=2", "overwrite=true"), tmp_path)
    assert (tmp_path / "logs" / "notes.txt").read_text() == "mine"
    assert (tmp_path / "checkpoints" / "README").read_text() == "mine too"
    assert (tmp_path / "model.safetensors").read_bytes() != first  # the earlier run's files were replaced
    assert [p.name for p in (tmp_path / "logs").glob("version_*")] == ["version_0"]  # not version_1 beside it
    assert json.loads((tmp_path / "summary.json").read_text())["epochs"] == 2.0


# ------------------------------------------------ 6. one run at a time in a directory
def test_a_second_run_in_a_directory_in_use_is_refused_before_it_writes_anything(tmp_path):
    run_dir = tmp_path / "run"
    first = subprocess.Popen([sys.executable, str(ROOT / "train.py"), "dataset=synthetic", *QUIET, "protocol=none",
                              "trainer.max_epochs=400", f"hydra.run.dir={run_dir}"], cwd=tmp_path,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not (run_dir / "checkpoints" / "last.ckpt").exists():
            assert first.poll() is None and time.time() < deadline
            time.sleep(0.2)
        overrides = (run_dir / ".hydra" / "overrides.yaml").read_bytes()
        for extra in (["overwrite=true"], [f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}"]):
            out = subprocess.run([sys.executable, str(ROOT / "train.py"), "dataset=synthetic", *QUIET, "seed=1",
                                  f"hydra.run.dir={run_dir}", *extra], capture_output=True, text=True, cwd=tmp_path)
            assert out.returncode == 1 and "is in use by another run" in out.stderr, out.stderr[-2000:]
            assert (run_dir / ".hydra" / "overrides.yaml").read_bytes() == overrides
            assert [p.name for p in (run_dir / "logs").glob("version_*")] == ["version_0"]
        with pytest.raises(RunDirError, match="in use by another run"):
            main(tiny("overwrite=true"), run_dir)  # in a process of its own (npnn.train.run, as a sweep's job)
    finally:
        first.kill()
        first.wait()


# ----------------------------------------------- 5. an interrupted kernel build
def test_a_killed_kernel_build_leaves_no_lock_that_later_builds_wait_on(tmp_path, monkeypatch):
    from npnn import fused

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    (tmp_path / "npnn_fused").mkdir()
    (tmp_path / "npnn_fused" / "lock").write_text("")  # torch's baton, as a kill -9 mid-build leaves it
    with fused._build_lock():
        assert not (tmp_path / "npnn_fused" / "lock").exists()


def test_the_wait_for_another_build_is_bounded_and_falls_back_to_the_eager_path(tmp_path):
    import fcntl

    (tmp_path / "npnn_fused").mkdir()
    fd = os.open(tmp_path / "npnn_fused" / "npnn.flock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)  # a live build in another process
    try:
        start = time.time()
        out = subprocess.run([sys.executable, "-c", "import npnn.fused as f; print(f.load())"], capture_output=True,
                             text=True, env={**os.environ, "TORCH_EXTENSIONS_DIR": str(tmp_path),
                                             "NPNN_FUSED_WAIT": "2"})
        assert out.stdout.strip() == "False" and "TimeoutError" in out.stderr and "eager" in out.stderr
        assert time.time() - start < 60
        waiting = subprocess.Popen([sys.executable, "-c", "import npnn.fused as f; print(f.load())"],
                                   env={**os.environ, "TORCH_EXTENSIONS_DIR": str(tmp_path)}, stderr=subprocess.PIPE)
        time.sleep(8)  # importing torch, then waiting on the lock
        waiting.terminate()  # a signal stops the wait
        assert waiting.wait(timeout=30) == -15
    finally:
        os.close(fd)


# ------------------------------------------------------------ 8. bad values
BAD_VALUES = [  # (override, what the one line must say)
    ("model.growth.every=inf", r"model.growth.every .*finite number > 0, got inf"),
    ("model.growth.until=inf", r"model.growth.until .*finite number >= 0 or null, got inf"),
    ("protocol.patience=inf", r"protocol.patience must be a finite number of epochs > 0, got inf"),
    ("dataset.val_every=inf", r"val_check_interval .*in \(0, 1\] or a whole number .*got inf"),
    ("seed=-1", r"seed must be an integer in \[0, 2\*\*32\), got -1"),
    ("unit_lengths_every=abc", r"unit_lengths_every must be an integer >= 0 .*got 'abc'"),
    ("checkpoint_every_seconds=-1", r"checkpoint_every_seconds must be null or a finite number of seconds >= 0 "
                                    r".*got -1"),
    ("test_every=-2", r"test_every must be an integer >= 0 .*got -2"),
    ("unit_lengths_every=-1", r"unit_lengths_every must be an integer >= 0 .*got -1"),
    ("trainer.max_time=-1", r"trainer.max_time must be null .*DD:HH:MM:SS.*got -1"),
    ("trainer.max_time=00:00:00:00", r"trainer.max_time must be null .*positive duration.*got '00:00:00:00'"),
    ("lambda=abc", r"lambda must be a finite number >= 0 .*got 'abc'"),
    ("lambda=true", r"lambda must be a finite number >= 0 .*got True"),
    ("dataset.batch_size=5000", r"dataset.batch_size=5000 is more than the 2000 training rows"),
    ("protocol.min_step_size=-1", r"protocol.min_step_size must be a finite number >= 0 .*got -1"),
    ("protocol.max_stalls=2.5", r"protocol.max_stalls must be an integer >= 1, got 2.5"),
    ("+foo=1", r"unknown config key\(s\) \['foo'\]"),
    ("dataset.loader.num_features=1", r"dataset.loader: synthetic data needs .*>= 2 features"),
]


@pytest.mark.parametrize("override, message", BAD_VALUES, ids=[b[0] for b in BAD_VALUES])
def test_a_bad_value_is_one_line_naming_it_before_anything_is_written(tmp_path, override, message):
    from npnn.data.tabular import DataError
    from npnn.runs import holds_run
    from npnn.train import ConfigError

    with pytest.raises((ConfigError, DataError), match=message) as caught:
        main(compose("dataset=synthetic", *QUIET, override), tmp_path / "run")
    assert "\n" not in str(caught.value)
    assert not holds_run(tmp_path / "run")


def test_the_command_line_gives_a_bad_value_one_line_and_no_traceback(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "train.py"), "dataset=synthetic", "model.growth.every=inf",
                          f"hydra.run.dir={tmp_path / 'run'}"], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith("npnn: error: model.growth: model.growth.every")


# ----------------------------------------------------- 9. data and record files
def test_a_damaged_summary_or_openml_record_is_named(tmp_path):
    from npnn.data.poker import OPENML_ID, openml_poker
    from npnn.runs import existing_run

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "summary.json").write_text('{"stopped_by": "prot')  # cut short
    with pytest.raises(RunDirError, match=r"summary.json is damaged .*delete it"):
        existing_run(tmp_path / "run")
    with pytest.raises(RunDirError, match=r"summary.json is damaged"):
        main(tiny("resume_existing=true"), tmp_path / "run")
    meta = tmp_path / "data" / "poker" / f"openml-{OPENML_ID}.json"
    meta.parent.mkdir(parents=True)
    meta.write_text('{"data_set_description": {"url": "ht')
    with pytest.raises(ValueError, match=rf"openml-{OPENML_ID}.json is not OpenML's metadata .*delete it"):
        openml_poker(tmp_path / "data")


def test_an_unwritable_run_directory_is_one_line(tmp_path):
    for key in ("hydra.run.dir=/proc/npnn-run", "hydra.sweep.dir=/proc/npnn-sweep"):
        command = [sys.executable, str(ROOT / "train.py"), "dataset=synthetic", *QUIET, key]
        out = subprocess.run(command[:2] + (["-m"] if "sweep" in key else []) + command[2:], capture_output=True,
                             text=True, cwd=tmp_path)
        assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr[-2000:]
        assert out.stderr.strip().splitlines()[-1].startswith("npnn: error: cannot write the run directory /proc/")


# ------------------------------------------------ 10. one requeue handler on SLURM
def test_in_a_slurm_job_lightning_installs_no_requeue_handler_of_its_own(tmp_path, monkeypatch):
    import signal
    import warnings

    import pytorch_lightning as pl
    from pytorch_lightning.plugins.environments import SLURMEnvironment

    from npnn.train import build

    for key, value in {"SLURM_NTASKS": "1", "SLURM_JOB_NAME": "npnn", "SLURM_JOB_ID": "7", "SLURM_PROCID": "0",
                       "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_NODELIST": "node1"}.items():
        monkeypatch.setenv(key, value)
    seen = {}

    class Handlers(pl.Callback):
        def on_train_start(self, trainer, module):
            seen["usr1"] = signal.getsignal(signal.SIGUSR1)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer, module, dm = build(tiny("trainer.max_epochs=1", "protocol=none"), tmp_path)
        trainer.callbacks.append(Handlers())
        trainer.fit(module, datamodule=dm)
    environment = trainer._accelerator_connector.cluster_environment
    assert isinstance(environment, SLURMEnvironment) and not environment.auto_requeue
    assert seen["usr1"] in (signal.SIG_DFL, None)  # submitit's (or none): not Lightning's
    assert not [w for w in caught if "srun" in str(w.message)]


@pytest.mark.parametrize("max_time", ["00:01:00:00", "{hours: 1}", "{minutes: 30, seconds: 5}"])
def test_every_form_of_max_time_that_lightning_takes_is_accepted(max_time):
    from npnn.train import validate_config

    validate_config(compose("dataset=synthetic", f"trainer.max_time={max_time}"))
