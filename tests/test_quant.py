import math
import pytest
import torch

from pmsm_exp.quant import PQA, make_activation


def test_levels_and_values_round_half_up():
    q = PQA(levels=4, alpha=-0.5, beta=1.0, threshold=4.0)  # θ = 1, levels -2..4
    z = torch.tensor([-9.0, -1.5, -0.5, 0.49, 0.5, 1.5, 2.5, 3.6, 9.0])
    assert q(z).tolist() == [-2, -1, 0, 0, 1, 2, 3, 4, 4]   # θ = 1: the values are the levels
    # θ = 0.5: the values are the levels times θ, written out (ties at half-levels round up)
    q = PQA(levels=4, alpha=-0.5, beta=1.0, threshold=2.0)
    z = torch.tensor([-9.0, -0.75, -0.25, 0.24, 0.25, 0.75, 1.25, 1.8, 9.0])
    assert q(z).tolist() == [-1.0, -0.5, 0.0, 0.0, 0.5, 1.0, 1.5, 2.0, 2.0]


def test_qcfs_is_alpha_zero():
    q = PQA(levels=8, alpha=0.0, beta=1.0, threshold=8.0)
    z = torch.linspace(-10, 10, 101)
    out = q(z)
    assert out.min() == 0 and out.max() == 8.0
    assert torch.equal(out, torch.clamp(torch.floor(z + 0.5), 0, 8))


def test_ste_gradient_inside_range_only_and_threshold_learns():
    q = PQA(levels=8, alpha=-0.25, beta=1.0, threshold=8.0)  # θ = 1, range [-2, 8]
    z = torch.tensor([-5.0, -1.2, 0.3, 4.7, 7.9, 12.0], requires_grad=True)
    q(z).sum().backward()
    assert z.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 1.0, 0.0]
    assert q.threshold.grad is not None and q.threshold.grad.abs() > 0


def test_threshold_gradient_is_level_in_clipped_region():
    q = PQA(levels=8, alpha=-0.25, beta=1.0, threshold=8.0)
    q(torch.tensor([100.0])).sum().backward()
    assert q.threshold.grad.item() == pytest.approx(1.0)  # out = βL·λ/L = λ  -> d/dλ = 1


@pytest.mark.parametrize("kwargs, fragment", [
    (dict(levels=0), "L=0"),
    (dict(levels=-4), "L=-4"),
    (dict(levels=2.5), "L=2.5"),
    (dict(beta=0.0), "beta=0.0"),
    (dict(alpha=0.25), "alpha=0.25"),
    (dict(levels=8, alpha=-0.3), "alpha*L"),
    (dict(levels=8, beta=0.3), "beta*L"),
    (dict(threshold=0.0), "threshold=0.0"),
])
def test_bad_parameters_raise_value_error_naming_value(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment.replace("*", r"\*")):
        PQA(**kwargs)


def test_activation_factory():
    assert isinstance(make_activation("relu")(), torch.nn.ReLU)
    a, b = make_activation("pqa")(), make_activation("pqa")()
    assert a is not b and a.threshold is not b.threshold
    with pytest.raises(ValueError, match="'gelu'.*valid"):
        make_activation("gelu")


# ---------------------------------------------------------------- fused kernels (fused.py)
def formula(z, lam, levels, lo, hi, g):
    """The quantizer and its gradients written out with plain tensor ops (the reference):
    out = clamp(floor(z/θ + 1/2), lo, hi)·θ, θ = λ/L; dz = g where the clamp is inactive;
    dλ = Σ g·(k_clamped - [inside]·z/θ) / L."""
    theta = lam / levels
    q = z / theta
    k = torch.floor(q + 0.5)
    kc = torch.clamp(k, lo, hi)
    inside = (k >= lo) & (k <= hi)
    grad_z = torch.where(inside, g, torch.zeros_like(g))
    grad_lam = (g * (kc - torch.where(inside, q, torch.zeros_like(q)))).sum() / levels
    return kc * theta, grad_z, grad_lam


def fused_run(levels, alpha, beta, lam, z, g, dtype=torch.float32, kernels="eager"):
    q = PQA(levels, alpha, beta, lam).to(dtype)
    q.kernels = kernels
    z = z.clone().requires_grad_()
    out = q(z)
    out.backward(g)
    return out.detach(), z.grad, q.threshold.grad


