"""AdaRad and AdaRad-M (paper section 3.3, Algorithm 1; appendix 7.3, Algorithm 2).

Both optimizers treat every parameter as a 2-D weight whose rows are fan-ins
(torch's ``nn.Linear`` layout ``(d_out, d_in)``): one row is the unit of
normalisation, and the l2 fan-in penalty is applied as group shrinkage of rows.

Gradient scale. Algorithm 1 line 8 takes the gradient of
``sum_{(x, y) in D^t} e(f(x), y) / |D|``: the loss the caller backpropagates
must be the *sum* of per-example losses over the mini-batch divided by the
size of the whole training set ``|D|``, not the batch mean. The step sizes of
the paper (``alpha_phi = 30``, ``alpha_r = 1 / (50 lambda)``) only mean what
they mean under that scale.

Shape changes. When a network adds or removes units, the optimizer's per-row
state must follow. :func:`resize_state` is the one entry point for that;
``npnn.nn.NonparametricMLP`` calls it for you when you pass ``optimizer=`` to
``add_units``, ``grow`` or ``remove_dead_units``.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Iterable

import torch
from torch import Tensor
from torch.optim import Optimizer
from torch.optim.optimizer import required

from npnn import fused as npnn_fused

__all__ = ["AdaRad", "AdaRadM", "ParametricOptimizer", "group_shrink_", "shrinkage_threshold", "resize_state",
           "select_and_extend"]


def select_and_extend(t: Tensor, dim: int, keep: Tensor | None, new: Tensor | None) -> Tensor:
    """Keep the slices ``keep`` of ``t`` along ``dim`` (all if None), then append ``new`` along ``dim``."""
    if keep is not None:
        t = t.index_select(dim, keep.to(t.device))
    if new is not None and new.shape[dim] > 0:
        t = torch.cat([t, new.to(device=t.device, dtype=t.dtype)], dim)
    return t


def resize_state(optimizer: Optimizer, param: Tensor, dim: int, keep: Tensor | None, n_new: int) -> None:
    """Align ``optimizer``'s state for ``param`` after ``param`` was resized along ``dim``.

    ``param`` already has its new shape: the slices ``keep`` (None = all) of the old
    tensor along ``dim``, followed by ``n_new`` new slices. Surviving state is kept
    bit for bit; new units get zero state. Optimizers that define
    ``resize_state(param, dim, keep, n_new)`` (AdaRad, AdaRadM) handle their own
    state; for torch's optimizers every state tensor shaped like the weight
    (momentum, square averages, Adam's moments) is resized, scalars are left alone.
    """
    own = getattr(optimizer, "resize_state", None)
    if own is not None:
        own(param, dim, keep, n_new)
        return
    _resize_weight_shaped(optimizer.state.get(param), param, dim, keep, n_new)


def _resize_weight_shaped(state: dict | None, param: Tensor, dim: int, keep: Tensor | None, n_new: int) -> None:
    """Resize every tensor of ``state`` shaped like ``param`` (zeros for new slices); scalars stay."""
    if not state:
        return
    for key, value in state.items():
        if isinstance(value, Tensor) and value.dim() == param.dim() and value.dim() > 0:
            shape = list(value.shape)
            shape[dim] = n_new
            state[key] = select_and_extend(value, dim, keep, value.new_zeros(shape))


def shrinkage_threshold(step: float, group: dict, batch_size: int | None = None) -> float:
    """The group shrinkage's threshold tau = step * lambda * |D^t| / |D| (Algorithm 1 line 17, step = alpha_r;
    the parametric optimizers' proximal step, step = the step size); ``batch_size`` None: the group's."""
    return step * group["lam"] * (batch_size or group["batch_size"]) / group["dataset_size"]


@torch.no_grad()
def group_shrink_(weights: Iterable[Tensor], tau: float) -> None:
    """l2 group shrinkage of every row (fan-in), in place: ``w *= max(0, 1 - tau / |w|)``.

    The proximal step of the fan-in penalty; AdaRad applies it itself (Algorithm 1 line 17),
    this is for the other optimizers (SGD with shrinkage, Table 1).
    """
    for w in weights:
        norm = torch.linalg.vector_norm(w, dim=1, keepdim=True)
        w.mul_((1.0 - tau / norm.clamp_min(torch.finfo(w.dtype).tiny)).clamp_min_(0.0))


def _columns(sizes: list[int], *flat: Tensor) -> list[tuple[Tensor, ...]]:
    """Split concatenated per-row vectors back into one ``(rows, 1)`` column per weight."""
    return [v.unsqueeze(1).split(sizes) for v in flat]


def _rowdot(a: Tensor, b: Tensor) -> Tensor:
    """Row-wise dot products of two ``(rows, cols)`` matrices."""
    return torch.linalg.vecdot(a, b, dim=1)


class _GlobalMaxima:
    """``state_dict`` / ``load_state_dict`` of an optimizer whose global maxima (``global_keys``, one tensor
    each for the whole network, Alg. 1 line 13) sit beside its per-parameter state."""

    global_keys: tuple[str, ...] = ()

    def state_dict(self) -> dict:
        sd = super().state_dict()
        if getattr(self, self.global_keys[0]) is not None:
            sd["global"] = {k: getattr(self, k).clone() for k in self.global_keys}
        return sd

    def load_state_dict(self, state_dict: dict) -> None:
        # a copy: the fused step updates state in place, so it must not alias the caller's tensors
        state_dict = copy.deepcopy(dict(state_dict))
        glob = state_dict.pop("global", None)
        super().load_state_dict(state_dict)
        first = self.param_groups[0]["params"][0]
        for key in self.global_keys:
            setattr(self, key, None if glob is None else glob[key].to(first).clone())


class AdaRad(_GlobalMaxima, Optimizer):
    r"""Adaptive Radial-Angular gradient descent with the l2 fan-in penalty (Algorithm 1).

    For every row ``w`` (a unit's fan-in) with gradient ``g`` (of the loss
    ``batch sum / |D|``, line 8):

    .. code-block:: text

        r = (g.w / |w|^2) w ;  phi = g - r                                     (line 11)
        phibar = (1 - beta) phibar + beta |phi|^2 ;  c = (1 - beta) c + beta    (line 12)
        phi_max = max(phi_max, phibar) ;  c_max = max(c_max, c)                 (line 13)
        phi_adj = sqrt(phi_max / c_max) phi / sqrt(phibar / c + eps)           (line 14)
        w = w - alpha_r r                                                      (line 15)
        w = w rotated by the angle alpha_phi |phi_adj| towards -phi_adj        (line 16)
        w = w max(0, 1 - alpha_r lam (|D^t| / |D|) / |w|)                       (line 17)

    ``phi_max`` and ``c_max`` are global: one pair over all rows of all parameters
    and all steps; they never decrease. The rotation keeps ``|w|``; the radial
    step and the shrinkage keep the direction. A row with ``w = 0`` has no
    parallel component (``r = 0``, ``phi = g``) and stays zero.

    Args:
        params: 2-D weights, rows = fan-ins (every layer, the output layer included:
            shrinkage applies to all of them).
        alpha_r: radial step size (paper: ``1 / (50 lam)``, poker ``1 / (5 lam)``).
        alpha_phi: angular step size (paper: 30 for section 4.1, 10 for poker).
        lam: fan-in regulariser strength lambda (0 disables shrinkage).
        dataset_size: ``|D|``, the number of training examples (required: here or in every
            param group).
        batch_size: ``|D^t|``, the mini-batch size (Table 3: 1000); ``step(batch_size=)``
            overrides it for one step (e.g. a short last batch).
        beta: quadratic mixing rate (Table 3: 0.005).
        eps: numerical stabiliser (Table 3: 1e-8).
        fused: use the fused CPU kernel (:mod:`npnn.fused`): ``None`` (default) where it applies
            (contiguous float32/float64 CPU weights, one set of hyperparameters, the kernel
            builds), ``False`` never (the eager reference), ``True`` always (an error where it
            cannot). Both give the same result to rounding.

    ``lam``, ``dataset_size`` and ``batch_size`` may also come in the param groups, as
    ``npnn.module`` passes them (``AdaRad([{"params": ..., "lam": 1e-6, "dataset_size": n}], ...)``).
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict],
        alpha_r: float,
        alpha_phi: float,
        lam: float = 0.0,
        *,
        dataset_size: int = required,
        batch_size: int = 1000,
        beta: float = 0.005,
        eps: float = 1e-8,
        fused: bool | None = None,
    ) -> None:
        defaults = dict(
            alpha_r=alpha_r, alpha_phi=alpha_phi, lam=lam, dataset_size=dataset_size,
            batch_size=batch_size, beta=beta, eps=eps,
        )
        self._check_hyperparameters(defaults)
        super().__init__(params, defaults)
        if fused not in (None, True, False):
            raise ValueError(f"AdaRad: fused must be None, True or False, got {fused!r}")
        self.fused = fused
        # line 2: phi_max = 0, c_max = 0, once for the whole network
        self.phi_max: Tensor | None = None
        self.c_max: Tensor | None = None

    # ----------------------------------------------------------------- set-up
    @staticmethod
    def _check_hyperparameters(h: dict) -> None:
        for key in ("alpha_r", "alpha_phi", "lam"):
            if key in h and not (h[key] >= 0 and math.isfinite(h[key])):
                raise ValueError(f"AdaRad: {key} must be a finite number >= 0, got {h[key]!r}")
        size = h.get("dataset_size", required)
        if size is not required and not (isinstance(size, int) and size > 0):
            raise ValueError(f"AdaRad: dataset_size (|D|) must be a positive int, got {size!r}")
        if "batch_size" in h and not (isinstance(h["batch_size"], int) and h["batch_size"] > 0):
            raise ValueError(f"AdaRad: batch_size (|D^t|) must be a positive int, got {h['batch_size']!r}")
        for key in ("beta", "beta_arith"):
            if key in h and not 0 < h[key] <= 1:
                raise ValueError(f"AdaRad: {key} must lie in (0, 1], got {h[key]!r}")
        if "eps" in h and not h["eps"] > 0:
            raise ValueError(f"AdaRad: eps must be > 0, got {h['eps']!r}")

    def add_param_group(self, param_group: dict) -> None:
        params = param_group["params"]
        param_group["params"] = params = [params] if isinstance(params, Tensor) else list(params)
        for p in params:
            if p.dim() != 2:
                raise ValueError(
                    f"{type(self).__name__} normalises rows of 2-D weights (fan-ins); got a parameter of "
                    f"shape {tuple(p.shape)}. Use a Linear layer without bias and no affine norm."
                )
        self._check_hyperparameters(param_group)
        super().add_param_group(param_group)

    # ------------------------------------------------------------ state sync
    row_state = ("phibar", "c")  # one value per unit (row)
    matrix_state: tuple[str, ...] = ()  # one value per weight

    def _init_state(self, p: Tensor) -> dict:
        state = self.state[p]
        if not state:
            state.update({k: p.new_zeros(p.shape[0]) for k in self.row_state})
            state.update({k: torch.zeros_like(p) for k in self.matrix_state})
        for key in self.row_state + self.matrix_state:
            if state[key].shape[0] != p.shape[0] or state[key].shape[1:] not in ((), p.shape[1:]):
                raise RuntimeError(
                    f"{type(self).__name__}: state '{key}' has shape {tuple(state[key].shape)} but its weight has "
                    f"shape {tuple(p.shape)}: the network changed shape without the optimizer. Pass "
                    f"optimizer= to add_units / grow / remove_dead_units (or call npnn.optim.resize_state)."
                )
        return state

    def resize_state(self, param: Tensor, dim: int, keep: Tensor | None, n_new: int) -> None:
        """Follow a resize of ``param`` along ``dim`` (0: units of this layer, 1: its inputs).

        Lines 19 / 24 of Algorithm 1: removed units lose their ``phibar`` and ``c``;
        added units start at zero.
        """
        state = self.state.get(param)
        if not state:
            return
        if dim == 0:
            for key in self.row_state:
                state[key] = select_and_extend(state[key], 0, keep, state[key].new_zeros(n_new))
        for key in self.matrix_state:
            shape = list(state[key].shape)
            shape[dim] = n_new
            state[key] = select_and_extend(state[key], dim, keep, state[key].new_zeros(shape))

    # ------------------------------------------------------------------ step
    global_keys = ("phi_max", "c_max")
    step_size_key = "alpha_phi"  # what the protocol divides on a plateau (7.4)
    momentum = False  # AdaRadM: rotate towards the running average of phi (Algorithm 2)

    @torch.no_grad()
    def step(self, closure=None, batch_size: int | None = None):
        """One update of every row (Algorithm 1 lines 11-17; Algorithm 2 lines 13-21).

        Vectorised: per weight only row dot products and two fused passes; the per-row
        scalars of all weights of a group are computed at once on concatenated vectors.

        Args:
            closure: optional, re-evaluates the model and returns the loss.
            batch_size: ``|D^t|`` of this step if it differs from the group's ``batch_size``.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self._fused_step(batch_size):
            return loss
        work = [w for w in (self._averages(group) for group in self.param_groups) if w is not None]
        if not work:
            return loss
        # line 13. Algorithm 1 raises the maxima unit by unit inside its loop; the
        # efficient order used here raises them once, after all running averages.
        phi_max = torch.stack([w["phibar"].max() for w in work]).max()
        c_max = torch.stack([w["c"].max() for w in work]).max()
        if self.phi_max is None:  # line 2
            self.phi_max, self.c_max = torch.zeros_like(phi_max), torch.zeros_like(c_max)
        self.phi_max = torch.maximum(self.phi_max, phi_max)
        self.c_max = torch.maximum(self.c_max, c_max)
        global_scale = torch.sqrt(self.phi_max / self.c_max)
        for w in work:
            self._update(w, global_scale, batch_size)
        return loss

    _fused_keys = ("alpha_r", "alpha_phi", "lam", "dataset_size", "batch_size", "beta", "eps")

    def _fused_step(self, batch_size: int | None) -> bool:
        """The whole step in one call of the fused kernel (``npnn.fused.adarad_step_``) where it applies;
        False otherwise. The kernel checks its tensors itself (before it writes anything); only where it
        refuses them is the reason looked for here."""
        if self.fused is False or self.momentum:
            return False
        params = [p for group in self.param_groups for p in group["params"] if p.grad is not None]
        if not params:
            return False
        why = self._why_not_fused(params) if len(self.param_groups) > 1 else None
        if why is None and not (npnn_fused.active(params[0]) if self.fused is None else npnn_fused.load()):
            why = "the fused kernels are not available (see the warning of npnn.fused) or are switched off"
        if why is None:
            states = [self.state[p] for p in params]
            for p, state in zip(params, states):
                if not state:
                    self._init_state(p)  # a new weight: zero state, in the same dict
            if self.phi_max is None:  # line 2
                self.phi_max, self.c_max = params[0].new_zeros(()), params[0].new_zeros(())
            group = self.param_groups[0]
            tau = shrinkage_threshold(group["alpha_r"], group, batch_size)
            try:
                npnn_fused.adarad_step_(params, [p.grad for p in params], [s["phibar"] for s in states],
                                        [s["c"] for s in states], self.phi_max, self.c_max, group["alpha_r"],
                                        group["alpha_phi"], group["beta"], group["eps"], tau)
                return True
            except RuntimeError:
                for p in params:
                    self._init_state(p)  # the error that names a state that no longer fits its weight
                why = self._why_not_fused(params)
                if why is None:  # the tensors were fine: a real failure
                    raise
        if self.fused:
            raise RuntimeError(f"{type(self).__name__}(fused=True): cannot use the fused kernel: {why}")
        return False

    def _why_not_fused(self, params: list[Tensor]) -> str | None:
        groups = {tuple(group[k] for k in self._fused_keys) for group in self.param_groups}
        dtype = params[0].dtype
        if len(groups) > 1:
            return "parameter groups with different hyperparameters"
        if dtype not in npnn_fused.DTYPES or not all(
                t.device.type == "cpu" and t.dtype == dtype and t.layout == torch.strided and t.is_contiguous()
                for p in params for t in (p, p.grad)):
            return "non-CPU, non-float32/64, sparse or non-contiguous weights or gradients"
        return None

    def _averages(self, group: dict) -> dict | None:
        """Lines 11-12 (and 16 of Algorithm 2) for every row of the group's weights."""
        params = [p for p in group["params"] if p.grad is not None]
        if not params:
            return None
        if any(p.grad.is_sparse for p in params):
            raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
        grads = [p.grad for p in params]
        states = [self._init_state(p) for p in params]
        w_sq = torch.cat([_rowdot(p, p) for p in params])
        gw = torch.cat([_rowdot(g, p) for g, p in zip(grads, params)])
        g_sq = torch.cat([_rowdot(g, g) for g in grads])
        # line 11: r = coef w, phi = g - r; a zero row has w_sq = gw = 0, so coef = 0 and phi = g
        coef = gw / w_sq.clamp_min(torch.finfo(w_sq.dtype).tiny)
        phi_sq = torch.addcmul(g_sq, coef, gw, value=-1.0).clamp_min_(0.0)  # |phi|^2 = |g|^2 - (g.w)^2 / |w|^2
        beta = group["beta"]
        phibar = torch.cat([s["phibar"] for s in states]).mul_(1 - beta).add_(phi_sq, alpha=beta)  # line 12
        c = torch.cat([s["c"] for s in states]).mul_(1 - beta).add_(beta)
        sizes = [p.shape[0] for p in params]
        for s, pb, cc in zip(states, phibar.split(sizes), c.split(sizes)):
            s["phibar"], s["c"] = pb, cc
        work = dict(group=group, params=params, grads=grads, states=states, sizes=sizes,
                    w_sq=w_sq, coef=coef, phi_sq=phi_sq, phibar=phibar, c=c)
        if self.momentum:  # Algorithm 2 line 16: phitilde = (1 - beta_a) phitilde + beta_a phi; a likewise
            ba = group["beta_arith"]
            for s, g, p, k in zip(states, grads, params, coef.split(sizes)):
                s["phitilde"].mul_(1 - ba).add_(torch.addcmul(g, k.unsqueeze(1), p, value=-1.0), alpha=ba)
            a = torch.cat([s["a"] for s in states]).mul_(1 - ba).add_(ba)
            for s, aa in zip(states, a.split(sizes)):
                s["a"] = aa
            work["a"] = a
        return work

    def _update(self, work: dict, global_scale: Tensor, batch_size: int | None) -> None:
        """Lines 14-17 (Algorithm 2: 17-21), fused per row into ``w = A w + B v``."""
        group, params, sizes, coef, w_sq = work["group"], work["params"], work["sizes"], work["coef"], work["w_sq"]
        tiny = torch.finfo(w_sq.dtype).tiny
        # |phi_adj| = sqrt(phi_max / c_max) |v| / sqrt(phibar / c + eps), v = phi (line 14) or phitilde / a (line 17)
        scale = (work["phibar"] / work["c"]).add_(group["eps"]).rsqrt_().mul_(global_scale)
        if self.momentum:
            v_len = torch.cat([_rowdot(s["phitilde"], s["phitilde"]) for s in work["states"]]).sqrt_()
            scale.div_(work["a"])
        else:
            v_len = work["phi_sq"].sqrt()
        theta = scale.mul_(v_len).mul_(group["alpha_phi"])  # rotation angle alpha_phi |phi_adj|, line 16
        radial = torch.rsub(coef, 1.0, alpha=group["alpha_r"])  # line 15: w' = (1 - alpha_r coef) w
        w_len = radial.abs().mul_(w_sq.sqrt())  # |w'|, kept by the rotation
        tau = shrinkage_threshold(group["alpha_r"], group, batch_size)
        new_len = (w_len - tau).clamp_min_(0.0)  # line 17: group shrinkage, |w| -> max(0, |w| - tau)
        cos, sin = torch.cos(theta), torch.sin(theta)
        # line 16: w'' = cos(theta) w' - sin(theta) |w'| v / |v|  (v orthogonal to w), then shrunk
        a = cos.mul(radial).mul_(new_len).div_(w_len.clamp_min(tiny))
        b = sin.mul(new_len).div_(v_len.clamp_min(tiny)).neg_()
        if self.momentum:
            # Algorithm 2 line 20: phitilde turned by the same rotation, towards w'/|w'|:
            # phitilde = cos(theta) phitilde + sin(theta) |phitilde| w' / |w'|
            pt_b = (sin * v_len * radial * (w_len > 0)).div_(w_len.clamp_min(tiny))
            for p, s, a_, b_, c_, pb_ in zip(params, work["states"], *_columns(sizes, a, b, cos, pt_b)):
                pt = s["phitilde"]
                s["phitilde"] = torch.addcmul(pt * c_, pb_, p)
                p.mul_(a_).addcmul_(b_, pt)
        else:
            # phi = g - coef w, so a w + b phi = (a - b coef) w + b g: phi is never formed
            for p, g, a_, b_ in zip(params, work["grads"], *_columns(sizes, torch.addcmul(a, b, coef, value=-1.0), b)):
                p.mul_(a_).addcmul_(b_, g)


