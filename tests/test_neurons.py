import math

import pytest
import torch

from pmsm_exp.snn.neurons import SpikingNeuron, aif_neuron, if_neuron


def run(neuron, currents):
    """currents: [T, N, ...]; returns spikes [T, N, ...] (outputs / θ)."""
    neuron.steps = currents.shape[0]
    out = neuron(currents.reshape(-1, *currents.shape[2:]))
    return (out / neuron.theta).reshape(currents.shape)


def test_bounds_respected_per_step():
    n = aif_neuron(torch.tensor(0.5), min_level=-2, max_level=8)
    s = run(n, torch.randn(6, 50, 7) * 20)
    assert s.max() == 8 and s.min() == -2
    assert torch.equal(s, s.round())


def test_soft_reset_keeps_membrane_in_unit_interval_when_not_clipped():
    n = aif_neuron(torch.tensor(0.25), min_level=-100, max_level=100)
    run(n, torch.rand(10, 64) * 4 - 2)  # never clipped at ±100
    v = n.membrane * n.theta
    assert (v >= 0).all() and (v < n.theta).all()


def test_negative_input_gives_negative_spikes():
    n = aif_neuron(torch.tensor(1.0), min_level=-4, max_level=4)
    s = run(n, torch.full((1, 3), -2.2))
    assert s.tolist() == [[-2.0, -2.0, -2.0]]


def test_constant_input_rate_converges_to_input():
    n = aif_neuron(torch.tensor(1.0), min_level=-8, max_level=8)
    z = torch.tensor([0.3, -0.7, 2.45])
    s = run(n, z.expand(40, 3).clone())
    assert torch.allclose(s.mean(0), z, atol=1 / 40 + 1e-6)


def test_spike_counting_and_events():
    n = aif_neuron(torch.tensor(1.0), min_level=-2, max_level=3)
    currents = torch.tensor([[[2.0, -1.6, 0.2]], [[0.0, 0.0, 5.0]]])  # T=2, N=1
    s = run(n, currents)
    assert s.tolist() == [[[2.0, -2.0, 0.0]], [[0.0, 0.0, 3.0]]]  # u after t1: .5, .9, .7
    assert [c.item() for c in n.spike_counts] == [4.0, 3.0]
    assert [e.item() for e in n.spike_events] == [2, 1]
    assert n.neurons_per_sample == 3 and n.batch_size == 1


def test_reset_between_batches():
    n = aif_neuron(torch.tensor(1.0), min_level=-2, max_level=3)
    first = run(n, torch.full((1, 2), 0.4))       # u = .9 -> 0 spikes, membrane .9
    second = run(n, torch.full((1, 2), 0.4))      # continues: u = 1.3 -> 1 spike
    n.reset_state()
    third = run(n, torch.full((1, 2), 0.4))
    assert first.sum() == 0 and second.sum() == 2 and third.sum() == 0
    assert len(n.spike_counts) == 1


@pytest.mark.parametrize("int_mm", [True, False])
def test_spike_counts_with_and_without_the_int8_product(monkeypatch, int_mm):
    # 8 x 4 x 4 neurons per sample: the int8 matrix-product path when torch has _int_mm (a private
    # op), else the float path; both must count what a plain sum counts
    if not int_mm:
        monkeypatch.delattr(torch, "_int_mm", raising=False)
    theta = torch.tensor(0.25)
    currents = dyadic_currents(3, 5, 8, 4, 4, scale=1.5, seed=3)
    spikes_ref, _ = reference_aif(currents, theta, -4, 8)
    n = aif_neuron(theta, min_level=-4, max_level=8)
    assert torch.equal(run(n, currents), spikes_ref)
    assert (spikes_ref < 0).any() and (spikes_ref == 0).any() and (spikes_ref > 1).any()
    assert torch.equal(n.spike_counts, spikes_ref.abs().sum(dim=(1, 2, 3, 4), dtype=torch.float64))
    assert torch.equal(n.spike_events, (spikes_ref != 0).sum(dim=(1, 2, 3, 4)))


