"""Timing shared by the benchmark scripts: cases measured in interleaved rounds, so a slow
spell of the machine falls on every case alike."""
from __future__ import annotations

import time
from typing import Callable

import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def interleaved(cases: dict[str, Callable[[], None]], rounds: int, device: torch.device,
                on_round: Callable[[int], None] | None = None) -> dict[str, list[float]]:
    """Seconds per call of each case, one call of every case per round; `on_round(r)` after round r
    (1-based), e.g. to show progress."""
    times = {name: [] for name in cases}
    for r in range(rounds):
        for name, fn in cases.items():
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - t0)
        if on_round is not None:
            on_round(r + 1)
    return times
