"""Shared fixtures: an isolated autoprune home, a tiny synthetic data set and a tiny model checkpoint."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# Must precede any autoprune import that configures ultralytics (it reads the home at import).
_HOME = Path(tempfile.mkdtemp(prefix="autoprune-test-home-"))
os.environ["AUTOPRUNE_HOME"] = str(_HOME)
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

TINY_IMGSZ = 64


@pytest.fixture(scope="session")
def tiny_data() -> Path:
    from autoprune.demo.synthetic import SyntheticConfig, ensure_dataset

    return ensure_dataset(SyntheticConfig(n_train=16, n_val=8, imgsz=TINY_IMGSZ, min_size=16, max_size=30, seed=1))


@pytest.fixture(scope="session")
def tiny_model_pt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained yolov8n (3 classes) in ultralytics' checkpoint layout."""
    import torch

    from autoprune.adapters import ultra

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("models") / "tiny.pt"
    return ultra.save_checkpoint(ultra.load_model("yolov8n.yaml", nc=3), path)


@pytest.fixture()
def yolov8n():
    from autoprune.adapters import ultra

    return ultra.load_model("yolov8n.yaml", nc=3)
