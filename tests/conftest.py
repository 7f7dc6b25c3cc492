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

    from autoprune.adapters import yolo

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("models") / "tiny.pt"
    return yolo.save_checkpoint(yolo.load_model("yolov8n.yaml", nc=3), path)


@pytest.fixture()
def yolov8n():
    from autoprune.adapters import yolo

    return yolo.load_model("yolov8n.yaml", nc=3)


def _pg_bindir() -> Path | None:
    import glob
    import shutil

    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda d: int(d.split("/")[-2]))
    if dirs:
        return Path(dirs[-1])
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


@pytest.fixture(scope="session")
def postgres_url():
    """A real PostgreSQL server on 127.0.0.1 for this test session (Debian's package; .ci/run installs it)."""
    import shutil
    import socket
    import subprocess

    bindir = _pg_bindir()
    if bindir is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL server binaries not found (CI must install Debian's postgresql)")
        pytest.skip("PostgreSQL server binaries not installed")
    root = Path(tempfile.mkdtemp(prefix="autoprune-pg-"))
    root.chmod(0o755)
    as_user: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root
        shutil.chown(root, "postgres", "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = root / "data"

    def run(*cmd: str) -> None:
        subprocess.run([*as_user, *cmd], check=True, capture_output=True, timeout=120)

    run(str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "autoprune", "--no-sync")
    run(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-w", "-o",
        f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200", "start")
    try:
        run(str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "autoprune", "autoprune")
        yield f"postgresql+psycopg://autoprune@127.0.0.1:{port}/autoprune"
    finally:
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


LAYERS = [["model.0", 16], ["model.1", 32], ["model.2.cv1", 32]]
BASE = {"map50_95": 0.9, "map50": 0.99, "params": 3.0e6, "macs": 2.5e8, "latency_ms": 10.0}


def make_study(tmp_path, n=40, seed=0, name="fake"):
    """A real SQLite study whose trial results are made up (nothing is pruned); checks the front table as it goes."""
    import random

    from optuna.trial import TrialState

    from autoprune.config.spec import parse_spec
    from autoprune.search.storage.front import read_front, sync_front
    from autoprune.search.storage.study import get_storage, open_study_for

    url = f"sqlite:///{tmp_path}/studies/autoprune.db"
    spec = parse_spec({"name": name, "model": "m", "data": "d", "storage": url}, "s.yaml",
                      studies_dir=tmp_path / "studies")
    store = get_storage(url)
    study = open_study_for(spec, store)
    study.set_user_attr("baseline", BASE)
    study.set_user_attr("layers", LAYERS)
    rng = random.Random(seed)
    for i in range(n):
        t = study.ask()
        ratios = {lay: rng.uniform(0, 0.7) for lay, _ in LAYERS}
        policy = {"ratios": ratios, "criterion": rng.choice(["l1", "l2", "taylor"]), "iterations": rng.randint(1, 3),
                  "lr": 10 ** rng.uniform(-4, -2), "ema": rng.random() < 0.5, "epochs": 1}
        t.set_user_attr("policy", policy)
        if i % 7 == 3:
            t.set_user_attr("fail_reason", "made up")
            study.tell(t, state=TrialState.FAIL)
        else:
            mean = sum(ratios.values()) / 3
            vals = [max(0.0, 0.9 - mean * rng.uniform(0.2, 1.2)), 3.0e6 * (1 - mean), 10.0 * (1 - 0.6 * mean)
                    * rng.uniform(0.9, 1.1)]
            t.set_user_attr("metrics", {"map50_95": vals[0], "map50": min(1.0, vals[0] + 0.1), "params": vals[1],
                                        "macs": 2.5e8 * (1 - mean), "latency_ms": vals[2]})
            study.tell(t, vals)
        sync_front(study, store)
        rows = read_front(store.engine, name)
        assert sorted(r["trial_number"] for r in rows) == sorted(b.number for b in study.best_trials)
    return study, url


