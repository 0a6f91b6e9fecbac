"""Spike counting, power (Eq. 11), synaptic operations and the analysis writers.

The hand-built network (all weights, thresholds and inputs dyadic, so every
float below is exact):

    x (2) -> Linear '0' -> PQA '1' -> Linear '2' -> PQA '3' -> Linear '4' (1 output)

PQA '1': L=4, alpha=-1/2, beta=1, lambda=4 -> theta1 = 1, spikes in [-2, 4]
PQA '3': L=4, alpha=-1/2, beta=1, lambda=2 -> theta2 = 0.5, spikes in [-2, 4]
W0 = [[1, 0], [0, -1]], W2 = [[1, 1], [-0.5, 0]], W4 = [[1, 1]], no biases.
Images: x = [2.25, 1.25] and the zero image (which never fires: u = 1/2 forever).

Layer '1' (AIF, u(0) = 1/2, u += z/theta, s = clamp(floor(u)), u -= s), z1 = [2.25, -1.25]:
    t1: u = [2.75, -0.75] -> s = [2, -1], u -> [0.75, 0.25]
    t2: u = [3.00, -1.00] -> s = [3, -1], u -> [0, 0]
    t3: u = [2.25, -1.25] -> s = [2, -2], u -> [0.25, 0.75]
    |s| per step 3, 4, 4; events 2, 2, 2
Layer '3', z2 = W2 o1 with o1 = s1 * 1, z2/theta2 = 2 * z2:
    t1: o1 = [2, -1] -> z2/th = [2, -2]  -> u = [2.5, -1.5] -> s = [2, -2], u -> [0.5, 0.5]
    t2: o1 = [3, -1] -> z2/th = [4, -3]  -> u = [4.5, -2.5] -> s = [4, -2] (floor -3 clamped), u -> [0.5, -0.5]
    t3: o1 = [2, -2] -> z2/th = [0, -2]  -> u = [0.5, -2.5] -> s = [0, -2] (clamped), u -> [0.5, -0.5]
    |s| per step 4, 6, 2; events 2, 2, 1
"""
import csv
import json
import math

import numpy as np
import pytest
import torch
from torch import nn
import torch.nn.functional as F

from helpers import randomize
from pmsm_exp.analysis.energy import (E_MAC_PJ, SpikeStats, SynapticOpCounter, ann_energy_pj, count_macs,
                                      energy_at_equal_accuracy, power_mw, snn_energy_pj)
from pmsm_exp.analysis.conversion_error import ConversionErrorMeter, layer_mean
from pmsm_exp.analysis.plots import plot_accuracy_over_time, plot_conversion_error, plot_layer_spikes
from pmsm_exp.analysis.analyze import analyze, compare_runs
from pmsm_exp.snn.conversion import convert_to_snn
from pmsm_exp.snn.neurons import spiking_neurons
from pmsm_exp.quant import PQA
from pmsm_exp.snn.simulation import simulate

X = torch.tensor([[2.25, 1.25]])
ZERO = torch.zeros(1, 2)


def hand_qann() -> nn.Module:
    model = nn.Sequential(nn.Linear(2, 2, bias=False), PQA(4, -0.5, 1.0, 4.0),
                          nn.Linear(2, 2, bias=False), PQA(4, -0.5, 1.0, 2.0),
                          nn.Linear(2, 1, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, -1.0]]))
        model[2].weight.copy_(torch.tensor([[1.0, 1.0], [-0.5, 0.0]]))
        model[4].weight.copy_(torch.tensor([[1.0, 1.0]]))
    return model.eval()


def _hand_counts(chunk=None):
    snn = convert_to_snn(hand_qann())
    stats = SpikeStats()
    with SynapticOpCounter(snn) as sops:
        for x in (X, ZERO):                    # two batches of one image each
            stats.update(simulate(snn, x, 3, chunk=chunk))
    return stats, sops


def test_power_matches_table3_arithmetic():
    # Table 3, QCFS T=1: 3.08e5 spikes * 0.9 pJ / (1 * 1 ms) = 2.772e-7 J/s = 0.2772 mW
    assert power_mw(3.08e5, 1) == pytest.approx(0.2772)
    # T=2: 6.44e5 * 0.9e-12 / 2e-3 = 0.2898 mW (printed 0.290)
    assert power_mw(6.44e5, 2) == pytest.approx(0.2898)


