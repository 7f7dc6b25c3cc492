from __future__ import annotations

import hashlib

import pytest

from autoprune.demo.synthetic import CLASS_NAMES, SyntheticConfig, ensure_dataset


def _digest(root):
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.suffix in {".png", ".txt"}:
            h.update(p.relative_to(root).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_dataset_is_deterministic_and_complete(tmp_path):
    cfg = SyntheticConfig(n_train=6, n_val=3, imgsz=64, min_size=16, max_size=30, seed=3)
    a = ensure_dataset(cfg, root=tmp_path / "a")
    b = ensure_dataset(cfg, root=tmp_path / "b")
    assert _digest(a.parent) == _digest(b.parent)
    assert len(list((a.parent / "images" / "train").glob("*.png"))) == 6
    labels = list((a.parent / "labels" / "val").glob("*.txt"))
    assert len(labels) == 3
    for lab in labels:
        for line in lab.read_text().split("\n"):
            if line:
                c, *xywh = line.split()
                assert 0 <= int(c) < len(CLASS_NAMES)
                assert all(0.0 < float(v) <= 1.0 for v in xywh)
    assert ensure_dataset(cfg, root=tmp_path / "a") == a  # second call reuses it


@pytest.mark.slow
def test_demo_baseline_command_trains_and_writes_a_loadable_checkpoint(tmp_path):
    """`autoprune demo-baseline` (shown in the README) runs end to end: one epoch, a loadable checkpoint."""
    import subprocess
    import sys

    out = tmp_path / "baseline.pt"
    r = subprocess.run([sys.executable, "-m", "autoprune", "demo-baseline", "--epochs", "1", "--out", str(out)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "baseline epoch 1/1: train loss" in r.stderr and "Traceback" not in r.stderr
    from autoprune.adapters import ultra

    assert ultra.model_nc(ultra.load_model(out)) == 3
