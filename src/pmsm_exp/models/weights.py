"""Reading weights safely: tensors and plain containers only, never code. The one reader of
state dicts in the project (run checkpoints, ViT starting weights, distillation teachers).

`torch.load(weights_only=True)` refuses any pickled object outside tensors and plain
Python containers, so a crafted file cannot run code while it is read. train.py's own
checkpoints load this way (their config is stored as plain dicts, lists and scalars); a
file that needs more is refused, naming what it asks for. Errors are one line naming the file.
"""
from __future__ import annotations

import os
import pickle
import re
from pathlib import Path

import torch

from pmsm_exp.errors import CheckpointError, CheckpointNotFound

HOW = "give ckpt_path=PATH to a .ckpt written by train.py, e.g. logs/train/runs/<date>/checkpoints/last.ckpt"


def read_weights(path: str | Path, key: str = "ckpt_path", how: str = HOW) -> object:
    """torch.load(weights_only=True) (or safetensors' reader for .safetensors) with one-line
    errors naming `key` and the file."""
    file = Path(path)
    if not file.is_file():
        raise CheckpointNotFound(f"{key}: {file} not found{' (a folder)' if file.is_dir() else ''}; {how}")
    try:
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file
            return load_file(file)
        return torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL ([\w.]+)", str(err), re.IGNORECASE)
        if found:  # the safe loader stopped before creating (let alone calling) the object
            raise CheckpointError(
                f"{key}: {file} needs more than weights to load: it asks for the Python object "
                f"{found.group(1)}, and loading it would run code from the file; refused (pmsm-exp "
                f"checkpoints hold only tensors and plain values; re-save yours as a state_dict)") from None
        raise CheckpointError(f"{key}: cannot read {file} (not a torch checkpoint: {_first_line(err)}); "
                              f"{how}") from None
    except Exception as err:  # noqa: BLE001 (torch raises many types for damaged files)
        raise CheckpointError(f"{key}: cannot read {file} ({type(err).__name__}: {_first_line(err)}); {how}") from None


def _first_line(err: Exception) -> str:
    """The informative line of an error (torch's weights_only errors open with boilerplate)."""
    boilerplate = ("Weights only load failed", "Check the documentation", "Please file an issue")
    lines = [line.strip() for line in str(err).splitlines() if line.strip() and not line.startswith(boilerplate)]
    return lines[0] if lines else type(err).__name__


def state_dict_of(source, key: str = "checkpoint") -> dict[str, torch.Tensor]:
    """A model's state dict from a file or a loaded checkpoint: unwrapped from a Lightning,
    timm-train or DeiT checkpoint ('state_dict' / 'model'), less a DDP ('module.') or
    LightningModule ('model.') prefix shared by every key."""
    if isinstance(source, (str, os.PathLike)):
        source = read_weights(source, key, how="give a state dict saved with torch.save (.pth/.ckpt) or .safetensors")
    if not isinstance(source, dict):
        raise CheckpointError(f"{key}: holds a {type(source).__name__}, not a state dict")
    state = source
    for wrapper in ("state_dict", "model"):
        if isinstance(state.get(wrapper), dict):
            state = state[wrapper]
            break
    state = dict(state)
    for prefix in ("module.", "model."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state
