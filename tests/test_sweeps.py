"""Sweeps: Hydra multiruns through the joblib launcher, relaunches that skip finished runs, the gathered
table and the paper's picks (sections 7.4.1 / 7.4.2)."""
from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from npnn.config import CONF_DIR
from npnn.config import compose as run_config
from npnn.sweeps import best_settings, draws, gather, progress, representatives, sweep_size
from npnn.sweeps import main as sweeps_main

ROOT = Path(__file__).resolve().parents[1]


def sweep(sweep_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
         "dataset=synthetic", "lambda=1e-3,3e-3", "seed=0,1", "trainer.max_epochs=2", "logger=none",
         "trainer.enable_progress_bar=false", "resume_existing=true", f"hydra.sweep.dir={sweep_dir}", *overrides],
        cwd=sweep_dir.parent, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_a_grid_runs_on_two_workers_and_a_relaunch_skips_finished_runs(tmp_path):
    first = sweep(tmp_path / "sweep")
    assert first.returncode == 0, first.stderr[-3000:]
    assert f"sweep {tmp_path / 'sweep'}: 4 of 4 runs finished, 0 failed" in first.stdout  # SweepProgress
    rows = gather([tmp_path / "sweep"])
    assert len(rows) == 4 and {(r["lambda"], r["seed"]) for r in rows} == {(1e-3, 0), (1e-3, 1), (3e-3, 0), (3e-3, 1)}
    assert {r["setting"] for r in rows} == {"dataset=synthetic,lambda=0.001,trainer.max_epochs=2",
                                            "dataset=synthetic,lambda=0.003,trainer.max_epochs=2"}
    unfinished = Path(rows[0]["run_dir"])
    (unfinished / "summary.json").unlink()  # as if its job died after its last checkpoint
    again = sweep(tmp_path / "sweep", "trainer.max_time=00:01:00:00")  # a budget: the same run directories
    assert again.returncode == 0, again.stderr[-3000:]
    log = again.stdout + again.stderr
    assert log.count("finished (stopped_by budget): skipped") == 3
    assert f"{unfinished} holds this run, unfinished: resuming from" in log
    # Hydra writes .hydra/ for the resumed run, and leaves each skipped run's record as that run wrote it
    for row in rows:
        overrides = (Path(row["run_dir"]) / ".hydra" / "overrides.yaml").read_text()
        assert ("trainer.max_time" in overrides) == (Path(row["run_dir"]) == unfinished), row["run_dir"]
    assert [r["val_error"] for r in gather([tmp_path / "sweep"])] == [r["val_error"] for r in rows]
    sweeps_main([str(tmp_path / "sweep"), "--out", str(tmp_path / "runs.csv")])
    lines = (tmp_path / "runs.csv").read_text().splitlines()
    assert len(lines) == 5 and lines[0].startswith("run_dir,setting,dataset,model")


def _row(run: str, model: str, seed: int, weights: int, tce: float, vce: float, setting: str = "s") -> dict:
    return dict(run_dir=run, setting=setting, model=model, seed=seed, weights=weights, test_error=tce,
                val_error=vce, stopped_by="protocol")


def test_the_representative_is_the_run_nearest_the_median_size_and_error():
    rows = [_row("a", "nonparametric", 0, 1000, 0.020, 0.0), _row("b", "nonparametric", 1, 1200, 0.018, 0.0),
            _row("c", "nonparametric", 2, 1100, 0.019, 0.0),  # the median of both
            _row("d", "nonparametric", 3, 1050, 0.025, 0.0), _row("e", "nonparametric", 4, 1500, 0.019, 0.0)]
    run, distance = representatives(rows)["s"]
    assert run["run_dir"] == "c" and distance == 0.0
    rows[2]["weights"] = 1300  # medians now 1200 weights (b) and TCE 0.019 (c, e); ranges 500 and 0.007
    run, distance = representatives(rows)["s"]
    assert run["run_dir"] == "b" and distance == pytest.approx(0.001 / 0.007)  # c: 0.2, e: 0.6, a: 0.54


