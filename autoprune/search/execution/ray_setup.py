"""Ray for a search: start or join it quietly, and refuse in seconds what would make it wait for minutes (an
address that is no Ray head, a trial that fits on no node)."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from typing import Any

from autoprune.config.spec import Resources
from autoprune.errors import InputError, SpecError

logger = logging.getLogger(__name__)

__all__ = ["ray_session", "check_ray_address", "check_cluster_resources", "WORKER_NICENESS_ENV"]

WORKER_NICENESS_ENV = "RAY_worker_niceness"  # Ray reads its config ``worker_niceness`` from it


@contextlib.contextmanager
def ray_session(address: str | None) -> Iterator[bool]:
    """Ray for the duration of the block: a local Ray (or ``address``), quietly, unless one is up already.

    Yields whether this block started it (and so shuts it down).
    """
    import signal
    import threading

    import ray

    if ray.is_initialized():
        yield False
        return
    check_ray_address(address)
    os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")  # Ctrl-C interrupts the search; the CLI says so
    if not address:  # a local Ray: its workers run the user's own trials at the driver's priority (Ray's default
        # niceness 15 left them ~5% of a core beside two ordinary busy processes); RAY_worker_niceness overrides
        os.environ.setdefault(WORKER_NICENESS_ENV, "0")
    main = threading.current_thread() is threading.main_thread()
    on_term = signal.getsignal(signal.SIGTERM) if main else None
    ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING,
             configure_logging=False,
             runtime_env={"env_vars": {k: os.environ[k] for k in ("AUTOPRUNE_HOME", "ULTRALYTICS_SAFE_LOAD")
                                       if k in os.environ}})
    if main and on_term is not None:
        signal.signal(signal.SIGTERM, on_term)  # ray.init replaces it with sys.exit(15)
    reaper = _start_reaper() if not address else None
    try:
        yield True
    finally:
        ray.shutdown()
        if reaper is not None:
            _stop_reaper(reaper)


def _start_reaper() -> Any:
    """The local Ray's reaper (:mod:`autoprune.search.execution.reaper`): it ends what this driver started if the
    driver dies without shutting Ray down (Ray's agents linger a minute otherwise). Its own session, so that a
    signal to the driver's process group leaves it to clean up."""
    import subprocess
    import sys

    try:
        return subprocess.Popen([sys.executable, "-m", "autoprune.search.execution.reaper", str(os.getpid())],
                                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
    except OSError as e:  # the search runs without it: only a killed driver's cleanup is slower
        logger.warning("no reaper for the local Ray (%s): a killed search's Ray agents end on their own", e)
        return None


def _stop_reaper(reaper: Any) -> None:
    """Ray is shut down: tell the reaper so (it exits without ending anything)."""
    import subprocess

    from autoprune.search.execution.reaper import BYE

    try:
        reaper.stdin.write(BYE)
        reaper.stdin.close()
        reaper.wait(timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        reaper.kill()


_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])  # + an empty SETTINGS frame


def _answers_grpc(sock: Any) -> bool:
    """Whether the peer answers an HTTP/2 connection preface with a SETTINGS frame, as every gRPC server (a Ray
    head's GCS, Ray's client server) does at once; anything else (an HTTP/1 server, a silent port) does not."""
    try:
        sock.sendall(_H2_PREFACE)
        head = b""
        while len(head) < 9:
            chunk = sock.recv(9 - len(head))
            if not chunk:
                return False
            head += chunk
    except OSError:  # socket.timeout is an OSError
        return False
    return head[3] == 0x04


def check_ray_address(address: str | None, timeout_s: float = 5.0) -> None:
    """A Ray head given as ``host:port`` or ``ray://host:port`` must answer as one (a gRPC server), within
    ``timeout_s``, or ray.init would wait for minutes; ``ray://`` also needs Ray's client extra installed."""
    import importlib.util
    import socket

    if not address or address == "auto" or address.startswith("local"):
        return
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise InputError(f"--ray-address: {address!r} is not HOST:PORT, ray://HOST:PORT or auto")
    if address.startswith("ray://") and importlib.util.find_spec("grpc") is None:
        raise InputError("--ray-address: ray:// addresses need Ray's client (pip install 'ray[client]'); "
                         "or give the head's HOST:PORT from this cluster's nodes")
    try:
        sock = socket.create_connection((host, int(port)), timeout=timeout_s)
    except OSError as e:
        raise InputError(f"--ray-address: no Ray cluster answers at {hostport} ({e.strerror or e})") from None
    with sock:
        sock.settimeout(timeout_s)
        if not _answers_grpc(sock):
            raise InputError(f"--ray-address: {hostport} answers, but not as a Ray head (no gRPC within "
                             f"{timeout_s:g} s)")


def check_cluster_resources(resources: Resources) -> None:
    """One trial's CPUs and GPUs must fit on one node of the Ray cluster, or Ray Tune would wait forever (a
    cluster of two 1-CPU nodes has 2 CPUs but cannot place a 2-CPU trial)."""
    import ray

    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    for key, want, field in (("CPU", resources.cpus, "cpus"), ("GPU", resources.gpus, "gpus")):
        most = max((float(r.get(key, 0.0)) for r in nodes), default=0.0)
        if want > most:
            where = ("the Ray cluster has" if len(nodes) <= 1
                     else f"the largest of the Ray cluster's {len(nodes)} nodes has")
            raise SpecError(f"resources.{field}: {want:g} {key}(s) per trial requested but {where} {most:g}")
