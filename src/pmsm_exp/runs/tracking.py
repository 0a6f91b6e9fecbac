"""Weights & Biases for one job; jobs/pipeline.py only calls in (build_loggers, start, finish, close).

What a W&B run holds (offline by default; `logger=csv` / `logger=none` never import wandb):
- name from the job's overrides (`resnet20-cifar10-pmsm-a-0.25-s42`), group = experiment_name
  (or `sweep-<overridden keys>` for a multirun without one, e.g. `sweep-data,pqa.alpha`), job type train | convert | report,
  tags for model, data, method and the overridden values;
- config: the whole resolved config flattened with dots (`optim.lr`, `pqa.alpha`,
  `trainer.precision`...), parameter counts, git commit + dirty flag; a convert run carries the
  training run's config (from the checkpoint) under the same keys, its own keys on top;
- history: one row per timestep with `snn/timestep` as step metric, so accuracy, agreement,
  spikes, events and power over T are line charts that overlay across runs; the same as
  Tables (`tables/over_t`, `tables/layer_spikes`, `tables/conversion_error`);
- lineage: training logs its checkpoints as artifact `checkpoint-<run id>` (type model, alias =
  file stem: last, best); convert uses `checkpoint-<train id>:<stem>` (online), and always
  records that reference, the file and its md5 in its config (`checkpoint.*`), since W&B
  refuses `use_artifact` offline;
- the W&B id and group live in `<run dir>/wandb_id` and `wandb_group`, so a resumed job continues
  the same W&B run.

`python -m pmsm_exp.runs.tracking sync logs/train/multiruns/<experiment> logs/convert` uploads offline runs and
then links each convert run to the checkpoint artifact it used (untested against a server here).
"""
from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import string
import subprocess
import sys
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import OmegaConf

from pmsm_exp.config import plain
from pmsm_exp.errors import UserError
from pmsm_exp.runs.overrides import has_effect, key_of, parse, under
from pmsm_exp.runs.provenance import git_state
from pmsm_exp.runs.records import checkpoint_file

ID_FILE = "wandb_id"
GROUP_FILE = "wandb_group"
PROJECT = "pmsm-exp"
STEP = "snn/timestep"
# per-timestep history keys: metrics.json "snn" lists -> W&B keys
OVER_T = {"test_acc": "snn/test_acc", "agreement": "snn/agreement", "spikes_per_image": "snn/spikes_per_image",
          "spike_events_per_image": "snn/spike_events_per_image", "power_mw": "snn/power_mw"}
# with analysis=full: its summary lists -> W&B keys (the analysis may use fewer test batches)
ANALYSIS_OVER_T = {"conversion_error_mean": "analysis/conversion_error_mean", "sops_up_to": "analysis/sops_per_image",
                   "snn_energy_pj": "analysis/snn_energy_pj", "power_mw_events": "analysis/power_mw_events"}
CAPTIONS = {
    "layer_spikes": "|s| spikes and spike events per image in each neuron layer, summed over steps 1..T",
    "conversion_error": "per-layer conversion error |mean PSP up to t - QANN activation| over t (Fig. 6)",
    "accuracy_over_time": "SNN accuracy over t against the QANN's",
}
# short names in run names and tags; other keys use their last component
SHORT = {"pqa.alpha": "a", "pqa.beta": "b", "pqa.levels": "L", "pqa.threshold": "lam", "snn.timesteps": "T",
         "snn.neuron": "", "epochs": "e", "optim.lr": "lr", "optim.weight_decay": "wd"}
# besides the overrides that change nothing (runs/overrides.py): keys the name shows already
# (model, data, method, seed), and settings of how a run is carried out, left out to keep names short
NOT_IN_NAME = {"model", "data", "pqa", "snn", "experiment", "seed", "ckpt_path", "task_name", "experiment_name",
               "eval_checkpoint", "data.on_device", "model.channels_last", "model.compile"}
NOT_IN_NAME_GROUPS = ("trainer", "callbacks", "analysis")


# ---------------------------------------------------------------- identity
def _kept(out_dir, name: str, make) -> str:
    """A value kept in a file of the run folder, made on first use: a resumed job (same folder)
    gets the same W&B id and group, however it is relaunched."""
    path = Path(out_dir) / name
    if path.is_file():
        return path.read_text().strip()
    new = make()
    if rank_zero_only.rank == 0:  # other DDP ranks log nothing; rank 0 owns the file
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(new + "\n")
    return new


