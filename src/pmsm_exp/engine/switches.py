"""How a model runs, not what it computes: the GPU path's switches.

- `model.channels_last`: the model's 4-D weights and every 4-D input in N x H x W x C
  memory order (what cuDNN's tensor-core convolutions read without a transpose). The
  values are the same; only the layout changes, so conversion and the SNN's exactness
  at t = 1 are unaffected (the SNN and its inputs take the same layout as the QANN).
- `model.compile`: `torch.compile` of the QANN's forward for training (true, or one of
  torch's modes). The compiled wrapper is not a submodule: checkpoints keep the plain
  `model.*` keys, and conversion and evaluation use the uncompiled model.
- `eval_precision`: mixed precision (autocast) is a training setting; the QANN/SNN
  evaluation keeps its full-precision arithmetic (see engine/evaluation.EvalModule).

The model builders never see these keys (`split_model_config`).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

RUN_KEYS = ("channels_last", "compile")   # model config keys that say how to run it, not what it is
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
MIXED_PRECISIONS = ("16-mixed", "bf16-mixed")


def split_model_config(model_cfg: dict) -> tuple[dict, dict]:
    """(the architecture's settings, the run switches) of a plain model config."""
    arch = {k: v for k, v in model_cfg.items() if k not in RUN_KEYS}
    run = {k: model_cfg[k] for k in RUN_KEYS if k in model_cfg}
    return arch, run


def to_channels_last(module: nn.Module) -> nn.Module:
    """The module's 4-D parameters and buffers in channels_last order (in place)."""
    return module.to(memory_format=torch.channels_last)


def as_input(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """An image batch in the memory order the model was put in (other tensors as they are)."""
    if channels_last and x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x


def compiled(model: nn.Module, setting: bool | str) -> Callable | None:
    """torch.compile(model) for `model.compile=true|MODE`, None for false. Lazy: the first
    call compiles."""
    if setting is False or setting is None:
        return None
    return torch.compile(model, mode=None if setting is True else setting)


def eval_precision(precision):
    """The trainer precision for evaluation: mixed (autocast) training runs evaluate in
    float32 ("32-true"); a true precision (32, 64, bf16-true) is kept."""
    return "32-true" if str(precision) in MIXED_PRECISIONS else precision
