"""Conversion error over time (paper Eq. 7-10 and 29-34, Fig. 6).

Per spiking layer l and T = 1..T_max:

    e_l(T) = mean over images and neurons of | (1/T) Σ_{t≤T} o_l(t) − a_l |

where o_l(t) is the neuron's output (post-synaptic potential s·θ) at step t and
a_l the quantized ANN's activation at the PQA of the same name, both driven by
the same image (the SNN layer sees the SNN's own earlier layers, so errors
propagate as they would at inference). With v(0) = θ/2 and a lossless AIF
neuron e_l(1) = 0; QCFS's IF neuron is not lossless at T = 1.

Valid for static encoding with mean readout (the CNNs): the ANN activation is
the target of every step's running average.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from pmsm_exp.models.hooks import forward_with_hooks
from pmsm_exp.quant import pqa_layers
from pmsm_exp.snn import spiking_neurons


class ConversionErrorMeter:
    """Forward hooks that compare SNN running-average outputs with QANN activations.

        with ConversionErrorMeter(qann, snn) as meter:
            logits = meter.reference(x)      # QANN forward, activations kept
            simulate(snn, x, T)              # any chunking
        meter.errors()                       # {layer: [T]}

    Layers are matched by name (conversion keeps the QANN's module names).
    """

    def __init__(self, qann: nn.Module, snn: nn.Module):
        self.qann, self.snn = qann, snn
        quantizers = pqa_layers(qann)
        self.neurons = {n: m for n, m in spiking_neurons(snn).items() if n in quantizers}
        self.unmatched = sorted(set(spiking_neurons(snn)) - set(self.neurons))
        if not self.neurons:
            raise ValueError("no spiking neuron of the SNN has a PQA of the same name in the QANN")
        self.quantizers = {n: quantizers[n] for n in self.neurons}
        self._activations: dict[str, torch.Tensor] = {}
        self._running: dict[str, torch.Tensor] = {}
        self._abs_err: dict[str, np.ndarray] = {}
        self._elements: dict[str, int] = {}
        self._handles = []

    @torch.no_grad()
    def reference(self, x: torch.Tensor) -> torch.Tensor:
        """Run the QANN on x, keep its activations as targets; returns its output."""
        acts: dict[str, torch.Tensor] = {}
        handles = [q.register_forward_hook(lambda m, a, y, n=n: acts.__setitem__(n, y.detach()))
                   for n, q in self.quantizers.items()]
        out = forward_with_hooks(self.qann, x, handles)
        self._activations = acts
        return out

    def _hook(self, name: str):
        def hook(module, args, output):
            steps = module.steps
            t0 = len(module.spike_counts) - steps   # the neuron has recorded this call's steps already
            target = self._activations[name]
            outs = output.detach().reshape(steps, *target.shape)
            if t0 == 0:   # a new simulation: reset the running sum, count its elements once
                self._running[name] = torch.zeros_like(target)
                self._elements[name] = self._elements.get(name, 0) + target.numel()
            errs = np.zeros(steps)
            for i in range(steps):
                self._running[name] += outs[i]
                psp = self._running[name] / (t0 + i + 1)   # average post-synaptic potential (Eq. 7)
                errs[i] = float((psp - target).abs().sum(dtype=torch.float64))
            cur = self._abs_err.get(name, np.zeros(0))
            if len(cur) < t0 + steps:
                cur = np.concatenate([cur, np.zeros(t0 + steps - len(cur))])
            cur[t0:t0 + steps] += errs
            self._abs_err[name] = cur
        return hook

    def __enter__(self) -> "ConversionErrorMeter":
        self._handles = [m.register_forward_hook(self._hook(n)) for n, m in self.neurons.items()]
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        self._running.clear()

    def errors(self) -> dict[str, np.ndarray]:
        """{layer: [T]} mean |average PSP up to T − QANN activation| per neuron and image."""
        return {n: self._abs_err[n] / self._elements[n] for n in self.neurons if n in self._abs_err}


def layer_mean(errors: dict[str, np.ndarray]) -> np.ndarray:
    """Unweighted mean over layers (each layer counts once, whatever its size)."""
    return np.mean(np.stack(list(errors.values())), axis=0)
