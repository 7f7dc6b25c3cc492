"""The CLI's argument types: each parses one flag's text or says, in one line, what is wrong with it."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from typing import NoReturn, TypeVar

__all__ = ["EXIT_USAGE", "Parser", "bounded_int", "duration", "epochs", "nonneg_float", "nonneg_int", "port",
           "positive_float", "positive_int", "retries"]

T = TypeVar("T", int, float)

EXIT_USAGE = 2


def _checked(convert: Callable[[str], T], expected: str, ok: Callable[[T], bool],
             bound: str) -> Callable[[str], T]:
    """An argparse type: ``convert`` the text, then require ``ok(value)`` (else 'must be BOUND, got TEXT')."""

    def parse(s: str) -> T:
        try:
            v = convert(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {s!r}") from None
        if not ok(v):
            raise argparse.ArgumentTypeError(f"must be {bound}, got {s}")
        return v

    return parse


positive_int = _checked(int, "a positive integer", lambda v: v >= 1, ">= 1")
nonneg_int = _checked(int, "an integer", lambda v: v >= 0, ">= 0")
positive_float = _checked(float, "a number", lambda v: math.isfinite(v) and v > 0, "a finite number > 0")
port = _checked(int, "a port number", lambda v: 1 <= v <= 65535, "1 to 65535")
epochs = _checked(int, "a positive integer", lambda v: 1 <= v <= 10_000, "1 to 10000")
bounded_int = _checked(int, "a positive integer", lambda v: 1 <= v <= 10_000, "1 to 10000")
retries = _checked(int, "an integer", lambda v: 0 <= v <= 100, "0 to 100")
nonneg_float = _checked(float, "a number", lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0")


def duration(text: str) -> float:
    from autoprune.model.budget import parse_duration

    try:
        return parse_duration(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, exit 2
        sys.stderr.write(f"autoprune: error: {message}\n")
        sys.exit(EXIT_USAGE)
