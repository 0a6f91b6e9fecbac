"""The training order: a permutation per (seed, epoch), and where a resumed epoch picks up.

A run resumed from a checkpoint saved inside an epoch (SIGTERM, SIGUSR1, preemption) must
train that epoch's remaining batches, in the order and with the augmentations the
uninterrupted run would have used. A plain DataLoader cannot: its order is drawn again
from the process RNG, which the checkpoint restored as of the save, not of the epoch's
start. So the order is a function of (seed, epoch), and each pass skips the batches
Lightning's restored loop already counts as trained.
"""
from __future__ import annotations

import math
from typing import Callable, Iterator, Optional

import torch
from torch.utils.data import Sampler


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from a few ints (seed, epoch, rank); deterministic across processes."""
    s = 0
    for p in parts:
        s = (s * 1_000_003 + int(p) + 1) % (2**63)
    return s


def current_epoch_fn(trainer) -> Optional[Callable[[], int]]:
    """The trainer's epoch, read when a pass starts (so a resumed run draws what an uninterrupted
    one would); None without a trainer (the loaders then count their passes)."""
    return (lambda: trainer.current_epoch) if trainer is not None else None


def batches_done_this_epoch(trainer, batches_per_epoch: int) -> int:
    """How many of the current epoch's batches were trained before a mid-epoch resume; 0 at
    an epoch's start. Lightning restores its loop counters from the checkpoint before the
    epoch's first batch is drawn; `processed` counts a batch whose step finished, whether the
    save came from on_train_batch_end (SIGUSR1) or after it (SIGTERM)."""
    if trainer is None:
        return 0
    done = trainer.fit_loop.epoch_loop.batch_progress.current.processed
    return done if 0 < done < batches_per_epoch else 0


class EpochSampler(Sampler[int]):
    """A permutation of range(n) drawn from (seed, epoch); a pass that starts inside an epoch
    (`skip_fn(batches per epoch)` > 0) leaves out the indices of the batches already trained.
    `epoch_fn` gives the epoch (the trainer's); without it, passes are counted."""

    def __init__(self, n: int, batch_size: int, seed: int = 0,
                 epoch_fn: Optional[Callable[[], int]] = None,
                 skip_fn: Optional[Callable[[int], int]] = None):
        self.n, self.batch_size, self.seed = int(n), int(batch_size), int(seed)
        self.epoch_fn, self.skip_fn = epoch_fn, skip_fn
        self._passes = 0

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        epoch = self.epoch_fn() if self.epoch_fn is not None else self._passes
        self._passes += 1
        order = torch.randperm(self.n, generator=torch.Generator().manual_seed(mix_seed(self.seed, epoch)))
        skip = self.skip_fn(math.ceil(self.n / self.batch_size)) if self.skip_fn is not None else 0
        return iter(order[skip * self.batch_size:].tolist())
