"""The training application: configs, protocol transitions, resume exactness, errors."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hydra.errors import ConfigCompositionException, InstantiationException
from hydra.utils import instantiate
from omegaconf import OmegaConf

from npnn.callbacks import RewindProtocol
from npnn.config import CONF_DIR, compose
from npnn.data.download import DataUnavailableError
from npnn.module import ConstantNetworkError, DivergenceError, NonFiniteLossError
from npnn.train import ConfigError, build, main, validate_config
from npnn.units import deaths_per_epoch, layer_lengths, layer_stats

EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))
QUIET = ["trainer.enable_progress_bar=false", "logger=none"]


def config(*overrides: str):
    return compose(*overrides)


def tiny(*overrides: str):
    """A fast synthetic run: few units, small patience."""
    return config("dataset=synthetic", "lambda=1e-3", *QUIET, *overrides)


# ------------------------------------------------------------------- configs
def test_there_is_an_experiment_config_for_every_paper_setting():
    table2 = [f"table2_np_lambda{l}" for l in ("1e-3", "1e-5", "1e-6", "1e-7")] + \
        [f"table2_p_{s}" for s in ("23-24-15-4", "94-135-105-35", "210-251-224-104", "299-258-259-129")]
    fig2 = [f"fig2_np_mnist_lambda{l}" for l in ("3e-3", "1e-3", "3e-4")] + \
        [f"fig2_np_rectangles_images_lambda{l}" for l in ("3e-5", "1e-6")] + \
        [f"fig2_np_convex_lambda{l}" for l in ("1e-5", "1e-8")]
    assert set(table2 + fig2 + ["fig3_mnist"]) <= set(EXPERIMENTS)


_loaded: dict[str, object] = {}


SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_config_composes_and_instantiates(name, tmp_path):
    cfg = config(f"experiment={name}", f"data_dir={tmp_path / 'data'}")
    if OmegaConf.is_missing(cfg.model, "hidden_sizes") and cfg.model.kind == "parametric":  # table2_p: any sizes
        cfg = config(f"experiment={name}", f"data_dir={tmp_path / 'data'}", "model.hidden_sizes=[5,5]")
    validate_config(cfg)
    OmegaConf.resolve(cfg)
    loader = OmegaConf.to_container(cfg.dataset.loader)
    if loader["_target_"].endswith("load_mnist"):
        loader["mirrors"] = ["file:///nonexistent-mirror/"]  # never the network in tests
        loader["data_dir"] = str(SHARED_DATA)  # the real files, where this machine has them
    if loader["_target_"].endswith("load_amat"):
        loader["base_url"] = "file:///nonexistent-mirror/"
    key = json.dumps(loader, sort_keys=True)
    if key not in _loaded:  # one load per distinct data set
        try:
            _loaded[key] = instantiate(loader)
        except InstantiationException as err:  # not on this offline machine: the error says where to put it
            assert isinstance(err.__cause__, DataUnavailableError) and "put it at" in str(err), err
            _loaded[key] = None
    splits = _loaded[key]
    features = splits.num_features if splits is not None else 784
    net = torch.nn.Linear(features, 3, bias=False)
    make_optimizer = instantiate(cfg.optimizer)  # a partial: the module calls it with its param group
    group = {"params": [net.weight], "lam": cfg["lambda"], "dataset_size": 10, "batch_size": 5}
    assert isinstance(make_optimizer([group]), torch.optim.Optimizer)
    if cfg.protocol.get("_target_"):
        assert isinstance(instantiate(cfg.protocol), RewindProtocol)
    trainer = instantiate(cfg.trainer, logger=False, default_root_dir=str(tmp_path), enable_checkpointing=False)
    assert trainer.max_steps == cfg.trainer.max_steps


OPTIMIZERS = sorted(p.stem for p in (CONF_DIR / "optimizer").glob("*.yaml"))


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_every_optimizer_trains_the_app(name, tmp_path):
    step = "optimizer.lr=0.01" if name.startswith("torch_") else "optimizer.alpha=1"
    model = [] if name.startswith("adarad") else ["model=parametric", "model.hidden_sizes=[8,8]", step]
    cfg = tiny(f"optimizer={name}", *model, "trainer.max_steps=6", "protocol=none")
    trainer, module, dm = build(cfg, tmp_path)
    trainer.fit(module, datamodule=dm)
    assert module.step_count == 6
    assert all(torch.isfinite(p).all() for p in module.parameters())
    key = "alpha_phi" if name.startswith("adarad") else "lr" if name.startswith("torch_") else "alpha"
    assert module.step_size_key == key  # what the protocol divides
    assert module.step_size == {"alpha_phi": cfg.optimizer.get("alpha_phi"), "alpha": 1.0, "lr": 0.01}[key]


def test_default_config_is_the_paper_poker_setting():
    cfg = config()
    assert cfg.dataset.source == "generated" and cfg.model.kind == "nonparametric"
    assert cfg.model.hidden_layers == 4 and cfg.model.start_units == 10
    assert cfg.dataset.alpha_r_lambda == 0.2 and cfg.optimizer.alpha_r == pytest.approx(0.2 / cfg["lambda"])
    assert cfg.model.growth.every == 0.1 and cfg.protocol.patience == 10
    assert cfg.protocol.patience == 10 and cfg.protocol.anneal_patience == 0.5
    assert cfg.optimizer.alpha_phi == 10 and cfg.model.output_norm  # 7.4.2 step 1; logits behind CapNorm (README)
    assert cfg["lambda"] > 0


# ------------------------------------------------------------- bad configs
@pytest.mark.parametrize("override,message", [
    ("lambda=-1", r"lambda must be a finite number >= 0 \(or auto: 1 / \|D\|, your own data\), got -1"),
    (["lambda=-1", "optimizer.alpha_r=5"], r"lambda must be a finite number >= 0"),
    ("lambda=0", r"optimizer.alpha_r = dataset.alpha_r_lambda / lambda needs lambda > 0"),
    ("model.start_units=0", r"model.start_units must be an integer >= 1"),
    ("model.start_units=[3,4,5]", r"or a list of 2 of them"),
    ("protocol.patience=0", r"protocol: protocol.patience must be a finite number of epochs > 0, got 0"),
    ("protocol.anneal_patience=-2",
     r"protocol: protocol.anneal_patience must be a finite number of epochs > 0, got -2"),
    ("model.kind=bayesian", r"model.kind must be one of \('nonparametric', 'parametric'\)"),
    ("model.norm=batchnorm", r"cannot grow: a nonparametric model needs one of \('capnorm', 'none'\)"),
    ("model.growth.every=0",
     r"model.growth: model.growth.every \(epochs between additions\) must be a finite number > 0"),
    ("optimizer.alpha_phi=-3", r"optimizer: AdaRad: alpha_phi must be a finite number >= 0, got -3"),
    ("dataset.batch_size=0", r"dataset: dataset.batch_size must be an integer >= 1"),
    ("dataset.eval_batch_size=0", r"dataset: dataset.eval_batch_size must be an integer >= 1"),
    ("dataset.val_every=0",
     r"trainer.val_check_interval \(default: dataset.val_every\) must be a fraction of an epoch in \(0, 1\]"),
    ("dataset.val_every=2.5", r"trainer.val_check_interval .* or a whole number of calls >= 1 .*got 2.5"),
    ("overwrite=yes", r"overwrite must be true or false"),
    ("resume_changes=lambda", r"resume_changes must be a list of config keys"),
    ("divergence.max_train_ce=-1", r"model: divergence: each limit must be a number > 0 or null"),
    ("+divergence.max_loss=3", r"model: divergence: unknown keys \['max_loss'\]; the limits are"),
    ("optimizer=rmsprop", r"optimizer=rmsprop normalises with one running average per weight .* optimizer=adarad"),
    ("+trainer.precision=16-mixed", r"trainer.precision='16-mixed': npnn trains in full precision"),
    ("trainer.max_epochs=0",
     r"trainer.max_epochs must be -1 \(no limit: the protocol ends the run\) or an integer >= 1, got 0"),
    ("trainer.max_epochs=0.5", r"trainer.max_epochs must be -1 .* got 0.5"),
    ("trainer.max_steps=-5", r"trainer.max_steps must be -1 .* got -5"),
])
def test_bad_config_values_fail_early_with_the_key(override, message, tmp_path):
    with pytest.raises(ConfigError, match=message):
        build(tiny(*([override] if isinstance(override, str) else override)), tmp_path)


def test_parametric_model_needs_sizes_and_the_protocol_follows_the_model(tmp_path):
    with pytest.raises(ConfigError, match=r"model.hidden_sizes, a list of positive widths"):
        validate_config(tiny("model=parametric"))
    for model in (["model=parametric", "model.hidden_sizes=[5]", "optimizer=rmsprop"], []):
        trainer, module, dm = build(tiny(*model), tmp_path)
        protocol = next(cb for cb in trainer.callbacks if isinstance(cb, RewindProtocol))
        assert protocol.kind == (model[0].split("=")[1] if model else "nonparametric")


@pytest.mark.parametrize("group", ["dataset=imagenet", "optimizer=lbfgs"])
def test_unknown_choices_name_the_options(group):
    with pytest.raises(ConfigCompositionException, match="Available options"):
        config(group)


# -------------------------------------------------------- protocol on a run
def test_protocol_runs_through_every_phase_and_stops(tmp_path):
    cfg = tiny("dataset.patience=2", "dataset.anneal_patience=1", "trainer.max_epochs=200")
    trainer, module, dm = build(cfg, tmp_path)
    protocol = next(cb for cb in trainer.callbacks if isinstance(cb, RewindProtocol))
    growth = module.growth
    events = []
    original = protocol._advance

    def watch(trainer_, module_):
        before = dict(best_step=protocol.best_step, best_sizes=protocol.best["module"]["net"],
                      sizes=module_.net.hidden_sizes, step=module_.step_count)
        original(trainer_, module_)
        events.append(dict(before, to=protocol.phase, done=protocol.done, after_step=module_.step_count,
                           after_sizes=module_.net.hidden_sizes, lam=module_.lam, alpha=module_.step_size,
                           growing=growth.enabled))
    protocol._advance = watch
    trainer.fit(module, datamodule=dm)
    phases = [e["to"] for e in events]
    assert phases[:3] == ["prune", "fit", "anneal"], phases
    assert protocol.done and trainer.current_epoch < 199  # stopped by the stop rule, not the budget
    first = events[0]
    assert first["after_step"] == first["best_step"] < first["step"]  # rewound to the best point...
    best_widths = [first["best_sizes"][f"linears.{l}.weight"].shape[0] for l in range(2)]
    assert first["after_sizes"] == best_widths  # ...with its shape
    assert not first["growing"] and first["lam"] == 1e-3
    assert events[1]["lam"] == 0.0 and module.optimizer.param_groups[0]["lam"] == 0.0  # lambda -> 0
    # prune -> fit rewinds P1 epochs: to the best VCE or the last elimination, whichever came later
    assert events[1]["best_step"] <= events[1]["after_step"] < events[1]["step"]
    alphas = [e["alpha"] for e in events]
    assert alphas[1] == 30.0 and alphas[2] == pytest.approx(10.0)  # divided by 3 on each plateau
    for a, b in zip(alphas[2:], alphas[3:]):
        assert b == pytest.approx(a / 3) or b == pytest.approx(a)
    assert events[-1]["done"]


def test_the_parametric_protocol_divides_the_papers_step_size_alpha(tmp_path):
    cfg = tiny("model=parametric", "model.hidden_sizes=[8,8]", "optimizer=rmsprop", "optimizer.alpha=30", "lambda=0",
               "dataset.patience=2", "dataset.anneal_patience=1", "trainer.max_epochs=100")
    summary = main(cfg, tmp_path)
    steps = [(e["from"], e["to"], e["step_size"]) for e in summary["protocol"]]
    assert steps[0] == ("fit", "anneal", 10.0) and steps[-1][1] == "stop" and summary["stopped_by"] == "protocol"
    anneals = [s for _, to, s in steps[1:-1]]
    assert anneals == pytest.approx([10.0 / 3 ** k for k in range(1, len(anneals) + 1)])  # alpha / 3 per plateau
    assert summary["optimizer"] == "rmsprop" and summary["step_size"] == 30.0  # as configured


def test_the_progress_bar_shows_the_sizes_the_error_the_phase_and_the_step_size(tmp_path):
    from npnn.callbacks import RunProgressBar

    trainer, module, dm = build(tiny("trainer.max_epochs=2", "trainer.enable_progress_bar=true"), tmp_path)
    trainer.fit(module, datamodule=dm)
    bar = trainer.progress_bar_callback
    assert isinstance(bar, RunProgressBar)
    shown = bar.get_metrics(trainer, module)
    assert shown == {"sizes": "-".join(map(str, module.net.hidden_sizes)), "VCE": f"{100 * module.last_val_error:.3f}%",
                     "phase": "grow", "step size": "30"}  # no v_num


def test_rewind_restores_weights_optimizer_state_and_records(tmp_path):
    cfg = tiny("trainer.max_steps=60")
    trainer, module, dm = build(cfg, tmp_path)
    protocol = next(cb for cb in trainer.callbacks if isinstance(cb, RewindProtocol))
    trainer.fit(module, datamodule=dm)  # on_fit_end rewinds to the best point
    snap = protocol.best["module"]
    net_state = module.net.state_dict()
    for k, v in snap["net"].items():
        if torch.is_tensor(v):
            assert torch.equal(net_state[k], v), k
    assert module.net.get_extra_state() == snap["net"]["_extra_state"]
    opt_state = module.optimizer.state_dict()
    for i, s in snap["optimizer"]["state"].items():
        assert all(torch.equal(opt_state["state"][i][k], s[k]) for k in s)
    assert module.step_count == protocol.best_step


# ------------------------------------------------------------ main + files
def test_main_writes_metrics_units_checkpoint_and_summary(tmp_path):
    cfg = config("dataset=synthetic", "lambda=1e-3", "trainer.enable_progress_bar=false", "trainer.max_epochs=4")
    summary = main(cfg, run_dir=tmp_path)
    assert (tmp_path / "checkpoints" / "last.ckpt").exists()
    metrics = (tmp_path / "logs" / "version_0" / "metrics.csv").read_text()
    for column in ("val/error", "test/error", "train/ce", "size/layer1", "weights", "units/added", "units/removed",
                   "phi_max", "objective", "protocol/phase"):
        assert column in metrics.splitlines()[0], column
    units = (tmp_path / "units.csv").read_text().splitlines()
    assert units[0] == "id,layer,birth,death" and len(units) > 20
    assert (tmp_path / "unit_lengths.csv").read_text().startswith("step,epoch,layer,id,fan_in,fan_out")
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved == summary and saved["hidden_sizes"] and 0 <= saved["test_error"] <= 1
    assert saved["stopped_by"] == "budget" and saved["steps_per_epoch"] == 20
    import csv
    rows = [r for r in csv.DictReader(metrics.splitlines()) if r["val/error"]]
    best = min(rows, key=lambda r: float(r["val/error"]))  # the first of the lowest
    assert saved["best_val_error"] == pytest.approx(float(best["val/error"]))
    assert saved["test_error_at_best"] == pytest.approx(float(best["test/error"]))
    assert saved["val_error"] == pytest.approx(saved["best_val_error"], abs=1e-6)  # here the final net is the best
    # python -m npnn.units: per layer, units added = alive + eliminated, and the alive ones are the net's
    stats = layer_stats(tmp_path)
    assert [s["alive"] for s in stats] == saved["hidden_sizes"]
    assert all(s["units"] == s["alive"] + s["eliminated"] and s["units"] > 10 for s in stats), stats
    assert sum(deaths_per_epoch(tmp_path).values()) == sum(s["eliminated"] for s in stats)
    # --lengths: every layer of the last checkpoint, the output layer included, on the run's own data
    (tmp_path / ".hydra").mkdir()
    OmegaConf.save(cfg, tmp_path / ".hydra" / "config.yaml")
    lengths = layer_lengths(tmp_path)
    assert [r["layer"] for r in lengths] == [1, 2, 3]
    assert all(0 <= r["length"][0] <= r["length"][1] <= r["length"][2] for r in lengths)
    assert lengths[-1]["length"][2] > 0  # the output layer is not constant


def test_prune_stage_ends_at_its_length_limit(tmp_path):
    # patience 6 epochs (the prune stage would last at least that), limit 2 epochs after it began
    cfg = tiny("dataset.patience=6", "dataset.max_prune_epochs=2", "trainer.max_epochs=40", "dataset.val_every=0.25")
    trainer, module, dm = build(cfg, tmp_path)
    protocol = next(cb for cb in trainer.callbacks if isinstance(cb, RewindProtocol))
    ended_at, original = [], protocol._advance
    protocol._advance = lambda t, m: (ended_at.append(m.step_count), original(t, m))
    trainer.fit(module, datamodule=dm)
    grow_end, prune_end = protocol.history[0], protocol.history[1]
    assert (grow_end["to"], prune_end["from"], prune_end["to"]) == ("prune", "prune", "fit")
    # the prune stage began at the grow stage's rewind target and ended 2 epochs (40 steps) later,
    # not after 6 epochs of patience
    assert ended_at[1] - grow_end["step"] == 40
    assert grow_end["step"] <= prune_end["step"] <= ended_at[1]  # then rewound to the anchor
    with pytest.raises(ValueError, match="max_prune_epochs must be a finite number > 0 or null"):
        RewindProtocol(max_prune_epochs=0)


# ---------------------------------------------------------- resume exactness
def run_steps(tmp_path, steps, ckpt=None, every=None):
    extra = [f"checkpoint_every_steps={every}"] if every else []
    cfg = tiny(f"trainer.max_steps={steps}", "trainer.deterministic=true", "protocol=none", "dataset.growth_every=0.35",
               "steps_per_call=1",
               *extra, *([f"ckpt_path={ckpt}"] if ckpt else []))
    trainer, module, dm = build(cfg, tmp_path)
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt)
    return module


def test_resume_mid_epoch_and_mid_growth_is_exact(tmp_path):
    n, m = 47, 38  # 20 batches an epoch: the kill is mid-epoch; units are added every 7 steps
    full = run_steps(tmp_path / "full", n + m)
    killed = run_steps(tmp_path / "killed", n, every=n)
    ckpt = tmp_path / "killed" / "checkpoints" / "last.ckpt"
    assert torch.load(ckpt, weights_only=False)["npnn"]["step_count"] == n
    resumed = run_steps(tmp_path / "killed", n + m, ckpt=str(ckpt))
    assert killed.net.hidden_sizes != full.net.hidden_sizes  # the shape changed after the kill
    assert resumed.net.hidden_sizes == full.net.hidden_sizes
    assert resumed.net.unit_records() == full.net.unit_records()
    for (name, a), b in zip(full.net.state_dict().items(), resumed.net.state_dict().values()):
        if torch.is_tensor(a):
            assert torch.equal(a, b), name
    sa, sb = full.optimizer.state_dict(), resumed.optimizer.state_dict()
    assert torch.equal(sa["global"]["phi_max"], sb["global"]["phi_max"])
    for i in sa["state"]:
        assert all(torch.equal(sa["state"][i][k], sb["state"][i][k]) for k in sa["state"][i])


def test_a_resumed_run_reports_the_time_of_every_fit(tmp_path):
    cfg = tiny("trainer.max_steps=30", "protocol=none", "checkpoint_every_steps=10")
    main(cfg, tmp_path / "a")
    first = json.loads((tmp_path / "a" / "summary.json").read_text())
    # from the fit's start (fit_wall_time_s: from before trainer.fit, its set-up included)
    assert 0 < first["wall_time_s"] <= first["fit_wall_time_s"] + 0.05 and first["cpu_time_s"] > 0
    assert first["threads"] == torch.get_num_threads()
    assert first["machine"]["torch"] == torch.__version__ and first["machine"]["cpu"]  # the floats' machine
    assert first["machine"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert "time_complete" not in first
    ckpt = tmp_path / "a" / "checkpoints" / "last.ckpt"
    stored = torch.load(ckpt, weights_only=False)["npnn"]["time_used"]
    assert stored["complete"] and 0 < stored["wall_s"] <= first["wall_time_s"] + 0.05  # the summary rounds
    main(tiny("trainer.max_steps=60", "protocol=none", f"ckpt_path={ckpt}"), tmp_path / "a")
    resumed = json.loads((tmp_path / "a" / "summary.json").read_text())
    # the resumed fit adds its time to the checkpoint's
    assert stored["wall_s"] < resumed["wall_time_s"] <= stored["wall_s"] + resumed["fit_wall_time_s"] + 0.1
    assert resumed["cpu_time_s"] > stored["cpu_s"]
    # a checkpoint from before the record: its earlier time is unknown, and the summary says so
    old = torch.load(ckpt, weights_only=False)
    del old["npnn"]["time_used"]
    torch.save(old, ckpt)
    main(tiny("trainer.max_steps=70", "protocol=none", f"ckpt_path={ckpt}"), tmp_path / "a")
    partial = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert partial["time_complete"] is False and partial["wall_time_s"] <= partial["fit_wall_time_s"] + 0.05
    assert partial["wall_time_s"] < resumed["wall_time_s"]  # the earlier fits are not counted: unknown


def test_a_resume_past_a_lowered_epoch_budget_ends_at_its_checkpoint(tmp_path, caplog):
    main(tiny("trainer.max_epochs=3", "protocol=none"), tmp_path / "a")
    ckpt = tmp_path / "a" / "checkpoints" / "last.ckpt"
    first = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert torch.load(ckpt, weights_only=False)["epoch"] == 2  # saved before Lightning counts the epoch done
    with caplog.at_level("WARNING", logger="npnn.train"):  # Lightning raised MisconfigurationException here
        again = main(tiny("trainer.max_epochs=1", "protocol=none", f"ckpt_path={ckpt}"), tmp_path / "a")
    assert "is at epoch 2, past trainer.max_epochs=1: the run ends there" in caplog.text
    assert again["stopped_by"] == "budget" and again["steps_trained"] == first["steps_trained"]
    assert again["epochs"] == first["epochs"] == 3 and again["hidden_sizes"] == first["hidden_sizes"]
    assert again["test_error"] == first["test_error"]  # the same network, evaluated again


def test_checkpoint_from_another_network_is_refused(tmp_path):
    run_steps(tmp_path / "a", 5, every=5)
    ckpt = tmp_path / "a" / "checkpoints" / "last.ckpt"
    cfg = tiny("trainer.max_steps=10", "dataset.hidden_layers=3")
    trainer, module, dm = build(cfg, tmp_path / "b")
    with pytest.raises(ValueError, match="does not fit this run"):
        trainer.fit(module, datamodule=dm, ckpt_path=str(ckpt))


# ---------------------------------------------------- runs that cannot learn
def test_nan_loss_stops_with_a_clear_message(tmp_path):
    cfg = tiny("trainer.max_steps=5", "protocol=none")
    trainer, module, dm = build(cfg, tmp_path)
    dm.splits.x_train[::7, 0] = float("nan")  # a NaN feature in every batch
    with pytest.raises(NonFiniteLossError, match="training loss is nan"):
        trainer.fit(module, datamodule=dm)


def test_a_diverged_run_stops_early_and_says_so(tmp_path):
    # the literal reading (plain logits) at lambda = 1e-6 with poker's alpha_r = 1 / (5 lambda) diverges
    cfg = tiny("lambda=1e-6", "dataset.alpha_r_lambda=0.2", "model.output_norm=false", "trainer.max_epochs=20",
               "protocol=none")
    with pytest.raises(DivergenceError, match=r"train cross-entropy is .* over 5 times a constant \(uniform\)"):
        main(cfg, tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["stopped_by"] == "diverged" and "DivergenceError" in summary["error"]
    assert summary["epochs"] < 20  # stopped early, not at the budget
    # the same run with CapNorm on the logits (the default) trains
    assert main(tiny("lambda=1e-6", "dataset.alpha_r_lambda=0.2", "trainer.max_epochs=3", "protocol=none"),
                tmp_path / "capnorm")["stopped_by"] == "budget"


@pytest.mark.parametrize("limit,message", [
    ("max_step_angle", "rotation per step alpha_phi sqrt"), ("max_fan_in_length", "longest fan-in has length")])
def test_blown_up_steps_or_weights_stop_the_run(tmp_path, limit, message):
    trainer, module, dm = build(tiny("trainer.max_steps=20", "protocol=none"), tmp_path)
    trainer.fit(module, datamodule=dm)
    metrics = dict(module.last_metrics)
    module.check_not_diverged(metrics)  # a healthy run passes
    if limit == "max_step_angle":
        module.optimizer.phi_max.fill_(1.0)  # a gradient blow-up: rotations of alpha_phi rad a step
    else:
        with torch.no_grad():
            module.net.linears[-1].weight[0, 0] = 1e5
    with pytest.raises(DivergenceError, match=message):
        module.check_not_diverged(metrics)
    module.divergence = dict.fromkeys(module.divergence)  # every limit off (divergence: null)
    if limit == "max_step_angle":
        module.check_not_diverged(metrics)
    else:  # non-finite weights stop a run even then
        module.check_not_diverged(metrics)
        with torch.no_grad():
            module.net.linears[-1].weight[0, 0] = float("inf")
        with pytest.raises(DivergenceError, match="longest fan-in has length inf"):
            module.check_not_diverged(metrics)


def test_divergence_null_switches_the_limits_off():
    from npnn.train import divergence_limits
    assert divergence_limits(tiny("divergence=null")) == {"max_train_ce": None, "max_step_angle": None,
                                                         "max_fan_in_length": None, "max_final_val_error": None}
    assert divergence_limits(tiny())["max_train_ce"] == 5.0


def test_constant_network_is_reported(tmp_path):
    cfg = tiny("lambda=1.0", "optimizer.alpha_r=50", "trainer.max_epochs=3", "protocol=none")
    with pytest.raises(ConstantNetworkError, match="network is constant"):
        main(cfg, tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["stopped_by"] == "constant_network" and "ConstantNetworkError" in summary["error"]


def test_wandb_logs_the_full_config_and_the_summary_beside_the_csv_files_offline_with_the_runs_plot(tmp_path,
                                                                                                    monkeypatch):
    import wandb  # in the dev extra (and the wandb extra): this test runs in CI

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    cfg = config("dataset=synthetic", "logger=wandb", "trainer.enable_progress_bar=false", "trainer.max_steps=60",
                 "protocol=none")
    summary = main(cfg, run_dir=tmp_path)
    run_config, logged = dict(wandb.run.config), dict(wandb.run.summary)
    wandb.finish()
    assert run_config["optimizer"]["alpha_phi"] == cfg.optimizer.alpha_phi and \
        run_config["seed"] == cfg.seed  # all of it
    assert run_config["dataset"]["batch_size"] == cfg.dataset.batch_size
    assert run_config["final"]["test_error"] == summary["test_error"]
    assert logged["test_error"] == summary["test_error"] and logged["hidden_sizes"] == summary["hidden_sizes"]
    assert logged["stopped_by"] == summary["stopped_by"] and logged["cpu_time_s"] == summary["cpu_time_s"]
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert runs and (tmp_path / "logs" / "version_0" / "metrics.csv").is_file()  # W&B and the CSV files
    assert (tmp_path / "plots" / "run.png").is_file()
    assert list(runs[0].glob("files/media/images/run_*.png"))  # the plot, logged as an image


def test_metrics_are_on_disk_at_every_validation_not_only_at_the_end(tmp_path):
    import pytorch_lightning as pl

    cfg = config("dataset=synthetic", "lambda=1e-3", "trainer.enable_progress_bar=false", "trainer.max_epochs=3",
                 "logger=csv")
    trainer, module, dm = build(cfg, tmp_path)
    rows_seen = []

    class ReadMetrics(pl.Callback):
        def on_validation_end(self, trainer, module):
            if not trainer.sanity_checking:
                path = tmp_path / "logs" / "version_0" / "metrics.csv"
                rows_seen.append(len(path.read_text().splitlines()) - 1 if path.exists() else 0)

    trainer.callbacks.append(ReadMetrics())
    trainer.fit(module, datamodule=dm)
    assert len(rows_seen) >= 3 and all(n >= i + 1 for i, n in enumerate(rows_seen)), rows_seen


def test_last_checkpoint_is_written_at_every_validation(tmp_path):
    import pytorch_lightning as pl

    cfg = config("dataset=synthetic", "lambda=1e-3", "trainer.enable_progress_bar=false", "trainer.max_epochs=3",
                 "checkpoint_every_seconds=0")
    trainer, module, dm = build(cfg, tmp_path)
    seen = []

    class ReadCheckpoint(pl.Callback):  # Lightning runs ModelCheckpoint last: read it at the next batch
        validated_at = None

        def on_validation_end(self, trainer, module):
            if not trainer.sanity_checking:
                self.validated_at = trainer.global_step

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            if self.validated_at is not None:
                ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
                seen.append((ckpt["global_step"], self.validated_at))
                self.validated_at = None

    trainer.callbacks.append(ReadCheckpoint())
    trainer.fit(module, datamodule=dm)
    assert len(seen) >= 2 and all(saved == now for saved, now in seen), seen
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["last.ckpt"]


def test_last_checkpoint_by_wall_time_keeps_the_first_and_the_last_validation(tmp_path, monkeypatch):
    import pytorch_lightning as pl

    import npnn.runs

    now = [0.0]
    monkeypatch.setattr(npnn.runs.time, "monotonic", lambda: now[0])
    cfg = config("dataset=synthetic", "lambda=1e-3", "trainer.enable_progress_bar=false", "trainer.max_epochs=6",
                 "protocol=none", "checkpoint_every_seconds=60")
    trainer, module, dm = build(cfg, tmp_path)
    saved = []

    class Saves(pl.Callback):
        def on_validation_start(self, trainer, module):
            now[0] += 25.0  # an epoch and its validation take 25 s

        def on_save_checkpoint(self, trainer, module, checkpoint):
            saved.append(trainer.global_step)

    trainer.callbacks.insert(0, Saves())
    trainer.fit(module, datamodule=dm)
    steps = [20 * (e + 1) for e in range(6)]  # one validation an epoch
    assert saved[0] == steps[0] and saved[-1] == steps[-1]  # the fit's first validation, and where it ends
    assert saved == [20, 80, 120]  # at 25 s; not 25 or 50 s after it, but 75 s; and where the fit ends
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == steps[-1]


def test_several_steps_per_call_train_exactly_as_one(tmp_path):
    """steps_per_call hands the training step lists of batches: the same optimizer steps, growth,
    pruning, validations, rewinds and budget end, bit for bit, with Lightning's per-call overhead paid less often."""
    runs = {}
    for k in (1, "auto"):
        cfg = tiny(f"steps_per_call={k}", "trainer.max_epochs=8", "protocol.patience=2", "lambda=3e-3",
                   "optimizer.alpha_r=100")
        trainer, module, dm = build(cfg, tmp_path / str(k))
        trainer.fit(module, datamodule=dm)
        assert trainer.num_training_batches == (20 if k == 1 else 4)  # auto: 5, the largest divisor <= 8 of 20
        runs[k] = module
    one, five = runs[1], runs["auto"]
    assert one.step_count == five.step_count and one.net.hidden_sizes == five.net.hidden_sizes
    assert one.net.unit_records() == five.net.unit_records()
    assert any(r["death"] is not None for r in one.net.unit_records())  # pruning happened
    for (name, a), b in zip(one.net.state_dict().items(), five.net.state_dict().values()):
        if isinstance(a, torch.Tensor):
            assert torch.equal(a, b), name
    with pytest.raises(ConfigError, match=r"steps_per_call=5 must divide .*trainer.max_steps=23"):
        build(tiny("trainer.max_steps=23", "steps_per_call=5"), tmp_path / "budget")
    trainer, module, dm = build(tiny("trainer.max_steps=22", "protocol=none"), tmp_path / "budget")
    trainer.fit(module, datamodule=dm)  # auto: 2, the largest divisor <= 8 of 20 and 22
    assert trainer.num_training_batches == 10 and module.step_count == trainer.global_step == 22
