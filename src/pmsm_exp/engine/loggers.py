"""Lightning loggers of our own (W&B's is configured in runs/tracking.py)."""
from __future__ import annotations

import csv
import os
import warnings
from pathlib import Path

from lightning.pytorch.loggers import CSVLogger as _LightningCSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from pmsm_exp.engine.checkpoint_io import replace_atomically


class KillSafeWriter(ExperimentWriter):
    """Lightning's writer rewrites metrics.csv in place when a new column appears (at the end of the
    first epoch, the moment the first checkpoint is saved): a kill -9 between its truncate and its
    write lost every row logged so far. Here the new file is written beside it and renamed over it."""

    def _rewrite_with_new_header(self, fieldnames: list[str]) -> None:
        with open(self.metrics_file_path, newline="") as f:
            rows = list(csv.DictReader(f))

        def write(f):
            writer = csv.DictWriter(f, fieldnames=fieldnames)
            writer.writeheader()
            writer.writerows(rows)
        replace_atomically(self.metrics_file_path, write, mode="w", newline="")


def drop_torn_last_line(path: Path) -> None:
    """A kill during an append can leave half a row; the resumed run's rows would be glued onto it."""
    text = path.read_bytes()
    if text and not text.endswith(b"\n"):
        path.write_bytes(text[: text.rfind(b"\n") + 1])


class CSVLogger(_LightningCSVLogger):
    """Lightning's CSVLogger, appending to the run's one `csv/metrics.csv` when a run
    resumes (Lightning's own deletes the file it finds and starts a new version), and
    keeping the rows already written when the run is killed."""

    def __init__(self, save_dir: str, name: str = "csv", **kwargs):
        super().__init__(save_dir, name=name, version="", **kwargs)

    @property
    def experiment(self):
        if self._experiment is None and rank_zero_only.rank == 0:
            metrics = Path(self.log_dir) / "metrics.csv"
            kept = metrics.with_suffix(".csv.resumed")
            if metrics.is_file():  # keep it away from Lightning's writer, then put it back
                os.replace(metrics, kept)
            self._fs.makedirs(self.root_dir, exist_ok=True)
            with warnings.catch_warnings():  # Lightning's "will be deleted" does not apply: the file was moved
                warnings.filterwarnings("ignore", message=".*exists and is not empty.*")
                self._experiment = KillSafeWriter(log_dir=self.log_dir)
            if kept.is_file():
                drop_torn_last_line(kept)
                os.replace(kept, metrics)
                header = metrics.read_text().splitlines()[:1]
                self._experiment.metrics_keys = header[0].split(",") if header else []
        return super().experiment
