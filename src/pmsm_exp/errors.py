"""User mistakes, told in one line.

A `UserError` names the key or file, the bad value and what is allowed. It is a
Hydra `CompactHydraException`, so Hydra prints just its message (no traceback)
and, in a multirun, records the job as failed and goes on to the next one.
"""
from __future__ import annotations

from hydra.errors import CompactHydraException


class UserError(CompactHydraException, ValueError):
    """Bad input: config value, data file, checkpoint or path."""


class DivergedError(CompactHydraException, RuntimeError):
    """Training produced a non-finite loss: said in one line too (where, at which step); the
    run is recorded as diverged, not as a crash to debug."""
