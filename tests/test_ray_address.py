"""A --ray-address that is not a Ray head is refused in seconds, not after ray.init's minutes of waiting.

The peers here are plain sockets on localhost: an HTTP/1 server, a silent one, and (a fake of a gRPC server's
first bytes) one that answers the HTTP/2 preface with a SETTINGS frame, as a Ray head's GCS does. A real head is
checked by tests/test_ray_cluster.py, which passes its address to `autoprune search --ray-address`.
"""

from __future__ import annotations

import importlib.util
import socket
import threading
import time

import pytest

from autoprune.errors import InputError
from autoprune.search.execution.ray_setup import check_ray_address


def _server(reply: bytes | None):
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    conns = []

    def serve():
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            conns.append(conn)
            if reply is not None:
                try:
                    conn.recv(64)
                    conn.sendall(reply)
                except OSError:
                    pass

    threading.Thread(target=serve, daemon=True).start()
    return srv, conns


@pytest.mark.parametrize("reply", [b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n", None])
def test_a_port_that_is_not_a_ray_head_is_refused_within_the_timeout(reply):
    srv, conns = _server(reply)
    try:
        t0 = time.perf_counter()
        with pytest.raises(InputError, match="answers, but not as a Ray head"):
            check_ray_address(f"127.0.0.1:{srv.getsockname()[1]}", timeout_s=0.5)
        assert time.perf_counter() - t0 < 5
    finally:
        srv.close()
        for c in conns:
            c.close()


def test_a_grpc_peer_passes():
    settings_frame = bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])  # length 0, type SETTINGS, no flags, stream 0
    srv, conns = _server(settings_frame)
    try:
        check_ray_address(f"127.0.0.1:{srv.getsockname()[1]}", timeout_s=2)
    finally:
        srv.close()
        for c in conns:
            c.close()


def test_ray_client_addresses_need_the_client_extra(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "grpc" else real(name, *a))
    with pytest.raises(InputError, match=r"ray\[client\]"):
        check_ray_address("ray://127.0.0.1:10001")


def test_nothing_listening_and_bad_shapes():
    with pytest.raises(InputError, match="no Ray cluster answers"):
        check_ray_address("127.0.0.1:1", timeout_s=1)
    with pytest.raises(InputError, match="is not HOST:PORT"):
        check_ray_address("nohost")
    check_ray_address("auto")
    check_ray_address(None)


def test_a_local_rays_workers_run_at_the_drivers_priority(monkeypatch):
    """Ray starts its workers at niceness 15 by default: beside ordinary busy processes a trial got ~5% of a core.
    A local Ray started by autoprune runs them at niceness 0 (a real Ray, one remote task)."""
    import os

    import ray

    from autoprune.search.execution.ray_setup import WORKER_NICENESS_ENV, ray_session

    monkeypatch.delenv(WORKER_NICENESS_ENV, raising=False)
    if ray.is_initialized():
        pytest.skip("a Ray session is already up in this process")

    @ray.remote(num_cpus=0)
    def niceness() -> int:
        return os.nice(0)

    with ray_session(None):
        assert ray.get(niceness.remote()) == os.nice(0)  # Ray's default would be 15 above it
