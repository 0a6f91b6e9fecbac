"""Publishing a campaign: every run's metrics.json copied from the log folder into `OUT/runs/`, with
no path of the machine it ran on, and the weights of its training runs as small checkpoints.

    python -m pmsm_exp.runs.publish --logs LOGS --out results [--experiment E ...] [--checkpoints]
                                    [--under NAME] [--max-checkpoint-mb MB]

- Paths in the records become relative to the log root (`train/runs/<date>/checkpoints/last.ckpt`,
  `paths.log_dir=<logs>`); records written before that rule (absolute paths) are rewritten the
  same way, from the run folder's own path below the log root. Run folders keep their relative
  paths, with Hydra's ':' written '=' (so the repository checks out on Windows).
- Records without `provenance` stay without: nothing is invented for them; tables say "unknown".
- `--checkpoints [E ...]`: each finished training run's checkpoint, weights only (no optimizer state, no
  teacher), with the config and provenance that convert.py needs, as
  `OUT/checkpoints/<experiment>-<model>-<method>-s<seed>[-<n>].ckpt`; the record's
  `run.published_checkpoint` names it (relative to OUT). `--max-checkpoint-mb`: larger ones (VGG-16's
  60 MB) are not published; the record's `run.checkpoint_not_published` says why.
- `--under NAME` (a campaign, e.g. paper-cpu): records go to `OUT/runs/NAME/` and checkpoints to
  `OUT/checkpoints/NAME/`, both emptied first, so the folder is exactly the campaign's LOGS.
  Unfinished runs (status running) are not published: a snapshot of a campaign still going
  holds what it has finished, failed or diverged.
- `--restore` (with `--under`): the reverse, for a campaign relaunched on another machine: every
  published record of a finished run that LOGS lacks is written back into its run folder (and its
  published checkpoint as `checkpoints/last.ckpt`), so the relaunched sweep skips those jobs.
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
from pathlib import Path

import torch

from pmsm_exp.models.weights import read_weights
from pmsm_exp.runs.provenance import portable
from pmsm_exp.runs.records import METRICS_FILE, checkpoint_file, read_metrics

# a campaign's own files (sweeps/paper.sh), published under OUT/runs/NAME beside its records:
# name there -> where it lives in LOGS
CAMPAIGN_FILES = {"steps.tsv": "steps.tsv", "crosscheck.json": "crosscheck/crosscheck.json"}

SEGMENT = re.compile(r"^(?P<before>.*?)/(?P<rest>(train|convert)/(runs|multiruns)/.*)$")


def windows_safe(path: str) -> str:
    return path.replace(":", "=")


def relative_path(value: str, log_root: Path) -> str:
    """An absolute path of a run's files made relative to its log root, also for records of another
    machine (recognised by their `train|convert/runs|multiruns/` part)."""
    made = portable(value, log_root)
    if made.startswith("<logs>/"):
        return made.removeprefix("<logs>/")
    found = SEGMENT.match(value) if value.startswith("/") else None
    return found.group("rest") if found else made


def portable_record(value, log_root: Path):
    if isinstance(value, dict):
        return {k: portable_record(v, log_root) for k, v in value.items()}
    if isinstance(value, list):
        return [portable_record(v, log_root) for v in value]
    if isinstance(value, str):
        if value.startswith("<elsewhere>/"):   # written by code that kept two components of a foreign path
            return "<elsewhere>/" + value.rstrip("/").rsplit("/", 1)[-1]
        key, sep, rest = value.partition("=")
        if sep and rest.startswith("<elsewhere>/"):
            return f"{key}={portable_record(rest, log_root)}"
        if sep and rest.startswith("/") and not key.startswith("/"):
            return f"{key}={'<logs>' if key == 'paths.log_dir' else relative_path(rest, log_root)}"
        return relative_path(value, log_root) if value.startswith("/") else value
    return value


def weights_only(ckpt_file: Path, dest: Path) -> Path:
    ckpt = read_weights(ckpt_file)
    small = {"state_dict": {k: v for k, v in ckpt["state_dict"].items() if not k.startswith("teacher.")},
             "pmsm_config": portable_record(ckpt.get("pmsm_config", {}), ckpt_file.parents[2]),
             "pmsm_provenance": ckpt.get("pmsm_provenance") or {},
             "epoch": ckpt.get("epoch"), "global_step": ckpt.get("global_step")}
    dest.parent.mkdir(parents=True, exist_ok=True)
    torch.save(small, dest)
    return dest


def clear_published(out: Path, runs_dir: Path, ckpt_dir: Path, experiments=None) -> None:
    """Make room for a fresh copy: the whole published campaign, or with `experiments` only those
    experiments' records and the checkpoints they name (a publish of one experiment keeps the others')."""
    if not experiments:
        for folder in (runs_dir, ckpt_dir):
            shutil.rmtree(folder, ignore_errors=True)
        return
    for path in sorted(runs_dir.rglob(METRICS_FILE)) if runs_dir.is_dir() else []:
        metrics, _ = read_metrics(path)
        if metrics is not None and metrics["run"].get("experiment") in experiments:
            if metrics["run"].get("published_checkpoint"):
                (out / metrics["run"]["published_checkpoint"]).unlink(missing_ok=True)
            shutil.rmtree(path.parent, ignore_errors=True)


def publish(logs: Path, out: Path, experiments=None, checkpoints: bool | list[str] = False, under: str | None = None,
            max_checkpoint_mb: float | None = None) -> list[Path]:
    logs = logs.absolute()
    written, taken = [], set()
    runs_dir, ckpt_dir = out / "runs", out / "checkpoints"
    if under:
        runs_dir, ckpt_dir = runs_dir / under, ckpt_dir / under
        clear_published(out, runs_dir, ckpt_dir, experiments)
    for path in sorted(logs.rglob(METRICS_FILE)):
        if "wandb" in path.parts:
            continue
        metrics, why = read_metrics(path)
        if metrics is None or (experiments and metrics["run"].get("experiment") not in experiments):
            continue
        if under and metrics.get("status") == "running":
            continue
        rel = path.parent.relative_to(logs).as_posix()
        record = portable_record(metrics, logs)
        record["run"]["folder"] = windows_safe(rel)
        if record["run"].get("checkpoint"):
            record["run"]["checkpoint"] = windows_safe(record["run"]["checkpoint"])
        source = checkpoint_file(path.parent, metrics)
        wanted = checkpoints is True or (bool(checkpoints) and metrics["run"].get("experiment") in checkpoints)
        if (wanted and metrics.get("status") == "finished" and metrics["run"].get("task") == "train"
                and source is not None and source.is_file()):
            r = metrics["run"]
            stem = f"{r.get('experiment')}-{r.get('model')}-{r.get('method')}-s{r.get('seed')}"
            name, n = stem, 1
            while name in taken:
                n += 1
                name = f"{stem}-{n}"
            taken.add(name)
            dest = weights_only(source, ckpt_dir / f"{name}.ckpt")
            size_mb = dest.stat().st_size / 2 ** 20
            if max_checkpoint_mb is not None and size_mb > max_checkpoint_mb:
                dest.unlink()
                record["run"]["checkpoint_not_published"] = (f"{size_mb:.1f} MB of weights, over the "
                                                             f"{max_checkpoint_mb:g} MB published per checkpoint")
            else:
                record["run"]["published_checkpoint"] = dest.relative_to(out).as_posix()
        dest = runs_dir / windows_safe(rel) / METRICS_FILE
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(json.dumps(record, indent=2, allow_nan=False))
        written.append(dest)
    if under:
        for name, where in CAMPAIGN_FILES.items():
            if (logs / where).is_file():
                runs_dir.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(logs / where, runs_dir / name)
    return written


def restore(out: Path, under: str, logs: Path) -> list[Path]:
    """Published finished records of campaign `under` written back into LOGS where it lacks them."""
    written = []
    runs = out / "runs" / under
    for path in sorted(runs.rglob(METRICS_FILE)):
        metrics, _ = read_metrics(path)
        if metrics is None or metrics.get("status") != "finished":
            continue
        folder = logs / path.parent.relative_to(runs).as_posix().replace("=", ":")   # Hydra's folder names
        if (folder / METRICS_FILE).exists():
            continue
        folder.mkdir(parents=True, exist_ok=True)
        (folder / METRICS_FILE).write_text(path.read_text())
        published = metrics["run"].get("published_checkpoint")
        if published and (out / published).is_file():
            (folder / "checkpoints").mkdir(exist_ok=True)
            shutil.copyfile(out / published, folder / "checkpoints" / "last.ckpt")
        written.append(folder / METRICS_FILE)
    for name, where in CAMPAIGN_FILES.items():
        if (runs / name).is_file() and not (logs / where).exists():
            (logs / where).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(runs / name, logs / where)
    return written


def main(argv=None) -> list[Path]:
    ap = argparse.ArgumentParser(prog="python -m pmsm_exp.runs.publish", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--logs", type=Path, required=True, help="the campaign's log folder (paths.log_dir)")
    ap.add_argument("--out", type=Path, default=Path("results"))
    ap.add_argument("--experiment", nargs="*", default=None)
    ap.add_argument("--checkpoints", nargs="*", default=None,
                    help="also publish weights-only checkpoints (of these experiments; none named: of every one)")
    ap.add_argument("--under", default=None, help="a campaign's name: OUT/runs/NAME, OUT/checkpoints/NAME")
    ap.add_argument("--max-checkpoint-mb", type=float, default=None, help="publish no checkpoint larger than this")
    ap.add_argument("--restore", action="store_true", help="write OUT/runs/UNDER's finished records back into LOGS")
    a = ap.parse_args(argv)
    if a.under is not None and not re.fullmatch(r"[A-Za-z0-9_.-]+", a.under):
        raise SystemExit(f"error: --under: got {a.under!r}; allowed: one folder name (letters, digits, _ . -)")
    if a.restore:
        if a.under is None:
            raise SystemExit("error: --restore needs --under NAME (the campaign's published folder)")
        files = restore(a.out, a.under, a.logs)
        print(f"restored {len(files)} finished run record(s) from {a.out / 'runs' / a.under} into {a.logs}")
        return files
    if not a.logs.is_dir():
        raise SystemExit(f"error: --logs: got {a.logs}, which is not a folder")
    checkpoints = a.checkpoints if a.checkpoints else a.checkpoints == []   # bare --checkpoints: all
    files = publish(a.logs, a.out, a.experiment, checkpoints, a.under, a.max_checkpoint_mb)
    print(f"published {len(files)} run record(s) into {a.out / 'runs' / (a.under or '')}")
    return files


if __name__ == "__main__":
    main()