def test_if_neuron_one_positive_spike_of_threshold():
    n = if_neuron(torch.tensor(2.0))
    n.steps = 3
    out = n(torch.tensor([5.0, -5.0, 1.2]).repeat(3)).reshape(3, 3)
    # membrane in units of λ: starts at 1/2; 5/2 per step saturates at one spike of λ = 2 each step,
    # -5 never fires, 0.6 per step fires at t = 1 (1.1) and t = 3 (0.1 + 0.6 + 0.6)
    assert out.tolist() == [[2.0, 0.0, 2.0], [2.0, 0.0, 0.0], [2.0, 0.0, 2.0]]


def reference_aif(currents, theta, lo, hi):
    """DESIGN.md §1, Eq. 3-6, in absolute units (volts), one neuron at a time in plain Python:
    v(0) = θ/2; m = v + z; s = clamp(floor(m/θ), lo, hi); v = m - s·θ. Returns (spikes [T, ...],
    the membrane after the last step in units of θ, as the neuron keeps it). Written apart from the
    kernels (which keep v/θ and never divide m): the inputs of the tests that use it are dyadic,
    so both forms are exact and must agree to the bit."""
    theta = float(theta)
    flat = currents.reshape(currents.shape[0], -1).double().tolist()
    spikes, volts = [], [theta / 2] * len(flat[0])
    for row in flat:
        step = []
        for i, z in enumerate(row):
            m = volts[i] + z
            s = min(max(math.floor(m / theta), lo), hi)
            volts[i] = m - s * theta
            step.append(float(s))
        spikes.append(step)
    out = torch.tensor(spikes, dtype=currents.dtype).reshape(currents.shape)
    return out, (torch.tensor(volts, dtype=torch.float64) / theta).to(currents.dtype).reshape(currents.shape[1:])


