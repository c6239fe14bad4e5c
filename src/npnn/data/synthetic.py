"""A small synthetic problem for tests and quick runs: XOR of the signs of two features."""
from __future__ import annotations

import torch

from npnn.data.loaders import Splits

__all__ = ["load_synthetic"]


def load_synthetic(n_train: int = 2000, n_val: int = 500, n_test: int = 500, num_features: int = 6,
                   noise: float = 0.0, seed: int = 0) -> Splits:
    """``y = [x_0 x_1 > 0]`` on Gaussian features (not linearly separable), optionally with label noise."""
    sizes = (int(n_train), int(n_val), int(n_test))
    if min(sizes) < 1 or num_features < 2:
        raise ValueError(f"synthetic data needs positive split sizes and >= 2 features, got {sizes}, {num_features}")
    g = torch.Generator().manual_seed(int(seed))
    n = sum(sizes)
    x = torch.randn(n, int(num_features), generator=g)
    y = (x[:, 0] * x[:, 1] > 0).long()
    flip = torch.rand(n, generator=g) < noise
    y = torch.where(flip, 1 - y, y)
    a, b = sizes[0], sizes[0] + sizes[1]
    return Splits(x[:a], y[:a], x[a:b], y[a:b], x[b:], y[b:], num_classes=2, name="synthetic")
