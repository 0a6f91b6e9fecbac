"""What train.py and convert.py do, top to bottom: config -> data + model ->
train (QANN) -> convert -> simulate -> metrics.json, W&B and a terminal table."""
from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import LearningRateMonitor
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from pmsm_exp import fused, records, runs, speed, tracking
from pmsm_exp.analysis.entropy import PAPER_ALPHAS, PAPER_BETAS, choose_alpha_beta
from pmsm_exp.callbacks import StopOnDivergence
from pmsm_exp.checkpoints import CheckpointError, read_weights  # noqa: F401  (CheckpointError: cli.py)
from pmsm_exp.checks import check_convert_config, check_train_config
from pmsm_exp.conversion import convert_to_snn
from pmsm_exp.data import create_datamodule
from pmsm_exp.folding import fold_batchnorm
from pmsm_exp.lit import EvalModule, QANNModule, shard_test_loader
from pmsm_exp.models import create_model
from pmsm_exp.preemption import Resumable
from pmsm_exp.quant import make_activation, pqa_layers
from pmsm_exp.simulate import check_settings

# ---------------------------------------------------------------- building
def plain(node) -> dict:
    """A config node (or a dict from a checkpoint) as a plain, resolved dict."""
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)


def build_datamodule(data_cfg) -> L.LightningDataModule:
    kwargs = plain(data_cfg)
    return create_datamodule(kwargs.pop("name"), **kwargs)


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


def build_model(model_cfg, pqa: dict, num_classes: int) -> torch.nn.Module:
    activation = make_activation(pqa["kind"], pqa["levels"], pqa["alpha"], pqa["beta"], pqa["threshold"])
    kwargs, _ = speed.split_model_config(plain(model_cfg))  # channels_last, compile: how it runs (speed.py)
    return create_model(kwargs.pop("name"), num_classes, activation, **kwargs)


def run_switches(model_cfg) -> dict:
    """model.channels_last and model.compile (speed.py), false when absent (older checkpoints)."""
    _, switches = speed.split_model_config(plain(model_cfg))
    return {"channels_last": bool(switches.get("channels_last", False)), "compile": switches.get("compile", False)}


def build_teacher(optim: dict, num_classes: int) -> torch.nn.Module | None:
    """A full-precision timm model to distil from (optim.distill.teacher), with its weights
    from `checkpoint` (a local file) or timm's `pretrained` ones (online)."""
    distill = optim.get("distill") or {}
    if not distill.get("teacher"):
        return None
    import timm
    teacher = timm.create_model(distill["teacher"], num_classes=num_classes,
                                pretrained=bool(distill.get("pretrained")) and not distill.get("checkpoint"),
                                **(distill.get("kwargs") or {}))
    if distill.get("checkpoint"):
        state = torch.load(distill["checkpoint"], map_location="cpu", weights_only=True)
        teacher.load_state_dict(state.get("state_dict", state.get("model", state)))
    return teacher


def output_dir() -> Path:
    return Path(HydraConfig.get().runtime.output_dir)


def build_loggers(cfg) -> list:
    return tracking.build_loggers(cfg)


def has_validation(datamodule) -> bool:
    """A held-out split of the training set (data.val_fraction > 0); never the test set."""
    flag = getattr(datamodule, "has_validation", None)
    return bool(flag if flag is not None else getattr(datamodule, "val_fraction", 0))


def build_callbacks(cfg, validation: bool) -> list:
    """The configured callbacks, less those that monitor a validation metric when there is
    no validation split; Resumable makes resumption exact and signal-safe."""
    nodes = [n for n in (cfg.get("callbacks") or {}).values() if validation or not n.get("monitor")]
    return [*(instantiate(n) for n in nodes), Resumable(output_dir() / "checkpoints")]


def build_trainer(cfg, loggers, callbacks=(), **overrides) -> L.Trainer:
    return instantiate(cfg.trainer, logger=loggers or False, callbacks=list(callbacks), **overrides)


def snn_settings(cfg, model, pqa: dict) -> dict:
    snn = cfg.snn
    encoding = snn.encoding if snn.encoding != "auto" else getattr(model, "snn_encoding", "static")
    readout = snn.readout if snn.readout != "auto" else ("mean" if encoding == "static" else "sum")
    settings = {"neuron": snn.neuron or pqa["neuron"], "timesteps": snn.timesteps,
                "encoding": encoding, "readout": readout, "chunk": snn.get("chunk", "auto"),
                "fold_bn": bool(snn.get("fold_bn", False)), "kernels": snn.get("kernels", "auto")}
    # checked before training, so a typo cannot cost a finished training run
    check_settings(settings["timesteps"], encoding, readout, settings["chunk"])
    fused.set_backend(fused.eval_backend(settings["kernels"]))  # neuron choices: checks.py, before any work
    return settings