def test_the_best_parametric_settings_go_by_median_validation_error():
    rows = [_row(f"{s}{i}", "parametric", i, 100, 0.0, vce, setting=s)
            for s, vces in (("lr=1", [0.1, 0.5, 0.2]), ("lr=2", [0.05, 0.3, 0.3]), ("lr=3", [0.25]),
                            ("lr=4", [0.01, 0.01, 0.01]))
            for i, vce in enumerate(vces)]
    for row in rows[-2:]:
        row["stopped_by"] = "diverged"  # two of lr=4's three runs failed: they count as VCE 1
    assert [(s, v, n) for s, v, n in best_settings(rows)] == [("lr=1", 0.2, 3), ("lr=3", 0.25, 1), ("lr=2", 0.3, 3),
                                                              ("lr=4", 1.0, 3)]


def test_a_relaunch_reports_a_failed_run_again_and_resumes_one_stopped_by_its_time_limit(tmp_path):
    import json

    from npnn.module import TrainingError
    from npnn.train import main

    cfg = ["dataset=synthetic", "lambda=1e-3", "logger=none", "trainer.enable_progress_bar=false", "protocol=none"]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        first = compose("config", overrides=[*cfg, "trainer.max_epochs=1"])
        again = compose("config", overrides=[*cfg, "trainer.max_epochs=2", "resume_existing=true"])
    main(first, tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    (tmp_path / "summary.json").write_text(json.dumps({**summary, "stopped_by": "time"}))
    resumed = main(again, tmp_path)  # trainer.max_time ended it: the relaunch goes on from its checkpoint
    assert resumed["epochs"] == 2.0 and resumed["resumed_from"].endswith("checkpoints/last.ckpt")
    (tmp_path / "summary.json").write_text(json.dumps({**resumed, "stopped_by": "diverged", "error": "E: x"}))
    with pytest.raises(TrainingError, match=r"stopped earlier \(diverged\): E: x; overwrite=true runs it again"):
        main(again, tmp_path)


@pytest.mark.parametrize("launcher", ["joblib", "slurm"])
def test_the_launcher_configs_compose(launcher):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[f"hydra/launcher={launcher}"], return_hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith("JoblibLauncher" if launcher == "joblib" else "SlurmLauncher")
    if launcher == "slurm":
        assert cfg.hydra.launcher.max_num_timeout == 20 and cfg.hydra.launcher.timeout_min == 240


SWEEP_NEEDS = {  # what each sweep config leaves to the user (its comment says so)
    "p_grid": ["model.hidden_sizes=[8,8]"], "p_random": ["random_search.base=[8,8]"], "p_seeds": ["+pick=top01"],
    "p_rmsprop_poker": ["model.hidden_sizes=[23,24,15,4]"],
    "p_random_poker": ["random_search.base=[8,8,8,8]"]}  # one job of it: the sweep gives the sizes


def test_the_poker_random_search_draws_one_width_per_hidden_layer():
    from npnn.config import compose as compose_run

    cfg = compose_run("hparams_search=p_random_poker", "random_search.base=[39,17,17,7]", "random_search.width1=1.5",
                      "random_search.width4=5")
    assert cfg.dataset.hidden_layers == 4 and list(cfg.model.hidden_sizes) == [58, 17, 17, 35]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        hydra_cfg = compose("config", overrides=["hparams_search=p_random_poker", "random_search.base=[8,8,8,8]"],
                            return_hydra_config=True)
    assert {f"random_search.width{i}" for i in range(1, 5)} <= set(hydra_cfg.hydra.sweeper.params)


@pytest.mark.parametrize("name", sorted(p.stem for p in (CONF_DIR / "hparams_search").glob("*.yaml")))
def test_every_sweep_config_composes(name, tmp_path):
    from npnn.train import validate_config

    (tmp_path / "pick").mkdir()  # a setting as npnn.sweeps --write-picks writes it, for p_seeds
    (tmp_path / "pick" / "top01.yaml").write_text("# @package _global_\ndefaults:\n- override /optimizer: adam\n"
                                                  "model:\n  hidden_sizes: [8, 8]\n")
    overrides = [f"hparams_search={name}", f"hydra.searchpath=[file://{tmp_path}]", *SWEEP_NEEDS.get(name, [])]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
    params = dict(cfg.hydra.sweeper.params)
    assert params and cfg.resume_existing is True
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        validate_config(compose("config", overrides=overrides))
    if name.startswith("p_"):  # the parametric searches: lambda = 0 and the paper's step size alpha
        assert cfg.model.kind == "parametric" and cfg["lambda"] == 0.0
        assert "optimizer.alpha" in params or name == "p_seeds"  # p_seeds: each pick has its own
        assert cfg.optimizer._target_ == "npnn.optim.ParametricOptimizer"


def test_the_parametric_grid_is_the_papers(tmp_path):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["hparams_search=p_grid"], return_hydra_config=True)
    params = cfg.hydra.sweeper.params
    assert sweep_size([f"{k}={v}" for k, v in params.items()]) == 11 * 5 * 2  # 7.4.1 step 3
    assert params["optimizer.alpha"].split(",")[0] == "1" and params["optimizer.alpha"].split(",")[-1] == "100000"


