"""Quantized ANN -> SNN by module replacement.

Each quantizer becomes a spiking neuron; conv, linear, BatchNorm and pooling
stay as they are (they run on all timesteps at once, see `neurons.py`). Other
architectures add converters for their own modules with `register_converter`
(the spiking ViT does so for its attention). Whatever activation is left
over would silently run in float in the "SNN", so it is refused.
"""
from __future__ import annotations

import copy
from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

from pmsm_exp.neurons import MultiStepModule, SpikingNeuron, aif_neuron, if_neuron, stbif_neuron
from pmsm_exp.quant import PQA

NEURONS = ("aif", "if", "stbif")
Converter = Callable[[nn.Module, str], nn.Module]
_CONVERTERS: dict[type, Converter] = {}


def register_converter(module_type: type) -> Callable[[Converter], Converter]:
    def wrap(fn: Converter) -> Converter:
        _CONVERTERS[module_type] = fn
        return fn
    return wrap


@register_converter(PQA)
def convert_pqa(q: PQA, neuron: str) -> SpikingNeuron:
    step = q.step_size().detach()
    if neuron == "aif":
        return aif_neuron(step, q.min_level, q.max_level)
    if neuron == "stbif":
        return stbif_neuron(step, q.min_level, q.max_level)
    if q.alpha != 0:
        raise ValueError(f"the QCFS IF neuron emits no negative spikes: it needs alpha=0, got alpha={q.alpha}; "
                         "use neuron='aif' for polarity quantizers")
    return if_neuron(q.threshold.detach())


class StepwiseLinear(nn.Linear, MultiStepModule):
    """nn.Linear applied one timestep at a time. A GEMM's result depends on its row count
    (BLAS picks kernels by size), so per-step calls of N rows, as at t = 1, keep every
    chunking of the simulation equal bit for bit; convolutions do not need this."""

    def reset_state(self) -> None:
        pass

    def forward(self, x):
        if self.steps == 1:
            return super().forward(x)
        return torch.cat([F.linear(xt, self.weight, self.bias) for xt in self.split_time(x)])


@register_converter(nn.Linear)
def convert_linear(layer: nn.Linear, neuron: str) -> StepwiseLinear:
    new = StepwiseLinear(layer.in_features, layer.out_features, layer.bias is not None,
                         layer.weight.device, layer.weight.dtype)
    new.load_state_dict(layer.state_dict())
    return new


def _is_unconvertible(m: nn.Module) -> bool:
    activation = type(m).__module__ == "torch.nn.modules.activation"
    unknown_quantizer = "quant" in type(m).__name__.lower()
    return activation or unknown_quantizer


def _replace(module: nn.Module, neuron: str, prefix: str) -> None:
    for name, child in module.named_children():
        path = f"{prefix}{name}"
        converter = _CONVERTERS.get(type(child))
        if converter is not None:
            setattr(module, name, converter(child, neuron))
        elif _is_unconvertible(child):
            raise ValueError(f"cannot convert module '{path}' ({type(child).__name__}): only registered "
                             f"quantizers (PQA; {', '.join(t.__name__ for t in _CONVERTERS)}) become spiking "
                             "neurons; build the model with activation=pqa")
        else:
            _replace(child, neuron, path + ".")


def convert_to_snn(model: nn.Module, neuron: str = "aif") -> nn.Module:
    """Return a spiking copy of a quantized model; the model itself is untouched.

    neuron='aif': PMSM's AIF neuron (lossless at t=1); 'if': QCFS's IF neuron;
    'stbif': SpikeZIP-TF's ST-BIF+ neuron (one signed spike per step, bounded spike tracer).
    """
    if neuron not in NEURONS:
        raise ValueError(f"unknown neuron {neuron!r}; valid: {', '.join(NEURONS)}")
    snn = copy.deepcopy(model).eval()
    if type(snn) in _CONVERTERS:
        raise ValueError(f"the model itself is a {type(snn).__name__}; convert a network that contains it")
    _replace(snn, neuron, "")
    return snn
