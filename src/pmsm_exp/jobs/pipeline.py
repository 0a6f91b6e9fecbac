"""What train.py and convert.py do, top to bottom: config -> data + model ->
train (QANN) -> convert -> simulate -> metrics.json, W&B and a terminal table."""
from __future__ import annotations

import time
from pathlib import Path

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from omegaconf import OmegaConf

from pmsm_exp.config import plain
from pmsm_exp.data import fingerprint
from pmsm_exp.engine import switches
from pmsm_exp.engine.callbacks import StopOnDivergence
from pmsm_exp.engine.evaluation import EvalModule, shard_test_loader
from pmsm_exp.engine.training import QANNModule
from pmsm_exp.jobs.builders import (build_callbacks, build_datamodule, build_loggers, build_teacher, build_trainer,
                                    has_validation, output_dir, run_switches, snn_settings, training_kernels)
from pmsm_exp.jobs.checks import check_convert_config, check_train_config, checked_model, job_neuron
from pmsm_exp.models.weights import read_weights
from pmsm_exp.quant import kernels
from pmsm_exp.runs import folders, provenance, records, tracking
from pmsm_exp.snn import convert_to_snn, fold_batchnorm


# ---------------------------------------------------------------- evaluating
def evaluate(cfg, qann, datamodule, pqa: dict, loggers) -> tuple[dict, dict]:
    """QANN accuracy and, unless the model is a float ANN, its SNN at t = 1..T;
    with analysis=full also spikes, SOPs, energy and conversion error per layer."""
    settings = snn_settings(cfg, qann, pqa)
    if settings["fold_bn"] and settings["neuron"] != "none":   # the folded QANN is then the reference
        qann, _ = fold_batchnorm(qann, torch.zeros(1, *datamodule.image_shape))
    kernels.use_kernels(qann, kernels.eval_backend(settings["kernels"]))
    snn = None if settings["neuron"] == "none" else convert_to_snn(qann, settings["neuron"])
    module = EvalModule(qann, snn, settings["timesteps"], settings["encoding"], settings["readout"], settings["chunk"],
                        channels_last=run_switches(cfg.model)["channels_last"])
    # each rank evaluates its own share of the test set, no image twice (see lit.shard_test_loader);
    # a mixed-precision (autocast) training run is evaluated in float32 (switches.eval_precision)
    trainer = build_trainer(cfg, loggers, max_epochs=1, use_distributed_sampler=False,
                            precision=switches.eval_precision(cfg.trainer.precision))
    shard_test_loader(datamodule)
    trainer.test(module, datamodule=datamodule, verbose=False)
    results = module.results
    results["data"] = data_record(cfg, datamodule, results.pop("images"))
    results["qann"]["reference"] = "bn_folded" if settings["fold_bn"] and snn is not None else "as_trained"
    if cfg.analysis.enabled and snn is not None and trainer.is_global_zero:
        module.to(module.eval_device)  # Lightning moved it back to the CPU after testing
        results["analysis"] = analyze_run(cfg, module, datamodule, settings)
    return results, settings


def analyze_run(cfg, module: EvalModule, datamodule, settings: dict) -> dict:
    from pmsm_exp.analysis.analyze import analyze  # matplotlib only when asked for
    if settings["encoding"] != "static":
        raise ValueError(f"analysis=full supports static encoding (the CNNs), got encoding={settings['encoding']!r}")
    out_dir = output_dir() / "analysis"
    loader = getattr(datamodule, "_unsharded_test_dataloader", datamodule.test_dataloader)()  # the whole test set
    return analyze(module.qann, module.snn, loader, settings["timesteps"], out_dir,
                   label=cfg.pqa.method, max_batches=cfg.analysis.get("max_batches"), device=module.eval_device)


def log_root(cfg) -> Path:
    return Path(str(cfg.paths.log_dir)).expanduser().absolute()


