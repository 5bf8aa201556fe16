"""Errors a run reports as one line and a non-zero exit (see ``training.cli.user_errors``)."""
from __future__ import annotations


class UsageError(Exception):
    """Flags that cannot work together (e.g. a batch that does not split over the processes)."""


class TrainingError(Exception):
    """A run that must stop (e.g. a non-finite loss); the message says what and what was kept."""
