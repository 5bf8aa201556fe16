"""Errors a user can fix, reported as one line and a non-zero exit (:func:`user_errors`)."""
from __future__ import annotations

import contextlib
from typing import Iterator


class UserError(Exception):
    """Base of the errors a user can fix (bad file, bad flags, a run that had to stop): the
    message is one line that says what and where."""


class UsageError(UserError):
    """Flags that cannot work together (e.g. a batch that does not split over the processes)."""


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn a :class:`UserError` into one line on stderr and exit status 1. Anything else is a
    bug and keeps its traceback."""
    try:
        yield
    except UserError as error:
        raise SystemExit(f"error: {error}") from None
