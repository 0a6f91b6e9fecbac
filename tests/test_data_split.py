"""Validation is a seeded, class-balanced hold-out of the training set, never the test
set; with val_fraction=0 there is no validation at all."""
from collections import Counter

import pytest
import torch

from data_files import write_cifar10
from pmsm_exp.data import (
    CIFAR10DataModule, ImageNetDataModule, SyntheticDataModule, create_datamodule, stratified_split)
from pmsm_exp.errors import UserError


def image_keys(images):
    return [bytes(im.numpy()) for im in images]


# ---------------------------------------------------------------- the split itself

@pytest.mark.parametrize("labels", [
    [c for c in range(10) for _ in range(37)],                    # balanced, 370 items
    [c for c, k in enumerate([50, 7, 23, 1, 90]) for _ in range(k)],  # imbalanced
], ids=["balanced", "imbalanced"])
@pytest.mark.parametrize("fraction", [0.1, 0.25, 0.5])
def test_split_disjoint_complete_class_balanced(labels, fraction):
    labels = torch.tensor(labels)[torch.randperm(len(labels), generator=torch.Generator().manual_seed(1))]
    n = len(labels)
    tr, va = stratified_split(labels, fraction, seed=7)
    assert set(tr.tolist()).isdisjoint(va.tolist())
    assert sorted(tr.tolist() + va.tolist()) == list(range(n))
    assert len(va) == round(fraction * n)
    counts = Counter(labels[va].tolist())
    sizes = Counter(labels.tolist())
    for c, size in sizes.items():  # each class gives its share, to within one item
        assert abs(counts.get(c, 0) - len(va) * size / n) < 1
    if len(set(sizes.values())) == 1:  # balanced set: per-class counts within 1 of each other
        assert max(counts.values()) - min(counts.values()) <= 1


def test_split_same_for_same_seed_else_different():
    labels = torch.arange(200) % 10
    a, b, c = (stratified_split(labels, 0.2, s) for s in (3, 3, 4))
    assert torch.equal(a[1], b[1]) and torch.equal(a[0], b[0])
    assert not torch.equal(a[1], c[1])


# ---------------------------------------------------------------- data modules

@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory):
    return write_cifar10(tmp_path_factory.mktemp("c10"), per_batch=20, n_test=30)


def test_cifar_val_split_held_out_of_train_test_untouched(cifar_root):
    full = CIFAR10DataModule(data_dir=str(cifar_root), augment=False)
    dm = CIFAR10DataModule(data_dir=str(cifar_root), val_fraction=0.2, seed=5)
    full.setup(), dm.setup()
    assert dm.has_validation and not full.has_validation
    assert len(dm.val_set) == 20 and len(dm.train_set) == 80
    tr, va, every = image_keys(dm.train_set.images), image_keys(dm.val_set.images), image_keys(full.train_set.images)
    assert set(tr).isdisjoint(va) and sorted(tr + va) == sorted(every)  # removed from training
    assert set(va).isdisjoint(image_keys(full.test_set.images))         # not test images
    per_class = Counter(dm.val_set.labels.tolist())
    assert sorted(per_class) == list(range(10)) and set(per_class.values()) == {2}
    # Test set identical to the run without validation.
    assert torch.equal(dm.test_set.images, full.test_set.images)
    assert torch.equal(dm.test_set.labels, full.test_set.labels)
    # Validation uses the eval transform: deterministic, equal to plain normalisation.
    x0 = dm.val_set[0][0]
    assert torch.equal(x0, dm.val_set[0][0]) and torch.equal(x0, dm.eval_transform()(dm.val_set.images[0]))
    xb, yb = next(iter(dm.val_dataloader()))
    assert xb.shape == (20, 3, 32, 32) and torch.equal(yb, dm.val_set.labels)
    # Same seed, same split.
    again = CIFAR10DataModule(data_dir=str(cifar_root), val_fraction=0.2, seed=5)
    again.setup()
    assert torch.equal(again.val_set.images, dm.val_set.images)


def test_no_validation_without_val_fraction(cifar_root):
    dm = CIFAR10DataModule(data_dir=str(cifar_root))
    dm.setup()
    assert not dm.has_validation and dm.val_set is None and dm.val_dataloader() == []
    assert len(dm.train_set) == 100


def test_synthetic_val_split():
    plain = SyntheticDataModule(train_size=100, test_size=20, num_classes=4)
    dm = SyntheticDataModule(train_size=100, test_size=20, num_classes=4, val_fraction=0.2)
    plain.setup(), dm.setup()
    x, y = plain.train_set.tensors
    xv, yv = dm.val_set.tensors
    xt, _ = dm.train_set.tensors
    assert len(xv) == 20 and len(xt) == 80 and set(Counter(yv.tolist()).values()) == {5}
    rows = {bytes(r.numpy()) for r in x}
    assert {bytes(r.numpy()) for r in xv} <= rows and {bytes(r.numpy()) for r in xt} <= rows
    assert {bytes(r.numpy()) for r in xv}.isdisjoint(bytes(r.numpy()) for r in xt)
    assert torch.equal(dm.test_set.tensors[0], plain.test_set.tensors[0])
    assert not plain.has_validation and plain.val_dataloader() == []


