import math
import copy

import pytest
import torch
from torch import nn

from helpers import random_qann, randomize
from pmsm_exp.snn.conversion import convert_to_snn
from pmsm_exp.errors import UserError
from pmsm_exp.snn.folding import fold_batchnorm
from pmsm_exp.models import create_model
from pmsm_exp.snn.neurons import SpikingNeuron, spiking_neurons
from pmsm_exp.quant import PQA, make_activation, pqa_layers
from pmsm_exp.snn.simulation import simulate

SETTINGS = [(8, -0.25, 1.0), (8, -1.0, 1.0), (4, -0.5, 0.75), (16, -0.125, 0.5)]


def quantized_level_sums(model, x):
    """Σ|k| per PQA layer in the quantized ANN (what the AIF layers must emit at t = 1)."""
    sums, hooks = {}, []
    for name, q in pqa_layers(model).items():
        hooks.append(q.register_forward_hook(
            lambda m, inp, out, name=name: sums.__setitem__(name, (out / m.step_size()).round().abs().sum().item())))
    with torch.no_grad():
        logits = model(x)
    for h in hooks:
        h.remove()
    return logits, sums


@pytest.mark.parametrize("arch", ["resnet20", "vgg16"])
@pytest.mark.parametrize("levels, alpha, beta", SETTINGS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_snn_first_step_equals_quantized_ann(arch, levels, alpha, beta, dtype):
    qann = random_qann(arch, levels, alpha, beta, seed=levels).to(dtype)
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1), dtype=dtype)
    logits, level_sums = quantized_level_sums(qann, x)
    result = simulate(convert_to_snn(qann), x, timesteps=1)
    assert torch.equal(result.outputs[0], logits)
    assert {n: c[0].item() for n, c in result.spike_counts.items()} == level_sums
    assert level_sums and all(v > 0 for v in level_sums.values())   # every layer fired, not just one


def test_first_step_exact_inside_longer_run():
    qann = random_qann("resnet20", 8, -0.25, 1.0, seed=3)
    x = torch.randn(16, 3, 32, 32)
    with torch.no_grad():
        logits = qann(x)
    result = simulate(convert_to_snn(qann), x, timesteps=6)
    assert torch.equal(result.outputs[0], logits)


class PlainAIF(nn.Module):
    """The test's own AIF neuron for the step-by-step reference: one step per call."""

    def __init__(self, q: PQA):
        super().__init__()
        self.theta, self.lo, self.hi, self.v = q.step_size().detach(), q.min_level, q.max_level, None

    def forward(self, z):
        m = z / self.theta + 0.5 if self.v is None else self.v + z / self.theta
        s = torch.clamp(torch.floor(m), self.lo, self.hi)
        self.v = m - s
        return s * self.theta


def step_by_step_reference(qann: nn.Module, x: torch.Tensor, timesteps: int) -> torch.Tensor:
    """The QANN with each PQA swapped for PlainAIF, run T times on x; running mean of the logits."""
    model = copy.deepcopy(qann)
    for name, q in pqa_layers(model).items():
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, PlainAIF(q))
    with torch.no_grad():
        outs = torch.stack([model(x) for _ in range(timesteps)])
    return outs.cumsum(0) / torch.arange(1, timesteps + 1).reshape(-1, 1, 1)


def test_multistep_matches_step_by_step_reference():
    qann = random_qann("resnet20", 8, -0.25, 1.0, seed=4)
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    reference = step_by_step_reference(qann, x, 5)
    snn = convert_to_snn(qann)
    for chunk in (None, 1, 2, 4):
        assert torch.equal(simulate(snn, x, timesteps=5, chunk=chunk).outputs, reference), chunk


@pytest.fixture(scope="module", params=["resnet20", "vgg16"])
def folded(request):
    qann = random_qann(request.param, 8, -0.25, 1.0, seed=8)
    x = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(8))
    reference, pairs = fold_batchnorm(qann, x[:1])
    return request.param, qann, reference, pairs, x


def test_every_switch_on_first_step_equals_folded_qann(folded):
    arch, qann, reference, pairs, x = folded
    assert len(pairs) == {"resnet20": 21, "vgg16": 13}[arch]
    assert not any(isinstance(m, nn.BatchNorm2d) for m in reference.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in qann.modules())   # the original is untouched
    with torch.no_grad():
        logits, original = reference(x), qann(x)
    # folding only re-rounds: the folded QANN stays close to the trained one
    assert torch.allclose(logits, original, atol=1e-3 * original.abs().max().item())
    snn = convert_to_snn(reference)
    auto = simulate(snn, x, timesteps=4)                   # fused kernels, chunk chosen automatically
    assert torch.equal(auto.outputs[0], logits)
    for chunk in (1, 3):                                   # chunked and unchunked agree exactly
        assert torch.equal(simulate(snn, x, timesteps=4, chunk=chunk).outputs, auto.outputs)
    assert torch.equal(auto.outputs, step_by_step_reference(reference, x, 4))


