"""The error that stops a run (see ``common.errors.user_errors``)."""
from __future__ import annotations

from common.errors import UserError


class TrainingError(UserError):
    """A run that must stop (e.g. a non-finite loss); the message says what and what was kept."""
