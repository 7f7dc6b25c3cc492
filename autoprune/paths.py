"""Where autoprune keeps its own files (data sets, demo baseline, third-party config)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["home", "data_dir", "config_dir", "check_folder"]


def home() -> Path:
    """The autoprune data directory: ``$AUTOPRUNE_HOME`` or ``$XDG_DATA_HOME/autoprune``."""
    env = os.environ.get("AUTOPRUNE_HOME")
    if env:
        root = Path(env).expanduser()
    else:
        root = Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local" / "share")) / "autoprune"
    root.mkdir(parents=True, exist_ok=True)
    return root.resolve()


def data_dir() -> Path:
    d = home() / "datasets"
    d.mkdir(parents=True, exist_ok=True)
    return d


def config_dir() -> Path:
    """Config directory handed to third-party libraries (ultralytics, matplotlib)."""
    d = home() / "config"
    d.mkdir(parents=True, exist_ok=True)
    return d


def check_folder(path: str | Path, flag: str) -> Path:
    """``path`` as a folder autoprune may create or write into: neither it nor a folder above it may be a file
    (one-line InputError naming ``flag``)."""
    from autoprune.errors import InputError

    p = Path(path)
    for q in (p, *p.parents):
        if q.exists() and not q.is_dir():
            raise InputError(f"{flag}: {str(p)[:200]} exists and is not a folder" if q == p else
                             f"{flag}: {str(p)[:200]} lies under a file ({str(q)[:200]})")
    return p
