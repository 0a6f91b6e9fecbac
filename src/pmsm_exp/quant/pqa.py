"""The one quantizer: Polarity Quantized Activation (PQA, paper Eq. 2).

    PQA(z) = (λ/L) · clamp(floor(z / (λ/L) + 1/2), αL, βL)

QCFS (Bu et al. 2022, the classic quantized activation) is the same module
with α = 0, β = 1; SpikeZIP-TF's signed quantizer is α = -1/2, β = 1/2 - 1/L.
The forward arithmetic (θ = λ/L, then z/θ + 1/2, floor, clamp, times θ; one
fused op each way, `kernels.py`) is the contract the spiking neurons in
`snn/neurons.py` reproduce bit for bit.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from pmsm_exp.quant import kernels


class PQAParamError(ValueError):
    """A bad L, α or β; `param` names which ("levels", "alpha" or "beta")."""

    def __init__(self, param: str, message: str):
        super().__init__(message)
        self.param = param


def check_pqa_params(levels, alpha, beta) -> None:
    """The one check of L, α and β (the config checks and the entropy analysis use it too):
    raise PQAParamError naming the bad value and the rule it breaks. None skips a bound
    (an `auto` one, chosen later)."""
    if isinstance(levels, bool) or not float(levels).is_integer() or levels <= 0:
        raise PQAParamError("levels", f"levels={levels!r}: the number of PQA levels L must be a positive integer "
                                      f"(got L={levels!r})")
    if beta is not None and not beta > 0:
        raise PQAParamError("beta", f"beta={beta!r}: PQA's upper bound beta must be > 0")
    if alpha is not None and not alpha <= 0:
        raise PQAParamError("alpha", f"alpha={alpha!r}: PQA's lower bound alpha must be <= 0")
    for name, bound in (("alpha", alpha), ("beta", beta)):
        scaled = None if bound is None else bound * levels
        if scaled is not None and abs(scaled - round(scaled)) > 1e-9:
            raise PQAParamError(name, f"{name}={bound!r} with L={levels:g} levels: {name}*L ({name}*levels) = "
                                      f"{scaled!r} must be an integer; pick {name} as a multiple of "
                                      f"1/L={1 / levels!r}")


class PQA(nn.Module):
    """Polarity quantized activation with a learnable per-layer threshold λ.

    Gradients: straight-through for the floor, zero where the clamp is active,
    and λ's gradient summed from each element's dPQA/dθ, as autograd would give it
    (`kernels.PQAFunction`). `kernels` picks the eager or compiled form of that
    arithmetic (the same values): `kernels.use_kernels(model, name)`.
    """

    kernels = "eager"
    # False: clip to [αλ, βλ] without rounding, a full-precision warm-up before quantization starts
    # (optim.quantize_from_epoch); training switches it back on, and a rebuilt or converted network
    # always quantizes (it is not saved)
    quantize = True

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

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if not self.quantize:
            return kernels.clip(z, self.threshold, self.alpha, self.beta)
        return kernels.pqa(z, self.threshold, self.levels, self.min_level, self.max_level, self.kernels)

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
