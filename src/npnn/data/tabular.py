"""Your own data: a table (CSV, Parquet) or a tensor file (``.pt``, ``.npz``) as :class:`Splits`.

``python train.py dataset=csv dataset.path=my.csv dataset.target=label``. The features are every
other column (or ``dataset.features``); the validation and test rows are ``dataset.val_path`` /
``dataset.test_path``, or fractions of the file drawn with ``dataset.split_seed``. Class labels
of any type map to indices in sorted order; features are standardised with the training rows'
mean and std. Both are recorded in the run (``data.json``), so predictions come back as the
user's labels. Every problem with the data is a :class:`DataError` that names the file and
column, raised before anything is written.

:func:`auto_settings` derives the training settings that the paper fixes per data set (Table 3)
from the number of training rows, for data nobody has tuned them for (README, Your own data).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from npnn.data.loaders import Splits

__all__ = ["DataError", "load_csv", "load_tensors", "make_splits", "auto_settings", "AUTO_KEYS", "read_table"]

class DataError(ValueError):
    """A data file or its content that cannot be trained on; the message names the file, the column and the fix."""


# ------------------------------------------------------------------ reading
def read_table(path: str | Path, what: str = "dataset.path"):
    """A pandas DataFrame from a CSV (pandas' C reader; pyarrow's where installed) or Parquet file."""
    import pandas as pd

    path = Path(path).expanduser()
    if not path.is_file():
        hint = "" if path.parent.is_dir() else f" (nor its folder {path.parent})"
        raise DataError(f"{what}: no file at {path}{hint}: give the path to your table, absolute or relative "
                        f"to the directory you run in")
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            try:
                return pd.read_parquet(path)
            except ImportError:
                raise DataError(f"{what}: {path} is a Parquet file and no Parquet reader is installed: "
                                f"pip install pyarrow, or save the table as CSV") from None
        sep = "\t" if path.suffix.lower() == ".tsv" else ","
        try:
            import pyarrow  # noqa: F401

            return pd.read_csv(path, sep=sep, engine="pyarrow")
        except ImportError:
            return pd.read_csv(path, sep=sep)
    except DataError:
        raise
    except Exception as err:  # pandas' parser errors: a ragged row, a binary file, an empty file
        raise DataError(f"{what}: {path} cannot be read as a table ({type(err).__name__}: {err}); a CSV needs a "
                        f"header row and the same number of fields on every line") from None


def _features_and_target(frame, path: Path, target: str, features: Sequence[str] | None, what: str):
    columns = [str(c) for c in frame.columns]
    frame.columns = columns
    if target not in columns:
        raise DataError(f"{what}: {path} has no target column {target!r}; its columns are {_names(columns)}: "
                        f"set dataset.target to one of them")
    if features is None:
        features = [c for c in columns if c != target]
    else:
        features = [str(f) for f in features]
        missing = [f for f in features if f not in columns]
        if missing:
            raise DataError(f"{what}: {path} has no feature column(s) {missing}; its columns are {_names(columns)}: "
                            f"fix dataset.features")
        if target in features:
            raise DataError(f"{what}: the target {target!r} is also in dataset.features: take it out")
    if not features:
        raise DataError(f"{what}: {path} has no feature columns besides the target {target!r}")
    return frame[features], frame[target], features


def _names(columns: list[str], limit: int = 12) -> str:
    shown = ", ".join(repr(c) for c in columns[:limit])
    return f"[{shown}{', ...' if len(columns) > limit else ''}] ({len(columns)} columns)"


def _numeric(x_frame, path: Path, what: str) -> np.ndarray:
    """The feature columns as float64, or a :class:`DataError` naming the first non-numeric column."""
    import pandas as pd

    for column in x_frame.columns:
        series = x_frame[column]
        if not (pd.api.types.is_numeric_dtype(series) or pd.api.types.is_bool_dtype(series)):
            example = series.dropna().astype(str)
            example = next((v for v in example if _not_a_number(v)), example.iloc[0] if len(example) else "")
            raise DataError(f"{what}: feature column {column!r} of {path} is not numeric (e.g. {example!r}): encode it "
                            f"as numbers first (one-hot columns for categories, e.g. pandas.get_dummies)"
                            + (", or leave it out with dataset.features" if what.startswith("dataset") else ""))
    return x_frame.to_numpy(dtype=np.float64)


def _not_a_number(value: str) -> bool:
    try:
        float(value)
        return False
    except ValueError:
        return True


def _check_finite(x: np.ndarray, columns: Sequence[str], where: str) -> None:
    bad = ~np.isfinite(x)
    if bad.any():
        counts = bad.sum(0)
        worst = [f"{columns[j]!r}: {int(counts[j])} ({int(np.isnan(x[:, j]).sum())} NaN)"
                 for j in np.flatnonzero(counts)[:8]]
        raise DataError(f"{where} holds {int(bad.sum())} missing (NaN) or infinite values, in column(s) "
                        f"{', '.join(worst)}{', ...' if (counts > 0).sum() > 8 else ''}: fill or drop those rows "
                        f"first (e.g. pandas' fillna or dropna)")


# ------------------------------------------------------------------- splits
def make_splits(x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray | None, y_val: np.ndarray | None,
                x_test: np.ndarray | None, y_test: np.ndarray | None, *, feature_names: Sequence[str],
                val_fraction: float = 0.2, test_fraction: float = 0.2, split_seed: int = 0,
                standardize: bool = True, name: str = "data", where: str = "the data",
                classes: Sequence | None = None) -> Splits:
    """Train / validation / test :class:`Splits` from raw feature arrays and labels of any type.

    Missing validation or test arrays are cut from the training rows (``val_fraction``,
    ``test_fraction`` of them, a random permutation seeded by ``split_seed``; ``test_fraction=0``:
    no test rows). Labels map to indices in sorted order (``classes``: that order given); the
    features are standardised with the training rows' mean and std (a constant feature: std 1).
    """
    for key, fraction in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 <= fraction < 1:
            raise DataError(f"dataset.{key} must be a fraction in [0, 1), got {fraction!r}")
    x_train, y_train = np.asarray(x_train, dtype=np.float64), np.asarray(y_train)
    _check_finite(x_train, feature_names, where)
    rng = np.random.default_rng(int(split_seed))
    order = rng.permutation(len(y_train))
    n_test = 0 if x_test is not None else int(round(test_fraction * len(y_train)))
    n_val = 0 if x_val is not None else int(round(val_fraction * len(y_train)))
    if x_val is None and n_val == 0:
        raise DataError(f"{where}: no validation rows: give dataset.val_path, or a dataset.val_fraction > 0 "
                        f"(the protocol picks the network by its validation error)")
    if len(y_train) - n_val - n_test < 1:
        raise DataError(f"{where} has {len(y_train)} rows: too few to split into training, validation and test rows")
    test_idx, val_idx, train_idx = order[:n_test], order[n_test:n_test + n_val], order[n_test + n_val:]
    if x_test is None:
        x_test, y_test = x_train[test_idx], y_train[test_idx]
    if x_val is None:
        x_val, y_val = x_train[val_idx], y_train[val_idx]
    x_train, y_train = x_train[train_idx], y_train[train_idx]

    labels = np.unique(y_train) if classes is None else np.asarray(classes)
    if classes is None and len(labels) < 2:
        raise DataError(f"{where}: the target has a single class ({_plain(labels[0])!r}) in the training rows: "
                        f"a classifier needs at least 2 classes")
    encoded = []
    for split, y in (("validation", y_val), ("test", y_test), ("training", y_train)):
        y = np.asarray(y)
        try:
            index = np.clip(np.searchsorted(labels, y), 0, len(labels) - 1) if len(y) else np.zeros(0, dtype=np.int64)
        except TypeError:
            raise DataError(f"{where}: the {split} rows' labels are of another type ({y.dtype}, e.g. {_plain(y[0])!r}) "
                            f"than the training rows' ({labels.dtype}, e.g. {_plain(labels[0])!r}): write them alike "
                            f"in every file") from None
        unknown = y[labels[index] != y] if len(y) else y
        if len(unknown):
            raise DataError(f"{where}: the {split} rows hold class(es) "
                            f"{sorted({_plain(v) for v in unknown}, key=str)[:5]} "
                            f"that the training rows do not have: a classifier cannot learn them; add such rows to "
                            f"the training data")
        encoded.append(torch.from_numpy(index.astype(np.int64)))
    y_val_t, y_test_t, y_train_t = encoded
    x_val, x_test = np.asarray(x_val, dtype=np.float64), np.asarray(x_test, dtype=np.float64)
    mean = x_train.mean(0) if standardize else np.zeros(x_train.shape[1])
    std = x_train.std(0, ddof=1) if standardize and len(x_train) > 1 else np.ones(x_train.shape[1])
    std = np.where(std > 0, std, 1.0)

    def scaled(x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(((x - mean) / std).astype(np.float32))

    return Splits(scaled(x_train), y_train_t, scaled(x_val), y_val_t, scaled(x_test), y_test_t,
                  num_classes=len(labels), name=name, classes=[_plain(c) for c in labels.tolist()],
                  feature_names=[str(f) for f in feature_names], feature_mean=mean.tolist(), feature_std=std.tolist())


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


# -------------------------------------------------------------------- loaders
def load_csv(path: str, target: str, features: Sequence[str] | None = None, val_path: str | None = None,
             test_path: str | None = None, val_fraction: float = 0.2, test_fraction: float = 0.2,
             split_seed: int = 0, standardize: bool = True) -> Splits:
    """``dataset=csv``: a CSV or Parquet table with a header row, one row an example."""
    if not isinstance(path, str) or not path:
        raise DataError("dataset.path is not set: python train.py dataset=csv dataset.path=my.csv "
                        "dataset.target=<the label column>")
    if not isinstance(target, str) or not target:
        raise DataError(f"dataset.target is not set: name the label column of {path}, e.g. dataset.target=label")
    frame = read_table(path, "dataset.path")
    x_frame, y_series, names = _features_and_target(frame, Path(path), target, features, "dataset.path")
    x = _numeric(x_frame, Path(path), "dataset.path")
    _check_labels(y_series, Path(path))
    parts: dict[str, tuple[np.ndarray, np.ndarray] | tuple[None, None]] = {}
    for key, other in (("val_path", val_path), ("test_path", test_path)):
        if other is None:
            parts[key] = (None, None)
            continue
        other_frame = read_table(other, f"dataset.{key}")
        columns = [str(c) for c in other_frame.columns]
        if set(columns) != set(frame.columns):
            missing = [c for c in frame.columns if c not in columns]
            extra = [c for c in columns if c not in frame.columns]
            raise DataError(f"dataset.{key}: {other} has other columns than the training file {path}: "
                            + "; ".join(s for s in (f"missing {missing}" if missing else "",
                                                    f"extra {extra}" if extra else "") if s)
                            + ": every file needs the same columns")
        ox, oy, _ = _features_and_target(other_frame, Path(other), target, names, f"dataset.{key}")
        ox = _numeric(ox, Path(other), f"dataset.{key}")
        _check_labels(oy, Path(other))
        _check_finite(ox, names, f"dataset.{key} {other}")
        parts[key] = (ox, oy.to_numpy())
    return make_splits(x, y_series.to_numpy(), *parts["val_path"], *parts["test_path"], feature_names=names,
                       val_fraction=val_fraction, test_fraction=test_fraction, split_seed=split_seed,
                       standardize=standardize, name=Path(path).stem, where=f"dataset.path {path}")


def _check_labels(y_series, path: Path) -> None:
    missing = int(y_series.isna().sum())
    if missing:
        raise DataError(f"the target column {y_series.name!r} of {path} has {missing} empty (NaN) value(s): "
                        f"every row needs a label; drop those rows first")


def load_tensors(path: str, target: None = None, features: None = None, val_path: str | None = None,
                 test_path: str | None = None, val_fraction: float = 0.2, test_fraction: float = 0.2,
                 split_seed: int = 0, standardize: bool = True) -> Splits:
    """``dataset=tensors``: a ``.pt`` (``torch.save({"x": ..., "y": ...})``, read with ``weights_only``) or
    ``.npz`` (``numpy.savez(path, x=..., y=...)``) file; ``x`` of shape (rows, features), ``y`` of (rows,)."""
    if not isinstance(path, str) or not path:
        raise DataError("dataset.path is not set: python train.py dataset=tensors dataset.path=my.pt (or .npz, "
                        "holding x and y)")
    for key, value in (("target", target), ("features", features)):
        if value is not None:
            raise DataError(f"dataset.{key}={value!r}: dataset=tensors reads x and y from {path}, it has no columns "
                            f"to name; leave dataset.{key} out, or use dataset=csv for a table")
    x, y = _read_xy(path, "dataset.path")
    parts = {}
    for key, other in (("val_path", val_path), ("test_path", test_path)):
        if other is None:
            parts[key] = (None, None)
            continue
        ox, oy = _read_xy(other, f"dataset.{key}")
        if ox.shape[1] != x.shape[1]:
            raise DataError(f"dataset.{key}: {other} has {ox.shape[1]} features, the training file {path} "
                            f"{x.shape[1]}: every file needs the same features")
        _check_finite(ox, [f"x[:, {j}]" for j in range(x.shape[1])], f"dataset.{key} {other}")
        parts[key] = (ox, oy)
    return make_splits(x, y, *parts["val_path"], *parts["test_path"],
                       feature_names=[f"x{j}" for j in range(x.shape[1])], val_fraction=val_fraction,
                       test_fraction=test_fraction, split_seed=split_seed, standardize=standardize,
                       name=Path(path).stem, where=f"dataset.path {path}")


def _read_xy(path: str, what: str) -> tuple[np.ndarray, np.ndarray]:
    file = Path(path).expanduser()
    if not file.is_file():
        raise DataError(f"{what}: no file at {file}: give the path to a .pt or .npz file holding x and y")
    try:
        if file.suffix == ".npz":
            with np.load(file, allow_pickle=False) as data:
                content = {k: data[k] for k in data.files}
        else:
            content = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:
        raise DataError(f"{what}: {file} cannot be read ({type(err).__name__}: {err}); it must be a .npz "
                        f"(numpy.savez(path, x=..., y=...)) or a .pt of plain tensors (torch.save({{'x': x, "
                        f"'y': y}}, path))") from None
    if not isinstance(content, dict) or "x" not in content or "y" not in content:
        keys = sorted(content) if isinstance(content, dict) else type(content).__name__
        raise DataError(f"{what}: {file} must hold 'x' (features) and 'y' (labels); it holds {keys}")
    x, y = (v.numpy() if isinstance(v, torch.Tensor) else np.asarray(v) for v in (content["x"], content["y"]))
    if x.ndim != 2 or y.ndim != 1 or len(x) != len(y):
        raise DataError(f"{what}: {file}: x must be (rows, features) and y (rows,), got {x.shape} and {y.shape}")
    if not (np.issubdtype(x.dtype, np.number) or x.dtype == bool):
        raise DataError(f"{what}: {file}: x must be numeric, got dtype {x.dtype}")
    return x.astype(np.float64), y


# ------------------------------------------------------------ the defaults
AUTO_KEYS = ("batch_size", "growth_every", "val_every", "patience", "anneal_patience", "alpha_r_lambda",
             "alpha_phi", "adarad_eps", "max_prune_epochs")


def auto_settings(n_train: int, given: dict[str, Any] | None = None) -> dict[str, Any]:
    """The settings the paper tunes per data set (Table 3), derived from ``n_train = |D|`` (README, Your own data).

    The rule is the paper's two schedules written in optimizer steps, which give both back exactly
    from ``|D|`` (poker, 800,000 rows; mnist, 50,000):

    - batch ``|D^t| = min(1000, max(32, ceil(|D| / 20)))`` (Table 3: 1000), never above ``|D|``;
    - one unit added per layer and one validation every ``G = max(50, steps an epoch / 10)`` steps
      (poker: 80, ten times an epoch; mnist: 50, once an epoch); on small data at least once an epoch;
    - patience ``P1 = 100 G`` steps (poker 10 epochs, mnist 100), ``P2 = 5 G`` (0.5 and 5 epochs), and the
      prune stage at most ``2 P1`` (our choice: units trickle out long after the network has settled);
    - ``alpha_r = alpha_r_lambda / lambda`` with ``alpha_r_lambda = 2 / P1`` (in epochs): the shrinkage
      moves every fan-in by a length of 2 over one patience (poker 1/(5 lambda), mnist 1/(50 lambda));
    - AdaRad's ``eps = 1e-8 (|D^t| / |D|)^2``: Table 3's 1e-8 scaled as the loss is (poker's 1.6e-14);
    - ``alpha_phi = min(10, steps an epoch / 2)``: poker's 10 (7.4.2), less where a batch is a large share of
      the data; the gradient of ``batch sum / |D|``, and with it the rotation per step, grows with ``|D^t| / |D|``;
    - ``lambda = 1 / |D|`` (:data:`npnn.data.tabular.auto_lambda`).

    ``given``: values the user set (not ``auto``); the others are derived from them.
    """
    given = {k: v for k, v in (given or {}).items() if v != "auto"}
    for key, value in given.items():
        whole = key == "batch_size"
        if isinstance(value, bool) or not isinstance(value, int if whole else (int, float)) or not value > 0:
            raise ValueError(f"dataset.{key} must be auto or {'an integer >= 1' if whole else 'a number > 0'}, "
                             f"got {value!r}")
    n = int(n_train)
    batch = int(given.get("batch_size", min(1000, max(32, math.ceil(n / 20)), n)))
    steps = math.ceil(n / batch)
    g = max(50, steps / 10)  # steps between additions and validations
    every = min(1.0, _nice(g / steps))  # at most once an epoch for validation (Lightning's val_check_interval)
    growth_every = given.get("growth_every", _nice(g / steps))
    patience = given.get("patience", _nice(100 * g / steps))
    settings = {
        "batch_size": batch,
        "growth_every": growth_every,
        "val_every": given.get("val_every", every),
        "patience": patience,
        "anneal_patience": given.get("anneal_patience", _nice(5 * g / steps)),
        "alpha_r_lambda": given.get("alpha_r_lambda", 2.0 / patience),
        "alpha_phi": given.get("alpha_phi", min(10.0, steps / 2)),
        "adarad_eps": given.get("adarad_eps", 1e-8 * (batch / n) ** 2),
        "max_prune_epochs": given.get("max_prune_epochs", 2 * patience),
    }
    return settings


def auto_lambda(n_train: int) -> float:
    """``lambda = 1 / |D|``: a unit must lower the summed training loss by about one example's loss per unit
    of fan-in length to stay."""
    return 1.0 / int(n_train)


def _nice(epochs: float) -> float:
    """Epochs rounded to 3 significant digits (what the run's record and log show)."""
    return float(f"{epochs:.3g}")
