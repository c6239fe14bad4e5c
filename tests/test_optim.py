import copy
import math

import pytest
import torch

from npnn.nn import NonparametricMLP
from npnn.optim import AdaRad, AdaRadM

D64 = torch.float64


def random_weights(shapes=((5, 4), (3, 5)), seed=0, dtype=D64):
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(*s, generator=g, dtype=dtype) / math.sqrt(s[1])) for s in shapes]


def set_random_grads(params, seed, scale=1e-3):
    g = torch.Generator().manual_seed(10_000 + seed)  # not the weights' seed: g must not be parallel to w
    for p in params:
        p.grad = torch.randn(p.shape, generator=g, dtype=p.dtype) * scale


# ----------------------------------------------- literal Algorithms 1 and 2
def rotate(v, theta, u):
    """Rotate v by theta towards the unit vector u (u orthogonal to v); keeps |v|."""
    return math.cos(theta) * v + math.sin(theta) * v.norm() * u


def reference_step(weights, grads, st, hp, momentum=False):
    """One step of Algorithm 1 (or 2 if momentum), a loop over units, float64.

    Maxima are raised after all running averages (the efficient order of AdaRad.step)."""
    beta, eps = hp["beta"], hp["eps"]
    parts = []
    for l, (W, G) in enumerate(zip(weights, grads)):
        for j in range(W.shape[0]):
            w, g = W[j].clone(), G[j]
            r = (g @ w) / (w @ w) * w if w.norm() > 0 else torch.zeros_like(w)
            phi = g - r
            st["phibar"][l][j] = (1 - beta) * st["phibar"][l][j] + beta * (phi @ phi)
            st["c"][l][j] = (1 - beta) * st["c"][l][j] + beta
            if momentum:
                ba = hp["beta_arith"]
                st["pt"][l][j] = (1 - ba) * st["pt"][l][j] + ba * phi
                st["a"][l][j] = (1 - ba) * st["a"][l][j] + ba
            parts.append((l, j, r, phi))
    st["phi_max"] = max([st["phi_max"]] + [float(v) for p in st["phibar"] for v in p])
    st["c_max"] = max([st["c_max"]] + [float(v) for c in st["c"] for v in c])
    for l, j, r, phi in parts:
        factor = math.sqrt(st["phi_max"] / st["c_max"]) / math.sqrt(st["phibar"][l][j] / st["c"][l][j] + eps)
        phi_adj = factor * (st["pt"][l][j] / st["a"][l][j] if momentum else phi)
        w = weights[l][j] - hp["alpha_r"] * r  # line 15
        theta = hp["alpha_phi"] * phi_adj.norm().item()
        if phi_adj.norm() > 0 and w.norm() > 0:
            w_dir = w / w.norm()
            w = rotate(w, theta, -phi_adj / phi_adj.norm())  # line 16 / 19
            if momentum:  # line 20: the same rotation applied to phitilde
                pt = st["pt"][l][j]
                st["pt"][l][j] = math.cos(theta) * pt + math.sin(theta) * pt.norm() * w_dir
        tau = hp["alpha_r"] * hp["lam"] * hp["batch_size"] / hp["dataset_size"]
        if w.norm() > 0:
            w = w * max(0.0, 1 - tau / w.norm().item())  # line 17 / 21
        weights[l][j] = w


def fresh_reference_state(shapes):
    return dict(phibar=[torch.zeros(s[0], dtype=D64) for s in shapes], c=[torch.zeros(s[0], dtype=D64) for s in shapes],
                pt=[torch.zeros(*s, dtype=D64) for s in shapes], a=[torch.zeros(s[0], dtype=D64) for s in shapes],
                phi_max=0.0, c_max=0.0)


HP = dict(alpha_r=3.0, alpha_phi=30.0, lam=0.02, dataset_size=500, batch_size=50, beta=0.005, eps=1e-8, beta_arith=0.1)


