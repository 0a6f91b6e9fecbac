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
