"""Training the quantized ANN: the LightningModule, its optimizer and learning-rate schedule."""
from __future__ import annotations

import math
import time
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from pmsm_exp.config import plain
from pmsm_exp.engine import switches
from pmsm_exp.quant import pqa_layers

OPTIMIZERS = ("sgd", "adamw")
SCHEDULERS = ("cosine", "none")


def lr_factor(step: int, total_steps: int, warmup_steps: int, schedule: str) -> float:
    """Linear warmup, then cosine decay to 0 (or constant)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "none":
        return 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def decay_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups as DeiT / SpikeZIP-TF build them (timm's rule): no weight decay on biases,
    norm weights, the thresholds λ (all of dim <= 1) nor on the model's `no_weight_decay()`
    names (a ViT's pos_embed and cls_token)."""
    from timm.optim import param_groups_weight_decay
    skip = model.no_weight_decay() if hasattr(model, "no_weight_decay") else ()
    return param_groups_weight_decay(model, weight_decay, no_weight_decay_list=skip)


def threshold_groups(groups: list[dict], model: nn.Module, threshold_lr: float) -> list[dict]:
    """`groups` with the thresholds λ moved into groups of their own at learning rate `threshold_lr`
    (optim.threshold_lr_scale): λ's gradient sums over every activation of its layer, so it moves
    far more per step than any weight does."""
    lams = {id(q.threshold) for q in pqa_layers(model).values()}
    out = []
    for g in groups:
        params = list(g["params"])
        rest = [p for p in params if id(p) not in lams]
        own = [p for p in params if id(p) in lams]
        out += [{**g, "params": rest}] if rest else []
        out += [{**g, "params": own, "lr": threshold_lr}] if own else []
    return out


