"""The local Ray's reaper: ends the processes a search's driver started when the driver dies without shutting Ray
down (``kill -9``, the OOM killer).

Ray's own agents (``ray::DashboardAgent``, ``ray::RuntimeEnvAgent``) notice a dead raylet only after about a minute
(measured: 61.6 s after ``kill -9`` of the driver, while everything else was gone within 2 s). This process is
started by :func:`autoprune.search.execution.ray_setup.ray_session` with a pipe on its stdin that only the driver
holds: every ``interval`` seconds it notes the driver's descendants (pid and start time), and when the pipe closes
without a ``bye`` line (the driver died) it ends those that are still the same processes (SIGTERM, then SIGKILL).

    python -m autoprune.search.execution.reaper DRIVER_PID [INTERVAL_S]
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
import time

__all__ = ["BYE", "main"]

BYE = b"bye\n"  # the driver's line when it has shut Ray down itself: nothing to end


def _descendants(driver: int) -> dict[int, float]:
    import psutil

    try:
        procs = psutil.Process(driver).children(recursive=True)
    except psutil.Error:
        return {}
    out = {}
    for p in procs:
        try:
            if p.pid != os.getpid():
                out[p.pid] = p.create_time()
        except psutil.Error:
            continue
    return out


def _end(known: dict[int, float], grace_s: float = 1.0) -> int:
    """SIGTERM each of ``known`` that is still the same process, SIGKILL what is left after ``grace_s``; how many."""
    import psutil

    alive = []
    for pid, created in known.items():
        try:
            p = psutil.Process(pid)
            if abs(p.create_time() - created) < 1e-3:
                p.send_signal(signal.SIGTERM)
                alive.append(p)
        except psutil.Error:
            continue
    _, left = psutil.wait_procs(alive, timeout=grace_s)
    for p in left:
        with contextlib.suppress(psutil.Error):
            p.kill()
    return len(alive)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    driver, interval = int(args[0]), float(args[1]) if len(args) > 1 else 2.0
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C reaches the driver, which shuts Ray down itself
    known: dict[int, float] = {}
    got = b""
    while True:
        known = {**known, **_descendants(driver)} if known else _descendants(driver)
        ready, _, _ = select.select([sys.stdin.buffer], [], [], interval)
        if not ready:
            continue
        chunk = os.read(sys.stdin.fileno(), 64)
        got += chunk
        if BYE in got:
            return 0
        if not chunk:  # the driver is gone without its line
            time.sleep(0.2)  # let the kernel reparent its children
            _end(known)
            return 0


if __name__ == "__main__":
    raise SystemExit(main())
