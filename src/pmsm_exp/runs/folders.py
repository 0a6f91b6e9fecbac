"""Run folders that survive a campaign: where a job writes, whether it already
finished, and which checkpoint it continues from.

- A single run gets a new timestamped folder; `resume=auto` instead reuses the
  newest unfinished run of the same command (same overrides) that has a checkpoint,
  and `resume=PATH` (a run folder or a .ckpt inside one) reuses that run's folder.
- A multirun job's folder is derived from its experiment and overrides
  (conf/hydra/default.yaml, runs/overrides.py), so a relaunched sweep lands every job in its previous
  folder: finished jobs are skipped, jobs with a checkpoint resume, the rest start.
"""
from __future__ import annotations

from pathlib import Path

import yaml
from omegaconf import OmegaConf

from pmsm_exp.errors import UserError
from pmsm_exp.runs import records
from pmsm_exp.runs.overrides import comparable

LAST = Path("checkpoints") / "last.ckpt"


def is_finished(out_dir: Path | str) -> bool:
    metrics, _ = records.read_metrics(Path(out_dir) / records.METRICS_FILE)
    return metrics is not None and metrics.get("status") == records.FINISHED


def newest_checkpoint(run_dir: Path | str) -> Path | None:
    """`checkpoints/last.ckpt`, or a newer `hpc_ckpt_N.ckpt` that Lightning's SLURM
    auto-requeue (SIGUSR1) saved in the run folder."""
    run_dir = Path(run_dir)
    found = [p for p in [run_dir / LAST, *run_dir.glob("hpc_ckpt_*.ckpt")] if p.is_file()]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def _run_folder_of(path: Path) -> Path:
    """The run folder holding a checkpoint (…/<run>/checkpoints/last.ckpt or …/<run>/hpc_ckpt_1.ckpt)."""
    for parent in path.parents[:2]:
        if (parent / ".hydra").is_dir():
            return parent
    raise UserError(f"resume: got {path}; a checkpoint inside a run folder (<run>/checkpoints/last.ckpt) "
                    f"or the run folder itself")


def _previous_run(runs_root: Path) -> Path | None:
    """Newest run under runs_root started with the same overrides, unfinished, with a checkpoint."""
    from hydra.core.hydra_config import HydraConfig
    wanted = comparable(HydraConfig.get().overrides.task)
    for run in sorted(runs_root.glob("*/"), reverse=True):  # timestamped names sort in time order
        overrides = run / ".hydra" / "overrides.yaml"
        if not overrides.is_file() or is_finished(run) or newest_checkpoint(run) is None:
            continue
        if comparable(yaml.safe_load(overrides.read_text()) or []) == wanted:
            return run
    return None


def run_dir(default: str, resume) -> str:
    """hydra.run.dir: the timestamped default, or the folder of the run being resumed."""
    if resume in (None, "", "null"):
        return default
    if str(resume) == "auto":
        previous = _previous_run(Path(default).parent)
        return str(previous) if previous else default
    path = Path(str(resume)).expanduser().absolute()
    if not path.exists():
        raise UserError(f"resume: got {resume}; no such file or folder (give auto, a run folder or a .ckpt)")
    return str(path if path.is_dir() else _run_folder_of(path))


OmegaConf.register_new_resolver("pmsm_run_dir", run_dir, replace=True)


def resume_checkpoint(resume, out_dir: Path) -> str | None:
    """The checkpoint `trainer.fit(ckpt_path=...)` continues from, or None for a fresh start.
    resume=PATH must point at a checkpoint; otherwise the job's own folder is looked in."""
    if resume not in (None, "", "auto"):
        path = Path(str(resume)).expanduser().absolute()
        ckpt = path if path.is_file() else newest_checkpoint(path)
        if ckpt is None:
            raise UserError(f"resume: got {resume}; the folder holds no checkpoints/last.ckpt "
                            f"(give auto, a run folder with a checkpoint or a .ckpt)")
        return str(ckpt)
    ckpt = newest_checkpoint(out_dir)
    return str(ckpt) if ckpt else None
