"""Cheap screening of candidate policies (adaptive BatchNorm, as in EagleEye) and promotion.

A screened candidate is pruned straight to its final channel counts, its BatchNorm
statistics are re-estimated on a few training batches (no gradient step), and it is
validated: seconds instead of a fine-tune.  Screening runs as a side study
``NAME-screen`` in the same storage; the best-ranked candidates (non-dominated sorting on
the study's objectives, then screen mAP) are enqueued into the main study with their
parameters and fine-tuned there.  How well the screen ranked the final mAP is recorded as
Kendall's tau in the main study's ``screening`` attribute.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from autoprune import criteria, objectives
from autoprune.policy import Layer, Policy
from autoprune.spec import SearchSpec

logger = logging.getLogger(__name__)

__all__ = ["recalibrate_bn", "screen_policy", "kendall_tau", "promotion_order", "SCREEN_ATTR", "screening_summary"]

SCREEN_ATTR = "screen"  # on a promoted main-study trial: its screen trial and screen metrics


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: Iterable[dict[str, Any]]) -> int:
    """Adaptive BatchNorm: reset every BN's running statistics and re-estimate them (cumulative
    average) from forward passes in train mode.  Weights are not changed.  Returns the batch count."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative moving average over the calibration batches
    was_training = model.training
    model.train()
    n = 0
    try:
        for batch in batches:
            model(batch["img"])
            n += 1
    finally:
        for bn, m in zip(bns, momenta):
            bn.momentum = m
        model.train(was_training)
    return n


def screen_policy(spec: SearchSpec, policy: Policy, layers: Sequence[Layer], data: str,
                  batches: int) -> dict[str, Any]:
    """Prune to the policy's final channels, recalibrate BN, measure. Returns metrics and attrs."""
    from autoprune.adapters import tp, ultra
    from autoprune.trial import TRACE_IMGSZ, _accumulate_gradients, measure_model

    t0 = time.perf_counter()
    ultra.set_threads(spec.train_threads)
    torch.manual_seed(spec.seed)
    crit = criteria.get(policy.criterion)
    model = ultra.load_model(spec.model).to(spec.device)
    original = {layer.name: layer.channels for layer in layers}
    keep = tp.target_keep(original, policy.ratio_map, 1, 1, policy.round_to)
    if crit.needs_gradients:
        _accumulate_gradients(model, spec, data)
    channels = tp.prune_step(model, keep, tp.importance(crit.name), TRACE_IMGSZ)
    model.zero_grad(set_to_none=True)
    n = recalibrate_bn(model, ultra.training_batches(data, spec.imgsz, spec.finetune.batch, batches, spec.device,
                                                     spec.seed))
    reference = ultra.load_model(spec.model) if spec.latency.interleave else None
    m = measure_model(model, spec, data, reference=reference)
    return {"metrics": m.metrics(), "attrs": {"policy": policy.to_dict(), "channels": channels,
                                              "latency": m.latency, "bn_batches": n,
                                              "screen_seconds": round(time.perf_counter() - t0, 3)}}


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's tau-b of two paired sequences (nan with fewer than two pairs or no variation)."""
    n = len(x)
    if n != len(y):
        raise ValueError("x and y differ in length")
    conc = disc = tx = ty = 0
    for i in range(n):
        for j in range(i + 1, n):
            dx, dy = x[i] - x[j], y[i] - y[j]
            if dx == 0 and dy == 0:
                continue
            if dx == 0:
                tx += 1
            elif dy == 0:
                ty += 1
            elif (dx > 0) == (dy > 0):
                conc += 1
            else:
                disc += 1
    denom = math.sqrt((conc + disc + tx) * (conc + disc + ty))
    return (conc - disc) / denom if denom else float("nan")


def _dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))


def promotion_order(records: Sequence[dict[str, float]], names: Sequence[str], primary: str = "map50_95") -> list[int]:
    """Indices of ``records`` (metric dicts) best first: non-dominated rank, then ``primary``."""
    signs = [-1.0 if objectives.get(n).direction == "maximize" else 1.0 for n in names]
    losses = [[s * float(r[n]) for s, n in zip(signs, names)] for r in records]
    rank = [0] * len(records)
    remaining = set(range(len(records)))
    level = 0
    while remaining:
        front = {i for i in remaining if not any(_dominates(losses[j], losses[i]) for j in remaining if j != i)}
        for i in front:
            rank[i] = level
        remaining -= front
        level += 1
    sign = -1.0 if objectives.get(primary).direction == "maximize" else 1.0
    return sorted(range(len(records)), key=lambda i: (rank[i], sign * float(records[i][primary]), i))


