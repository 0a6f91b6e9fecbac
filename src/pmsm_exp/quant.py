"""The one quantizer: Polarity Quantized Activation (PQA, paper Eq. 2).

    PQA(z) = (λ/L) · clamp(floor(z / (λ/L) + 1/2), αL, βL)

QCFS (Bu et al. 2022, the classic quantized activation) is the same module
with α = 0, β = 1; SpikeZIP-TF's signed quantizer is α = -1/2, β = 1/2 - 1/L.
The forward arithmetic (θ = λ/L, then z/θ + 1/2, floor, clamp, times θ) is
the contract the spiking neurons in `neurons.py` reproduce bit for bit.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from pmsm_exp import fused


def check_pqa_params(levels, alpha, beta) -> None:
    """Raise ValueError naming the bad value and the rule it breaks."""
    if isinstance(levels, bool) or not float(levels).is_integer() or levels <= 0:
        raise ValueError(f"PQA levels L must be a positive integer, got L={levels!r}")
    if not beta > 0:
        raise ValueError(f"PQA upper bound beta must be > 0, got beta={beta!r}")
    if not alpha <= 0:
        raise ValueError(f"PQA lower bound alpha must be <= 0, got alpha={alpha!r}")
    for name, bound in (("alpha", alpha), ("beta", beta)):
        scaled = bound * levels
        if abs(scaled - round(scaled)) > 1e-9:
            raise ValueError(
                f"PQA needs {name}*L to be an integer, got {name}={bound!r} with L={levels} "
                f"({name}*L={scaled!r}); pick {name} as a multiple of 1/L={1 / levels!r}")


class _FloorClampSTE(torch.autograd.Function):
    """clamp(floor(y), lo, hi); gradient 1 where the clamp is inactive, else 0."""

    @staticmethod
    def forward(ctx, y, lo: int, hi: int):
        k = torch.floor(y)
        ctx.save_for_backward((k >= lo) & (k <= hi))
        return torch.clamp(k, lo, hi)

    @staticmethod
    def backward(ctx, grad):
        (inside,) = ctx.saved_tensors
        return grad * inside, None, None


class PQA(nn.Module):
    """Polarity quantized activation with a learnable per-layer threshold λ.

    Gradients: straight-through for the floor, zero where the clamp is active,
    and λ learns through autograd as in QCFS.
    """

    def __init__(self, levels: int = 8, alpha: float = -0.25, beta: float = 1.0,
                 threshold: float = 8.0, learn_threshold: bool = True):
        super().__init__()
        check_pqa_params(levels, alpha, beta)
        if not threshold > 0:
            raise ValueError(f"PQA threshold lambda must be > 0, got threshold={threshold!r}")
        self.levels = int(levels)
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.threshold = nn.Parameter(torch.tensor(float(threshold)), requires_grad=learn_threshold)

    @property
    def min_level(self) -> int:
        return round(self.alpha * self.levels)

    @property
    def max_level(self) -> int:
        return round(self.beta * self.levels)

    def step_size(self) -> torch.Tensor:
        """θ = λ/L, computed exactly as the converted neuron computes it."""
        return self.threshold / self.levels

    def quantized_levels(self, z: torch.Tensor) -> torch.Tensor:
        """The integer level k of each input (what an AIF neuron emits at t = 1)."""
        if not torch.is_grad_enabled():
            return torch.clamp(torch.floor(z / self.step_size() + 0.5), self.min_level, self.max_level)
        return _FloorClampSTE.apply(z / self.step_size() + 0.5, self.min_level, self.max_level)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        # one fused op each way (fused.py): quantized_levels(z) * step_size(), same arithmetic
        return fused.pqa(z, self.threshold, self.levels, self.min_level, self.max_level)

    def extra_repr(self) -> str:
        return f"levels={self.levels}, alpha={self.alpha}, beta={self.beta}, threshold={self.threshold.item():.4g}"


def make_activation(kind: str = "pqa", levels: int = 8, alpha: float = -0.25, beta: float = 1.0,
                    threshold: float = 8.0, learn_threshold: bool = True) -> Callable[[], nn.Module]:
    """Activation factory for the models: 'pqa' (PMSM, or QCFS with alpha=0) or 'relu' (full precision)."""
    if kind == "relu":
        return nn.ReLU
    if kind == "pqa":
        check_pqa_params(levels, alpha, beta)
        return lambda: PQA(levels, alpha, beta, threshold, learn_threshold)
    raise ValueError(f"unknown activation kind {kind!r}; valid: 'pqa', 'relu'")


def pqa_layers(model: nn.Module) -> dict[str, PQA]:
    return {name: m for name, m in model.named_modules() if isinstance(m, PQA)}
