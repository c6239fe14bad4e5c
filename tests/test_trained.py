"""Use what you trained: the model file, npnn.load, export, predict, Lightning-native metrics and callbacks."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import npnn
from npnn.config import compose
from npnn.data.tabular import load_csv
from npnn.export import export, largest_difference
from npnn.module import NonparametricModule
from npnn.nn import NonparametricMLP
from npnn.runs import read_checkpoint
from npnn.train import ConfigError, build, run
from npnn.trained import MODEL_FILE, MODEL_JSON, ModelFileError, load, to_sequential

ROOT = Path(__file__).resolve().parents[1]
QUIET = ["trainer.enable_progress_bar=false"]


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).abs().max() / a.abs().max())


@pytest.fixture(scope="module")
def digits(digits_run):
    """README's digits run (conftest.py): (run dir, summary, module, the raw rows of its splits)."""
    raw = load_csv(str(digits_run.folder / "digits.csv"), "label", standardize=False)  # the same split, unscaled
    return digits_run.run_dir, digits_run.summary, digits_run.module, raw


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    folder = tmp_path_factory.mktemp("synthetic")
    summary, module = run(compose("dataset=synthetic", "trainer.max_epochs=3", *QUIET), folder)
    return folder, summary, module.cpu().eval()


# ------------------------------------------------------------- model file
def test_a_run_writes_its_final_network_as_safetensors_and_json(digits):
    run_dir, summary, module, raw = digits
    record = json.loads((run_dir / MODEL_JSON).read_text())
    assert record["network"]["hidden_sizes"] == summary["hidden_sizes"] == module.net.hidden_sizes
    assert record["classes"] == list(range(10)) and len(record["features"]) == 64 and record["target"] == "label"
    assert record["test_error"] == summary["test_error"] and record["config"]["dataset"]["path"].endswith("digits.csv")
    data = json.loads((run_dir / "data.json").read_text())
    assert record["standardize"] == data["standardize"]
    assert (run_dir / MODEL_FILE).read_bytes()[8:9] == b"{"  # safetensors: a length, then a JSON header; no pickle
    from safetensors.torch import load_file

    tensors = load_file(str(run_dir / MODEL_FILE))
    assert torch.equal(tensors["linears.0.weight"], module.net.linears[0].weight.detach())


def test_load_gives_the_modules_function_on_raw_features(digits):
    run_dir, summary, module, raw = digits
    model = npnn.load(run_dir)
    assert not model.training and model.hidden_sizes == summary["hidden_sizes"]
    assert not any(p.requires_grad for p in model.parameters())
    standardised = load_csv(str(run_dir.parent / "digits.csv"), "label")  # as the run trained on it
    with torch.no_grad():
        assert torch.equal(model(raw.x_test), module(standardised.x_test))  # float64 standardisation, as the loader
    wrong = int((model.predict(raw.x_test.numpy()) != raw.y_test.numpy()).sum())
    assert wrong == round(summary["test_error"] * len(raw.y_test))
    frame = pd.read_csv(run_dir.parent / "digits.csv").iloc[:50]
    shuffled = frame[list(reversed(frame.columns))]  # columns by name, in any order, the label beside them
    assert np.array_equal(model.predict(shuffled), model.predict(frame.drop(columns="label").to_numpy()))
    assert np.allclose(model.predict_proba(frame).sum(1), 1.0)
    with pytest.raises(ValueError, match=r"no column\(s\) \['pixel_0_0'\]"):
        model.predict(frame.drop(columns="pixel_0_0"))
    with pytest.raises(ValueError, match="rows of 64 features"):
        model.predict(np.zeros((2, 63)))
    nan = frame.drop(columns="label").to_numpy(dtype=float)
    nan[3, 5] = np.nan
    with pytest.raises(ValueError, match=r"1 missing \(NaN\).*pixel_0_5"):
        model.predict(nan)


def test_load_in_a_fresh_process_predicts_the_same_labels(digits):
    run_dir, summary, module, raw = digits
    np.save(run_dir.parent / "x.npy", raw.x_test.numpy())
    code = ("import numpy, npnn; m = npnn.load({!r}); print(','.join(map(str, m.predict(numpy.load({!r})))))"
            .format(str(run_dir), str(run_dir.parent / "x.npy")))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd="/")
    labels = np.array([int(v) for v in out.stdout.strip().split(",")])
    assert np.array_equal(labels, npnn.load(run_dir).predict(raw.x_test.numpy()))


