"""Nonparametric networks as a scikit-learn estimator: ``NonparametricClassifier().fit(X, y).predict(X)``.

The estimator trains through the same code as ``python train.py dataset=csv``: it composes the run's
config (``dataset=tensors``, whose settings are derived from the data: README, Your own data), hands
the arrays to :func:`npnn.train.run` and keeps the final network. Growth, AdaRad and the rewind
protocol are the paper's; the width is what the run chose (``hidden_sizes_``).
"""
from __future__ import annotations

import contextlib
import copy
import logging
import math
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, column_or_1d, validate_data

__all__ = ["NonparametricClassifier"]

QUIET_LOGGERS = ("pytorch_lightning", "lightning_fabric", "lightning", "npnn")
NO_CHECKPOINTS = 840 * 10**12  # checkpoint_every_steps never reached (840: every steps_per_call divides it)


class NonparametricClassifier(ClassifierMixin, BaseEstimator):
    """A classifier whose hidden layers choose their own width (Philipp & Carbonell, ICLR 2017).

    Every hidden layer starts with ``start_units`` units and gains one on a schedule, while AdaRad's
    fan-in shrinkage (strength ``lam``) removes units that do not pay for their weights; the rewind
    protocol of section 7.4 then prunes, fits with ``lam = 0`` and anneals the step size, reading the
    validation error only. Settings left ``"auto"`` are derived from the number of training rows as for
    ``dataset=csv`` (:func:`npnn.data.tabular.auto_settings`).

    Parameters:
        lam: the fan-in penalty lambda; ``"auto"``: ``1 / |D|``.
        hidden_layers: the number of hidden layers (their widths are learned).
        start_units: units per hidden layer at the start (Table 3: 10).
        alpha_phi: AdaRad's angular step size; ``"auto"``: ``min(10, steps an epoch / 2)``.
        batch_size: ``"auto"`` or examples per step.
        max_epochs: a budget in epochs (``None``: the protocol ends the run).
        validation_fraction: the share of ``X`` held out to pick the network, unless ``fit`` gets ``eval_set``.
        random_state: the seed of the split, the initial weights, the batches and the growth (an int: identical refits).
        overrides: further config overrides, as on the command line (e.g. ``["dataset.patience=20"]``).
        run_dir: keep the run's records there (``metrics.csv``, ``summary.json``, checkpoints; each ``fit``
            replaces the last one's); ``None``: a temporary directory without checkpoints, deleted after ``fit``.
        verbose: show the run's log and Lightning's messages.

    Fitted attributes: ``classes_``, ``n_features_in_`` (``feature_names_in_`` for a DataFrame),
    ``hidden_sizes_``, ``history_`` (epoch, hidden sizes and validation error at each validation),
    ``summary_`` (the run's ``summary.json``), ``net_`` (the trained :class:`npnn.NonparametricMLP`, eval mode),
    ``mean_`` and ``scale_`` (the standardisation of the training rows).
    """

    def __init__(self, lam: float | str = "auto", hidden_layers: int = 2, start_units: int = 10,
                 alpha_phi: float | str = "auto", batch_size: int | str = "auto", max_epochs: int | None = None,
                 validation_fraction: float = 0.2, random_state: int | np.random.RandomState | None = None,
                 overrides: Sequence[str] = (), run_dir: str | None = None, verbose: bool = False) -> None:
        self.lam = lam
        self.hidden_layers = hidden_layers
        self.start_units = start_units
        self.alpha_phi = alpha_phi
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.validation_fraction = validation_fraction
        self.random_state = random_state
        self.overrides = overrides
        self.run_dir = run_dir
        self.verbose = verbose

    # ---------------------------------------------------------------- fit
    def fit(self, X, y, eval_set: tuple[Any, Any] | None = None) -> NonparametricClassifier:
        """Train on ``X``, ``y``; validate on ``eval_set=(X_val, y_val)`` or a stratified ``validation_fraction``."""
        from npnn.config import compose
        from npnn.data.tabular import make_splits
        from npnn.train import run

        X, y = validate_data(self, X, y, dtype=[np.float64, np.float32])
        check_classification_targets(y)
        classes = np.unique(y)
        if len(classes) < 2:
            raise ValueError(f"y holds one class only ({classes[0]!r}): a classifier needs at least 2 classes")
        seed = int(check_random_state(self.random_state).randint(np.iinfo(np.int32).max))
        if eval_set is not None:
            if not (isinstance(eval_set, (tuple, list)) and len(eval_set) == 2):
                raise ValueError("eval_set must be a pair (X_val, y_val)")
            X_val = validate_data(self, eval_set[0], reset=False, dtype=[np.float64, np.float32])
            y_val = column_or_1d(eval_set[1], warn=True)
            if len(y_val) != len(X_val):
                raise ValueError(f"eval_set: X_val has {len(X_val)} rows and y_val {len(y_val)}")
            X_train, y_train = X, y
        else:
            fraction = self.validation_fraction
            if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
                raise ValueError(f"validation_fraction must be in (0, 1), got {fraction!r}; or pass eval_set")
            n_val = max(1, int(math.ceil(fraction * len(y))))
            if len(y) - n_val < 1:
                raise ValueError(f"{len(y)} samples: too few to hold out validation rows (n_samples = {len(y)})")
            _, counts = np.unique(y, return_counts=True)
            stratify = y if counts.min() >= 2 and n_val >= len(classes) else None
            X_train, X_val, y_train, y_val = train_test_split(X, y, test_size=n_val, random_state=seed,
                                                              stratify=stratify)
        empty = np.zeros((0, X.shape[1]))
        splits = make_splits(X_train, y_train, X_val, y_val, empty, y_train[:0], classes=classes,
                             feature_names=[str(f) for f in getattr(self, "feature_names_in_", range(X.shape[1]))],
                             name="fit", where="X")
        cfg = compose(*self._overrides(seed))
        keep = self.run_dir is not None
        run_dir = Path(self.run_dir) if keep else Path(tempfile.mkdtemp(prefix="npnn-fit-"))
        if keep:  # a refit (and each clone of a search) replaces the run in run_dir
            cfg.overwrite = True
        else:  # the temporary run is deleted after fit: no checkpoint at every validation (a third of the CPU time)
            cfg.checkpoint_every_steps = NO_CHECKPOINTS
        try:
            with self._quiet(), _own_random_state():
                summary, module = run(cfg, run_dir, splits=splits)
            self.history_ = _history(run_dir)
        finally:
            if not keep:
                shutil.rmtree(run_dir, ignore_errors=True)
        self.net_ = module.net.cpu().eval()
        self.classes_ = classes
        self.mean_ = np.asarray(splits.feature_mean)
        self.scale_ = np.asarray(splits.feature_std)
        self.hidden_sizes_ = list(self.net_.hidden_sizes)
        self.summary_ = summary
        if summary.get("stopped_by") == "chance_level" or not summary["val_error"] < _majority_error(y_val):
            warnings.warn(f"the network's validation error ({100 * summary['val_error']:.1f}%) is no better than "
                          f"always predicting the majority class: it learned nothing usable (see summary_)",
                          ConvergenceWarning, stacklevel=2)
        return self

    def _overrides(self, seed: int) -> list[str]:
        def value(name: str, v: Any, kind: type | tuple, auto: bool = False) -> str:
            if auto and v == "auto":
                return "auto"
            if isinstance(v, bool) or not isinstance(v, kind):
                raise ValueError(f"{name} must be {'auto or ' if auto else ''}a number, got {v!r}")
            return repr(v)

        if not isinstance(self.overrides, (list, tuple)) or not all(isinstance(o, str) for o in self.overrides):
            raise ValueError(f"overrides must be a list of config overrides such as 'dataset.patience=20', "
                             f"got {self.overrides!r}")
        out = ["dataset=tensors", f"seed={seed}", f"lambda={value('lam', self.lam, (int, float), auto=True)}",
               f"dataset.hidden_layers={value('hidden_layers', self.hidden_layers, int)}",
               f"model.start_units={value('start_units', self.start_units, int)}",
               f"dataset.alpha_phi={value('alpha_phi', self.alpha_phi, (int, float), auto=True)}",
               f"dataset.batch_size={value('batch_size', self.batch_size, int, auto=True)}",
               "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
               "divergence.max_final_val_error=null"]  # no better than the majority class: a warning, not an error
        if self.max_epochs is not None:
            out.append(f"trainer.max_epochs={value('max_epochs', self.max_epochs, int)}")
        return out + list(self.overrides)

    @contextlib.contextmanager
    def _quiet(self):
        if self.verbose:
            yield
            return
        loggers = [logging.getLogger(name) for name in QUIET_LOGGERS]
        levels = [lg.level for lg in loggers]
        try:
            for lg in loggers:
                lg.setLevel(logging.WARNING)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                yield
        finally:
            for lg, level in zip(loggers, levels):
                lg.setLevel(level)

    # ------------------------------------------------------------ predict
    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities, one column per entry of ``classes_``."""
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=np.float64)
        x = torch.from_numpy((X - self.mean_) / self.scale_)
        net = copy.deepcopy(self.net_).double()  # float64: a row's output does not depend on the rows beside it
        with torch.no_grad():
            out = [torch.softmax(net(x[i:i + 65536]), dim=1) for i in range(0, len(x), 65536)]
        return torch.cat(out).numpy() if out else np.zeros((0, len(self.classes_)))

    def predict(self, X) -> np.ndarray:
        """The most probable class of each row, as a label of ``classes_``."""
        proba = self.predict_proba(X)
        return self.classes_[np.argmax(proba, axis=1)]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.non_deterministic = self.random_state is None
        return tags


@contextlib.contextmanager
def _own_random_state():
    """The run seeds Python's, NumPy's and torch's global generators (``seed_everything``): give them back."""
    import random

    states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])


def _majority_error(y: np.ndarray) -> float:
    _, counts = np.unique(y, return_counts=True)
    return 1.0 - counts.max() / len(y) if len(y) else math.inf


def _history(run_dir: Path) -> dict[str, list]:
    """Epoch, hidden sizes and validation error at each validation, from the run's ``metrics.csv``."""
    import pandas as pd

    files = sorted(run_dir.glob("logs/version_*/metrics.csv"))
    if not files:
        return {"epoch": [], "hidden_sizes": [], "val_error": []}
    frame = pd.read_csv(files[-1])
    frame = frame[frame["val/error"].notna()] if "val/error" in frame else frame.iloc[:0]
    layers = sorted((c for c in frame.columns if c.startswith("size/layer")), key=lambda c: int(c[10:]))
    return {"epoch": frame["epoch_float"].tolist(),
            "hidden_sizes": [[int(v) for v in row] for row in frame[layers].itertuples(index=False)],
            "val_error": frame["val/error"].tolist()}
