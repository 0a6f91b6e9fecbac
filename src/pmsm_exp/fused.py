"""Elementwise kernels of the quantizer and the AIF neuron, in two forms.

- eager (the reference and the fallback): plain PyTorch with as few temporaries
  as possible (in-place ops on tensors this module allocated itself);
- compiled: the same arithmetic through `torch.compile` (inductor), one pass over
  memory per call. Opt in with `set_backend("compile")`; it needs a C++ compiler
  on CPU (or Triton on GPU) and costs some seconds of compilation per kernel.

Both forms perform the same float operations in the same order (z/θ, + 1/2,
floor, clamp, × θ), so they agree bit for bit; reductions (λ's gradient) are
done outside the kernels, by `torch.sum`, for the same reason.
"""
from __future__ import annotations

import torch

from pmsm_exp.errors import UserError

BACKENDS = ("eager", "compile")
_backend = "eager"
_compiled: dict[str, object] = {}


def set_backend(name: str) -> None:
    """'eager' (default) or 'compile' (torch.compile of the kernels below)."""
    global _backend
    if name not in BACKENDS:
        raise UserError(f"snn.kernels: got {name!r}; allowed: {', '.join(BACKENDS)}")
    _backend = name


def backend() -> str:
    return _backend


def _kernel(name: str, eager_fn):
    """The compiled form of `eager_fn` when the backend is 'compile', else `eager_fn`."""
    if _backend == "eager":
        return eager_fn
    fn = _compiled.get(name)
    if fn is None:
        fn = _compiled[name] = torch.compile(_COMPILABLE[name], dynamic=True, fullgraph=True)
    return fn


# ---------------------------------------------------------------- the quantizer (PQA)
def _pqa_forward_pure(z, theta, lo: int, hi: int):
    return torch.clamp(torch.floor(z / theta + 0.5), lo, hi) * theta


def _pqa_forward_eager(z, theta, lo: int, hi: int):
    y = z / theta                     # the only allocation; the rest runs in place
    return y.add_(0.5).floor_().clamp_(lo, hi).mul_(theta)


def _pqa_backward_pure(g, z, theta, lo: int, hi: int):
    """Straight-through gradient for z where the clamp is inactive, and each element's
    contribution to dPQA/dθ = k - [inside]·z/θ (its sum, over L, is λ's gradient)."""
    q = z / theta
    k = torch.floor(q + 0.5)
    inside = (k >= lo) & (k <= hi)
    grad_z = torch.where(inside, g, 0.0)
    grad_theta = g * (torch.clamp(k, lo, hi) - torch.where(inside, q, 0.0))
    return grad_z, grad_theta


def _pqa_backward_eager(g, z, theta, lo: int, hi: int):
    q = z / theta
    k = torch.add(q, 0.5).floor_()
    k_clamped = torch.clamp(k, lo, hi)
    inside = k_clamped == k               # False for NaN too, like (k >= lo) & (k <= hi)
    grad_z = torch.where(inside, g, 0.0)
    grad_theta = k_clamped.sub_(q.mul_(inside)).mul_(g)
    return grad_z, grad_theta


class PQAFunction(torch.autograd.Function):
    """PQA(z) = clamp(floor(z/θ + 1/2), lo, hi)·θ with θ = λ/L; one kernel each way.

    Saves only z (already alive in the graph) and recomputes in the backward."""

    @staticmethod
    def forward(ctx, z, threshold, levels: int, lo: int, hi: int):
        theta = threshold / levels
        ctx.save_for_backward(z, theta)
        ctx.levels, ctx.lo, ctx.hi = levels, lo, hi
        return _kernel("pqa_forward", _pqa_forward_eager)(z, theta, lo, hi)

    @staticmethod
    def backward(ctx, grad):
        z, theta = ctx.saved_tensors
        grad_z, per_element = _kernel("pqa_backward", _pqa_backward_eager)(grad, z, theta, ctx.lo, ctx.hi)
        grad_threshold = per_element.sum() / ctx.levels if ctx.needs_input_grad[1] else None
        return (grad_z if ctx.needs_input_grad[0] else None), grad_threshold, None, None, None


def pqa(z: torch.Tensor, threshold: torch.Tensor, levels: int, lo: int, hi: int) -> torch.Tensor:
    if torch.is_grad_enabled() and (z.requires_grad or threshold.requires_grad):
        return PQAFunction.apply(z, threshold, levels, lo, hi)
    return _kernel("pqa_forward", _pqa_forward_eager)(z, threshold / levels, lo, hi)


# ---------------------------------------------------------------- the AIF neuron
def _aif_steps_pure(currents, membrane, theta, lo: int, hi: int, init: float):
    """All steps of one call: currents [steps, ...] -> (spikes [steps, ...] in units of θ,
    membrane after the last step). membrane None: the first step starts at `init`."""
    spikes = []
    for t in range(currents.shape[0]):
        scaled = currents[t] / theta
        u = scaled + init if membrane is None else membrane + scaled
        s = torch.clamp(torch.floor(u), lo, hi)
        membrane = u - s
        spikes.append(s)
    return torch.stack(spikes), membrane


def _aif_steps_eager(currents, membrane, theta, lo: int, hi: int, init: float):
    u_all = currents / theta                  # one allocation for the whole call
    spikes = torch.empty_like(u_all)
    for t in range(u_all.shape[0]):
        u = u_all[t]
        if membrane is None:
            u.add_(init)                      # z/θ + 1/2: the quantizer's arithmetic
        else:
            u.add_(membrane)                  # m + z/θ (addition commutes exactly)
        s = torch.floor(u, out=spikes[t]).clamp_(lo, hi)
        membrane = u.sub_(s)
    if u_all.shape[0] > 1:
        membrane = membrane.clone()           # do not keep the whole call's buffer alive
    return spikes, membrane


def aif_steps(currents, membrane, theta, lo: int, hi: int, init: float):
    return _kernel("aif_steps", _aif_steps_eager)(currents, membrane, theta, lo, hi, init)


_COMPILABLE = {"pqa_forward": _pqa_forward_pure, "pqa_backward": _pqa_backward_pure,
               "aif_steps": _aif_steps_pure}
