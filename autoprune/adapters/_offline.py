"""Make ultralytics run fully offline with files kept under autoprune's own home.

Must run before ``ultralytics`` is first imported: ultralytics reads its config
directory and offline flag at import time.  Only the ultralytics adapter imports
it, and it calls :func:`configure` first.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from autoprune.paths import config_dir

logger = logging.getLogger(__name__)

_DONE = False
_SETTINGS_OFF = ("sync", "raytune", "mlflow", "comet", "clearml", "dvc", "wandb", "tensorboard",
                 "vscode_msg", "openvino_msg")


def configure() -> None:
    """Set environment variables that ultralytics and matplotlib read at import."""
    global _DONE
    if _DONE:
        return
    cfg = config_dir()
    os.environ["YOLO_CONFIG_DIR"] = str(cfg)
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ.setdefault("YOLO_VERBOSE", "False")
    os.environ.setdefault("MPLCONFIGDIR", str(cfg / "matplotlib"))
    os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")
    # A checkpoint is a pickle: load it with torch's weights_only unpickler and ultralytics' allow-list of its
    # own classes, so a file cannot run code (`--trust-checkpoint` sets this to 0 for a file the user trusts).
    os.environ.setdefault("ULTRALYTICS_SAFE_LOAD", "1")
    _install_fonts(cfg / "Ultralytics")
    _DONE = True


def _install_fonts(user_dir: Path) -> None:
    """ultralytics' dataset check wants Arial; give it matplotlib's DejaVuSans instead of a download."""
    user_dir.mkdir(parents=True, exist_ok=True)
    targets = [user_dir / "Arial.ttf", user_dir / "Arial.Unicode.ttf"]
    if all(t.exists() for t in targets):
        return
    import matplotlib

    src = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    for t in targets:
        if not t.exists():
            shutil.copyfile(src, t)


def silence_settings() -> None:
    """Turn off ultralytics' integrations and sync (call right after importing ultralytics)."""
    from ultralytics.utils import SETTINGS

    wanted = {k: False for k in _SETTINGS_OFF if k in SETTINGS}
    if any(SETTINGS.get(k) for k in wanted):
        SETTINGS.update(wanted)
