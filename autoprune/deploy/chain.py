"""Progressive delivery: the targets finalized from the least pruned to the most, each hand-recipe model continued
from an earlier target's delivery instead of from the base.

The hand recipe trains each target's model from the base on its own. Its models at two targets differ only in how
many channels each layer keeps (uniform ratios, rounded alike), so the smaller one can be reached from the larger
one's *trained* weights too: prune the earlier delivery on to the recipe's channel counts (by the recipe's own
criterion) and fine-tune that. The result has exactly the recipe's architecture (the same channels, parameters and
latency as the recipe's trial, checked), and it inherits every second the earlier targets were trained: iterative
pruning across targets. The first target of such a chain gets ``budget.chain_first_share`` of the final phase's
time (its training is inherited by every later one); the others share the rest equally. The search's pick at a
later target continues alike where the earlier delivery has at least its channels in every layer (its own
allocation, the earlier training inherited); the race then compares the continued candidates.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autoprune.config.sections import TrialSettings
from autoprune.errors import AutopruneError
from autoprune.model import records
from autoprune.model.budget import Target

logger = logging.getLogger(__name__)

__all__ = ["Earlier", "Inherited", "chain_order", "earlier_of", "first_seconds", "inherit"]


@dataclass(frozen=True)
class Earlier:
    """A delivery this run made: what a later target's candidate may continue from."""

    target: str  # its label
    trial: int
    checkpoint: Path
    channels: Mapping[str, int]
    depth: int  # blocks removed by layer pruning (a chain needs the same blocks)


@dataclass(frozen=True)
class Inherited:
    """A candidate's start continued from an earlier delivery: its weights and where they come from."""

    state: Mapping[str, Any]
    record: Mapping[str, Any]  # {"target", "trial", "prune_s", "params"}


def chain_order(targets: Sequence[Target], size: Mapping[Target, float]) -> list[Target]:
    """``targets`` from the largest model to the smallest (``size``: the parameters of each target's recipe model,
    else of its first candidate); a stable sort, so equal sizes keep the spec's order."""
    return sorted(targets, key=lambda t: -size.get(t, 0.0))


def first_seconds(left: float, pending: int, first_share: float, chained: bool) -> float:
    """The final seconds of the next target among ``pending``: the chain's first gets ``first_share`` of what is
    left (when another target follows it), every other target an equal part of what is left."""
    if chained and pending > 1:
        return left * first_share
    return left / max(1, pending)


def _depth(policy: Mapping[str, Any] | None) -> int:
    return int((policy or {}).get("depth", 0) or 0)


def earlier_of(target: Target, trial: Any, checkpoint: Path | None) -> Earlier | None:
    """``trial``'s delivery at ``target`` as a chain link (None without a delivered checkpoint)."""
    if checkpoint is None or not checkpoint.is_file():
        return None
    rec = records.trial(trial)
    return Earlier(target.label, trial.number, checkpoint, dict(rec.channels), _depth(rec.policy))


def _fits(earlier: Earlier, keep: Mapping[str, int], depth: int) -> str | None:
    """Why ``earlier`` cannot be pruned on to ``keep`` (None: it can)."""
    if earlier.depth != depth:
        return f"it has {earlier.depth} block(s) removed, the candidate {depth}"
    if set(earlier.channels) != set(keep):
        return "its prunable layers differ from the candidate's"
    wider = [n for n, c in keep.items() if earlier.channels[n] < c]
    if wider:
        return f"layer {wider[0]} keeps {earlier.channels[wider[0]]} channels, the candidate {keep[wider[0]]}"
    return None


def inherit(earlier: Sequence[Earlier], trial: Any, settings: TrialSettings) -> Inherited | None:
    """The model of ``trial`` (a recipe model, or the search's pick) reached from the latest of ``earlier`` that has
    at least its channels in every layer: that delivery loaded, pruned on to the trial's channel counts by the
    trial's criterion, and checked to have the trial's channels and parameter count. None (logged) where no earlier
    delivery fits or the prune fails: the trial then starts from its own checkpoint."""
    from autoprune.adapters import yolo
    from autoprune.engine.pipeline import prune_once

    rec = records.trial(trial)
    keep, depth = dict(rec.channels), _depth(rec.policy)
    criterion = str((rec.policy or {}).get("criterion", "l2"))
    params = int(rec.metrics.get("params", 0))
    for e in reversed(earlier):
        why = _fits(e, keep, depth) if keep else "the trial records no channel counts"
        if why is None:
            t0 = time.perf_counter()
            try:
                model = yolo.load_model(e.checkpoint).to(settings.device)
                got = prune_once(model, settings, criterion, keep, regularize=False)
                found = yolo.count_params(model)
                if got != keep or found != params:
                    why = (f"pruned on, it has {found:,} parameters, the candidate {params:,}" if got == keep
                           else "pruned on, its channels differ from the candidate's")
                else:
                    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
                    record = {"target": e.target, "trial": e.trial, "prune_s": round(time.perf_counter() - t0, 2),
                              "params": found}
                    logger.info("trial %d continues from the %s delivery (trial %d), pruned on "
                                "to its channels in %.1f s", trial.number, e.target, e.trial, record["prune_s"])
                    return Inherited(state, record)
            except (AutopruneError, RuntimeError, ValueError, OSError) as err:
                why = f"pruning it on failed ({str(err).strip().splitlines()[0][:200] if str(err).strip() else err!r})"
        logger.info("trial %d cannot continue from the %s delivery: %s", trial.number, e.target,
                    why)
    return None