def test_load_from_checkpoint_rebuilds_the_checkpoints_network(synthetic):
    run_dir, summary, module = synthetic
    path = run_dir / "checkpoints" / "last.ckpt"
    loaded = NonparametricModule.load_from_checkpoint(path, map_location="cpu").eval()
    checkpoint = read_checkpoint(path)
    net = NonparametricMLP(**checkpoint["model_config"])
    net.load_state_dict({k[4:]: v for k, v in checkpoint["state_dict"].items() if k.startswith("net.")})
    x = torch.randn(64, net.in_features)
    assert loaded.net.hidden_sizes == checkpoint["model_config"]["hidden_sizes"]
    with torch.no_grad():
        assert torch.equal(loaded(x), net.eval()(x))
    with pytest.raises(ValueError, match="no optimizer"):
        loaded.configure_optimizers()


def test_a_missing_or_mismatched_model_file_is_one_clear_error(tmp_path, synthetic):
    run_dir = synthetic[0]
    with pytest.raises(ModelFileError, match="no such file or run directory"):
        load(tmp_path / "nothing")
    with pytest.raises(ModelFileError, match="only checkpoints/last.ckpt: resume it"):
        load(tmp_path)
    from npnn.module import ConstantNetworkError

    with pytest.raises(ConstantNetworkError):  # a run that fails leaves no model file (nor an earlier end's)
        run(compose("dataset=synthetic", "lambda=1.0", "optimizer.alpha_r=50", "trainer.max_epochs=3",
                    "protocol=none", *QUIET), tmp_path / "failed")
    assert json.loads((tmp_path / "failed" / "summary.json").read_text())["stopped_by"] == "constant_network"
    with pytest.raises(ModelFileError, match="one that failed"):
        load(tmp_path / "failed")
    shutil.copy(run_dir / MODEL_JSON, tmp_path / MODEL_JSON)
    (tmp_path / MODEL_FILE).write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(ModelFileError, match="truncated or not a safetensors file"):
        load(tmp_path)


# ------------------------------------------------------------------ export
@pytest.mark.parametrize("fmt", ["torchscript", "onnx", "state_dict"])
def test_exported_net_is_linear_and_relu_with_the_trained_logits(digits, fmt, tmp_path):
    run_dir, summary, module, raw = digits
    path = export(run_dir, fmt, tmp_path / f"model.{fmt}")
    standardised = load_csv(str(run_dir.parent / "digits.csv"), "label")
    with torch.no_grad():
        expected = module(standardised.x_test)  # the LightningModule in eval mode, on the rows it was tested on
    if fmt == "torchscript":
        net = torch.jit.load(str(path))
        assert {type(m).__name__ for m in net.children()} == {"RecursiveScriptModule"}
        assert [m.original_name for m in net.children()] == \
            ["Linear", "ReLU"] * len(summary["hidden_sizes"]) + ["Linear"]
        logits = net(raw.x_test)
    elif fmt == "onnx":
        import onnx
        import onnxruntime

        proto = onnx.load(str(path))
        assert {n.op_type for n in proto.graph.node} <= {"Gemm", "Relu", "MatMul", "Add", "Transpose"}
        assert json.loads({p.key: p.value for p in proto.metadata_props}["npnn.classes"]) == list(range(10))
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        logits = torch.from_numpy(session.run(None, {"features": raw.x_test.numpy()})[0])
        wrong = int((logits.argmax(1) != raw.y_test).sum())
        assert wrong == round(summary["test_error"] * len(raw.y_test))  # exactly the run's test errors
    else:
        state = torch.load(path, weights_only=True)
        net = to_sequential(npnn.load(run_dir))
        net.load_state_dict(state)
        logits = net(raw.x_test).detach()
    assert relative_difference(expected, logits) < 1e-5


@pytest.mark.parametrize("norm", ["batchnorm", "batchnorm_affine", "none"])
def test_export_folds_batchnorm_and_plain_layers_too(tmp_path, norm):
    overrides = ["model=parametric", "model.hidden_sizes=[9,7]", f"model.norm={norm}", "optimizer=torch_rmsprop",
                 "optimizer.lr=0.01"] if norm != "none" else \
        ["model.norm=none", "model.output_norm=false", "lambda=1e-4"]
    summary, module = run(compose("dataset=synthetic", "trainer.max_epochs=2", "protocol=none", *QUIET, *overrides),
                          tmp_path)
    model = npnn.load(tmp_path)
    x = torch.randn(200, 6)
    with torch.no_grad():
        assert relative_difference(module.cpu().eval()(x), to_sequential(model)(x)) < 1e-5
    assert largest_difference(model, torch.jit.load(str(export(tmp_path, "torchscript")))) < 1e-5


