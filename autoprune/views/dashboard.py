"""optuna-dashboard on the study storage, with the artifact store of trial files."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from autoprune.model import objectives, records
from autoprune.search.storage.artifacts import artifact_store
from autoprune.search.storage.study import check_database, get_storage, masked
from autoprune.views.text import reference_values

logger = logging.getLogger(__name__)

__all__ = ["dashboard_app", "serve_dashboard", "reference_note", "annotate_references"]


NOTE_MARK = "<!-- autoprune: reference points -->"


def reference_note(study: Any) -> str:
    """The study note (markdown) that lists its reference points: the base model at each searched deployment."""
    names = records.study_objectives(study)
    base = records.baseline(study)
    lines = [NOTE_MARK, "**Reference points**: the unpruned base deployed as the search deploys its members "
             "(compare each front member with the base at its own precision and size).", "",
             "| reference | " + " | ".join(objectives.get(n).label for n in names) + " |",
             "|---|" + "---|" * len(names)]
    for ref in records.references(study):
        vals = [reference_values(ref, n, base) for n in names]
        lines.append(f"| {ref['name']} | " + " | ".join("-" if v is None else objectives.get(n).format(v)
                                                       for n, v in zip(names, vals)) + " |")
    return "\n".join(lines)


def annotate_references(storage: Any) -> int:
    """Write :func:`reference_note` into each study with reference points whose note is empty or autoprune's own
    (a note a user wrote is left alone); returns how many notes were written."""
    import optuna
    from optuna_dashboard import get_note, save_note

    n = 0
    for summary in optuna.get_all_study_summaries(storage):
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        if not records.references(study):
            continue
        note = get_note(study)
        if note and not note.startswith(NOTE_MARK):
            continue
        body = reference_note(study)
        if note != body:
            save_note(study, body)
            n += 1
    return n


def dashboard_app(storage_url: str, artifact_dir: str | Path) -> Any:  # a WSGI application
    from optuna_dashboard import wsgi

    check_database(storage_url)  # serve an existing study database; never create one at a mistyped path
    storage = get_storage(storage_url).rdb
    annotate_references(storage)
    return wsgi(storage, artifact_store=artifact_store(artifact_dir))


def serve_dashboard(storage_url: str, artifact_dir: str | Path, host: str = "127.0.0.1", port: int = 8080) -> None:
    """Serve until interrupted (wsgiref, like ``optuna-dashboard`` itself)."""
    from wsgiref.simple_server import make_server

    app = dashboard_app(storage_url, artifact_dir)
    with make_server(host, port, app) as httpd:
        logger.info("optuna-dashboard for %s at http://%s:%d/ (Ctrl-C to stop)", masked(storage_url), host, port)
        httpd.serve_forever()