class AdaRadM(AdaRad):
    r"""AdaRad with momentum on the angular component (Algorithm 2, appendix 7.3).

    As :class:`AdaRad`, plus an arithmetic running average of ``phi`` per row:

    .. code-block:: text

        phitilde = (1 - beta_arith) phitilde + beta_arith phi ;  a = (1 - beta_arith) a + beta_arith   (line 16)
        phi_adj = sqrt(phi_max / c_max) / sqrt(phibar / c + eps) * phitilde / a                       (line 17)
        w rotated by alpha_phi |phi_adj| towards -phi_adj; phitilde rotated by the same rotation       (19-20)

    so ``phitilde`` stays orthogonal to ``w``. When the previous layer loses units
    (columns of this weight are removed), ``phitilde`` is re-orthogonalised to the
    new rows of ``w`` (line 33).

    Args: as :class:`AdaRad` (``beta`` is ``beta_quad``), plus
        beta_arith: arithmetic mixing rate (Table 3: 0.1).
    """

    def __init__(self, params, alpha_r: float, alpha_phi: float, lam: float = 0.0, *,
                 dataset_size: int = required, batch_size: int = 1000, beta: float = 0.005,
                 beta_arith: float = 0.1, eps: float = 1e-8) -> None:
        self._beta_arith = beta_arith
        self._check_hyperparameters({"beta_arith": beta_arith})
        super().__init__(params, alpha_r, alpha_phi, lam, dataset_size=dataset_size,
                         batch_size=batch_size, beta=beta, eps=eps)

    def add_param_group(self, param_group: dict) -> None:
        param_group.setdefault("beta_arith", self._beta_arith)
        super().add_param_group(param_group)

    momentum = True
    row_state = ("phibar", "c", "a")
    matrix_state = ("phitilde",)

    def resize_state(self, param: Tensor, dim: int, keep: Tensor | None, n_new: int) -> None:
        super().resize_state(param, dim, keep, n_new)
        state = self.state.get(param)
        if state and dim == 1 and keep is not None:
            # line 33: inputs were removed, so the rows of w changed; restore phitilde _|_ w
            pt, w = state["phitilde"], param.detach()
            w_sq = _rowdot(w, w)
            coef = torch.where(w_sq > 0, _rowdot(pt, w) / w_sq.clamp_min(torch.finfo(w.dtype).tiny), 0.0)
            pt.sub_(coef.unsqueeze(1) * w)


