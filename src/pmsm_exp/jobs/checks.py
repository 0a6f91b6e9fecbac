"""Every config value checked before any work: one line naming the key, the value, what is allowed.

`check_train_config(cfg)` and `check_convert_config(cfg)` run first in pipeline.train()/convert(),
before a logger, a run folder or data is touched. `checked_model` then builds the model (the one
the job trains or converts, once) and tries its conversion, so a setting that cannot convert
(pqa=relu snn.neuron=aif) fails before training, not after it. `WritableLogDir` is a Hydra callback: Hydra creates the run folder before the job
starts, so an unwritable paths.log_dir must be caught before Hydra's own mkdir.
"""
from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from pmsm_exp.config import plain
from pmsm_exp.engine.switches import COMPILE_MODES
from pmsm_exp.engine.training import OPTIMIZERS, SCHEDULERS
from pmsm_exp.errors import CheckpointError, UserError
from pmsm_exp.jobs.builders import build_model, num_classes, resolve_pqa
from pmsm_exp.quant import check_pqa_params
from pmsm_exp.quant.kernels import CHOICES as KERNEL_CHOICES
from pmsm_exp.quant.pqa import PQAParamError
from pmsm_exp.runs.checkpoints import load_checkpoint
from pmsm_exp.snn import ENCODINGS, NEURONS, READOUTS, convert_to_snn
from pmsm_exp.snn.conversion import TOTAL_BOUNDED
from pmsm_exp.snn.simulation import check_settings

EVAL_CHECKPOINTS = ("last", "best")
PQA_KINDS = ("pqa", "relu")
# Lightning's precision names (its older aliases 64, 32, 16, "bf16" are accepted too)
PRECISIONS = ("32-true", "64-true", "bf16-mixed", "16-mixed", "bf16-true", "16-true")
PRECISION_ALIASES = (64, 32, 16, "64", "32", "16", "bf16")


def fail(key: str, value, allowed: str) -> None:
    raise UserError(f"{key}: got {value!r}; {allowed}")


def _int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def positive_int(cfg, key: str, optional: bool = False) -> None:
    v = OmegaConf.select(cfg, key)
    if v is None and optional:
        return
    if not (_int(v) and v > 0):
        fail(key, v, "must be a positive integer" + (" or null" if optional else ""))


