"""ILSVRC-2012 in ImageFolder layout (``<data_dir>/{train,val}/<wnid>/*.JPEG``).

Its official ``val/`` folder is what the paper (and the field) report as the test
set: here it is ``test_set``. Validation, when ``val_fraction > 0``, is a seeded
class-balanced hold-out of ``train/`` with the eval transform.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Callable, Optional

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from pmsm_exp.data.common import (
    HOWTO_DIR, DatasetFileError, DatasetNotFoundError, ValidationMixin, check_fraction, check_int, check_optional_count,
    check_probability, check_subset_size, checked_split, default_data_dir, make_loader, resolve_pin,
    train_loader)
from pmsm_exp.errors import UserError


def spread(n: Optional[int], total: int) -> list[int]:
    """Evenly spaced indices: ImageFolder sorts by class, so 'first N' would be one class."""
    if n is None or n >= total:
        return list(range(total))
    return np.linspace(0, total - 1, int(n)).round().astype(int).tolist()


def _with_transform(folder, transform: Callable):
    """The same ImageFolder (file list shared, not rescanned) with another transform."""
    from torchvision.datasets.vision import StandardTransform
    other = copy.copy(folder)
    other.transform, other.transforms = transform, StandardTransform(transform, folder.target_transform)
    return other


class ImageNetDataModule(ValidationMixin, L.LightningDataModule):
    """ILSVRC-2012 in ImageFolder layout, ``<data_dir>/{train,val}/<wnid>/*.JPEG``.

    Train uses timm's DeiT-style recipe (RandAugment, random erasing, bicubic);
    eval resizes to image_size / 0.875 and centre-crops.

    ``repeated_aug > 1`` uses timm's RepeatAugSampler. It shards by itself, so
    under DDP the caller must build the Trainer with
    ``use_distributed_sampler=False`` (else Lightning replaces the sampler);
    world size and rank are then taken from the attached trainer (1/0 without one).
    """

    def __init__(self, data_dir: Optional[str] = None, batch_size: int = 128, num_workers: int = 8,
                 image_size: int = 224, auto_augment: Optional[str] = "rand-m9-mstd0.5-inc1",
                 re_prob: float = 0.25, repeated_aug: int = 1, train_subset: Optional[int] = None,
                 test_subset: Optional[int] = None, num_classes: Optional[int] = None,
                 crop_pct: float = 0.875, pin_memory: Optional[bool] = None,
                 val_fraction: float = 0.0, seed: int = 42):
        super().__init__()
        self.save_hyperparameters()
        self.data_dir = Path(data_dir or default_data_dir())
        self.batch_size = check_int("data.batch_size", batch_size, 1)
        self.num_workers = check_int("data.num_workers", num_workers, 0)
        self.image_size = check_int("data.image_size", image_size, 1)
        self.auto_augment = auto_augment
        self.re_prob = check_probability("data.re_prob", re_prob)
        self.repeated_aug = check_int("data.repeated_aug", repeated_aug, 1, " (1 = off)")
        self.train_subset = check_optional_count("data.train_subset", train_subset)
        self.test_subset = check_optional_count("data.test_subset", test_subset)
        if isinstance(crop_pct, bool) or not isinstance(crop_pct, (int, float)) or not 0 < crop_pct <= 1:
            raise UserError(f"data.crop_pct: got {crop_pct!r}; allowed: a number in (0, 1]")
        self.crop_pct = float(crop_pct)
        self.val_fraction = check_fraction("data.val_fraction", val_fraction)
        self.seed = check_int("data.seed", seed, 0)
        self._num_classes = None if num_classes is None else check_int("data.num_classes", num_classes, 1)
        self.pin_memory = resolve_pin(pin_memory)
        self.train_set = self.val_set = self.test_set = None

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (3, self.image_size, self.image_size)

    @property
    def num_classes(self) -> int:
        # Models are built before setup(), so count class folders lazily here.
        if self._num_classes is None:
            self._check_dirs()
            self._num_classes = sum(1 for p in (self.data_dir / "train").iterdir() if p.is_dir())
        return self._num_classes

    def _check_dirs(self) -> None:
        for split in ("train", "val"):
            d = self.data_dir / split
            if not d.is_dir() or not any(p.is_dir() for p in d.iterdir()):
                raise DatasetNotFoundError(
                    f"ImageNet not found: expected class folders {d}/<wnid>/*.JPEG ; it cannot be "
                    f"downloaded automatically (download is not supported): get ILSVRC2012 from "
                    f"https://image-net.org/ and arrange it into train/<wnid>/ and val/<wnid>/ "
                    f"under {self.data_dir}/, {HOWTO_DIR}")

    def prepare_data(self) -> None:
        self._check_dirs()

    def train_transform(self) -> Callable:
        from timm.data import create_transform
        return create_transform(self.image_size, is_training=True, auto_augment=self.auto_augment,
                                re_prob=self.re_prob, re_mode="pixel", re_count=1,
                                interpolation="bicubic")

    def eval_transform(self) -> Callable:
        from timm.data import create_transform
        return create_transform(self.image_size, is_training=False, interpolation="bicubic",
                                crop_pct=self.crop_pct)

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_set is not None:
            return
        from torchvision.datasets import ImageFolder
        self._check_dirs()
        train = ImageFolder(str(self.data_dir / "train"), transform=self.train_transform())
        test = ImageFolder(str(self.data_dir / "val"), transform=self.eval_transform())
        if train.classes != test.classes:
            raise DatasetFileError(f"{self.data_dir}: train/ and val/ hold different class folders "
                                   f"({len(train.classes)} vs {len(test.classes)}); they must match")
        if self._num_classes is None:
            self._num_classes = len(train.classes)
        n = check_subset_size("data.train_subset", self.train_subset, len(train), "ImageNet's train/")
        m = check_subset_size("data.test_subset", self.test_subset, len(test), "ImageNet's val/ (the test set)")
        idx = torch.tensor(spread(n, len(train)))
        self.test_set = Subset(test, spread(m, len(test)))
        if self.has_validation:  # held out of train/, with the eval transform; never val/ (the test set)
            tr, va = checked_split(torch.tensor(train.targets)[idx], self.val_fraction, self.seed)
            self.val_set = Subset(_with_transform(train, self.eval_transform()), idx[va].tolist())
            idx = idx[tr]
        self.train_set = Subset(train, idx.tolist())

    def train_dataloader(self) -> DataLoader:
        return train_loader(self, self.train_set)

    def test_dataloader(self) -> DataLoader:
        return make_loader(self.test_set, self.batch_size, self.num_workers, self.pin_memory)