def random_inputs(levels, alpha, beta, lam, seed):
    """Random currents with exact ties at half-levels, values far outside the range, and zeros."""
    g = torch.Generator().manual_seed(seed)
    theta = lam / levels
    half = (torch.randint(round(alpha * levels) - 3, round(beta * levels) + 3, (300,), generator=g) + 0.5) * theta
    # the neighbours of the half-levels too, where z/θ + 1/2 may round onto or off the next level
    near = torch.cat([torch.nextafter(half[:100], torch.tensor(float("inf"))),
                      torch.nextafter(half[:100], torch.tensor(float("-inf")))])
    z = torch.cat([torch.randn(2000, generator=g) * 3 * lam, half, torch.zeros(5), torch.tensor([1e6, -1e6]), near])
    return z.reshape(-1, 1), torch.randn(z.numel(), generator=g).reshape(-1, 1)


FUSED_CASES = [(8, -0.25, 1.0, 2.5), (4, -1.0, 1.0, 3.0), (8, -0.5, 0.75, 1.75), (16, 0.0, 1.0, 8.0),
               (6, -0.5, 0.5, 3.3), (8, -0.125, 1.0, 2.0)]   # the last: lo = -1, k_clamped = -1 outside


@pytest.mark.parametrize("levels, alpha, beta, lam", FUSED_CASES)
def test_fused_quantizer_equals_formula_bit_for_bit(levels, alpha, beta, lam):
    z, g = random_inputs(levels, alpha, beta, lam, seed=levels)
    lo, hi = round(alpha * levels), round(beta * levels)
    theta = torch.tensor(lam) / levels
    if (lam / levels * 2 ** 12).is_integer():   # θ a short binary fraction: the ties are exact
        ties = z.flatten()[2000:2300]
        assert torch.equal(ties / theta - 0.5, torch.floor(ties / theta - 0.5))
    out, grad_z, grad_lam = fused_run(levels, alpha, beta, lam, z, g)
    ref_out, ref_z, ref_lam = formula(z, torch.tensor(lam), levels, lo, hi, g)
    assert torch.equal(out, ref_out) and torch.equal(grad_z, ref_z) and torch.equal(grad_lam, ref_lam)
    assert (grad_z == 0).any() and (grad_z != 0).any() and grad_lam != 0
    with torch.no_grad():   # the inference path (no autograd) does the same arithmetic
        assert torch.equal(PQA(levels, alpha, beta, lam)(z), ref_out)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
@pytest.mark.parametrize("levels, alpha, beta, lam", FUSED_CASES[:3] + [(64, -0.25, 1.0, 8.0)])
def test_fused_quantizer_bit_for_bit_in_other_dtypes(levels, alpha, beta, lam, dtype):
    # bf16 with 64 levels: too coarse for the saved-residual path (fused._residual_path_exact),
    # so the quantizer recomputes from z; either way the formula's values, bit for bit
    from pmsm_exp.quant import kernels as fused
    z, g = random_inputs(levels, alpha, beta, lam, seed=levels + 1)
    z, g = z.to(dtype), g.to(dtype)
    lo, hi = round(alpha * levels), round(beta * levels)
    q = PQA(levels, alpha, beta, lam).to(dtype)
    zz = z.clone().requires_grad_()
    out = q(zz)
    out.backward(g)
    ref_out, ref_z, ref_lam = formula(z, torch.tensor(lam, dtype=dtype), levels, lo, hi, g)
    assert torch.equal(out, ref_out) and torch.equal(zz.grad, ref_z) and torch.equal(q.threshold.grad, ref_lam)
    assert fused._residual_path_exact(dtype, lo, hi) == (dtype == torch.float64 or hi <= 31)


def test_residual_path_only_where_it_is_exact():
    from pmsm_exp.quant import kernels as fused
    assert fused._residual_path_exact(torch.float32, -2, 8)
    assert not fused._residual_path_exact(torch.float32, 0, 8)        # QCFS: k_clamped = 0 outside and inside
    assert fused._residual_path_exact(torch.bfloat16, -8, 31)
    assert not fused._residual_path_exact(torch.bfloat16, -8, 32)
    assert not fused._residual_path_exact(torch.float16, -1, 512)


def test_fused_quantizer_backward_twice_with_retain_graph():
    q = PQA(8, -0.25, 1.0, 2.5)
    z, g = random_inputs(8, -0.25, 1.0, 2.5, seed=3)
    z.requires_grad_()
    out = q(z)
    out.backward(g, retain_graph=True)
    first = z.grad.clone(), q.threshold.grad.clone()
    z.grad, q.threshold.grad = None, None
    out.backward(g)
    assert torch.equal(z.grad, first[0]) and torch.equal(q.threshold.grad, first[1])