def relative_to_logs(cfg, path) -> str:
    """A path as records keep it: relative to the log root where it lies below it."""
    if not path:
        return ""
    path = Path(str(path)).absolute()
    root = log_root(cfg)
    return path.relative_to(root).as_posix() if root in path.parents else provenance.portable(str(path), root)


def data_record(cfg, datamodule, test_images: int) -> dict:
    """What data the numbers come from: images used (after subsets and the validation split) and a
    fingerprint of the test set's pixels and labels."""
    count = lambda part: len(part) if part is not None else 0  # noqa: E731
    return {"name": cfg.data.name, "train_images": count(getattr(datamodule, "train_set", None)),
            "val_images": count(getattr(datamodule, "val_set", None)), "test_images": int(test_images),
            "fingerprint": fingerprint(datamodule.test_set)}


def training_record(trainer, module: QANNModule, resumed_from: str | None) -> dict:
    final = {k: trainer.callback_metrics.get(k) for k in ("train/loss", "val/acc", "val/loss")}
    now = time.time()   # one clock reading, so wall_s = the checkpoint's time + wall_s_this_run exactly
    # wall_s: over every process behind the weights (a resumed run adds the time kept in its checkpoint)
    return {"epochs": int(trainer.current_epoch), "steps": int(trainer.global_step),
            "steps_this_run": module.steps_this_run, "wall_s": round(module.training_wall_s(now), 3),
            "wall_s_this_run": round(module.wall_s_this_run(now), 3),
            "final_train_loss": float(final["train/loss"]) if final["train/loss"] is not None else None,
            # on the held-out split of the training set (data.val_fraction > 0), after the last epoch
            "final_val_acc": float(final["val/acc"]) if final["val/acc"] is not None else None,
            "final_val_loss": float(final["val/loss"]) if final["val/loss"] is not None else None,
            "lr_schedule": module.schedule, "resumed_from": resumed_from}


def run_record(cfg, pqa: dict, settings: dict, extra: dict | None = None) -> dict:
    method = pqa["method"]
    if settings["neuron"] not in (pqa["neuron"], "none"):  # converted with another neuron: its own table row
        method = f"{method}+{settings['neuron']}"
    record = {
        "task": cfg.task_name, "experiment": cfg.experiment_name,
        "model": cfg.model.name, "data": cfg.data.name, "method": method,
        "pqa": {k: pqa[k] for k in ("levels", "alpha", "beta", "threshold")},
        "seed": int(cfg.seed), "overrides": provenance.portable(list(HydraConfig.get().overrides.task), log_root(cfg)),
        "snn": settings, "folder": relative_to_logs(cfg, output_dir()),
    }
    if "entropy_choice" in pqa:
        record["pqa"]["entropy_choice"] = pqa["entropy_choice"]
    return {**record, **(extra or {})}


