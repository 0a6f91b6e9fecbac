"""Reading run checkpoints: the config train.py stored and the model's weights.

Files are read by `models.weights.read_weights` (tensors and plain values only, never code).
"""
from __future__ import annotations

from pathlib import Path

from pmsm_exp.errors import CheckpointError
from pmsm_exp.models.weights import read_weights


def load_checkpoint(path: str | Path) -> tuple[dict, dict, dict | None]:
    """(the run config stored by train.py, the model's state dict, the provenance of the code that
    trained it: None for checkpoints written before provenance was recorded)."""
    ckpt = read_weights(path)
    if not isinstance(ckpt, dict) or "pmsm_config" not in ckpt or "state_dict" not in ckpt:
        raise CheckpointError(f"ckpt_path: {path} is not a pmsm-exp checkpoint (no 'pmsm_config'/'state_dict'); "
                              f"convert.py needs a checkpoint written by train.py")
    config = ckpt["pmsm_config"]
    if not isinstance(config, dict) or not {"model", "data", "pqa"} <= set(config):
        raise CheckpointError(f"ckpt_path: {path} has no model/data/pqa config in 'pmsm_config'; "
                              f"convert.py needs a checkpoint written by train.py")
    state = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items() if not k.startswith("teacher.")}
    provenance = ckpt.get("pmsm_provenance")
    return config, state, provenance if isinstance(provenance, dict) and provenance else None