def test_threshold_gradient_is_the_derivative():
    # the closed-form dλ against float64 autograd through θ = λ/L (STE: floor's derivative taken
    # as 1 where the clamp is inactive)
    levels, alpha, beta, lam = 8, -0.25, 1.0, 2.5
    z, g = random_inputs(levels, alpha, beta, lam, seed=1)
    lam64 = torch.tensor(lam, dtype=torch.float64, requires_grad=True)
    theta = lam64 / levels
    y = z.double() / theta + 0.5
    k = torch.floor(y).detach()
    inside = (k >= round(alpha * levels)) & (k <= round(beta * levels))
    out = (torch.clamp(k, round(alpha * levels), round(beta * levels)) + inside * (y - y.detach())) * theta
    out.backward(g.double())
    _, _, grad_lam = fused_run(levels, alpha, beta, lam, z, g)
    assert grad_lam.item() == pytest.approx(lam64.grad.item(), rel=1e-4)


@pytest.mark.slow   # torch.compile: tens of seconds of compilation on a CPU
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])   # bf16: bf16-mixed training's activations
@pytest.mark.parametrize("levels, alpha, beta, lam", FUSED_CASES[:3])
def test_compiled_quantizer_equals_formula_bit_for_bit(levels, alpha, beta, lam, dtype):
    from pmsm_exp.quant import kernels as fused
    z, g = random_inputs(levels, alpha, beta, lam, seed=levels)
    z, g = z.to(dtype), g.to(dtype)
    lo, hi = round(alpha * levels), round(beta * levels)
    theta = torch.tensor(lam, dtype=dtype) / levels
    out, grad_z, grad_lam = fused_run(levels, alpha, beta, lam, z, g, dtype, kernels="compile")
    per_element = fused._pqa_backward(g, z, theta, lo, hi, "compile")[1]
    # each element's dθ too (a bfloat16 sum can hide a difference in a few of them)
    assert torch.equal(per_element.reshape(-1), fused._pqa_backward_eager(g, z, theta, lo, hi)[1].reshape(-1))
    ref_out, ref_z, ref_lam = formula(z, torch.tensor(lam, dtype=dtype), levels, lo, hi, g)
    assert torch.equal(out, ref_out) and torch.equal(grad_z, ref_z) and torch.equal(grad_lam, ref_lam)


def test_kernel_backend_refused_with_one_line():
    # the config key (snn.kernels) is named by the config checks: tests/test_bad_inputs.py
    from pmsm_exp.quant import use_kernels
    with pytest.raises(ValueError, match=r"^kernels: got 'triton'; allowed: eager, compile$"):
        use_kernels(PQA(), "triton")


@pytest.mark.parametrize("choice, steps, missing, expected", [
    ("auto", 999, "", "eager"),                        # short runs (tests, smoke runs) start at once
    ("auto", 1000, "", "compile"),
    ("auto", 10**6, "no C++ compiler (g++/clang++) on PATH", "eager"),
    ("eager", 10**6, "", "eager"), ("compile", 1, "", "compile"),   # an explicit choice is kept
])
def test_auto_kernels_compile_only_long_runs_where_compiling_works(monkeypatch, choice, steps, missing, expected):
    from pmsm_exp.quant import kernels as fused
    monkeypatch.setattr(fused, "compile_unavailable", lambda device: missing)
    monkeypatch.setattr(fused, "compile_fails", lambda device: "")
    backend, why = fused.training_backend(choice, steps, "cpu")
    assert backend == expected
    assert (missing in why) if missing else why
    assert fused.eval_backend(choice) == ("eager" if choice == "auto" else choice)
    mixed, why_mixed = fused.training_backend(choice, steps, "cpu", "bf16-mixed")
    assert mixed == ("eager" if choice == "auto" else choice)
    assert choice != "auto" or "float32" in why_mixed


def test_compile_unavailable_names_what_is_missing(monkeypatch):
    from pmsm_exp.quant import kernels as fused
    monkeypatch.setenv("CXX", "")
    monkeypatch.setenv("PATH", "/nonexistent")
    assert "C++ compiler" in fused.compile_unavailable("cpu")
    monkeypatch.setattr(fused.importlib.util, "find_spec", lambda name: None)
    assert "Triton" in fused.compile_unavailable("cuda")


def test_kernel_choice_lives_on_the_modules_not_in_the_process():
    from pmsm_exp.quant import use_kernels
    from pmsm_exp.quant.kernels import kernels_of
    chosen, other = torch.nn.Sequential(PQA(), torch.nn.Linear(2, 2), PQA()), torch.nn.Sequential(PQA())
    assert use_kernels(chosen, "compile") is chosen
    assert kernels_of(chosen) == {"compile"} and kernels_of(other) == {"eager"}
    assert kernels_of(torch.nn.Sequential(PQA())) == {"eager"}      # a new model: the default, whatever ran before