def finish(cfg, record: dict, results: dict, loggers, checkpoint: str = "", **more) -> dict:
    """metrics.json (results, where the data and code came from, the resolved config), W&B, the table."""
    out_dir = output_dir()
    record["checkpoint"] = relative_to_logs(cfg, checkpoint)
    metrics = {"run": record, **results, **more, "config": provenance.portable(plain(cfg), log_root(cfg)),
               "provenance": provenance.collect(cfg.task_name, HydraConfig.get().overrides.task, log_root(cfg))}
    if rank_zero_only.rank != 0:  # DDP: the other ranks evaluated their share; rank zero reports
        return metrics
    records.write_metrics(out_dir, metrics, records.FINISHED)
    tracking.finish(loggers, metrics, checkpoint)  # W&B charts, tables, artifacts; closes the run before the table prints
    table = summary_table(metrics, out_dir)
    (out_dir / "summary.txt").write_text(table.lstrip("\n") + "\n")
    print(table)
    return metrics


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
    pqa = check_train_config(cfg)   # every value, before any work; alpha/beta resolved once
    resume_from = folders.resume_checkpoint(cfg.get("resume"), output_dir())   # readable, or one line now
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = build_datamodule(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    # built once (its initial weights from the seed), its conversion tried before training
    model = checked_model(plain(cfg.model), pqa, job_neuron(cfg, pqa), datamodule.num_classes,
                          encoding=cfg.snn.encoding)
    kernels_used = training_kernels(cfg, datamodule, model)
    run_config = plain(cfg)
    run_config["pqa"] = pqa
    optim = plain(cfg.optim)
    module = QANNModule(model, datamodule.num_classes, optim, run_config, build_teacher(optim, datamodule.num_classes),
                        provenance=provenance.in_checkpoint(), **run_switches(cfg.model))
    loggers = build_loggers(cfg)
    tracking.start(loggers, run_config, model)
    validation = has_validation(datamodule)
    callbacks = [*build_callbacks(cfg, validation), StopOnDivergence()]
    callbacks = [c for c in callbacks if loggers or not isinstance(c, LearningRateMonitor)]  # logger=none
    trainer = build_trainer(cfg, loggers, callbacks,
                            **({} if validation else {"limit_val_batches": 0, "num_sanity_val_steps": 0}))
    if resume_from and rank_zero_only.rank == 0:
        print(f"resuming from {resume_from}")
    module.clock_started = time.time()
    trainer.fit(module, datamodule=datamodule, ckpt_path=resume_from, weights_only=True)  # never unpickle code
    training = training_record(trainer, module, relative_to_logs(cfg, resume_from) or None)
    last = output_dir() / folders.LAST
    ckpt_path = str(last) if last.is_file() else ""
    best = [c.best_model_path for c in trainer.checkpoint_callbacks if c.monitor and c.best_model_path]
    if cfg.eval_checkpoint == "best" and best:
        ckpt_path = best[0]
        load_student(module, ckpt_path)
    results, settings = evaluate(cfg, module.model, datamodule, pqa, loggers)
    return finish(cfg, run_record(cfg, pqa, settings, {"training_kernels": kernels_used}), results, loggers,
                  ckpt_path, training=training)


def data_dir_here(stored: dict, overrides: dict, here: str | None) -> dict:
    """The data config a convert job reads: the checkpoint's, with this command's values; its data folder
    where it exists on this machine, else this machine's paths.data_dir (PMSM_DATA_DIR): a published
    checkpoint records `<elsewhere>/data`, never the folder of the machine that trained it."""
    data = {**stored, **overrides}
    kept = data.get("data_dir")
    if "data_dir" not in overrides and kept is not None and here is not None and not Path(str(kept)).is_dir():
        data["data_dir"] = here
    return data


def convert(cfg) -> dict:
    stored, model, trained_by = check_convert_config(cfg)   # reads the checkpoint, builds and tries the model
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    data_overrides = {k: v for k, v in plain(cfg.data).items() if v is not None}
    OmegaConf.set_struct(cfg, False)
    # the weights come from the checkpoint: never fetch or load starting weights again; a
    # non-null model.channels_last of this command (trainer=gpu sets it) replaces the training run's
    own = {k: v for k, v in plain(cfg.get("model") or {}).items() if k in switches.RUN_KEYS and v is not None}
    cfg.model = {**{k: v for k, v in stored["model"].items() if k not in ("pretrained", "checkpoint")}, **own}
    cfg.data = data_dir_here(stored["data"], data_overrides, (cfg.get("paths") or {}).get("data_dir"))
    cfg.pqa = {k: v for k, v in stored["pqa"].items() if k != "entropy_choice"}
    pqa = stored["pqa"]
    datamodule = build_datamodule(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("test")
    loggers = build_loggers(cfg)
    tracking.start(loggers, {**plain(cfg), "pqa": pqa}, model, trained=stored, checkpoint=cfg.ckpt_path)
    results, settings = evaluate(cfg, model, datamodule, pqa, loggers)
    # what trained the weights: the code (None: a checkpoint from before provenance was recorded) and its config
    trained = {"provenance": trained_by, "config": provenance.portable(stored, log_root(cfg))}
    return finish(cfg, run_record(cfg, pqa, settings), results, loggers, str(cfg.ckpt_path), trained=trained)
