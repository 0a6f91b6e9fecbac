"""The on-device CIFAR path (data.on_device): its batch augmentation checked on CPU
tensors against independent references, and its loader inside Lightning."""
import numpy as np
import pytest
import torch

from data_files import write_cifar10
from pmsm_exp.data import CIFAR10DataModule, Cutout, DeviceLoader, augment_batch, normalise_batch
from pmsm_exp.errors import UserError

ZERO, ONE = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)


def raw(x):  # undo normalise with mean 0, std 1: back to the uint8 pixel values
    return torch.round(x * 255).to(torch.int64)


def reference_windows(x: torch.Tensor, pad: int):
    """Every (dy, dx, mirrored) window of the zero-padded images, by plain numpy slicing."""
    padded = np.pad(x.numpy(), ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    h, w = x.shape[-2:]
    for dy in range(2 * pad + 1):
        for dx in range(2 * pad + 1):
            win = padded[:, :, dy:dy + h, dx:dx + w]
            yield (dy, dx, False), win
            yield (dy, dx, True), win[..., ::-1]


@pytest.fixture(scope="module")
def crops():
    """1000 random 16 x 16 images (pixels 1..255, so padding is told apart), augmented with
    pad 4 + flip, and for each the reference window(s) it equals."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(1, 256, (1000, 3, 16, 16), dtype=torch.uint8, generator=g)
    out = raw(augment_batch(x, torch.Generator().manual_seed(1), ZERO, ONE, pad=4, flip=True))
    matches = [[] for _ in range(len(x))]
    for params, win in reference_windows(x, 4):
        hit = (out.numpy() == win).reshape(len(x), -1).all(1)
        for i in np.flatnonzero(hit):
            matches[i].append(params)
    return x, out, matches


def test_crop_is_a_window_of_the_padded_image_at_an_offset_in_range(crops):
    _, out, matches = crops
    assert out.shape == (1000, 3, 16, 16)
    assert all(len(m) == 1 for m in matches)  # exactly one reference window, offsets 0..8
    dys = {m[0][0] for m in matches}
    dxs = {m[0][1] for m in matches}
    assert dys == set(range(9)) and dxs == set(range(9))  # every offset in range occurs


def test_flip_rate_near_one_half(crops):
    _, _, matches = crops
    rate = np.mean([m[0][2] for m in matches])
    assert abs(rate - 0.5) < 0.06  # 1000 draws: sd 0.016


def test_no_augmentation_is_identity():
    x = torch.randint(0, 256, (5, 3, 8, 8), dtype=torch.uint8)
    out = augment_batch(x, torch.Generator().manual_seed(0), ZERO, ONE, pad=0, flip=False)
    assert torch.equal(raw(out), x.long())


@pytest.mark.parametrize("size", [8, 5])
def test_cutout_zeroes_exactly_one_clipped_square(size):
    n, h = 400, 20
    x = torch.full((n, 3, h, h), 255, dtype=torch.uint8)
    out = augment_batch(x, torch.Generator().manual_seed(2), ZERO, ONE, pad=0, flip=False, cutout=size)
    zero = out == 0
    assert torch.equal(zero[:, :1].expand_as(zero), zero)  # the same hole in every channel
    tops, bottoms = [], []
    for z in zero[:, 0]:
        rows, cols = z.any(1).nonzero().flatten(), z.any(0).nonzero().flatten()
        assert len(rows) and z.sum() == len(rows) * len(cols)  # one filled rectangle
        assert rows[-1] - rows[0] + 1 == len(rows) and cols[-1] - cols[0] + 1 == len(cols)
        for idx in (rows, cols):  # the square [c - size//2, c - size//2 + size) clipped to the image
            lo, hi = int(idx[0]), int(idx[-1]) + 1
            if lo > 0 and hi < h:
                assert hi - lo == size
            else:
                assert size - size // 2 <= hi - lo <= size
        tops.append(int(rows[0])), bottoms.append(int(rows[-1]))
    assert min(tops) == 0 and max(bottoms) == h - 1  # centres cover the border too
    assert (out[~zero] == 1).all()


def test_cutout_after_normalisation_like_cpu_path():
    # a hole is 0 after normalising (the mean colour), as with the CPU Cutout
    x = torch.full((4, 3, 8, 8), 10, dtype=torch.uint8)
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.5, 0.5)
    out = augment_batch(x, torch.Generator().manual_seed(0), mean, std, pad=0, flip=False, cutout=4)
    expected = (10 / 255 - torch.tensor(mean)) / torch.tensor(std)
    kept = out != 0
    assert kept.any() and (~kept).any()
    for c in range(3):
        assert torch.allclose(out[:, c][kept[:, c]], expected[c].expand(int(kept[:, c].sum())))
    hole = Cutout(4)(torch.ones(3, 8, 8))  # the per-image version zeroes the same kind of region
    assert 4 <= int((hole == 0).all(0).sum()) <= 16


def test_same_seed_same_images():
    x = torch.randint(0, 256, (64, 3, 12, 12), dtype=torch.uint8)
    a, b, c = (augment_batch(x, torch.Generator().manual_seed(s), ZERO, ONE, cutout=4) for s in (5, 5, 6))
    assert torch.equal(a, b) and not torch.equal(a, c)


# ---------------------------------------------------------------- the loader and the data module

def test_device_loader_epochs_shards_and_seeds():
    images = torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1).expand(10, 1, 2, 2).contiguous()
    labels = torch.arange(10)
    ident = lambda x, g: x  # noqa: E731
    epoch = {"e": 0}
    loader = DeviceLoader(images, labels, 4, ident, seed=1, epoch_fn=lambda: epoch["e"])
    assert len(loader) == 3 and loader.batch_size == 4
    first = torch.cat([y for _, y in loader])
    assert sorted(first.tolist()) == list(range(10))               # a permutation per epoch
    assert torch.equal(torch.cat([y for _, y in loader]), first)    # same epoch, same order
    epoch["e"] = 1
    assert not torch.equal(torch.cat([y for _, y in loader]), first)
    for x, y in loader:  # images travel with their labels
        assert torch.equal(x[:, 0, 0, 0].long(), y)
    # Two ranks: equal lengths, together every index, same permutation as one rank.
    shards = [torch.cat([y for _, y in DeviceLoader(images, labels, 4, ident, seed=1, rank=r, world_size=3,
                                                     epoch_fn=lambda: 0)]) for r in range(3)]
    assert [len(s) for s in shards] == [4, 4, 4] and set(torch.cat(shards).tolist()) == set(range(10))


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory):
    return write_cifar10(tmp_path_factory.mktemp("c10"), per_batch=12, n_test=20)


def test_on_device_datamodule_train_augmented_eval_untouched(cifar_root):
    dm = CIFAR10DataModule(data_dir=str(cifar_root), on_device=True, cutout=8, batch_size=16, val_fraction=0.2)
    cpu = CIFAR10DataModule(data_dir=str(cifar_root), batch_size=16, val_fraction=0.2)
    dm.setup(), cpu.setup()
    loader = dm.train_dataloader()
    assert isinstance(loader, DeviceLoader) and len(loader) == 3  # 48 training images
    x, y = next(iter(loader))
    assert x.dtype == torch.float32 and x.shape == (16, 3, 32, 32) and y.dtype == torch.long
    # Eval paths are the ordinary eval transform, no augmentation, whatever on_device says.
    for a, b in ((dm.test_dataloader(), cpu.test_dataloader()), (dm.val_dataloader(), cpu.val_dataloader())):
        for (xa, ya), (xb, yb) in zip(a, b):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
    # The batched eval normalisation equals the per-image eval transform.
    ref = torch.stack([dm.eval_transform()(im) for im in dm.test_set.images])
    assert torch.equal(normalise_batch(dm.test_set.images, dm.mean, dm.std), ref)
    # Un-augmented on-device batches are exactly the CPU eval of the same images.
    plain = CIFAR10DataModule(data_dir=str(cifar_root), on_device=True, augment=False, batch_size=8)
    plain.setup()
    loader = plain.device_loader("cpu")
    xb, yb = next(iter(loader))
    idx = loader.indices(0)[:8]
    ref = torch.stack([plain.eval_transform()(plain.train_set.images[i]) for i in idx])
    assert torch.equal(xb, ref) and torch.equal(yb, plain.train_set.labels[idx])


def test_on_device_resize_matches_eval_transform(cifar_root):
    dm = CIFAR10DataModule(data_dir=str(cifar_root), on_device=True, augment=False, image_size=48, batch_size=4)
    dm.setup()
    x, _ = next(iter(dm.device_loader("cpu")))
    assert x.shape == (4, 3, 48, 48)
    idx = dm.device_loader("cpu").indices(0)[:4]
    ref = torch.stack([dm.eval_transform()(dm.train_set.images[i]) for i in idx])
    assert torch.allclose(x, ref, atol=1e-5)


def test_on_device_trains_in_lightning(cifar_root):
    import lightning as L

    seen = []

    class Probe(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(3 * 32 * 32, 10)

        def training_step(self, batch, _):
            x, y = batch
            seen.append((x.dtype, tuple(x.shape), x.device.type, self.current_epoch, y))
            return torch.nn.functional.cross_entropy(self.lin(x.flatten(1)), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    dm = CIFAR10DataModule(data_dir=str(cifar_root), on_device=True, batch_size=25)
    trainer = L.Trainer(max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, accelerator="cpu")
    trainer.fit(Probe(), datamodule=dm)
    assert [s[3] for s in seen] == [0, 0, 0, 1, 1, 1]  # 60 images, batches of 25
    assert all(s[0] == torch.float32 and s[1][1:] == (3, 32, 32) for s in seen)
    # each epoch is a new permutation of all 60 images (the loader follows trainer.current_epoch)
    orders = [torch.cat([s[4] for s in seen if s[3] == e]) for e in (0, 1)]
    assert all(len(o) == 60 for o in orders) and not torch.equal(orders[0], orders[1])
    idx0, idx1 = dm.train_dataloader().indices(0), dm.train_dataloader().indices(1)
    assert torch.equal(orders[0], dm.train_set.labels[idx0]) and torch.equal(orders[1], dm.train_set.labels[idx1])


@pytest.mark.parametrize("key, value", [("autoaugment", True), ("re_prob", 0.25), ("repeated_aug", 3)])
def test_on_device_refuses_what_it_cannot_do(key, value):
    with pytest.raises(UserError) as exc:
        CIFAR10DataModule(on_device=True, **{key: value})
    msg = str(exc.value)
    assert msg.startswith(f"data.{key}: got ") and "data.on_device" in msg and "\n" not in msg


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_on_device_cuda_batches_stay_on_gpu(cifar_root):
    dm = CIFAR10DataModule(data_dir=str(cifar_root), on_device=True, cutout=8, batch_size=16)
    dm.setup()
    x, y = next(iter(dm.device_loader("cuda")))
    assert x.is_cuda and y.is_cuda and x.dtype == torch.float32
    # CPU and GPU draw different random numbers, but the same kind of images: one window each.
    g = torch.Generator(device="cuda").manual_seed(0)
    imgs = torch.randint(1, 256, (256, 3, 16, 16), dtype=torch.uint8, device="cuda")
    out = raw(augment_batch(imgs, g, ZERO, ONE, pad=4, flip=True)).cpu().numpy()
    hits = np.zeros(256, dtype=int)
    for _, win in reference_windows(imgs.cpu(), 4):
        hits += (out == win).reshape(256, -1).all(1)
    assert (hits == 1).all()


@pytest.mark.parametrize("on_device", [True, False])
def test_crop_pad_sets_the_offsets_on_both_paths(on_device):
    """data.crop_pad=2: every training image is a (possibly mirrored) window of the image zero-padded
    by 2, at offsets 0..4 and never beyond, on the device path and in the loader workers' path."""
    dm = CIFAR10DataModule(crop_pad=2, on_device=on_device)
    g = torch.Generator().manual_seed(3)
    x = torch.randint(1, 256, (400, 3, 32, 32), dtype=torch.uint8, generator=g)
    if on_device:
        out = dm.device_transform()(x, torch.Generator().manual_seed(4))
    else:
        torch.manual_seed(4)
        tf = dm.train_transform()
        out = torch.stack([tf(img) for img in x])
    mean, std = torch.tensor(dm.mean).view(1, 3, 1, 1), torch.tensor(dm.std).view(1, 3, 1, 1)
    pixels = torch.round((out * std + mean) * 255).to(torch.int64).numpy()
    offsets = []
    for i in range(len(x)):
        hits = [(dy, dx) for (dy, dx, _), win in reference_windows(x[i:i + 1], 2) if (pixels[i] == win[0]).all()]
        assert len(hits) == 1, f"image {i}: {len(hits)} matching windows"
        offsets.append(hits[0])
    assert {dy for dy, _ in offsets} == set(range(5)) and {dx for _, dx in offsets} == set(range(5))


@pytest.mark.parametrize("value", [-1, "two", 2.5])
def test_crop_pad_refuses_a_bad_value_in_one_line(value):
    with pytest.raises(UserError) as exc:
        CIFAR10DataModule(crop_pad=value)
    msg = str(exc.value)
    assert "\n" not in msg and msg.startswith(f"data.crop_pad: got {value!r}") and "integer >= 0" in msg
