"""What exact resumption and preemption need beyond Lightning's own checkpoint.

Lightning's `fit(ckpt_path=...)` restores weights, optimizer, scheduler and loop
counters; `Resumable` adds the RNG states (torch, CUDA, numpy, python), so a resumed
run draws the same batches and augmentations as an uninterrupted one, and saves
`checkpoints/last.ckpt` when the run is stopped from outside:
- SIGTERM (SLURM preemption, `scancel`, `kill`): Lightning's signal connector stops
  the loop at the next batch (SIGTERMException), `on_exception` saves here;
- SIGUSR1 (SLURM `--signal=USR1@90`): off SLURM it is handled here the same way; on
  SLURM, Lightning's auto-requeue saves `hpc_ckpt_N.ckpt` in the run folder and requeues;
- submitit's USR2 (hydra/launcher=submitit_*): submitit requeues the Hydra job and
  exits (SystemExit), which is saved here too;
- Ctrl-C (KeyboardInterrupt).
`runs.folders.resume_checkpoint` then finds the newest of these files.
"""
from __future__ import annotations

import random
import signal
import threading
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.fabric.plugins.environments import SLURMEnvironment

from pmsm_exp.engine.checkpoint_io import atomic_save


class Preempted(SystemExit):
    """The run was stopped by a signal after saving its checkpoint; exit status 128 + signal."""


def rng_states() -> dict:
    np_state = np.random.get_state()
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            # plain types, so the checkpoint loads with torch.load(weights_only=True)
            "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    random.setstate(tuple(tuple(s) if isinstance(s, list) else s for s in states["python"]))
    name, keys, *rest = states["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


class Resumable(L.Callback):
    def __init__(self, dirpath: str | Path):
        self.last = Path(dirpath) / "last.ckpt"
        self._signal: int | None = None
        self._previous_usr1 = None

    # -- RNG state in every checkpoint
    def state_dict(self) -> dict:
        return {"rng": rng_states()}

    def load_state_dict(self, state_dict: dict) -> None:
        # now, not at on_train_start: Lightning creates the first epoch's loader iterator (one draw
        # for its base seed) before on_train_start, and an uninterrupted run draws it after the save
        if state_dict.get("rng"):
            set_rng_states(state_dict["rng"])

    # -- signals
    def setup(self, trainer, pl_module, stage: str) -> None:
        # before Lightning registers its handlers (which keep an existing one); on SLURM, Lightning's own
        # SIGUSR1 auto-requeue handler is the right one, so none is installed here
        if (stage == "fit" and not SLURMEnvironment.detect() and threading.current_thread() is threading.main_thread()
                and signal.getsignal(signal.SIGUSR1) in (signal.SIG_DFL, None)):
            self._previous_usr1 = signal.signal(signal.SIGUSR1, self._on_usr1)

    def _on_usr1(self, signum, frame) -> None:
        self._signal = signum  # acted on at the end of the current batch, like Lightning's SIGTERM

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._signal is not None:
            raise Preempted(128 + self._signal)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if trainer.state.fn != "fit" or not isinstance(exception, (SystemExit, KeyboardInterrupt)):
            return  # a crash is not a preemption: the last epoch-end checkpoint stays
        checkpoint = trainer._checkpoint_connector.dump_checkpoint(weights_only=False)
        if trainer.is_global_zero:  # no barrier: other ranks may be stuck in a collective
            atomic_save(checkpoint, self.last)  # a second kill mid-write keeps the previous last.ckpt
            print(f"interrupted at epoch {trainer.current_epoch}, step {trainer.global_step}: "
                  f"saved {self.last}; resume=auto continues")

    def teardown(self, trainer, pl_module, stage: str) -> None:
        if self._previous_usr1 is not None:
            signal.signal(signal.SIGUSR1, self._previous_usr1)
            self._previous_usr1 = None
