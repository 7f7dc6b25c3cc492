"""Progressive delivery: the targets finalized from the least pruned to the most, each later candidate continued
from an earlier target's delivery instead of from the base.

The hand recipe trains each target's model from the base on its own. Its models at two targets differ only in how
many channels each layer keeps (uniform ratios, rounded alike), so the smaller one can be reached from the larger
one's *trained* weights too: prune the earlier delivery on to the recipe's channel counts (by the recipe's own
criterion) and fine-tune that. The result has exactly the recipe's architecture (the same channels, parameters and
latency as the recipe's trial, checked), and it inherits every second the earlier targets were trained: iterative
pruning across targets. Every target gets an equal part of the final phase's time, as the recipe gives each its
own (what a later target inherits comes on top); ``budget.chain_first_share`` gives the chain's first that share
instead, the others sharing the rest. Where no search ran, every delivery is the recipe's model and the chain's
first inherits nothing: it gets at least the time the recipe gives a target (the budget's part, less what the
recovery probe trained it), the run's start paid by the targets that inherit. The search's pick at a later target
continues alike where the earlier delivery has at least its channels in every layer.

Where the earlier delivery is narrower than a candidate in some layer (the search's pick delivered first, its
allocation unlike the recipe's), the delivery is pruned on to the narrower of the two in every layer: fewer
parameters than the candidate and no layer wider than either, the earlier training inherited. That model is made a
trial of its own (saved, measured like any trial, recorded as ``continued``) and races beside the candidate, which
starts from its own checkpoint: the race, on the user's train and val splits, decides between the inherited start
and the candidate's own architecture.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from autoprune.config.sections import TrialSettings
from autoprune.config.spec import SearchSpec
from autoprune.errors import AutopruneError
from autoprune.model import records
from autoprune.model.budget import Target

logger = logging.getLogger(__name__)

__all__ = ["Earlier", "Inherited", "chain_order", "continued_trial", "earlier_of", "first_seconds", "inherit"]


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
    """A candidate's start continued from an earlier delivery and where it comes from: the weights of the
    candidate's own architecture (``state``), or, where the delivery was narrower than the candidate in some layer,
    the delivery pruned on to the narrower of the two in every layer (``model``, with its ``channels``: another
    architecture, made a trial of its own by :func:`continued_trial`)."""

    state: Mapping[str, Any] | None
    record: Mapping[str, Any]  # {"target", "trial", "prune_s", "params"} (+ "capped_layers" for a capped one)
    model: Any = None
    channels: Mapping[str, int] | None = None


def chain_order(targets: Sequence[Target], size: Mapping[Target, float]) -> list[Target]:
    """``targets`` from the largest model to the smallest (``size``: the parameters of each target's recipe model,
    else of its first candidate); a stable sort, so equal sizes keep the spec's order."""
    return sorted(targets, key=lambda t: -size.get(t, 0.0))


def first_seconds(left: float, pending: int, first_share: float | None, chained: bool, floor: float = 0.0) -> float:
    """The final seconds of the next target among ``pending``: an equal part of what is left, except that the
    chain's first (when another target follows it) gets ``first_share`` of it, and at least ``floor`` (what the hand
    recipe would train it: it inherits nothing), as far as that leaves each later target half its equal part."""
    if not chained or pending <= 1:
        return left / max(1, pending)
    share = left * first_share if first_share is not None else left / pending
    return max(share, min(floor, left * (pending + 1) / (2 * pending)))


def _depth(policy: Mapping[str, Any] | None) -> int:
    return int((policy or {}).get("depth", 0) or 0)


def earlier_of(target: Target, trial: Any, checkpoint: Path | None) -> Earlier | None:
    """``trial``'s delivery at ``target`` as a chain link (None without a delivered checkpoint)."""
    if checkpoint is None or not checkpoint.is_file():
        return None
    rec = records.trial(trial)
    return Earlier(target.label, trial.number, checkpoint, dict(rec.channels), _depth(rec.policy))


def _blocked(earlier: Earlier, keep: Mapping[str, int], depth: int) -> str | None:
    """Why ``earlier`` cannot be pruned on to (at most) ``keep`` at all (None: it can)."""
    if earlier.depth != depth:
        return f"it has {earlier.depth} block(s) removed, the candidate {depth}"
    if set(earlier.channels) != set(keep):
        return "its prunable layers differ from the candidate's"
    return None


def _narrower(earlier: Earlier, keep: Mapping[str, int]) -> list[str]:
    return [n for n, c in keep.items() if earlier.channels[n] < c]


