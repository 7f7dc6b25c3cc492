"""Shared helpers of the benchmark scripts: run a spec as a study, read fronts, hypervolume."""

from __future__ import annotations

import json
import logging
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from autoprune.config.spec import parse_spec
from autoprune.model import records
from autoprune.model.pareto import baseline_hypervolume as hypervolume
from autoprune.search.run import run_search

logger = logging.getLogger("benchmarks")


def machine() -> dict[str, Any]:
    import torch

    from autoprune.engine.latency import device_name

    return {"cpu": device_name("cpu"), "cores": os.cpu_count(), "python": platform.python_version(),
            "torch": str(torch.__version__), "cuda": torch.cuda.is_available(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


class LoadMonitor:
    """The machine's 1-minute load average sampled every ``every`` seconds while the block runs (a daemon thread), so
    that an arm run while the shared machine was busy shows it in the record: ``summary()`` gives mean, max and the
    number of samples. Load is a cause of noise a record must show, never a correction applied to a number."""

    def __init__(self, every: float = 5.0) -> None:
        import threading

        self.every, self.samples = every, [os.getloadavg()[0]]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.samples.append(os.getloadavg()[0])

    def __enter__(self) -> LoadMonitor:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append(os.getloadavg()[0])

    def summary(self) -> dict[str, float | int]:
        return {"mean": round(sum(self.samples) / len(self.samples), 2), "max": round(max(self.samples), 2),
                "samples": len(self.samples), "cores": os.cpu_count() or 0}


def run_arm(workdir: Path, raw: dict[str, Any]) -> tuple[optuna.Study, float]:
    """Run the spec ``raw`` (a dict) to its trial budget in ``workdir``; returns the study and wall seconds."""
    spec = parse_spec(raw, f"{raw['name']}.yaml", studies_dir=workdir / "studies")
    t0 = time.perf_counter()
    outcome = run_search(spec)
    return outcome.study, time.perf_counter() - t0


def complete(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


def front_hypervolume(study: optuna.Study) -> float:
    return hypervolume([t.values for t in complete(study)], records.study_objectives(study), records.baseline(study))


RESULTS = Path(__file__).resolve().parent / "results"


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write a benchmark's results; a new file under ``benchmarks/results`` is entered in its index as current
    (``results/index.json``: what each file measures, or why it is superseded)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=float))
    logger.info("wrote %s", path)
    if path.resolve().parent == RESULTS:
        index_path = RESULTS / "index.json"
        index = json.loads(index_path.read_text()) if index_path.is_file() else {"files": {}}
        if path.name not in index["files"]:
            index["files"][path.name] = {"status": "current", "what": f"{data.get('benchmark', path.stem)} "
                                                                      f"(method commit {data.get('method_commit')})"}
            index_path.write_text(json.dumps(index, indent=1))


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    for noisy in ("ray", "ultralytics", "optuna", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


METHOD_PATHS = ("autoprune", "search_spaces", "pyproject.toml", "benchmarks/fresh_tasks.py", "benchmarks/_common.py")


def method_commit() -> tuple[str | None, bool]:
    """The last commit that changed the method a benchmark measures (the package, the specs, the dependencies and
    the benchmark's own code: :data:`METHOD_PATHS`), and whether the checkout's copy of them is that commit's
    (no uncommitted change). Documentation committed during a long draw does not change it."""
    if os.environ.get("AUTOPRUNE_BENCH_COMMIT"):
        return os.environ["AUTOPRUNE_BENCH_COMMIT"], True
    root = Path(__file__).resolve().parent.parent
    try:
        last = subprocess.run(["git", "log", "-1", "--format=%H", "--", *METHOD_PATHS], capture_output=True,
                              text=True, check=True, cwd=root).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", *METHOD_PATHS], capture_output=True,
                               text=True, check=True, cwd=root).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None, False
    return last or None, not dirty


def commit() -> str | None:
    """The git commit the benchmarks run on: ``AUTOPRUNE_BENCH_COMMIT`` where set (a copy of the tree sent to a GPU
    machine, whose git metadata may name an older commit), else the checkout's HEAD (None outside a checkout)."""
    if os.environ.get("AUTOPRUNE_BENCH_COMMIT"):
        return os.environ["AUTOPRUNE_BENCH_COMMIT"]
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).resolve().parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