def test_fold_matches_float_network_and_skips_shared_outputs():
    torch.manual_seed(0)

    class Shared(nn.Module):   # the conv output feeds the BatchNorm and a second branch: no fold
        def __init__(self):
            super().__init__()
            self.conv, self.bn, self.pool = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.AvgPool2d(2)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y).mean() + self.pool(y).mean()

    net = randomize(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                                  nn.Linear(4 * 6 * 6, 5), nn.BatchNorm1d(5)), torch.Generator().manual_seed(0))
    for m in net.modules():
        if isinstance(m, nn.BatchNorm1d):
            m.running_var.uniform_(0.5, 2.0)
            m.running_mean.uniform_(-0.5, 0.5)
    x = torch.randn(3, 3, 8, 8)
    folded, pairs = fold_batchnorm(net, x)
    assert pairs == [("0", "1"), ("4", "5")]
    with torch.no_grad():
        assert torch.allclose(folded(x), net(x), atol=1e-5)
    assert fold_batchnorm(Shared().eval(), x)[1] == []


def test_chunk_zero_refused_with_one_line():
    # the method names its argument; the config checks add the key (snn.chunk: tests/test_bad_inputs.py)
    snn = convert_to_snn(nn.Sequential(nn.Linear(4, 4), PQA()))
    for bad in (0, -2, 1.5, "all"):
        with pytest.raises(ValueError, match=r"^chunk: got .*; allowed: a positive integer.*auto"):
            simulate(snn, torch.zeros(2, 4), 3, chunk=bad)


def test_pmsm_stays_close_to_quantized_ann_over_time():
    qann = random_qann("resnet20", 8, -1.0, 1.0, seed=5)
    x = torch.randn(64, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        target = qann(x).argmax(1)
    outputs = simulate(convert_to_snn(qann), x, timesteps=8).outputs
    agreement = (outputs.argmax(2) == target).float().mean(1)
    assert agreement[0] == 1.0
    assert agreement[-1] >= 0.9


def test_qcfs_if_neuron_differs_at_first_step_and_error_shrinks():
    qann = random_qann("resnet20", 8, 0.0, 1.0, seed=6)
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        logits = qann(x)
    snn = convert_to_snn(qann, neuron="if")
    assert all(n.max_pos == 1 and n.max_neg == 0 for n in spiking_neurons(snn).values())
    outputs = simulate(snn, x, timesteps=64).outputs
    error = (outputs - logits).abs().mean(dim=(1, 2))
    assert error[0] > 1e-2 * logits.abs().mean()
    assert error[63] < 0.5 * error[0]
    assert error[31] < error[3]
    # the AIF conversion of the same QCFS-style model is exact at t = 1
    assert torch.equal(simulate(convert_to_snn(qann), x, 1).outputs[0], logits)


def test_conversion_maps_parameters():
    qann = random_qann("resnet20", 8, -0.25, 1.0, seed=7)
    snn = convert_to_snn(qann)
    quantizers, neurons = pqa_layers(qann), spiking_neurons(snn)
    assert quantizers.keys() == neurons.keys() and len(neurons) == 19
    for name, q in quantizers.items():
        n = neurons[name]
        assert n.theta.item() == q.threshold.item() / 8 and n.max_pos == 8 and n.max_neg == 2
        assert n.init_membrane == 0.5
    assert pqa_layers(snn) == {} and len(pqa_layers(qann)) == 19  # original untouched


def test_refuses_unconverted_activation_naming_path():
    model = create_model("resnet20", 10, make_activation("pqa"))
    model.stages[1][2].act2 = nn.GELU()
    with pytest.raises(ValueError, match=r"'stages\.1\.2\.act2' \(GELU\)"):
        convert_to_snn(model)
    with pytest.raises(ValueError, match=r"'features\.2' \(ReLU\)"):
        convert_to_snn(create_model("vgg16", 10, nn.ReLU))


def test_refuses_unknown_quantizer_and_bad_neuron():
    class MyQuantizer(nn.Module):
        def forward(self, x):
            return x

    model = nn.Sequential(nn.Linear(4, 4), MyQuantizer())
    with pytest.raises(ValueError, match=r"'1' \(MyQuantizer\)"):
        convert_to_snn(model)
    with pytest.raises(ValueError, match="unknown neuron 'lif'.*aif, if"):
        convert_to_snn(nn.Sequential(nn.Linear(4, 4), PQA()), neuron="lif")
    with pytest.raises(ValueError, match="alpha=0.*alpha=-0.25"):
        convert_to_snn(nn.Sequential(nn.Linear(4, 4), PQA()), neuron="if")


def test_simulate_rejects_bad_arguments():
    snn = convert_to_snn(nn.Sequential(nn.Linear(4, 4), PQA()))
    with pytest.raises(ValueError, match="timesteps.*0"):
        simulate(snn, torch.zeros(2, 4), 0)
    with pytest.raises(ValueError, match="encoding 'poisson'"):
        simulate(snn, torch.zeros(2, 4), 2, encoding="poisson")


def test_first_encoding_and_sum_readout():
    snn = convert_to_snn(nn.Sequential(nn.Identity(), PQA(levels=4, alpha=-1, beta=1, threshold=4.0)))
    x = torch.tensor([[0.3, -2.6, 1.5]])
    result = simulate(snn, x, 3, encoding="first", readout="sum")
    # θ = 1: step 1 emits round-half-up(x); zero input afterwards leaves the residue below threshold
    assert result.outputs[:, 0].tolist() == [[0.0, -3.0, 2.0]] * 3
    assert isinstance(spiking_neurons(snn)["1"], SpikingNeuron)


def test_model_registry_errors():
    with pytest.raises(ValueError, match="unknown model 'resnet18'.*resnet20.*vgg16"):
        create_model("resnet18")


def test_stbif_baseline_reaches_quantized_ann_after_enough_steps():
    torch.manual_seed(0)
    # bias-free: with input at step 1 only, a plain Linear would add its bias again every step
    qann = nn.Sequential(nn.Linear(6, 16, bias=False), PQA(8, -0.5, 0.5, threshold=3.0),
                         nn.Linear(16, 16, bias=False), PQA(8, -0.5, 0.5, threshold=3.0),
                         nn.Linear(16, 4, bias=False)).eval()
    x = torch.randn(32, 6)
    with torch.no_grad():
        logits = qann(x)
    snn = convert_to_snn(qann, neuron="stbif")
    outputs = simulate(snn, x, 24, encoding="first", readout="sum").outputs
    assert not torch.allclose(outputs[0], logits, atol=1e-3)      # one spike per step: far off at t=1
    assert torch.allclose(outputs[-1], logits, atol=1e-4)         # tracer settles on the quantized level


@pytest.mark.slow   # torch.compile: tens of seconds of compilation on a CPU
def test_compiled_kernels_give_the_same_simulation():
    from pmsm_exp.quant import use_kernels
    qann = random_qann("resnet20", 8, -0.25, 1.0, seed=9)
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(9))
    reference = step_by_step_reference(qann, x, 4)
    snn = use_kernels(convert_to_snn(qann), "compile")
    with torch.no_grad():
        logits = use_kernels(qann, "compile")(x)
    outputs = simulate(snn, x, timesteps=4, chunk=2).outputs
    assert torch.equal(outputs, reference) and torch.equal(outputs[0], logits)