def _fake_run(run_dir: Path, overrides: list[str], **summary) -> None:
    import json

    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    (run_dir / "summary.json").write_text(json.dumps({"model": "parametric", "stopped_by": "protocol", **summary}))


def test_written_picks_compose_to_the_settings_they_came_from(tmp_path):
    from npnn.sweeps import write_picks

    common = ["hparams_search=p_random", "dataset=mnist", "random_search.base=[20,4]", "seed=0", "data_dir=x"]
    _fake_run(tmp_path / "sweep" / "a", [*common, "optimizer=adam", "optimizer.alpha=312.5", "model.norm=batchnorm",
                                         "random_search.width1=2.0", "random_search.width2=1.5"],
              hidden_sizes=[40, 6], val_error=0.02)
    _fake_run(tmp_path / "sweep" / "b", [*common, "optimizer=sgd", "optimizer.alpha=10", "model.norm=batchnorm_affine",
                                         "random_search.width1=1.0", "random_search.width2=5.0"],
              hidden_sizes=[20, 20], val_error=0.01)
    written = write_picks(gather([tmp_path / "sweep"]), tmp_path / "picks")
    assert [p.name for p in written] == ["top01.yaml", "top02.yaml"]  # b (VCE 1%) first
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        picked = [compose("config", overrides=["hparams_search=p_seeds",
                                               f"hydra.searchpath=[file://{tmp_path / 'picks'}]",
                                               f"+pick={p.stem}"]) for p in written]
    assert [(c.dataset.loader._target_.rsplit(".", 1)[-1], c.optimizer.algorithm, c.optimizer.alpha, c.model.norm,
             list(c.model.hidden_sizes), c.seed) for c in picked] == [
        ("load_mnist", "sgd", 10, "batchnorm_affine", [20, 20], 0),
        ("load_mnist", "adam", 312.5, "batchnorm", [40, 6], 0)]
    assert all(c.model.kind == "parametric" and c["lambda"] == 0.0 for c in picked)


def test_the_grid_table_has_a_row_per_setting_and_a_column_per_value(tmp_path):
    from npnn.sweeps import grid_table

    for opt, alpha, seed, vce, ended in (("sgd", "10", 0, 0.03, "budget"), ("sgd", "10", 1, 0.05, "budget"),
                                         ("sgd", "100", 0, 0.02, "budget"), ("adam", "10", 0, 0.04, "budget"),
                                         ("adam", "100", 0, 0.5, "diverged")):
        _fake_run(tmp_path / f"{opt}{alpha}{seed}", ["dataset=mnist", f"optimizer={opt}", f"optimizer.alpha={alpha}",
                                                      f"seed={seed}"], val_error=vce, stopped_by=ended)
    lines = grid_table(gather([tmp_path]), "optimizer.alpha").splitlines()
    assert lines[0].startswith("All runs: dataset=mnist;")
    assert lines[2] == "| setting \\ optimizer.alpha | 10 | 100 |"  # numeric order
    assert lines[4:] == ["| optimizer=adam | **4.00** | div |", "| optimizer=sgd | 4.00 | **2.00** |"]  # medians