def screening_summary(trials: Sequence[Any], screen_seconds: Sequence[float]) -> dict[str, Any]:
    """Kendall tau of screen mAP vs final mAP over promoted, completed trials, and the compute ratio."""
    pairs = [(t.user_attrs[SCREEN_ATTR]["map50_95"], t.user_attrs["metrics"]["map50_95"]) for t in trials
             if SCREEN_ATTR in t.user_attrs and "metrics" in t.user_attrs]
    full = [float(t.user_attrs.get("wall_seconds", 0.0)) for t in trials if SCREEN_ATTR in t.user_attrs]
    full = [s for s in full if s > 0]
    tau = kendall_tau([p[0] for p in pairs], [p[1] for p in pairs]) if len(pairs) >= 2 else float("nan")
    mean_screen = sum(screen_seconds) / len(screen_seconds) if screen_seconds else float("nan")
    mean_full = sum(full) / len(full) if full else float("nan")
    return {"kendall_tau": tau, "pairs": len(pairs), "screened": len(screen_seconds),
            "screen_seconds_mean": mean_screen, "full_seconds_mean": mean_full,
            "compute_saved_x": mean_full / mean_screen if mean_screen and mean_screen == mean_screen else float("nan")}


def screen_spec(spec: SearchSpec) -> SearchSpec:
    """The side study's spec: same objectives and space, short latency measurements."""
    from dataclasses import replace

    lat = replace(spec.latency, warmup=min(spec.latency.warmup, 2), runs=min(spec.latency.runs, 10),
                  rounds=min(spec.latency.rounds, 5))
    return spec.replace(name=f"{spec.name}-screen", latency=lat, retries=0)


def screen_trial_payload(spec: SearchSpec, policy: Policy, layers: Sequence[Layer], data: str) -> dict[str, Any]:
    from autoprune.trial import failure_reason

    t0 = time.perf_counter()
    try:
        out = screen_policy(spec, policy, layers, data, spec.screening.batches)
        out["attrs"]["wall_seconds"] = round(time.perf_counter() - t0, 3)
        return {"ok": True, **out, "reason": ""}
    except Exception as e:  # a failed screen is a failed candidate, never a stopped search
        return {"ok": False, "metrics": {}, "attrs": {"policy": policy.to_dict()}, "reason": failure_reason(e)}


_COPIED_ATTRS = ("baseline", "layers", "model_fingerprint", "architecture", "trial_settings")


def screen_and_promote(study: Any, spec: SearchSpec, layers: Sequence[Layer], n_promote: int,
                       fingerprint: str | None, ray_address: str | None = None) -> tuple[Any, set[int]]:
    """Screen ``factor x n_promote`` candidates in the side study, enqueue the best ``n_promote``
    (not promoted before) into ``study``.  Returns the side study and the numbers of its new trials."""
    from optuna.trial import TrialState

    from autoprune.executor import run_trials, screen_trial
    from autoprune.study import fail_stale_trials, open_study
    from autoprune.warmstart import warm_start

    sspec = screen_spec(spec)
    screen = open_study(sspec, study._storage)
    fail_stale_trials(screen, 0)  # screens left RUNNING by a dead driver
    for key in _COPIED_ATTRS:
        if key in study.user_attrs and key not in screen.user_attrs:
            screen.set_user_attr(key, study.user_attrs[key])
    waiting = len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))  # e.g. retries
    n_promote = max(0, n_promote - waiting)
    before = {t.number for t in screen.get_trials(deepcopy=False)}
    if n_promote == 0:
        return screen, set()
    n_screen = spec.screening.factor * n_promote
    warm_start(screen, spec, layers, fingerprint, limit=n_screen)
    logger.info("screening %d candidate policies with adaptive BatchNorm (%d batches each)", n_screen,
                spec.screening.batches)
    run_trials(screen, sspec, layers, spec.data, n_screen, ray_address=ray_address, trial_fn=screen_trial)
    promoted = {t.user_attrs[SCREEN_ATTR]["trial"] for t in study.get_trials(deepcopy=False)
                if SCREEN_ATTR in t.user_attrs}
    candidates = [t for t in screen.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                  if t.number not in promoted and "metrics" in t.user_attrs]
    names = [n for n in spec.objectives if all(n in t.user_attrs["metrics"] for t in candidates)]
    order = promotion_order([t.user_attrs["metrics"] for t in candidates], names) if candidates else []
    chosen = [candidates[i] for i in order[:n_promote]]
    for t in chosen:
        m = t.user_attrs["metrics"]
        study.enqueue_trial(t.params, user_attrs={SCREEN_ATTR: {
            "trial": t.number, "map50_95": m["map50_95"], "map50": m["map50"],
            "seconds": t.user_attrs.get("wall_seconds")}})
    logger.info("promoted %d of %d screened candidates to fine-tuning: screen trials %s", len(chosen),
                len(candidates), [t.number for t in chosen])
    return screen, {t.number for t in screen.get_trials(deepcopy=False)} - before


def record_screening(study: Any, spec: SearchSpec) -> dict[str, Any]:
    """Store (and return) the study's ``screening`` attribute: Kendall tau of screen vs final mAP."""
    from optuna.trial import TrialState

    from autoprune.study import open_study

    screen = open_study(screen_spec(spec), study._storage)
    seconds = [float(t.user_attrs.get("wall_seconds", 0.0))
               for t in screen.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    summary = screening_summary(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)),
                                [s for s in seconds if s > 0])
    summary = {k: (None if isinstance(v, float) and v != v else v) for k, v in summary.items()}
    study.set_user_attr("screening", summary)
    logger.info("screening: Kendall tau %s over %d promoted trials; a screen costs 1/%s of a trial",
                summary["kendall_tau"], summary["pairs"], summary["compute_saved_x"])
    return summary
