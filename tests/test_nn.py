import pytest
import torch

from npnn.nn import CapNorm, NonparametricMLP
from npnn.optim import AdaRad
from npnn.regularizers import omega_in, omega_out


def make_net(hidden=(6, 5), norm="capnorm", seed=0, **kw):
    g = torch.Generator().manual_seed(seed)
    return NonparametricMLP(4, list(hidden), 3, norm=norm, generator=g, **kw).double()


def batch(n=64, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, generator=g, dtype=torch.float64) * 3


# ------------------------------------------------------------------ CapNorm
@pytest.mark.parametrize("scale", [0.3, 5.0])  # std < 1 and std > 1
def test_capnorm_equals_formula(scale):
    g = torch.Generator().manual_seed(0)
    z = (torch.randn(200, 7, generator=g, dtype=torch.float64) * scale + 2.0)
    out = CapNorm(7).double()(z)
    mu = z.mean(0)
    sigma = ((z - mu) ** 2).mean(0).sqrt()
    expected = (z - mu) / torch.maximum(sigma, torch.ones_like(sigma))
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    if scale < 1:
        torch.testing.assert_close(out, z - mu)  # not scaled below std 1
    else:
        torch.testing.assert_close(out.std(0, unbiased=False), torch.ones(7, dtype=torch.float64))


def test_capnorm_has_no_parameters_and_finite_gradient_at_zero_variance():
    norm = CapNorm(3)
    assert list(norm.parameters()) == []
    z = torch.ones(5, 3, requires_grad=True)  # constant: variance exactly 0
    norm(z).sum().backward()
    assert torch.isfinite(z.grad).all()


def test_capnorm_eval_modes():
    g = torch.Generator().manual_seed(0)
    norm = CapNorm(4, eval_stats="running", momentum=0.5)
    z = torch.randn(100, 4, generator=g) * 3 + 1
    norm.train()
    norm(z)
    norm(z)
    # two updates with momentum 0.5 from (0, 1): 0.75 of the batch statistics
    torch.testing.assert_close(norm.running_mean, 0.75 * z.mean(0))
    torch.testing.assert_close(norm.running_var, 0.25 + 0.75 * z.var(0, unbiased=False))
    norm.eval()
    x = torch.randn(10, 4, generator=g)
    expected = (x - norm.running_mean) / norm.running_var.clamp_min(1).sqrt()
    torch.testing.assert_close(norm(x), expected)
    batch_norm = CapNorm(4, eval_stats="batch").eval()
    torch.testing.assert_close(batch_norm(x), CapNorm(4).train()(x))
    with pytest.raises(ValueError, match="eval_stats"):
        CapNorm(4, eval_stats="population")


# ---------------------------------------------------------------- network
def test_initial_fan_ins_have_expected_squared_length_one():
    net = NonparametricMLP(400, [2000], 10, generator=torch.Generator().manual_seed(0))
    sq = net.linears[0].weight.pow(2).sum(1)
    assert abs(sq.mean().item() - 1) < 0.01  # E|w|^2 = d_in * (1/sqrt(d_in))^2 = 1
    assert abs(net.linears[0].weight.std().item() - 400 ** -0.5) < 1e-3
    assert abs(net.linears[1].weight.std().item() - 2000 ** -0.5) < 2e-3


def warm_up_running_stats(net, steps=5):
    net.train()
    for s in range(steps):
        net(batch(seed=10 + s))


@pytest.mark.parametrize("norm", ["capnorm", "none"])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_add_units_is_f_equivalent(norm, mode):
    net = make_net(norm=norm)
    warm_up_running_stats(net)
    net.train(mode == "train")
    x = batch()
    before = net(x)
    new = [net.add_units(0, 3, step=7), net.add_units(1, 2, step=7)]
    assert net.hidden_sizes == [9, 7]
    assert torch.equal(net.linears[1].weight[:5, 6:], torch.zeros(5, 3, dtype=torch.float64))  # zero fan-outs
    assert torch.equal(net.linears[2].weight[:, 5:], torch.zeros(3, 2, dtype=torch.float64))
    assert net.linears[0].weight[6:].abs().sum() > 0  # random fan-in
    torch.testing.assert_close(net(x), before, rtol=0, atol=1e-12)
    assert [t.tolist() for t in new] == [[11, 12, 13], [14, 15]]


