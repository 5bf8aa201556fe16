"""The error every reader raises for bad input on disk."""
from __future__ import annotations

import os
from typing import Optional, Tuple

from common.errors import UserError


class DataError(UserError):
    """Bad data on disk. The message is one line that names the file and the problem.

    It survives a DataLoader worker: torch re-raises a worker's exception in the main process as
    ``type(exc)(text)``, where ``text`` is "Caught DataError in DataLoader worker process N" plus
    the worker's formatted traceback. Built from that single argument, a DataError recovers the
    worker's one-line message from the traceback's last line, so the user reads the same line
    as with ``num_workers=0``.

    Attributes:
        path: the offending file or folder.
        problem: what is wrong with it (one line).
    """

    def __init__(self, path: "str | os.PathLike[str]", problem: Optional[str] = None) -> None:
        if problem is None:
            path, problem = _from_worker_text(str(path))
        self.path = str(path)
        self.problem = " ".join(str(problem).splitlines())
        super().__init__(f"{self.path}: {self.problem}" if self.path else self.problem)

    def __reduce__(self) -> Tuple[type, Tuple[str, str]]:
        # Pickled across processes (multiprocessing pools) with both fields, not as ``args``.
        return type(self), (self.path, self.problem)


def _from_worker_text(text: str) -> Tuple[str, str]:
    """``(path, problem)`` from the text torch builds around a worker's DataError.

    The traceback ends with ``datasets.errors.DataError: <path>: <problem>``. The split at the
    first ": " is exact unless the path itself holds ": "; the message rebuilt from the two
    parts is the original line either way. Text without that line (not from a worker) is kept
    whole as the problem, with an empty path (the message is then the problem alone).
    """
    marker = f"{DataError.__module__}.{DataError.__qualname__}: "
    lines = [line for line in text.splitlines() if line.startswith(marker)]
    if not lines:
        return "", text
    path, separator, problem = lines[-1][len(marker):].partition(": ")
    return (path, problem) if separator else ("", path)