def test_simulation_drops_membranes_only_at_its_end():
    qann = random_qann("resnet20", 8, -0.25, 1.0, seed=5)
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    snn = convert_to_snn(qann)
    for T, chunk in ((1, None), (4, 2), (4, 1)):
        result = simulate(snn, x, timesteps=T, chunk=chunk)
        assert torch.equal(result.outputs, step_by_step_reference(qann, x, T))
        for n in spiking_neurons(snn).values():
            assert n.membrane is None and n.keep_membrane and n.steps_done == T


def test_exact_ties_deep_in_a_network_round_half_up_at_t1_and_after():
    """Weights and θ = 1/2 (λ=4, L=8) chosen so that the inputs of both quantizers land exactly on
    z/θ = k + 1/2: at t=1 each rounds up (floor(z/θ + 1/2), as PQA does; torch.round would take the
    even level), and over T steps the SNN follows a plain loop in volts, written here."""
    def linear(w):
        layer = nn.Linear(2, 2, bias=False)
        layer.weight.data = torch.tensor(w)
        return layer

    w2 = [[1.0, 0.5], [0.5, -1.0]]
    qann = nn.Sequential(linear([[1.0, 0.0], [0.0, 1.0]]), PQA(8, -0.25, 1.0, 4.0),
                         linear(w2), PQA(8, -0.25, 1.0, 4.0), linear([[1.0, 0.0], [0.0, 1.0]])).eval()
    x = torch.tensor([[1.25, 0.25]])
    with torch.no_grad():
        logits = qann(x)
    # by hand: z1/θ = 2.5, 0.5 -> levels 3, 1 -> [1.5, 0.5]; z2 = [1.75, 0.25], z2/θ = 3.5, 0.5 -> [2.0, 0.5]
    assert logits.tolist() == [[2.0, 0.5]]
    result = simulate(convert_to_snn(qann), x, timesteps=5)
    assert result.outputs[0].tolist() == [[2.0, 0.5]]

    theta, lo, hi = 0.5, -2, 8
    volts = [[theta / 2] * 2, [theta / 2] * 2]
    total, expected = [0.0, 0.0], []
    for t in range(1, 6):
        signal = [1.25, 0.25]
        for layer in range(2):
            out = []
            for i, z in enumerate(signal):
                m = volts[layer][i] + z
                s = min(max(math.floor(m / theta), lo), hi)
                volts[layer][i] = m - s * theta
                out.append(s * theta)
            signal = out if layer == 1 else [sum(w * o for w, o in zip(row, out)) for row in w2]
        total = [a + b for a, b in zip(total, signal)]
        expected.append([total])
    # the running sums are exact (dyadic); the mean readout divides them by t in float32
    assert torch.equal(result.outputs, torch.tensor(expected) / torch.arange(1, 6).reshape(-1, 1, 1))
