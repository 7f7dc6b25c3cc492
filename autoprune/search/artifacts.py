"""Per-trial artifacts (policy file, pruned checkpoint) in an Optuna artifact store.

Uploaded by the driver while the trial is still RUNNING (Optuna's rule), so that
optuna-dashboard offers them for download on the trial's page.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.artifacts import FileSystemArtifactStore, upload_artifact

logger = logging.getLogger(__name__)

__all__ = ["artifact_store", "write_and_upload"]

def artifact_store(path: str | Path) -> FileSystemArtifactStore:
    p = Path(path)
    p.mkdir(parents=True, exist_ok=True)
    return FileSystemArtifactStore(str(p))


def write_and_upload(trial: optuna.Trial, store: FileSystemArtifactStore, trial_dir: Path,
                     document: dict[str, Any], checkpoint: str | None) -> list[str]:
    """Write ``policy.yaml`` into ``trial_dir`` and upload it (and the checkpoint) for ``trial``."""
    trial_dir.mkdir(parents=True, exist_ok=True)
    policy_file = trial_dir / "policy.yaml"
    policy_file.write_text(yaml.safe_dump(document, sort_keys=False))
    ids = [upload_artifact(artifact_store=store, file_path=str(policy_file), study_or_trial=trial,
                           mimetype="application/x-yaml")]
    if checkpoint and Path(checkpoint).is_file():
        ids.append(upload_artifact(artifact_store=store, file_path=str(checkpoint), study_or_trial=trial,
                                   mimetype="application/octet-stream"))
    return ids
