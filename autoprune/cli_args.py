"""The CLI's argument types: each parses one flag's text or says, in one line, what is wrong with it."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, NoReturn, TypeVar

__all__ = ["EXIT_USAGE", "Checked", "Parser", "duration", "epochs", "knob", "nonneg_int", "port", "setting"]

T = TypeVar("T", int, float)

EXIT_USAGE = 2


@dataclass(frozen=True)
class Checked(Generic[T]):
    """An argparse type: ``convert`` the text, then require ``ok(value)`` (else 'must be BOUND, got TEXT'); what it
    accepts is data, so the generated CLI reference (docs/cli.md) states each flag's bounds as the parser holds them."""

    convert: Callable[[str], T]
    expected: str
    ok: Callable[[T], bool]
    bound: str

    def __call__(self, s: str) -> T:
        try:
            v = self.convert(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {self.expected}, got {s!r}") from None
        if not self.ok(v):
            raise argparse.ArgumentTypeError(f"must be {self.bound}, got {s}")
        return v

    @property
    def accepts(self) -> str:
        """What the flag accepts, in words (the reference's column)."""
        return self.bound if self.bound.startswith(("a ", "an ")) else f"{self.expected}, {self.bound}"


nonneg_int = Checked(int, "an integer", lambda v: v >= 0, ">= 0")  # a trial number
port = Checked(int, "a port number", lambda v: 1 <= v <= 65535, "1 to 65535")
epochs = Checked(int, "a positive integer", lambda v: 1 <= v <= 10_000, "1 to 10000")  # ultralytics: >= 1


def knob(name: str) -> Checked[float] | Checked[int]:
    """A flag that sets knob ``name``: bounded by the knob table's domain (which holds what the library it is
    handed to accepts, e.g. ultralytics' lr0 in (0, 1])."""
    from autoprune.model import knobs

    d = knobs.get(name).domain
    if isinstance(d, knobs.Whole):
        return Checked(int, "an integer", d.admits, f"in {d.interval()}")
    if isinstance(d, knobs.Real):
        return Checked(float, "a number", lambda v: math.isfinite(v) and d.admits(v), f"a finite number in "
                        f"{d.interval()}")
    raise TypeError(f"knob {name!r} is not a number")  # a programming error


def setting(section: type, name: str) -> Checked[float] | Checked[int]:
    """A flag that overrides field ``name`` of a spec section (a frozen dataclass): bounded by the field's own
    declared bounds (``min``, ``gt``, ``max`` in its metadata), as the spec's key is."""
    import dataclasses
    import typing

    f = next(f for f in dataclasses.fields(section) if f.name == name)
    hint = typing.get_type_hints(section)[name]
    kind = next(a for a in (*typing.get_args(hint), hint) if a in (int, float))
    lo, gt, hi = (f.metadata.get(k) for k in ("min", "gt", "max"))

    def ok(v: float) -> bool:
        return math.isfinite(v) and (lo is None or v >= lo) and (gt is None or v > gt) and (hi is None or v <= hi)

    if lo is not None and gt is not None and lo > gt:
        gt = None  # implied by lo
    bound = " and ".join(f"{op} {v}" for op, v in ((">=", lo), (">", gt), ("<=", hi)) if v is not None)
    if kind is int:
        return Checked(int, "an integer", ok, bound or "an integer")
    return Checked(float, "a number", ok, f"a finite number {bound}".strip())


def duration(text: str) -> float:
    """A duration: seconds, or with a unit (90, 90s, 30m, 2h)."""
    from autoprune.model.budget import parse_duration

    try:
        return parse_duration(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, exit 2
        sys.stderr.write(f"autoprune: error: {message}\n")
        sys.exit(EXIT_USAGE)
