"""optuna-dashboard on the study storage, with the artifact store of trial files."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from autoprune.search.artifacts import artifact_store
from autoprune.search.study import check_database, get_storage, masked

logger = logging.getLogger(__name__)

__all__ = ["dashboard_app", "serve_dashboard"]


def dashboard_app(storage_url: str, artifact_dir: str | Path) -> Any:  # a WSGI application
    from optuna_dashboard import wsgi

    check_database(storage_url)  # serve an existing study database; never create one at a mistyped path
    return wsgi(get_storage(storage_url).rdb, artifact_store=artifact_store(artifact_dir))


def serve_dashboard(storage_url: str, artifact_dir: str | Path, host: str = "127.0.0.1", port: int = 8080) -> None:
    """Serve until interrupted (wsgiref, like ``optuna-dashboard`` itself)."""
    from wsgiref.simple_server import make_server

    app = dashboard_app(storage_url, artifact_dir)
    with make_server(host, port, app) as httpd:
        logger.info("optuna-dashboard for %s at http://%s:%d/ (Ctrl-C to stop)", masked(storage_url), host, port)
        httpd.serve_forever()
