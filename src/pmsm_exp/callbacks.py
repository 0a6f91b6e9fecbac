"""Lightning callbacks of our own (the rest come from Lightning, configured in conf/callbacks)."""
from __future__ import annotations

import lightning as L
import torch

from pmsm_exp.errors import DivergedError


class StopOnDivergence(L.Callback):
    """Stops training at the first non-finite loss, naming the step, before that step's
    update; and refuses to write a checkpoint whose weights are not finite, so the last
    checkpoint on disk is always a finite one. The job wrapper records status "diverged"."""

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor) -> None:
        if not torch.isfinite(loss.detach()).all():
            lrs = [g["lr"] for opt in trainer.optimizers for g in opt.param_groups]
            lr = f"{max(lrs):.3g}" if lrs else "?"
            raise DivergedError(
                f"training diverged: train/loss={loss.detach().float().mean().item()} at global step "
                f"{trainer.global_step} (epoch {trainer.current_epoch}, learning rate {lr}); "
                f"the last checkpoint on disk holds the last finite weights; lower optim.lr")

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # runs before ModelCheckpoint's epoch-end save (Lightning orders checkpoint callbacks last)
        self.on_save_checkpoint(trainer, pl_module, {"state_dict": pl_module.state_dict()})

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        bad = [k for k, v in checkpoint.get("state_dict", {}).items()
               if torch.is_tensor(v) and v.is_floating_point() and not torch.isfinite(v).all()]
        if bad:
            raise DivergedError(f"training diverged: non-finite weights ({bad[0]}, {len(bad)} tensors) at global "
                                f"step {trainer.global_step}; not saved, the last checkpoint on disk is finite")
