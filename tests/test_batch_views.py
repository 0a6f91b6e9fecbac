"""data.views (batch augmentation): each training batch holds its images `views` times, each copy
cropped and flipped on its own, on both CIFAR paths; the batches per epoch do not change.

The reference is a plain search written here: every output image, un-normalised, must be one of
the 81 crops (padding 4) of one source image, or its mirror; the copies of an image come from the
same source at the same position in each half of the batch. Mutations caught: views ignored (the
batch has its size), the augmented batch repeated instead of the images (every copy identical),
copies of different images (the sources differ).
"""
import pytest
import torch
import torch.nn.functional as F

from data_files import write_cifar10
from pmsm_exp.data import CIFAR10DataModule, create_datamodule
from pmsm_exp.errors import UserError
from test_data_order import batches, fake_trainer

PAD = 4


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory):
    return write_cifar10(tmp_path_factory.mktemp("c10v"), per_batch=4, n_test=10)   # 20 training images


def module(cifar_root, on_device, views, trainer=None):
    dm = CIFAR10DataModule(data_dir=str(cifar_root), batch_size=8, on_device=on_device, seed=3, views=views)
    dm.trainer = trainer or fake_trainer(1, 0)
    dm.setup()
    return dm


def source_of(image, dm):
    """(source index, crop offset, mirrored) of a normalised training image, by trying every crop."""
    mean = torch.tensor(dm.mean).view(3, 1, 1)
    std = torch.tensor(dm.std).view(3, 1, 1)
    pixels = torch.round((image * std + mean) * 255).to(torch.int64)
    found = []
    for s, src in enumerate(dm.train_set.images.to(torch.int64)):
        padded = F.pad(src, (PAD, PAD, PAD, PAD))
        for oy in range(2 * PAD + 1):
            for ox in range(2 * PAD + 1):
                window = padded[:, oy:oy + 32, ox:ox + 32]
                for mirrored in (False, True):
                    if torch.equal(window.flip(-1) if mirrored else window, pixels):
                        found.append((s, (oy, ox), mirrored))
    assert len({f[0] for f in found}) == 1, f"image matches sources {found}"
    return found[0]


@pytest.mark.parametrize("on_device", [True, False])
def test_each_image_appears_views_times_per_batch_with_its_own_augmentation(cifar_root, on_device):
    dm = module(cifar_root, on_device, views=2)
    torch.manual_seed(0)   # the loader path draws its crops from the process RNG
    loader = dm.train_dataloader()
    got, _ = batches(loader)
    assert len(loader) == len(got) == 3                      # ceil(20 / 8): the batches per epoch are unchanged
    assert [len(y) for _, y in got] == [16, 16, 8]          # 8, 8 and 4 images, each twice
    seen, differ = [], 0
    for x, y in got:
        half = len(y) // 2
        assert torch.equal(y[:half], y[half:])
        for i in range(half):
            (s1, at1, m1), (s2, at2, m2) = source_of(x[i], dm), source_of(x[half + i], dm)
            assert s1 == s2 and int(dm.train_set.labels[s1]) == int(y[i])
            seen.append(s1)
            differ += (at1, m1) != (at2, m2)
    assert sorted(seen) == list(range(20))                   # every training image once per epoch, in two views
    assert differ >= 15   # independent draws: a copy repeats its twin's crop and flip with probability 1/162


def test_one_view_is_the_plain_batch(cifar_root):
    got, _ = batches(module(cifar_root, True, views=1).train_dataloader())
    assert [len(y) for _, y in got] == [8, 8, 4]


@pytest.mark.parametrize("on_device", [True, False])
def test_a_resumed_pass_with_views_yields_the_uninterrupted_passs_remaining_batches(cifar_root, on_device):
    torch.manual_seed(7)
    full, state = batches(module(cifar_root, on_device, 2, fake_trainer(1, 0)).train_dataloader(), rng_after=1)
    torch.set_rng_state(state)
    rest, _ = batches(module(cifar_root, on_device, 2, fake_trainer(1, 1)).train_dataloader())
    assert len(rest) == 2
    for (xa, ya), (xb, yb) in zip(rest, full[1:]):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


@pytest.mark.parametrize("settings, message", [
    ({"views": 0}, "data.views: got 0; allowed: an integer >= 1"),
    ({"views": 2, "repeated_aug": 3}, "data.views: got 2 with data.repeated_aug=3; allowed: one of them above 1"),
])
def test_bad_views_are_one_line_before_any_file_is_read(tmp_path, settings, message):
    with pytest.raises(UserError) as err:
        create_datamodule("cifar10", data_dir=str(tmp_path / "absent"), **settings)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_views_on_the_loader_path_under_several_processes_is_one_line(cifar_root):
    dm = module(cifar_root, False, views=2)
    dm.trainer.world_size = 2
    with pytest.raises(UserError, match=r"^data.views: got 2 with 2 processes on the loader path; allowed there: 1"):
        dm.train_dataloader()
