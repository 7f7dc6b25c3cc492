"""One-line checks of the spec's plain strings: a study name, a device, a storage URL."""

from __future__ import annotations

import re

from autoprune.config._read import shown
from autoprune.errors import SpecError, masked

__all__ = ["check_name", "check_device_text", "check_storage"]

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def check_name(name: str, where: str = "name") -> str:
    if not _NAME_RE.match(name):
        raise SpecError(f"{where}: {shown(name)} must be 1-100 letters, digits, '.', '_' or '-' "
                        "and start with a letter or digit")
    if name in {".", ".."} or ".." in name:
        raise SpecError(f"{where}: {name!r} may not contain '..'")
    return name


def check_device_text(device: str) -> str:
    """'cpu', 'cuda', 'gpu', 'cuda:N' or 'N' (whether it exists is checked where it is used)."""
    d = device.strip().lower()
    if d == "cpu" or d in {"cuda", "gpu"} or re.fullmatch(r"(?:cuda:?)?\d+", d):
        return device.strip()
    raise SpecError(f"device: {shown(device)} is not 'cpu', 'cuda' or 'cuda:N'")


def check_storage(url: str) -> str:
    if not re.match(r"^(sqlite|postgresql(\+\w+)?|mysql(\+\w+)?)://", url):
        raise SpecError(f"storage: {masked(url, 80)!r} is not a supported URL (sqlite:///PATH or "
                        "postgresql+psycopg://...)")
    if re.match(r"^sqlite:///?(\?.*)?$", url) or ":memory:" in url:
        raise SpecError("storage: an in-memory SQLite database keeps nothing (give a file: sqlite:///PATH)")
    return url
