"""LightningDataModules: CIFAR-10/100, ImageNet and a synthetic set for quick runs.

Every module takes ``data_dir`` from config (default: env var ``PMSM_DATA_DIR``,
else ``./data``) and raises :class:`DatasetNotFoundError` with a one-line how-to
when its files are absent. Nothing is downloaded unless ``download=True``.
"""
from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Callable, Optional, Sequence

import lightning as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset
from torchvision import transforms as T

DATA_DIR_ENV = "PMSM_DATA_DIR"
HOWTO_DIR = f"or point {DATA_DIR_ENV} / data.data_dir=... at the folder that holds it"


def default_data_dir() -> str:
    """Data root from the env var PMSM_DATA_DIR, falling back to ./data."""
    return os.environ.get(DATA_DIR_ENV) or "./data"


class DatasetNotFoundError(FileNotFoundError):
    """A data set's files are not where the data module expects them."""


# ---------------------------------------------------------------- helpers

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


class Cutout:
    """Zero one random ``size`` x ``size`` square (DeVries & Taylor, 2017).

    The centre may lie near the border, so the hole is clipped there, as in
    the original. Applied after normalisation, so 0 means "mean colour".
    """

    def __init__(self, size: int):
        self.size = int(size)

    def __call__(self, img: Tensor) -> Tensor:
        h, w = img.shape[-2:]
        cy, cx = int(torch.randint(h, ())), int(torch.randint(w, ()))
        half = self.size // 2
        y0, y1 = max(cy - half, 0), min(cy - half + self.size, h)
        x0, x1 = max(cx - half, 0), min(cx - half + self.size, w)
        img = img.clone()
        img[..., y0:y1, x0:x1] = 0
        return img

    def __repr__(self) -> str:
        return f"Cutout(size={self.size})"


def _loader(ds: Dataset, batch_size: int, num_workers: int, pin_memory: bool,
            shuffle: bool = False, sampler=None) -> DataLoader:
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle and sampler is None,
                      sampler=sampler, num_workers=num_workers, pin_memory=pin_memory,
                      persistent_workers=num_workers > 0)


def _resolve_pin(pin_memory: Optional[bool]) -> bool:
    # Pinning only helps (and only works without warnings) with a GPU.
    return torch.cuda.is_available() if pin_memory is None else bool(pin_memory)


def _first(n: Optional[int], total: int) -> int:
    return total if n is None else min(int(n), total)


# ---------------------------------------------------------------- CIFAR

def _read_cifar(folder: Path, files: Sequence[str], label_key: str) -> tuple[Tensor, Tensor]:
    """Read torchvision's pickled batches ourselves: skips its md5 check."""
    xs, ys = [], []
    for name in files:
        with open(folder / name, "rb") as f:
            d = pickle.load(f, encoding="latin1")
        xs.append(np.asarray(d["data"], dtype=np.uint8))
        ys.extend(d[label_key])
    # Rows are R, G, B planes of 32 x 32, i.e. already C x H x W.
    x = np.concatenate(xs).reshape(-1, 3, 32, 32)
    return torch.from_numpy(x), torch.as_tensor(ys, dtype=torch.long)


class _CIFARDataModule(L.LightningDataModule):
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
                 pin_memory: Optional[bool] = None, re_prob: float = 0.0, repeated_aug: int = 1):
        super().__init__()
        self.save_hyperparameters()
        self.re_prob, self.repeated_aug = re_prob, repeated_aug  # the ViT recipe (paper Table 5)
        self.data_dir = Path(data_dir or default_data_dir())
        self.batch_size, self.num_workers = batch_size, num_workers
        self.download, self.augment, self.autoaugment = download, augment, autoaugment
        self.cutout, self.image_size = cutout, image_size
        self.train_subset, self.test_subset = train_subset, test_subset
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        self.val_fraction, self.seed = val_fraction, seed
        self.pin_memory = _resolve_pin(pin_memory)
        self.train_set = self.val_set = self.test_set = None

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
            ops += [T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()]
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

    # -- setup
    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_set is not None:
            return
        self._check_files()
        x, y = _read_cifar(self.root, self.train_files, self.label_key)
        n = _first(self.train_subset, len(x))
        x, y = x[:n], y[:n]
        xt, yt = _read_cifar(self.root, self.test_files, self.label_key)
        m = _first(self.test_subset, len(xt))
        self.test_set = ArrayDataset(xt[:m], yt[:m], self.eval_transform())

        n_val = int(round(self.val_fraction * n))
        if n_val:
            # Seeded split so that val is the same images across runs.
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed))
            tr, va = perm[n_val:], perm[:n_val]
            self.train_set = ArrayDataset(x[tr], y[tr], self.train_transform())
            self.val_set = ArrayDataset(x[va], y[va], self.eval_transform())
        else:
            self.train_set = ArrayDataset(x, y, self.train_transform())
            self.val_set = self.test_set

    def train_dataloader(self) -> DataLoader:
        return _train_loader(self, self.train_set)

    def val_dataloader(self) -> DataLoader:
        return _loader(self.val_set, self.batch_size, self.num_workers, self.pin_memory)

    def test_dataloader(self) -> DataLoader:
        return _loader(self.test_set, self.batch_size, self.num_workers, self.pin_memory)


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