@pytest.mark.parametrize("cls,momentum,fused", [(AdaRad, False, False), (AdaRad, False, None), (AdaRadM, True, None)])
def test_step_matches_a_literal_loop_over_units(cls, momentum, fused):
    shapes = ((6, 4), (5, 6), (3, 5))
    params = random_weights(shapes)
    kw = {k: v for k, v in HP.items() if k != "beta_arith" or momentum}
    if not momentum:
        kw["fused"] = fused  # None: the fused CPU kernel where it is available (npnn.fused), False: eager
    opt = cls(params, HP["alpha_r"], HP["alpha_phi"], HP["lam"],
              **{k: v for k, v in kw.items() if k not in ("alpha_r", "alpha_phi", "lam")})
    ref_w = [p.detach().clone() for p in params]
    st = fresh_reference_state(shapes)
    for t in range(12):
        set_random_grads(params, seed=100 + t, scale=10.0 ** (-1 - t % 3))
        reference_step(ref_w, [p.grad for p in params], st, HP, momentum)
        opt.step()
        for p, w in zip(params, ref_w):
            torch.testing.assert_close(p.detach(), w, rtol=1e-10, atol=1e-12)
    assert opt.phi_max.item() == pytest.approx(st["phi_max"], rel=1e-12)
    assert opt.c_max.item() == pytest.approx(st["c_max"], rel=1e-12)
    moved = sum((p.detach() - w0).norm() for p, w0 in zip(params, random_weights(shapes)))
    assert moved > 0.1  # the test exercised real rotations


def test_global_maxima_span_all_layers_and_never_decrease():
    params = random_weights()
    opt = AdaRad(params, alpha_r=1.0, alpha_phi=1.0, dataset_size=100)
    set_random_grads(params, 0, scale=1.0)
    params[1].grad.mul_(100)  # the largest phibar lives in the second weight
    opt.step()
    phibars = [opt.state[p]["phibar"] for p in params]
    assert opt.phi_max == torch.cat(phibars).max() == phibars[1].max()
    first = opt.phi_max.clone()
    for t in range(5):
        set_random_grads(params, t + 1, scale=1e-6)
        opt.step()
        assert opt.phi_max == first  # small gradients do not lower the maximum
    assert opt.c_max.item() == pytest.approx(1 - (1 - 0.005) ** 6)


def test_rotation_keeps_fan_in_lengths():
    params = random_weights(((50, 20), (10, 50)), dtype=torch.float32)
    before = [p.detach().clone() for p in params]
    opt = AdaRad(params, alpha_r=0.0, alpha_phi=100.0, lam=0.0, dataset_size=1000)
    for t in range(20):
        set_random_grads(params, t)
        opt.step()
    for p, w0 in zip(params, before):
        torch.testing.assert_close(p.detach().norm(dim=1), w0.norm(dim=1), rtol=1e-6, atol=0)
        cosine = torch.nn.functional.cosine_similarity(p.detach(), w0, dim=1)
        assert cosine.max() < 0.99  # every fan-in turned


def test_radial_only_step_is_w_minus_alpha_r_r():
    params = random_weights()
    before = [p.detach().clone() for p in params]
    set_random_grads(params, 3)
    opt = AdaRad(params, alpha_r=7.0, alpha_phi=0.0, lam=0.0, dataset_size=1000)
    opt.step()
    for p, w in zip(params, before):
        g = p.grad
        r = (g * w).sum(1, keepdim=True) / (w * w).sum(1, keepdim=True) * w
        torch.testing.assert_close(p.detach(), w - 7.0 * r, rtol=1e-12, atol=1e-14)


def test_fan_in_below_shrink_threshold_becomes_exactly_zero():
    params = random_weights()
    opt = AdaRad(params, alpha_r=2.0, alpha_phi=10.0, lam=0.05, dataset_size=100, batch_size=10)
    tau = 2.0 * 0.05 * 10 / 100
    with torch.no_grad():
        params[0][1] *= 0.99 * tau / params[0][1].norm()
        params[0][2] *= 1.5 * tau / params[0][2].norm()
    for p in params:
        p.grad = torch.zeros_like(p)
    opt.step()
    assert torch.equal(params[0][1], torch.zeros(4, dtype=D64))
    assert params[0][2].norm().item() == pytest.approx(0.5 * tau)  # shortened by tau, direction kept
    assert (params[0].norm(dim=1) > 0).sum() == 4