def run_id(out_dir) -> str:
    """The W&B id of the run in `out_dir`, created on first use: a resumed job reuses it."""
    return _kept(out_dir, ID_FILE, lambda: "".join(secrets.choice(string.ascii_lowercase + string.digits)
                                                   for _ in range(8)))


def _overrides(items) -> list[tuple[str, str]]:
    """(key, value) of the overrides that tell runs apart, in the order given; a later value of a key wins."""
    return [(k, v) for k, v in parse(items).items()
            if has_effect(k) and k not in NOT_IN_NAME and not under(k, NOT_IN_NAME_GROUPS)]


def _short(key: str, value: str) -> str:
    short = SHORT.get(key, key.rsplit(".", 1)[-1] + "_")
    return f"{short}{value}"


def run_name(model: str, data: str, method: str, overrides, seed) -> str:
    """`resnet20-cifar10-pmsm-a-0.25-s42`: what is in the config, then what the job overrode."""
    return "-".join([model, data, method, *(_short(k, v) for k, v in _overrides(overrides)), f"s{seed}"])


def _train_dir(checkpoint) -> Path | None:
    """The training run folder of `<run>/checkpoints/<name>.ckpt`."""
    path = Path(checkpoint).resolve()
    return path.parent.parent if path.parent.name == "checkpoints" else None


def _job_overrides(cfg) -> list[str]:
    overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    if cfg.task_name == "convert" and cfg.get("ckpt_path"):
        train_dir = _train_dir(cfg.ckpt_path)
        file = train_dir / ".hydra" / "overrides.yaml" if train_dir else None
        if file and file.is_file():  # the training job's sweep values name its convert runs too
            overrides = [*OmegaConf.load(file), *overrides]
    return overrides


def run_group(cfg) -> str:
    """experiment_name; for a multirun without one, `sweep-<the keys it overrides>` (the same for
    every job of the sweep and for a relaunch of it). Kept in the run folder (a job resumed on its
    own stays in its sweep's group); a convert run joins its training run's group."""
    if cfg.experiment_name != "default":
        return cfg.experiment_name
    if cfg.task_name == "convert" and cfg.get("ckpt_path"):
        train_dir = _train_dir(cfg.ckpt_path)
        kept = train_dir / GROUP_FILE if train_dir else None
        return kept.read_text().strip() if kept and kept.is_file() else cfg.experiment_name
    return _kept(cfg.paths.output_dir, GROUP_FILE, lambda: _sweep_group() or cfg.experiment_name)


def _sweep_group() -> str | None:
    hydra = HydraConfig.get() if HydraConfig.initialized() else None
    if hydra is None or hydra.mode != RunMode.MULTIRUN:
        return None
    keys = sorted({key_of(o) for o in hydra.overrides.task if has_effect(key_of(o))} - {"experiment", "seed"})
    return ("sweep-" + ",".join(keys))[:128]  # W&B's limit on group names


def _method(cfg) -> str:
    neuron = cfg.get("snn", {}).get("neuron")
    return cfg.pqa.method + (f"+{neuron}" if neuron and neuron != cfg.pqa.get("neuron") else "")


# ---------------------------------------------------------------- loggers
def is_wandb(logger) -> bool:
    return type(logger).__name__ == "WandbLogger"


def build_loggers(cfg) -> list:
    """The configured Lightning loggers; the W&B one named, grouped, tagged and given the run folder's id."""
    return [wandb_logger(cfg, node) if str(node.get("_target_", "")).endswith("WandbLogger") else instantiate(node)
            for node in (cfg.get("logger") or {}).values()]


