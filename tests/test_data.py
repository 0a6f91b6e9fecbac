"""Data modules: real CIFAR-10 files, generated CIFAR-100 / ImageNet layouts, synthetic set."""
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pmsm_exp.data import (
    DATAMODULES,
    CIFAR10DataModule,
    CIFAR100DataModule,
    Cutout,
    DatasetNotFoundError,
    ImageNetDataModule,
    SyntheticDataModule,
    create_datamodule,
    default_data_dir,
)

# tests/ -> repo root -> its parent, where the shared data lives (or PMSM_SHARED_DATA).
SHARED = Path(os.environ.get("PMSM_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
CIFAR10_DIR = SHARED / "cifar10"
N_TRAIN, N_TEST = 300, 200


def unnormalise(x, dm):
    mean, std = torch.tensor(dm.mean).view(3, 1, 1), torch.tensor(dm.std).view(3, 1, 1)
    return x * std + mean


# ---------------------------------------------------------------- CIFAR-10 (real files)

@pytest.fixture(scope="module")
def cifar10_root(tmp_path_factory):
    script = CIFAR10_DIR / "materialize.py"
    if not (script.is_file() and (CIFAR10_DIR / "cifar10-jpeg-q75.npz").is_file()):
        pytest.skip(f"shared CIFAR-10 not found at {CIFAR10_DIR} (set PMSM_SHARED_DATA)")
    root = tmp_path_factory.mktemp("cifar10")
    subprocess.run([sys.executable, str(script), str(root), "--train", str(N_TRAIN), "--test", str(N_TEST)],
                   check=True, capture_output=True)
    return root


def test_cifar10_real_shapes_labels_normalisation(cifar10_root):
    dm = CIFAR10DataModule(data_dir=str(cifar10_root), batch_size=50)
    dm.prepare_data()
    dm.setup("fit")
    assert dm.num_classes == 10 and dm.image_shape == (3, 32, 32)
    assert len(dm.train_set) == N_TRAIN and len(dm.test_set) == N_TEST
    # val_fraction=0: no validation at all (never the test set in its place)
    assert not dm.has_validation and dm.val_set is None and dm.val_dataloader() == []
    assert dm.train_set.images.dtype == torch.uint8

    x, y = next(iter(dm.test_dataloader()))
    assert x.shape == (50, 3, 32, 32) and x.dtype == torch.float32
    assert y.dtype == torch.long

    xs = torch.stack([dm.test_set[i][0] for i in range(N_TEST)])
    ys = torch.tensor([dm.test_set[i][1] for i in range(N_TEST)])
    assert ys.min() >= 0 and ys.max() <= 9 and len(ys.unique()) == 10
    # Normalised with CIFAR-10 stats: per-channel mean near 0, std near 1.
    assert xs.mean(dim=(0, 2, 3)).abs().max() < 0.2
    assert ((xs.std(dim=(0, 2, 3)) - 1).abs() < 0.2).all()
    # Decoding is exact: un-normalising gives back the uint8 pixels.
    assert torch.allclose(unnormalise(xs[0], dm) * 255, dm.test_set.images[0].float(), atol=1e-3)


def test_cifar10_augmentation_train_only(cifar10_root):
    torch.manual_seed(0)
    dm = CIFAR10DataModule(data_dir=str(cifar10_root))
    dm.setup()
    idx = range(20)
    changed = [not torch.equal(dm.train_set[i][0], dm.train_set[i][0]) for i in idx]
    assert sum(changed) >= 15  # crop+flip: identical twice has probability ~1/160
    assert all(torch.equal(dm.test_set[i][0], dm.test_set[i][0]) for i in idx)

    plain = CIFAR10DataModule(data_dir=str(cifar10_root), augment=False)
    plain.setup()
    assert all(torch.equal(plain.train_set[i][0], plain.train_set[i][0]) for i in idx)


def test_cifar10_subsets_val_split_resize(cifar10_root):
    dm = CIFAR10DataModule(data_dir=str(cifar10_root), train_subset=100, test_subset=40,
                           val_fraction=0.2, image_size=48, autoaugment=True, cutout=8, batch_size=16)
    dm.setup()
    assert len(dm.train_set) == 80 and len(dm.val_set) == 20 and len(dm.test_set) == 40
    assert dm.image_shape == (3, 48, 48)
    # Held-out val is disjoint from train and comes from the first 100 training images.
    full = CIFAR10DataModule(data_dir=str(cifar10_root))
    full.setup()
    first = {bytes(full.train_set.images[i].numpy()) for i in range(100)}
    tr = {bytes(im.numpy()) for im in dm.train_set.images}
    va = {bytes(im.numpy()) for im in dm.val_set.images}
    assert not (tr & va) and (tr | va) <= first
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
        x, _ = next(iter(loader))
        assert x.shape == (16, 3, 48, 48)
    # Same seed, same split.
    again = CIFAR10DataModule(data_dir=str(cifar10_root), train_subset=100, val_fraction=0.2)
    again.setup()
    assert torch.equal(again.val_set.images, dm.val_set.images)


# ---------------------------------------------------------------- CIFAR-100 (generated files)

def write_cifar100(root: Path, n_train=60, n_test=30):
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, n in (("train", n_train), ("test", n_test)):
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        data[0, :1024], data[0, 1024:2048], data[0, 2048:] = 10, 20, 30  # R, G, B planes
        fine = (np.arange(n) * 7 % 100).tolist()
        with open(folder / name, "wb") as f:
            pickle.dump({"data": data, "fine_labels": fine, "coarse_labels": [x // 5 for x in fine],
                         "filenames": [f"{i}.png" for i in range(n)]}, f, protocol=2)
    return root


def test_cifar100_generated_layout(tmp_path):
    dm = CIFAR100DataModule(data_dir=str(write_cifar100(tmp_path)), batch_size=10, augment=False)
    dm.setup()
    assert dm.num_classes == 100 and len(dm.train_set) == 60 and len(dm.test_set) == 30
    x0, y0 = dm.test_set[0]
    assert x0.shape == (3, 32, 32) and y0 == 0
    # Planes land in the right channels, and CIFAR-100 stats are used.
    px = unnormalise(x0, dm) * 255
    assert torch.allclose(px.mean(dim=(1, 2)), torch.tensor([10.0, 20.0, 30.0]), atol=1e-3)
    assert dm.test_set[1][1] == 7 and dm.test_set[15][1] == 5  # fine labels, not coarse
    _, y = next(iter(dm.train_dataloader()))
    assert y.max() < 100


# ---------------------------------------------------------------- ImageNet (generated folders)

def write_imagenet(root: Path, classes=("n01440764", "n01443537", "n01484850"), per_class=4):
    from PIL import Image
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for wnid in classes:
            d = root / split / wnid
            d.mkdir(parents=True)
            for i in range(per_class):
                arr = rng.integers(0, 256, (40, 52, 3), dtype=np.uint8)
                Image.fromarray(arr).save(d / f"{wnid}_{i}.JPEG", quality=90)
    return root


def test_imagenet_generated_layout(tmp_path):
    root = write_imagenet(tmp_path)
    dm = ImageNetDataModule(data_dir=str(root), batch_size=4, num_workers=0, image_size=64)
    assert dm.num_classes == 3  # inferred before setup, from train/
    dm.prepare_data()
    dm.setup()
    # ImageNet's val/ folder is the test set; no held-out validation with val_fraction=0
    assert len(dm.train_set) == 12 and len(dm.test_set) == 12 and not dm.has_validation
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 3, 64, 64) and set(y.tolist()) <= {0, 1, 2}
    xv, yv = next(iter(dm.test_dataloader()))
    assert xv.shape == (4, 3, 64, 64) and dm.image_shape == (3, 64, 64)
    assert torch.equal(dm.test_set[5][0], dm.test_set[5][0])  # eval transform is deterministic

    # Subsets spread over classes; repeated augmentation uses timm's sampler.
    sub = ImageNetDataModule(data_dir=str(root), image_size=32, train_subset=3, test_subset=6,
                             repeated_aug=3, num_workers=0)
    sub.setup()
    assert len(sub.test_set) == 6
    assert {sub.train_set[i][1] for i in range(3)} == {0, 1, 2}
    from timm.data.distributed_sampler import RepeatAugSampler
    assert isinstance(sub.train_dataloader().sampler, RepeatAugSampler)


# ---------------------------------------------------------------- missing data

@pytest.mark.parametrize("name, expected", [
    ("cifar10", "cifar-10-batches-py"),
    ("cifar100", "cifar-100-python"),
    ("imagenet", "train"),
])
def test_missing_dataset_message(tmp_path, name, expected):
    dm = create_datamodule(name, data_dir=str(tmp_path / "nowhere"))
    for step in (dm.prepare_data, dm.setup):
        with pytest.raises(DatasetNotFoundError) as exc:
            step()
        msg = str(exc.value)
        assert isinstance(exc.value, FileNotFoundError)
        assert str(tmp_path / "nowhere" / expected) in msg
        assert "download" in msg and "PMSM_DATA_DIR" in msg and "\n" not in msg


def test_default_data_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("PMSM_DATA_DIR", str(tmp_path))
    assert default_data_dir() == str(tmp_path)
    assert CIFAR10DataModule().data_dir == tmp_path
    monkeypatch.delenv("PMSM_DATA_DIR")
    assert default_data_dir() == "./data"


# ---------------------------------------------------------------- synthetic

def test_synthetic_deterministic_and_separable():
    a, b, c = SyntheticDataModule(seed=3), SyntheticDataModule(seed=3), SyntheticDataModule(seed=4)
    for dm in (a, b, c):
        dm.setup()
    assert torch.equal(a.train_set.tensors[0], b.train_set.tensors[0])
    assert torch.equal(a.test_set.tensors[1], b.test_set.tensors[1])
    assert not torch.equal(a.train_set.tensors[0], c.train_set.tensors[0])

    x, y = a.train_set.tensors
    xt, yt = a.test_set.tensors
    assert x.shape == (512, 3, 32, 32) and xt.shape == (256, 3, 32, 32)
    assert set(y.tolist()) == set(range(10))
    # Nearest class mean on raw pixels is far above chance (0.1) on held-out samples.
    means = torch.stack([x[y == k].mean(0) for k in range(10)]).flatten(1)
    acc = (torch.cdist(xt.flatten(1), means).argmin(1) == yt).float().mean()
    assert acc > 0.6

    # Pure noise would not be separable: the structure is what makes it work.
    noisy = SyntheticDataModule(seed=3, noise=1e3)
    noisy.setup()
    xn, yn = noisy.train_set.tensors
    xtn, ytn = noisy.test_set.tensors
    means = torch.stack([xn[yn == k].mean(0) for k in range(10)]).flatten(1)
    assert (torch.cdist(xtn.flatten(1), means).argmin(1) == ytn).float().mean() < 0.3


def test_synthetic_options_and_loaders():
    dm = SyntheticDataModule(num_classes=4, image_size=16, channels=1, train_size=40, test_size=20,
                             batch_size=8)
    dm.setup()
    assert dm.num_classes == 4 and dm.image_shape == (1, 16, 16)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (8, 1, 16, 16) and x.dtype == torch.float32 and y.max() < 4
    assert sum(len(b[1]) for b in dm.test_dataloader()) == 20


# ---------------------------------------------------------------- misc

def test_cutout_zeroes_a_clipped_square():
    torch.manual_seed(0)
    img = torch.ones(3, 32, 32)
    out = Cutout(8)(img)
    zeros = (out == 0).all(0)
    assert 16 <= zeros.sum() <= 64 and torch.equal(img, torch.ones(3, 32, 32))  # input untouched
    rows, cols = zeros.any(1).nonzero().flatten(), zeros.any(0).nonzero().flatten()
    assert zeros.sum() == len(rows) * len(cols)  # one rectangle


def test_create_datamodule_registry():
    assert set(DATAMODULES) == {"cifar10", "cifar100", "synthetic", "imagenet"}
    assert isinstance(create_datamodule("synthetic", num_classes=5), SyntheticDataModule)
    with pytest.raises(ValueError) as exc:
        create_datamodule("mnist")
    for n in ["mnist", *DATAMODULES]:
        assert n in str(exc.value)


def test_download_only_when_files_absent(tmp_path, monkeypatch):
    calls = []

    def fake_tv(root, train, download):  # stands in for torchvision's CIFAR100 (no internet here)
        calls.append((root, train, download))
        if not (Path(root) / "cifar-100-python").exists():
            write_cifar100(Path(root))

    monkeypatch.setattr(CIFAR100DataModule, "_tv_class", lambda self: fake_tv)
    dm = CIFAR100DataModule(data_dir=str(tmp_path), download=True)
    dm.prepare_data()
    assert calls == [(str(tmp_path), True, True), (str(tmp_path), False, True)]
    dm.prepare_data()  # files present now: no second download
    assert len(calls) == 2
    dm.setup()
    assert len(dm.train_set) == 60


def test_failed_download_is_a_readable_dataset_error(tmp_path, monkeypatch):
    import urllib.error

    def offline_tv(root, train, download):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(CIFAR100DataModule, "_tv_class", lambda self: offline_tv)
    with pytest.raises(DatasetNotFoundError, match=r"could not be downloaded.*cifar-100-python"):
        CIFAR100DataModule(data_dir=str(tmp_path), download=True).prepare_data()


def test_cifar_vit_recipe_random_erasing_and_repeated_augmentation(tmp_path):
    from timm.data.distributed_sampler import RepeatAugSampler
    write_cifar100(tmp_path)
    plain = CIFAR100DataModule(data_dir=str(tmp_path), augment=False, batch_size=8)
    erased = CIFAR100DataModule(data_dir=str(tmp_path), augment=False, re_prob=1.0, repeated_aug=3, batch_size=8)
    plain.setup(), erased.setup()
    x0, x1 = plain.train_set[0][0], erased.train_set[0][0]
    changed = (x0 != x1).float().mean().item()
    assert 0 < changed <= 0.4 + 1e-6          # one erased patch covering at most 40% of the image
    assert isinstance(erased.train_dataloader().sampler, RepeatAugSampler)
    assert not isinstance(plain.train_dataloader().sampler, RepeatAugSampler)


# ---------------------------------------------------------------- bad inputs: one line naming key or file

def one_line_user_error(exc_info, *needles):
    from pmsm_exp.errors import UserError
    msg = str(exc_info.value)
    assert isinstance(exc_info.value, UserError), type(exc_info.value)
    assert "\n" not in msg and all(n in msg for n in needles), msg
    return msg


@pytest.mark.parametrize("name, key, value", [
    ("cifar10", "batch_size", 0), ("synthetic", "batch_size", 0), ("imagenet", "batch_size", -4),
    ("cifar10", "batch_size", "abc"),
    ("cifar10", "train_subset", 0), ("cifar10", "train_subset", -5), ("imagenet", "train_subset", 0),
    ("cifar100", "test_subset", 0), ("imagenet", "test_subset", -1), ("cifar10", "test_subset", "abc"),
    ("cifar10", "num_workers", -1), ("imagenet", "num_workers", -2), ("synthetic", "num_workers", -1),
    ("cifar10", "val_fraction", 1.0), ("synthetic", "val_fraction", -0.5),
    ("cifar10", "cutout", -8), ("cifar10", "re_prob", 1.5), ("cifar10", "repeated_aug", 0),
    ("synthetic", "train_size", 0), ("synthetic", "num_classes", 0),
    ("cifar10", "on_device", "yes"), ("cifar100", "augment", "abc"),
])
def test_bad_data_values_refused_in_constructor(name, key, value):
    with pytest.raises(ValueError) as exc:
        create_datamodule(name, **{key: value})
    msg = one_line_user_error(exc, f"data.{key}", repr(value))
    assert msg.startswith(f"data.{key}: got ") and "allowed" in msg


def test_unknown_data_name_and_setting():
    with pytest.raises(ValueError) as exc:
        create_datamodule("mnist")
    one_line_user_error(exc, "data.name", "'mnist'", "cifar10", "synthetic")
    # e.g. a synthetic checkpoint's stored data config with +data.name=cifar10 on convert
    with pytest.raises(ValueError) as exc:
        create_datamodule("cifar10", train_size=512, batch_size=8)
    one_line_user_error(exc, "data.train_size", "512", "data=cifar10", "train_subset")


@pytest.fixture
def cifar10_files(tmp_path):
    from data_files import write_cifar10
    write_cifar10(tmp_path, per_batch=6, n_test=8)
    return tmp_path, tmp_path / "cifar-10-batches-py"


@pytest.mark.parametrize("key", ["train_subset", "test_subset"])
def test_subset_larger_than_the_set_refused_at_setup(cifar10_files, key):
    root, _ = cifar10_files
    dm = CIFAR10DataModule(data_dir=str(root), **{key: 31})
    with pytest.raises(ValueError) as exc:
        dm.setup()
    one_line_user_error(exc, f"data.{key}: got 31", "1..30" if key == "train_subset" else "1..8")


def corrupt_truncated(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def corrupt_text(path):
    path.write_text("I am a text file\n1,2,3\n")


def corrupt_empty(path):
    path.write_bytes(b"")


def corrupt_wrong_dict(path):
    path.write_bytes(pickle.dumps({"images": [1, 2, 3]}, protocol=2))


def corrupt_wrong_shape(path):
    path.write_bytes(pickle.dumps({"data": np.zeros((4, 100), np.uint8), "labels": [0] * 4}, protocol=2))


def corrupt_bad_labels(path):
    path.write_bytes(pickle.dumps({"data": np.zeros((2, 3072), np.uint8), "labels": [0, 10]}, protocol=2))


@pytest.mark.parametrize("corrupt", [corrupt_truncated, corrupt_text, corrupt_empty, corrupt_wrong_dict,
                                     corrupt_wrong_shape, corrupt_bad_labels])
@pytest.mark.parametrize("file", ["data_batch_1", "test_batch"])
def test_corrupt_cifar_file_is_one_line_naming_it(cifar10_files, corrupt, file):
    root, folder = cifar10_files
    corrupt(folder / file)
    dm = CIFAR10DataModule(data_dir=str(root))
    dm.prepare_data()  # files are present; reading them is setup's job
    with pytest.raises(ValueError) as exc:
        dm.setup()
    one_line_user_error(exc, str(folder / file))


class _Payload:
    def __reduce__(self):  # what a crafted "data file" would do on unpickling
        import os
        return (os.system, (f"touch {_Payload.marker}",))


def test_crafted_cifar_file_is_refused_without_running_it(cifar10_files):
    root, folder = cifar10_files
    _Payload.marker = root / "pwned"
    (folder / "data_batch_2").write_bytes(pickle.dumps({"data": _Payload(), "labels": []}, protocol=2))
    with pytest.raises(ValueError) as exc:
        CIFAR10DataModule(data_dir=str(root)).setup()
    one_line_user_error(exc, str(folder / "data_batch_2"), "posix.system")
    assert not _Payload.marker.exists()


def test_numpy1_pickled_batch_still_loads(tmp_path):
    # The original CIFAR archives name numpy.core.multiarray (numpy 1); the allow-list keeps them readable.
    from pmsm_exp.data import read_batch
    blob = pickle.dumps({"data": np.full((2, 3072), 7, np.uint8), "labels": [1, 2]}, protocol=2)
    path = tmp_path / "data_batch_1"
    path.write_bytes(blob.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    data, labels = read_batch(path, "labels", 10)
    assert data.shape == (2, 3072) and (data == 7).all() and labels.tolist() == [1, 2]