def test_export_command_checks_and_refuses_what_it_cannot_write(synthetic, tmp_path):
    out = subprocess.run([sys.executable, "-m", "npnn.export", str(synthetic[0]), "--format", "onnx", "--output",
                          str(tmp_path / "m.onnx")], capture_output=True, text=True, cwd="/")
    assert out.returncode == 0, out.stderr
    assert "largest difference to the trained network's logits" in out.stdout and (tmp_path / "m.onnx").is_file()
    out = subprocess.run([sys.executable, "-m", "npnn.export", str(tmp_path)], capture_output=True, text=True)
    assert out.returncode == 1 and out.stderr.strip().startswith("npnn-export: error: ")
    assert len(out.stderr.strip().splitlines()) == 1


# ----------------------------------------------------------------- predict
def test_predict_writes_labels_and_probabilities_and_refuses_bad_tables(digits, tmp_path):
    run_dir, summary, module, raw = digits
    frame = pd.read_csv(run_dir.parent / "digits.csv")
    frame.iloc[:300].to_csv(tmp_path / "x.csv", index=False)
    command = [sys.executable, "-m", "npnn.predict", str(run_dir), "--input"]
    out = subprocess.run(command + [str(tmp_path / "x.csv"), "--output", str(tmp_path / "p.csv")],
                         capture_output=True, text=True, check=True)
    predictions = pd.read_csv(tmp_path / "p.csv")
    assert list(predictions.columns) == ["prediction"] + [f"p({k})" for k in range(10)]
    expected = npnn.load(run_dir).predict(frame.iloc[:300])
    assert np.array_equal(predictions["prediction"].to_numpy(), expected)
    wrong = int((expected != frame["label"].to_numpy()[:300]).sum())
    assert f"{wrong} wrong" in out.stdout and "against its column 'label'" in out.stdout
    bad = {"missing": (frame.iloc[:5].drop(columns="pixel_3_4"), r"no column\(s\) \['pixel_3_4'\]"),
           "extra": (frame.iloc[:5].assign(id=1), r"column\(s\) \['id'\] that the network was not trained on"),
           "nan": (frame.iloc[:5].astype(float).assign(pixel_1_1=[1.0, np.nan, 2.0, 3.0, 4.0]),
                   r"1 missing \(NaN\) or infinite values, in column\(s\) 'pixel_1_1'")}
    for name, (table, message) in bad.items():
        table.to_csv(tmp_path / f"{name}.csv", index=False)
        out = subprocess.run(command + [str(tmp_path / f"{name}.csv"), "--output", str(tmp_path / f"{name}-p.csv")],
                             capture_output=True, text=True)
        assert out.returncode == 1 and len(out.stderr.strip().splitlines()) == 1, (name, out.stderr)
        assert out.stderr.startswith("npnn-predict: error: --input") and __import__("re").search(message, out.stderr)
        assert not (tmp_path / f"{name}-p.csv").exists()


# ------------------------------------------------- Lightning metrics, callbacks, loggers
def test_metrics_are_in_callback_metrics_and_early_stopping_stops_a_run(tmp_path):
    cfg = compose("dataset=synthetic", "lambda=1e-3", "protocol=none", "trainer.max_epochs=100",
                  "callbacks=early_stopping", "callbacks.early_stopping.patience=2", *QUIET)
    trainer, module, datamodule = build(cfg, tmp_path)
    trainer.fit(module, datamodule=datamodule)
    assert {"val/error", "val/ce", "train/ce", "test/error", "size/layer1", "size/layer2"} <= \
        set(trainer.callback_metrics)
    assert float(trainer.callback_metrics["val/error"]) == module.last_metrics["val/error"]
    summary, _ = run(cfg, tmp_path / "run")
    assert summary["stopped_by"] == "early_stopping" and summary["epochs"] < 20  # not the 100-epoch budget
    rows = pd.read_csv(next((tmp_path / "run").glob("logs/version_*/metrics.csv")))
    assert rows["val/error"].notna().sum() == round(summary["epochs"])  # the CSV still has every validation


