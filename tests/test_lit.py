"""QANNModule's loss paths (mixup/cutmix soft targets) and the LR schedule, without a Trainer."""
import math
import warnings

import pytest
import torch
from torch import nn

from pmsm_exp.engine.training import QANNModule, lr_factor
from pmsm_exp.quant import PQA

SGD = {"name": "sgd", "lr": 0.1}


def tiny_module(optim):
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 8), PQA(), nn.Linear(8, 4))
    return QANNModule(model, num_classes=4, optim=optim)


def test_mixup_uses_soft_targets_and_odd_batches_fall_back():
    torch.manual_seed(0)
    module = tiny_module({**SGD, "mixup": {"mixup_alpha": 0.8, "cutmix_alpha": 0.0, "prob": 1.0},
                          "label_smoothing": 0.1})
    assert module.mixup is not None
    x, y = torch.randn(6, 3, 2, 2), torch.tensor([0, 1, 2, 3, 0, 1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # self.log without a Trainer
        mixed = module.training_step((x, y), 0)
        odd = module.training_step((x[:5], y[:5]), 0)
    plain = nn.functional.cross_entropy(module(x[:5]), y[:5], label_smoothing=0.1)
    assert torch.isclose(odd, plain)
    assert torch.isfinite(mixed) and not torch.isclose(mixed, nn.functional.cross_entropy(module(x), y))


def test_warmup_then_cosine():
    assert lr_factor(0, 100, 10, "cosine") == pytest.approx(0.1)
    assert lr_factor(9, 100, 10, "cosine") == pytest.approx(1.0)
    assert lr_factor(55, 100, 10, "cosine") == pytest.approx(0.5)
    assert lr_factor(100, 100, 10, "cosine") == pytest.approx(0.0)
    assert lr_factor(50, 100, 0, "none") == 1.0
    assert math.isclose(lr_factor(25, 100, 0, "cosine"), 0.5 * (1 + math.cos(math.pi / 4)))


def test_unknown_optimizer_and_scheduler():
    with pytest.raises(ValueError, match="unknown optimizer 'adam'.*sgd, adamw"):
        tiny_module({"name": "adam", "lr": 0.1})
    with pytest.raises(ValueError, match="unknown scheduler 'step'.*cosine, none"):
        tiny_module({**SGD, "scheduler": "step"})


def test_logged_learning_rates_follow_the_cosine_schedule(tmp_path, monkeypatch):
    """The LR monitor of a train.py run (logger=csv) logs, at each epoch's start, 0.1·½(1 + cos(π·s/S))
    for the step s the epoch starts at and S steps in all (no warm-up): written out here."""
    import csv
    import math
    from test_gpu_switches import run_script
    run_script("train", ["data=synthetic", "data.train_size=64", "data.test_size=16", "data.batch_size=32",
                         "epochs=3", "snn.timesteps=1", "logger=csv", "optim.lr=0.1", "optim.warmup_epochs=0"],
               tmp_path, monkeypatch)
    rows = list(csv.DictReader(next(tmp_path.rglob("csv/metrics.csv")).open()))
    column = next(k for k in rows[0] if k.startswith("lr-"))
    logged = [float(r[column]) for r in rows if r.get(column)]
    expected = [0.1 * 0.5 * (1 + math.cos(math.pi * 2 * e / 6)) for e in range(3)]   # 2 steps per epoch
    assert logged == pytest.approx(expected, rel=1e-9, abs=1e-12)