def wandb_logger(cfg, node):
    import wandb  # only when a W&B logger is configured

    kwargs = plain(node)
    quiet = kwargs.pop("quiet", True)
    checkpoints = kwargs.pop("checkpoints", "reference")
    if checkpoints not in ("reference", "upload", "none"):
        raise UserError(f"logger.wandb.checkpoints: got {checkpoints!r}; allowed: reference, upload, none")
    overrides = _job_overrides(cfg)
    kwargs["name"] = kwargs.get("name") or run_name(cfg.model.name, cfg.data.name, _method(cfg), overrides, cfg.seed)
    kwargs["group"] = kwargs.get("group") or run_group(cfg)
    kwargs["job_type"] = kwargs.get("job_type") or cfg.task_name
    if kwargs.get("tags") is None:
        kwargs["tags"] = [cfg.model.name, cfg.data.name, _method(cfg), cfg.task_name,
                          *(f"{k.rsplit('.', 1)[-1]}={v}"[:64] for k, v in _overrides(overrides))]
    kwargs["id"] = kwargs.get("id") or run_id(cfg.paths.output_dir)
    kwargs.setdefault("resume", "allow")
    kwargs["settings"] = wandb.Settings(quiet=bool(quiet))  # no footer of sparklines after the result table
    logger = instantiate(kwargs)
    if getattr(logger, "_wandb_init", {}).get("anonymous", 0) is None:
        del logger._wandb_init["anonymous"]  # Lightning passes anonymous=None; wandb 0.31 warns about any value
    logger.pmsm_checkpoints = checkpoints
    return logger


def _runs(loggers) -> list:
    """The W&B runs behind `loggers` (none on ranks other than 0)."""
    if rank_zero_only.rank != 0:
        return []
    return [(lg, lg.experiment) for lg in loggers if is_wandb(lg)]