@pytest.mark.parametrize("chunk", [None, 1])
def test_hand_built_spikes_and_power(chunk):
    stats, _ = _hand_counts(chunk)
    assert stats.images == 2
    # per image = (image x + zero image) / 2
    np.testing.assert_array_equal(stats.layer_spikes()["1"], [1.5, 2.0, 2.0])     # [3, 4, 4] / 2
    np.testing.assert_array_equal(stats.layer_spikes()["3"], [2.0, 3.0, 1.0])     # [4, 6, 2] / 2
    np.testing.assert_array_equal(stats.layer_events()["1"], [1.0, 1.0, 1.0])     # [2, 2, 2] / 2
    np.testing.assert_array_equal(stats.layer_events()["3"], [1.0, 1.0, 0.5])     # [2, 2, 1] / 2
    np.testing.assert_array_equal(stats.spikes_per_step(), [3.5, 5.0, 3.0])       # [7, 10, 6] / 2
    np.testing.assert_array_equal(stats.spikes_up_to(), [3.5, 8.5, 11.5])
    np.testing.assert_array_equal(stats.events_up_to(), [2.0, 4.0, 5.5])          # [4, 8, 11] / 2
    # Eq. 11 at T=3: 11.5 spikes * 0.9e-12 J / (3 * 1e-3 s) = 3.45e-9 W = 3.45e-6 mW
    # T=1: 3.5 * 0.9e-12 / 1e-3 = 3.15e-9 W; T=2: 8.5 * 0.9e-12 / 2e-3 = 3.825e-9 W (x 1e3 for mW)
    np.testing.assert_allclose(stats.power_mw(), [3.15e-6, 3.825e-6, 3.45e-6], rtol=1e-12)
    # events at T=3: 5.5 * 0.9e-12 / 3e-3 = 1.65e-9 W
    assert stats.power_mw(events=True)[2] == pytest.approx(1.65e-6, rel=1e-12)
    assert stats.neurons == {"1": 2, "3": 2}


@pytest.mark.parametrize("chunk", [None, 1])
def test_hand_built_synaptic_ops(chunk):
    _, sops = _hand_counts(chunk)
    assert sops.images == 2
    assert sops.analog == {"0"} and not sops.untracked
    # Linear '2' sees layer '1' spikes, fan-out 2: image x [3, 4, 4] * 2 = [6, 8, 8]
    np.testing.assert_array_equal(sops.layer_sops()["2"], [3.0, 4.0, 4.0])
    # Linear '4' sees layer '3' spikes, fan-out 1: [4, 6, 2]
    np.testing.assert_array_equal(sops.layer_sops()["4"], [2.0, 3.0, 1.0])
    np.testing.assert_array_equal(sops.sops_per_step(), [5.0, 7.0, 5.0])          # [10, 14, 10] / 2
    # event-weighted: '2': [2, 2, 2] * 2 = [4, 4, 4]; '4': [2, 2, 1] * 1 -> [6, 6, 5] / 2
    np.testing.assert_array_equal(sops.sop_events_per_step(), [3.0, 3.0, 2.5])
    # Linear '0' sees the image: 2 * 2 = 4 MACs per image and step (zero image too)
    np.testing.assert_array_equal(sops.analog_macs_per_step(), [4.0, 4.0, 4.0])
    # energy up to T=3: 0.9 pJ * 17 SOPs + 4.6 pJ * 12 MACs = 15.3 + 55.2 = 70.5 pJ
    e = snn_energy_pj(np.cumsum(sops.sops_per_step()), np.cumsum(sops.analog_macs_per_step()))
    assert e[2] == pytest.approx(70.5)
    # quantized ANN: 4 + 4 + 2 = 10 MACs -> 46 pJ
    macs = count_macs(hand_qann(), torch.cat([X, ZERO]))
    assert macs == {"0": 4.0, "2": 4.0, "4": 2.0}
    assert ann_energy_pj(sum(macs.values())) == pytest.approx(10 * E_MAC_PJ)