@pytest.mark.parametrize("norm", ["capnorm", "none"])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_remove_dead_units_is_f_equivalent(norm, mode):
    net = make_net(norm=norm)
    warm_up_running_stats(net)
    with torch.no_grad():
        net.linears[0].weight[[1, 4]] = 0  # dead units with nonzero fan-outs
        net.linears[1].weight[2] = 0
    assert net.linears[1].weight[:, [1, 4]].abs().sum() > 0 and net.linears[2].weight[:, 2].abs().sum() > 0
    net.train(mode == "train")
    x = batch()
    before = net(x)
    assert net.remove_dead_units(step=3) == [2, 1]
    assert net.hidden_sizes == [4, 4]
    torch.testing.assert_close(net(x), before, rtol=0, atol=1e-12)
    assert net.unit_ids(0).tolist() == [0, 2, 3, 5]
    assert net.unit_ids(1).tolist() == [6, 7, 9, 10]
    deaths = {r["id"]: r["death"] for r in net.unit_records()}
    assert deaths[1] == deaths[4] == deaths[8] == 3
    assert sum(d is not None for d in deaths.values()) == 3


def test_unit_records_and_lengths():
    net = make_net(hidden=(2, 2))
    net.add_units(1, 1, step=5)
    with torch.no_grad():
        net.linears[0].weight[0] = 0
    net.remove_dead_units(step=9)
    records = net.unit_records()
    assert records == [
        dict(id=0, layer=0, birth=0, death=9), dict(id=1, layer=0, birth=0, death=None),
        dict(id=2, layer=1, birth=0, death=None), dict(id=3, layer=1, birth=0, death=None),
        dict(id=4, layer=1, birth=5, death=None),
    ]
    lengths = net.unit_lengths()
    assert lengths[1]["ids"].tolist() == [2, 3, 4]
    torch.testing.assert_close(lengths[1]["fan_in"], net.linears[1].weight.norm(dim=1))
    assert lengths[1]["fan_out"][2] == 0  # the new unit


def test_grow_integer_and_poisson_rates():
    net = make_net(hidden=(3, 3))
    assert net.grow(1, step=1) == [1, 1]
    assert net.hidden_sizes == [4, 4]
    g = torch.Generator().manual_seed(0)
    counts = [sum(make_net(hidden=(3, 3)).grow(0.5, generator=g)) for _ in range(400)]
    assert abs(sum(counts) / (2 * 400) - 0.5) < 0.07  # Poisson(0.5) per layer (Alg. 1 line 23)
    assert len(set(counts)) > 1
    with pytest.raises(ValueError, match="rate"):
        net.grow(-1)


def test_grow_all_layers_at_once_gives_every_new_unit_a_zero_fan_out():
    # Alg. 1 lines 22-24 run inside the top-down loop of line 9: a new unit of layer l + 1 must not
    # get a random weight from a new unit of layer l
    net = make_net(hidden=(3, 3, 3))
    x = batch()
    before = net(x)
    old_ids = [net.unit_ids(l) for l in range(3)]
    assert net.grow(2, step=1) == [2, 2, 2]
    for l in range(3):
        new = ~torch.isin(net.unit_ids(l), old_ids[l])
        assert int(new.sum()) == 2
        assert torch.count_nonzero(net.linears[l + 1].weight[:, new]) == 0  # zero fan-outs (section 3)
        assert bool((net.linears[l].weight[new].norm(dim=1) > 0).all())  # random fan-ins
    torch.testing.assert_close(net(x), before, rtol=0, atol=1e-12)


