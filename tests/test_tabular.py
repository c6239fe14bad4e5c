"""Your own data: dataset=csv / tensors, the settings derived from |D|, bad input, and the scikit-learn estimator."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf
from sklearn.exceptions import ConvergenceWarning

from npnn.config import compose
from npnn.data.tabular import DataError, auto_settings, load_csv, load_tensors
from npnn.runs import holds_run
from npnn.train import main

ROOT = Path(__file__).resolve().parents[1]
QUIET = ["trainer.enable_progress_bar=false", "logger=none"]
FAST = "dataset.patience=20"  # epochs (derived: 100 growth intervals); the other settings follow it


def table(n: int = 400, seed: int = 0, labels=("cat", "dog")) -> pd.DataFrame:
    """Two informative features (the label is the sign of their product), a noise feature, string labels."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3)) * [1.0, 2.0, 5.0] + [0.0, 3.0, -7.0]
    y = np.where((x[:, 0]) * (x[:, 1] - 3.0) > 0, labels[0], labels[1])
    return pd.DataFrame({"a": x[:, 0], "b": x[:, 1], "noise": x[:, 2], "label": y})


def csv_config(path: Path, *overrides: str):
    return compose("dataset=csv", f"dataset.path={path}", "dataset.target=label", *QUIET, *overrides)


# -------------------------------------------------------------- loading
def test_csv_maps_labels_standardises_with_training_statistics_and_splits_by_a_fixed_seed(tmp_path):
    frame = table(500)
    frame.to_csv(tmp_path / "t.csv", index=False)
    splits = load_csv(str(tmp_path / "t.csv"), "label")
    assert splits.classes == ["cat", "dog"] and splits.feature_names == ["a", "b", "noise"]
    assert splits.sizes == (300, 100, 100)  # 20% validation, 20% test
    assert torch.allclose(splits.x_train.mean(0), torch.zeros(3), atol=1e-5)
    assert torch.allclose(splits.x_train.std(0), torch.ones(3), atol=1e-5)
    assert not torch.allclose(splits.x_val.mean(0), torch.zeros(3), atol=1e-3)  # the training rows' statistics only
    raw = frame[["a", "b", "noise"]].to_numpy()
    mean, std = np.array(splits.feature_mean), np.array(splits.feature_std)
    rows = {tuple(np.round(r, 4)) for r in raw}
    restored = splits.x_test.numpy() * std + mean  # every test row is a row of the file, scaled as recorded
    assert all(tuple(np.round(r, 4)) in rows for r in restored)
    labels = np.array(splits.classes)[splits.y_test.numpy()]
    by_row = {tuple(np.round(r, 4)): l for r, l in zip(raw, frame["label"])}
    assert [by_row[tuple(np.round(r, 4))] for r in restored] == labels.tolist()
    again = load_csv(str(tmp_path / "t.csv"), "label")
    assert torch.equal(again.x_val, splits.x_val)  # the same split every time
    other = load_csv(str(tmp_path / "t.csv"), "label", split_seed=1)
    assert not torch.equal(other.x_val, splits.x_val)


def test_csv_takes_a_feature_list_and_separate_validation_and_test_files(tmp_path):
    table(300, seed=0).to_csv(tmp_path / "train.csv", index=False)
    table(80, seed=1).to_csv(tmp_path / "val.csv", index=False)
    table(50, seed=2).to_csv(tmp_path / "test.csv", index=False)
    splits = load_csv(str(tmp_path / "train.csv"), "label", features=["b", "a"], val_path=str(tmp_path / "val.csv"),
                      test_path=str(tmp_path / "test.csv"))
    assert splits.sizes == (300, 80, 50) and splits.feature_names == ["b", "a"] and splits.num_features == 2


def test_integer_labels_and_parquet(tmp_path):
    frame = table(200, labels=(7, 3))
    frame.to_parquet(tmp_path / "t.parquet")
    splits = load_csv(str(tmp_path / "t.parquet"), "label", test_fraction=0.0)
    assert splits.classes == [3, 7] and splits.sizes == (160, 40, 0)


def test_tensors_from_pt_and_npz(tmp_path):
    x, y = torch.randn(200, 4), torch.randint(0, 3, (200,))
    torch.save({"x": x, "y": y}, tmp_path / "d.pt")
    np.savez(tmp_path / "d.npz", x=x.numpy(), y=y.numpy())
    a, b = load_tensors(str(tmp_path / "d.pt")), load_tensors(str(tmp_path / "d.npz"))
    assert a.classes == [0, 1, 2] and a.sizes == (120, 40, 40)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)


