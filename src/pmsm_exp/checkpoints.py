"""Reading checkpoints safely: tensors and plain containers only, never code.

`torch.load(weights_only=True)` refuses any pickled object outside tensors and
plain Python containers, so a crafted file cannot run code while it is read.
train.py's own checkpoints load this way (QANNModule stores its config as plain
dicts, lists and scalars); a file that needs more is refused, naming what it asks for.
"""
from __future__ import annotations

import pickle
import re
from pathlib import Path

import torch

from pmsm_exp.errors import UserError

HOW = "give ckpt_path=PATH to a .ckpt written by train.py, e.g. logs/train/runs/<date>/checkpoints/last.ckpt"


class CheckpointError(UserError):
    """A checkpoint file that is missing, unreadable, unsafe or not ours."""


def read_weights(path: str | Path, key: str = "ckpt_path") -> object:
    """torch.load(weights_only=True) with one-line errors naming the file."""
    file = Path(path)
    if not file.is_file():
        raise CheckpointError(f"{key}: {file} not found{' (a folder)' if file.is_dir() else ''}; {HOW}")
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL ([\w.]+)", str(err), re.IGNORECASE)
        if found:  # the safe loader stopped before creating (let alone calling) the object
            raise CheckpointError(
                f"{key}: {file} needs more than weights to load: it asks for the Python object "
                f"{found.group(1)}, and loading it would run code from the file; refused (pmsm-exp "
                f"checkpoints hold only tensors and plain values; re-save yours as a state_dict)") from None
        raise CheckpointError(f"{key}: cannot read {file} (not a torch checkpoint: {_first_line(err)}); "
                              f"{HOW}") from None
    except Exception as err:  # noqa: BLE001 (torch raises many types for damaged files)
        raise CheckpointError(f"{key}: cannot read {file} ({type(err).__name__}: {_first_line(err)}); {HOW}") from None


def _first_line(err: Exception) -> str:
    """The informative line of an error (torch's weights_only errors open with boilerplate)."""
    boilerplate = ("Weights only load failed", "Check the documentation", "Please file an issue")
    lines = [line.strip() for line in str(err).splitlines() if line.strip() and not line.startswith(boilerplate)]
    return lines[0] if lines else type(err).__name__


def load_checkpoint(path: str | Path) -> tuple[dict, dict]:
    """(the run config stored by train.py, the model's state dict)."""
    ckpt = read_weights(path)
    if not isinstance(ckpt, dict) or "pmsm_config" not in ckpt or "state_dict" not in ckpt:
        raise CheckpointError(f"ckpt_path: {path} is not a pmsm-exp checkpoint (no 'pmsm_config'/'state_dict'); "
                              f"convert.py needs a checkpoint written by train.py")
    config = ckpt["pmsm_config"]
    if not isinstance(config, dict) or not {"model", "data", "pqa"} <= set(config):
        raise CheckpointError(f"ckpt_path: {path} has no model/data/pqa config in 'pmsm_config'; "
                              f"convert.py needs a checkpoint written by train.py")
    state = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items() if not k.startswith("teacher.")}
    return config, state