@pytest.mark.parametrize("fused", [False, True])
def test_a_unit_whose_inputs_all_die_is_removed_in_the_same_step(fused):
    # unit 0 of layer 2 listens only to units 1 and 4 of layer 1, which die: on both paths (fused
    # kernels and eager code) it goes in the same call, after which no hidden unit has a zero fan-in
    import npnn.fused
    if fused and not npnn.fused.load():
        pytest.skip("fused kernels not available")
    net = make_net(hidden=(6, 5, 4))
    with torch.no_grad():
        net.linears[0].weight[[1, 4]] = 0
        net.linears[1].weight[0] = 0
        net.linears[1].weight[0, [1, 4]] = 1.0
        net.linears[2].weight[:, 0] = 0.5  # units of layer 3 whose only input is that unit
        net.linears[2].weight[1:, :][:2] = 0
        net.linears[2].weight[1:3, 0] = 0.5
    dead_layer2 = net.unit_ids(1)[0].item()
    with npnn.fused.use(fused):
        assert net.remove_dead_units(step=7) == [2, 1, 2]
        assert net.remove_dead_units(step=8) == [0, 0, 0]
    assert all(bool((w != 0).any(dim=1).all()) for w in net.weights[:-1])
    assert net.unit_records()[dead_layer2]["death"] == 7


def test_growth_refused_for_batchnorm_and_bad_arguments():
    net = make_net(norm="batchnorm")
    with pytest.raises(ValueError, match="cannot grow"):
        net.add_units(0, 1)
    with pytest.raises(ValueError, match="norm must be one of"):
        make_net(norm="layernorm")
    with pytest.raises(IndexError, match="hidden layer index"):
        make_net().add_units(2, 1)


@pytest.mark.parametrize("norm", ["batchnorm", "batchnorm_affine"])
def test_parametric_baseline_uses_batchnorm(norm):
    net = make_net(norm=norm)
    assert all(isinstance(m, torch.nn.BatchNorm1d) and m.affine == (norm == "batchnorm_affine") for m in net.norms)
    assert net(batch()).shape == (64, 3)


def test_output_norm_option():
    net = make_net()  # default with CapNorm: the logits are CapNorm-ed too
    assert len(net.norms) == 3 and net.output_norm and net.config()["output_norm"]
    out = net(batch(n=500))
    assert out.std(0, unbiased=False).max() <= 1 + 1e-9
    assert len(make_net(output_norm=False).norms) == 2  # the literal reading
    assert not make_net(norm="batchnorm").output_norm  # the parametric baseline keeps plain logits


def test_state_dict_roundtrip_rebuilds_shape():
    net = make_net()
    net.add_units(0, 2, step=4)
    with torch.no_grad():
        net.linears[1].weight[0] = 0
    net.remove_dead_units(step=6)
    sd = net.state_dict()
    fresh = make_net(seed=5)
    with pytest.raises(ValueError, match=r"hidden sizes \[8, 4\].*NonparametricMLP\(\*\*checkpoint"):
        fresh.load_state_dict(sd)
    rebuilt = NonparametricMLP(**net.config()).double()
    rebuilt.load_state_dict(sd)
    param_ids = [id(p) for p in fresh.parameters()]
    fresh.load_state_dict(sd, resize=True)
    assert [id(p) for p in fresh.parameters()] == param_ids  # same Parameter objects
    for other in (rebuilt, fresh):
        assert other.hidden_sizes == [8, 4]
        assert other.unit_records() == net.unit_records()
        assert [other.unit_ids(l).tolist() for l in range(2)] == [net.unit_ids(l).tolist() for l in range(2)]
        net.eval(), other.eval()
        torch.testing.assert_close(other(batch()), net(batch()))


