"""The network a run ends with, as files, and back.

Every run writes its final network beside ``summary.json``:

* ``model.safetensors``: the weights and the norms' statistics (tensors only: loading it runs no code);
* ``model.json``: its shape and norm, the feature standardisation, the class labels, the errors and the
  config that made it.

:func:`load` reads them back as a :class:`TrainedNetwork`: an eval-mode ``nn.Module`` that takes raw
features (the standardisation is inside) and returns logits, with ``predict`` and ``predict_proba``.
:func:`to_sequential` folds it into a plain ``nn.Sequential`` of ``Linear`` and ``ReLU``
(``python -m npnn.export``).
"""
from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from npnn.nn import CapNorm, NonparametricMLP

__all__ = ["MODEL_FILE", "MODEL_JSON", "ModelFileError", "TrainedNetwork", "save_model", "load", "to_sequential"]

MODEL_FILE, MODEL_JSON = "model.safetensors", "model.json"
FORMAT = 1


class ModelFileError(ValueError):
    """A model file that is missing, damaged or not npnn's; the message names the file and the fix."""


def save_model(run_dir: str | Path, net: NonparametricMLP, *, classes: Sequence[Any] | None = None,
               feature_names: Sequence[str] | None = None, mean: Sequence[float] | None = None,
               std: Sequence[float] | None = None, info: dict[str, Any] | None = None) -> Path:
    """Write ``net`` as ``model.safetensors`` and ``model.json`` in ``run_dir``; returns the weights' path.

    ``mean`` and ``std``: the standardisation the training data had (``x -> (x - mean) / std``), None for
    none; ``classes``: the label of each class index (default ``0 .. K-1``); ``info``: more of the run's record
    (errors, config), stored as it is.
    """
    from safetensors.torch import save_file

    from npnn.record import write_atomic

    run_dir = Path(run_dir)
    tensors = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items() if isinstance(v, Tensor)}
    record = {
        "format": FORMAT,
        "network": net.config(),
        "features": None if feature_names is None else [str(f) for f in feature_names],
        "classes": list(range(net.out_features)) if classes is None else list(classes),
        "standardize": None if mean is None else {"mean": [float(m) for m in mean], "std": [float(s) for s in std]},
        **(info or {}),
    }
    path = run_dir / MODEL_FILE
    partial = path.with_name(path.name + ".partial")
    save_file(tensors, str(partial), metadata={"npnn_format": str(FORMAT)})
    partial.replace(path)
    write_atomic(run_dir / MODEL_JSON, json.dumps(record, indent=1, default=str))
    return path


