"""CIFAR-10 and CIFAR-100 from torchvision's pickled batches, held in memory as uint8.

Train: crop with padding `crop_pad` (4, the standard) and flip (optionally AutoAugment, Cutout, random
erasing, resize for ViTs) per image in loader workers, or, with
``on_device=True``, per batch on the trainer's device (see data.gpu); ``on_device="auto"``
chooses the device path when the trainer runs on a GPU and the augmentation is one it does.
Validation, when ``val_fraction > 0``: a seeded class-balanced hold-out of the
training set with the eval transform; otherwise there is none.
"""
from __future__ import annotations

import pickle
from functools import partial
from pathlib import Path
from typing import Callable, Optional, Sequence

import lightning as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader
from torchvision import transforms as T

from pmsm_exp.data.common import (
    HOWTO_DIR, ArrayDataset, DatasetFileError, DatasetNotFoundError, ValidationMixin, check_bool,
    check_fraction, check_int, check_optional_count, check_probability, check_subset_size, checked_split,
    default_data_dir, make_loader, resolve_pin, train_loader, world_and_rank)
from pmsm_exp.data.gpu import DeviceLoader, augment_batch
from pmsm_exp.data.order import batches_done_this_epoch, current_epoch_fn
from pmsm_exp.data.transforms import Cutout
from pmsm_exp.errors import UserError

# What a CIFAR batch pickle may refer to: numpy arrays (numpy 1 and 2 module
# names) and the bytes codec of Python 2 pickles. Anything else is refused
# unrun, so a crafted "data file" cannot execute code on load.
_PICKLE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
}


class _BatchUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"it refers to {module}.{name}, which a CIFAR batch never does")
        return super().find_class(module, name)


def _why(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:120]}" if text else type(err).__name__


def read_batch(path: Path, label_key: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 rows N x 3072, int labels N) from one pickled batch; a file that is
    truncated, not a pickle, or not a CIFAR batch raises DatasetFileError naming it."""
    try:
        with open(path, "rb") as f:
            d = _BatchUnpickler(f, encoding="latin1").load()
    except Exception as err:  # truncated (EOFError, UnpicklingError), text, refused global, ...
        raise DatasetFileError(f"{path}: not a readable CIFAR batch file ({_why(err)}); "
                               f"replace it with the original from the data set's archive") from None
    if not isinstance(d, dict) or "data" not in d or label_key not in d:
        got = sorted(map(str, d)) if isinstance(d, dict) else type(d).__name__
        raise DatasetFileError(f"{path}: got a pickle holding {got}; expected a CIFAR batch dict "
                               f"with 'data' and '{label_key}'")
    data, labels = np.asarray(d["data"]), np.asarray(d[label_key])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DatasetFileError(f"{path}: 'data' is {data.dtype} {data.shape}; expected uint8 N x 3072 "
                               f"(3 planes of 32 x 32)")
    if labels.shape != (len(data),) or not np.issubdtype(labels.dtype, np.integer) or (
            len(labels) and (labels.min() < 0 or labels.max() >= num_classes)):
        raise DatasetFileError(f"{path}: '{label_key}' is {labels.dtype} {labels.shape}; expected "
                               f"{len(data)} integer labels in 0..{num_classes - 1}")
    return data, labels


def read_cifar(folder: Path, files: Sequence[str], label_key: str, num_classes: int) -> tuple[Tensor, Tensor]:
    """Read torchvision's pickled batches ourselves: skips its md5 check."""
    xs, ys = zip(*(read_batch(folder / name, label_key, num_classes) for name in files))
    # Rows are R, G, B planes of 32 x 32, i.e. already C x H x W.
    x = np.concatenate(xs).reshape(-1, 3, 32, 32)
    return torch.from_numpy(x), torch.as_tensor(np.concatenate(ys), dtype=torch.long)