def test_hand_built_conversion_error():
    qann = hand_qann()
    snn = convert_to_snn(qann)
    with ConversionErrorMeter(qann, snn) as meter:
        meter.reference(X)
        simulate(snn, X, 3, chunk=2)
    err = meter.errors()
    # layer '1': ANN a1 = [2, -1]; PSP averages [2, -1], [2.5, -1], [7/3, -4/3] -> 0, 0.25, 1/3
    np.testing.assert_allclose(err["1"], [0.0, 0.25, 1 / 3], atol=1e-7)
    # layer '3': ANN a2 = PQA([1, -1]) = [1, -1]; o2 = s*0.5: [1,-1], [2,-1], [0,-1]
    # averages [1, -1], [1.5, -1], [1, -1] -> 0, 0.25, 0
    np.testing.assert_allclose(err["3"], [0.0, 0.25, 0.0], atol=1e-7)


def conversion_error(qann, snn, batches, timesteps):
    """Per-layer conversion error of `snn` over (x, y) batches, through the meter analysis=full uses."""
    with ConversionErrorMeter(qann, snn) as meter:
        images = 0
        for x, _ in batches:
            meter.reference(x)
            simulate(snn, x, timesteps)
            images += x.shape[0]
    errors = meter.errors()
    return {"layers": {n: e.tolist() for n, e in errors.items()}, "mean": layer_mean(errors).tolist(), "images": images}


def test_conversion_error_zero_at_t1_for_pmsm_positive_for_qcfs():
    from helpers import random_qann
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    pmsm = random_qann("resnet20", seed=0)
    res = conversion_error(pmsm, convert_to_snn(pmsm, "aif"), [(x, None)], timesteps=2)
    assert res["images"] == 2 and len(res["layers"]) == 19
    for name, e in res["layers"].items():
        assert e[0] <= 1e-6, name
    assert res["mean"][1] > 0          # T=2: the membrane residue shows (Eq. 33)
    qcfs = random_qann("resnet20", alpha=0.0, seed=0)
    res = conversion_error(qcfs, convert_to_snn(qcfs, "if"), [(x, None)], timesteps=2)
    assert res["mean"][0] > 0
    assert sum(e[0] > 0 for e in res["layers"].values()) >= len(res["layers"]) - 1


def _pooled_net(seed=0) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), PQA(),
                          nn.AvgPool2d(2),
                          nn.Conv2d(4, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6), PQA(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.5), nn.Linear(6, 10))
    return randomize(model, torch.Generator().manual_seed(seed))


def test_pooled_sops_count_every_pre_pool_spike_with_fused_fan_out():
    snn = convert_to_snn(_pooled_net())
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    outs = {}
    neurons = spiking_neurons(snn)
    hooks = [m.register_forward_hook(lambda m, a, y, n=n: outs.setdefault(n, []).append(
        torch.round(y.abs() / m.theta).reshape(m.steps, -1, *y.shape[1:]))) for n, m in neurons.items()]
    with SynapticOpCounter(snn) as sops:
        simulate(snn, x, 3)
    for h in hooks:
        h.remove()
    s2, s6 = (torch.cat(outs[n]) for n in ("2", "6"))   # [T, N, C, H, W] spike magnitudes
    assert sops.untracked == set() and sops.analog == {"0"}
    # conv '4' on the 2x2-pooled 8x8 map: a pooled position feeds cnt[p] output positions
    # (3x3 kernel, padding 1), each with 6 channels; every pre-pool spike in p's window counts that.
    cnt = F.conv_transpose2d(torch.ones(1, 1, 8, 8), torch.ones(1, 1, 3, 3), padding=1)[0, 0]
    fan = 6 * cnt.repeat_interleave(2, 0).repeat_interleave(2, 1)        # back on the 16x16 grid
    expected4 = (s2 * fan).sum((1, 2, 3, 4)).double().numpy() / 3
    np.testing.assert_allclose(sops.layer_sops()["4"], expected4, rtol=1e-12)
    # Linear '10' after global pooling: every spike of layer '6' reaches all 10 outputs
    np.testing.assert_allclose(sops.layer_sops()["10"], (10 * s6).sum((1, 2, 3, 4)).double().numpy() / 3,
                               rtol=1e-12)
    np.testing.assert_allclose(sops.layer_sop_events()["10"],
                               (10 * (s6 != 0)).sum((1, 2, 3, 4)).double().numpy() / 3, rtol=1e-12)


def test_if_neuron_spikes_equal_events():
    stats = SpikeStats()
    qcfs = _pooled_net()
    for q in qcfs.modules():
        if isinstance(q, PQA):
            q.alpha = 0.0
    stats.update(simulate(convert_to_snn(qcfs, "if"), torch.randn(2, 3, 16, 16), 4))
    np.testing.assert_array_equal(stats.spikes_per_step(), stats.events_per_step())