# -------------------------------------------------------------- Proposition 1
def test_proposition_1_rescaling_layers_keeps_f_and_the_penalty():
    net = make_net(hidden=(7, 5), norm="none")
    x = batch()
    before = net(x)
    lambdas = torch.tensor([2e-3, 5e-4, 3e-2], dtype=torch.float64)
    lam = lambdas.prod() ** (1 / 3)
    factors = lambdas / lam
    assert torch.isclose(factors.prod(), torch.tensor(1.0, dtype=torch.float64))
    per_layer = sum(l * w.norm(dim=1).sum() for l, w in zip(lambdas, net.weights))
    with torch.no_grad():
        for w, f in zip(net.weights, factors):
            w.mul_(f)
    torch.testing.assert_close(net(x), before, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(omega_in(net, lam.item()), per_layer.detach(), rtol=1e-12, atol=0)


# -------------------------------------------------------------- regularisers
def test_regularisers_for_p_1_and_2():
    w1 = torch.tensor([[3.0, -4.0], [0.0, 1.0], [1.0, 1.0]])  # 3 units, fan-ins are rows
    w2 = torch.tensor([[1.0, 2.0, -2.0]])
    assert omega_in([w1, w2], 0.5, p=2).item() == pytest.approx(0.5 * (5 + 1 + 2 ** 0.5 + 3))
    assert omega_in([w1, w2], 0.5, p=1).item() == pytest.approx(0.5 * (7 + 1 + 2 + 5))
    assert omega_out([w1, w2], 0.5, p=2).item() == pytest.approx(0.5 * (10 ** 0.5 + 18 ** 0.5 + 1 + 2 + 2))
    assert omega_out([w1, w2], 0.5, p=1).item() == pytest.approx(0.5 * (4 + 6 + 1 + 2 + 2))
    with pytest.raises(ValueError, match="p"):
        omega_in([w1], 1.0, p=0.5)


def test_shrunk_unit_is_removed_after_adarad_step():
    net = NonparametricMLP(4, [5, 5], 3, generator=torch.Generator().manual_seed(0))
    opt = AdaRad(net.parameters(), alpha_r=10.0, alpha_phi=1.0, lam=0.01, dataset_size=100, batch_size=10)
    tau = 10.0 * 0.01 * 10 / 100  # shrink threshold alpha_r * lam * |D^t| / |D|
    assert min(w.norm(dim=1).min() for w in net.weights) > tau
    with torch.no_grad():
        net.linears[0].weight[2] *= 0.9 * tau / net.linears[0].weight[2].norm()
    dead_id = net.unit_ids(0)[2].item()
    for p in net.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    assert torch.equal(net.linears[0].weight[2], torch.zeros(4))  # exactly zero
    assert net.remove_dead_units(step=1, optimizer=opt) == [1, 0]
    assert dead_id not in net.unit_ids(0).tolist()


def test_capnorm_running_stats_stay_finite_for_a_zero_fan_in():
    net = make_net(output_norm=True)
    with torch.no_grad():
        net.linears[2].weight[1] = 0  # an output row shrunk to zero stays in the network
    warm_up_running_stats(net)
    assert torch.isfinite(net.norms[2].running_mean).all() and torch.isfinite(net.norms[2].running_var).all()
    net.eval()
    out = net(batch())
    assert torch.isfinite(out).all() and torch.equal(out[:, 1], torch.zeros(64, dtype=torch.float64))


def test_capnorm_gradient_matches_autograd_of_the_formula():
    z = (torch.randn(300, 6, dtype=torch.float64) * torch.tensor([0.2, 0.7, 0.99, 1.01, 2.0, 5.0], dtype=torch.float64))
    z.requires_grad_(True)

    def formula(v):
        mu = v.mean(0)
        sigma = ((v - mu) ** 2).mean(0).sqrt()
        return (v - mu) / torch.maximum(sigma, torch.ones_like(sigma))

    g = torch.randn(300, 6, dtype=torch.float64)
    expected = torch.autograd.grad(formula(z), z, g)[0]
    got = torch.autograd.grad(CapNorm(6, eval_stats="batch").double()(z), z, g)[0]
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
    assert torch.autograd.gradcheck(lambda v: CapNorm(6, eval_stats="batch").double()(v),
                                    (z[:20].detach().requires_grad_(),))