class _CIFARDataModule(ValidationMixin, L.LightningDataModule):
    """Shared CIFAR logic; subclasses fill in the per-dataset constants."""

    name: str
    folder: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    label_key: str
    num_classes: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    url: str

    def __init__(self, data_dir: Optional[str] = None, batch_size: int = 300, num_workers: int = 0,
                 download: bool = False, augment: bool = True, autoaugment: bool = False,
                 cutout: int = 0, image_size: int = 32, train_subset: Optional[int] = None,
                 test_subset: Optional[int] = None, val_fraction: float = 0.0, seed: int = 42,
                 pin_memory: Optional[bool] = None, re_prob: float = 0.0, repeated_aug: int = 1,
                 on_device: bool | str = False, crop_pad: int = 4, views: int = 1):
        super().__init__()
        self.save_hyperparameters()
        self.data_dir = Path(data_dir or default_data_dir())
        self.batch_size = check_int("data.batch_size", batch_size, 1)
        self.num_workers = check_int("data.num_workers", num_workers, 0)
        self.download = check_bool("data.download", download)
        self.augment = check_bool("data.augment", augment)
        self.autoaugment = check_bool("data.autoaugment", autoaugment)
        self.cutout = check_int("data.cutout", cutout, 0, " (0 = off; the hole's side in pixels)")
        self.crop_pad = check_int("data.crop_pad", crop_pad, 0, " (the random crop's zero padding in pixels; "
                                  "0 = no crop, 4 = the standard)")
        self.image_size = check_int("data.image_size", image_size, 1)
        self.train_subset = check_optional_count("data.train_subset", train_subset)
        self.test_subset = check_optional_count("data.test_subset", test_subset)
        self.val_fraction = check_fraction("data.val_fraction", val_fraction)
        self.seed = check_int("data.seed", seed, 0)
        # the ViT recipe (paper Table 5)
        self.re_prob = check_probability("data.re_prob", re_prob)
        self.repeated_aug = check_int("data.repeated_aug", repeated_aug, 1, " (1 = off)")
        self.views = check_int("data.views", views, 1, " (1 = off; each training image this many times per batch)")
        if self.views > 1 and self.repeated_aug > 1:
            raise UserError(f"data.views: got {self.views} with data.repeated_aug={self.repeated_aug}; allowed: "
                            f"one of them above 1")
        if on_device == "auto":
            self.on_device = "auto"
        else:
            try:
                self.on_device = check_bool("data.on_device", on_device)
            except UserError:
                raise UserError(f"data.on_device: got {on_device!r}; allowed: true, false or auto (on the "
                                f"device when the trainer runs on a GPU)") from None
        if self.on_device is True:
            for key, value in self._device_unsupported().items():
                if value:
                    raise UserError(f"{key}: got {value} with data.on_device=true; the on-device path does "
                                    f"crop, flip, Cutout and normalisation only: turn {key} off or set "
                                    f"data.on_device=false")
        self.pin_memory = resolve_pin(pin_memory)
        self.train_set = self.val_set = self.test_set = None
        self._device_train: Optional[tuple] = None

    def _device_unsupported(self) -> dict:
        """The settings the on-device path cannot do, with their values (0/False: off)."""
        return {"data.autoaugment": self.autoaugment, "data.re_prob": self.re_prob,
                "data.repeated_aug": self.repeated_aug if self.repeated_aug > 1 else 0}

    def uses_device_path(self) -> bool:
        """on_device=true, or auto with a trainer on a CUDA device and no setting the device
        path cannot do (then the loader-worker path runs, as on a CPU)."""
        if self.on_device != "auto":
            return self.on_device
        trainer = self.trainer
        on_gpu = trainer is not None and trainer.strategy.root_device.type == "cuda"
        return on_gpu and not any(self._device_unsupported().values())

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (3, self.image_size, self.image_size)

    @property
    def root(self) -> Path:
        return self.data_dir / self.folder

    # -- files
    def _tv_class(self):
        raise NotImplementedError

    def _missing(self) -> list[str]:
        return [f for f in self.train_files + self.test_files if not (self.root / f).is_file()]

    def _check_files(self) -> None:
        if missing := self._missing():
            raise DatasetNotFoundError(
                f"{self.name} not found: expected {', '.join(missing)} in {self.root}/ ; "
                f"set download=true (needs internet), or extract {self.url} "
                f"(torchvision layout) into {self.data_dir}/, {HOWTO_DIR}")

    def prepare_data(self) -> None:
        # Download only when absent: torchvision would reject (and refetch) a re-encoded
        # local copy on its md5 check. Downloads are verified; we then read the files ourselves.
        if self.download and self._missing():
            try:
                for train in (True, False):
                    self._tv_class()(str(self.data_dir), train=train, download=True)
            except OSError as err:  # no network (URLError), refused or broken download
                raise DatasetNotFoundError(
                    f"{self.name} could not be downloaded ({err}); put it at {self.root}/ by hand: "
                    f"extract {self.url} (torchvision layout) into {self.data_dir}/, {HOWTO_DIR}") from None
        self._check_files()

    # -- transforms
    def _to_float(self) -> list:
        return [T.ConvertImageDtype(torch.float32), T.Normalize(self.mean, self.std)]

    def _resize(self) -> list:
        # Upsampling for ViTs (e.g. 224 px as in SpikeZIP-TF); a no-op at 32.
        if self.image_size == 32:
            return []
        return [T.Resize(self.image_size, interpolation=T.InterpolationMode.BICUBIC, antialias=True)]

    def train_transform(self) -> Callable:
        ops = []
        if self.augment:
            ops += [T.RandomCrop(32, padding=self.crop_pad), T.RandomHorizontalFlip()]
        if self.autoaugment:
            ops.append(T.AutoAugment(T.AutoAugmentPolicy.CIFAR10))  # works on uint8 tensors
        ops += self._to_float()
        if self.cutout > 0:
            ops.append(Cutout(self.cutout))  # before resize: `cutout` is in CIFAR pixels
        if self.re_prob > 0:  # SpikeZIP-TF/DeiT: area up to 0.4, aspect from 0.3, random pixels
            ops.append(T.RandomErasing(self.re_prob, scale=(0.02, 0.4), ratio=(0.3, 3.3), value="random"))
        return T.Compose(ops + self._resize())

    def eval_transform(self) -> Callable:
        return T.Compose(self._to_float() + self._resize())

    def device_transform(self) -> Callable:
        """The on-device equivalent of train_transform: f(uint8 batch, generator)."""
        return partial(augment_batch, mean=self.mean, std=self.std, pad=self.crop_pad if self.augment else 0,
                       flip=self.augment, cutout=self.cutout,
                       size=None if self.image_size == 32 else self.image_size)

    # -- setup
    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_set is not None:
            return
        self._check_files()
        x, y = read_cifar(self.root, self.train_files, self.label_key, self.num_classes)
        n = check_subset_size("data.train_subset", self.train_subset, len(x), f"{self.name}'s training set")
        x, y = x[:n], y[:n]
        xt, yt = read_cifar(self.root, self.test_files, self.label_key, self.num_classes)
        m = check_subset_size("data.test_subset", self.test_subset, len(xt), f"{self.name}'s test set")
        self.test_set = ArrayDataset(xt[:m], yt[:m], self.eval_transform())
        if self.has_validation:
            # Seeded and class-balanced, so validation is the same images across runs of a seed;
            # held out of training, and never the test set.
            tr, va = checked_split(y, self.val_fraction, self.seed)
            self.val_set = ArrayDataset(x[va], y[va], self.eval_transform())
            x, y = x[tr], y[tr]
        self.train_set = ArrayDataset(x, y, self.train_transform())

    def train_dataloader(self):
        if self.uses_device_path():
            return self.device_loader()
        return train_loader(self, self.train_set)

    def device_loader(self, device: Optional[torch.device | str] = None) -> DeviceLoader:
        """The training set as one uint8 tensor on `device` (default: the attached trainer's),
        shuffled and augmented there per batch."""
        trainer = self.trainer
        if device is None:
            device = trainer.strategy.root_device if trainer is not None else torch.device("cpu")
        device = torch.device(device)
        if self._device_train is None or self._device_train[0] != device:  # copied once
            self._device_train = (device, self.train_set.images.to(device), self.train_set.labels.to(device))
        _, images, labels = self._device_train
        world, rank = world_and_rank(self)
        return DeviceLoader(images, labels, self.batch_size, self.device_transform(), shuffle=True,
                            seed=self.seed, rank=rank, world_size=world, epoch_fn=current_epoch_fn(trainer),
                            skip_fn=partial(batches_done_this_epoch, trainer), views=self.views)

    def test_dataloader(self) -> DataLoader:
        return make_loader(self.test_set, self.batch_size, self.num_workers, self.pin_memory)


class CIFAR10DataModule(_CIFARDataModule):
    name = "CIFAR-10"
    folder = "cifar-10-batches-py"
    train_files = tuple(f"data_batch_{i}" for i in range(1, 6))
    test_files = ("test_batch",)
    label_key = "labels"
    num_classes = 10
    mean = (0.4914, 0.4822, 0.4465)
    std = (0.2470, 0.2435, 0.2616)
    url = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"

    def _tv_class(self):
        from torchvision.datasets import CIFAR10
        return CIFAR10


class CIFAR100DataModule(_CIFARDataModule):
    name = "CIFAR-100"
    folder = "cifar-100-python"
    train_files = ("train",)
    test_files = ("test",)
    label_key = "fine_labels"
    num_classes = 100
    mean = (0.5071, 0.4865, 0.4409)
    std = (0.2673, 0.2564, 0.2762)
    url = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"

    def _tv_class(self):
        from torchvision.datasets import CIFAR100
        return CIFAR100