# --------------------------------------------------------- the defaults
@pytest.mark.parametrize("rows,paper", [
    (800_000, dict(batch_size=1000, growth_every=0.1, val_every=0.1, patience=10, anneal_patience=0.5,
                   alpha_r_lambda=0.2, alpha_phi=10)),  # poker (Table 3, 7.4.2)
    (50_000, dict(batch_size=1000, growth_every=1, val_every=1, patience=100, anneal_patience=5,
                  alpha_r_lambda=0.02)),  # mnist (Table 3, 7.4.1)
])
def test_the_derived_settings_give_the_papers_schedules_back(rows, paper):
    settings = auto_settings(rows)
    assert {k: settings[k] for k in paper} == pytest.approx(paper)


def test_the_derived_settings_shrink_for_small_data_and_follow_what_the_user_set():
    small = auto_settings(300)
    assert small["batch_size"] == 32 and small["val_every"] == 1.0  # at least once an epoch
    assert small["alpha_phi"] < 10  # a batch is a large share of the data: smaller rotations
    assert auto_settings(10)["batch_size"] == 10  # never more than the rows
    mine = auto_settings(300, {"patience": 20, "batch_size": 100})
    assert mine["batch_size"] == 100 and mine["alpha_r_lambda"] == pytest.approx(2 / 20)
    assert mine["max_prune_epochs"] == 40


def test_the_papers_data_sets_keep_their_settings():
    for name in ("poker", "mnist", "convex", "rectangles_images", "synthetic"):
        cfg = compose(f"dataset={name}")
        assert "auto" not in json.dumps(OmegaConf.to_container(cfg.dataset)) and cfg["lambda"] == 1e-6


# ------------------------------------------------------------ a whole run
def test_a_csv_run_records_its_labels_standardisation_and_derived_settings(tmp_path):
    table(600).to_csv(tmp_path / "t.csv", index=False)
    summary = main(csv_config(tmp_path / "t.csv", "logger=csv", FAST), tmp_path / "run")
    assert summary["lambda"] == pytest.approx(1 / 360) and summary["config"]["lambda"] == "auto"
    assert summary["auto_settings"]["dataset.batch_size"] == 32 and summary["stopped_by"] == "protocol"
    assert summary["test_error"] < 0.1  # the sign of a product: a linear model is at 50%
    record = json.loads((tmp_path / "run" / "data.json").read_text())
    assert record["classes"] == ["cat", "dog"] and record["features"] == ["a", "b", "noise"]
    assert record["standardize"]["mean"][2] == pytest.approx(-7.0, abs=0.8)
    # a relaunch of the ended run compares the config as written (auto) and skips it
    skipped = main(csv_config(tmp_path / "t.csv", "logger=csv", FAST, "resume_existing=true"), tmp_path / "run")
    assert skipped["val_error"] == summary["val_error"]


def test_a_resume_refuses_another_data_file_or_changed_data(tmp_path):
    from npnn.runs import CheckpointError
    from npnn.train import ConfigError

    table(600).to_csv(tmp_path / "t.csv", index=False)
    main(csv_config(tmp_path / "t.csv", FAST, "trainer.max_steps=24"), tmp_path / "run")
    ckpt = f"ckpt_path={tmp_path / 'run' / 'checkpoints' / 'last.ckpt'}"
    table(600, seed=5).to_csv(tmp_path / "other.csv", index=False)
    with pytest.raises(CheckpointError, match="dataset.path"):  # not even with resume_changes
        main(compose("dataset=csv", f"dataset.path={tmp_path / 'other.csv'}", "dataset.target=label", *QUIET, FAST,
                     "trainer.max_steps=48", ckpt, "resume_changes=[dataset.path]"), tmp_path / "run")
    table(900).to_csv(tmp_path / "t.csv", index=False)  # the same file name, more rows: other derived settings
    with pytest.raises(CheckpointError,
                       match=r"derived from the data differ .*lambda: checkpoint 0.00277\d*, now 0.00185"):
        main(csv_config(tmp_path / "t.csv", FAST, "trainer.max_steps=48", ckpt), tmp_path / "run")
    with pytest.raises(ConfigError, match=r"dataset.batch_size must be auto or an integer >= 1, got 0"):
        main(csv_config(tmp_path / "t.csv", "dataset.batch_size=0"), tmp_path / "run2")
    with pytest.raises(ConfigError, match=r"dataset.patience must be auto or a number > 0, got 0"):
        main(csv_config(tmp_path / "t.csv", "dataset.patience=0"), tmp_path / "run2")