def test_imagenet_val_split_from_train_folder(tmp_path):
    from test_data import write_imagenet
    root = write_imagenet(tmp_path, per_class=4)
    dm = ImageNetDataModule(data_dir=str(root), num_workers=0, image_size=32, val_fraction=0.25)
    dm.setup()
    assert len(dm.val_set) == 3 and len(dm.train_set) == 9 and len(dm.test_set) == 12
    val_files = {dm.val_set.dataset.samples[i][0] for i in dm.val_set.indices}
    train_files = {dm.train_set.dataset.samples[i][0] for i in dm.train_set.indices}
    assert val_files.isdisjoint(train_files) and all("/train/" in f for f in val_files)
    assert sorted(dm.val_set[i][1] for i in range(3)) == [0, 1, 2]   # one per class
    assert torch.equal(dm.val_set[0][0], dm.val_set[0][0])         # eval transform


def test_lightning_runs_no_val_loop_without_validation():
    import lightning as L

    class Probe(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.lin, self.val_batches = torch.nn.Linear(3 * 4 * 4, 4), 0

        def training_step(self, batch, _):
            x, y = batch
            return torch.nn.functional.cross_entropy(self.lin(x.flatten(1)), y)

        def validation_step(self, batch, _):
            self.val_batches += 1

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    for fraction, expected in ((0.0, 0), (0.25, 2)):  # one val batch per epoch, no sanity check
        dm = create_datamodule("synthetic", num_classes=4, image_size=4, train_size=32, test_size=8,
                               batch_size=16, val_fraction=fraction)
        probe = Probe()
        trainer = L.Trainer(max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                            enable_model_summary=False, num_sanity_val_steps=0,
                            limit_val_batches=1.0 if dm.has_validation else 0)
        trainer.fit(probe, datamodule=dm)
        assert probe.val_batches == expected


# ---------------------------------------------------------------- bad values

@pytest.mark.parametrize("value", [1.0, 1.5, -0.1, "abc", True])
def test_val_fraction_outside_range_is_one_line(value):
    for name in ("cifar10", "synthetic", "imagenet"):
        with pytest.raises(UserError) as exc:
            create_datamodule(name, val_fraction=value)
        msg = str(exc.value)
        assert msg.startswith("data.val_fraction: got ") and repr(value) in msg and "[0, 1)" in msg
        assert "\n" not in msg


def test_val_fraction_that_holds_out_nothing_is_refused(cifar_root):
    dm = CIFAR10DataModule(data_dir=str(cifar_root), train_subset=10, val_fraction=0.01)
    with pytest.raises(UserError, match=r"^data\.val_fraction: got 0\.01; of 10 training images"):
        dm.setup()


def test_validation_in_a_train_run_is_the_held_out_split_not_the_test_set(tmp_path, monkeypatch):
    """Through the trainer train.py builds: the val/acc a run records is the accuracy of its final
    weights on the held-out training images, recomputed here from the checkpoint; the same weights
    score otherwise on the test set (a validation loop fed the test set would record that)."""
    import json
    from test_gpu_switches import run_script
    from pmsm_exp.jobs.builders import build_datamodule, build_model
    from pmsm_exp.runs.checkpoints import load_checkpoint
    metrics = run_script("train", ["data=synthetic", "data.train_size=96", "data.test_size=64", "data.batch_size=16",
                                   "data.val_fraction=0.5", "epochs=2", "snn.timesteps=1", "logger=csv",
                                   ], tmp_path, monkeypatch)
    config, state, _ = load_checkpoint(tmp_path / metrics["run"]["checkpoint"])
    dm = build_datamodule(config["data"])
    dm.setup("fit")
    model = build_model(config["model"], config["pqa"], dm.num_classes)
    model.load_state_dict(state)
    model.eval()

    def accuracy(dataset):
        x, y = zip(*(dataset[i] for i in range(len(dataset))))
        with torch.no_grad():
            return (model(torch.stack(x)).argmax(1) == torch.tensor(y)).double().mean().item()

    val, test = accuracy(dm.val_set), accuracy(dm.test_set)
    assert len(dm.val_set) == metrics["data"]["val_images"] == 48 and val != test
    assert metrics["training"]["final_val_acc"] == pytest.approx(val, abs=1e-6)
    assert metrics["qann"]["test_acc"] == pytest.approx(test, abs=1e-9)
    assert json.dumps(metrics)   # strict JSON all along
