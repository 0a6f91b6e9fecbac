"""LightningDataModules: CIFAR-10/100, ImageNet and a synthetic set for quick runs.

One module per source (cifar, imagenet, synthetic); `common` holds the data root,
errors, value checks and the held-out validation split; `gpu` the on-device CIFAR
path (data.on_device). Every module takes ``data_dir`` from config (default: env
var ``PMSM_DATA_DIR``, else ``./data``) and raises :class:`DatasetNotFoundError`
with a one-line how-to when its files are absent. Nothing is downloaded unless
``download=True``. Validation is never the test set: with ``val_fraction > 0`` it is
a seeded class-balanced hold-out of the training set, else there is none
(``has_validation`` is False).
"""
from __future__ import annotations

import inspect

import lightning as L

from pmsm_exp.data.cifar import CIFAR10DataModule, CIFAR100DataModule, read_batch, read_cifar
from pmsm_exp.data.common import (
    DATA_DIR_ENV, HOWTO_DIR, ArrayDataset, DatasetFileError, DatasetNotFoundError, default_data_dir, fingerprint,
    stratified_split)
from pmsm_exp.data.gpu import DeviceLoader, augment_batch, normalise_batch
from pmsm_exp.data.imagenet import ImageNetDataModule
from pmsm_exp.data.synthetic import SyntheticDataModule, make_synthetic
from pmsm_exp.data.transforms import Cutout
from pmsm_exp.errors import UserError

DATAMODULES: dict[str, type[L.LightningDataModule]] = {
    "cifar10": CIFAR10DataModule,
    "cifar100": CIFAR100DataModule,
    "synthetic": SyntheticDataModule,
    "imagenet": ImageNetDataModule,
}


def create_datamodule(name: str, **kwargs) -> L.LightningDataModule:
    """Build a data module by registry name, e.g. ``create_datamodule("cifar10", batch_size=128)``.
    An unknown name or setting is a one-line UserError naming it (before any file is read)."""
    cls = DATAMODULES.get(name.lower()) if isinstance(name, str) else None
    if cls is None:
        raise UserError(f"data.name: got {name!r}; allowed: {', '.join(sorted(DATAMODULES))}")
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    if unknown := sorted(set(kwargs) - accepted):
        raise UserError(f"data.{unknown[0]}: got {kwargs[unknown[0]]!r}; data={name} has no such setting "
                        f"(allowed: {', '.join(sorted(accepted))})")
    return cls(**kwargs)


__all__ = [
    "DATAMODULES", "DATA_DIR_ENV", "HOWTO_DIR", "ArrayDataset", "CIFAR10DataModule", "CIFAR100DataModule",
    "Cutout", "DatasetFileError", "DatasetNotFoundError", "DeviceLoader", "ImageNetDataModule",
    "SyntheticDataModule", "augment_batch", "create_datamodule", "default_data_dir", "fingerprint", "make_synthetic",
    "normalise_batch", "read_batch", "read_cifar", "stratified_split",
]