def training_kernels(cfg, datamodule, model) -> str:
    """Sets the quantizer's kernels for training (snn.kernels; auto: compiled for long runs where
    torch.compile works here) and says which, once."""
    steps = int(cfg.epochs) * math.ceil(len(datamodule.train_set) / datamodule.batch_size)  # one process's
    accelerator = str(cfg.trainer.get("accelerator", "cpu"))
    device = "cuda" if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()) else "cpu"
    choice = cfg.snn.get("kernels", "auto")
    if choice == "auto" and not pqa_layers(model):   # a float (ReLU) ANN: nothing to compile
        backend, why = "eager", "auto: the model has no quantizer"
    else:
        backend, why = fused.training_backend(choice, steps, device, cfg.trainer.get("precision", "32-true"))
    fused.set_backend(backend)
    if rank_zero_only.rank == 0:
        print(f"training kernels: {backend} ({why})")
    return backend


# ---------------------------------------------------------------- evaluating
def evaluate(cfg, qann, datamodule, pqa: dict, loggers) -> tuple[dict, dict]:
    """QANN accuracy and, unless the model is a float ANN, its SNN at t = 1..T;
    with analysis=full also spikes, SOPs, energy and conversion error per layer."""
    settings = snn_settings(cfg, qann, pqa)
    if settings["fold_bn"] and settings["neuron"] != "none":   # the folded QANN is then the reference
        qann, _ = fold_batchnorm(qann, torch.zeros(1, *datamodule.image_shape))
    snn = None if settings["neuron"] == "none" else convert_to_snn(qann, settings["neuron"])
    module = EvalModule(qann, snn, settings["timesteps"], settings["encoding"], settings["readout"], settings["chunk"],
                        channels_last=run_switches(cfg.model)["channels_last"])
    # each rank evaluates its own share of the test set, no image twice (see lit.shard_test_loader);
    # a mixed-precision (autocast) training run is evaluated in float32 (speed.eval_precision)
    trainer = build_trainer(cfg, loggers, max_epochs=1, use_distributed_sampler=False,
                            precision=speed.eval_precision(cfg.trainer.precision))
    shard_test_loader(datamodule)
    trainer.test(module, datamodule=datamodule, verbose=False)
    results = module.results
    results["qann"]["reference"] = "bn_folded" if settings["fold_bn"] and snn is not None else "as_trained"
    if cfg.analysis.enabled and snn is not None and trainer.is_global_zero:
        module.to(module.eval_device)  # Lightning moved it back to the CPU after testing
        results["analysis"] = run_analysis(cfg, module, datamodule, settings, loggers)
    return results, settings


def run_analysis(cfg, module: EvalModule, datamodule, settings: dict, loggers) -> dict:
    from pmsm_exp.analysis.run_analysis import analyze  # matplotlib only when asked for
    if settings["encoding"] != "static":
        raise ValueError(f"analysis=full supports static encoding (the CNNs), got encoding={settings['encoding']!r}")
    out_dir = output_dir() / "analysis"
    loader = getattr(datamodule, "_unsharded_test_dataloader", datamodule.test_dataloader)()  # the whole test set
    return analyze(module.qann, module.snn, loader, settings["timesteps"], out_dir,
                   label=cfg.pqa.method, max_batches=cfg.analysis.get("max_batches"), device=module.eval_device)


def run_record(cfg, pqa: dict, settings: dict, extra: dict | None = None) -> dict:
    method = pqa["method"]
    if settings["neuron"] not in (pqa["neuron"], "none"):  # converted with another neuron: its own table row
        method = f"{method}+{settings['neuron']}"
    record = {
        "task": cfg.task_name, "experiment": cfg.experiment_name,
        "model": cfg.model.name, "data": cfg.data.name, "method": method,
        "pqa": {k: pqa[k] for k in ("levels", "alpha", "beta", "threshold")},
        "seed": int(cfg.seed), "overrides": list(HydraConfig.get().overrides.task),
        "snn": settings,
    }
    if "entropy_choice" in pqa:
        record["pqa"]["entropy_choice"] = pqa["entropy_choice"]
    return {**record, **(extra or {})}


def finish(cfg, record: dict, results: dict, loggers) -> dict:
    out_dir = output_dir()
    metrics = {"run": record, **results}
    if rank_zero_only.rank != 0:  # DDP: the other ranks evaluated their share; rank zero reports
        return metrics
    records.write_metrics(out_dir, metrics, records.FINISHED)
    tracking.finish(loggers, metrics)  # W&B charts, tables, artifacts; closes the run before the table prints
    table = summary_table(metrics, out_dir)
    (out_dir / "summary.txt").write_text(table.lstrip("\n") + "\n")
    print(table)
    return metrics


def close_wandb(exit_code: int | None = None) -> None:
    tracking.close(exit_code)


