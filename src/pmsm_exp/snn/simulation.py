"""Run an SNN for T timesteps in multi-step form.

Timestep 1 runs as its own call with exactly the QANN's batch shape, so every
layer (conv algorithm choice included) computes exactly what the QANN
computes; timesteps 2..T then run in chunks with `steps * N` as the batch.
By default (`chunk=None` or "auto") the chunk is chosen after step 1 from the
batch and the largest spiking layer, so that one call's activations stay near
`AUTO_CHUNK_ELEMENTS` (all of 2..T in one call thrashes the cache at large T).
The last call tells the neurons that their membranes are not needed afterwards
(`keep_membrane`), so at T = 1 a neuron does exactly the quantizer's in-place work.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from pmsm_exp.snn.neurons import multistep_modules, spiking_neurons

ENCODINGS = ("static", "first")  # image at every step (CNNs) / at step 1 only, zeros after (ViT)
READOUTS = ("mean", "sum")
# elements of the largest spiking layer's input per call (all steps of the call): measured on
# ResNet-20 (2-core CPU, batch 32, T=16): per-step time flat up to about this size (chunk 4), up 30-50% at 8-15
AUTO_CHUNK_ELEMENTS = 2 ** 21


@dataclass
class SimulationResult:
    outputs: torch.Tensor                   # [T, N, C]: the network's answer at t = 1..T
    spike_counts: dict[str, torch.Tensor]   # layer -> [T]: sum of |s| over the batch at each step
    spike_events: dict[str, torch.Tensor]   # layer -> [T]: non-zero outputs over the batch at each step
    neurons: dict[str, int]                 # layer -> neurons per sample
    batch_size: int

    @property
    def timesteps(self) -> int:
        return self.outputs.shape[0]


def check_settings(timesteps: int, encoding: str, readout: str, chunk: int | str | None = None) -> None:
    if isinstance(timesteps, bool) or not isinstance(timesteps, int) or timesteps < 1:
        raise ValueError(f"timesteps must be a positive integer, got {timesteps!r}")
    if encoding not in ENCODINGS:
        raise ValueError(f"unknown encoding {encoding!r}; valid: {', '.join(ENCODINGS)}")
    if readout not in READOUTS:
        raise ValueError(f"unknown readout {readout!r}; valid: {', '.join(READOUTS)}")
    if chunk not in (None, "auto") and (isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1):
        raise ValueError(f"chunk: got {chunk!r}; allowed: a positive integer (timesteps per call "
                        "after t=1) or auto (chosen from the batch and layer sizes)")


def auto_chunk(snn: nn.Module, remaining: int) -> int:
    """Steps per call after t=1, from the largest spiking layer seen at t=1."""
    per_step = max((m.batch_size * m.neurons_per_sample for m in spiking_neurons(snn).values()), default=0)
    return max(1, min(remaining, AUTO_CHUNK_ELEMENTS // max(1, per_step)))


def reset_snn(snn: nn.Module) -> None:
    for m in multistep_modules(snn).values():
        m.reset_state()


@torch.no_grad()
def simulate(snn: nn.Module, x: torch.Tensor, timesteps: int, encoding: str = "static",
             readout: str = "mean", chunk: int | str | None = None, record: bool = True) -> SimulationResult:
    """Present `x` for `timesteps` steps; readout 'mean' averages the output layer over
    steps 1..t (rate/PSP readout), 'sum' accumulates it (ViT's difference outputs).
    `chunk` bounds how many steps share one call; None or "auto" chooses it (see above).
    `record=False` skips the spike counts (SimulationResult's count dicts are then empty)."""
    check_settings(timesteps, encoding, readout, chunk)
    snn.eval()
    reset_snn(snn)
    stateful = multistep_modules(snn).values()
    neurons = spiking_neurons(snn)
    for m in neurons.values():
        m.record = record
    outputs, done = [], 0
    try:
        while done < timesteps:
            if done == 1 and chunk in (None, "auto"):
                chunk = auto_chunk(snn, timesteps - 1)
            steps = 1 if done == 0 else min(chunk, timesteps - done)
            for m in stateful:
                m.steps = steps
            for m in neurons.values():   # the last call need not keep the membranes
                m.keep_membrane = done + steps < timesteps
            if done == 0:
                inputs = x
            elif encoding == "static":
                inputs = x.unsqueeze(0).expand(steps, *x.shape).reshape(steps * x.shape[0], *x.shape[1:])
            else:
                inputs = x.new_zeros(steps * x.shape[0], *x.shape[1:])
            y = snn(inputs)
            outputs.append(y.reshape(steps, x.shape[0], *y.shape[1:]))
            done += steps
    finally:
        for m in neurons.values():
            m.keep_membrane = True
    outputs = torch.cat(outputs).cumsum(0)
    if readout == "mean":
        t = torch.arange(1, timesteps + 1, device=outputs.device, dtype=outputs.dtype)
        outputs = outputs / t.reshape(-1, *[1] * (outputs.dim() - 1))
    return SimulationResult(
        outputs=outputs,
        spike_counts={n: m.spike_counts for n, m in neurons.items()} if record else {},
        spike_events={n: m.spike_events for n, m in neurons.items()} if record else {},
        neurons={n: m.neurons_per_sample for n, m in neurons.items()},
        batch_size=x.shape[0],
    )