def test_unit_of_length_one_lives_about_fifty_epochs():
    """Section 4: alpha_r = 1/(50 lam) lets a unit of fan-in length 1 live 2,500 steps of
    batch 1000 on |D| = 50,000 (50 epochs) under zero loss gradient."""
    lam = 1e-3
    net = NonparametricMLP(8, [4], 2, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        net.linears[0].weight[0] /= net.linears[0].weight[0].norm()
    unit = net.unit_ids(0)[0].item()
    opt = AdaRad(net.parameters(), alpha_r=1 / (50 * lam), alpha_phi=30.0, lam=lam,
                 dataset_size=50_000, batch_size=1000)
    for step in range(1, 2502):
        for p in net.parameters():
            p.grad = torch.zeros_like(p)
        opt.step()
        net.remove_dead_units(step=step, optimizer=opt)
        if step == 2499:
            assert unit in net.unit_ids(0).tolist()
            assert net.linears[0].weight[0].norm().item() == pytest.approx(1 / 2500, rel=0.05)
    assert unit not in net.unit_ids(0).tolist()
    assert net.unit_records()[unit]["death"] in (2500, 2501)


# ----------------------------------------------------------------- AdaRad-M
def momentum_cosines(opt, params):
    out = []
    for p in params:
        pt = opt.state[p]["phitilde"]
        alive = (p.detach().norm(dim=1) > 0) & (pt.norm(dim=1) > 0)
        out.append(torch.nn.functional.cosine_similarity(pt[alive], p.detach()[alive], dim=1).abs())
    return torch.cat(out)


def test_adaradm_momentum_stays_orthogonal_after_rotation_and_removal():
    torch.manual_seed(0)
    net = NonparametricMLP(6, [8, 7], 3, generator=torch.Generator().manual_seed(0)).double()
    opt = AdaRadM(net.parameters(), alpha_r=1.0, alpha_phi=300.0, lam=0.0, dataset_size=64, batch_size=64)
    x, y = torch.randn(64, 6, dtype=D64), torch.randint(0, 3, (64,))
    for _ in range(10):
        opt.zero_grad()
        (torch.nn.functional.cross_entropy(net(x), y, reduction="sum") / 64).backward()
        opt.step()
    assert momentum_cosines(opt, net.parameters()).max() < 1e-9  # after large rotations
    with torch.no_grad():
        net.linears[0].weight[[0, 3]] = 0  # kill two units: columns of W_2 and phitilde_2 go
    pt2_before = opt.state[net.linears[1].weight]["phitilde"].clone()
    net.remove_dead_units(optimizer=opt)
    pt2_cut = pt2_before[:, [1, 2, 4, 5, 6, 7]]
    w2 = net.linears[1].weight.detach()
    raw_cos = torch.nn.functional.cosine_similarity(pt2_cut, w2, dim=1).abs()
    assert raw_cos.max() > 1e-3  # without line 33, removal would break orthogonality
    assert momentum_cosines(opt, net.parameters()).max() < 1e-9  # line 33 restored it


# ------------------------------------------------------- state follows shape
@pytest.mark.parametrize("cls", [AdaRad, AdaRadM, torch.optim.RMSprop, torch.optim.Adam])
def test_growth_and_pruning_keep_surviving_state_and_zero_new_state(cls):
    net = NonparametricMLP(5, [6, 6], 3, generator=torch.Generator().manual_seed(1))
    if cls in (AdaRad, AdaRadM):
        opt = cls(net.parameters(), alpha_r=1.0, alpha_phi=10.0, lam=1e-3, dataset_size=100, batch_size=20)
    else:
        opt = cls(net.parameters(), lr=1e-3)
    x, y = torch.randn(20, 5), torch.randint(0, 3, (20,))
    for _ in range(3):
        opt.zero_grad()
        (torch.nn.functional.cross_entropy(net(x), y, reduction="sum") / 100).backward()
        opt.step()
    W1, W2, W3 = net.weights
    snap = {id(p): {k: v.clone() for k, v in opt.state[p].items() if torch.is_tensor(v) and v.dim() > 0}
            for p in net.parameters()}
    with torch.no_grad():
        W1[[1, 4]] = 0
        W2[0] = 0
    net.remove_dead_units(step=3, optimizer=opt)
    net.add_units(0, 2, step=3, optimizer=opt)
    net.add_units(1, 1, step=3, optimizer=opt)
    keep1, keep2 = [0, 2, 3, 5], [1, 2, 3, 4, 5]  # surviving units of layers 1 and 2
    for key, old in snap[id(W1)].items():
        new = opt.state[W1][key]
        assert new.shape[0] == 6
        if old.dim() == 1:  # per-unit state (AdaRad)
            assert torch.equal(new[:4], old[keep1]) and torch.equal(new[4:], torch.zeros(2))
        else:  # per-weight state (momentum / torch optimizers); W1's columns are inputs: unchanged
            assert torch.equal(new[:4], old[keep1]) and torch.equal(new[4:], torch.zeros(2, 5))
    for key, old in snap[id(W2)].items():
        new = opt.state[W2][key]
        if old.dim() == 1:
            assert torch.equal(new[:5], old[keep2]) and torch.equal(new[5:], torch.zeros(1))
        elif cls is AdaRadM:  # rows of removed units go, columns of removed inputs go, re-orthogonalised
            assert new.shape == (6, 6) and torch.equal(new[5:], torch.zeros(1, 6)) and \
                torch.equal(new[:, 4:], torch.zeros(6, 2))
        else:
            assert torch.equal(new[:5, :4], old[keep2][:, keep1])
            assert torch.equal(new[5:], torch.zeros(1, 6)) and torch.equal(new[:, 4:], torch.zeros(6, 2))
    for key, old in snap[id(W3)].items():
        new = opt.state[W3][key]
        if old.dim() == 1:
            assert torch.equal(new, old)  # output units untouched
        elif cls is not AdaRadM:
            assert torch.equal(new[:, :5], old[:, keep2]) and torch.equal(new[:, 5:], torch.zeros(3, 1))
    opt.zero_grad()  # the resized optimizer keeps training the resized network
    (torch.nn.functional.cross_entropy(net(x), y, reduction="sum") / 100).backward()
    opt.step()
    assert all(torch.isfinite(p).all() for p in net.parameters())


def test_resize_without_optimizer_is_refused_at_the_next_step():
    net = NonparametricMLP(5, [6], 3)
    opt = AdaRad(net.parameters(), alpha_r=1.0, alpha_phi=1.0, dataset_size=10, batch_size=10)
    x = torch.randn(10, 5)
    net(x).sum().backward()
    opt.step()
    net.add_units(0, 1)  # optimizer not passed
    net(x).sum().backward()
    with pytest.raises(RuntimeError, match="changed shape without the optimizer.*optimizer="):
        opt.step()


def test_state_dict_roundtrip_keeps_global_maxima():
    params = random_weights()
    opt = AdaRadM(params, alpha_r=1.0, alpha_phi=3.0, lam=0.01, dataset_size=100, batch_size=10)
    set_random_grads(params, 0)
    opt.step()
    sd = copy.deepcopy(opt.state_dict())  # state_dict() returns references to live state
    clone = [torch.nn.Parameter(p.detach().clone()) for p in params]
    other = AdaRadM(clone, alpha_r=1.0, alpha_phi=3.0, lam=0.01, dataset_size=100, batch_size=10)
    other.load_state_dict(sd)
    assert other.phi_max == opt.phi_max and other.c_max == opt.c_max
    set_random_grads(params, 1)
    set_random_grads(clone, 1)
    opt.step()
    other.step()
    for a, b in zip(params, clone):
        assert torch.equal(a, b)


def test_bad_hyperparameters_are_named():
    params = random_weights()
    with pytest.raises(ValueError, match="lam must be"):
        AdaRad(params, alpha_r=1.0, alpha_phi=1.0, lam=-1.0, dataset_size=10)
    with pytest.raises(ValueError, match="dataset_size"):
        AdaRad(params, alpha_r=1.0, alpha_phi=1.0, dataset_size=0)
    with pytest.raises(ValueError, match="beta_arith"):
        AdaRadM(params, alpha_r=1.0, alpha_phi=1.0, dataset_size=10, beta_arith=1.5)
    with pytest.raises(ValueError, match="rows of 2-D weights"):
        AdaRad([torch.nn.Parameter(torch.zeros(3))], alpha_r=1.0, alpha_phi=1.0, dataset_size=10)


def test_batch_size_override_scales_shrinkage():
    params = random_weights(((1, 3),))
    opt = AdaRad(params, alpha_r=1.0, alpha_phi=0.0, lam=0.1, dataset_size=100, batch_size=10)
    params[0].grad = torch.zeros_like(params[0])
    length = params[0].norm().item()
    opt.step(batch_size=5)
    assert params[0].norm().item() == pytest.approx(length - 1.0 * 0.1 * 5 / 100)


def test_param_groups_accept_generators_and_their_own_hyperparameters():
    w1, w2 = random_weights()
    opt = AdaRadM([{"params": (p for p in [w1])}, {"params": w2, "alpha_phi": 0.0, "beta_arith": 0.5}],
                  alpha_r=1.0, alpha_phi=5.0, dataset_size=10, batch_size=10)
    assert [len(g["params"]) for g in opt.param_groups] == [1, 1]
    assert opt.param_groups[0]["beta_arith"] == 0.1 and opt.param_groups[1]["beta_arith"] == 0.5
    before = w2.detach().clone()
    set_random_grads([w1, w2], 5)
    opt.step()
    assert (w1.detach() != random_weights()[0]).any()  # the generator's weight is trained
    r = (w2.grad * before).sum(1, keepdim=True) / (before * before).sum(1, keepdim=True) * before
    torch.testing.assert_close(w2.detach(), before - r)  # alpha_phi = 0 in this group: radial step only


# ------------------------------------------------- small lambda (Table 2)
def train_ce_at_small_lambda(output_norm: bool, lam=1e-6, n=20_000, batch=1000, steps=300) -> list[float]:
    """Per-step train cross-entropy of a small net on XOR data, alpha_r = 1 / (5 lambda) as on poker."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 6, generator=g)
    y = (x[:, 0] * x[:, 1] > 0).long()
    net = NonparametricMLP(6, [10, 10], 2, output_norm=output_norm, generator=torch.Generator().manual_seed(1))
    opt = AdaRad(net.parameters(), alpha_r=1 / (5 * lam), alpha_phi=30.0, lam=lam, dataset_size=n, batch_size=batch)
    ces = []
    while len(ces) < steps:
        for idx in torch.randperm(n, generator=g).split(batch):
            loss = torch.nn.functional.cross_entropy(net(x[idx]), y[idx], reduction="sum") / n  # Alg. 1 line 8
            opt.zero_grad()
            loss.backward()
            opt.step()
            net.remove_dead_units(step=len(ces), optimizer=opt)
            ces.append(loss.item() * n / len(idx))
    return ces


def test_small_lambda_trains_below_a_constant_predictor():
    # alpha_r = 2e5 at lambda = 1e-6: with CapNorm on the logits (the default) the output fan-ins'
    # lengths get no radial gradient while sigma > 1, and training stays stable
    ces = train_ce_at_small_lambda(output_norm=True)
    assert max(ces[100:]) < math.log(2) and sum(ces[-100:]) / 100 < 0.4
    # the literal reading (plain logits): gradient descent on the output lengths with step alpha_r
    # |D^t| / |D| = 1e4 on the mean loss diverges, far above a constant predictor's ln 2
    literal = train_ce_at_small_lambda(output_norm=False)
    assert sum(literal[-100:]) / 100 > 10 * math.log(2)


# ------------------------------------- the parametric nets' optimizers (alpha)
def _steps(opt, params, n=5, scale=1e-3):
    for i in range(n):
        set_random_grads(params, seed=i, scale=scale)
        opt.step()
    return [p.detach().clone() for p in params]


@pytest.mark.parametrize("algorithm,torch_kwargs,lr_factor", [
    ("sgd", {}, 1.0),
    # m = 0.9 m + 0.1 g from m = 0 (Table 3's beta_arith): torch's undamped buffer is m / beta_arith
    ("momentum", {"momentum": 0.9}, 0.1),
    ("nesterov", {"momentum": 0.9, "nesterov": True}, 0.1),
])
def test_sgd_family_is_torch_sgd_with_the_papers_step_size(algorithm, torch_kwargs, lr_factor):
    from npnn.optim import ParametricOptimizer

    ours, theirs = random_weights(seed=1), random_weights(seed=1)
    got = _steps(ParametricOptimizer(ours, alpha=30.0, algorithm=algorithm), ours)
    want = _steps(torch.optim.SGD(theirs, lr=30.0 * lr_factor, **torch_kwargs), theirs)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("algorithm", ["rmsprop", "adam"])
@pytest.mark.parametrize("scale", ["max", "mean"])
def test_normalised_steps_follow_the_update_rule_with_a_global_scale(algorithm, scale):
    from npnn.optim import ParametricOptimizer

    params = random_weights(seed=2)
    start = [p.detach().clone() for p in params]
    opt = ParametricOptimizer(params, alpha=3.0, algorithm=algorithm, eps=1e-8, scale=scale)
    w = [p.clone() for p in start]
    v = [torch.zeros_like(p) for p in start]
    m = [torch.zeros_like(p) for p in start]
    c = a = v_ref = c_max = 0.0
    for i in range(4):
        set_random_grads(params, seed=i, scale=10.0 ** -i)  # falling gradients: v_ref keeps its maximum
        opt.step()
        grads = [p.grad for p in params]
        c, a = 0.995 * c + 0.005, 0.9 * a + 0.1
        v = [0.995 * vi + 0.005 * g * g for vi, g in zip(v, grads)]
        m = [0.9 * mi + 0.1 * g for mi, g in zip(m, grads)]
        now = max(float(vi.max()) for vi in v) if scale == "max" else \
            sum(float(vi.sum()) for vi in v) / sum(vi.numel() for vi in v)
        v_ref, c_max = max(v_ref, now), max(c_max, c)
        for j, g in enumerate(grads):
            direction = g if algorithm == "rmsprop" else m[j] / a
            w[j] = w[j] - 3.0 * math.sqrt(v_ref / c_max) * direction / torch.sqrt(v[j] / c + 1e-8)
        for p, want in zip(params, w):
            torch.testing.assert_close(p.detach(), want, rtol=1e-10, atol=1e-13)
    assert float(opt.v_ref) == pytest.approx(v_ref, rel=1e-12)  # the maximum of step 0, never lowered


@pytest.mark.parametrize("algorithm", ["rmsprop", "adam"])
def test_normalised_steps_keep_the_gradient_scale(algorithm):
    """As AdaRad's phi_adj: gradients k times larger give steps k times larger (eps aside)."""
    from npnn.optim import ParametricOptimizer

    moves = []
    for k in (1.0, 100.0):
        params = random_weights(seed=3)
        start = [p.detach().clone() for p in params]
        end = _steps(ParametricOptimizer(params, alpha=1.0, algorithm=algorithm, eps=1e-30), params, scale=1e-4 * k)
        moves.append(torch.cat([(e - s).flatten() for e, s in zip(end, start)]))
    torch.testing.assert_close(moves[1], 100.0 * moves[0], rtol=1e-9, atol=1e-15)


def test_parametric_optimizer_state_dict_roundtrip_and_bad_values():
    from npnn.optim import ParametricOptimizer

    params = random_weights(seed=4)
    opt = ParametricOptimizer(params, alpha=10.0, algorithm="adam")
    _steps(opt, params, n=3)
    copy_params = [torch.nn.Parameter(p.detach().clone()) for p in params]
    other = ParametricOptimizer(copy_params, alpha=10.0, algorithm="adam")
    other.load_state_dict(copy.deepcopy(opt.state_dict()))
    assert float(other.v_ref) == float(opt.v_ref) and float(other.c_max) == float(opt.c_max)
    for a, b in zip(_steps(opt, params, n=2), _steps(other, copy_params, n=2)):
        assert torch.equal(a, b)
    for kwargs, msg in (({"algorithm": "adagrad"}, "algorithm must be one of"), ({"alpha": -1.0}, "alpha"),
                        ({"scale": "median"}, "scale must be one of"), ({"beta_quad": 0.0}, "beta_quad"),
                        ({"eps": 0.0}, "eps")):
        with pytest.raises(ValueError, match=msg):
            ParametricOptimizer(random_weights(), **{"alpha": 1.0, **kwargs})


def test_parametric_rmsprop_refuses_new_units_but_follows_removals():
    from npnn.optim import ParametricOptimizer

    net = NonparametricMLP(4, [5], 2)  # the library allows it; the app refuses rmsprop on a growing net
    opt = ParametricOptimizer(net.parameters(), alpha=1.0, algorithm="rmsprop")
    x, y = torch.randn(32, 4), torch.randint(0, 2, (32,))
    torch.nn.functional.cross_entropy(net(x), y).backward()
    opt.step()
    v_before = opt.state[net.linears[0].weight]["v"].clone()
    with torch.no_grad():
        net.linears[0].weight[1] = 0.0  # a dead unit: removal keeps the others' state
    net.remove_dead_units(optimizer=opt)
    torch.testing.assert_close(opt.state[net.linears[0].weight]["v"], v_before[[0, 2, 3, 4]])
    with pytest.raises(RuntimeError, match="cannot add units to a trained parameter"):
        net.add_units(0, 1, optimizer=opt)
