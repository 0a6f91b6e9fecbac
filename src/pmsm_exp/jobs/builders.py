"""Building a job's parts from its config: the resolved quantizer settings, the model, the data,
the distillation teacher, the trainer with its loggers and callbacks, and the SNN settings.

Below both the config checks and the pipelines, so the checks build the very model the
pipeline then trains, and nothing is resolved or built twice.
"""
from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning.pytorch.callbacks import EMAWeightAveraging
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from omegaconf import OmegaConf

from pmsm_exp.analysis.entropy import PAPER_ALPHAS, PAPER_BETAS, choose_alpha_beta
from pmsm_exp.config import plain
from pmsm_exp.data import create_datamodule
from pmsm_exp.engine import switches
from pmsm_exp.engine.checkpoint_io import AtomicCheckpointIO
from pmsm_exp.engine.preemption import Resumable
from pmsm_exp.models import create_model
from pmsm_exp.models.weights import state_dict_of
from pmsm_exp.quant import kernels, make_activation, pqa_layers
from pmsm_exp.runs import tracking

NUM_CLASSES = {"cifar10": 10, "cifar100": 100, "imagenet": 1000}


def output_dir() -> Path:
    return Path(HydraConfig.get().runtime.output_dir)


def num_classes(data: dict) -> int | None:
    return data.get("num_classes") or NUM_CLASSES.get(data.get("name"))


def resolve_pqa(pqa_cfg) -> dict:
    """The pqa config as plain values; alpha/beta 'auto' pick the grid point whose
    entropy ratio H(PQA)/H(BN) is closest to 1 (the paper's strategy)."""
    pqa = plain(pqa_cfg)
    auto = [k for k in ("alpha", "beta") if pqa[k] == "auto"]
    if auto:
        alphas = PAPER_ALPHAS if "alpha" in auto else (float(pqa["alpha"]),)
        betas = PAPER_BETAS if "beta" in auto else (float(pqa["beta"]),)
        alpha, beta, ratio = choose_alpha_beta(pqa["levels"], pqa["threshold"], alphas, betas)
        pqa.update(alpha=alpha, beta=beta, entropy_choice={"auto": auto, "ratio": ratio,
                                                           "alphas": list(alphas), "betas": list(betas)})
    pqa["alpha"], pqa["beta"] = float(pqa["alpha"]), float(pqa["beta"])
    return pqa


def build_model(model_cfg, pqa: dict, classes: int) -> torch.nn.Module:
    activation = make_activation(pqa["kind"], pqa["levels"], pqa["alpha"], pqa["beta"], pqa["threshold"])
    arch, _ = switches.split_model_config(plain(model_cfg))  # channels_last, compile: how it runs (switches.py)
    return create_model(arch.pop("name"), classes, activation, **arch)


def run_switches(model_cfg) -> dict:
    """model.channels_last and model.compile (switches.py), false when absent (older checkpoints)."""
    _, run = switches.split_model_config(plain(model_cfg))
    return {"channels_last": bool(run.get("channels_last", False)), "compile": run.get("compile", False)}


def build_datamodule(data_cfg) -> L.LightningDataModule:
    kwargs = plain(data_cfg)
    return create_datamodule(kwargs.pop("name"), **kwargs)


def build_teacher(optim: dict, classes: int) -> torch.nn.Module | None:
    """A full-precision timm model to distil from (optim.distill.teacher), with its weights
    from `checkpoint` (a local file, read safely) or timm's `pretrained` ones (online)."""
    distill = optim.get("distill") or {}
    if not distill.get("teacher"):
        return None
    import timm
    teacher = timm.create_model(distill["teacher"], num_classes=classes,
                                pretrained=bool(distill.get("pretrained")) and not distill.get("checkpoint"),
                                **(distill.get("kwargs") or {}))
    if distill.get("checkpoint"):
        teacher.load_state_dict(state_dict_of(distill["checkpoint"], "optim.distill.checkpoint"))
    return teacher


def has_validation(datamodule) -> bool:
    """A held-out split of the training set (data.val_fraction > 0); never the test set."""
    flag = getattr(datamodule, "has_validation", None)
    return bool(flag if flag is not None else getattr(datamodule, "val_fraction", 0))


def build_loggers(cfg) -> list:
    return tracking.build_loggers(cfg)


def build_callbacks(cfg, validation: bool) -> list:
    """The configured callbacks, less those that monitor a validation metric when there is
    no validation split; Resumable makes resumption exact and signal-safe."""
    nodes = [n for n in (cfg.get("callbacks") or {}).values() if validation or not n.get("monitor")]
    callbacks = [*(instantiate(n) for n in nodes), Resumable(output_dir() / "checkpoints")]
    decay = OmegaConf.select(cfg, "optim.ema_decay", default=None)
    if decay is not None:   # the averaged weights are what is validated, saved, evaluated and converted
        callbacks.append(EMAWeightAveraging(decay=float(decay), use_buffers=True))
    return callbacks


def build_trainer(cfg, loggers, callbacks=(), **overrides) -> L.Trainer:
    """The configured trainer; its checkpoints are written atomically (engine/checkpoint_io.py)."""
    return instantiate(cfg.trainer, logger=loggers or False, callbacks=list(callbacks),
                       plugins=[AtomicCheckpointIO()], **overrides)


def snn_settings(cfg, model, pqa: dict) -> dict:
    """The SNN's settings with `auto` resolved (the values were checked in checks.py)."""
    snn = cfg.snn
    encoding = snn.encoding if snn.encoding != "auto" else getattr(model, "snn_encoding", "static")
    readout = snn.readout if snn.readout != "auto" else ("mean" if encoding == "static" else "sum")
    return {"neuron": snn.neuron or pqa["neuron"], "timesteps": snn.timesteps,
            "encoding": encoding, "readout": readout, "chunk": snn.get("chunk", "auto"),
            "fold_bn": bool(snn.get("fold_bn", False)), "kernels": snn.get("kernels", "auto")}


def training_kernels(cfg, datamodule, model) -> str:
    """The quantizer's kernels for training (snn.kernels; auto: compiled for long runs where
    torch.compile works here), set on the model's quantizers and said once."""
    steps = int(cfg.epochs) * math.ceil(len(datamodule.train_set) / datamodule.batch_size)  # one process's
    accelerator = str(cfg.trainer.get("accelerator", "cpu"))
    device = "cuda" if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()) else "cpu"
    choice = cfg.snn.get("kernels", "auto")
    if choice == "auto" and not pqa_layers(model):   # a float (ReLU) ANN: nothing to compile
        backend, why = "eager", "auto: the model has no quantizer"
    else:
        backend, why = kernels.training_backend(choice, steps, device, cfg.trainer.get("precision", "32-true"))
    kernels.use_kernels(model, backend)
    if rank_zero_only.rank == 0:
        print(f"training kernels: {backend} ({why})")
    return backend