# ---------------------------------------------------------------- synthetic

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


class SyntheticDataModule(L.LightningDataModule):
    """Generated, file-free classification set for quick starts and tests.

    Each class has a fixed smooth random template (low-res noise, upsampled);
    a sample is its template shifted by up to ``shift`` px plus gaussian noise
    of std ``noise``, rescaled to unit variance. Deterministic given ``seed``; separable, so a small CNN
    learns it in a few epochs.
    """

    def __init__(self, num_classes: int = 10, image_size: int = 32, channels: int = 3,
                 train_size: int = 512, test_size: int = 256, batch_size: int = 64,
                 seed: int = 0, noise: float = 2.0, shift: int = 2, num_workers: int = 0,
                 pin_memory: Optional[bool] = None):
        super().__init__()
        self.save_hyperparameters()
        self.num_classes, self.image_size, self.channels = num_classes, image_size, channels
        self.train_size, self.test_size, self.batch_size = train_size, test_size, batch_size
        self.seed, self.noise, self.shift, self.num_workers = seed, noise, shift, num_workers
        self.pin_memory = _resolve_pin(pin_memory)
        self.train_set = self.test_set = None

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
        self.train_set = TensorDataset(*make_synthetic(self.train_size, t, self.noise, self.shift, g))
        self.test_set = TensorDataset(*make_synthetic(self.test_size, t, self.noise, self.shift, g))

    def train_dataloader(self) -> DataLoader:
        return _loader(self.train_set, self.batch_size, self.num_workers, self.pin_memory, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return _loader(self.test_set, self.batch_size, self.num_workers, self.pin_memory)

    test_dataloader = val_dataloader


# ---------------------------------------------------------------- ImageNet

def _spread(n: Optional[int], total: int) -> list[int]:
    """Evenly spaced indices: ImageFolder sorts by class, so 'first N' would be one class."""
    if n is None or n >= total:
        return list(range(total))
    return np.linspace(0, total - 1, int(n)).round().astype(int).tolist()


class ImageNetDataModule(L.LightningDataModule):
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
                 crop_pct: float = 0.875, pin_memory: Optional[bool] = None):
        super().__init__()
        self.save_hyperparameters()
        self.data_dir = Path(data_dir or default_data_dir())
        self.batch_size, self.num_workers, self.image_size = batch_size, num_workers, image_size
        self.auto_augment, self.re_prob, self.repeated_aug = auto_augment, re_prob, repeated_aug
        self.train_subset, self.test_subset, self.crop_pct = train_subset, test_subset, crop_pct
        self._num_classes = num_classes
        self.pin_memory = _resolve_pin(pin_memory)
        self.train_set = self.val_set = None

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
        val = ImageFolder(str(self.data_dir / "val"), transform=self.eval_transform())
        if train.classes != val.classes:
            raise ValueError(f"ImageNet train/ and val/ class folders differ under {self.data_dir}")
        if self._num_classes is None:
            self._num_classes = len(train.classes)
        self.train_set = Subset(train, _spread(self.train_subset, len(train)))
        self.val_set = Subset(val, _spread(self.test_subset, len(val)))

    def train_dataloader(self) -> DataLoader:
        return _train_loader(self, self.train_set)

    def val_dataloader(self) -> DataLoader:
        return _loader(self.val_set, self.batch_size, self.num_workers, self.pin_memory)

    test_dataloader = val_dataloader


def _train_loader(dm: L.LightningDataModule, dataset: Dataset) -> DataLoader:
    """Shuffled training loader; with `repeated_aug > 1`, timm's repeated-augmentation sampler
    (DeiT/SpikeZIP-TF). Under DDP it brings its own sharding, so the Trainer must run with
    use_distributed_sampler=False."""
    sampler = None
    if dm.repeated_aug > 1:
        from timm.data.distributed_sampler import RepeatAugSampler
        trainer = getattr(dm, "trainer", None)
        replicas, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        sampler = RepeatAugSampler(dataset, num_replicas=replicas, rank=rank, shuffle=True,
                                   num_repeats=dm.repeated_aug)
    return _loader(dataset, dm.batch_size, dm.num_workers, dm.pin_memory, shuffle=True, sampler=sampler)


# ---------------------------------------------------------------- registry

DATAMODULES: dict[str, type[L.LightningDataModule]] = {
    "cifar10": CIFAR10DataModule,
    "cifar100": CIFAR100DataModule,
    "synthetic": SyntheticDataModule,
    "imagenet": ImageNetDataModule,
}


def create_datamodule(name: str, **kwargs) -> L.LightningDataModule:
    """Build a data module by registry name, e.g. ``create_datamodule("cifar10", batch_size=128)``."""
    try:
        cls = DATAMODULES[name.lower()]
    except (KeyError, AttributeError):
        raise ValueError(f"unknown dataset {name!r}; valid: {', '.join(sorted(DATAMODULES))}") from None
    return cls(**kwargs)
