"""Lightning callbacks of our own (the rest come from Lightning, configured in conf/callbacks)."""
from __future__ import annotations

import lightning as L
import torch

from pmsm_exp.errors import DivergedError
from pmsm_exp.quant.pqa import pqa_layers


class StopOnDivergence(L.Callback):
    """Stops training at a non-finite loss, naming its global step, and refuses to write a
    checkpoint with non-finite weights, so the last checkpoint on disk is always finite.
    The job wrapper (jobs/wrapper.py) records status "diverged".

    A step's loss is checked when the next step's forward has been queued (or at the epoch's
    end, or before any checkpoint): reading it at once would stall a GPU on every step."""

    def __init__(self):
        self._pending: tuple | None = None

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor) -> None:
        self._check_loss(trainer)
        loss = loss.detach()
        self._pending = (torch.isfinite(loss).all(), loss, trainer.global_step, trainer.current_epoch)

    def _check_loss(self, trainer: L.Trainer) -> None:
        if self._pending is None:
            return
        finite, loss, step, epoch = self._pending
        self._pending = None
        if not bool(finite):
            lrs = [g["lr"] for opt in trainer.optimizers for g in opt.param_groups]
            lr = f"{max(lrs):.3g}" if lrs else "?"
            raise DivergedError(f"training diverged: train/loss={loss.float().mean().item()} at global step {step} "
                                f"(epoch {epoch}, learning rate {lr}); the last checkpoint on disk holds finite "
                                f"weights; lower optim.lr")

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # runs before ModelCheckpoint's epoch-end save (Lightning orders checkpoint callbacks last)
        self.on_save_checkpoint(trainer, pl_module, {"state_dict": pl_module.state_dict()})
        # a learned threshold λ <= 0 leaves no SNN to convert to: stop now, not after the last epoch
        for name, q in pqa_layers(pl_module).items():
            lam = float(q.threshold.detach())
            if not lam > 0:
                raise DivergedError(f"training diverged: learned threshold {name}.threshold = {lam:.4g} <= 0 at the "
                                    f"end of epoch {trainer.current_epoch} (global step {trainer.global_step}); no "
                                    f"SNN exists for it; set optim.threshold_floor (e.g. 0.1) or lower optim.lr")

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        self._check_loss(trainer)
        bad = [k for k, v in checkpoint.get("state_dict", {}).items()
               if torch.is_tensor(v) and v.is_floating_point() and not torch.isfinite(v).all()]
        if bad:
            raise DivergedError(f"training diverged: non-finite weights ({bad[0]}, {len(bad)} tensors) at global "
                                f"step {trainer.global_step}; not saved, the last checkpoint on disk is finite")
