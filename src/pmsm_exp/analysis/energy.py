"""Spikes, synaptic operations and energy of a converted SNN (paper Eq. 11, Table 3, Fig. 4).

Three ways to count the work of an SNN, reported side by side because they
disagree, and the disagreement is the point (an AIF neuron fires up to βL
spikes per step, QCFS's IF neuron at most one):

* spikes (the paper's Eq. 11): an output `s` counts as `|s|` spikes;
* spike events: a non-zero output counts once, whatever `|s|` (one graded /
  multi-bit event, as Loihi 2 or SpiNNaker would send it);
* synaptic operations (SOPs): every spike times its fan-out, i.e. the
  accumulates it causes in the next conv/linear (`|s|`-weighted, and an
  event-weighted variant), 0.9 pJ each; the layer that sees the analog image
  does multiply-accumulates (MACs, 4.6 pJ each), counted separately.

All counts are per image (summed over the batch, divided by the number of
images) and per step; `*_up_to` are cumulative over steps 1..T.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pmsm_exp.models.hooks import forward_with_hooks
from pmsm_exp.snn import SimulationResult, SpikingNeuron, spiking_neurons

E_SPIKE_PJ = 0.9   # per spike / per accumulate (45 nm, Horowitz 2014), paper Eq. 11
E_MAC_PJ = 4.6     # per multiply-accumulate (45 nm, Horowitz 2014)
STEP_S = 1e-3      # Δt: one timestep lasts 1 ms (paper)

CONVENTIONS = {
    "spikes": "paper Eq. 11: an AIF output s counts as |s| spikes; per image, summed over all spiking "
              "layers and steps 1..T",
    "events": "spike events: a non-zero neuron output counts once per step whatever |s| "
              "(one graded/multi-bit event); per image, summed over layers and steps 1..T",
    "power_mw": "Eq. 11: P = N * 0.9 pJ / (T * 1 ms) in mW, N = spikes (or events) per image up to T",
    "spikes_e5": "spikes per image up to T in units of 1e5 (the paper's Table 3 column)",
    "sops": "synaptic operations: each spike (|s|-weighted) times its fan-out = accumulates it causes in "
            "the next conv/linear; average pooling between a neuron and a conv/linear is fused into it, so "
            "every pre-pool spike counts the fan-out of its pooled position; 0.9 pJ per accumulate; "
            "biases, BatchNorm (folded) and membrane updates are not counted",
    "sop_events": "as sops, but each non-zero neuron output counts once (event-weighted)",
    "analog_macs": "conv/linear layers fed by the analog image (not by spikes): MACs, 4.6 pJ each, "
                   "counted at every step as simulated (static encoding re-presents the image)",
    "ann_macs": "quantized ANN: multiply-accumulates of every conv/linear per image (BatchNorm folded, "
                "biases and activations not counted), 4.6 pJ each",
    "snn_energy_pj": "per image up to T: 0.9 pJ * sops + 4.6 pJ * analog_macs",
    "energy_ratio": "ann_energy_pj / snn_energy_pj (> 1: the SNN spends less)",
}


def power_mw(spikes_per_image: float, timesteps: int, e_spike_pj: float = E_SPIKE_PJ,
             step_s: float = STEP_S) -> float:
    """Eq. 11: average power P = N·E_spike / (T·Δt) in mW.

    `spikes_per_image`: spikes of one image summed over all layers and steps 1..T
    (not per step); `timesteps`: T. Table 3 check: 3.08e5 spikes, T=1 -> 0.277 mW.
    """
    return float(spikes_per_image) * e_spike_pj * 1e-12 / (timesteps * step_s) * 1e3


def _grow(acc: dict[str, np.ndarray], key: str, start: int, values: np.ndarray) -> None:
    """acc[key][start:start+len(values)] += values, growing the array as needed."""
    cur = acc.get(key, np.zeros(0))
    end = start + len(values)
    if len(cur) < end:
        cur = np.concatenate([cur, np.zeros(end - len(cur))])
    cur[start:end] += values
    acc[key] = cur


def _per_image(acc: dict[str, np.ndarray], images: int) -> dict[str, np.ndarray]:
    if images == 0:
        raise ValueError("no images counted yet")
    return {k: v / images for k, v in acc.items()}


class SpikeStats:
    """Accumulates the neurons' own spike records over batches of `SimulationResult`s."""

    def __init__(self):
        self.images = 0
        self.neurons: dict[str, int] = {}
        self._spikes: dict[str, np.ndarray] = {}
        self._events: dict[str, np.ndarray] = {}

    def update(self, result: SimulationResult) -> None:
        if self.images and result.timesteps != self.timesteps:
            raise ValueError(f"all results must have the same T: got {result.timesteps}, have {self.timesteps}")
        for name, counts in result.spike_counts.items():
            _grow(self._spikes, name, 0, counts.double().cpu().numpy())
            _grow(self._events, name, 0, result.spike_events[name].double().cpu().numpy())
        self.neurons.update(result.neurons)
        self.images += result.batch_size

    @property
    def timesteps(self) -> int:
        return len(next(iter(self._spikes.values()))) if self._spikes else 0

    def layer_spikes(self) -> dict[str, np.ndarray]:
        """{layer: [T]} |s| spikes per image at each step."""
        return _per_image(self._spikes, self.images)

    def layer_events(self) -> dict[str, np.ndarray]:
        """{layer: [T]} non-zero outputs per image at each step."""
        return _per_image(self._events, self.images)

    def spikes_per_step(self) -> np.ndarray:
        return sum(self.layer_spikes().values())

    def events_per_step(self) -> np.ndarray:
        return sum(self.layer_events().values())

    def spikes_up_to(self) -> np.ndarray:
        """[T]: spikes per image summed over steps 1..T (Eq. 11's N at each T)."""
        return np.cumsum(self.spikes_per_step())

    def events_up_to(self) -> np.ndarray:
        return np.cumsum(self.events_per_step())

    def power_mw(self, events: bool = False) -> np.ndarray:
        n = self.events_up_to() if events else self.spikes_up_to()
        return np.array([power_mw(v, t) for t, v in enumerate(n, start=1)])


