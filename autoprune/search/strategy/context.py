"""What the phases of one search run share, passed as one value instead of long parameter lists."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import optuna

from autoprune.config.spec import SearchSpec
from autoprune.model.space import Layer
from autoprune.search.storage.study import StudyStorage

if TYPE_CHECKING:
    from autoprune.search.execution.session import TuneSession

__all__ = ["RunContext"]


@dataclass(frozen=True)
class RunContext:
    """One search run: its study, storage and spec, the base model's prunable layers (empty until the baseline is
    measured) and the Ray cluster it runs on (None: a local Ray, or the one already up)."""

    study: optuna.Study
    store: StudyStorage
    spec: SearchSpec
    layers: tuple[Layer, ...] = ()
    ray_address: str | None = None
    session: TuneSession | None = None  # the search's one Tune run, which every phase's batches run in
