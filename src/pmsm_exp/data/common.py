"""What every data module shares: the data root, the errors, value checks, the
held-out validation split, an in-memory uint8 data set and the loaders."""
from __future__ import annotations

import hashlib
import multiprocessing
import os
import sys
from functools import partial
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import BatchSampler, DataLoader, Dataset, Subset, TensorDataset

from pmsm_exp.data.order import EpochSampler, batches_done_this_epoch, current_epoch_fn, mix_seed
from pmsm_exp.errors import UserError

DATA_DIR_ENV = "PMSM_DATA_DIR"
HOWTO_DIR = f"or point {DATA_DIR_ENV} / data.data_dir=... at the folder that holds it"


def default_data_dir() -> str:
    """Data root from the env var PMSM_DATA_DIR, falling back to ./data."""
    return os.environ.get(DATA_DIR_ENV) or "./data"


class DatasetNotFoundError(UserError, FileNotFoundError):
    """A data set's files are not where the data module expects them (one line; a
    UserError, so Hydra prints only the message)."""


class DatasetFileError(UserError):
    """A data set file is there but cannot be read (truncated, corrupt, wrong format)."""


# ---------------------------------------------------------------- value checks
# One line each: "<key>: got <value>; <what is allowed>". Raised by the data
# module constructors (values) and setup (sizes that need the files), before training.

def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def check_int(key: str, value, minimum: int, what: str = "") -> int:
    if not _is_int(value) or value < minimum:
        raise UserError(f"{key}: got {value!r}; allowed: an integer >= {minimum}{what}")
    return int(value)


def check_bool(key: str, value) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise UserError(f"{key}: got {value!r}; allowed: true or false")
    return bool(value)


def check_optional_count(key: str, value) -> Optional[int]:
    """A subset size: null (all) or a positive integer (its upper bound is checked in setup)."""
    if value is None:
        return None
    if not _is_int(value) or value < 1:
        raise UserError(f"{key}: got {value!r}; allowed: a positive integer or null (the whole set)")
    return int(value)