class TrainedNetwork(nn.Module):
    """A trained network for use: raw features in, logits out (eval mode, no gradients needed).

    ``forward(x)`` standardises ``x`` as the training data was (in float64, as the loaders do), then runs the
    network. :meth:`predict` and :meth:`predict_proba` take a NumPy array, a pandas DataFrame (its columns
    are picked by name) or a tensor and give back the user's class labels and their probabilities.

    Attributes: ``net`` (the :class:`~npnn.nn.NonparametricMLP`), ``classes``, ``feature_names`` (None where
    the data had no column names), ``hidden_sizes`` and ``info`` (``model.json``).
    """

    def __init__(self, net: NonparametricMLP, classes: Sequence[Any], feature_names: Sequence[str] | None = None,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 info: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.net = net.eval()
        d = net.in_features
        self.register_buffer("mean", torch.zeros(d, dtype=torch.float64) if mean is None else
                             torch.tensor(list(mean), dtype=torch.float64))
        self.register_buffer("std", torch.ones(d, dtype=torch.float64) if std is None else
                             torch.tensor(list(std), dtype=torch.float64))
        self.classes = np.asarray(list(classes), dtype=object if any(isinstance(c, str) for c in classes) else None)
        self.feature_names = None if feature_names is None else [str(f) for f in feature_names]
        self.info = dict(info or {})
        self.requires_grad_(False)
        self.eval()

    @property
    def hidden_sizes(self) -> list[int]:
        return self.net.hidden_sizes

    def forward(self, x: Tensor) -> Tensor:
        dtype = self.net.linears[0].weight.dtype
        return self.net(((x.to(torch.float64) - self.mean) / self.std).to(dtype))

    def features(self, X: Any) -> Tensor:
        """``X`` as a float64 tensor of shape (rows, features): a DataFrame's columns by name, in the network's
        order; an array's as they are. A missing column, a wrong width or NaN raises a ``ValueError``."""
        names = self.feature_names
        if hasattr(X, "columns") and hasattr(X, "to_numpy"):  # pandas
            columns = [str(c) for c in X.columns]
            if names is not None:
                missing = [f for f in names if f not in columns]
                if missing:
                    raise ValueError(f"the data has no column(s) {missing[:8]}{' ...' if len(missing) > 8 else ''}; "
                                     f"the network was trained on {len(names)} features: {names[:8]}"
                                     f"{' ...' if len(names) > 8 else ''}")
                X = X[names] if columns != names else X
            X = X.to_numpy(dtype=np.float64)
        x = X.to(torch.float64) if isinstance(X, Tensor) else torch.from_numpy(np.array(X, dtype=np.float64))
        if x.dim() == 1:
            x = x.unsqueeze(0)
        if x.dim() != 2 or x.shape[1] != self.net.in_features:
            raise ValueError(f"the network takes rows of {self.net.in_features} features, got shape {tuple(x.shape)}")
        bad = ~torch.isfinite(x)
        if bad.any():
            columns = bad.any(0).nonzero().flatten().tolist()
            named = [names[j] if names else str(j) for j in columns[:8]]
            raise ValueError(f"the data holds {int(bad.sum())} missing (NaN) or infinite values, in column(s) "
                             f"{named}: fill or drop those rows first")
        return x

    @torch.no_grad()
    def predict_proba(self, X: Any, batch_size: int = 65_536) -> np.ndarray:
        """Class probabilities (rows, classes), in the order of ``classes``."""
        x = self.features(X)
        out = [torch.softmax(self(x[i:i + batch_size]).to(torch.float64), dim=1) for i in range(0, len(x), batch_size)]
        return torch.cat(out).numpy() if out else np.zeros((0, len(self.classes)))

    def predict(self, X: Any) -> np.ndarray:
        """The most probable class of each row, as the user's label."""
        return self.classes[np.argmax(self.predict_proba(X), axis=1)]

    def extra_repr(self) -> str:
        return f"hidden_sizes={self.hidden_sizes}, classes={len(self.classes)}"


def _model_paths(path: str | Path) -> tuple[Path, Path]:
    path = Path(path).expanduser()
    if path.is_dir():
        weights, record = path / MODEL_FILE, path / MODEL_JSON
    elif path.suffix == ".json":
        weights, record = path.with_suffix(".safetensors"), path
    else:
        weights, record = path, path.with_suffix(".json")
    if not path.exists():
        raise ModelFileError(f"{path}: no such file or run directory; give a run directory or its {MODEL_FILE}")
    for file in (weights, record):
        if not file.is_file():
            raise ModelFileError(f"{file} is missing: a run writes {MODEL_FILE} and {MODEL_JSON} when it ends by its "
                                 f"protocol or budget. A run still going or stopped by a signal has only "
                                 f"checkpoints/last.ckpt: resume it to its end; one that failed (its summary.json "
                                 f"says why) has no model to use (README, Use a trained network)")
    return weights, record


def load(path: str | Path, map_location: str | torch.device = "cpu") -> TrainedNetwork:
    """The trained network of a run directory, or of its ``model.safetensors`` / ``model.json``."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    weights, record_file = _model_paths(path)
    try:
        record = json.loads(record_file.read_text())
        config = record["network"]
    except (ValueError, KeyError, TypeError) as err:
        raise ModelFileError(f"{record_file} is not an npnn model record ({type(err).__name__}: {err})") from None
    if record.get("format") != FORMAT:
        raise ModelFileError(f"{record_file} has model format {record.get('format')!r}; this npnn reads {FORMAT}")
    try:
        tensors = load_file(str(weights), device=str(map_location))
    except (SafetensorError, OSError, ValueError) as err:
        raise ModelFileError(f"cannot read {weights} ({type(err).__name__}: {err}): it is truncated or not a "
                             f"safetensors file") from None
    net = NonparametricMLP(**config)
    found = NonparametricMLP.hidden_sizes_in(tensors)
    if found != list(config["hidden_sizes"]):
        raise ModelFileError(f"{weights} holds hidden sizes {found}, {record_file} says {config['hidden_sizes']}: "
                             f"the two files come from different runs")
    result = net.load_state_dict(tensors, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("_extra_state")]
    if missing or result.unexpected_keys:
        raise ModelFileError(f"{weights} does not fit the network of {record_file}: missing {missing}, "
                             f"unexpected {result.unexpected_keys}")
    if any(isinstance(norm, CapNorm) and norm.eval_stats == "batch" for norm in net.norms):
        warnings.warn(f"{record_file}: this network's CapNorm evaluates with each batch's own statistics "
                      f"(capnorm_eval_stats=batch): a prediction depends on the rows predicted with it, and a single "
                      f"row gets all-zero logits", stacklevel=2)
    scale = record.get("standardize") or {}
    return TrainedNetwork(net.to(map_location), record["classes"], record.get("features"), scale.get("mean"),
                          scale.get("std"), info=record).to(map_location)


@torch.no_grad()
def to_sequential(model: TrainedNetwork, dtype: torch.dtype = torch.float32) -> nn.Sequential:
    """The same function as a plain ``nn.Sequential`` of ``Linear`` and ``ReLU``: raw features in, logits out.

    The standardisation is folded into the first ``Linear``, and each norm's evaluation map into the
    ``Linear`` before it (in float64): CapNorm's ``(z - mu |w|) / max(sigma |w|, 1)``, with its statistics per
    unit of fan-in length (:class:`~npnn.nn.CapNorm`), and BatchNorm's ``(z - mu) / sqrt(var + eps) g + b``.
    A CapNorm that evaluates with each batch's own statistics (``capnorm_eval_stats=batch``) has no fixed
    function, and is refused.
    """
    net = model.net
    layers: list[nn.Module] = []
    for l, lin in enumerate(net.linears):
        w = lin.weight.detach().to(torch.float64).cpu()
        b = torch.zeros(w.shape[0], dtype=torch.float64)
        if l == 0:  # z = W (x - mean) / std
            w = w / model.std.cpu()
            b = b - w @ model.mean.cpu()
        norm = net.norms[l] if l < len(net.norms) else None
        if isinstance(norm, CapNorm):
            if norm.eval_stats != "running":
                raise ValueError("this network's CapNorm evaluates with each batch's own statistics "
                                 "(model.capnorm_eval_stats=batch): a row's output depends on the rows beside it, "
                                 "so there is no fixed function to export")
            length = lin.weight.detach().to(torch.float64).cpu().norm(dim=1)
            mean = norm.running_mean.to(torch.float64).cpu() * length
            scale = (norm.running_var.to(torch.float64).cpu() * length.square()).clamp_min(1.0).sqrt()
            w, b = w / scale[:, None], (b - mean) / scale
        elif isinstance(norm, nn.BatchNorm1d):
            scale = (norm.running_var.to(torch.float64).cpu() + norm.eps).sqrt()
            gain = norm.weight.detach().to(torch.float64).cpu() if norm.affine else torch.ones_like(scale)
            shift = norm.bias.detach().to(torch.float64).cpu() if norm.affine else torch.zeros_like(scale)
            w = w * (gain / scale)[:, None]
            b = (b - norm.running_mean.to(torch.float64).cpu()) * gain / scale + shift
        linear = nn.Linear(w.shape[1], w.shape[0], dtype=dtype)
        linear.weight.copy_(w.to(dtype))
        linear.bias.copy_(b.to(dtype))
        layers.append(linear)
        if l < len(net.linears) - 1:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers).eval()