def dyadic_currents(*shape, scale=2.0, seed=0, dtype=torch.float32):
    """Random currents on a 1/64 grid: with a power-of-two θ every sum and quotient is exact, and
    many land exactly on a level (the floor's ties)."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale * 64).round().div(64).to(dtype)


@pytest.mark.parametrize("split", [(7,), (1, 6), (1, 3, 3), (1, 1, 1, 1, 1, 1, 1)])
def test_aif_equals_plain_loop_over_calls(split):
    theta = torch.tensor(0.25)
    currents = dyadic_currents(7, 16, 3, 5, seed=0)
    spikes_ref, v_ref = reference_aif(currents, theta, -2, 8)
    n = aif_neuron(theta, min_level=-2, max_level=8)
    outs, start = [], 0
    for steps in split:                       # state carries over from call to call
        outs.append(run(n, currents[start:start + steps]))
        start += steps
    spikes = torch.cat(outs)
    assert torch.equal(spikes, spikes_ref)
    assert torch.equal(n.membrane, v_ref)
    assert torch.equal(n.spike_counts, spikes_ref.abs().sum(dim=(1, 2, 3), dtype=torch.float64))
    assert torch.equal(n.spike_events, (spikes_ref != 0).sum(dim=(1, 2, 3)))
    assert n.steps_done == 7 and spikes.abs().max() == 8 and spikes.min() == -2


def test_recording_off_keeps_the_clock():
    n = aif_neuron(torch.tensor(1.0), min_level=-2, max_level=3)
    n.record = False
    s = run(n, torch.full((3, 2), 0.7))
    assert s.sum() == 4 and n.steps_done == 3 and len(n.spike_counts) == 0


def test_invalid_bounds():
    with pytest.raises(ValueError, match="max_pos=0, max_neg=0"):
        SpikingNeuron(1.0, 0, 0)


def test_batch_not_multiple_of_steps():
    n = aif_neuron(torch.tensor(1.0), -1, 1)
    n.steps = 3
    with pytest.raises(ValueError, match="steps=3"):
        n(torch.zeros(4, 2))


def test_stbif_one_spike_per_step_and_tracer_reaches_the_level():
    from pmsm_exp.snn.neurons import stbif_neuron
    n = stbif_neuron(torch.tensor(1.0), min_level=-4, max_level=6)
    z = torch.tensor([2.6, -3.4, 9.0, -9.0, 0.2])         # levels: 3, -3, 6 (clamped), -4 (clamped), 0
    currents = torch.zeros(8, 1, 5)
    currents[0, 0] = z                                     # input at step 1 only, as for the ViT
    s = run(n, currents)
    assert s.abs().max() == 1                              # one spike per step
    assert s.sum(0).flatten().tolist() == [3.0, -3.0, 6.0, -4.0, 0.0]
    assert s[0].flatten().tolist() == [1.0, -1.0, 1.0, -1.0, 0.0]


@pytest.mark.parametrize("lo, hi, dtype", [(-2, 8, torch.float32), (-2, 8, torch.float64), (-3, 200, torch.float32)])
@pytest.mark.parametrize("split", [(6,), (1, 2, 3)])
def test_counts_in_every_path_equal_plain_loop(lo, hi, dtype, split):
    # 16 neurons per sample: counted in int8 on CPU (levels up to 127), in float above
    theta = torch.tensor(0.25, dtype=dtype)
    currents = dyadic_currents(6, 5, 4, 4, scale=3 if hi < 100 else 40, seed=1, dtype=dtype)
    spikes_ref, v_ref = reference_aif(currents, theta, lo, hi)
    n = aif_neuron(theta, min_level=lo, max_level=hi)
    start = 0
    for steps in split:
        run(n, currents[start:start + steps])
        start += steps
    assert torch.equal(n.membrane, v_ref)
    assert torch.equal(n.spike_counts, spikes_ref.abs().sum(dim=(1, 2, 3), dtype=torch.float64))
    assert torch.equal(n.spike_events, (spikes_ref != 0).sum(dim=(1, 2, 3)))
    assert (spikes_ref < 0).any() and spikes_ref.abs().max() > (100 if hi > 127 else 1)


def test_last_call_without_membrane_fires_like_the_loop():
    theta = torch.tensor(0.25)
    currents = dyadic_currents(5, 8, 6, seed=2)
    spikes_ref, _ = reference_aif(currents, theta, -2, 8)
    for split in [(5,), (1, 4), (1, 2, 2), (1,)]:
        n = aif_neuron(theta, min_level=-2, max_level=8)
        outs, start = [], 0
        for i, steps in enumerate(split):
            n.keep_membrane = i < len(split) - 1     # as simulate() sets it: the last call drops it
            outs.append(run(n, currents[start:start + steps]))
            start += steps
        assert torch.equal(torch.cat(outs), spikes_ref[:start]), split
        assert n.membrane is None and n.steps_done == start
        with pytest.raises(RuntimeError, match="reset_state"):
            run(n, currents[:1])
        n.reset_state()
        n.keep_membrane = True
        assert torch.equal(run(n, currents[:1]), spikes_ref[:1])


@pytest.mark.parametrize("z", [0.3, -0.7, 2.45, 0.125, -0.0625, 1.0 / 3])
def test_constant_input_cumulative_spikes_closed_form(z):
    """Unclipped constant input z: after t steps exactly floor(t·z/θ + 1/2) spikes in all (v stays in
    [0, θ) from v(0) = θ/2), for every t; a hard reset or another v(0) breaks it."""
    theta, steps = 0.25, 40
    n = aif_neuron(torch.tensor(theta, dtype=torch.float64), min_level=-100, max_level=100)
    s = run(n, torch.full((steps, 1), z, dtype=torch.float64))
    expected = [math.floor(t * z / theta + 0.5) for t in range(1, steps + 1)]
    assert s.flatten().cumsum(0).tolist() == expected


@pytest.mark.parametrize("z", [-9.0, -2.5, -0.3, 0.0, 0.7, 3.9, 12.0])
def test_constant_input_mean_output_tends_to_the_clipped_input(z):
    """PMSM's AIF (L=8, α=-0.25, β=1, λ=4, θ=1/2): the mean output over T steps is within θ/(2T)
    of clamp(z, αλ, βλ) (the clipped, unquantized input)."""
    levels, alpha, beta, lam, steps = 8, -0.25, 1.0, 4.0, 64
    n = aif_neuron(torch.tensor(lam / levels, dtype=torch.float64), min_level=round(alpha * levels),
                   max_level=round(beta * levels))
    out = run(n, torch.full((steps, 1), z, dtype=torch.float64)) * (lam / levels)
    target = min(max(z, alpha * lam), beta * lam)
    assert abs(out.mean().item() - target) <= lam / levels / (2 * steps) + 1e-12