# -------------------------------------------------------------- bad input
def _bad(tmp_path: Path, name: str, frame: pd.DataFrame | None = None, **files: pd.DataFrame) -> Path:
    if frame is not None:
        frame.to_csv(tmp_path / name, index=False)
    for file, other in files.items():
        other.to_csv(tmp_path / file, index=False)
    return tmp_path / name


def _nan_frame():
    frame = table(200)
    frame.loc[[3, 5, 8], "b"] = np.nan
    frame.loc[11, "a"] = np.inf
    return frame


@pytest.mark.parametrize("case,overrides,message", [
    ("missing file", [], r"dataset.path: no file at .*nothere.csv"),
    ("missing target", ["dataset.target=species"], r"has no target column 'species'; its columns are \['a', 'b', "),
    ("missing feature", ["dataset.features=[a,height]"], r"has no feature column\(s\) \['height'\]"),
    ("non-numeric", [], r"feature column 'colour' of .* is not numeric \(e.g. 'red'\): encode it as numbers"),
    ("nan", [], r"4 missing \(NaN\) or infinite values, in column\(s\) 'a': 1 \(0 NaN\), 'b': 3 \(3 NaN\)"),
    ("one class", [], r"the target has a single class \('cat'\) in the training rows"),
    ("batch", ["dataset.batch_size=500"], r"dataset.batch_size=500 is more than the 120 training rows"),
    ("val columns", ["dataset.val_path=${dataset.path}.val.csv"],
     r"dataset.val_path: .* has other columns than the training file .*: missing \['noise'\]"),
    ("test columns", ["dataset.test_path=${dataset.path}.test.csv"], r"dataset.test_path: .*: extra \['id'\]"),
])
def test_bad_input_is_one_clear_error_before_anything_is_written(case, overrides, message, tmp_path):
    frame = table(200)
    if case == "non-numeric":
        frame["colour"] = np.where(frame["a"] > 0, "red", "blue")
    if case == "nan":
        frame = _nan_frame()
    if case == "one class":
        frame["label"] = "cat"
    path = tmp_path / ("nothere.csv" if case == "missing file" else "t.csv")
    if case != "missing file":
        frame.to_csv(path, index=False)
    if case == "val columns":
        frame.drop(columns="noise").to_csv(f"{path}.val.csv", index=False)
    if case == "test columns":
        frame.assign(id=1).to_csv(f"{path}.test.csv", index=False)
    with pytest.raises(DataError, match=message):
        main(csv_config(path, *overrides), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_the_command_line_says_it_in_one_line_and_writes_no_run_files(tmp_path):
    frame = _nan_frame()
    frame.to_csv(tmp_path / "t.csv", index=False)
    out = subprocess.run([sys.executable, str(ROOT / "train.py"), "dataset=csv", f"dataset.path={tmp_path / 't.csv'}",
                          "dataset.target=label", f"hydra.run.dir={tmp_path / 'run'}"],
                         capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert out.returncode == 1
    assert out.stderr.strip().splitlines()[-1].startswith("npnn: error: dataset.path ")
    assert "Traceback" not in out.stderr
    assert not holds_run(tmp_path / "run")


# ------------------------------------------------------------- the estimator
def test_the_estimator_fits_predicts_labels_and_records_its_width_and_history(tmp_path):
    from npnn import NonparametricClassifier

    frame = table(600, labels=("cat", "dog"))
    X, y = frame[["a", "b", "noise"]], frame["label"]
    clf = NonparametricClassifier(random_state=0, run_dir=str(tmp_path / "run"), overrides=[FAST]).fit(X[:500], y[:500])
    assert list(clf.classes_) == ["cat", "dog"] and clf.n_features_in_ == 3
    assert list(clf.feature_names_in_) == ["a", "b", "noise"]
    assert set(clf.predict(X[500:])) <= {"cat", "dog"} and clf.score(X[500:], y[500:]) > 0.9
    proba = clf.predict_proba(X[500:])
    assert proba.shape == (100, 2) and np.allclose(proba.sum(1), 1)
    assert clf.hidden_sizes_ == clf.summary_["hidden_sizes"] and clf.summary_["stopped_by"] == "protocol"
    history = clf.history_
    assert len(history["epoch"]) == len(history["val_error"]) == len(history["hidden_sizes"]) > 10
    assert history["hidden_sizes"][0] == [10, 10] and np.all(np.diff(history["epoch"]) != 0)
    assert (tmp_path / "run" / "summary.json").is_file()  # the same run record as python train.py
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()  # as python train.py writes it


def test_the_same_random_state_refits_identically_and_eval_set_is_the_validation(tmp_path):
    from npnn import NonparametricClassifier

    frame = table(300)
    X, y = frame[["a", "b", "noise"]].to_numpy(), frame["label"].to_numpy()
    a = NonparametricClassifier(random_state=3, max_epochs=15).fit(X, y)
    b = NonparametricClassifier(random_state=3, max_epochs=15).fit(X, y)
    assert np.array_equal(a.predict_proba(X), b.predict_proba(X)) and a.hidden_sizes_ == b.hidden_sizes_
    c = NonparametricClassifier(random_state=3, max_epochs=15).fit(X[:200], y[:200], eval_set=(X[200:], y[200:]))
    assert c.summary_["val_error"] == pytest.approx(1 - c.score(X[200:], y[200:]), abs=1e-6)
    before = np.random.get_state()[1].copy(), torch.get_rng_state()
    kept = NonparametricClassifier(random_state=3, max_epochs=15, run_dir=str(tmp_path / "run"))
    kept.fit(X, y).fit(X, y)  # a refit replaces the run in run_dir
    assert np.array_equal(kept.predict_proba(X), a.predict_proba(X))
    assert np.array_equal(np.random.get_state()[1], before[0]) and torch.equal(torch.get_rng_state(), before[1])


def test_the_estimator_works_in_pipelines_cross_validation_and_grid_search():
    from sklearn.model_selection import GridSearchCV, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    from npnn import NonparametricClassifier

    frame = table(300)
    X, y = frame[["a", "b", "noise"]].to_numpy(), frame["label"].to_numpy()
    pipe = make_pipeline(FunctionTransformer(np.tanh), NonparametricClassifier(random_state=0, max_epochs=10))
    scores = cross_val_score(pipe, X, y, cv=2)
    assert scores.shape == (2,) and np.all(scores > 0.5)
    search = GridSearchCV(NonparametricClassifier(random_state=0, max_epochs=10), {"lam": ["auto", 1e-2]}, cv=2)
    search.fit(X, y)
    assert search.best_params_["lam"] in ("auto", 1e-2) and hasattr(search.best_estimator_, "hidden_sizes_")


def _sklearn_checks():
    from sklearn.utils.estimator_checks import parametrize_with_checks

    from npnn.sklearn import NonparametricClassifier

    # a budget of 20 epochs: the suite fits ~40 times on small arrays; the protocol's own end takes longer
    return parametrize_with_checks([NonparametricClassifier(max_epochs=20, random_state=0)])


@_sklearn_checks()
def test_scikit_learns_estimator_checks(estimator, check):
    # skipped by scikit-learn itself: check_array_api_input (SCIPY_ARRAY_API unset; npnn takes numpy arrays only)
    check(estimator)


def test_bad_estimator_arguments_name_the_parameter():
    from npnn import NonparametricClassifier

    X, y = np.random.default_rng(0).normal(size=(40, 2)), np.arange(40) % 2
    with pytest.raises(ValueError, match="validation_fraction must be in"):
        NonparametricClassifier(validation_fraction=1.5).fit(X, y)
    with pytest.raises(ValueError, match="lam must be auto or a number"):
        NonparametricClassifier(lam="big").fit(X, y)
    with pytest.raises(ValueError, match="one class"):
        NonparametricClassifier().fit(X, np.zeros(40))
    with pytest.warns(ConvergenceWarning, match="no better than always predicting the majority class"):
        NonparametricClassifier(max_epochs=2, random_state=0).fit(X, y)  # noise: it learns nothing, and says so


@pytest.mark.slow
def test_the_comparison_writes_its_table_and_goes_on_where_it_stopped(tmp_path):
    from npnn.tabular import main as tabular

    out = tmp_path / "tabular"
    tabular(["--datasets", "wine", "--seeds", "1", "--out", str(out)])
    records = json.loads(out.with_suffix(".json").read_text())
    assert [r["method"] for r in records] == ["NP (defaults)", "MLP (defaults)", "MLP (width grid)",
                                             "LogisticRegression", "HistGradientBoosting"]
    assert all(0.8 < r["test_accuracy"] <= 1 and r["cpu_s"] >= 0 for r in records)
    table = out.with_suffix(".md").read_text()
    assert "| wine (142 rows, 1 seeds) | NP (defaults) |" in table
    tabular(["--datasets", "wine", "--seeds", "1", "--out", str(out)])  # launched again: nothing is refitted
    assert json.loads(out.with_suffix(".json").read_text()) == records
