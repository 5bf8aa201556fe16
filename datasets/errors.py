"""The error every reader raises for bad input on disk."""
from __future__ import annotations

import os


class DataError(Exception):
    """Bad data on disk. The message is one line that names the file and the problem."""

    def __init__(self, path: "str | os.PathLike[str]", problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")