def check_fraction(key: str, value) -> float:
    """A float in [0, 1) (val_fraction)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise UserError(f"{key}: got {value!r}; allowed: a number in [0, 1) "
                        f"(0 = train on the whole training set, no validation)")
    return float(value)


def check_probability(key: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise UserError(f"{key}: got {value!r}; allowed: a number in [0, 1]")
    return float(value)


def check_subset_size(key: str, value: Optional[int], total: int, what: str) -> int:
    """The number of items to keep: all when `value` is None; more than there are is an error."""
    if value is None:
        return total
    if value > total:
        raise UserError(f"{key}: got {value}; {what} has {total} images; allowed: 1..{total} or null (all)")
    return value


# ---------------------------------------------------------------- validation split

def stratified_split(labels: Tensor, fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """(train indices, validation indices) of a seeded, class-balanced hold-out.

    Each class gives its share of ``round(fraction * n)`` held-out items in
    proportion to its size (largest remainder, ties broken at random), so each
    class's count is within 1 of ``fraction * n_class`` scaled to the total, and on a
    balanced set the per-class counts differ by at most 1. Both index tensors are sorted.
    """
    labels = torch.as_tensor(labels).long().flatten()
    n = len(labels)
    n_val = int(round(fraction * n))
    g = torch.Generator().manual_seed(int(seed))
    classes, counts = labels.unique(return_counts=True)
    exact = counts.double() * n_val / n
    quota = exact.floor().long()
    rest = n_val - int(quota.sum())
    if rest:  # largest remainders first; a random key breaks ties so no class is favoured
        key = (exact - quota.double()) + torch.rand(len(classes), generator=g, dtype=torch.float64) * 1e-9
        quota[key.argsort(descending=True)[:rest]] += 1
    val = []
    for c, q in zip(classes.tolist(), quota.tolist()):
        members = (labels == c).nonzero().flatten()
        val.append(members[torch.randperm(len(members), generator=g)[:q]])
    val_idx = torch.cat(val).sort().values if val else torch.empty(0, dtype=torch.long)
    keep = torch.ones(n, dtype=torch.bool)
    keep[val_idx] = False
    return keep.nonzero().flatten(), val_idx


def checked_split(labels: Tensor, fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """stratified_split, refusing a fraction that holds out no image or leaves none to train on."""
    tr, va = stratified_split(labels, fraction, seed)
    if len(va) == 0 or len(tr) == 0:
        raise UserError(f"data.val_fraction: got {fraction}; of {len(labels)} training images that holds out "
                        f"{len(va)} and trains on {len(tr)}; allowed: a fraction that leaves both non-empty, "
                        f"or 0 (no validation)")
    return tr, va


# ---------------------------------------------------------------- data sets and loaders

class ArrayDataset(Dataset):
    """In-memory images (uint8, N x C x H x W) with labels; converted per item.

    Keeping uint8 costs a quarter of float32 memory, and tensor transforms on
    uint8 skip the PIL round trip.
    """

    def __init__(self, images: Tensor, labels: Tensor, transform: Optional[Callable] = None):
        assert len(images) == len(labels)
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        x = self.images[i]
        return (self.transform(x) if self.transform else x), int(self.labels[i])


def make_loader(ds: Dataset, batch_size: int, num_workers: int, pin_memory: bool,
                shuffle: bool = False, sampler=None, generator: Optional[torch.Generator] = None,
                batch_sampler=None) -> DataLoader:
    batching = ({"batch_sampler": batch_sampler} if batch_sampler is not None else
                {"batch_size": batch_size, "shuffle": shuffle and sampler is None, "sampler": sampler})
    return DataLoader(ds, **batching, num_workers=num_workers, pin_memory=pin_memory, generator=generator,
                      persistent_workers=num_workers > 0, multiprocessing_context=worker_context(num_workers))


def worker_context(num_workers: int):
    """How loader workers are started: Python's default, except inside a joblib (loky) worker,
    e.g. a job of Hydra's joblib launcher, whose process-wide default is loky's own start method,
    which cannot start DataLoader workers (AttributeError: 'Process' object has no attribute 'env')."""
    if num_workers == 0:
        return None
    method = multiprocessing.get_start_method(allow_none=True)
    if method in (None, "fork", "spawn", "forkserver"):
        return None
    return multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")


def resolve_pin(pin_memory: Optional[bool]) -> bool:
    # Pinning only helps (and only works without warnings) with a GPU.
    return torch.cuda.is_available() if pin_memory is None else bool(pin_memory)


def train_loader(dm, dataset: Dataset) -> DataLoader:
    """Shuffled training loader. On one process the order is a permutation per (data seed, epoch)
    that a mid-epoch resume continues (data/order.py); the loader's own generator draws its base
    seed, so creating it leaves the process RNG (the augmentations' draws) alone. Under DDP
    Lightning's DistributedSampler shuffles per (seed, epoch) instead. With `repeated_aug > 1`,
    timm's repeated-augmentation sampler (DeiT/SpikeZIP-TF); it brings its own sharding, so the
    Trainer must run with use_distributed_sampler=False. With `views > 1` (one process) each
    batch holds its images that many times, each copy augmented on its own (batch augmentation)."""
    replicas, rank = world_and_rank(dm)
    views = getattr(dm, "views", 1)
    if views > 1 and replicas > 1:
        raise UserError(f"data.views: got {views} with {replicas} processes on the loader path; allowed there: 1 "
                        f"(set data.on_device=true, whose loader repeats the views on every rank)")
    trainer = getattr(dm, "trainer", None)
    sampler = generator = None
    if getattr(dm, "repeated_aug", 1) > 1:
        from timm.data.distributed_sampler import RepeatAugSampler
        sampler = RepeatAugSampler(dataset, num_replicas=replicas, rank=rank, shuffle=True,
                                   num_repeats=dm.repeated_aug)
    elif replicas == 1:
        sampler = EpochSampler(len(dataset), dm.batch_size, dm.seed, epoch_fn=current_epoch_fn(trainer),
                               skip_fn=partial(batches_done_this_epoch, trainer))
        generator = torch.Generator().manual_seed(mix_seed(dm.seed))
    batches = ViewsBatchSampler(sampler, dm.batch_size, views) if views > 1 else None
    return make_loader(dataset, dm.batch_size, dm.num_workers, dm.pin_memory, shuffle=True, sampler=sampler,
                       generator=generator, batch_sampler=batches)


class ViewsBatchSampler(BatchSampler):
    """`batch_size` indices of `sampler` per batch, the batch then repeated `views` times: the
    data set's transform draws each copy's augmentation on its own."""

    def __init__(self, sampler, batch_size: int, views: int):
        super().__init__(sampler, batch_size, drop_last=False)
        self.views = int(views)

    def __iter__(self):
        for batch in super().__iter__():
            yield batch * self.views


def world_and_rank(dm) -> tuple[int, int]:
    """(world size, global rank) of the trainer the data module is attached to; (1, 0) without one."""
    trainer = getattr(dm, "trainer", None)
    return (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)


class ValidationMixin:
    """`has_validation` and a val loader that is empty without a held-out split.

    With val_fraction == 0 (the paper's setting: train on the whole training set)
    there is no validation set at all; the test set is never used in its place.
    """

    val_fraction: float
    val_set: Optional[Dataset]

    @property
    def has_validation(self) -> bool:
        return self.val_fraction > 0

    def val_dataloader(self):
        if not self.has_validation:
            return []  # no validation: callers disable Lightning's val loop (limit_val_batches=0)
        return make_loader(self.val_set, self.batch_size, self.num_workers, self.pin_memory)


def fingerprint(dataset) -> str:
    """A short hash (16 hex digits of SHA-256) of a data set's images and labels, so two runs can
    be shown to have used the same copy: the pixels of in-memory sets (CIFAR, synthetic), the
    files and labels of folder sets (ImageNet: reading every image would take longer than the run)."""
    h = hashlib.sha256()
    indices = None
    while isinstance(dataset, Subset):
        indices = [dataset.indices[i] for i in indices] if indices is not None else list(dataset.indices)
        dataset = dataset.dataset
    if isinstance(dataset, ArrayDataset):
        tensors = (dataset.images, dataset.labels)
    elif isinstance(dataset, TensorDataset):
        tensors = dataset.tensors
    elif hasattr(dataset, "samples"):   # torchvision's ImageFolder: (path, label) pairs
        root = Path(getattr(dataset, "root", "."))
        picked = dataset.samples if indices is None else [dataset.samples[i] for i in indices]
        h.update(repr([(Path(p).relative_to(root).as_posix(), y) for p, y in picked]).encode())
        return h.hexdigest()[:16]
    else:
        raise TypeError(f"no fingerprint for a {type(dataset).__name__}")
    for t in tensors:
        t = t if indices is None else t[torch.as_tensor(indices)]
        h.update(str((t.dtype, tuple(t.shape))).encode())
        h.update(t.contiguous().cpu().numpy().tobytes())
    return h.hexdigest()[:16]