def test_energy_at_equal_accuracy():
    r = energy_at_equal_accuracy([90, 91], [10, 20], [50, 80, 90.5, 92], [1, 3, 6, 9])
    assert (r["other_t"], r["other_energy"], r["energy_ratio_other_over_ref"]) == (3, 6.0, 0.6)
    r = energy_at_equal_accuracy([90], [10], [50, 80], [1, 3])
    assert r["other_t"] is None and r["note"] == "never within T_max=2"


def _png_ok(path):
    import matplotlib.image as mpimg
    assert path.stat().st_size > 0
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[0] > 50 and img.shape[1] > 50


def test_plot_writers(tmp_path):
    _png_ok(plot_layer_spikes(tmp_path / "a.png", {"PMSM": {"l1": 3, "l2": 1}, "QCFS": {"l1": 5, "l2": 0}}))
    _png_ok(plot_conversion_error(tmp_path / "b.png", {"l1": [0, 0.1, 0.05], "l2": [0, 0, 0]}, [0, 0.05, 0.025]))
    _png_ok(plot_conversion_error(tmp_path / "c.png", {"l1": [0, 0]}))          # all zero: linear axis
    _png_ok(plot_accuracy_over_time(tmp_path / "d.png", {"PMSM": [0.90, 0.91], "QCFS": [0.50, 0.70]}, {"QANN": 0.91}))


def test_analyze_and_compare_write_their_files(tmp_path):
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    y = torch.randint(0, 10, (4,), generator=torch.Generator().manual_seed(3))
    batches = [(x[:2], y[:2]), (x[2:], y[2:]), (x, y)]
    pmsm = _pooled_net()
    qcfs = _pooled_net()
    for q in qcfs.modules():
        if isinstance(q, PQA):
            q.alpha = 0.0
    s1 = analyze(pmsm, convert_to_snn(pmsm, "aif"), batches, 3, tmp_path / "pmsm", "PMSM", max_batches=2)
    s2 = analyze(qcfs, convert_to_snn(qcfs, "if"), batches, 3, tmp_path / "qcfs", "QCFS", max_batches=2)
    for s, d in ((s1, "pmsm"), (s2, "qcfs")):
        json.dumps(s, allow_nan=False)
        assert s["images"] == 4 and s["timesteps"] == 3
        for f in ("energy.json", "energy_over_time.csv", "layer_spikes.csv", "layer_sops.csv",
                  "conversion_error.csv"):
            assert (tmp_path / d / f).stat().st_size > 0, f
        for f in ("layer_spikes.png", "conversion_error.png", "accuracy_over_time.png"):
            _png_ok(tmp_path / d / f)
        saved = json.loads((tmp_path / d / "energy.json").read_text())
        assert saved["power_mw"] == pytest.approx(s["power_mw"])
        assert math.isclose(s["power_mw"][2], power_mw(s["spikes_up_to"][2], 3))
        with open(tmp_path / d / "conversion_error.csv") as f:
            rows = list(csv.DictReader(f))
        assert [int(r["t"]) for r in rows] == [1, 2, 3] and set(rows[0]) == {"t", "mean", "2", "6"}
    assert s1["conversion_error_mean"][0] <= 1e-6 and s1["agreement_with_ann"][0] == 1.0
    assert s2["conversion_error_mean"][0] > 0
    cmp = compare_runs({"PMSM": s1, "QCFS": s2}, tmp_path / "cmp", baseline="QCFS")
    with open(tmp_path / "cmp" / "energy_comparison.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["method"], r["T"]) for r in rows[:2]] == [("PMSM", "1"), ("QCFS", "1")] and len(rows) == 6
    assert float(rows[1]["ratio"]) == 1.0
    assert {"spikes_e5", "power_mw", "events_e5", "sops_e5", "snn_energy_uj", "ann_over_snn"} <= set(rows[0])
    assert (tmp_path / "cmp" / "energy_equal_accuracy.csv").stat().st_size > 0
    assert [e["convention"] for e in cmp["equal_accuracy"]] == ["spikes", "events", "sops"]
    json.loads((tmp_path / "cmp" / "energy_comparison.json").read_text())
    for f in ("layer_spikes_comparison.png", "layer_events_comparison.png", "accuracy_comparison.png"):
        _png_ok(tmp_path / "cmp" / f)
