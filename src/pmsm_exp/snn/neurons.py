"""The one spiking neuron family, in multi-step form.

A `MultiStepModule` receives `steps` timesteps flattened into the batch
dimension (`[steps * N, ...]`), so that every stateless layer around it
(conv, BatchNorm, pooling, residual adds, linear) processes all timesteps in
one call; only stateful modules loop over time. State persists across calls
until `reset_state()`, so a simulation can be split into several calls.

`SpikingNeuron` is the AIF neuron of PMSM (several signed spikes per step) and,
configured with at most one positive spike of size λ, the IF neuron of QCFS.
"""
from __future__ import annotations

import functools

import torch
from torch import nn

from pmsm_exp.quant import kernels


@functools.lru_cache(maxsize=None)
def _int8_ones(size: int, device: torch.device) -> torch.Tensor:
    """[size, 8] int8 ones: the matrix that sums a layer's spikes (torch._int_mm needs 8 columns)."""
    return torch.ones(size, 8, dtype=torch.int8, device=device)


class MultiStepModule(nn.Module):
    """Base for modules that keep state over timesteps (neurons, spiking attention)."""

    def __init__(self):
        super().__init__()
        self.steps = 1

    def reset_state(self) -> None:
        raise NotImplementedError

    def split_time(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] % self.steps:
            raise ValueError(f"{type(self).__name__}: batch of {x.shape[0]} is not a multiple of steps={self.steps}")
        return x.reshape(self.steps, x.shape[0] // self.steps, *x.shape[1:])


class SpikingNeuron(MultiStepModule):
    """Integrate-and-fire neuron with multi-spike, signed output and soft reset.

    The membrane is kept in units of θ and starts at `init_membrane` (1/2), so
    the first step computes floor(z/θ + 1/2) exactly as `PQA` does:
        u(t) = u(t-1) + z(t)/θ,  s(t) = clamp(floor(u(t)), -max_neg, max_pos),
        u(t) <- u(t) - s(t),     output o(t) = s(t)·θ
    (membrane potential v = u·θ). Each step's |s| summed over the batch is
    recorded as the spike count; non-zero outputs as spike events (one
    reduction per call, see `_count`).
    """

    def __init__(self, theta: torch.Tensor | float, max_pos: int, max_neg: int = 0, init_membrane: float = 0.5,
                 total_bounds: tuple[int, int] | None = None, levels: int = 1):
        super().__init__()
        if max_pos < 0 or max_neg < 0 or max_pos + max_neg == 0:
            raise ValueError(f"spike bounds must be >= 0 and not both 0, got max_pos={max_pos}, max_neg={max_neg}")
        # ST-BIF+ (SpikeZIP-TF): the running sum of spikes (the "spike tracer") stays in these bounds
        self.total_bounds = total_bounds
        theta = theta.detach().clone() if torch.is_tensor(theta) else torch.tensor(float(theta))
        # θ = threshold / levels, divided at forward time in the current dtype exactly as PQA's
        # λ/L is: a cast of both models after conversion (64-true, bf16-true) keeps t=1 exact
        self.register_buffer("threshold", theta)
        self.levels = int(levels)
        self.max_pos = int(max_pos)
        self.max_neg = int(max_neg)
        self.init_membrane = float(init_membrane)
        self.reset_state()

    @property
    def theta(self) -> torch.Tensor:
        return self.threshold / self.levels if self.levels != 1 else self.threshold

    def reset_state(self) -> None:
        self.membrane: torch.Tensor | None = None
        self.tracer: torch.Tensor | None = None
        self._counts: list[torch.Tensor] = []    # per call: [steps] sums of |s| over the batch
        self._events: list[torch.Tensor] = []    # per call: [steps] non-zero outputs over the batch
        self.steps_done = 0
        self.batch_size = 0
        self.neurons_per_sample = 0

    # `record = False` skips the spike bookkeeping (e.g. a throughput benchmark); the counts
    # are then empty and `steps_done` still advances
    record = True
    # the eager or compiled form of the same arithmetic (quant/kernels.py; `use_kernels` sets it)
    kernels = "eager"
    # `keep_membrane = False` (set by `simulate` for its last call): the membrane after the call's
    # last step is dropped, and that step fires in place, exactly as the quantizer computes
    keep_membrane = True

    @property
    def spike_counts(self) -> torch.Tensor:
        """[steps so far]: Σ|s| over the batch at each step (float64, exact integers)."""
        return torch.cat(self._counts) if self._counts else torch.zeros(0, dtype=torch.float64)

    @property
    def spike_events(self) -> torch.Tensor:
        """[steps so far]: number of non-zero outputs over the batch at each step."""
        return torch.cat(self._events) if self._events else torch.zeros(0, dtype=torch.int64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        currents = self.split_time(x)
        if self.membrane is None:
            if self.steps_done:
                raise RuntimeError(f"{type(self).__name__}: the membrane was dropped after the last step of a "
                                   "simulation (keep_membrane=False); call reset_state() before stepping again")
            self.batch_size = currents.shape[1]
            self.neurons_per_sample = currents[0, 0].numel()
        theta = self.theta
        if self.total_bounds is None:   # AIF / IF: the fused kernel (quant/kernels.py)
            spikes, self.membrane = kernels.aif_steps(currents, self.membrane, theta, -self.max_neg, self.max_pos,
                                                      self.init_membrane, self.keep_membrane, self.kernels)
        else:
            spikes = self._stbif_steps(currents)
        self.steps_done += currents.shape[0]
        if self.record:
            self._count(spikes)
        return spikes.mul_(theta).reshape(x.shape)

    def _count(self, spikes: torch.Tensor) -> None:
        """One pass per call (not per step): Σ|s| and the non-zeros, per step and sample, then
        summed over the batch in float64. On CPU, when the levels fit: in int8 (a quarter of the
        memory traffic), summed by an int8 matrix product with int32 accumulation (exact);
        otherwise in float32 (exact integers while below 2^24) or float64."""
        per_sample = spikes.reshape(spikes.shape[0] * spikes.shape[1], -1)
        steps, size = spikes.shape[0], per_sample.shape[-1]
        largest = max(self.max_pos, self.max_neg)
        if (spikes.device.type == "cpu" and spikes.dtype in (torch.float32, torch.float64) and largest <= 127
                and size % 8 == 0 and size * largest < 2 ** 31
                and hasattr(torch, "_int_mm")):   # a private op: the float path if a release drops it
            magnitude = per_sample.to(torch.int8).abs_()
            ones = _int8_ones(size, spikes.device)
            self._counts.append(torch._int_mm(magnitude, ones)[:, 0].reshape(steps, -1).sum(1, dtype=torch.float64))
            events = torch._int_mm(magnitude.clamp_(max=1), ones)[:, 0]
            self._events.append(events.reshape(steps, -1).sum(1, dtype=torch.int64))
            return
        exact_in_float32 = size * largest < 2 ** 24
        magnitude = (per_sample.abs() if exact_in_float32 and spikes.dtype == torch.float32
                     else per_sample.abs().double() if spikes.dtype != torch.float64 else per_sample.abs())
        self._counts.append(magnitude.sum(-1).reshape(steps, -1).sum(1, dtype=torch.float64))
        self._events.append(magnitude.clamp_(max=1).sum(-1).reshape(steps, -1).sum(1, dtype=torch.float64)
                            .to(torch.int64))

    def _stbif_steps(self, currents: torch.Tensor) -> torch.Tensor:
        if self.membrane is None:
            self.membrane = torch.full_like(currents[0], self.init_membrane)
        spikes = []
        for current in currents:
            u = self.membrane + current / self.theta
            s = self._within_total(torch.clamp(torch.floor(u), -self.max_neg, self.max_pos))
            self.membrane = u - s
            spikes.append(s)
        return torch.stack(spikes)

    def _within_total(self, s: torch.Tensor) -> torch.Tensor:
        tracer = torch.zeros_like(s) if self.tracer is None else self.tracer
        lo, hi = self.total_bounds
        s = torch.clamp(s, lo - tracer, hi - tracer)
        self.tracer = tracer + s
        return s

    def extra_repr(self) -> str:
        bounds = f", total_bounds={self.total_bounds}" if self.total_bounds else ""
        return (f"theta={self.theta.item():.4g}, max_pos={self.max_pos}, max_neg={self.max_neg}, "
                f"init_membrane={self.init_membrane}{bounds}")


def aif_neuron(step_size: torch.Tensor, min_level: int, max_level: int, levels: int = 1) -> SpikingNeuron:
    """AIF neuron that is lossless for a PQA with θ = λ/L and levels in [αL, βL]
    (θ = step_size / levels: pass λ and L to divide at forward time)."""
    return SpikingNeuron(step_size, max_pos=max_level, max_neg=-min_level, init_membrane=0.5, levels=levels)


def aif_bounded_neuron(step_size: torch.Tensor, min_level: int, max_level: int, levels: int = 1) -> SpikingNeuron:
    """AIF whose spike total, not only each step's count, stays in [αL, βL] (ST-BIF+'s tracer rule
    with AIF's multi-spike cap). Step 1 is AIF's; afterwards input clipped away at step 1 never
    fires, which a network that sees its input once (the ViT) needs to stay at the QANN over T."""
    return SpikingNeuron(step_size, max_pos=max_level, max_neg=-min_level, init_membrane=0.5,
                         total_bounds=(min_level, max_level), levels=levels)


def if_neuron(threshold: torch.Tensor) -> SpikingNeuron:
    """QCFS's IF neuron: threshold λ, at most one positive spike per step, v(0) = λ/2."""
    return SpikingNeuron(threshold, max_pos=1, max_neg=0, init_membrane=0.5)


def stbif_neuron(step_size: torch.Tensor, min_level: int, max_level: int, levels: int = 1) -> SpikingNeuron:
    """SpikeZIP-TF's ST-BIF+ neuron: one signed spike of size θ = λ/L per step, its spike
    tracer held in [αL, βL]; it reaches the quantized value after up to max(|αL|, βL) steps."""
    # a negative spike is allowed even for unsigned levels: it takes back an earlier positive one
    return SpikingNeuron(step_size, max_pos=1, max_neg=1, init_membrane=0.5, total_bounds=(min_level, max_level),
                         levels=levels)


def multistep_modules(model: nn.Module) -> dict[str, MultiStepModule]:
    return {name: m for name, m in model.named_modules() if isinstance(m, MultiStepModule)}


def spiking_neurons(model: nn.Module) -> dict[str, SpikingNeuron]:
    return {name: m for name, m in model.named_modules() if isinstance(m, SpikingNeuron)}
