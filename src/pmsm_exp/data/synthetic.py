"""A generated, file-free classification set for quick starts and tests."""
from __future__ import annotations

from typing import Optional

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

from pmsm_exp.data.common import (check_optional_count, check_subset_size,
    ValidationMixin, check_fraction, check_int, checked_split, make_loader, resolve_pin,
    train_loader)
from pmsm_exp.errors import UserError


def make_synthetic(n: int, templates: Tensor, noise: float, shift: int,
                   generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Balanced labels; sample = class template (unit std), randomly shifted, plus noise."""
    k = len(templates)
    y = (torch.arange(n) % k)[torch.randperm(n, generator=generator)]
    x = templates[y].clone()
    if shift:
        dy, dx = torch.randint(-shift, shift + 1, (2, n), generator=generator)
        for i in range(n):
            x[i] = torch.roll(x[i], (int(dy[i]), int(dx[i])), dims=(-2, -1))
    x += noise * torch.randn(x.shape, generator=generator)
    return x / (1.0 + noise**2) ** 0.5, y  # unit variance, like normalised images


class SyntheticDataModule(ValidationMixin, L.LightningDataModule):
    """Generated, file-free classification set for quick starts and tests.

    Each class has a fixed smooth random template (low-res noise, upsampled);
    a sample is its template shifted by up to ``shift`` px plus gaussian noise
    of std ``noise``, rescaled to unit variance. Deterministic given ``seed``; separable, so a small CNN
    learns it in a few epochs. ``val_fraction > 0`` holds out a class-balanced part of
    the training samples for validation.
    """

    def __init__(self, num_classes: int = 10, image_size: int = 32, channels: int = 3,
                 train_size: int = 512, test_size: int = 256, batch_size: int = 64,
                 seed: int = 0, noise: float = 2.0, shift: int = 2, num_workers: int = 0,
                 pin_memory: Optional[bool] = None, val_fraction: float = 0.0,
                 train_subset: Optional[int] = None, test_subset: Optional[int] = None):
        super().__init__()
        self.save_hyperparameters()
        self.num_classes = check_int("data.num_classes", num_classes, 1)
        self.image_size = check_int("data.image_size", image_size, 1)
        self.channels = check_int("data.channels", channels, 1)
        self.train_size = check_int("data.train_size", train_size, 1)
        self.test_size = check_int("data.test_size", test_size, 1)
        self.batch_size = check_int("data.batch_size", batch_size, 1)
        self.seed = check_int("data.seed", seed, 0)
        if isinstance(noise, bool) or not isinstance(noise, (int, float)) or not noise >= 0:
            raise UserError(f"data.noise: got {noise!r}; allowed: a number >= 0 (the noise's std)")
        self.noise = float(noise)
        self.shift = check_int("data.shift", shift, 0, " (pixels)")
        self.num_workers = check_int("data.num_workers", num_workers, 0)
        self.val_fraction = check_fraction("data.val_fraction", val_fraction)
        self.pin_memory = resolve_pin(pin_memory)
        # the first N generated samples, as data.train_subset/test_subset take from a real set (BUDGET=smoke)
        self.train_subset = check_optional_count("data.train_subset", train_subset)
        self.test_subset = check_optional_count("data.test_subset", test_subset)
        self.train_set = self.val_set = self.test_set = None

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.channels, self.image_size, self.image_size)

    def templates(self, g: torch.Generator) -> Tensor:
        coarse = torch.randn(self.num_classes, self.channels, 4, 4, generator=g)
        t = torch.nn.functional.interpolate(coarse, size=self.image_size, mode="bilinear",
                                            align_corners=False)
        return t / t.std(dim=(1, 2, 3), keepdim=True)  # unit contrast per class

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_set is not None:
            return
        g = torch.Generator().manual_seed(self.seed)
        t = self.templates(g)
        x, y = make_synthetic(self.train_size, t, self.noise, self.shift, g)
        test_x, test_y = make_synthetic(self.test_size, t, self.noise, self.shift, g)
        n = check_subset_size("data.train_subset", self.train_subset, len(x), "the synthetic training set")
        m = check_subset_size("data.test_subset", self.test_subset, len(test_x), "the synthetic test set")
        x, y = x[:n], y[:n]
        self.test_set = TensorDataset(test_x[:m], test_y[:m])
        if self.has_validation:  # held out of the training samples, never the test set
            tr, va = checked_split(y, self.val_fraction, self.seed)
            self.val_set = TensorDataset(x[va], y[va])
            x, y = x[tr], y[tr]
        self.train_set = TensorDataset(x, y)

    def train_dataloader(self) -> DataLoader:
        return train_loader(self, self.train_set)

    def test_dataloader(self) -> DataLoader:
        return make_loader(self.test_set, self.batch_size, self.num_workers, self.pin_memory)
