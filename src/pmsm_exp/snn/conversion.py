"""Quantized ANN -> SNN by module replacement.

Each quantizer becomes a spiking neuron; conv, linear, norm, pooling, dropout
stay as they are (they run on all timesteps at once, see `neurons.py`). Other
architectures add converters for their own modules with `register_converter`,
from the SNN side: the spiking ViT (`spiking_vit.py`) registers its attention
parts when the `snn` package is imported, so that no model file imports
anything about spikes.

Whatever is left after replacement must be a leaf on the allow-list below
(`allow_leaf` extends it): any other leaf (an activation, a custom `Swish`)
would silently run in float in the "SNN", so it is refused by its path.
"""
from __future__ import annotations

import copy
import math
from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd
from torch.nn.modules.dropout import _DropoutNd
from torch.nn.modules.instancenorm import _InstanceNorm
from torch.nn.modules.pooling import _AdaptiveAvgPoolNd, _AdaptiveMaxPoolNd, _AvgPoolNd, _MaxPoolNd

from pmsm_exp.snn.neurons import (MultiStepModule, SpikingNeuron, aif_bounded_neuron, aif_neuron, if_neuron,
                                   stbif_neuron)
from pmsm_exp.quant import PQA

NEURONS = ("aif", "if", "stbif", "aif_bounded")
TOTAL_BOUNDED = ("stbif", "aif_bounded")   # their spike total holds one quantized value: the input comes once
Converter = Callable[[nn.Module, str], nn.Module]
_CONVERTERS: dict[type, Converter] = {}

# Leaves that may stay in an SNN as they are: stateless maps applied to every timestep alike
_ALLOWED_LEAVES: list[type] = [
    _ConvNd, nn.Linear, _BatchNorm, nn.LayerNorm, nn.GroupNorm, _InstanceNorm,
    _MaxPoolNd, _AvgPoolNd, _AdaptiveAvgPoolNd, _AdaptiveMaxPoolNd,
    _DropoutNd, nn.Identity, nn.Flatten, nn.Unflatten, MultiStepModule,
    nn.Sequential, nn.ModuleList, nn.ModuleDict,  # only when empty (a leaf): the identity
]
try:  # timm's stochastic depth: the identity at inference
    from timm.layers import DropPath
    _ALLOWED_LEAVES.append(DropPath)
except ImportError:  # pragma: no cover
    pass


def register_converter(module_type: type) -> Callable[[Converter], Converter]:
    def wrap(fn: Converter) -> Converter:
        _CONVERTERS[module_type] = fn
        return fn
    return wrap


def allow_leaf(module_type: type) -> type:
    """Declare a leaf type that is correct in an SNN unchanged (a decorator, too)."""
    _ALLOWED_LEAVES.append(module_type)
    return module_type


@register_converter(PQA)
def convert_pqa(q: PQA, neuron: str) -> SpikingNeuron:
    lam = q.threshold.detach()
    if not (lam > 0 and math.isfinite(lam.item())):
        raise ValueError(f"learned threshold lambda={lam.item():.4g} must be > 0 (a neuron with threshold "
                         f"theta=lambda/L <= 0 is meaningless); the QANN did not train properly")
    if neuron == "aif":
        # θ = λ/L is computed by the neuron at forward time, in its current dtype, as PQA does:
        # casting the SNN afterwards (64-true, bf16-true) keeps step 1 bit-exact
        spiking = aif_neuron(lam, q.min_level, q.max_level, levels=q.levels)
    elif neuron == "aif_bounded":
        spiking = aif_bounded_neuron(lam, q.min_level, q.max_level, levels=q.levels)
    elif neuron == "stbif":
        spiking = stbif_neuron(lam, q.min_level, q.max_level, levels=q.levels)
    elif q.alpha != 0:
        raise ValueError(f"the QCFS IF neuron emits no negative spikes: it needs alpha=0, got alpha={q.alpha}; "
                         "use neuron='aif' for polarity quantizers")
    else:
        # PQA(L, 0, β) with λ is QCFS's quantizer with βL levels and threshold βλ: the IF neuron
        # then saturates at βλ, as the quantizer does (for β = 1 the threshold is λ itself)
        spiking = if_neuron(lam if q.max_level == q.levels else lam * (q.max_level / q.levels))
    spiking.kernels = q.kernels   # the quantizer's kernel choice carries over to its neuron
    return spiking


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


def _is_allowed_leaf(m: nn.Module) -> bool:
    return isinstance(m, tuple(_ALLOWED_LEAVES))


def _replace(module: nn.Module, neuron: str, prefix: str) -> None:
    for name, child in module.named_children():
        path = f"{prefix}{name}"
        converter = _CONVERTERS.get(type(child))
        if converter is not None:
            try:
                setattr(module, name, converter(child, neuron))
            except ValueError as err:
                raise ValueError(f"layer '{path}' ({type(child).__name__}): {err}") from None
        elif isinstance(child, MultiStepModule):
            continue  # already spiking
        elif not any(True for _ in child.children()):
            if not _is_allowed_leaf(child):
                raise ValueError(
                    f"cannot convert module '{path}' ({type(child).__name__}): it would stay a float operation in "
                    f"the SNN. Only registered quantizers ({', '.join(t.__name__ for t in _CONVERTERS)}) become "
                    f"spiking neurons, and only conv, linear, norm, pooling, dropout, identity and flatten layers "
                    f"stay as they are; build the model with activation=pqa (or register a converter / allow_leaf)")
        else:
            _replace(child, neuron, path + ".")


def convert_to_snn(model: nn.Module, neuron: str = "aif") -> nn.Module:
    """Return a spiking copy of a quantized model; the model itself is untouched.

    neuron='aif': PMSM's AIF neuron (lossless at t=1); 'if': QCFS's IF neuron;
    'stbif': SpikeZIP-TF's ST-BIF+ neuron (one signed spike per step, bounded spike tracer);
    'aif_bounded': AIF with its spike total bounded as ST-BIF+'s (the ViT stays at its QANN over T).
    """
    if neuron not in NEURONS:
        raise ValueError(f"unknown neuron {neuron!r}; valid: {', '.join(NEURONS)}")
    snn = copy.deepcopy(model).eval()
    if type(snn) in _CONVERTERS:
        raise ValueError(f"the model itself is a {type(snn).__name__}; convert a network that contains it")
    _replace(snn, neuron, "")
    return snn