def _sum_per_step(x: torch.Tensor, steps: int) -> np.ndarray:
    """x is [steps*N, ...] (time folded into the batch): sum each step's slice."""
    return x.reshape(steps, -1).sum(1, dtype=torch.float64).cpu().numpy()


def _receptive_sum(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """For each output position of `m` (per group), the sum of `x` over its receptive field."""
    if isinstance(m, nn.Linear):
        return x.sum(-1, keepdim=True)
    ones = x.new_ones(m.groups, m.in_channels // m.groups, *m.kernel_size)
    return F.conv2d(x, ones, None, m.stride, m.padding, m.dilation, m.groups)


def _fan_out(m: nn.Module) -> int:
    """Outputs one input element reaches per receptive-field position (C_out per group; Linear: out)."""
    return m.out_features if isinstance(m, nn.Linear) else m.out_channels // m.groups


def _macs_per_call(m: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Elementwise MAC count map (its sum is the layer's MACs for the batch)."""
    if isinstance(m, nn.Linear):
        return x.new_full((y.numel() // m.out_features,), float(m.in_features * m.out_features))
    per_output = m.in_channels // m.groups * int(np.prod(m.kernel_size))
    return y.new_full(y.shape, float(per_output))


def _window_area(m: nn.Module, x: torch.Tensor) -> float:
    """Pre-pool elements per pooled element (non-overlapping average pooling)."""
    if isinstance(m, nn.AvgPool2d):
        if m.divisor_override:
            return float(m.divisor_override)
        k = m.kernel_size if isinstance(m.kernel_size, tuple) else (m.kernel_size, m.kernel_size)
        return float(k[0] * k[1])
    h, w = x.shape[-2:]
    out = m.output_size if isinstance(m.output_size, tuple) else (m.output_size, m.output_size)
    oh, ow = (h if out[0] is None else out[0]), (w if out[1] is None else out[1])
    if h % oh or w % ow:
        raise ValueError(f"SOP counting needs adaptive pooling with divisible windows, got {h}x{w} -> {oh}x{ow}")
    return float(h // oh * w // ow)


POOLS = (nn.AvgPool2d, nn.AdaptiveAvgPool2d)
PASS_THROUGH = (nn.Flatten, nn.Dropout, nn.Identity, nn.Unflatten)
SYNAPSES = (nn.Conv2d, nn.Linear)


@dataclass
class _SpikeTag:
    """What a tensor carries: spikes of a neuron with step θ, or pooled spike sums."""
    theta: torch.Tensor | None = None     # set: the tensor itself is s·θ
    abs_sum: torch.Tensor | None = None   # set: pooled Σ|s| (and Σ[s≠0]) maps, shaped like the tensor
    event_sum: torch.Tensor | None = None

    def maps(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.theta is not None:
            s = torch.round(x.abs() / self.theta)   # o = s·θ, so |s| = |o|/θ (exact after rounding)
            return s, (s != 0).to(x.dtype)
        return self.abs_sum.reshape(x.shape), self.event_sum.reshape(x.shape)


class SynapticOpCounter:
    """Counts SOPs and analog MACs of an SNN while it is simulated (forward hooks).

        with SynapticOpCounter(snn) as sops:
            simulate(snn, x, T)
        sops.sops_per_step()   # [T] per image

    Which tensors are spikes is tracked through the forward pass: a neuron's
    output is tagged, and the tag follows pooling (as a sum-pooled spike map)
    and shape-only modules (Flatten, Dropout, Identity). A conv/linear whose
    input is the model's input counts analog MACs; one whose input carries no
    tag (an unknown module in between) also counts MACs and is listed in
    `untracked`, so nothing is silently called a spike.

    Images are counted when a simulation starts (neurons freshly reset), so the
    counter works with `simulate` in any chunking and over many batches.
    """

    def __init__(self, snn: nn.Module):
        self.snn = snn
        neurons = spiking_neurons(snn)
        if not neurons:
            raise ValueError("SynapticOpCounter needs an SNN with SpikingNeurons")
        self._clock = next(iter(neurons.values()))   # its len(spike_counts) = steps done so far
        self.images = 0
        self.untracked: set[str] = set()
        self.analog: set[str] = set()
        self._sops: dict[str, np.ndarray] = {}
        self._sop_events: dict[str, np.ndarray] = {}
        self._macs: dict[str, np.ndarray] = {}
        self._handles = []
        self._tags: dict[int, tuple[torch.Tensor, _SpikeTag]] = {}
        self._input = None
        self._t0 = 0
        self._steps = 1

    # hooks ----------------------------------------------------------------
    def _tag(self, x: torch.Tensor) -> _SpikeTag | None:
        entry = self._tags.get(id(x))
        return entry[1] if entry is not None and entry[0] is x else None

    def _set_tag(self, y: torch.Tensor, tag: _SpikeTag) -> None:
        self._tags[id(y)] = (y, tag)   # holding y keeps its id unique during the pass

    def _start(self, module, args):
        self._input = args[0]
        self._t0 = len(self._clock.spike_counts)
        self._steps = self._clock.steps
        if self._t0 == 0:
            self.images += args[0].shape[0] // self._steps

    def _end(self, module, args, output):
        self._tags.clear()
        self._input = None

    def _neuron(self, module: SpikingNeuron, args, output):
        self._set_tag(output, _SpikeTag(theta=module.theta))

    def _pool(self, module, args, output):
        tag = self._tag(args[0])
        if tag is None:
            return
        s, ev = tag.maps(args[0])
        area = _window_area(module, args[0])   # avg-pool of the spike map times area = sum-pool
        # .forward: bypass hooks (this one included) on the helper calls
        self._set_tag(output, _SpikeTag(abs_sum=module.forward(s) * area, event_sum=module.forward(ev) * area))

    def _pass(self, module, args, output):
        tag = self._tag(args[0])
        if tag is not None and output is not args[0]:
            if tag.theta is not None:
                self._set_tag(output, tag)
            else:
                self._set_tag(output, _SpikeTag(abs_sum=tag.abs_sum.reshape(output.shape),
                                                event_sum=tag.event_sum.reshape(output.shape)))

    def _synapse(self, name: str):
        def hook(module, args, output):
            x = args[0]
            tag = self._tag(x)
            if tag is None:
                (self.analog if x is self._input else self.untracked).add(name)
                _grow(self._macs, name, self._t0, _sum_per_step(_macs_per_call(module, x, output), self._steps))
                return
            s, ev = tag.maps(x)
            fan = _fan_out(module)
            _grow(self._sops, name, self._t0, _sum_per_step(_receptive_sum(module, s), self._steps) * fan)
            _grow(self._sop_events, name, self._t0, _sum_per_step(_receptive_sum(module, ev), self._steps) * fan)
        return hook

    def __enter__(self) -> "SynapticOpCounter":
        h = self._handles
        h.append(self.snn.register_forward_pre_hook(self._start))
        h.append(self.snn.register_forward_hook(self._end))
        for name, m in self.snn.named_modules():
            if isinstance(m, SpikingNeuron):
                h.append(m.register_forward_hook(self._neuron))
            elif isinstance(m, POOLS):
                h.append(m.register_forward_hook(self._pool))
            elif isinstance(m, PASS_THROUGH):
                h.append(m.register_forward_hook(self._pass))
            elif isinstance(m, SYNAPSES):
                h.append(m.register_forward_hook(self._synapse(name)))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._tags.clear()

    # results (per image) --------------------------------------------------
    def layer_sops(self) -> dict[str, np.ndarray]:
        return _per_image(self._sops, self.images)

    def layer_sop_events(self) -> dict[str, np.ndarray]:
        return _per_image(self._sop_events, self.images)

    def layer_analog_macs(self) -> dict[str, np.ndarray]:
        return _per_image(self._macs, self.images)

    @property
    def timesteps(self) -> int:
        return max((len(v) for acc in (self._sops, self._sop_events, self._macs) for v in acc.values()), default=0)

    def _total(self, layers: dict[str, np.ndarray]) -> np.ndarray:
        total = np.zeros(self.timesteps)
        for v in layers.values():
            total[:len(v)] += v
        return total

    def sops_per_step(self) -> np.ndarray:
        return self._total(self.layer_sops())

    def sop_events_per_step(self) -> np.ndarray:
        return self._total(self.layer_sop_events())

    def analog_macs_per_step(self) -> np.ndarray:
        return self._total(self.layer_analog_macs())


@torch.no_grad()
def count_macs(model: nn.Module, x: torch.Tensor) -> dict[str, float]:
    """MACs per image of every conv/linear of an ANN, measured on input `x` (one forward)."""
    macs: dict[str, float] = {}
    handles = []
    for name, m in model.named_modules():
        if isinstance(m, SYNAPSES):
            def hook(module, args, output, name=name):
                macs[name] = macs.get(name, 0.0) + float(_macs_per_call(module, args[0], output).sum(dtype=torch.float64))
            handles.append(m.register_forward_hook(hook))
    forward_with_hooks(model, x, handles)
    return {k: v / x.shape[0] for k, v in macs.items()}


def snn_energy_pj(sops_up_to: np.ndarray, analog_macs_up_to: np.ndarray) -> np.ndarray:
    """SOP convention: 0.9 pJ per accumulate + 4.6 pJ per analog MAC, per image up to T."""
    return E_SPIKE_PJ * np.asarray(sops_up_to) + E_MAC_PJ * np.asarray(analog_macs_up_to)


def ann_energy_pj(macs_per_image: float) -> float:
    return E_MAC_PJ * float(macs_per_image)


def energy_at_equal_accuracy(ref_accuracy, ref_energy, other_accuracy, other_energy,
                             ref_t: int = 1, tolerance: float = 0.0) -> dict:
    """Where does the other run reach the reference run's accuracy at T = ref_t, and at what cost?

    Accuracies and energies are per-T sequences (index 0 is T=1); energies are
    per image up to T under one convention. Returns the smallest T with
    other_accuracy[T] >= ref_accuracy[ref_t] - tolerance, the energies there and
    other/ref; `other_t` is None ("never within T_max") if it is never reached.
    """
    target = float(ref_accuracy[ref_t - 1])
    out = {"ref_t": ref_t, "ref_accuracy": target, "ref_energy": float(ref_energy[ref_t - 1]),
           "tolerance": tolerance, "other_t_max": len(other_accuracy)}
    for t, acc in enumerate(other_accuracy, start=1):
        if float(acc) >= target - tolerance:
            e = float(other_energy[t - 1])
            return {**out, "other_t": t, "other_accuracy": float(acc), "other_energy": e,
                    "energy_ratio_other_over_ref": e / out["ref_energy"] if out["ref_energy"] else None,
                    "note": f"reached at T={t}"}
    return {**out, "other_t": None, "other_accuracy": max(map(float, other_accuracy), default=None),
            "other_energy": None, "energy_ratio_other_over_ref": None,
            "note": f"never within T_max={len(other_accuracy)}"}
