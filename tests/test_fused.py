"""The fused CPU kernels (npnn.fused) against the eager reference code they replace."""
import copy
import os

import pytest
import torch

import npnn.fused
from npnn.nn import CapNorm, NonparametricMLP
from npnn.optim import AdaRad

pytestmark = pytest.mark.skipif(npnn.fused.disabled_by_env(), reason="NPNN_FUSED=0")


def test_the_kernels_build_here():
    """CI machines have a compiler: the fast path, not the fallback, is what the other tests exercise."""
    assert npnn.fused.load(), npnn.fused._state.get("error")
    assert npnn.fused.active(torch.zeros(1)) and npnn.fused.active(torch.zeros(1, dtype=torch.float64))
    assert not npnn.fused.active(torch.zeros(1, dtype=torch.float16))
    with npnn.fused.use(False):
        assert not npnn.fused.active(torch.zeros(1))
    assert npnn.fused.active(torch.zeros(1))


def make_problem(dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    shapes = [(30, 10), (25, 30), (20, 25), (2, 20)]
    weights = [torch.nn.Parameter(torch.randn(*s, generator=g, dtype=dtype) / s[1] ** 0.5) for s in shapes]
    with torch.no_grad():
        weights[1][3] = 0  # a dead row stays zero
        weights[2][5] *= 1e-4  # a short row: shrunk to zero within the run
    return weights


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
def test_adarad_fused_step_equals_the_eager_step(dtype, tol):
    hp = dict(alpha_r=200.0, alpha_phi=30.0, lam=1e-3, dataset_size=5000, batch_size=100, eps=1e-8)
    fused_w, eager_w = make_problem(dtype), make_problem(dtype)
    fused = AdaRad(fused_w, fused=True, **hp)
    eager = AdaRad(eager_w, fused=False, **hp)
    g = torch.Generator().manual_seed(1)
    for step in range(40):
        for a, b in zip(fused_w, eager_w):
            grad = torch.randn(a.shape, generator=g, dtype=dtype) * 10.0 ** (-2 - step % 3)
            if a.shape == (20, 25):
                grad[5] = 0  # the short row only shrinks
            a.grad, b.grad = grad.clone(), grad.clone()
        batch = 37 if step == 7 else None  # a short batch shrinks less
        fused.step(batch_size=batch)
        eager.step(batch_size=batch)
        for a, b in zip(fused_w, eager_w):
            torch.testing.assert_close(a.detach(), b.detach(), rtol=tol, atol=tol)
    assert torch.equal(fused_w[1][3], torch.zeros_like(fused_w[1][3]))
    assert torch.equal(fused_w[2][5], torch.zeros_like(fused_w[2][5]))  # shrunk to exactly zero by both
    assert torch.equal(eager_w[2][5], torch.zeros_like(eager_w[2][5]))
    torch.testing.assert_close(fused.phi_max, eager.phi_max, rtol=tol, atol=0.0)
    torch.testing.assert_close(fused.c_max, eager.c_max, rtol=tol, atol=0.0)
    for a, b in zip(fused_w, eager_w):
        for key in ("phibar", "c"):
            torch.testing.assert_close(fused.state[a][key], eager.state[b][key], rtol=tol, atol=0.0)


def lane_order_sum(x: torch.Tensor) -> torch.Tensor:
    """The kernel's documented order for the sum of a row (csrc/fused.cpp, row_sums): 16-byte vectors,
    lane k sums elements k mod lanes of the whole vectors in order, the rest go to lane 0, then
    (((0 + lane 0) + lane 1) + ...), each addition rounded to x's dtype."""
    lanes = 16 // x.element_size()
    whole = len(x) // lanes * lanes
    acc = torch.zeros(lanes, dtype=x.dtype)
    for j in range(0, whole, lanes):
        acc = acc + x[j:j + lanes]
    for j in range(whole, len(x)):
        acc[0] = acc[0] + x[j]
    total = torch.zeros((), dtype=x.dtype)
    for k in range(lanes):
        total = total + acc[k]
    return total


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_adarad_kernel_sums_rows_in_its_documented_order(dtype):
    """A run's floats, and so the committed records, depend on the order of the kernel's row sums. With
    beta = 1 one step leaves phibar = |phi|^2 = max(|g|^2 - (g.w)^2 / |w|^2, 0) (Algorithm 1 line 11),
    recomputed here from sums in the documented order: equal to the last bit, rows of every length
    remainder, one row and two rows a call."""
    g = torch.Generator().manual_seed(0)
    for n in (1, 3, 4, 5, 10, 17, 85, 111, 283):
        for m in (1, 2, 5):
            w, grad = torch.randn(m, n, generator=g, dtype=dtype), torch.randn(m, n, generator=g, dtype=dtype)
            phibar, c = torch.zeros(m, dtype=dtype), torch.zeros(m, dtype=dtype)
            npnn.fused.adarad_step_([w.clone()], [grad], [phibar], [c], torch.zeros((), dtype=dtype),
                                    torch.zeros((), dtype=dtype), 0.1, 0.1, 1.0, 1e-8, 0.0)
            for i in range(m):
                ww, gw, gg = (lane_order_sum(a * b) for a, b in ((w[i], w[i]), (grad[i], w[i]), (grad[i], grad[i])))
                expected = torch.clamp(gg - gw / ww * gw, min=0)
                assert torch.equal(phibar[i], expected), (n, m, i)


def test_adarad_takes_the_eager_path_where_the_kernel_does_not_apply():
    w = make_problem(torch.float64)
    opt = AdaRad([{"params": w[:2]}, {"params": w[2:], "alpha_phi": 3.0}], alpha_r=1.0, alpha_phi=30.0,
                 dataset_size=100)
    for p in w:
        p.grad = torch.ones_like(p) * 1e-3
    opt.step()  # two sets of hyperparameters: eager (no error)
    assert opt._fused_step(None) is False
    strict = AdaRad([{"params": w[:2]}, {"params": w[2:], "alpha_phi": 3.0}], alpha_r=1.0, alpha_phi=30.0,
                    dataset_size=100, fused=True)
    with pytest.raises(RuntimeError, match="different hyperparameters"):
        strict.step()
    with pytest.raises(ValueError, match="fused"):
        AdaRad(w, alpha_r=1.0, alpha_phi=1.0, dataset_size=10, fused="yes")
    # a gradient the kernel refuses (not contiguous): the same update on the eager path, or the reason
    hp = dict(alpha_r=200.0, alpha_phi=30.0, lam=1e-3, dataset_size=5000, batch_size=100)
    refused, plain = make_problem(torch.float64), make_problem(torch.float64)
    for p, q in zip(refused, plain):
        q.grad = torch.full_like(q, 1e-3)
        p.grad = torch.full((p.shape[1], p.shape[0]), 1e-3, dtype=p.dtype).t()  # the same values, transposed
    AdaRad(refused, **hp).step()
    AdaRad(plain, fused=False, **hp).step()
    for p, q in zip(refused, plain):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14)
    with pytest.raises(RuntimeError, match="non-contiguous"):
        AdaRad(refused, fused=True, **hp).step()