class QANNModule(L.LightningModule):
    """Trains a (quantized) ANN with cross-entropy; logs accuracy and every layer's λ.

    `run_config` (the resolved Hydra config) is stored in every checkpoint so
    that convert.py can rebuild the model without being told how. `channels_last` and
    `compile` are the GPU path's switches (see switches.py): the model's memory order (and its
    inputs'), and a torch.compile'd forward for training and validation that is not a
    submodule, so checkpoints keep the plain `model.*` keys.
    """

    def __init__(self, model: nn.Module, num_classes: int, optim: dict, run_config: dict | None = None,
                 teacher: nn.Module | None = None, channels_last: bool = False, compile: bool | str = False,
                 provenance: dict | None = None):
        super().__init__()
        # the code that trained the weights (commit, versions), kept in every checkpoint
        self.provenance = plain(provenance or {})
        self.schedule: dict = {}   # the learning-rate schedule configure_optimizers built
        self.steps_this_run = 0    # training steps taken by this process (a resumed run: only the remaining ones)
        # fitting time over every process that trained these weights: the time up to the checkpoint a run
        # resumed from, kept in checkpoints, plus this process's since clock_started (set before fit)
        self.wall_before = 0.0
        self.clock_started: float | None = None
        self.floored: list[nn.Parameter] = []   # the thresholds optim.threshold_floor holds up (on_train_start)
        self.channels_last = bool(channels_last)
        self.model = switches.to_channels_last(model) if self.channels_last else model
        object.__setattr__(self, "compiled_model", switches.compiled(self.model, compile))  # not registered
        # optional full-precision teacher (SpikeZIP-TF distils its ViTs); never saved in checkpoints
        self.teacher = teacher.eval().requires_grad_(False) if teacher is not None else None
        self.strict_loading = teacher is None
        self.optim = dict(optim)
        # plain dicts/lists/scalars only, so checkpoints load with torch.load(weights_only=True)
        self.run_config = plain(run_config or {})
        if self.optim["name"] not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optim['name']!r}; valid: {', '.join(OPTIMIZERS)}")
        if self.optim.get("scheduler", "cosine") not in SCHEDULERS:
            raise ValueError(f"unknown scheduler {self.optim['scheduler']!r}; valid: {', '.join(SCHEDULERS)}")
        self.mixup = self._make_mixup(num_classes)
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")

    def _make_mixup(self, num_classes: int):
        mix = self.optim.get("mixup") or {}
        if not (mix.get("mixup_alpha", 0) or mix.get("cutmix_alpha", 0)):
            return None
        from timm.data import Mixup
        return Mixup(num_classes=num_classes, label_smoothing=self.optim.get("label_smoothing", 0.0), **mix)

    def forward(self, x):
        return (self.model if self.compiled_model is None else self.compiled_model)(x)

    def training_step(self, batch, batch_idx):
        self.steps_this_run += 1
        x, y = batch
        x = switches.as_input(x, self.channels_last)
        inputs, soft_targets = x, None
        if self.mixup is not None and len(x) % 2 == 0:  # timm's Mixup needs an even batch
            inputs, soft_targets = self.mixup(x, y)
        logits = self(inputs)
        if soft_targets is not None:
            loss = torch.sum(-soft_targets * F.log_softmax(logits, dim=-1), dim=-1).mean()
        else:
            loss = F.cross_entropy(logits, y, label_smoothing=self.optim.get("label_smoothing", 0.0))
        if self.teacher is not None:
            loss = self._distill(loss, logits, inputs)
        self.train_acc(logits, y)
        self.log("train/loss", loss, on_step=False, on_epoch=True, prog_bar=True)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True)
        return loss

    def _distill(self, loss, logits, x):
        """(1 - w)·task loss + w·τ²·KL(teacher ‖ student) on temperature-softened outputs."""
        d = self.optim["distill"]
        w, tau = d.get("weight", 0.5), d.get("temperature", 1.0)
        with torch.no_grad():
            teacher_logits = self.teacher(x)
        kl = F.kl_div(F.log_softmax(logits / tau, -1), F.log_softmax(teacher_logits / tau, -1),
                      reduction="batchmean", log_target=True)
        self.log("train/distill_kl", kl, on_step=False, on_epoch=True)
        return (1 - w) * loss + w * tau * tau * kl

    def train(self, mode: bool = True):
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # BatchNorm/dropout of the teacher stay in inference mode
        return self

    def validation_step(self, batch, batch_idx):
        x, y = batch
        x = switches.as_input(x, self.channels_last)
        logits = self(x)
        self.val_acc(logits, y)
        self.log("val/loss", F.cross_entropy(logits, y), on_epoch=True, prog_bar=True)
        self.log("val/acc", self.val_acc, on_epoch=True, prog_bar=True)

    def on_train_start(self):
        # optim.threshold_floor: λ is a step size (θ = λ/L); kept >= the floor after every optimizer step, so
        # a noisy step cannot carry it through 0 (a network with λ <= 0 has no SNN)
        floor = self.optim.get("threshold_floor")
        self.floored = [q.threshold for q in pqa_layers(self.model).values()] if floor is not None else []

    def on_train_epoch_start(self):
        # optim.quantize_from_epoch: the first epochs clip without rounding (a full-precision warm-up that
        # trains faster), the rest quantize; set from the epoch number, so a resumed run gets it right
        quantize = self.current_epoch >= int(self.optim.get("quantize_from_epoch") or 0)
        for q in pqa_layers(self.model).values():
            q.quantize = quantize

    def on_train_end(self):
        for q in pqa_layers(self.model).values():
            q.quantize = True   # what is tested and converted is the quantized network

    def on_train_batch_end(self, outputs, batch, batch_idx):
        if self.floored:
            floor = float(self.optim["threshold_floor"])
            with torch.no_grad():
                for lam in self.floored:
                    lam.clamp_(min=floor)

    def on_train_epoch_end(self):
        for name, q in pqa_layers(self.model).items():
            self.log(f"lambda/{name}", q.threshold.detach(), on_epoch=True)

    def configure_optimizers(self):
        o = self.optim
        lr = o["lr"] * (self.global_batch_size() / 256 if o.get("scale_lr_by_batch") else 1.0)
        if o["name"] == "sgd":  # the CNN recipe (paper Table 4, QCFS): decay on every parameter unless decay_all=false
            params = ([{"params": list(self.model.parameters())}] if o.get("decay_all", True)
                      else decay_groups(self.model, o.get("weight_decay", 0.0)))
            scale = float(o.get("threshold_lr_scale") or 1.0)
            if scale != 1.0:   # else the groups stay as before, so checkpoints of earlier runs still resume
                params = threshold_groups(params, self.model, lr * scale)
            opt = torch.optim.SGD(params, lr=lr, momentum=o.get("momentum", 0.9),
                                  weight_decay=o.get("weight_decay", 0.0), nesterov=bool(o.get("nesterov", False)))
        else:
            opt = torch.optim.AdamW(decay_groups(self.model, o.get("weight_decay", 0.0)), lr=lr,
                                    betas=tuple(o.get("betas", (0.9, 0.999))))
        total = max(1, int(self.trainer.estimated_stepping_batches))
        per_epoch = max(1, total // max(1, self.trainer.max_epochs or 1))
        warmup = int(o.get("warmup_epochs", 0) * per_epoch)
        schedule = o.get("scheduler", "cosine")
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_factor(step, total, warmup, schedule))
        self.schedule = {"optimizer": o["name"], "peak_lr": lr, "schedule": schedule, "warmup_steps": warmup,
                         "total_steps": total, "momentum": o.get("momentum", 0.9) if o["name"] == "sgd" else None,
                         "nesterov": bool(o.get("nesterov", False)) if o["name"] == "sgd" else None,
                         "weight_decay": o.get("weight_decay", 0.0),
                         "decay_all": bool(o.get("decay_all", True)) if o["name"] == "sgd" else False,
                         "threshold_lr_scale": float(o.get("threshold_lr_scale") or 1.0) if o["name"] == "sgd" else 1.0,
                         "quantize_from_epoch": int(o.get("quantize_from_epoch") or 0)}
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def global_batch_size(self) -> int:
        """Images per optimizer step: per-device batch x devices x gradient accumulation."""
        loader = self.trainer.datamodule.train_dataloader() if self.trainer.datamodule else None
        per_device = getattr(loader, "batch_size", None) or 256
        return per_device * self.trainer.world_size * self.trainer.accumulate_grad_batches

    def wall_s_this_run(self, now: float | None = None) -> float:
        """Seconds this process has been fitting (0 before fit starts)."""
        if self.clock_started is None:
            return 0.0
        return (time.time() if now is None else now) - self.clock_started

    def training_wall_s(self, now: float | None = None) -> float:
        """Seconds of fitting behind the current weights, over this process and the ones it resumed
        from (an interrupted process's time after its last checkpoint is not in it: that work was redone)."""
        return self.wall_before + self.wall_s_this_run(now)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["pmsm_config"] = self.run_config
        checkpoint["pmsm_provenance"] = self.provenance
        checkpoint["pmsm_training_wall_s"] = self.training_wall_s()
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if not k.startswith("teacher.")}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # checkpoints written before the time was kept have none: such a resumed run counts only its own
        self.wall_before = float(checkpoint.get("pmsm_training_wall_s", 0.0))