def break_torch_compile(monkeypatch, message):
    """torch.compile as seen by fused.py: every compiled kernel raises `message` when called."""
    from pmsm_exp.quant import kernels as fused

    def broken(fn, **kwargs):
        def run(*args):
            raise RuntimeError(message)
        return run

    monkeypatch.setattr(fused.torch, "compile", broken)
    monkeypatch.setattr(fused, "_compiled", {})
    monkeypatch.setattr(fused, "failures", {})


def test_auto_kernels_stay_eager_where_compiling_fails(monkeypatch):
    from pmsm_exp.quant import kernels as fused
    monkeypatch.setattr(fused, "compile_unavailable", lambda device: "")
    break_torch_compile(monkeypatch, "C++ compile error\nfatal error: Python.h: No such file or directory")
    backend, why = fused.training_backend("auto", 10**6, "cpu")
    assert backend == "eager" and "torch.compile failed here (RuntimeError: C++ compile error)" in why
    assert PQA().kernels == "eager"


def test_a_failing_compiled_kernel_falls_back_to_the_same_values(monkeypatch):
    # an explicit snn.kernels=compile whose kernel fails mid-run: one warning, then the eager
    # kernels, whose values are the formula's
    from pmsm_exp.quant import kernels as fused
    break_torch_compile(monkeypatch, "FailOnRecompileLimitHit: Hard failure due to fullgraph=True")
    z, g = random_inputs(8, -0.25, 1.0, 2.5, seed=4)
    with pytest.warns(UserWarning, match="compiled pqa_forward kernel failed"):
        out, grad_z, grad_lam = fused_run(8, -0.25, 1.0, 2.5, z, g, kernels="compile")
    assert set(fused.failures) == {"pqa_forward", "pqa_backward"}
    ref_out, ref_z, ref_lam = formula(z, torch.tensor(2.5), 8, -2, 8, g)
    assert torch.equal(out, ref_out) and torch.equal(grad_z, ref_z) and torch.equal(grad_lam, ref_lam)


@pytest.mark.slow   # torch.compile: seconds of compilation on a CPU
def test_compiled_quantizer_any_layout_bit_for_bit_without_recompiling_per_shape():
    # a ViT's transposed 3-D views, channels_last and plain 4-D tensors, 2-D: one flat graph serves
    # them all (no recompile limit hit, no fallback), with the formula's values and gradients
    from pmsm_exp.quant import kernels as fused
    gen = torch.Generator().manual_seed(5)
    cases = [torch.randn(4, 6, 5, generator=gen).transpose(1, 2),
             torch.randn(3, 8, 5, 5, generator=gen).contiguous(memory_format=torch.channels_last),
             torch.randn(3, 8, 5, 5, generator=gen), torch.randn(7, 9, generator=gen)[:, ::2],
             torch.randn(2, 3, 4, 4, 2, generator=gen)]
    fused.failures.clear()
    for z in cases:
        z = z * 4
        g = torch.randn(z.shape, generator=gen)
        if z.dim() == 3:   # a gradient in the activation's own layout takes the compiled backward
            g = g.transpose(1, 2).contiguous().transpose(1, 2)
        out, grad_z, grad_lam = fused_run(8, -0.25, 1.0, 2.5, z, g, kernels="compile")
        ref_out, ref_z, ref_lam = formula(z, torch.tensor(2.5), 8, -2, 8, g)
        assert torch.equal(out, ref_out) and torch.equal(grad_z, ref_z) and torch.equal(grad_lam, ref_lam)
        assert out.stride() == z.stride() or fused._dense_order(z) is None
    assert fused.failures == {}


@pytest.mark.parametrize("levels, alpha, beta, lam", [(8, -0.25, 1.0, 2.5), (16, 0.0, 1.0, 8.0)])
def test_eager_quantizer_bit_for_bit_when_activation_and_gradient_layouts_differ(levels, alpha, beta, lam):
    # channels_last activations with a contiguous upstream gradient (and the reverse): λ's gradient
    # is a sum whose order follows the layout of g·(...), so the kernels must lay it out as the
    # formula does; PMSM (saved residual) and QCFS (recomputed from z) paths
    gen = torch.Generator().manual_seed(levels)
    lo, hi = round(alpha * levels), round(beta * levels)
    z = torch.randn(4, 8, 6, 6, generator=gen) * lam
    g = torch.randn(4, 8, 6, 6, generator=gen)
    cl = torch.channels_last
    for zz, gg in ((z.contiguous(memory_format=cl), g), (z, g.contiguous(memory_format=cl))):
        out, grad_z, grad_lam = fused_run(levels, alpha, beta, lam, zz, gg)
        ref_out, ref_z, ref_lam = formula(zz, torch.tensor(lam), levels, lo, hi, gg)
        assert torch.equal(out, ref_out) and torch.equal(grad_z, ref_z) and torch.equal(grad_lam, ref_lam)


