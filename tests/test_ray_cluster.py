"""Issue 12, item 6: a real multi-node Ray cluster on this machine.

A head node (no CPUs, so it runs no trial) and two worker nodes are separate `ray start --block` processes, each in
its own process group; `autoprune search --ray-address` drives a study on them. One worker node is killed (its
whole process group: `ray start`, raylet, trial worker) while it runs a trial. Nothing here is faked.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from autoprune.model import records

pytestmark = pytest.mark.slow

RAY = str(Path(sys.executable).with_name("ray"))
# A local test cluster: token authentication off for its processes (Ray 2.59+ turns it on for local clusters and
# every process would need the same token), all on this machine.
ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


class Cluster:
    def __init__(self, tmp: Path):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        self.port = s.getsockname()[1]
        s.close()
        self.address = f"127.0.0.1:{self.port}"
        self.tmp = tmp
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.node_ids: dict[str, str] = {}  # worker name -> Ray node id

    def nodes(self) -> list[dict]:
        code = ("import json, sys, ray; ray.init(address=sys.argv[1], log_to_driver=False); "
                "print(json.dumps([n for n in ray.nodes() if n['Alive']]))")
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=2).close()  # the head's GCS answers
            r = subprocess.run([sys.executable, "-c", code, self.address], env=ENV, capture_output=True, text=True,
                               timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            return []
        return json.loads(r.stdout.strip().splitlines()[-1]) if r.returncode == 0 else []

    def start(self, name: str, args: list[str], want: int) -> None:
        """Start a node (nodes one after another: raylets started together on one machine race for ports)."""
        log = open(self.tmp / f"{name}.log", "wb")  # noqa: SIM115  (closed with the process)
        self.procs[name] = subprocess.Popen([RAY, "start", "--block", "--disable-usage-stats", *args], env=ENV,
                                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and self.procs[name].poll() is None:
            alive = self.nodes()
            if len(alive) == want:
                for n in alive:
                    if n["Resources"].get(f"node_{name}"):
                        self.node_ids[name] = n["NodeID"]
                return
            time.sleep(1)
        raise RuntimeError(f"Ray node {name} did not join: {(self.tmp / f'{name}.log').read_text()[-2000:]}")

    def kill(self, name: str) -> None:
        """The node is lost: every process of it at once."""
        for pid in _node_processes(self.procs[name].pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.procs[name].wait()

    def stop(self) -> None:
        for name in self.procs:
            self.kill(name)


@pytest.fixture
def cluster(tmp_path) -> Iterator[Cluster]:
    c = Cluster(tmp_path)
    ray_tmp = tempfile.mkdtemp(prefix="aprt", dir="/tmp")  # Ray's socket paths must stay under 107 bytes
    try:
        c.start("head", ["--head", f"--port={c.port}", "--num-cpus=0", "--include-dashboard=false",
                         f"--temp-dir={ray_tmp}"], 1)
        for k, name in enumerate(("a", "b")):
            lo = 21000 + 1000 * k + (os.getpid() % 20) * 50  # disjoint worker port ranges per node
            c.start(name, [f"--address={c.address}", "--num-cpus=2", f'--resources={{"node_{name}": 1}}',
                           f"--min-worker-port={lo}", f"--max-worker-port={lo + 49}"], 2 + k)
        yield c
    finally:
        c.stop()
        shutil.rmtree(ray_tmp, ignore_errors=True)


def _spec(tmp_path: Path, tiny_data: Path, tiny_model_pt: Path) -> Path:
    lines = ["name: multi", f"model: {tiny_model_pt}", f"data: {tiny_data}", "imgsz: 64", "trials: 3", "retries: 1",
             "screening: {factor: 0}", "warm_start: {uniform: 0}", "latency: {warmup: 1, runs: 3, rounds: 1}",
             "space: {epochs: {low: 4, high: 4}, iterations: 1}", "finetune: {batch: 8}"]
    path = tmp_path / "multi.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _processes() -> list[tuple[int, int, int, str]]:
    """(pid, pgid, ppid, args) of every process."""
    out = subprocess.run(["ps", "-e", "-o", "pid=,pgid=,ppid=,args="], capture_output=True, text=True).stdout
    rows = []
    for line in out.splitlines():
        parts = line.split(None, 3)
        if len(parts) == 4:
            rows.append((int(parts[0]), int(parts[1]), int(parts[2]), parts[3]))
    return rows


def _node_processes(node_pid: int) -> list[int]:
    """The processes of the node started as ``node_pid``: its process group, and the workers its raylet started
    (Ray gives each worker a session of its own)."""
    rows = _processes()
    group = {pid for pid, pgid, _, _ in rows if pgid == node_pid}
    return sorted(group | {pid for pid, _, ppid, _ in rows if ppid in group})


def _runs_trial(node_pid: int) -> bool:
    """Whether a Ray Tune trial worker (a ``ray::ImplicitFunc`` actor) is a process of that node."""
    mine = set(_node_processes(node_pid))
    return any(pid in mine and "ImplicitFunc" in args for pid, _, _, args in _processes())


def test_a_study_runs_on_worker_nodes_and_survives_losing_one_mid_trial(tmp_path, cluster, tiny_data, tiny_model_pt):
    url = f"sqlite:///{tmp_path}/studies/autoprune.db"
    spec = _spec(tmp_path, tiny_data, tiny_model_pt)
    # 4 CPUs in all, but no node has 3: refused at once instead of a trial Ray can never place
    r = subprocess.run([sys.executable, "-m", "autoprune", "search", str(spec), "--ray-address", cluster.address,
                        "--cpus-per-trial", "3"], cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr[-2000:]
    assert r.stderr.strip().splitlines()[-1] == ("autoprune: error: resources.cpus: 3 CPU(s) per trial requested but "
                                                 "the largest of the Ray cluster's 3 nodes has 2")

    proc = subprocess.Popen([sys.executable, "-m", "autoprune", "search", str(spec), "--ray-address", cluster.address],
                            cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    victim = None
    deadline = time.monotonic() + 300
    while victim is None and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.5)
        try:
            running = optuna.load_study(study_name="multi", storage=url).get_trials(states=(TrialState.RUNNING,))
        except Exception:
            running = []
        if running:
            victim = next((n for n in ("a", "b") if _runs_trial(cluster.procs[n].pid)), None)
    if victim is None:
        proc.kill()
        raise AssertionError(f"no trial started on a worker node: {proc.communicate()[1][-2000:]}")
    time.sleep(2)  # inside the trial
    cluster.kill(victim)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    assert "Traceback" not in err

    trials = optuna.load_study(study_name="multi", storage=url).get_trials()
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert len(failed) == 1 and "the Ray trial errored" in records.trial(failed[0]).fail_reason
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    # 3 trials asked for, plus the retry of the one whose node died (retries: 1), with the same policy
    assert len(done) == 3 and len(trials) == 4
    retry = [t for t in done if records.trial(t).retry_of == failed[0].number]
    assert len(retry) == 1 and records.trial(retry[0]).policy == records.trial(failed[0]).policy
    survivor = "b" if victim == "a" else "a"
    ran_on = {records.trial(t).ray_node for t in done}
    assert ran_on == {cluster.node_ids[survivor]}  # every trial after the loss ran on the node that is left
    assert cluster.node_ids[survivor] != cluster.node_ids[victim]