def number(cfg, key: str, lo: float = -math.inf, hi: float = math.inf, lo_open=False, hi_open=False,
           optional: bool = False) -> None:
    v = OmegaConf.select(cfg, key)
    if v is None and optional:
        return
    ok = _num(v) and (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
    if not ok:
        if hi == math.inf:
            rule = f"a finite number {'>' if lo_open else '>='} {lo:g}"
        else:
            rule = f"a number in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
        fail(key, v, f"must be {rule}" + (" or null" if optional else ""))


def flag(cfg, key: str, default: bool):
    """A true/false key (absent: `default`); its value."""
    value = OmegaConf.select(cfg, key, default=default)
    if not isinstance(value, bool):
        fail(key, value, "must be true or false")
    return value


def one_of(cfg, key: str, allowed) -> None:
    v = OmegaConf.select(cfg, key)
    if v not in allowed:
        fail(key, v, "must be one of " + ", ".join(str(a) for a in allowed))


# ---------------------------------------------------------------- groups
def check_seed(cfg) -> None:
    v = cfg.get("seed")
    if not (_int(v) and 0 <= v < 2 ** 32):
        fail("seed", v, "must be an integer in [0, 2**32)")


def check_pqa(cfg) -> None:
    one_of(cfg, "pqa.kind", PQA_KINDS)
    positive_int(cfg, "pqa.levels")
    number(cfg, "pqa.threshold", 0, lo_open=True)
    one_of(cfg, "pqa.neuron", (*NEURONS, "none"))
    bounds = {}
    for key, rule in (("alpha", "<= 0"), ("beta", "> 0")):
        v = cfg.pqa[key]
        if v != "auto" and not _num(v):
            fail(f"pqa.{key}", v, f"must be 'auto' or a number {rule}")
        bounds[key] = None if v == "auto" else v
    try:
        check_pqa_params(cfg.pqa.levels, bounds["alpha"], bounds["beta"])
    except PQAParamError as err:
        fail(f"pqa.{err.param}", cfg.pqa[err.param], str(err))


def check_snn(cfg) -> None:
    positive_int(cfg, "snn.timesteps")
    one_of(cfg, "snn.encoding", ("auto", *ENCODINGS))
    one_of(cfg, "snn.readout", ("auto", *READOUTS))
    try:
        check_settings(cfg.snn.timesteps, ENCODINGS[0], READOUTS[0], cfg.snn.get("chunk"))
    except ValueError as err:
        raise UserError(f"snn.{err}") from None
    if "kernels" in cfg.snn:
        one_of(cfg, "snn.kernels", KERNEL_CHOICES)
    if "fold_bn" in cfg.snn and not isinstance(cfg.snn.fold_bn, bool):
        fail("snn.fold_bn", cfg.snn.fold_bn, "must be true or false")
    if cfg.snn.neuron is not None:
        one_of(cfg, "snn.neuron", (*NEURONS, "none"))


def check_optim(cfg) -> None:
    one_of(cfg, "optim.name", OPTIMIZERS)
    number(cfg, "optim.lr", 0, lo_open=True)
    number(cfg, "optim.weight_decay", 0, optional=True)
    number(cfg, "optim.momentum", 0, 1, optional=True)
    nesterov = flag(cfg, "optim.nesterov", False)
    if nesterov and not (OmegaConf.select(cfg, "optim.momentum", default=0.9) or 0) > 0:
        fail("optim.nesterov", nesterov, "Nesterov momentum needs optim.momentum > 0")
    flag(cfg, "optim.decay_all", True)
    number(cfg, "optim.threshold_floor", 0, lo_open=True, optional=True)
    number(cfg, "optim.warmup_epochs", 0, optional=True)
    number(cfg, "optim.threshold_lr_scale", 0, lo_open=True, optional=True)
    start = OmegaConf.select(cfg, "optim.quantize_from_epoch", default=0)
    epochs = OmegaConf.select(cfg, "epochs", default=None)
    if start is not None and not (_int(start) and start >= 0 and (epochs is None or not _int(epochs) or start < epochs)):
        fail("optim.quantize_from_epoch", start, f"must be an integer >= 0 and below epochs={epochs} (the last "
                                                 f"epochs must train the quantized network)")
    number(cfg, "optim.label_smoothing", 0, 1, hi_open=True, optional=True)
    number(cfg, "optim.ema_decay", 0, 1, lo_open=True, hi_open=True, optional=True)
    if OmegaConf.select(cfg, "optim.scheduler") is not None:
        one_of(cfg, "optim.scheduler", SCHEDULERS)


def check_data(cfg, keys=None) -> None:
    """The data values that are plain numbers; files are checked by the data modules themselves."""
    data = cfg.data
    for key in ("batch_size", "train_size", "test_size", "num_classes", "image_size"):
        if key in data and (keys is None or key in keys):
            positive_int(cfg, f"data.{key}", optional=key not in ("batch_size", "train_size", "test_size"))
    for key in ("train_subset", "test_subset"):
        if key in data:
            positive_int(cfg, f"data.{key}", optional=True)
    if "num_workers" in data and data.num_workers is not None:
        v = data.num_workers
        if not (_int(v) and v >= 0):
            fail("data.num_workers", v, "must be an integer >= 0")
    if data.get("val_fraction") is not None:
        number(cfg, "data.val_fraction", 0, 1, hi_open=True)
    if "on_device" in data and not (isinstance(data.on_device, bool) or data.on_device == "auto"):
        fail("data.on_device", data.on_device, "must be true, false or auto (on the device when training on a GPU)")


def check_model_switches(cfg) -> None:
    """model.channels_last and model.compile (engine/switches.py); absent keys are off. In convert.py
    null means "as the checkpoint's training run"."""
    model = OmegaConf.select(cfg, "model", default=None) or {}
    nullable = cfg.get("task_name") == "convert"
    value = model.get("channels_last", False)
    if not (isinstance(value, bool) or (nullable and value is None)):
        fail("model.channels_last", value, "must be true or false" + (" or null" if nullable else ""))
    value = model.get("compile", False)
    if not (isinstance(value, bool) or value in COMPILE_MODES or (nullable and value is None)):
        fail("model.compile", value, "must be true, false or a torch.compile mode: " + ", ".join(COMPILE_MODES))


def check_model_init(cfg) -> None:
    """model.zero_init_residual (ResNet): how a train job initialises the model; absent is off."""
    value = (OmegaConf.select(cfg, "model", default=None) or {}).get("zero_init_residual", False)
    if not isinstance(value, bool):
        fail("model.zero_init_residual", value, "must be true or false (true: each residual block's last "
             "BatchNorm scale starts at 0)")


def check_trainer(cfg) -> None:
    accelerator = OmegaConf.select(cfg, "trainer.accelerator")
    precision = OmegaConf.select(cfg, "trainer.precision")
    if precision not in PRECISIONS + PRECISION_ALIASES:
        fail("trainer.precision", precision, "must be one of " + ", ".join(PRECISIONS))
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        fail("trainer.accelerator", accelerator, "no CUDA GPU is visible on this machine; use trainer=cpu "
             "(or accelerator=auto)")
    if str(precision) in ("16-mixed", "16") and accelerator == "cpu":
        fail("trainer.precision", precision, "float16 autocast does not run on a CPU: use bf16-mixed or 32-true")
    if (str(precision).startswith("bf16") and accelerator in ("gpu", "cuda")
            and not torch.cuda.is_bf16_supported(including_emulation=False)):
        fail("trainer.precision", precision, "this GPU has no bfloat16 arithmetic (it needs compute capability "
             ">= 8.0): use 16-mixed or 32-true")


def check_encoding(model: nn.Module, name, neuron: str, encoding: str) -> None:
    """The input encoding is the one the model's conversion is built for: a CNN's biases and BatchNorm
    shifts enter at every step (the image at every step, the mean of the outputs), a ViT's once."""
    own = getattr(model, "snn_encoding", "static")
    if encoding not in ("auto", own):
        fail("snn.encoding", encoding, f"model={name} is converted for {own!r} input; leave snn.encoding=auto")
    if neuron in TOTAL_BOUNDED and own == "static":
        fail("snn.neuron", neuron, f"its spike total is held to one quantized value, which needs the input once "
             f"(a ViT); model={name} sees the image at every step and would fall to chance over T: use aif")


def checked_model(model_cfg: dict, pqa: dict, neuron: str, classes: int, state: dict | None = None,
                  ckpt_path=None, encoding: str = "auto") -> nn.Module:
    """The job's model, built (with its starting weights, or `state` from a checkpoint) and tried
    through conversion as evaluation will convert it; every failure one line."""
    try:
        model = build_model(model_cfg, pqa, classes)
    except (ValueError, TypeError) as err:
        raise UserError(f"model: cannot build {model_cfg.get('name')!r} with these settings: "
                        f"{str(err).splitlines()[0]}") from None
    if state is not None:  # the learned thresholds decide convertibility (lambda > 0)
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise CheckpointError(f"checkpoint {ckpt_path} does not fit model {model_cfg.get('name')}: "
                                  f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    if neuron != "none":
        check_encoding(model, model_cfg.get("name"), neuron, encoding)
        try:
            with torch.random.fork_rng(devices=[]):   # a trial: new layers draw initial weights, the run must not see it
                convert_to_snn(model, neuron)
        except ValueError as err:
            raise UserError(f"snn.neuron: got {neuron!r}; cannot convert model={model_cfg.get('name')} with pqa "
                            f"kind={pqa.get('kind')!r}, alpha={pqa.get('alpha')}: {str(err).splitlines()[0]}") from None
    return model


def job_neuron(cfg, pqa: dict) -> str:
    neuron = cfg.snn.neuron or pqa.get("neuron") or "none"
    if neuron == "if" and pqa.get("alpha", 0) != 0:
        fail("snn.neuron", neuron, f"the QCFS IF neuron needs pqa.alpha=0 (got alpha={pqa['alpha']}); use pqa=qcfs "
             "or snn.neuron=aif")
    return neuron


def check_schedule(cfg) -> None:
    """Training length and the checkpoint to evaluate: never one chosen on the test set."""
    positive_int(cfg, "epochs")
    one_of(cfg, "eval_checkpoint", EVAL_CHECKPOINTS)
    if cfg.eval_checkpoint == "best" and not (cfg.data.get("val_fraction") or 0) > 0:
        fail("eval_checkpoint", "best", "best is chosen on a validation split, and data.val_fraction=0 holds none "
             "out (never choose on the test set): use eval_checkpoint=last or data.val_fraction>0")


# ---------------------------------------------------------------- the two jobs
def check_train_config(cfg: DictConfig) -> dict:
    """Every value of a train job; returns the resolved quantizer settings (alpha/beta 'auto'
    chosen once, here)."""
    check_seed(cfg)
    check_schedule(cfg)
    check_optim(cfg)
    check_data(cfg)
    check_pqa(cfg)
    check_snn(cfg)
    check_model_switches(cfg)
    check_model_init(cfg)
    check_trainer(cfg)
    classes = num_classes(plain(cfg.data))
    if classes is None:
        fail("data.num_classes", None, f"data.name={cfg.data.name!r} needs data.num_classes (a positive integer)")
    try:
        return resolve_pqa(cfg.pqa)
    except ValueError as err:
        raise UserError(f"pqa: {str(err).splitlines()[0]}") from None


CONVERT_DATA_KEYS = ("data_dir", "batch_size", "num_workers", "test_subset")
NOT_REBUILT = ("pretrained", "checkpoint")   # starting weights: a convert job's come from its checkpoint


def check_convert_config(cfg: DictConfig) -> tuple[dict, nn.Module, dict | None]:
    """Checks convert.py's own values and the checkpoint; returns (the stored run config, the
    trained model with the checkpoint's weights, its conversion tried, the training provenance)."""
    if OmegaConf.is_missing(cfg, "ckpt_path") or not cfg.ckpt_path:
        raise UserError("ckpt_path: missing; give ckpt_path=PATH to a .ckpt written by train.py, "
                        "e.g. logs/train/runs/<date>/checkpoints/last.ckpt")
    check_seed(cfg)
    check_snn(cfg)
    check_model_switches(cfg)
    check_trainer(cfg)
    data = {k: v for k, v in plain(cfg.data).items() if v is not None}
    for key in ("batch_size", "test_subset"):
        if key in data:
            positive_int(cfg, f"data.{key}")
    if "num_workers" in data and not (_int(data["num_workers"]) and data["num_workers"] >= 0):
        fail("data.num_workers", data["num_workers"], "must be an integer >= 0")
    stored, state, trained_by = load_checkpoint(cfg.ckpt_path)
    trained_on = stored.get("data", {})
    if "name" in data and data["name"] != trained_on.get("name"):
        fail("data.name", data["name"], f"the checkpoint {cfg.ckpt_path} was trained on "
             f"{trained_on.get('name')!r}; convert.py evaluates on that data set (leave data.name unset)")
    unknown = sorted(set(data) - set(trained_on) - set(CONVERT_DATA_KEYS))
    if unknown:
        fail(f"data.{unknown[0]}", data[unknown[0]], f"not a setting of the checkpoint's data config "
             f"({trained_on.get('name')}: {', '.join(sorted(trained_on))})")
    pqa = stored.get("pqa", {})
    model_cfg = {k: v for k, v in stored.get("model", {}).items() if k not in NOT_REBUILT}
    model = checked_model(model_cfg, pqa, job_neuron(cfg, pqa), num_classes(trained_on) or 10, state, cfg.ckpt_path,
                          encoding=cfg.snn.encoding)
    return stored, model, trained_by


# ---------------------------------------------------------------- paths (before Hydra's mkdir)
def unwritable(directory: str | Path) -> str | None:
    """Why `directory` cannot be created or written to, or None. Creates nothing."""
    path = Path(directory).expanduser().absolute()
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is a file, not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing} is not writable"
    return None


try:
    from hydra.experimental.callback import Callback as _HydraCallback
except ImportError:  # pragma: no cover
    _HydraCallback = object


class WritableLogDir(_HydraCallback):
    """Hydra creates the run folder under paths.log_dir before the job runs, where a job cannot
    catch the error; this callback refuses an unwritable one first, in one line. Hydra swallows
    exceptions raised by callbacks, hence the explicit exit (outside any job)."""

    def _check(self, config, key: str) -> None:
        try:
            directory = OmegaConf.select(config, key)
            log_dir = OmegaConf.select(config, "paths.log_dir")
        except Exception:  # noqa: BLE001 (an unresolvable folder is Hydra's to report)
            return
        why = unwritable(directory) if directory else None
        if why:
            sys.stderr.write(f"paths.log_dir: got {log_dir!r}; {why}: give a writable folder "
                             f"(paths.log_dir=PATH)\n")
            sys.exit(1)

    def on_run_start(self, config, **kwargs) -> None:
        self._check(config, "hydra.run.dir")

    def on_multirun_start(self, config, **kwargs) -> None:
        self._check(config, "hydra.sweep.dir")
