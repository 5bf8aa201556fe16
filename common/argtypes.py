"""The argparse pieces every script shares: a parser whose errors are one line, and the numeric
flag types."""
from __future__ import annotations

import argparse
import math
from typing import Callable, NoReturn, Optional, TypeVar

Number = TypeVar("Number", int, float)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows every flag's default and keeps the script docstring's line breaks."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse with :class:`HelpFormatter`, whose errors are one line (no usage dump); exit 2."""

    def __init__(self, description: Optional[str]) -> None:
        super().__init__(description=description, formatter_class=HelpFormatter)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def bounded(kind: Callable[[str], Number], minimum: Number,
            inclusive: bool) -> Callable[[str], Number]:
    """An argparse type: a finite ``kind`` (int or float) above ``minimum`` (or equal to it when
    ``inclusive``).

    Args:
        kind: ``int`` or ``float``.
        minimum: the lower bound.
        inclusive: whether ``minimum`` itself is allowed.

    Returns:
        The type function; a bad value raises ``argparse.ArgumentTypeError``.
    """
    bound = f"{'>=' if inclusive else '>'} {minimum}"

    def parse(text: str) -> Number:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {kind.__name__}, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be finite, got {text}")
        if value < minimum or (value == minimum and not inclusive):
            raise argparse.ArgumentTypeError(f"must be {bound}, got {text}")
        return value

    parse.__name__ = f"{kind.__name__} {bound}"
    return parse


positive_int = bounded(int, 1, inclusive=True)
non_negative_int = bounded(int, 0, inclusive=True)
positive_float = bounded(float, 0.0, inclusive=False)
non_negative_float = bounded(float, 0.0, inclusive=True)