def close(exit_code: int | None = None) -> None:
    """One W&B run per job: without this a multirun logs every job into the first run. A failed job
    calls close(exit_code=1) so W&B marks its run failed. Never imports wandb: with logger=csv/none
    it is not loaded (or not installed), and then there is nothing to close."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        wandb.finish(exit_code=exit_code)


# ---------------------------------------------------------------- config
def flatten(d: dict, prefix: str = "", sep: str = ".") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(flatten(v, f"{prefix}{k}{sep}", sep))
        else:
            out[f"{prefix}{k}"] = v
    return out


def run_config(config: dict, model=None, trained: dict | None = None) -> dict:
    """The W&B config: `config` (resolved) flattened with dots; a convert run (`trained` = the training
    run's config) shows the training keys (optim.lr, epochs...) with its own on top."""
    flat = flatten(config)
    if trained is not None:
        flat.pop("epochs", None)  # convert.yaml's placeholder: the training run's epochs count
        flat = {**flatten(trained), **flat}
    if model is not None:
        flat["params.total"] = sum(p.numel() for p in model.parameters())
        flat["params.trainable"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    git = git_state()
    return {**flat, "git.commit": git["git_commit"], "git.dirty": git["git_dirty"]}


def md5_b64(path) -> str:
    """The digest W&B records for a file in an artifact manifest (base64 md5)."""
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return base64.b64encode(h.digest()).decode()


def _alias(path) -> str:
    return re.sub(r"[^\w.-]", "_", Path(path).stem)


def checkpoint_reference(checkpoint) -> dict:
    """Which training run's checkpoint artifact `checkpoint` is: config keys for the convert run."""
    path = Path(checkpoint).resolve()
    train_dir = _train_dir(path)
    train_id = (train_dir / ID_FILE).read_text().strip() if train_dir and (train_dir / ID_FILE).is_file() else None
    return {"checkpoint.path": str(path), "checkpoint.md5": md5_b64(path) if path.is_file() else None,
            "checkpoint.train_run_id": train_id, "checkpoint.train_run_dir": str(train_dir) if train_dir else None,
            "checkpoint.artifact": f"checkpoint-{train_id}:{_alias(path)}" if train_id else None}


def start(loggers, config: dict, model=None, trained: dict | None = None, checkpoint=None) -> None:
    """Put the config on the W&B run(s); a convert run also points at the checkpoint artifact it uses."""
    for _, run in _runs(loggers):
        values = run_config(config, model, trained)
        if checkpoint:
            ref = checkpoint_reference(checkpoint)
            values.update(ref)
            if ref["checkpoint.artifact"] and not run.offline:  # W&B refuses use_artifact offline
                try:
                    run.use_artifact(ref["checkpoint.artifact"], type="model")
                except Exception as err:  # e.g. the training run was never synced: the config keeps the reference
                    print(f"wandb: could not use artifact {ref['checkpoint.artifact']}: {err}".splitlines()[0],
                          file=sys.stderr)
        run.config.update(values, allow_val_change=True)


# ---------------------------------------------------------------- results
def _table(columns, rows):
    import wandb
    return wandb.Table(columns=list(columns), data=[list(r) for r in rows])


def log_results(run, metrics: dict) -> None:
    """Per-timestep history rows, the same as Tables, per-layer tables, images, scalar summary."""
    import wandb

    snn, analysis = metrics.get("snn"), metrics.get("analysis") or {}
    summary = {"qann/test_acc": metrics["qann"]["test_acc"]}
    if snn:
        steps = snn["timesteps"]
        over_t = {key: snn[src] for src, key in OVER_T.items() if src in snn}
        over_t.update({key: analysis[src] for src, key in ANALYSIS_OVER_T.items()
                       if len(analysis.get(src) or []) == len(steps)})
        run.define_metric(STEP)
        for key in over_t:
            run.define_metric(key, step_metric=STEP)
        for i, t in enumerate(steps):
            run.log({STEP: t, **{key: values[i] for key, values in over_t.items()}})
        columns = ["timestep", *(k.split("/", 1)[1] for k in over_t)]
        tables = {"tables/over_t": _table(columns, [[t, *(v[i] for v in over_t.values())] for i, t in enumerate(steps)])}
        if snn.get("layer_spikes"):
            tables["tables/layer_spikes"] = _table(
                ["layer", "timestep", "spikes_per_image"],
                [[name, t, v[i]] for name, v in snn["layer_spikes"].items() for i, t in enumerate(steps)])
        layers = {n: v["conversion_error"] for n, v in (analysis.get("layers") or {}).items()
                  if v.get("conversion_error")}
        if layers:
            layers["mean"] = analysis["conversion_error_mean"]
            tables["tables/conversion_error"] = _table(
                ["layer", "timestep", "conversion_error"],
                [[name, i + 1, e] for name, errors in layers.items() for i, e in enumerate(errors)])
        run.log(tables)
        # scalars per T for runs tables (Table 1: T=1 and 8): summary column snn_at.t1.test_acc
        summary["snn_at"] = {f"t{t}": {src: snn[src][i] for src in OVER_T if src in snn} for i, t in enumerate(steps)}
    images = {f"analysis/{Path(p).stem}": wandb.Image(p, caption=CAPTIONS.get(Path(p).stem, Path(p).stem))
              for k, p in sorted((analysis.get("files") or {}).items()) if k.endswith("_png") and Path(p).is_file()}
    if images:
        run.log(images)  # one key per image: sizes differ, one key would show them wrongly
    run.summary.update(summary)


def log_checkpoints(run, checkpoint: str, mode: str = "reference") -> None:
    """The run's checkpoints as versions of artifact `checkpoint-<run id>` (type model), alias = file stem.
    reference: W&B records path + md5 (no copy, no upload); upload: the file itself."""
    import wandb

    if mode == "none" or not checkpoint or not Path(checkpoint).is_file():
        return
    evaluated = Path(checkpoint).resolve()
    for path in sorted(evaluated.parent.glob("*.ckpt")):
        artifact = wandb.Artifact(f"checkpoint-{run.id}", type="model",
                                  metadata={"path": str(path), "evaluated": path == evaluated, "run_dir":
                                            str(_train_dir(path)) if _train_dir(path) else None})
        if mode == "upload":
            artifact.add_file(str(path), name=path.name, policy="immutable")
        else:
            artifact.add_reference(path.as_uri(), name=path.name)
        run.log_artifact(artifact, aliases=[_alias(path)] + (["evaluated"] if path == evaluated else []))


def finish(loggers, metrics: dict, checkpoint: str | None = None) -> None:
    """Log a finished job's results (and, for training, its `checkpoint` and those beside it), then close
    the W&B run quietly."""
    record = metrics["run"]
    for logger, run in _runs(loggers):
        # what the job resolved: its method label (pmsm+if), the snn settings behind "auto", its overrides
        run.config.update(flatten({"run": {k: record[k] for k in ("method", "snn", "overrides") if k in record}}),
                          allow_val_change=True)
        log_results(run, metrics)
        if record.get("task") == "train":
            log_checkpoints(run, checkpoint, getattr(logger, "pmsm_checkpoints", "reference"))
    close()


# ---------------------------------------------------------------- report runs
def log_report_table(name: str, rows: list[dict], group: str, *, out_dir=".", project: str = PROJECT,
                     config: dict | None = None, more: dict[str, list[dict]] | None = None,
                     run_name: str | None = None, mode: str | None = None) -> str:
    """One `job_type=report` run in `group` holding `rows` as W&B Table `report/<name>` (and each of
    `more` as `report/<key>`), so a dashboard shows the paper's table beside the runs. Offline unless
    `mode` or WANDB_MODE says online. Returns the run's folder."""
    import os

    import wandb

    run = wandb.init(project=project, job_type="report", group=group, name=run_name or f"report-{name}",
                     dir=str(out_dir), mode=mode or os.environ.get("WANDB_MODE", "offline"),
                     config=flatten(config or {}), tags=["report", name], settings=wandb.Settings(quiet=True),
                     reinit="create_new")
    try:
        tables = {name: rows, **(more or {})}
        run.log({f"report/{key}": _table(cols, [[row.get(c) for c in cols] for row in table])
                 for key, table in tables.items()
                 for cols in [list(dict.fromkeys(k for row in table for k in row))]})
        return str(Path(run.dir).parent)
    finally:
        run.finish()


# ---------------------------------------------------------------- syncing offline runs
def offline_run_dirs(paths) -> list[Path]:
    """Every `offline-run-*` folder under `paths`; training runs first (their artifacts must exist before
    a convert run can use them), each in time order (a resumed run's folders oldest first)."""
    dirs = {d.resolve() for p in paths for d in Path(p).rglob("offline-run-*") if d.is_dir()}
    return sorted(dirs, key=lambda d: (_task(d.parent.parent) != "train", d.name, str(d)))


def _task(run_dir: Path) -> str | None:
    try:
        return json.loads((run_dir / "metrics.json").read_text())["run"]["task"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def lineage_links(dirs) -> list[tuple[str, str, str]]:
    """(project, convert run id, checkpoint artifact) for each convert run among `dirs` whose checkpoint
    came from a training run folder with a W&B id."""
    links = []
    for run_dir in dict.fromkeys(d.parent.parent for d in dirs):
        if _task(run_dir) != "convert" or not (run_dir / ID_FILE).is_file():
            continue
        checkpoint = checkpoint_file(run_dir, json.loads((run_dir / "metrics.json").read_text()))
        artifact = checkpoint_reference(checkpoint)["checkpoint.artifact"] if checkpoint else None
        if artifact:
            saved = run_dir / ".hydra" / "config.yaml"
            project = OmegaConf.select(OmegaConf.load(saved), "logger.wandb.project") if saved.is_file() else None
            links.append((project or PROJECT, (run_dir / ID_FILE).read_text().strip(), artifact))
    return links


def sync(paths, dry_run: bool = False) -> list[str]:
    """`wandb sync` every offline run under `paths`, then link each convert run to the checkpoint
    artifact it used (W&B cannot record that offline). Returns what it did, one line each."""
    dirs = offline_run_dirs(paths)
    if not dirs:
        raise UserError(f"sync: no offline-run-* folders under {', '.join(map(str, paths))}")
    links = lineage_links(dirs)
    done = [f"wandb sync {' '.join(map(str, dirs))}"] + [f"link {p}/{run} uses {a}" for p, run, a in links]
    if dry_run:
        return done
    subprocess.run([sys.executable, "-m", "wandb", "sync", *map(str, dirs)], check=True)
    import wandb
    api = wandb.Api()
    for project, run, artifact in links:
        path = f"{api.default_entity}/{project}"
        try:
            api.run(f"{path}/{run}").use_artifact(api.artifact(f"{path}/{artifact}", type="model"))
        except Exception as err:  # e.g. the training run was never synced
            done.append(f"could not link {run} to {artifact}: {err}".splitlines()[0])
    return done


def main(argv=None) -> None:
    import argparse
    p = argparse.ArgumentParser(prog="python -m pmsm_exp.runs.tracking",
                                description="sync offline W&B runs (e.g. a sweep folder) and their checkpoint lineage")
    p.add_argument("command", choices=["sync"])
    p.add_argument("paths", nargs="+", help="folders to search for offline-run-*, e.g. logs/train/multiruns/<date>")
    p.add_argument("--dry-run", action="store_true", help="print the sync command and the links, do nothing")
    args = p.parse_args(argv)
    print("\n".join(sync(args.paths, args.dry_run)))


if __name__ == "__main__":
    main()
