"""User mistakes, told in one line.

A `UserError` names the key or file, the bad value and what is allowed. It is a plain
`ValueError`, so the method (quant, models, snn) imports and runs with torch alone; the
job wrapper (`jobs/wrapper.py`) turns it, and any `ValueError` a job raises, into the one
line Hydra prints without a traceback.
"""
from __future__ import annotations


class UserError(ValueError):
    """Bad input: config value, data file, checkpoint or path."""


class CheckpointError(UserError):
    """A checkpoint file that is missing, unreadable, unsafe or not ours."""


class CheckpointNotFound(CheckpointError, FileNotFoundError):
    """A checkpoint or weights file that is not there."""


class DivergedError(RuntimeError):
    """Training produced a non-finite loss: said in one line too (where, at which step); the
    run is recorded as diverged, not as a crash to debug."""
