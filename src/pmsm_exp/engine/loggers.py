"""Lightning loggers of our own (W&B's is configured in runs/tracking.py)."""
from __future__ import annotations

import os
import warnings
from pathlib import Path

from lightning.pytorch.loggers import CSVLogger as _LightningCSVLogger
from lightning.pytorch.utilities.rank_zero import rank_zero_only


class CSVLogger(_LightningCSVLogger):
    """Lightning's CSVLogger, appending to the run's one `csv/metrics.csv` when a run
    resumes (Lightning's own deletes the file it finds and starts a new version)."""

    def __init__(self, save_dir: str, name: str = "csv", **kwargs):
        super().__init__(save_dir, name=name, version="", **kwargs)

    @property
    def experiment(self):
        if self._experiment is None and rank_zero_only.rank == 0:
            metrics = Path(self.log_dir) / "metrics.csv"
            kept = metrics.with_suffix(".csv.resumed")
            if metrics.is_file():  # keep it away from Lightning's writer, then put it back
                os.replace(metrics, kept)
            with warnings.catch_warnings():  # Lightning's "will be deleted" does not apply: the file was moved
                warnings.filterwarnings("ignore", message=".*exists and is not empty.*")
                writer = super().experiment
            if kept.is_file():
                os.replace(kept, metrics)
                header = metrics.read_text().splitlines()[:1]
                writer.metrics_keys = header[0].split(",") if header else []
            return writer
        return super().experiment
