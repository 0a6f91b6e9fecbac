"""Measuring passes: one forward pass with temporary hooks."""
from __future__ import annotations

import torch
from torch import nn


def forward_with_hooks(model: nn.Module, x: torch.Tensor, handles: list) -> torch.Tensor:
    """Run `model` once in eval mode, then restore its training flag and remove `handles`."""
    was_training = model.training
    try:
        model.eval()
        return model(x)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
