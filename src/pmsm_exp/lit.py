"""LightningModules: training the quantized ANN, and evaluating it beside its SNN."""
from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Sampler
from torchmetrics.classification import MulticlassAccuracy

from pmsm_exp import speed
from pmsm_exp.analysis.energy import power_mw
from pmsm_exp.quant import pqa_layers
from pmsm_exp.simulate import simulate

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


def plain_containers(value):
    """A config (DictConfig, dicts, tuples) as plain dicts, lists and scalars."""
    from omegaconf import OmegaConf
    if OmegaConf.is_config(value):
        value = OmegaConf.to_container(value, resolve=True)
    if isinstance(value, dict):
        return {str(k): plain_containers(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_containers(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def decay_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups as DeiT / SpikeZIP-TF build them (timm's rule): no weight decay on biases,
    norm weights, the thresholds λ (all of dim <= 1) nor on the model's `no_weight_decay()`
    names (a ViT's pos_embed and cls_token)."""
    from timm.optim import param_groups_weight_decay
    skip = model.no_weight_decay() if hasattr(model, "no_weight_decay") else ()
    return param_groups_weight_decay(model, weight_decay, no_weight_decay_list=skip)


class QANNModule(L.LightningModule):
    """Trains a (quantized) ANN with cross-entropy; logs accuracy and every layer's λ.

    `run_config` (the resolved Hydra config) is stored in every checkpoint so
    that convert.py can rebuild the model without being told how. `channels_last` and
    `compile` are the GPU path's switches (see speed.py): the model's memory order (and its
    inputs'), and a torch.compile'd forward for training and validation that is not a
    submodule, so checkpoints keep the plain `model.*` keys.
    """

    def __init__(self, model: nn.Module, num_classes: int, optim: dict, run_config: dict | None = None,
                 teacher: nn.Module | None = None, channels_last: bool = False, compile: bool | str = False):
        super().__init__()
        self.channels_last = bool(channels_last)
        self.model = speed.to_channels_last(model) if self.channels_last else model
        object.__setattr__(self, "compiled_model", speed.compiled(self.model, compile))  # not registered
        # optional full-precision teacher (SpikeZIP-TF distils its ViTs); never saved in checkpoints
        self.teacher = teacher.eval().requires_grad_(False) if teacher is not None else None
        self.strict_loading = teacher is None
        self.optim = dict(optim)
        # plain dicts/lists/scalars only, so checkpoints load with torch.load(weights_only=True)
        self.run_config = plain_containers(run_config or {})
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
        x, y = batch
        x = speed.as_input(x, self.channels_last)
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
        x = speed.as_input(x, self.channels_last)
        logits = self(x)
        self.val_acc(logits, y)
        self.log("val/loss", F.cross_entropy(logits, y), on_epoch=True, prog_bar=True)
        self.log("val/acc", self.val_acc, on_epoch=True, prog_bar=True)

    def on_train_epoch_end(self):
        for name, q in pqa_layers(self.model).items():
            self.log(f"lambda/{name}", q.threshold.detach(), on_epoch=True)

    def configure_optimizers(self):
        o = self.optim
        lr = o["lr"] * (self.global_batch_size() / 256 if o.get("scale_lr_by_batch") else 1.0)
        if o["name"] == "sgd":  # the CNN recipe (paper Table 4, QCFS): decay on every parameter
            opt = torch.optim.SGD(self.model.parameters(), lr=lr, momentum=o.get("momentum", 0.9),
                                  weight_decay=o.get("weight_decay", 0.0))
        else:
            opt = torch.optim.AdamW(decay_groups(self.model, o.get("weight_decay", 0.0)), lr=lr,
                                    betas=tuple(o.get("betas", (0.9, 0.999))))
        total = max(1, int(self.trainer.estimated_stepping_batches))
        per_epoch = max(1, total // max(1, self.trainer.max_epochs or 1))
        warmup = int(o.get("warmup_epochs", 0) * per_epoch)
        schedule = o.get("scheduler", "cosine")
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_factor(step, total, warmup, schedule))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def global_batch_size(self) -> int:
        """Images per optimizer step: per-device batch x devices x gradient accumulation."""
        loader = self.trainer.datamodule.train_dataloader() if self.trainer.datamodule else None
        per_device = getattr(loader, "batch_size", None) or 256
        return per_device * self.trainer.world_size * self.trainer.accumulate_grad_batches

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["pmsm_config"] = self.run_config
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if not k.startswith("teacher.")}


class EvalModule(L.LightningModule):
    """One pass over the test set: QANN accuracy, and (if an SNN is given) SNN
    accuracy, agreement with the QANN and spike counts at every t = 1..T. With
    `channels_last`, both networks and the inputs take that memory order alike."""

    def __init__(self, qann: nn.Module, snn: nn.Module | None = None, timesteps: int = 8,
                 encoding: str = "static", readout: str = "mean", chunk: int | None = None,
                 channels_last: bool = False):
        super().__init__()
        self.channels_last = bool(channels_last)
        if self.channels_last:
            qann = speed.to_channels_last(qann)
            snn = speed.to_channels_last(snn) if snn is not None else None
        self.qann, self.snn = qann.eval(), snn
        self.timesteps, self.encoding, self.readout, self.chunk = timesteps, encoding, readout, chunk
        self.sums: dict[str, torch.Tensor] = {}
        self.eval_device = torch.device("cpu")
        self.layer_sums: dict[str, torch.Tensor] = {}

    def on_test_start(self):
        self.eval_device = self.device  # Lightning moves the module back to the CPU after testing
        # TF32 rounds matmul/conv inputs; QANN and SNN would still match each other, but the
        # QANN's logits would differ from a float32 run's, so evaluation runs in full float32
        self._tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False

    def on_test_end(self):
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = self._tf32

    def _add(self, store: dict, key: str, value: torch.Tensor) -> None:
        value = value.detach().double()
        store[key] = store[key] + value if key in store else value

    def test_step(self, batch, batch_idx):
        x, y = batch
        x = speed.as_input(x, self.channels_last)
        with torch.no_grad():
            qann_pred = self.qann(x).argmax(1)
        self._add(self.sums, "images", torch.tensor(float(len(y)), device=x.device))
        self._add(self.sums, "qann_correct", (qann_pred == y).sum())
        if self.snn is None:
            return
        r = simulate(self.snn, x, self.timesteps, self.encoding, self.readout, self.chunk)
        pred = r.outputs.argmax(-1)                                    # [T, N]
        self._add(self.sums, "snn_correct", (pred == y).sum(1))
        self._add(self.sums, "agree", (pred == qann_pred).sum(1))
        for name, counts in r.spike_counts.items():
            self._add(self.layer_sums, name, counts)
        self._add(self.sums, "events", sum(r.spike_events.values()))

    def _reduced(self, store: dict) -> dict[str, torch.Tensor]:
        return {k: self.trainer.strategy.reduce(v, reduce_op="sum") if self.trainer.world_size > 1 else v
                for k, v in store.items()}

    def on_test_epoch_end(self):
        sums, layers = self._reduced(self.sums), self._reduced(self.layer_sums)
        n = sums["images"].item()
        self.results = {"qann": {"test_acc": sums["qann_correct"].item() / n}}
        self.log("qann/test_acc", self.results["qann"]["test_acc"])
        if self.snn is None:
            return
        # cumulative over steps 1..T, per image: the paper's Table 3 counts spikes that way
        layer_spikes = {k: (v.cumsum(0) / n).tolist() for k, v in layers.items()}
        spikes = [sum(v[t] for v in layer_spikes.values()) for t in range(self.timesteps)]
        timesteps = list(range(1, self.timesteps + 1))
        self.results["snn"] = {
            "timesteps": timesteps,
            "test_acc": (sums["snn_correct"] / n).tolist(),
            "agreement": (sums["agree"] / n).tolist(),
            "spikes_per_image": spikes,
            "spike_events_per_image": (sums["events"].cumsum(0) / n).tolist(),
            "power_mw": [power_mw(s, t) for s, t in zip(spikes, timesteps)],
            "layer_spikes": layer_spikes,
        }  # over T, these go to W&B as one row per timestep (tracking.log_results), not one scalar per t


# ---------------------------------------------------------------- DDP evaluation
class ShardSampler(Sampler):
    """Rank r of w takes indices r, r + w, r + 2w, ... of the base order: every test image
    is evaluated exactly once. (Lightning's DistributedSampler pads the set with repeated
    images to a multiple of w, which counts some twice.) Ranks and world size are read when
    the loader is iterated, i.e. inside the launched processes."""

    def __init__(self, indices):
        self.indices = list(indices)

    def _share(self) -> list:
        if dist.is_available() and dist.is_initialized():
            return self.indices[dist.get_rank()::dist.get_world_size()]
        return self.indices

    def __iter__(self):
        return iter(self._share())

    def __len__(self) -> int:
        return len(self._share())


def shard_test_loader(datamodule) -> None:
    """Make the datamodule's test loader use ShardSampler (the trainer must be built with
    use_distributed_sampler=False). The datamodule stays the one Lightning calls, so its
    batch-transfer hooks still apply."""
    if getattr(datamodule, "_unsharded_test_dataloader", None) is not None:
        return
    base = datamodule.test_dataloader

    def sharded() -> DataLoader:
        loader = base()
        return DataLoader(loader.dataset, batch_size=loader.batch_size, sampler=ShardSampler(loader.sampler),
                          num_workers=loader.num_workers, collate_fn=loader.collate_fn, pin_memory=loader.pin_memory,
                          drop_last=loader.drop_last, worker_init_fn=loader.worker_init_fn,
                          persistent_workers=loader.persistent_workers,
                          multiprocessing_context=loader.multiprocessing_context)

    datamodule._unsharded_test_dataloader = base
    datamodule.test_dataloader = sharded