def inherit(earlier: Sequence[Earlier], trial: Any, settings: TrialSettings, capped: bool = True) -> Inherited | None:
    """The model of ``trial`` (a recipe model, or the search's pick) reached from an earlier delivery: the latest of
    ``earlier`` that has at least its channels in every layer, loaded, pruned on to the trial's channel counts by
    the trial's criterion, and checked to have the trial's channels and parameter count. Where none has, and
    ``capped``: the latest delivery with the same blocks and layers, pruned on to the narrower of its own and the
    trial's channels in every layer (fewer parameters than the trial, and no layer wider than either). None (logged)
    where no earlier delivery fits or the prune fails: the trial then starts from its own checkpoint."""
    rec = records.trial(trial)
    keep, depth = dict(rec.channels), _depth(rec.policy)
    if not keep:
        logger.info("trial %d cannot continue from an earlier delivery: it records no channel counts", trial.number)
        return None
    exact = [e for e in earlier if _blocked(e, keep, depth) is None and not _narrower(e, keep)]
    if exact:
        return _prune_on(exact[-1], trial, settings, keep)
    for e in reversed(earlier):
        why = _blocked(e, keep, depth)
        if why is None:
            if capped:
                return _prune_on(e, trial, settings, {n: min(c, e.channels[n]) for n, c in keep.items()})
            first = _narrower(e, keep)[0]
            why = f"layer {first} keeps {e.channels[first]} channels, the candidate {keep[first]}"
        logger.info("trial %d cannot continue from the %s delivery: %s", trial.number, e.target, why)
    return None


def _prune_on(e: Earlier, trial: Any, settings: TrialSettings, want: Mapping[str, int]) -> Inherited | None:
    """``e``'s delivery pruned on to ``want`` (the trial's channels, or fewer where ``e`` is narrower)."""
    from autoprune.adapters import yolo
    from autoprune.engine.pipeline import prune_once

    rec = records.trial(trial)
    criterion = str((rec.policy or {}).get("criterion", "l2"))
    params = int(rec.metrics.get("params", 0))
    capped = sum(1 for n, c in want.items() if c < rec.channels[n])
    t0 = time.perf_counter()
    try:
        model = yolo.load_model(e.checkpoint).to(settings.device)
        got = prune_once(model, settings, criterion, want, regularize=False)
        found = yolo.count_params(model)
    except (AutopruneError, RuntimeError, ValueError, OSError) as err:
        why = f"pruning it on failed ({str(err).strip().splitlines()[0][:200] if str(err).strip() else err!r})"
        logger.info("trial %d cannot continue from the %s delivery: %s", trial.number, e.target, why)
        return None
    if got != dict(want) or (not capped and found != params):
        why = ("pruned on, its channels differ from the candidate's" if got != dict(want) else
               f"pruned on, it has {found:,} parameters, the candidate {params:,}")
        logger.info("trial %d cannot continue from the %s delivery: %s", trial.number, e.target, why)
        return None
    record = {"target": e.target, "trial": e.trial, "prune_s": round(time.perf_counter() - t0, 2), "params": found}
    if capped:
        logger.info("trial %d continues from the %s delivery (trial %d), which is narrower in %d layer(s): pruned on "
                    "to the narrower of the two in every layer (%s parameters, the candidate %s) in %.1f s",
                    trial.number, e.target, e.trial, capped, f"{found:,}", f"{params:,}", record["prune_s"])
        return Inherited(None, {**record, "capped_layers": capped}, model.cpu(), got)
    logger.info("trial %d continues from the %s delivery (trial %d), pruned on to its channels in %.1f s",
                trial.number, e.target, e.trial, record["prune_s"])
    return Inherited({k: v.detach().cpu().clone() for k, v in model.state_dict().items()}, record)


def continued_trial(study: optuna.Study, spec: SearchSpec, candidate: Any, got: Inherited) -> FrozenTrial:
    """A capped continuation (``got.model``) made a completed trial of ``study``: saved, measured like every
    trial (validated, counted, timed against the base on the spec's runtime, no training), with the candidate's
    policy at its own channels, and a ``continued`` record (which delivery, which candidate) that keeps it out of
    the search's picks. Returns the trial."""
    from autoprune.adapters import yolo
    from autoprune.engine.measure import measure_model

    rec = records.trial(candidate)
    t0 = time.perf_counter()
    folder = spec.study_dir / "trials" / f"continued-{got.record['target']}-{candidate.number}"
    folder.mkdir(parents=True, exist_ok=True)
    model = got.model
    checkpoint = yolo.save_checkpoint(model, folder / "pruned.pt")
    recorded = records.baseline(study)
    base = yolo.load_model(str(recorded.get("model") or spec.model))
    settings = spec.trial_settings.replace(data=str(recorded.get("data") or spec.data))
    m = measure_model(model.to(spec.device), settings, reference=base.to(spec.device))
    original = {layer.name: layer.channels for layer in records.layers(study) or []}
    channels = dict(got.channels or {})
    policy = {**(rec.policy or {}), "ratios": {n: round(1 - c / original[n], 6) if original.get(n) else 0.0
                                               for n, c in channels.items()}}
    continued = {**got.record, "candidate": candidate.number}
    metrics = m.metrics()
    values = [float(metrics[name]) for name in records.study_objectives(study)]
    study.add_trial(optuna.trial.create_trial(values=values, user_attrs=records.continued_attrs(
        {"policy": policy, "channels": channels, "metrics": metrics, "latency": m.latency,
         "checkpoint": str(checkpoint), "wall_seconds": round(time.perf_counter() - t0, 2)}, continued)))
    made = max((t for t in study.get_trials(deepcopy=False) if records.trial(t).continued == continued),
               key=lambda t: t.number)
    logger.info("trial %d: trial %d's model continued from the %s delivery: val mAP50-95 %.4f, %s parameters, "
                "latency x%.2f", made.number, candidate.number, got.record["target"], m.map50_95, f"{m.params:,}",
                m.latency_ratio if m.latency_ratio is not None else float("nan"))
    return made
