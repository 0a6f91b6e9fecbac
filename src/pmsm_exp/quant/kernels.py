"""Elementwise kernels of the quantizer and the AIF neuron, in two forms.

- eager (the reference and the fallback): plain PyTorch with as few temporaries
  as possible (in-place ops on tensors this module allocated itself);
- compiled: the same arithmetic through `torch.compile` (inductor), one pass over
  memory per call; it needs a C++ compiler on CPU (or Triton on GPU) and costs some
  seconds of compilation per kernel.

Which form runs is a setting of each quantizer and neuron (their `kernels` attribute,
as spikingjelly keeps a backend on each module; `use_kernels(model, name)` sets it on
a whole network), passed down to these functions: nothing process-wide is switched.

Both forms perform the same float operations in the same order (z/θ, + 1/2,
floor, clamp, × θ), so they agree bit for bit; reductions (λ's gradient) are
done outside the kernels, by `torch.sum`, for the same reason.

Where the time goes on a CPU (torch.profiler, ResNet-20): every eager op is one
pass over memory, an out-of-place one costs about twice an in-place one, and
`torch.where` with a bool mask (and bool -> float casts) several times more; so
the eager forms use in-place ops, `hardtanh_backward` as the one-pass select
(`_select`), and, for training, save the per-element dPQA/dθ from the forward
(`_pqa_train_forward_eager`) so that the backward is 3 passes, not about 12.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import warnings
import torch
from torch import nn

BACKENDS = ("eager", "compile")
CHOICES = ("auto", *BACKENDS)      # snn.kernels
# auto: training runs of at least this many optimizer steps compile the quantizer. Measured on
# the 2-core CPU box (benchmarks/peer.py): compiling costs 5-25 s once per process, and saves
# about a tenth of every ResNet-20 training step at batch 128 (some 35 ms), so it pays back
# after roughly 700 steps; shorter runs (tests, smoke runs) stay eager and start at once.
AUTO_COMPILE_STEPS = 1000
_compiled: dict[str, object] = {}   # a cache of compiled kernels, not a choice: the modules choose


def check_backend(name: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"kernels: got {name!r}; allowed: {', '.join(BACKENDS)}")
    return name


def use_kernels(model: nn.Module, name: str) -> nn.Module:
    """Every quantizer and neuron of `model` (the modules whose class declares `kernels`) runs
    the kernels `name` from now on; returns the model."""
    check_backend(name)
    for m in model.modules():
        if isinstance(getattr(type(m), "kernels", None), str):
            m.kernels = name
    return model


def kernels_of(model: nn.Module) -> set[str]:
    """The kernels the quantizers and neurons of `model` are set to run."""
    return {m.kernels for m in model.modules() if isinstance(getattr(type(m), "kernels", None), str)}


def eval_backend(choice: str) -> str:
    """Evaluation and simulation: compiled AIF steps measured slower than the eager ones on
    a CPU (benchmarks/README.md), so 'auto' evaluates eager; the values are the same."""
    return "eager" if choice == "auto" else choice


def compile_unavailable(device_type: str) -> str:
    """'' when torch.compile can build kernels for this device here, else why not."""
    if device_type == "cuda":
        return "" if importlib.util.find_spec("triton") else "Triton is not installed"
    compilers = [os.environ.get("CXX", ""), "g++", "c++", "clang++"]
    return "" if any(c and shutil.which(c) for c in compilers) else "no C++ compiler (g++/clang++) on PATH"


def training_backend(choice: str, steps: int, device_type: str, precision="32-true") -> tuple[str, str]:
    """(the kernels for training, why): 'auto' compiles for float32 runs of AUTO_COMPILE_STEPS or
    more optimizer steps where torch.compile can work here, and stays eager otherwise."""
    if choice != "auto":
        return choice, f"snn.kernels={choice}"
    if str(precision) not in ("32", "32-true"):
        # bf16-mixed CIFAR runs trained with compiled kernels ended elsewhere than eager ones
        # (benchmarks/README.md), unexplained so far: auto keeps eager training there
        return "eager", f"auto: {precision} training; compiled kernels are only chosen for float32 (32-true)"
    if steps < AUTO_COMPILE_STEPS:
        return "eager", f"auto: {steps} training steps < {AUTO_COMPILE_STEPS}, not worth compiling"
    missing = compile_unavailable(device_type) or compile_fails(device_type)
    if missing:
        return "eager", f"auto: {missing}"
    return "compile", f"auto: {steps} training steps; the quantizer through torch.compile (same values)"


def compile_fails(device_type: str) -> str:
    """'' when the compiled quantizer builds and runs here (forward and backward on a small
    tensor, the compilation training would do anyway), else the error's first line: a compiler
    without Python's headers, say, must not end a long run at its first step."""
    z = torch.linspace(-3, 3, 2 * 3 * 4 * 4, device=device_type).reshape(2, 3, 4, 4).requires_grad_()
    threshold = torch.tensor(2.0, device=device_type, requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # the failure is reported as auto's reason instead
        pqa(z, threshold, 4, -1, 4, "compile").sum().backward()
    failed = [failures[name] for name in ("pqa_forward", "pqa_backward") if name in failures]
    return f"torch.compile failed here ({failed[0]})"[:300] if failed else ""


# The compiled kernels see every tensor as one flat, dense run of memory ([N], or [steps, N] for
# the neuron): one graph whatever the rank, layout (channels_last, a ViT's transposed views) or
# size, so models with many activation shapes do not run into torch.compile's recompile limit.
def _dense_order(t: torch.Tensor) -> list[int] | None:
    """The dimension order in which `t` is one dense block (a permuted contiguous tensor), or None."""
    order = sorted(range(t.dim()), key=lambda d: -t.stride(d))
    return order if t.permute(order).is_contiguous() else None


def _flat(t: torch.Tensor, order: list[int], lead: int = 0) -> torch.Tensor:
    """`t` read in `order`, as [N] (lead=0) or [t.shape[0], N] (lead=1): a view when dense in that order."""
    t = t.permute(order)
    return t.reshape(*t.shape[:lead], -1).detach()   # detached last: no `_base` for the compiler to guard on


def _unflat(flat: torch.Tensor, shape, order: list[int]) -> torch.Tensor:
    """The inverse of _flat: the values back in `shape`, laid out as the input was."""
    return flat.view([shape[d] for d in order]).permute(sorted(range(len(order)), key=order.__getitem__))


def _compiled_call(name: str, eager_fn, *args):
    """The compiled kernel `name` on `args`; if compiling or running it fails, a warning and the
    eager kernel from then on (same arithmetic, so the same values), not a failed run."""
    fn = _compiled.get(name)
    if fn is None:
        # emulate_precision_casts: round every intermediate to the input's dtype, as eager ops do
        # (inductor otherwise keeps bfloat16/float16 intermediates in float32: other bits)
        fn = _compiled[name] = torch.compile(_COMPILABLE[name], dynamic=True, fullgraph=True,
                                             options={"emulate_precision_casts": True})
    if name not in failures:
        try:
            return fn(*args)
        except Exception as err:  # noqa: BLE001 (inductor raises many kinds: compiler, linker, limits)
            first = next((line for line in str(err).splitlines() if line.strip()), "")
            failures[name] = f"{type(err).__name__}: {first[:200]}"
            warnings.warn(f"the compiled {name} kernel failed ({failures[name]}); "
                          "using the eager kernel, which computes the same values")
    return eager_fn(*args)


failures: dict[str, str] = {}   # kernel name -> why its compiled form failed (it then runs eager)


def _pqa_forward(z, theta, lo: int, hi: int, backend: str):
    order = None if backend == "eager" else _dense_order(z)
    if order is None:
        return _pqa_forward_eager(z, theta, lo, hi)
    out = _compiled_call("pqa_forward", _pqa_forward_eager, _flat(z, order), theta.detach(), lo, hi)
    return _unflat(out, z.shape, order)


def _pqa_backward(g, z, theta, lo: int, hi: int, backend: str):
    """(dz, the per-element dθ flat in memory order: only ever summed). The compiled kernel only
    when g and z share one dense layout: the eager g·(...) would otherwise be laid out (and so
    summed, for λ) in an order of TensorIterator's choosing, and λ's gradient must keep its bits."""
    order = None if backend == "eager" or g.stride() != z.stride() else _dense_order(z)
    if order is None:
        return _pqa_backward_eager(g, z, theta, lo, hi)
    grad_z, per_element = _compiled_call("pqa_backward", _pqa_backward_eager,
                                         _flat(g, order), _flat(z, order), theta.detach(), lo, hi)
    return _unflat(grad_z, z.shape, order), per_element


# ---------------------------------------------------------------- the quantizer (PQA)
_select = torch.ops.aten.hardtanh_backward   # (g, x, a, b) -> g where a < x < b, else 0: one pass


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
    # k is an integer: lo <= k <= hi is lo - 1 < k < hi + 1, hardtanh_backward's test (one pass;
    # torch.where with a mask costs several times more on CPU). A NaN z passes g (the formula: 0).
    grad_z = _select(g, k, lo - 1, hi + 1)
    w = _select.grad_input(q, k, lo - 1, hi + 1, grad_input=q)   # where(inside, q, 0), in place
    per_element = k.clamp_(lo, hi).sub_(w)
    # laid out as g·(...) would be (g decides where the layouts differ), so its sum for λ runs in
    # the formula's order
    grad_theta = per_element.mul_(g) if g.stride() == per_element.stride() else torch.mul(g, per_element)
    return grad_z, grad_theta


def _residual_path_exact(dtype: torch.dtype, lo: int, hi: int) -> bool:
    """Whether `_pqa_train_forward_eager` may save r = k_clamped - [inside]·q alone: its
    magnitude is >= 1 exactly outside the clamp (|k_clamped| >= 1 needs lo <= -1) and < 1
    inside, where |k - q| <= 1/2 plus the rounding of q + 1/2 (below 1/4 while the largest
    level is under a quarter of 1/eps: 2^22 in float32, 32 in bfloat16)."""
    return lo <= -1 and (max(-lo, hi) + 1) * torch.finfo(dtype).eps <= 0.25


def _pqa_train_forward_eager(z, theta, lo: int, hi: int):
    """The forward of training in 7 passes, with what the backward needs in one tensor:
    (PQA(z), r) with r = k_clamped - [inside]·z/θ, the per-element dPQA/dθ (the formula's
    `kc - where(inside, q, 0)`, same operations), whose magnitude also tells inside (< 1)
    from outside (>= 1; see `_residual_path_exact`). Saving r instead of z keeps the
    memory of the graph the same (z itself is then freed)."""
    q = z / theta
    k = torch.add(q, 0.5).floor_()
    w = _select.grad_input(q, k, lo - 1, hi + 1, grad_input=q)   # where(inside, q, 0), in place
    kc = k.clamp_(lo, hi)
    r = torch.sub(kc, w, out=w)
    return kc.mul_(theta), r


class PQAFunction(torch.autograd.Function):
    """PQA(z) = clamp(floor(z/θ + 1/2), lo, hi)·θ with θ = λ/L.

    Eager backend, signed levels (lo <= -1, the PMSM case): the forward also computes the
    per-element dPQA/dθ, r, and saves only it; the backward is then two passes (dz = g
    where |r| < 1; g·r summed for λ), against a dozen when recomputing from z. Otherwise
    (QCFS's lo = 0, levels too large for the dtype, the compiled backend) it saves z and
    recomputes in the backward."""

    @staticmethod
    def forward(ctx, z, threshold, levels: int, lo: int, hi: int, backend: str):
        theta = threshold / levels
        ctx.levels, ctx.lo, ctx.hi, ctx.backend = levels, lo, hi, backend
        ctx.residual = backend == "eager" and _residual_path_exact(z.dtype, lo, hi)
        if ctx.residual:
            out, r = _pqa_train_forward_eager(z, theta, lo, hi)
            ctx.save_for_backward(r)
            return out
        ctx.save_for_backward(z, theta)
        return _pqa_forward(z, theta, lo, hi, backend)

    @staticmethod
    def backward(ctx, grad):
        if ctx.residual:
            (r,) = ctx.saved_tensors
            # one buffer for both: g·r (summed for λ), then dz = g where |r| < 1 written over it
            buffer = torch.mul(grad, r)
            grad_threshold = buffer.sum() / ctx.levels if ctx.needs_input_grad[1] else None
            grad_z = _select.grad_input(grad, r, -1, 1, grad_input=buffer) if ctx.needs_input_grad[0] else None
            return grad_z, grad_threshold, None, None, None, None
        z, theta = ctx.saved_tensors
        grad_z, per_element = _pqa_backward(grad, z, theta, ctx.lo, ctx.hi, ctx.backend)
        grad_threshold = per_element.sum() / ctx.levels if ctx.needs_input_grad[1] else None
        return (grad_z if ctx.needs_input_grad[0] else None), grad_threshold, None, None, None, None


def pqa(z: torch.Tensor, threshold: torch.Tensor, levels: int, lo: int, hi: int,
        backend: str = "eager") -> torch.Tensor:
    if torch.is_grad_enabled() and (z.requires_grad or threshold.requires_grad):
        return PQAFunction.apply(z, threshold, levels, lo, hi, backend)
    return _pqa_forward(z, threshold / levels, lo, hi, backend)


def clip(z: torch.Tensor, threshold: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
    """clamp(z, αλ, βλ): PQA without rounding (the full-precision warm-up, optim.quantize_from_epoch),
    one select each way. λ gets no gradient here: without rounding, clipping only ever costs, so its
    gradient pushes λ up without bound (measured: λ from 2 to 45,000 within an epoch)."""
    lam = float(threshold)
    return torch.nn.functional.hardtanh(z, alpha * lam, beta * lam)


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


def _aif_steps_eager(currents, membrane, theta, lo: int, hi: int, init: float, keep: bool = True):
    """All in place but two buffers: the call's z/θ (its slot t then holds the spikes of step t)
    and the membrane, which the neuron owns and which carries over from call to call.
    keep=False: the membrane after the call's last step is not needed (the end of a
    simulation), so that step fires in place, as the quantizer does, and None is returned."""
    spikes = currents / theta                 # one allocation for the whole call
    last = spikes.shape[0] - 1
    for t in range(spikes.shape[0]):
        s = spikes[t]
        if t == last and not keep:
            s.add_(init if membrane is None else membrane)   # z/θ + 1/2 (PQA's arithmetic) or z/θ + m
            s.floor_().clamp_(lo, hi)
            return spikes, None
        if membrane is None:
            membrane = s + init               # z/θ + 1/2: the quantizer's arithmetic
        else:
            membrane.add_(s)                  # m + z/θ (addition commutes exactly)
        torch.floor(membrane, out=s).clamp_(lo, hi)
        membrane.sub_(s)
    return spikes, membrane


def aif_steps(currents, membrane, theta, lo: int, hi: int, init: float, keep: bool = True,
              backend: str = "eager"):
    order = None if backend == "eager" else _dense_order(currents)
    if order is None or order[0] != 0 or (membrane is not None and membrane.stride() != currents[0].stride()):
        return _aif_steps_eager(currents, membrane, theta, lo, hi, init, keep)
    flat_membrane = None if membrane is None else _flat(membrane, [d - 1 for d in order[1:]])
    spikes, membrane = _compiled_call("aif_steps", _aif_steps_eager, _flat(currents, order, lead=1),
                                      flat_membrane, theta.detach(), lo, hi, init)
    spikes = _unflat(spikes, currents.shape, order)
    return spikes, (_unflat(membrane, currents.shape[1:], [d - 1 for d in order[1:]]) if keep else None)


_COMPILABLE = {"pqa_forward": _pqa_forward_pure, "pqa_backward": _pqa_backward_pure,
               "aif_steps": _aif_steps_pure}