def test_the_random_search_draws_its_settings_again_on_a_relaunch(tmp_path, capsys):
    """7.4.1 step 5 through hydra-optuna-sweeper's RandomSampler and the joblib launcher, 4 trials."""
    args = [sys.executable, str(ROOT / "train.py"), "-m", "hparams_search=p_random", "dataset=synthetic",
            "random_search.base=[3,2]", "hydra.sweeper.n_trials=4", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
            "trainer.max_epochs=2", "logger=none", "trainer.enable_progress_bar=false",
            f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
    assert first.returncode == 0, first.stderr[-3000:]  # failed trials (too large an alpha) do not end it
    rows = gather([tmp_path / "sweep"])
    assert len(rows) == 4 and f"sweep {tmp_path / 'sweep'}: " in first.stdout and " of 4 runs finished" in first.stdout
    # --draws: each trial as a plain run, with the sweep's own overrides, into the sweep's trial directory
    sweeps_main(["--draws", "9", *args[3:]])  # 9: the search has 4 trials
    commands = [shlex.split(line) for line in capsys.readouterr().out.splitlines()]
    assert len(commands) == 4 and all(c[:2] == ["python", "train.py"] for c in commands)
    hydra_args = [a for a in args[3:] if a.startswith("hydra")]
    for k, command in enumerate(commands):
        trial = tmp_path / "sweep" / f"trial{k}"
        assert command[2:] == [*OmegaConf.load(trial / ".hydra" / "overrides.yaml"), *hydra_args,
                               f"hydra.job.num={k}", f"hydra.run.dir={trial}"]
        assert run_config(*command[2:]) == OmegaConf.load(trial / ".hydra" / "config.yaml")
    assert len({c[2] for c in commands}) > 1  # the draws differ from trial to trial
    fixed = draws(["model.norm=batchnorm", *args[3:]], 4)  # a searched key fixed: the other keys' draws move
    assert all("model.norm=batchnorm" in o and not any(v.startswith("model.norm=batchnorm_") for v in o)
               for _, o in fixed)
    assert [o[0] for _, o in fixed] != [c[2] for c in commands]
    at = f"hydra.sweep.dir={tmp_path / 'other'}"
    for bad, message in [(["hydra/sweeper/sampler=tpe", at], "needs an optuna random search with a seed"),
                         (["hydra.sweeper.sampler.seed=null", at], "needs an optuna random search with a seed"),
                         (["nosuchkey=1", at], "Could not override 'nosuchkey'"),
                         ([], "give the search's hydra.sweep.dir")]:
        with pytest.raises(SystemExit, match="2"):
            sweeps_main(["--draws", "2", "hparams_search=p_random", "random_search.base=[3,2]", *bad])
        assert message in capsys.readouterr().err
    for row in rows:
        sizes = [int(h) for h in row["hidden_sizes"].split("-")]
        assert 3 <= sizes[0] <= 15 and 2 <= sizes[1] <= 10 and row["model"] == "parametric"
        assert 1 <= row["step_size"] <= 100_000 and \
            row["optimizer"] in ("sgd", "momentum", "nesterov", "rmsprop", "adam")
    logs = {p: p.read_bytes() for p in (tmp_path / "sweep").glob("trial*/train.log")}
    again = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    log = again.stdout + again.stderr
    assert len(logs) == 4 and all(p.read_bytes() == data for p, data in logs.items())  # its lines: the console's
    finished = sum(r["stopped_by"] in ("protocol", "budget") for r in rows)
    assert log.count("): skipped") == finished and log.count("which stopped earlier") == 4 - finished
    assert len(gather([tmp_path / "sweep"])) == 4  # the same 4 settings: no new run directory
    assert sorted(p.name for p in (tmp_path / "sweep").glob("trial*")) == ["trial0", "trial1", "trial2", "trial3"]
    # another sampler seed draws other settings into the same trial<k> directories: refused, not skipped
    settings = sorted((r["run_dir"], r["setting"]) for r in gather([tmp_path / "sweep"]))
    records = {p: p.read_bytes() for p in [*(tmp_path / "sweep").glob("trial*/.hydra/*.yaml"),
                                            *(tmp_path / "sweep").glob("trial*/train.log")]}
    other = subprocess.run([*args, "hydra.sweeper.sampler.seed=1"], cwd=tmp_path, capture_output=True, text=True,
                           timeout=600, env=env)
    log = other.stdout + other.stderr
    assert other.returncode == 3 and log.count("): skipped") == 0  # the first conflict stops the whole sweep
    assert "holds an ended run of another setting" in log and "random_search.width1: that run" in log
    assert "Give this sweep its own hydra.sweep.dir" in log
    # the refused relaunch leaves every run's record as it was, .hydra/ included
    assert sorted((r["run_dir"], r["setting"]) for r in gather([tmp_path / "sweep"])) == settings
    assert len(records) == 16 and all(p.read_bytes() == data for p, data in records.items())  # logs too
    assert all(json.loads((tmp_path / "sweep" / f"trial{k}" / "summary.json").read_text())["overrides"]
               for k in range(4) if (tmp_path / "sweep" / f"trial{k}" / "summary.json").is_file())
    # a run record kept without its checkpoint (committed, runs/full): the config in summary.json is checked
    for ckpt_dir in (tmp_path / "sweep").glob("trial*/checkpoints"):
        shutil.rmtree(ckpt_dir)
    other = subprocess.run([*args, "hydra.sweeper.sampler.seed=1"], cwd=tmp_path, capture_output=True, text=True,
                           timeout=600, env=env)
    log = other.stdout + other.stderr
    assert other.returncode == 3 and "holds an ended run of another setting" in log, log[-3000:]
    assert log.count("): skipped") == 0
    again = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
    log = again.stdout + again.stderr  # the same search: the records' configs match, so it skips as before
    assert again.returncode == 0 and log.count("): skipped") == finished, log[-3000:]


def test_the_size_of_a_sweep_is_counted_from_its_overrides():
    assert sweep_size(["lambda=1e-3,3e-3", "seed=range(10)", "dataset=mnist"]) == 20
    assert sweep_size(["optimizer=sgd,adam", "optimizer.lr=tag(log, interval(1, 100000))"]) is None


def test_the_progress_line_counts_a_run_stopped_by_a_signal_as_stopped_not_failed(tmp_path):
    for name, stopped_by in [("a", "protocol"), ("b", "budget"), ("c", "diverged"), ("d", "signal"), ("e", "time"),
                             ("f", None)]:
        (tmp_path / name / ".hydra").mkdir(parents=True)
        if stopped_by:
            (tmp_path / name / "summary.json").write_text(json.dumps({"stopped_by": stopped_by}))
    (tmp_path / "not_a_run").mkdir()  # no .hydra/: not counted
    assert progress(tmp_path) == {"finished": 2, "failed": 1, "running": 3}


def test_the_progress_line_says_when_the_directory_holds_more_runs_than_the_sweep(tmp_path, capsys):
    from hydra.types import RunMode

    from npnn.sweeps import SweepProgress
    for name in ("a", "b", "c"):  # a grid's runs, then a widening sweep of one run into the same directory
        (tmp_path / name / ".hydra").mkdir(parents=True)
        (tmp_path / name / "summary.json").write_text(json.dumps({"stopped_by": "protocol"}))
    OmegaConf.save({"hydra": {"sweeper": {"params": None}, "overrides": {"task": ["optimizer.alpha=1000"]}}},
                   tmp_path / "multirun.yaml")
    config = OmegaConf.create({"hydra": {"mode": RunMode.MULTIRUN, "sweep": {"dir": str(tmp_path)}, "sweeper": {}}})
    SweepProgress().on_job_end(config)
    assert f"sweep {tmp_path}: 3 (this sweep has 1, the directory 3) runs finished, 0 failed" in capsys.readouterr().out
    OmegaConf.save({"hydra": {"sweeper": {"params": None}, "overrides": {"task": ["optimizer.alpha=10,30,100"]}}},
                   tmp_path / "multirun.yaml")
    SweepProgress().on_job_end(config)
    assert f"sweep {tmp_path}: 3 of 3 runs finished, 0 failed" in capsys.readouterr().out
