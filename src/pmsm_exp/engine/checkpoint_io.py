"""Checkpoints written atomically: the whole file goes to a temporary name beside the target, is
flushed to disk, then renamed over it, so a kill during a save leaves the previous checkpoint, never
a truncated one (a rename within a folder is atomic on POSIX file systems)."""
from __future__ import annotations

import os
from pathlib import Path

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO


def replace_atomically(path: str | Path, write, mode: str = "wb", **open_kwargs) -> None:
    """write(f) fills a temporary file beside `path`, flushed to disk, then renamed over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, mode, **open_kwargs) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_save(checkpoint: dict, path: str | Path) -> None:
    replace_atomically(path, lambda f: torch.save(checkpoint, f))


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's torch checkpoint IO, saving through `atomic_save` (local paths)."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        if storage_options is not None or "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        atomic_save(checkpoint, path)
