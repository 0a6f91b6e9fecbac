"""Evaluating the quantized ANN beside its SNN over the test set, once per image even under DDP."""
from __future__ import annotations

import lightning as L
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Sampler

from pmsm_exp.analysis.energy import power_mw
from pmsm_exp.engine import switches
from pmsm_exp.snn import simulate


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
            qann = switches.to_channels_last(qann)
            snn = switches.to_channels_last(snn) if snn is not None else None
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
        x = switches.as_input(x, self.channels_last)
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
        self.results = {"qann": {"test_acc": sums["qann_correct"].item() / n}, "images": int(n)}
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
        }  # over T, these go to W&B as one row per timestep (runs/tracking.log_results), not one scalar per t


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
