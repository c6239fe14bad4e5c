"""In-memory splits and the batch iterables Lightning trains on.

No per-sample DataLoader work: a batch is ``x[idx], y[idx]`` for a slice ``idx`` of a
random permutation (nanoGPT style).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = ["Splits", "PermutationBatches", "SequentialBatches", "standardize", "scale_pixels"]
PIXEL_MODES = ("unit", "standardize")


@dataclass
class Splits:
    """Train / validation / test tensors of one dataset (features float, labels long)."""

    x_train: Tensor
    y_train: Tensor
    x_val: Tensor
    y_val: Tensor
    x_test: Tensor
    y_test: Tensor
    num_classes: int
    name: str = "data"
    # your own data (npnn.data.tabular): what a prediction needs to map raw features and class indices back
    classes: list[Any] | None = None  # the user's label of each class index
    feature_names: list[str] | None = None
    feature_mean: list[float] | None = None  # the standardisation, from the training rows
    feature_std: list[float] | None = None

    def __post_init__(self) -> None:
        for split in ("train", "val", "test"):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if x.dim() != 2 or y.dim() != 1 or x.shape[0] != y.shape[0]:
                raise ValueError(f"{self.name}: {split} split needs x of shape (n, d) and y of shape (n,), "
                                 f"got {tuple(x.shape)} and {tuple(y.shape)}")
            if y.numel() and (y.dtype != torch.long or int(y.min()) < 0 or int(y.max()) >= self.num_classes):
                raise ValueError(f"{self.name}: {split} labels must be int64 class indices in [0, {self.num_classes}), "
                                 f"got dtype {y.dtype} and range [{y.min().item()}, {y.max().item()}]: the data file "
                                 f"is corrupt or num_classes is wrong")

    @property
    def num_features(self) -> int:
        return self.x_train.shape[1]

    @property
    def sizes(self) -> tuple[int, int, int]:
        return len(self.y_train), len(self.y_val), len(self.y_test)


def standardize(splits: Splits) -> Splits:
    """Standardise every feature with the training split's mean and std (constant features: std 1)."""
    mean = splits.x_train.mean(0)
    std = splits.x_train.std(0)
    std = torch.where(std > 0, std, torch.ones_like(std))
    for split in ("train", "val", "test"):
        setattr(splits, f"x_{split}", (getattr(splits, f"x_{split}") - mean) / std)
    splits.feature_mean, splits.feature_std = _compose(splits, mean.tolist(), std.tolist())
    return splits


def _compose(splits: Splits, mean: list[float], std: list[float]) -> tuple[list[float], list[float]]:
    """The raw features' standardisation after one more ``x -> (x - mean) / std`` (the model file's)."""
    if splits.feature_mean is None:
        return mean, std
    return ([m0 + s0 * m for m0, s0, m in zip(splits.feature_mean, splits.feature_std, mean)],
            [s0 * s for s0, s in zip(splits.feature_std, std)])


def scale_pixels(splits: Splits, mode: str, max_value: float = 255.0) -> Splits:
    """Image preprocessing (paper silent): ``"unit"`` maps pixels to [0, 1] (x / max_value);
    ``"standardize"`` then standardises every pixel with training statistics."""
    if mode not in PIXEL_MODES:
        raise ValueError(f"dataset.loader.pixels must be one of {PIXEL_MODES}, got {mode!r}")
    for split in ("train", "val", "test"):
        setattr(splits, f"x_{split}", getattr(splits, f"x_{split}") / max_value)
    splits.feature_mean, splits.feature_std = _compose(splits, [0.0] * splits.num_features,
                                                       [float(max_value)] * splits.num_features)
    return standardize(splits) if mode == "standardize" else splits


def _check_batch_size(key: str, value) -> None:
    if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        raise ValueError(f"{key} must be an integer >= 1 (examples per batch), got {value!r}")


class PermutationBatches:
    """Every epoch a fresh random permutation of the rows, cut into batches (sampling without replacement),
    handed out in lists of ``steps_per_call`` consecutive batches: one list per call of the training
    step, which makes one optimizer step per batch (README, Benchmarks).

    Resumable: ``state_dict`` holds the generator state at the start of the epoch and the
    number of batches handed out, so a resumed run sees exactly the batches it would have.
    """

    def __init__(self, x: Tensor, y: Tensor, batch_size: int, seed: int, steps_per_call: int = 1) -> None:
        _check_batch_size("dataset.batch_size", batch_size)
        self.x, self.y, self.batch_size, self.steps_per_call = x, y, batch_size, steps_per_call
        self.generator = torch.Generator().manual_seed(int(seed))
        self._epoch_state: Tensor | None = None  # generator state before this epoch's permutation
        self._served = 0
        self._resume: dict | None = None

    @property
    def num_batches(self) -> int:
        """Batches (optimizer steps) an epoch."""
        return math.ceil(len(self.y) / self.batch_size)

    def __len__(self) -> int:
        """Lists (training-step calls) an epoch."""
        return math.ceil(self.num_batches / self.steps_per_call)

    def __iter__(self):
        if self._resume is not None:
            self.generator.set_state(self._resume["epoch_state"])
            start, self._resume = self._resume["served"], None
        else:
            start = 0
        self._epoch_state = self.generator.get_state()
        perm = torch.randperm(len(self.y), generator=self.generator)
        k = self.steps_per_call
        for i in range(start, self.num_batches, k):
            self._served = min(i + k, self.num_batches)  # batches
            idx = [perm[j * self.batch_size:(j + 1) * self.batch_size] for j in range(i, self._served)]
            yield [(self.x.index_select(0, b), self.y.index_select(0, b)) for b in idx]  # 2.5x faster than x[b]
        self._served = 0

    def state_dict(self) -> dict:
        if self._epoch_state is None or self._served in (0, self.num_batches):
            # between epochs: the next epoch draws its permutation from the current generator
            return {"epoch_state": self.generator.get_state(), "served": 0}
        return {"epoch_state": self._epoch_state.clone(), "served": self._served}

    def load_state_dict(self, state: dict) -> None:
        self._resume = {"epoch_state": state["epoch_state"].clone(), "served": int(state["served"])}


class SequentialBatches:
    """The rows in order, in batches (evaluation)."""

    def __init__(self, x: Tensor, y: Tensor, batch_size: int) -> None:
        _check_batch_size("dataset.eval_batch_size", batch_size)
        self.x, self.y, self.batch_size = x, y, batch_size

    def __len__(self) -> int:
        return math.ceil(len(self.y) / self.batch_size)

    def __iter__(self):
        for i in range(len(self)):
            yield (self.x[i * self.batch_size:(i + 1) * self.batch_size],
                   self.y[i * self.batch_size:(i + 1) * self.batch_size])