def test_adarad_state_dict_moves_between_the_two_paths():
    hp = dict(alpha_r=200.0, alpha_phi=30.0, lam=1e-3, dataset_size=5000, batch_size=100)
    w = make_problem(torch.float64)
    opt = AdaRad(w, fused=True, **hp)
    for p in w:
        p.grad = torch.full_like(p, 1e-3)
    opt.step()
    w2 = copy.deepcopy(w)
    opt2 = AdaRad(w2, fused=False, **hp)
    opt2.load_state_dict(opt.state_dict())
    for p, q in zip(w, w2):
        p.grad = torch.full_like(p, -2e-3)
        q.grad = p.grad.clone()
    opt.step()
    opt2.step()
    for p, q in zip(w, w2):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_capnorm_fused_forward_backward_and_running_stats_equal_eager(dtype, tol, relu):
    g = torch.Generator().manual_seed(0)
    scales = torch.tensor([0.1, 0.5, 0.999, 1.001, 2.0, 7.0, 0.0], dtype=dtype)  # below, at and above the cap
    z = torch.randn(300, 7, generator=g, dtype=dtype) * scales + 3.0
    dy = torch.randn(300, 7, generator=g, dtype=dtype)
    lengths = torch.tensor([1.0, 0.5, 2.0, 0.0, 1.5, 3.0, 0.0], dtype=dtype)  # a zero fan-in stores 0
    results = []
    for on in (True, False):
        norm = CapNorm(7, momentum=0.3).to(dtype)
        zz = z.clone().requires_grad_(True)
        with npnn.fused.use(on):
            out = norm(zz, lengths, relu=relu)
            out.backward(dy)
            norm.eval()
            with torch.no_grad():
                evaluated = norm(z, lengths, relu=relu)
        results.append((out.detach(), zz.grad, norm.running_mean.clone(), norm.running_var.clone(), evaluated))
    for fused, eager in zip(*results):
        torch.testing.assert_close(fused, eager, rtol=tol, atol=tol)
    assert torch.isfinite(results[0][1]).all()
    if relu:
        assert (results[0][0] >= 0).all() and (results[0][0] == 0).any() and (results[0][4] == 0).any()