def test_compiled_kernels_on_small_tensors_equal_independent_formulas(monkeypatch):
    """The path every long float32 training run takes (snn.kernels=auto compiles the quantizer), in the
    default suite: PQA forward and backward and the AIF neuron through torch.compile, on small dyadic
    tensors (every operation exact), against formulas written here in float64 from DESIGN.md §1.
    The compiled kernels must really run: a fallback to the eager ones fails the test."""
    from pmsm_exp.quant import kernels as fused
    from pmsm_exp.snn.neurons import aif_neuron
    from test_neurons import reference_aif   # the neuron in volts, step by step (DESIGN.md §1)
    if fused.compile_unavailable("cpu"):
        pytest.skip(f"torch.compile cannot build CPU kernels here: {fused.compile_unavailable('cpu')}")
    monkeypatch.setattr(fused, "failures", {})
    monkeypatch.setattr(fused, "_compiled", {})   # only this test's calls fill it
    g = torch.Generator().manual_seed(0)
    levels, lo, hi, lam = 8, -2, 8, 2.0            # θ = 1/4
    theta = lam / levels
    ties = (torch.arange(lo - 2, hi + 2) + 0.5) * theta            # every z/θ = k + 1/2, both signs of k
    z = torch.cat([(torch.randn(64 - len(ties), generator=g) * 2 * 64).round() / 64, ties]).reshape(4, 4, 4)
    grad = (torch.randn(4, 4, 4, generator=g) * 64).round() / 64
    k = [min(max(math.floor(v / theta + 0.5), lo), hi) for v in z.double().flatten().tolist()]
    inside = [lo <= math.floor(v / theta + 0.5) <= hi for v in z.double().flatten().tolist()]
    q = PQA(levels, -0.25, 1.0, lam)
    q.kernels = "compile"
    zz = z.clone().requires_grad_()
    out = q(zz)
    out.backward(grad)
    assert out.flatten().tolist() == [kk * theta for kk in k]
    assert zz.grad.flatten().tolist() == [gg if i else 0.0 for gg, i in zip(grad.flatten().tolist(), inside)]
    dlam = sum(gg * (kk - (v / theta if i else 0.0)) for gg, kk, v, i in
               zip(grad.double().flatten().tolist(), k, z.double().flatten().tolist(), inside)) / levels
    assert q.threshold.grad.item() == dlam
    currents = (torch.randn(4, 2, 6, generator=g) * 2 * 64).round() / 64
    n = aif_neuron(torch.tensor(theta), min_level=lo, max_level=hi)
    n.kernels, n.steps = "compile", 4
    spikes = (n(currents.reshape(8, 6)) / theta).reshape(4, 2, 6)
    assert torch.equal(spikes, reference_aif(currents, theta, lo, hi)[0])
    assert fused.failures == {} and set(fused._compiled) >= {"pqa_forward", "pqa_backward", "aif_steps"}


@pytest.mark.parametrize("alpha,beta", [(-0.25, 1.0), (0.0, 1.0), (-0.5, 0.5)])
def test_unrounded_pqa_is_a_clip_that_leaves_lambda_alone(alpha, beta):
    """PQA with quantize=False (the warm-up before quantization starts) against clamp written as
    max/min with a constant λ: d/dz = 1 inside, 0 outside; λ gets no gradient (it is frozen until
    quantization starts)."""
    from pmsm_exp.quant.pqa import PQA
    torch.manual_seed(0)
    q = PQA(8, alpha, beta, 1.5)
    q.quantize = False
    z = (torch.randn(4, 3, 5, 5) * 2).requires_grad_()
    g = torch.randn(4, 3, 5, 5)
    (q(z) * g).sum().backward()
    z2 = z.detach().clone().requires_grad_()
    ref = torch.minimum(torch.maximum(z2, torch.tensor(alpha * 1.5)), torch.tensor(beta * 1.5))
    (ref * g).sum().backward()
    assert torch.equal(q(z).detach(), ref.detach())
    assert torch.equal(z.grad, z2.grad)
    assert q.threshold.grad is None or not q.threshold.grad.any()
    assert (z2.grad == 0).any() and (z2.grad == g).any()   # both regions present
