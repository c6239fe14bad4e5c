"""A sweep on a real (one-node) SLURM cluster through hydra/launcher=slurm, with a preemption signal.

``scripts/slurm-cluster.sh`` brings the cluster up (Debian's slurm-wlm and munge; root). The test sends one
job ``scancel --signal=USR2`` (what SLURM sends before a time limit or a preemption) mid-run: npnn writes
its checkpoint, submitit requeues the job, and the requeued job resumes and ends as the same setting run
without interruption.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from npnn.config import compose
from npnn.train import main

ROOT = Path(__file__).resolve().parents[1]
SETTING = ["dataset=synthetic", "lambda=1e-3", "protocol=none", "trainer.max_epochs=150",
           "trainer.enable_progress_bar=false"]

pytestmark = pytest.mark.slurm


def _cluster() -> None:
    if os.geteuid() != 0 or shutil.which("apt-get") is None and shutil.which("slurmctld") is None:
        pytest.skip("the one-node SLURM cluster needs root and Debian's apt (scripts/slurm-cluster.sh)")
    out = subprocess.run(["bash", str(ROOT / "scripts" / "slurm-cluster.sh")], capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr


def _jobs(name_part: str) -> dict[str, str]:
    """``{job id: state}`` of the queue's jobs."""
    out = subprocess.run(["squeue", "-h", "-o", "%i %T %j"], capture_output=True, text=True, check=True).stdout
    return {line.split()[0]: line.split()[1] for line in out.splitlines() if name_part in line}


def test_a_slurm_sweep_requeues_a_preempted_job_which_resumes_to_the_uninterrupted_run(tmp_path):
    _cluster()
    sweep = tmp_path / "sweep"
    command = [sys.executable, str(ROOT / "train.py"), "-m", "hydra/launcher=slurm", "hydra.launcher.partition=debug",
               "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1", "hydra.launcher.timeout_min=20",
               "hydra.launcher.name=npnn_slurm_test", *SETTING, "seed=0,1", "resume_existing=true",
               f"hydra.sweep.dir={sweep}"]
    launcher = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env={**os.environ, "OMP_NUM_THREADS": "1"})
    target = next_dir = None
    try:
        deadline = time.time() + 300
        while target is None:
            assert launcher.poll() is None, launcher.stdout.read()[-3000:]
            assert time.time() < deadline, "the jobs did not start"
            for run in sweep.glob("*seed=1*"):
                if (run / "checkpoints" / "last.ckpt").exists():
                    target, next_dir = run, run
            time.sleep(0.2)
        jobs = [j for j, state in _jobs("npnn_slurm").items() if state == "RUNNING"]
        job = next(j for j in jobs if j.endswith("_1"))  # the array's task of seed=1
        subprocess.run(["scancel", "--signal=USR2", job], check=True)
        out, _ = launcher.communicate(timeout=600)
    finally:
        if launcher.poll() is None:
            launcher.kill()
            subprocess.run(["scancel", "--name=npnn_slurm_test"], check=False)
    assert launcher.returncode == 0, out[-3000:]
    resumed = json.loads((next_dir / "summary.json").read_text())
    assert resumed["stopped_by"] == "budget" and "resumed_from" in resumed  # requeued, and resumed its checkpoint
    straight = main(compose(*SETTING, "seed=1"), tmp_path / "straight")
    for key in ("hidden_sizes", "val_error", "test_error", "epochs", "steps_trained"):
        assert resumed[key] == straight[key], key
    for name in ("units.csv", "model.safetensors"):
        assert (next_dir / name).read_bytes() == (tmp_path / "straight" / name).read_bytes(), name
    other = json.loads(next(sweep.glob("*seed=0*")).joinpath("summary.json").read_text())
    assert other["stopped_by"] == "budget" and "resumed_from" not in other
