"""The local Ray's reaper (autoprune.search.execution.reaper) on real processes: a stand-in driver (a Python process
that starts a long-running child, as the driver starts Ray's processes) and the reaper with its pipe."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time

import psutil

DRIVER = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True)
print(child.pid, flush=True)
r = subprocess.Popen([sys.executable, "-m", "autoprune.search.execution.reaper", str(__import__("os").getpid()),
                      "0.2"], stdin=subprocess.PIPE, start_new_session=True)
print(r.pid, flush=True)
if sys.argv[1] == "bye":
    time.sleep(1.0)
    r.stdin.write(b"bye\\n"); r.stdin.close(); r.wait(10)
time.sleep(120)
"""


def _start(mode):
    drv = subprocess.Popen([sys.executable, "-c", DRIVER, mode], stdout=subprocess.PIPE, text=True,
                           cwd=os.path.dirname(os.path.dirname(__file__)))
    child, reaper = int(drv.stdout.readline()), int(drv.stdout.readline())
    return drv, child, reaper


def _gone(pid, within):
    deadline = time.time() + within
    while time.time() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.1)
    return False


def test_a_killed_drivers_processes_are_ended_by_the_reaper():
    drv, child, reaper = _start("kill")
    try:
        time.sleep(1.0)  # the reaper has noted the driver's descendants
        os.kill(drv.pid, signal.SIGKILL)
        drv.wait(10)
        assert _gone(child, 10), "the killed driver's child is still running"
        assert _gone(reaper, 10)
    finally:
        for pid in (child, reaper):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_a_driver_that_said_bye_leaves_its_processes_alone():
    drv, child, reaper = _start("bye")
    try:
        assert _gone(reaper, 15)  # it exits on the driver's line
        os.kill(drv.pid, signal.SIGKILL)
        drv.wait(10)
        time.sleep(1.0)
        assert not _gone(child, 0.5)  # nothing ended it
    finally:
        for pid in (child, drv.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
