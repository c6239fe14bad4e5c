"""Networks that change width while they train (paper sections 2-3, Figure 1).

``NonparametricMLP``: hidden layers ``Linear (no bias) -> CapNorm -> ReLU``, an output
``Linear (no bias)``. Units are added with a random fan-in and a zero fan-out and
removed once their fan-in is exactly zero; both jumps leave the network's function
unchanged (f-equivalence, section 3). With ``norm="batchnorm"`` and fixed sizes
the same class is the parametric baseline of the paper.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim import Optimizer

from npnn import fused as npnn_fused
from npnn.optim import resize_state, select_and_extend

__all__ = ["CapNorm", "NonparametricMLP", "NORMS"]

NORMS = ("capnorm", "batchnorm", "batchnorm_affine", "none")
GROWABLE_NORMS = ("capnorm", "none")


class _CapNormBatch(torch.autograd.Function):
    """CapNorm with batch statistics, ``xhat = (z - mu) * max(var, 1)^(-1/2)``, optionally followed
    by ReLU, with a fused backward, and the running-statistics update (if ``running_mean`` is
    given) in the same call.

    Backward, with ``s = max(var, 1)^(-1/2)``, ``k = [var > 1]`` per unit and ``e = dy`` (after a
    ReLU: ``dy [xhat > 0]``): ``dz = s (e - mean(e) - k xhat mean(e xhat))`` (below the cap only
    the centring acts). This is the eager reference; on CPU, :class:`CapNorm` runs both directions
    as one kernel each instead (``npnn.fused.capnorm_train``) where available.
    """

    @staticmethod
    def forward(ctx, z: Tensor, running_mean: Tensor | None, running_var: Tensor | None,
                fan_in_norm: Tensor | None, momentum: float, relu: bool) -> Tensor:
        ctx.relu = relu
        mean = z.mean(0)
        centred = z - mean
        var = (centred * centred).mean(0)  # two passes: much faster on CPU than z.var(0)
        xhat = centred * var.clamp_min(1.0).rsqrt()
        out = F.relu(xhat) if relu else xhat
        if running_mean is not None:
            _update_running(running_mean, running_var, mean, var, fan_in_norm, momentum)
        ctx.save_for_backward(xhat, var)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy: Tensor):
        xhat, var = ctx.saved_tensors
        e = dy * (xhat > 0) if ctx.relu else dy
        projection = (e * xhat).mean(0) * (var > 1)
        dz = (e - e.mean(0) - xhat * projection) * var.clamp_min(1.0).rsqrt()
        return dz, None, None, None, None, None


@torch.no_grad()
def _update_running(running_mean: Tensor, running_var: Tensor, mean: Tensor, var: Tensor,
                    fan_in_norm: Tensor | None, momentum: float) -> None:
    """BatchNorm-style running averages of the batch statistics, per unit of fan-in length if
    ``fan_in_norm`` is given (a zero fan-in, z = 0, stores 0)."""
    if fan_in_norm is not None:
        length = fan_in_norm + (fan_in_norm == 0)
        mean, var = mean / length, var / length.square()
    running_mean.lerp_(mean, momentum)
    running_var.lerp_(var, momentum)


class CapNorm(nn.Module):
    r"""Capped batch normalisation (section 3.2): ``z -> (z - mu) / max(sigma, 1)``.

    ``mu`` and ``sigma`` (biased standard deviation, as in BatchNorm) are taken per
    unit over the mini-batch. No learned parameters: a free scale would undo the
    fan-in penalty.

    Evaluation mode is not specified by the paper; ``eval_stats`` chooses:

    * ``"running"`` (default): running averages of the batch mean and variance,
      updated in training with ``momentum`` as in BatchNorm. If ``forward`` gets
      ``fan_in_norm`` (the length of each unit's fan-in; ``NonparametricMLP``
      passes it), the averages are kept per unit of fan-in length, i.e. of
      ``z / |w|``, and rescaled by the current ``|w|`` at evaluation. AdaRad's radial
      step and shrinkage rescale fan-ins quickly while directions move slowly, so
      the statistics follow the radial changes exactly, and a unit whose fan-in is
      zero outputs exactly 0: adding and removing units stays f-equivalent in
      evaluation mode too.
    * ``"batch"``: the statistics of the batch being evaluated, as in training.
    """

    def __init__(self, num_features: int, eval_stats: str = "running", momentum: float = 0.1) -> None:
        super().__init__()
        if eval_stats not in ("running", "batch"):
            raise ValueError(f"CapNorm: eval_stats must be 'running' or 'batch', got {eval_stats!r}")
        if not 0 < momentum <= 1:
            raise ValueError(f"CapNorm: momentum must lie in (0, 1], got {momentum!r}")
        self.num_features = num_features
        self.eval_stats = eval_stats
        self.momentum = momentum
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def extra_repr(self) -> str:
        return f"{self.num_features}, eval_stats={self.eval_stats!r}, momentum={self.momentum}"

    def forward(self, z: Tensor, fan_in_norm: Tensor | None = None, relu: bool = False,
                stats: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """CapNorm of ``z`` (batch, units); ``relu=True`` also applies the ReLU that follows it in a
        hidden layer (one fused kernel on CPU). ``stats``: :meth:`running_stats` computed beforehand (evaluation
        with running statistics only), in place of ``fan_in_norm``."""
        if z.shape[1] == 0:  # a layer that lost all its units
            return z
        if self.training or self.eval_stats == "batch":
            if stats is not None:
                raise ValueError("CapNorm: stats are for evaluation with running statistics (eval mode, "
                                 "eval_stats='running')")
            running = self.training and self.eval_stats == "running"
            args = (z, self.running_mean, self.running_var, fan_in_norm, self.momentum, relu) if running else \
                (z, None, None, None, 0.0, relu)
            fused = npnn_fused.capnorm_train(*args)
            return fused if fused is not None else _CapNormBatch.apply(*args)
        mean, capped_var = self.running_stats(fan_in_norm) if stats is None else stats
        # (z - mean) / max(sigma, 1), as one BatchNorm inference kernel: var capped at 1, eps = 0; the ReLU in
        # place. No fused kernel: the one this replaced was slower at poker's widths (README, Fused CPU kernels)
        out = F.batch_norm(z, mean, capped_var, training=False, eps=0.0)
        return out.relu_() if relu else out

    def running_stats(self, fan_in_norm: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The mean and the variance capped at 1 that evaluation normalizes ``z`` with: the running statistics,
        stored per unit of fan-in length if ``fan_in_norm`` is given."""
        mean, var = self.running_mean, self.running_var
        if fan_in_norm is not None:
            mean, var = mean * fan_in_norm, var * fan_in_norm.square()
        return mean, var.clamp_min(1.0)

    @torch.no_grad()
    def fan_ins_rescaled(self, old_lengths: Tensor, new_lengths: Tensor) -> None:
        """The fan-ins changed length but not the pre-activations (a dead input was removed):
        keep the running statistics of ``z`` by rescaling those stored per unit of length."""
        ratio = torch.where(new_lengths > 0,
                            old_lengths / new_lengths.clamp_min(torch.finfo(new_lengths.dtype).tiny), 1.0)
        self.running_mean.mul_(ratio)
        self.running_var.mul_(ratio.square())

    def resize(self, keep: Tensor | None, n_new: int) -> None:
        """Keep the units ``keep`` (None = all) and append ``n_new`` units (mean 0, variance 1)."""
        self.running_mean = select_and_extend(self.running_mean, 0, keep, self.running_mean.new_zeros(n_new))
        self.running_var = select_and_extend(self.running_var, 0, keep, self.running_var.new_ones(n_new))
        self.num_features = self.running_mean.numel()