def test_capnorm_relu_gradient_matches_autograd_of_the_formula():
    z = (torch.randn(200, 5, dtype=torch.float64) * torch.tensor([0.3, 0.9, 1.2, 3.0, 6.0], dtype=torch.float64))
    z.requires_grad_(True)
    g = torch.randn(200, 5, dtype=torch.float64)
    mu = z.mean(0)
    sigma = ((z - mu) ** 2).mean(0).sqrt()
    expected = torch.autograd.grad(torch.relu((z - mu) / torch.maximum(sigma, torch.ones_like(sigma))), z, g)[0]
    got = torch.autograd.grad(CapNorm(5, eval_stats="batch").double()(z, relu=True), z, g)[0]
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


def test_count_zero_rows_finds_what_removal_removes():
    net = NonparametricMLP(6, [8, 7, 5], 3, generator=torch.Generator().manual_seed(0)).double()
    with torch.no_grad():
        net.linears[0].weight[[1, 6]] = 0
        net.linears[2].weight[4] = -0.0  # negative zero is zero
        net.linears[1].weight[2, :-1] = 0  # one nonzero entry left: alive
    counts = npnn.fused.count_zero_rows([lin.weight for lin in net.linears])
    assert list(counts) == [2, 0, 1, 0]
    eager = copy.deepcopy(net)
    assert net.remove_dead_units(step=3) == [2, 0, 1]
    with npnn.fused.use(False):
        assert eager.remove_dead_units(step=3) == [2, 0, 1]
    assert net.hidden_sizes == eager.hidden_sizes == [6, 7, 4]


def test_env_switch_is_read(monkeypatch):
    monkeypatch.setenv("NPNN_FUSED", "0")
    assert npnn.fused.disabled_by_env()
    monkeypatch.setenv("NPNN_FUSED", "1")
    assert not npnn.fused.disabled_by_env()
    assert os.environ["NPNN_FUSED"] == "1"


def test_fused_capnorm_refuses_a_double_backward():
    if not npnn.fused.load():
        pytest.skip("no fused kernels here")
    z = torch.randn(50, 4, requires_grad=True)
    out = CapNorm(4)(z, relu=True)
    with pytest.raises(RuntimeError, match="no double backward"):
        torch.autograd.grad(out.square().sum(), z, create_graph=True)


def test_the_kernels_give_the_same_floats_with_any_thread_count():
    """AdaRad's rows and CapNorm's blocks of units go to torch's threads whole: a run's floats do not depend on
    OMP_NUM_THREADS through the kernels."""
    def run(threads):
        torch.set_num_threads(threads)
        g = torch.Generator().manual_seed(0)
        z = (torch.randn(1000, 300, generator=g) * 3).requires_grad_()
        running = [torch.rand(300, generator=g), torch.rand(300, generator=g), torch.rand(300, generator=g)]
        out = npnn.fused.capnorm_train(z, *running, 0.1, True)
        out.backward(torch.randn(out.shape, generator=g))
        w, grad = torch.randn(300, 283, generator=g), torch.randn(300, 283, generator=g)
        phibar, c = torch.rand(300, generator=g), torch.rand(300, generator=g)
        phi_max, c_max = torch.tensor(1.0), torch.tensor(1.0)
        npnn.fused.adarad_step_([w], [grad], [phibar], [c], phi_max, c_max, 0.3, 0.7, 0.1, 1e-8, 1e-3)
        return [out.detach(), z.grad, *running, w, phibar, c, phi_max]

    before = torch.get_num_threads()
    try:
        one, four = run(1), run(4)
        assert npnn.fused.parallel_threads() == 4  # the four threads were used: the build has OpenMP
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(a, b) for a, b in zip(one, four))


def test_the_kernels_run_on_the_threads_torch_is_given():
    """at::parallel_for is a serial loop in a build without OpenMP: the kernels must get torch's threads."""
    before = torch.get_num_threads()
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            assert npnn.fused.parallel_threads() == threads
    finally:
        torch.set_num_threads(before)


def test_a_compiler_without_openmp_gets_the_serial_build(monkeypatch):
    """The build asks for OpenMP first; where the compiler refuses it, the same kernels are built without."""
    import torch.utils.cpp_extension

    calls = []

    def fake_build(name, sources, extra_cflags, **kwargs):
        calls.append(extra_cflags)
        if "-fopenmp" in extra_cflags:
            raise RuntimeError("clang: error: unsupported option '-fopenmp'")

    monkeypatch.setattr(torch.utils.cpp_extension, "load", fake_build)
    npnn.fused._build(verbose=False)
    assert calls == [["-O3", "-fopenmp"], ["-O3", "-fopenmp-simd"]]
