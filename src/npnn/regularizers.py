"""The fan-in and fan-out regularisers of equations 2-3 (for logging the objective).

Weights are in torch's layout ``(d_out, d_in)``: a fan-in is a row, a fan-out a column.
"""
from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor, nn

__all__ = ["omega_in", "omega_out", "objective"]


def _weights(weights: nn.Module | Iterable[Tensor]) -> list[Tensor]:
    if isinstance(weights, nn.Module):
        return [w for w in weights.parameters() if w.dim() == 2]
    return list(weights)


def _omega(weights, lam: float, p: float, dim: int) -> Tensor:
    if not (p >= 1 and math.isfinite(p)):
        raise ValueError(f"the fan-in/fan-out regulariser needs 1 <= p < inf (Theorem 1), got p={p!r}")
    ws = _weights(weights)
    total = sum((torch.linalg.vector_norm(w, ord=p, dim=dim).sum() for w in ws), torch.zeros(()))
    return lam * total


def omega_in(weights: nn.Module | Iterable[Tensor], lam: float, p: float = 2) -> Tensor:
    """Equation 2: ``lam * sum_l sum_j ||fan-in of unit j of layer l||_p`` (rows of every weight)."""
    return _omega(weights, lam, p, dim=1)


def omega_out(weights: nn.Module | Iterable[Tensor], lam: float, p: float = 2) -> Tensor:
    """Equation 3: ``lam * sum_l sum_i ||fan-out of unit i of layer l-1||_p`` (columns of every weight)."""
    return _omega(weights, lam, p, dim=0)


def objective(mean_loss: Tensor | float, weights: nn.Module | Iterable[Tensor], lam: float, p: float = 2) -> Tensor:
    """Equation 1 with the fan-in regulariser: ``(1/|D|) sum e(f(x), y) + Omega_in``."""
    return torch.as_tensor(mean_loss, dtype=torch.float32) + omega_in(weights, lam, p)
