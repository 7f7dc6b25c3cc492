"""Where autoprune keeps its own files (data sets, demo baseline, third-party config)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["home", "data_dir", "config_dir", "artifacts_dir"]


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



def artifacts_dir(studies_dir: str | Path) -> Path:
    """The Optuna artifact store of the studies under ``studies_dir`` (trial checkpoints and policy files)."""
    return Path(studies_dir) / "artifacts"