def test_callbacks_from_the_config_run_beside_npnns_own(tmp_path):
    checkpoint = "{_target_: pytorch_lightning.callbacks.ModelCheckpoint, monitor: val/ce, filename: kept}"
    cfg = compose("dataset=synthetic", "trainer.max_epochs=2", "callbacks=best_checkpoint",
                  f"+trainer.callbacks=[{checkpoint}]", *QUIET)
    trainer, module, datamodule = build(cfg, tmp_path)
    names = [type(cb).__name__ for cb in trainer.callbacks]
    assert "RewindProtocol" in names and "StopOnSignal" in names and names.count("ModelCheckpoint") == 2
    assert "LastCheckpoint" in names  # npnn's own checkpoints/last.ckpt, and the two added
    run(cfg, tmp_path / "run")
    best = read_checkpoint(tmp_path / "run" / "checkpoints" / "best.ckpt")  # the monitored one, where last.ckpt is
    assert (tmp_path / "run" / "checkpoints" / "kept.ckpt").is_file() and \
        (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()
    monitored = [v for k, v in best["callbacks"].items() if "'monitor': 'val/error'" in k]
    assert monitored and monitored[0]["best_model_score"] is not None
    with pytest.raises(ConfigError, match=r"callbacks.bad must be a callback's config with a _target_"):
        build(compose("dataset=synthetic", "+callbacks.bad=3", *QUIET), tmp_path / "other")
    with pytest.raises(ConfigError, match="not a Lightning Callback"):
        build(compose("dataset=synthetic", "+callbacks.bad={_target_: collections.OrderedDict}", *QUIET),
              tmp_path / "other")


def test_tensorboard_logger_writes_events_beside_the_csv_and_the_full_config(tmp_path):
    summary, _ = run(compose("dataset=synthetic", "trainer.max_epochs=2", "logger=tensorboard", *QUIET), tmp_path)
    assert list((tmp_path / "tensorboard").glob("version_0/events.out.tfevents.*"))
    import yaml

    hparams = yaml.safe_load(next((tmp_path / "logs").glob("version_*/hparams.yaml")).read_text())
    assert hparams["optimizer"]["alpha_phi"] == compose("dataset=synthetic").optimizer.alpha_phi
    assert hparams["seed"] == 0 and hparams["final"]["hidden_sizes"] == summary["hidden_sizes"]


# -------------------------------------------------------------- entry points
@pytest.mark.parametrize("command", ["npnn-train", "npnn-plot", "npnn-sweeps", "npnn-figures", "npnn-export",
                                     "npnn-predict"])
def test_entry_points_are_installed(command):
    path = shutil.which(command)
    assert path is not None, f"{command} is not on PATH: pip install -e . installs it"
    out = subprocess.run([path, "--help"], capture_output=True, text=True, cwd="/", timeout=120)
    assert out.returncode == 0 and out.stdout.strip(), out.stderr


def test_python_m_npnn_runs_the_app(tmp_path):
    out = subprocess.run([sys.executable, "-m", "npnn", "dataset=synthetic", "--cfg", "job"], capture_output=True,
                         text=True, cwd="/")
    assert out.returncode == 0 and "load_synthetic" in out.stdout, out.stderr
    library = subprocess.run([sys.executable, "-m", "npnn.train"], capture_output=True, text=True, cwd="/")
    assert library.returncode == 1 and "python -m npnn" in library.stderr


def test_predict_reads_a_tensors_runs_features_by_position(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 3))
    np.savez(tmp_path / "d.npz", x=x, y=(x[:, 0] * x[:, 1] > 0).astype(int))
    run(compose("dataset=tensors", f"dataset.path={tmp_path / 'd.npz'}", "trainer.max_epochs=5", *QUIET),
        tmp_path / "run")
    assert json.loads((tmp_path / "run" / MODEL_JSON).read_text())["features"] is None
    pd.DataFrame(x[:20], columns=["first", "second", "third"]).to_csv(tmp_path / "x.csv", index=False)
    out = subprocess.run([sys.executable, "-m", "npnn.predict", str(tmp_path / "run"), "--input",
                          str(tmp_path / "x.csv")], capture_output=True, text=True, check=True)
    labels = pd.read_csv(__import__("io").StringIO(out.stdout))["prediction"].to_numpy()
    assert np.array_equal(labels, npnn.load(tmp_path / "run").predict(x[:20]))
