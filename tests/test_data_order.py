"""The training order across a mid-epoch resume: a pass that starts inside an epoch yields exactly
the uninterrupted pass's remaining batches, augmentations included, on both CIFAR paths.

The reference is the uninterrupted pass of a second, fresh data module: the resumed pass must
equal its batches k.. with torch.equal. Mutations caught: the skip ignored (the resumed pass
starts the epoch again), the on-device loader skipping a batch without drawing its augmentation
(every later crop and flip shifts), the order drawn from the process RNG instead of
(seed, epoch) (the resumed pass draws another permutation).
"""
from types import SimpleNamespace

import pytest
import torch

from data_files import write_cifar10
from pmsm_exp.data import CIFAR10DataModule, SyntheticDataModule
from pmsm_exp.data.order import EpochSampler, batches_done_this_epoch


def fake_trainer(epoch: int, processed: int):
    """What the data modules read from Lightning's Trainer: the epoch and the loop's restored position."""
    progress = SimpleNamespace(current=SimpleNamespace(processed=processed))
    return SimpleNamespace(current_epoch=epoch, world_size=1, global_rank=0,
                           strategy=SimpleNamespace(root_device=torch.device("cpu")),
                           fit_loop=SimpleNamespace(epoch_loop=SimpleNamespace(batch_progress=progress)))


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory):
    return write_cifar10(tmp_path_factory.mktemp("c10"), per_batch=12, n_test=20)   # 60 training images


def batches(loader, rng_after=None):
    """All (images, labels) of one pass; with rng_after=k also the process RNG state after batch k
    (what a checkpoint saved after k trained batches restores)."""
    out, state = [], None
    for i, (x, y) in enumerate(loader):
        out.append((x.clone(), y.clone()))
        if rng_after is not None and i + 1 == rng_after:
            state = torch.get_rng_state()
    return out, state


def module(kind, cifar_root, trainer):
    if kind == "synthetic":
        dm = SyntheticDataModule(train_size=60, test_size=8, image_size=8, batch_size=8, seed=5)
    else:
        dm = CIFAR10DataModule(data_dir=str(cifar_root), batch_size=8, on_device=kind == "cifar_on_device", seed=5)
    dm.trainer = trainer
    dm.setup()
    return dm


@pytest.mark.parametrize("kind", ["cifar_on_device", "cifar_loader", "synthetic"])
@pytest.mark.parametrize("done", [1, 3, 7])
def test_resumed_pass_yields_the_uninterrupted_passs_remaining_batches(kind, done, cifar_root):
    epoch = 2
    torch.manual_seed(11)   # the loader path's torchvision augmentations draw from the process RNG
    full, state = batches(module(kind, cifar_root, fake_trainer(epoch, 0)).train_dataloader(), rng_after=done)
    assert len(full) == 8   # ceil(60 / 8)
    resumed_dm = module(kind, cifar_root, fake_trainer(epoch, done))
    loader = resumed_dm.train_dataloader()
    assert len(loader) == 8   # Lightning counts the whole epoch; the loader yields only what is left
    torch.set_rng_state(state)   # as the checkpoint's RNG states are restored before the pass starts
    rest, _ = batches(loader)
    assert len(rest) == 8 - done
    for (xa, ya), (xb, yb) in zip(rest, full[done:]):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    # and the epoch's batches together hold every training image once
    labels = torch.cat([y for _, y in full])
    assert len(labels) == 60


@pytest.mark.parametrize("kind", ["cifar_on_device", "synthetic"])
def test_each_epoch_has_its_own_order_and_a_resumed_epoch_keeps_it(kind, cifar_root):
    firsts = []
    for epoch in (0, 1, 0):
        torch.manual_seed(epoch + 100)   # a different process RNG each time: the order must not depend on it
        (x, _), *_ = batches(module(kind, cifar_root, fake_trainer(epoch, 0)).train_dataloader())[0]
        firsts.append(x)
    assert not torch.equal(firsts[0], firsts[1]) and (kind != "synthetic" or torch.equal(firsts[0], firsts[2]))


def test_epoch_sampler_is_a_permutation_minus_the_trained_batches():
    full = list(EpochSampler(23, 5, seed=1, epoch_fn=lambda: 4))
    assert sorted(full) == list(range(23))
    assert full != sorted(full)
    assert list(EpochSampler(23, 5, seed=1, epoch_fn=lambda: 4, skip_fn=lambda n: 2)) == full[10:]
    assert list(EpochSampler(23, 5, seed=1, epoch_fn=lambda: 5)) != full
    counted = EpochSampler(23, 5, seed=1)   # no trainer: passes are counted as epochs
    assert list(counted) != list(counted)


@pytest.mark.parametrize("processed, expected", [(0, 0), (1, 1), (15, 15), (16, 0), (17, 0)])
def test_batches_done_is_the_restored_position_inside_the_epoch_only(processed, expected):
    """16 batches per epoch: 0 at an epoch's start and after a checkpoint saved at its end
    (then the next epoch starts from its first batch), k strictly inside."""
    assert batches_done_this_epoch(fake_trainer(3, processed), 16) == expected
    assert batches_done_this_epoch(None, 16) == 0