@torch.no_grad()
def _replace(param: nn.Parameter, value: Tensor) -> None:
    """Give ``param`` a new value of any shape, keeping the Parameter object (optimizers refer to it).

    ``set_`` rather than ``.data =``: autograd re-reads the shape of a leaf after ``set_``, while
    ``.data =`` leaves a stale shape in its gradient accumulator. A gradient of the old shape
    can neither be stepped nor accumulated into, so it is dropped.
    """
    param.set_(value.contiguous())
    param.grad = None


def _make_norm(norm: str, width: int, capnorm_eval_stats: str, norm_momentum: float) -> nn.Module:
    if norm == "capnorm":
        return CapNorm(width, eval_stats=capnorm_eval_stats, momentum=norm_momentum)
    if norm in ("batchnorm", "batchnorm_affine"):
        return nn.BatchNorm1d(width, affine=norm == "batchnorm_affine", momentum=norm_momentum)
    return nn.Identity()


class NonparametricMLP(nn.Module):
    r"""A ReLU MLP whose hidden layers grow and shrink (Figure 1 of the paper).

    Hidden layer ``l``: ``h = relu(norm(h_prev W_l^T))``; output: ``norm(h W_L^T)`` (logits; CapNorm
    there too by default, ``output_norm=False`` leaves them plain). Weights use torch's layout
    ``(d_out, d_in)``, so row ``j`` of ``W_l`` is the fan-in of unit ``j`` and column ``j`` of
    ``W_{l+1}`` its fan-out. Initial weights are ``N(0, std = 1/sqrt(d_in))``
    (Table 3): each fan-in has expected squared length 1.

    Every hidden unit has a stable integer id; ``unit_records()`` lists each unit's
    layer, birth step and death step (None while alive).

    Shape changes go through ``add_units``, ``grow`` and ``remove_dead_units``. They
    resize the weights in place (the ``nn.Parameter`` objects stay the same) and, given
    ``optimizer=``, the optimizer's state in the same call: surviving units keep their
    state bit for bit and new units start at zero. Always pass the optimizer that
    trains this network; AdaRad refuses to step on state that no longer fits.

    Args:
        in_features: ``d_0``.
        hidden_sizes: starting width of each hidden layer (paper: 10 each).
        out_features: ``d_L`` (number of classes).
        norm: ``"capnorm"`` (nonparametric), ``"batchnorm"`` / ``"batchnorm_affine"``
            (parametric baseline, BatchNorm without / with free mean and variance
            parameters), or ``"none"``. Only ``capnorm`` and ``none`` can grow.
        output_norm: also normalise the output pre-activations (the logits). Default ``None``:
            True with CapNorm, False otherwise. The paper does not say; with an unnormalised
            output layer AdaRad's unnormalised radial step ``alpha_r r`` (Algorithm 1 line 15)
            makes gradient descent on the output fan-ins' lengths unstable once
            ``alpha_r = 1 / (5 lambda)`` is large (poker, lambda <= 1e-6: training diverges),
            while behind CapNorm the length of a fan-in whose pre-activations have
            ``sigma > 1`` gets no radial gradient at all (section 4.2). ``False`` is the
            literal reading (README, "Choices the paper leaves open").
        capnorm_eval_stats: CapNorm's evaluation statistics (see :class:`CapNorm`).
        norm_momentum: running-statistics momentum of CapNorm / BatchNorm.
        generator: random generator for the initial weights.
    """

    def __init__(
        self,
        in_features: int,
        hidden_sizes: Sequence[int],
        out_features: int,
        *,
        norm: str = "capnorm",
        output_norm: bool | None = None,
        capnorm_eval_stats: str = "running",
        norm_momentum: float = 0.1,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        hidden_sizes = [int(h) for h in hidden_sizes]
        if norm not in NORMS:
            raise ValueError(f"NonparametricMLP: norm must be one of {NORMS}, got {norm!r}")
        if in_features < 1 or out_features < 1:
            raise ValueError(f"NonparametricMLP: in_features and out_features must be >= 1, "
                             f"got {in_features} and {out_features}")
        if any(h < 0 for h in hidden_sizes):
            raise ValueError(f"NonparametricMLP: hidden sizes must be >= 0, got {hidden_sizes}")
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.norm = norm
        self.output_norm = norm == "capnorm" if output_norm is None else bool(output_norm)
        self.capnorm_eval_stats, self.norm_momentum = capnorm_eval_stats, norm_momentum
        dims = [self.in_features, *hidden_sizes, self.out_features]
        self.linears = nn.ModuleList(nn.Linear(a, b, bias=False) for a, b in zip(dims[:-1], dims[1:]))
        widths = hidden_sizes + ([self.out_features] if self.output_norm else [])
        self.norms = nn.ModuleList(_make_norm(norm, w, capnorm_eval_stats, norm_momentum) for w in widths)
        with torch.no_grad():
            for lin in self.linears:
                lin.weight.copy_(self._random_fan_ins(lin.out_features, lin.in_features, lin.weight, generator))
        # unit ids and records: ids are assigned in order of birth, so records[i] is unit i
        self._unit_ids = [torch.arange(sum(hidden_sizes[:l]), sum(hidden_sizes[: l + 1]))
                          for l in range(len(hidden_sizes))]
        self._records = {"layer": [l for l, h in enumerate(hidden_sizes) for _ in range(h)],
                         "birth": [0] * sum(hidden_sizes), "death": [None] * sum(hidden_sizes)}

    # ------------------------------------------------------------- shape info
    @property
    def num_hidden_layers(self) -> int:
        return len(self.linears) - 1

    @property
    def hidden_sizes(self) -> list[int]:
        return [lin.out_features for lin in self.linears[:-1]]

    @property
    def weights(self) -> list[Tensor]:
        """The weight matrices ``W_1 .. W_L`` (rows = fan-ins)."""
        return [lin.weight for lin in self.linears]

    def config(self) -> dict:
        """Constructor arguments that rebuild a network of the current shape (store it in checkpoints)."""
        return dict(in_features=self.in_features, hidden_sizes=self.hidden_sizes, out_features=self.out_features,
                    norm=self.norm, output_norm=self.output_norm, capnorm_eval_stats=self.capnorm_eval_stats,
                    norm_momentum=self.norm_momentum)

    def num_weights(self) -> int:
        return sum(w.numel() for w in self.weights)

    def unit_ids(self, layer: int) -> Tensor:
        """Stable ids of the units of hidden layer ``layer``, in weight-row order."""
        return self._unit_ids[layer].clone()

    def unit_records(self) -> list[dict]:
        """One dict per unit ever created: ``id``, ``layer``, ``birth`` and ``death`` (None if alive) steps."""
        r = self._records
        return [dict(id=i, layer=l, birth=b, death=d)
                for i, (l, b, d) in enumerate(zip(r["layer"], r["birth"], r["death"]))]

    @torch.no_grad()
    def unit_lengths(self) -> list[dict[str, Tensor]]:
        """Per hidden layer: unit ``ids`` and the l2 lengths of their ``fan_in`` and ``fan_out`` (Fig. 3E/F)."""
        return [dict(ids=self.unit_ids(l), fan_in=self.linears[l].weight.norm(dim=1).cpu(),
                     fan_out=self.linears[l + 1].weight.norm(dim=0).cpu()) for l in range(self.num_hidden_layers)]

    # ---------------------------------------------------------------- forward
    def forward(self, x: Tensor, capnorm_stats: list[tuple[Tensor, Tensor] | None] | None = None) -> Tensor:
        """The logits of ``x``. ``capnorm_stats``: each CapNorm's :meth:`CapNorm.running_stats` (``None`` for other
        layers), computed once for many calls in evaluation (:meth:`evaluate`)."""
        h = x
        for l, lin in enumerate(self.linears):
            z = F.linear(h, lin.weight)
            hidden = l < self.num_hidden_layers
            norm = self.norms[l] if l < len(self.norms) else None
            if isinstance(norm, CapNorm) and capnorm_stats is not None:
                h = z = norm(z, relu=hidden, stats=capnorm_stats[l])
            elif isinstance(norm, CapNorm):  # CapNorm and, in a hidden layer, the ReLU after it: one kernel
                h = z = norm(z, lin.weight.detach().norm(dim=1), relu=hidden)
            else:
                if norm is not None:
                    z = norm(z)
                if hidden:
                    h = F.relu(z)
        return z

    def evaluate(self, x: Tensor, rows: int) -> Tensor:
        """The logits of ``x`` in evaluation mode, ``rows`` rows at a time, each CapNorm's statistics computed once
        for all blocks: each row's logits are the same floats as ``self(x)``'s. In one call where a CapNorm
        normalizes with each batch's own statistics (``eval_stats="batch"``), which blocks would change."""
        batch_stats = any(isinstance(norm, CapNorm) and norm.eval_stats == "batch" for norm in self.norms)
        if self.training or batch_stats or len(x) <= rows:
            return self(x)
        norms = [self.norms[l] if l < len(self.norms) else None for l in range(len(self.linears))]
        stats = [norm.running_stats(lin.weight.detach().norm(dim=1)) if isinstance(norm, CapNorm) else None
                 for lin, norm in zip(self.linears, norms)]
        return torch.cat([self(block, stats) for block in x.split(rows)])

    # ---------------------------------------------------------- shape changes
    @staticmethod
    def _random_fan_ins(n: int, d_in: int, like: Tensor, generator: torch.Generator | None) -> Tensor:
        """``n`` fan-ins ~ N(0, std = 1/sqrt(d_in)) (Table 3): expected squared length 1."""
        device = generator.device if generator is not None else like.device
        w = torch.randn(n, d_in, generator=generator, device=device, dtype=like.dtype)
        return (w / math.sqrt(max(d_in, 1))).to(like.device)

    def _check_layer(self, layer: int) -> None:
        if not 0 <= layer < self.num_hidden_layers:
            raise IndexError(f"hidden layer index must be in [0, {self.num_hidden_layers}), got {layer}")

    def _resize_units(self, layer: int, keep: Tensor | None, new_fan_ins: Tensor, optimizer: Optimizer | None) -> None:
        """Keep units ``keep`` (None = all) of hidden layer ``layer`` and append units with ``new_fan_ins``
        and zero fan-outs; the one place where weights, norm statistics and optimizer state change shape."""
        n_new = new_fan_ins.shape[0]
        lin, nxt = self.linears[layer], self.linears[layer + 1]
        next_norm = self.norms[layer + 1] if layer + 1 < len(self.norms) else None
        old_lengths = nxt.weight.detach().norm(dim=1) if isinstance(next_norm, CapNorm) else None
        zero_fan_outs = nxt.weight.new_zeros(nxt.out_features, n_new)
        for param, dim, new in ((lin.weight, 0, new_fan_ins), (nxt.weight, 1, zero_fan_outs)):
            _replace(param, select_and_extend(param.detach(), dim, keep, new))
            if optimizer is not None:
                resize_state(optimizer, param, dim, keep, n_new)
        lin.out_features = nxt.in_features = lin.weight.shape[0]
        if isinstance(self.norms[layer], CapNorm):
            self.norms[layer].resize(keep, n_new)
        if old_lengths is not None:
            next_norm.fan_ins_rescaled(old_lengths, nxt.weight.detach().norm(dim=1))

    def add_units(self, layer: int, n: int, *, step: int = 0, optimizer: Optimizer | None = None,
                  generator: torch.Generator | None = None) -> Tensor:
        """Add ``n`` units to hidden layer ``layer`` (Algorithm 1 line 24).

        Their fan-ins are random at the initial scale ``N(0, 1/sqrt(d_in))`` (Table 3),
        their fan-outs exactly zero, so the network's function is unchanged. Returns the
        new units' ids.
        """
        self._check_layer(layer)
        if self.norm not in GROWABLE_NORMS:
            raise ValueError(f"add_units: a network with norm={self.norm!r} cannot grow (BatchNorm would "
                             f"rescale the penalised fan-ins); use norm='capnorm' or 'none'")
        n = int(n)
        if n < 0:
            raise ValueError(f"add_units: n must be >= 0, got {n}")
        lin = self.linears[layer]
        self._resize_units(layer, None, self._random_fan_ins(n, lin.in_features, lin.weight, generator), optimizer)
        start = len(self._records["layer"])
        ids = torch.arange(start, start + n)
        self._unit_ids[layer] = torch.cat([self._unit_ids[layer], ids])
        self._records["layer"] += [layer] * n
        self._records["birth"] += [int(step)] * n
        self._records["death"] += [None] * n
        return ids

    def grow(self, rate: float, *, step: int = 0, optimizer: Optimizer | None = None,
             generator: torch.Generator | None = None) -> list[int]:
        """Add ``rate`` units to every hidden layer (Algorithm 1 lines 22-24).

        A non-integer rate draws ``Poisson(rate)`` units per layer (line 23). Layers grow
        top-down, as lines 22-24 sit in the loop ``for l = L to 1`` (line 9): layer ``l + 1``
        has its new units before layer ``l`` gets its own, whose fan-outs are then zero
        throughout (line 24), new units of layer ``l + 1`` included. Returns the number added
        to each layer (bottom-up order).
        """
        if not (rate >= 0 and math.isfinite(rate)):
            raise ValueError(f"grow: rate (nu) must be a finite number >= 0, got {rate!r}")
        added = [0] * self.num_hidden_layers
        for layer in reversed(range(self.num_hidden_layers)):  # Alg. 1 line 9: l = L to 1
            if float(rate).is_integer():
                n = int(rate)
            else:
                n = int(torch.poisson(torch.tensor(float(rate)), generator=generator))
            self.add_units(layer, n, step=step, optimizer=optimizer, generator=generator)
            added[layer] = n
        return added

    @torch.no_grad()
    def remove_dead_units(self, *, step: int = 0, optimizer: Optimizer | None = None) -> list[int]:
        """Remove every hidden unit whose fan-in is exactly zero, with its fan-out (Algorithm 1 lines 18-19).

        Such a unit outputs 0 for every input, so the function is unchanged. Layers are
        checked bottom-up, so a unit whose only nonzero inputs are removed here has a zero
        fan-in at once and is removed in the same call: afterwards no hidden unit has a zero
        fan-in. (Algorithm 1's top-down loop would remove it one step later; the choice is
        README's.) Returns the number removed from each layer.
        """
        hidden = [lin.weight for lin in self.linears[:-1]]
        counts = npnn_fused.count_zero_rows(hidden) or [None] * len(hidden)  # one call for all layers
        removed = []
        for layer, count in enumerate(counts):
            n_dead = 0
            if removed and removed[-1]:  # the layer below lost units: their fan-outs left this layer's fan-ins
                count = None
            if count is None or count > 0:
                alive = (self.linears[layer].weight != 0).any(dim=1)
                n_dead = int((~alive).sum())
            if n_dead:
                dead_ids = self._unit_ids[layer][(~alive).cpu()]
                keep = alive.nonzero().squeeze(1)
                self._resize_units(layer, keep,
                                   self.linears[layer].weight.new_zeros(0, self.linears[layer].in_features), optimizer)
                self._unit_ids[layer] = self._unit_ids[layer][keep.cpu()]
                for i in dead_ids.tolist():
                    self._records["death"][i] = int(step)
            removed.append(n_dead)
        return removed

    # ------------------------------------------------------------ persistence
    def get_extra_state(self) -> dict:
        return {"unit_ids": [ids.tolist() for ids in self._unit_ids],
                "records": {k: list(v) for k, v in self._records.items()}}

    def set_extra_state(self, state: dict) -> None:
        self._unit_ids = [torch.tensor(ids, dtype=torch.long) for ids in state["unit_ids"]]
        self._records = {k: list(v) for k, v in state["records"].items()}

    @staticmethod
    def hidden_sizes_in(state_dict: dict, prefix: str = "") -> list[int]:
        """Hidden sizes of the network a state dict was saved from."""
        n = sum(1 for k in state_dict if k.startswith(prefix + "linears.") and k.endswith(".weight"))
        return [state_dict[f"{prefix}linears.{l}.weight"].shape[0] for l in range(n - 1)]

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False, *, resize: bool = False):
        """As ``nn.Module.load_state_dict``; a state dict of other hidden sizes is refused with a
        clear error, or, with ``resize=True``, loaded after resizing this network in place
        (its ``nn.Parameter`` objects stay the same, so an optimizer keeps pointing at them;
        load the optimizer's matching state dict afterwards)."""
        theirs = self.hidden_sizes_in(state_dict)
        if len(theirs) != self.num_hidden_layers:
            raise ValueError(f"state dict has {len(theirs)} hidden layers, this network {self.num_hidden_layers}: "
                             f"rebuild it with NonparametricMLP(**checkpoint['model_config'])")
        if theirs != self.hidden_sizes:
            if not resize:
                raise ValueError(f"state dict has hidden sizes {theirs}, this network {self.hidden_sizes}: rebuild "
                                 f"it with NonparametricMLP(**checkpoint['model_config']) or pass resize=True")
            self._resize_to(theirs)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    @torch.no_grad()
    def _resize_to(self, hidden_sizes: Sequence[int]) -> None:
        if self.norm not in GROWABLE_NORMS:
            raise ValueError(f"a network with norm={self.norm!r} has fixed sizes {self.hidden_sizes}; rebuild it "
                             f"with NonparametricMLP(**checkpoint['model_config']) to load sizes {list(hidden_sizes)}")
        for l, width in enumerate(hidden_sizes):
            lin, nxt = self.linears[l], self.linears[l + 1]
            _replace(lin.weight, lin.weight.new_zeros(width, lin.in_features))
            _replace(nxt.weight, nxt.weight.new_zeros(nxt.out_features, width))
            lin.out_features = nxt.in_features = width
            if isinstance(self.norms[l], CapNorm):
                self.norms[l].resize(torch.arange(0), width)