class ParametricOptimizer(_GlobalMaxima, Optimizer):
    r"""The parametric nets' optimizers with the paper's step size ``alpha`` (section 4, 7.4.1 step 3).

    The paper searches one grid, ``alpha`` in 1 ... 100,000, for SGD, momentum, Nesterov momentum,
    RMSprop and Adam, and calls RMSprop with ``alpha = 300`` optimal on mnist (Fig. 3A). Read here
    (README, "The parametric step size") as AdaRad reads its step sizes: ``g`` is the gradient of
    the loss ``batch sum / |D|`` (Algorithm 1 line 8), the mixing rates are Table 3's, and the
    per-weight normalisation of RMSprop and Adam keeps the global gradient scale as AdaRad's
    line 14 does, so that ``alpha`` multiplies a gradient of the same scale in all five:

    .. code-block:: text

        sgd:       w = w - alpha g
        momentum:  m = (1 - beta_arith) m + beta_arith g ;  w = w - alpha m
        nesterov:  m as momentum ;  w = w - alpha ((1 - beta_arith) m + beta_arith g)
        rmsprop:   v = (1 - beta_quad) v + beta_quad g^2 ;  c = (1 - beta_quad) c + beta_quad
                   w = w - alpha S g / sqrt(v / c + eps)
        adam:      m, a = (1 - beta_arith) (m, a) + beta_arith (g, 1) ;  v, c as rmsprop
                   w = w - alpha S (m / a) / sqrt(v / c + eps)

    ``S = sqrt(v_ref / c_max)`` is the global scale (AdaRad's ``sqrt(phi_max / c_max)``, line 14):
    one value for the whole network, and ``v_ref`` and ``c_max`` never decrease (line 13).
    ``scale`` chooses ``v_ref``, which the paper leaves open: ``"mean"`` (default), the largest mean
    of ``v`` over all weights, so that a step has the expected length of the SGD step of the same
    ``alpha``; or ``"max"``, the largest ``v`` of any weight (AdaRad's maximum, taken per weight).

    Args:
        params: any parameters (BatchNorm's affine ones included).
        alpha: the paper's step size (the protocol divides it by 3 on a plateau).
        algorithm: ``sgd``, ``momentum``, ``nesterov``, ``rmsprop`` or ``adam``.
        beta_arith: arithmetic mixing rate (Table 3: 0.1).
        beta_quad: quadratic mixing rate (Table 3: 0.005).
        eps: numerical stabiliser inside the square root, as AdaRad's (Table 3: 1e-8).
        scale: ``"mean"`` or ``"max"`` (RMSprop and Adam).

    ``lam``, ``dataset_size`` and ``batch_size`` may ride in the param groups (``npnn.module``'s
    proximal shrinkage reads them); this optimizer does not use them.
    """

    ALGORITHMS = ("sgd", "momentum", "nesterov", "rmsprop", "adam")
    NORMALISED = ("rmsprop", "adam")  # per-weight normalisation, one bias weight c per parameter
    SCALES = ("max", "mean")
    global_keys = ("v_ref", "c_max")
    step_size_key = "alpha"  # what the protocol divides (AdaRad: alpha_phi)

    def __init__(self, params, alpha: float, algorithm: str = "sgd", *, beta_arith: float = 0.1,
                 beta_quad: float = 0.005, eps: float = 1e-8, scale: str = "mean") -> None:
        if algorithm not in self.ALGORITHMS:
            raise ValueError(f"ParametricOptimizer: algorithm must be one of {self.ALGORITHMS}, got {algorithm!r}")
        if scale not in self.SCALES:
            raise ValueError(f"ParametricOptimizer: scale must be one of {self.SCALES}, got {scale!r}")
        if not (isinstance(alpha, (int, float)) and alpha >= 0 and math.isfinite(alpha)):
            raise ValueError(f"ParametricOptimizer: alpha (the step size) must be a finite number >= 0, got {alpha!r}")
        for name, value in (("beta_arith", beta_arith), ("beta_quad", beta_quad)):
            if not 0 < value <= 1:
                raise ValueError(f"ParametricOptimizer: {name} must lie in (0, 1], got {value!r}")
        if not eps > 0:
            raise ValueError(f"ParametricOptimizer: eps must be > 0, got {eps!r}")
        super().__init__(params, dict(alpha=float(alpha), algorithm=algorithm, beta_arith=beta_arith,
                                      beta_quad=beta_quad, eps=eps, scale=scale))
        self.v_ref: Tensor | None = None  # the global maxima, as AdaRad's phi_max / c_max
        self.c_max: Tensor | None = None

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        normalised = []  # (group, param, state) of RMSprop / Adam, stepped once the global scale is known
        for group in self.param_groups:
            algorithm, ba, bq = group["algorithm"], group["beta_arith"], group["beta_quad"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g, state = p.grad, self.state[p]
                if algorithm == "sgd":
                    p.sub_(g, alpha=group["alpha"])
                    continue
                if not state:  # m: the arithmetic average; v, c (and Adam's a): the normalisation
                    if algorithm != "rmsprop":
                        state["m"] = torch.zeros_like(p)
                    if algorithm in self.NORMALISED:
                        state["v"], state["c"] = torch.zeros_like(p), p.new_zeros(())
                    if algorithm == "adam":
                        state["a"] = p.new_zeros(())
                if algorithm != "rmsprop":
                    state["m"].mul_(1 - ba).add_(g, alpha=ba)
                if algorithm == "momentum":
                    p.sub_(state["m"], alpha=group["alpha"])
                elif algorithm == "nesterov":
                    p.sub_(state["m"], alpha=group["alpha"] * (1 - ba)).sub_(g, alpha=group["alpha"] * ba)
                else:
                    state["v"].mul_(1 - bq).addcmul_(g, g, value=bq)
                    state["c"].mul_(1 - bq).add_(bq)
                    if algorithm == "adam":
                        state["a"].mul_(1 - ba).add_(ba)
                    normalised.append((group, p, state))
        if normalised:
            self._normalised_steps(normalised)
        return loss

    def resize_state(self, param: Tensor, dim: int, keep: Tensor | None, n_new: int) -> None:
        """As :func:`resize_state` for torch's optimizers; new units are refused under RMSprop and Adam,
        whose bias weights ``c`` and ``a`` are one per parameter: a new unit's ``v = 0`` against a grown
        ``c`` would give it steps of many times the others' (a growing network needs AdaRad)."""
        if n_new > 0 and self.param_groups[0]["algorithm"] in self.NORMALISED and self.state.get(param):
            raise RuntimeError(f"ParametricOptimizer({self.param_groups[0]['algorithm']}) cannot add units to a "
                               f"trained parameter: train a growing network with AdaRad")
        _resize_weight_shaped(self.state.get(param), param, dim, keep, n_new)

    def _normalised_steps(self, work: list) -> None:
        """RMSprop and Adam: ``w -= alpha S m / sqrt(v / c + eps)`` with the global scale ``S``."""
        c_max = torch.stack([s["c"] for _, _, s in work]).max()
        if work[0][0]["scale"] == "max":  # line 13, per weight
            v_ref = torch.stack([s["v"].max() for _, _, s in work]).max()
        else:
            v_ref = sum(s["v"].sum() for _, _, s in work) / sum(s["v"].numel() for _, _, s in work)
        self.v_ref = v_ref if self.v_ref is None else torch.maximum(self.v_ref, v_ref)
        self.c_max = c_max if self.c_max is None else torch.maximum(self.c_max, c_max)
        scale = torch.sqrt(self.v_ref / self.c_max)
        for group, p, state in work:
            direction = p.grad if group["algorithm"] == "rmsprop" else state["m"] / state["a"]
            p.sub_(direction / (state["v"] / state["c"] + group["eps"]).sqrt_() * (scale * group["alpha"]))
