"""Configs as plain values: the one helper that turns a Hydra/OmegaConf node (or a dict from
a checkpoint) into dicts, lists and scalars, resolved. Checkpoints store such plain values
(they load with `torch.load(weights_only=True)`), and everything below the jobs takes them."""
from __future__ import annotations

from omegaconf import OmegaConf


def plain(value):
    """`value` resolved, as plain dicts (str keys), lists and scalars; anything else as its str."""
    if OmegaConf.is_config(value):
        value = OmegaConf.to_container(value, resolve=True)
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, str):
        return str(value)   # a str subclass (torch's TorchVersion) would not load with weights_only
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return str(value)