def summary_table(metrics: dict, out_dir: Path) -> str:
    run, snn = metrics["run"], metrics.get("snn")
    lines = [f"\n{run['model']} on {run['data']}, {run['method']} "
             f"(L={run['pqa']['levels']}, alpha={run['pqa']['alpha']}, beta={run['pqa']['beta']})",
             f"QANN test accuracy: {100 * metrics['qann']['test_acc']:.2f}%"]
    if snn:
        lines.append(f"{'T':>4} {'SNN acc':>9} {'agreement':>10} {'spikes/img':>12} {'power mW':>10}")
        for i, t in enumerate(snn["timesteps"]):
            lines.append(f"{t:>4} {100 * snn['test_acc'][i]:>8.2f}% {100 * snn['agreement'][i]:>9.2f}% "
                         f"{snn['spikes_per_image'][i]:>12.4g} {snn['power_mw'][i]:>10.4g}")
    lines.append(f"run directory: {out_dir}")
    return "\n".join(lines)


# ---------------------------------------------------------------- the two jobs
def load_student(module: QANNModule, ckpt_path: str) -> None:
    """The trained model's weights from a checkpoint, strictly; a distillation teacher is left
    as it is (its keys are never saved: QANNModule.on_save_checkpoint)."""
    state = read_weights(ckpt_path)["state_dict"]
    module.model.load_state_dict({k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")})


def train(cfg) -> dict:
    check_train_config(cfg)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    pqa = resolve_pqa(cfg.pqa)
    datamodule = build_datamodule(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    model = build_model(cfg.model, pqa, datamodule.num_classes)
    snn_settings(cfg, model, pqa)
    kernels = training_kernels(cfg, datamodule, model)
    run_config = OmegaConf.to_container(cfg, resolve=True)
    run_config["pqa"] = pqa
    optim = plain(cfg.optim)
    module = QANNModule(model, datamodule.num_classes, optim, run_config, build_teacher(optim, datamodule.num_classes),
                        **run_switches(cfg.model))
    loggers = build_loggers(cfg)
    tracking.start(loggers, run_config, model)
    validation = has_validation(datamodule)
    callbacks = [*build_callbacks(cfg, validation), StopOnDivergence()]
    callbacks = [c for c in callbacks if loggers or not isinstance(c, LearningRateMonitor)]  # logger=none
    trainer = build_trainer(cfg, loggers, callbacks,
                            **({} if validation else {"limit_val_batches": 0, "num_sanity_val_steps": 0}))
    resume_from = runs.resume_checkpoint(cfg.get("resume"), output_dir())
    if resume_from and rank_zero_only.rank == 0:
        print(f"resuming from {resume_from}")
    trainer.fit(module, datamodule=datamodule, ckpt_path=resume_from, weights_only=True)  # never unpickle code
    last = output_dir() / runs.LAST
    ckpt_path = str(last) if last.is_file() else ""
    best = [c.best_model_path for c in trainer.checkpoint_callbacks if c.monitor and c.best_model_path]
    if cfg.eval_checkpoint == "best" and best:
        ckpt_path = best[0]
        load_student(module, ckpt_path)
    results, settings = evaluate(cfg, module.model, datamodule, pqa, loggers)
    return finish(cfg, run_record(cfg, pqa, settings, {"checkpoint": ckpt_path, "training_kernels": kernels}),
                  results, loggers)


def convert(cfg) -> dict:
    stored, state = check_convert_config(cfg)  # also reads the checkpoint (weights_only)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    data_overrides = {k: v for k, v in plain(cfg.data).items() if v is not None}
    OmegaConf.set_struct(cfg, False)
    # the weights come from the checkpoint: never fetch or load starting weights again; a
    # non-null model.channels_last of this command (trainer=gpu sets it) replaces the training run's
    own = {k: v for k, v in plain(cfg.get("model") or {}).items() if k in speed.RUN_KEYS and v is not None}
    cfg.model = {**{k: v for k, v in stored["model"].items() if k not in ("pretrained", "checkpoint")}, **own}
    cfg.data = {**stored["data"], **data_overrides}
    cfg.pqa = {k: v for k, v in stored["pqa"].items() if k != "entropy_choice"}
    pqa = stored["pqa"]
    datamodule = build_datamodule(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("test")
    model = build_model(cfg.model, pqa, datamodule.num_classes)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"checkpoint {cfg.ckpt_path} does not fit model {cfg.model.name}: "
                              f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    loggers = build_loggers(cfg)
    tracking.start(loggers, {**plain(cfg), "pqa": pqa}, model, trained=stored, checkpoint=cfg.ckpt_path)
    results, settings = evaluate(cfg, model, datamodule, pqa, loggers)
    return finish(cfg, run_record(cfg, pqa, settings, {"checkpoint": str(cfg.ckpt_path)}), results, loggers)
