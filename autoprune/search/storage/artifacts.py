"""Per-trial artifacts (policy file, pruned checkpoint) in an Optuna artifact store.

Uploaded by the driver while the trial is still RUNNING (Optuna's rule), so that
optuna-dashboard offers them for download on the trial's page.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any, BinaryIO

import optuna
from optuna.artifacts import FileSystemArtifactStore, upload_artifact

from autoprune import yamlsafe

logger = logging.getLogger(__name__)

__all__ = ["AtomicArtifactStore", "artifact_store", "write_and_upload"]


class AtomicArtifactStore(FileSystemArtifactStore):
    """Optuna's file-system store, writing each artifact whole or not at all: into a hidden ``.part`` file renamed
    into place, removed when the write fails (a full disk left zero-byte and partial artifacts before)."""

    def write(self, artifact_id: str, content_body: BinaryIO) -> None:
        final = self._get_filepath(artifact_id)
        part = final.with_name(f".{final.name}.part")
        try:
            with open(part, "wb") as f:
                shutil.copyfileobj(content_body, f)
            os.replace(part, final)
        except BaseException:
            part.unlink(missing_ok=True)
            raise


def artifact_store(path: str | Path) -> FileSystemArtifactStore:
    p = Path(path)
    p.mkdir(parents=True, exist_ok=True)
    return AtomicArtifactStore(str(p))


def write_and_upload(trial: optuna.Trial, store: FileSystemArtifactStore, trial_dir: Path,
                     document: dict[str, Any], checkpoint: str | None) -> list[str]:
    """Write ``policy.yaml`` into ``trial_dir`` and upload it (and the checkpoint) for ``trial``."""
    trial_dir.mkdir(parents=True, exist_ok=True)
    policy_file = trial_dir / "policy.yaml"
    part = trial_dir / ".policy.yaml.part"
    try:
        part.write_text(yamlsafe.dump(document))
        part.replace(policy_file)
    finally:
        part.unlink(missing_ok=True)
    ids = [upload_artifact(artifact_store=store, file_path=str(policy_file), study_or_trial=trial,
                           mimetype="application/x-yaml")]
    if checkpoint and Path(checkpoint).is_file():
        ids.append(upload_artifact(artifact_store=store, file_path=str(checkpoint), study_or_trial=trial,
                                   mimetype="application/octet-stream"))
    return ids
