"""The GPU data path (``data.on_device=true``): the uint8 training set stays on the
trainer's device as one tensor and each batch is shuffled, cropped, flipped, cut
out and normalised there, so the accelerator never waits for loader workers.

`augment_batch` is a pure function of (uint8 batch, generator): the same code runs on
CPU tensors, which is how the tests check it. It does what the CPU path's
torchvision pipeline does (RandomCrop(32, padding=4), RandomHorizontalFlip,
ConvertImageDtype + Normalize, Cutout, Resize), batched, with its own random draws.
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from pmsm_exp.data.order import mix_seed


def random_crop_flip(x: Tensor, generator: torch.Generator, pad: int = 4, flip: bool = True) -> Tensor:
    """Per image: zero-pad by `pad`, take an H x W window at a random offset in
    [0, 2*pad]^2, mirror it left-right with probability 1/2. No per-image loop."""
    n, c, h, w = x.shape
    dev = x.device
    xp = F.pad(x, (pad, pad, pad, pad)) if pad else x  # zeros, as torchvision's padding=4
    oy = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=dev)
    ox = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=dev)
    rows = oy[:, None] + torch.arange(h, device=dev)              # (n, h)
    cols = ox[:, None] + torch.arange(w, device=dev)              # (n, w)
    if flip:  # a mirrored crop reads the same window's columns right to left
        mirrored = torch.randint(0, 2, (n,), generator=generator, device=dev).bool()
        cols = torch.where(mirrored[:, None], cols.flip(1), cols)
    # Two gathers (rows, then columns) keep N x C x H x W and beat advanced indexing.
    out = torch.gather(xp, 2, rows[:, None, :, None].expand(n, c, h, xp.shape[-1]))
    return torch.gather(out, 3, cols[:, None, None, :].expand(n, c, h, w))


def cutout_mask(n: int, h: int, w: int, size: int, generator: torch.Generator,
                device: torch.device) -> Tensor:
    """(n, 1, h, w) bool: one `size` x `size` square per image, centred on a random
    pixel and clipped at the border (DeVries & Taylor, as data.transforms.Cutout)."""
    cy = torch.randint(0, h, (n,), generator=generator, device=device)
    cx = torch.randint(0, w, (n,), generator=generator, device=device)
    y0, x0 = (cy - size // 2)[:, None], (cx - size // 2)[:, None]
    ys, xs = torch.arange(h, device=device), torch.arange(w, device=device)
    in_y = (ys >= y0) & (ys < y0 + size)                        # (n, h)
    in_x = (xs >= x0) & (xs < x0 + size)                        # (n, w)
    return (in_y[:, :, None] & in_x[:, None, :])[:, None]


def normalise_batch(x: Tensor, mean: Sequence[float] | Tensor, std: Sequence[float] | Tensor,
                    size: Optional[int] = None) -> Tensor:
    """uint8 -> float32 in [0, 1] -> (x - mean) / std, then bicubic resize to `size`:
    the same arithmetic as the eval transform (ConvertImageDtype, Normalize, Resize)."""
    mean = torch.as_tensor(mean, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    std = torch.as_tensor(std, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    out = (x.to(torch.float32) / 255).sub_(mean).div_(std)
    return resize_batch(out, size)


def resize_batch(x: Tensor, size: Optional[int]) -> Tensor:
    if size is None or size == x.shape[-1] == x.shape[-2]:
        return x
    return F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=True)


def augment_batch(x: Tensor, generator: torch.Generator, mean: Sequence[float] | Tensor,
                  std: Sequence[float] | Tensor, pad: int = 4, flip: bool = True, cutout: int = 0,
                  size: Optional[int] = None) -> Tensor:
    """A training batch: crop with padding, flip, normalise, Cutout (after normalising,
    so the hole is the mean colour, as on the CPU path; in pre-resize pixels), resize."""
    if x.dtype != torch.uint8 or x.dim() != 4:
        raise ValueError(f"augment_batch expects a uint8 N x C x H x W batch, got {x.dtype} {tuple(x.shape)}")
    if pad or flip:
        x = random_crop_flip(x, generator, pad, flip)
    out = normalise_batch(x, mean, std)
    if cutout > 0:
        n, _, h, w = out.shape
        out = out.masked_fill(cutout_mask(n, h, w, cutout, generator, out.device), 0.0)
    return resize_batch(out, size)


class DeviceLoader:
    """Batches of a uint8 image tensor that lives on one device.

    Each pass (epoch) draws a permutation shared by all ranks from (seed, epoch),
    keeps this rank's share (padded by wrapping to equal length, as
    DistributedSampler does), and applies `transform(uint8 batch, generator)` with a
    generator seeded from (seed, epoch, rank). Everything stays on the device.
    `epoch_fn` gives the epoch (the trainer's, so a resumed run draws what an
    uninterrupted one would); without it, passes are counted. A pass that starts inside
    an epoch (`skip_fn(len(self))` > 0, a mid-epoch resume) draws the skipped batches'
    augmentations too, so the rest get the same ones as in the uninterrupted pass.
    With `views` > 1 each batch holds its images that many times, each copy with its own
    augmentation draws (batch augmentation); the number of batches per pass is unchanged.
    """

    def __init__(self, images: Tensor, labels: Tensor, batch_size: int,
                 transform: Callable[[Tensor, torch.Generator], Tensor], shuffle: bool = True,
                 seed: int = 0, rank: int = 0, world_size: int = 1,
                 epoch_fn: Optional[Callable[[], int]] = None,
                 skip_fn: Optional[Callable[[int], int]] = None, views: int = 1):
        assert len(images) == len(labels) and images.device == labels.device and views >= 1
        self.images, self.labels, self.batch_size = images, labels, int(batch_size)
        self.transform, self.shuffle, self.seed = transform, shuffle, int(seed)
        self.rank, self.world_size, self.epoch_fn = int(rank), int(world_size), epoch_fn
        self.skip_fn, self.views = skip_fn, int(views)
        self._passes = 0

    @property
    def per_rank(self) -> int:
        return math.ceil(len(self.images) / self.world_size)

    def __len__(self) -> int:
        return math.ceil(self.per_rank / self.batch_size)

    def indices(self, epoch: int) -> Tensor:
        n, dev = len(self.images), self.images.device
        if self.shuffle:
            g = torch.Generator(device=dev).manual_seed(mix_seed(self.seed, epoch))
            idx = torch.randperm(n, generator=g, device=dev)
        else:
            idx = torch.arange(n, device=dev)
        if self.world_size > 1:
            total = self.per_rank * self.world_size
            idx = torch.cat([idx, idx[: total - n]])[self.rank::self.world_size]
        return idx

    def __iter__(self):
        epoch = self.epoch_fn() if self.epoch_fn is not None else self._passes
        self._passes += 1
        idx = self.indices(epoch)
        g = torch.Generator(device=self.images.device).manual_seed(mix_seed(self.seed, epoch, self.rank + 1))
        skip = self.skip_fn(len(self)) if self.skip_fn is not None else 0
        for k, i in enumerate(range(0, len(idx), self.batch_size)):
            b = idx[i:i + self.batch_size].repeat(self.views)
            images = self.transform(self.images[b], g)   # a skipped batch still takes its draws from g
            if k >= skip:
                yield images, self.labels[b]
