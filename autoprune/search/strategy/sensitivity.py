"""The sensitivity scan, cached per base model, and the allocated candidates it yields.

Each block (see :func:`autoprune.model.space.block_of`) is pruned alone at ``sensitivity.probes``
ratios, the whole model at ``sensitivity.sweep`` uniform ratios and not at all (the reference),
every probe adaptive-BN screened like a screening candidate (recipe criterion and rounding, no
latency timing: the cost is parameters). The probes are trials of an internal side study
``sensitivity-<key>`` whose key is the base model's weights fingerprint, the data set, imgsz,
criterion, rounding and the screen's batches (not the seed): a later study on the same base model and data
finds the probes done and screens only what is missing. :func:`allocated_candidates` turns the
scan into per-layer ratios at cost targets spread over the sweep's range and at each target's parameter cut
(:mod:`autoprune.model.allocation`); an allocation at a cut is sized on the true parameter count of the model it
prunes (:func:`true_saving`), so it meets the cut a user asked for.

In a budgeted run (:class:`ScanBudget`) the scan and the allocations' screens are sized to ``budget.scan_share``
of the budget: the calibration probes (reference and sweep) go first, their measured cost says at how many ratios
each block fits (at least one) and how many allocations over the cost range are screened (each target keeps its
own allocations).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from autoprune.config.spec import SearchSpec
from autoprune.model import records
from autoprune.model.allocation import (
    REFERENCE,
    UNIFORM,
    Probe,
    Sensitivity,
    allocate,
    block_options,
    calibrated,
    cost_targets,
    loss_exponent,
    sized,
)
from autoprune.model.budget import fit_count
from autoprune.model.sampling import params_for_policy, recipe_params, sample_policy, screen_space, target_keep
from autoprune.model.space import Layer, Space, blocks
from autoprune.search.execution.executor import Job
from autoprune.search.execution.session import TuneSession, run_trials
from autoprune.search.storage import journal
from autoprune.search.storage.study import StudyOptions, StudyStorage, fail_stale_trials, open_study, was_interrupted

logger = logging.getLogger(__name__)

__all__ = ["SCAN_OBJECTIVES", "scan_knobs", "scan_levels", "scan_name", "scan_job", "probe_params", "Scan",
           "ScanBudget", "ensure_scan", "read_scan", "Candidate", "allocated_candidates", "true_saving", "grid"]

SCAN_OBJECTIVES = ("map50_95", "params", "macs")  # deterministic costs: a probe is not timed
SIZE_TOLERANCE = 0.01  # an allocation at a cut may remove up to this share of the base's parameters more
CANDIDATES_PER_CUT = 2  # screened at each target's cut: sized allocations under the fitted and the linear loss curve


def scan_knobs(space: Space) -> tuple[str, int]:
    """The criterion and channel rounding probes use: the recipe's where the space offers them."""
    knobs = recipe_params(space, ("criterion", "round_to"))
    return str(knobs.get("criterion", space.criteria[0])), int(knobs.get("round_to", space.round_to[0]))


def grid(space: Space) -> list[float]:
    """The ratios the space allows (its step, else 0.05), from its low to its high end."""
    r = space.ratio
    step = r.step or 0.05
    n = int((r.high - r.low) / step + 1e-9)
    return [round(r.low + i * step, 10) for i in range(n + 1)]


def scan_levels(space: Space, n: int) -> list[float]:
    """``n`` ratios evenly up to the top of the space (k/n of its high end, on its grid), above 0."""
    g = [x for x in grid(space) if x > 0]
    if not g or n <= 0:
        return []
    return sorted({min(g, key=lambda x: abs(x - space.ratio.high * k / n)) for k in range(1, n + 1)})


def _key(spec: SearchSpec, fingerprint: str) -> dict[str, Any]:
    criterion, round_to = scan_knobs(spec.space)
    return {"fingerprint": fingerprint, "data": spec.data, "imgsz": spec.imgsz, "criterion": criterion,
            "round_to": round_to, "bn_batches": spec.screening.batches, "batch": spec.finetune.batch}


def scan_name(spec: SearchSpec, fingerprint: str) -> str:
    digest = hashlib.sha256(json.dumps(_key(spec, fingerprint), sort_keys=True).encode()).hexdigest()
    return f"sensitivity-{digest[:16]}"


def scan_job(spec: SearchSpec, layers: Sequence[Layer], name: str) -> Job:
    """Adaptive-BN screens of fixed per-layer policies: recipe criterion and rounding, no latency timing."""
    criterion, round_to = scan_knobs(spec.space)
    space = screen_space(spec.space).replace(shape="layer", criteria=(criterion,), round_to=(round_to,))
    untimed = dataclasses.replace(spec.latency, warmup=0, runs=3, rounds=1, interleave=False, lut=False)
    folder = spec.files_dir(name)
    return Job(kind="screen", settings=spec.trial_settings.replace(latency=untimed), space=space,
               layers=tuple(layers), objectives=SCAN_OBJECTIVES, study_dir=folder,
               artifact_dir=spec.artifacts_dir, resources=spec.resources, retries=0,
               screen_batches=spec.screening.batches,
               constraints=dataclasses.replace(spec.constraints, map_floor=0.0, params=None, macs=None,
                                               latency_ms=None, latency_ratio=None), queued_only=True)


def probe_params(layers: Sequence[Layer], block: str, ratio: float) -> dict[str, float]:
    """The fixed per-layer parameters of one probe (layer shape)."""
    members = {layer.name for layer in blocks(list(layers)).get(block, [])}
    return {f"ratio/{layer.name}": ratio if block == UNIFORM or layer.name in members else 0.0 for layer in layers}


def _wanted(spec: SearchSpec, layers: Sequence[Layer], levels: int) -> list[tuple[str, float]]:
    """The reference and the sweep (the calibration), then each block at ``levels`` ratios."""
    out = [(REFERENCE, 0.0)]
    out += [(UNIFORM, r) for r in scan_levels(spec.space, spec.sensitivity.sweep)]
    out += [(b, r) for b in blocks(list(layers)) for r in scan_levels(spec.space, levels)]
    return out


@contextlib.contextmanager
def _queue_lock(folder: Path) -> Iterator[None]:
    """An exclusive lock on the scan's folder while a driver reads what the scan holds and queues the rest, so two
    drivers started together on one machine do not both queue every probe (drivers on other machines sharing a
    PostgreSQL study can still, rarely, queue a probe twice: it is screened twice, nothing worse)."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "queue.lock", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _have(scan: optuna.Study) -> set[tuple[str, float] | None]:
    """The probes the scan holds, queued or taken by any driver (an interrupted probe is screened again)."""
    return {records.probe(t) for t in scan.get_trials(deepcopy=False)
            if t.state in (TrialState.COMPLETE, TrialState.FAIL, TrialState.WAITING, TrialState.RUNNING)
            and not was_interrupted(t)}


SCREEN_PER_PROBE = 1.3  # a screen's wall time over a probe's (a screen also times latency; 2.0 s / 1.55 s in §6g)


@dataclass(frozen=True)
class ScanBudget:
    """What a budgeted run allows its scan and the allocations' screens: ``seconds_left()`` until its ``share`` of
    the budget (``budget.scan_share``) is spent, of which the first round's other screens (each target's
    allocations and the sampler's proposals: ``reserve``) must be left."""

    share: float
    seconds_left: Callable[[], float]
    reserve: int

    @classmethod
    def of(cls, spec: SearchSpec, share: float, seconds_left: Callable[[], float]) -> ScanBudget:
        cuts = len(spec.targets)  # each target's allocations (target_allocation: params, MACs or latency)
        proposals = spec.screening.factor * max(1, len(spec.targets)) if spec.screening.proposals else 0
        return cls(share, seconds_left, CANDIDATES_PER_CUT * cuts + proposals)

    def _free(self, probe_s: float) -> float:
        return self.seconds_left() - self.reserve * probe_s * SCREEN_PER_PROBE

    def levels(self, spec: SearchSpec, layers: Sequence[Layer], probe_s: float | None) -> int:
        """Probe ratios per block that fit, given a probe's cost (none when not even one ratio per block fits: a
        busy machine's probes are slow, and a scan past its share would leave the final fine-tunes nothing; all
        without a cost)."""
        most = spec.sensitivity.probes
        if probe_s is None:
            return most
        return fit_count(self._free(probe_s), max(1, len(blocks(list(layers)))) * probe_s, most, least=0)

    def deadline(self) -> float:
        """The ``time.time()`` after which no probe starts: where the scan's share ends."""
        return time.time() + self.seconds_left()

    def allocations(self, spec: SearchSpec, scan: Scan) -> int:
        """Allocations over the cost range whose screens fit after ``scan`` (all without a cost; at least one
        without targets to allocate at); says so when the budget shrank the scan or them."""
        most, probe_s = spec.sensitivity.candidates, scan.probe_s
        if not scan.sensitivity.probes:  # no block was probed (now or before): nothing to allocate from
            return 0
        least = 0 if spec.targets else min(1, most)
        n = most if probe_s is None else fit_count(self._free(probe_s), probe_s * SCREEN_PER_PROBE, most, least)
        if (scan.levels, n) != (spec.sensitivity.probes, most):
            logger.info("budget: the scan probed each block at %d ratio(s) of %d and %d allocation(s) of %d are "
                        "screened, to fit budget.scan_share %.0f%% (a probe took %.1f s)", scan.levels,
                        spec.sensitivity.probes, n, most, 100 * self.share, probe_s or 0.0)
        return n


@dataclass(frozen=True)
class Scan:
    """A run's sensitivity scan: what it holds, the probes screened now (their trial numbers) and, when the run
    sized it to a budget, the probe ratios per block it asked for and a probe's measured cost."""

    sensitivity: Sensitivity
    ran: set[int]
    study: optuna.Study
    levels: int
    probe_s: float | None = None


def _screen_missing(scan: optuna.Study, store: StudyStorage, spec: SearchSpec, layers: Sequence[Layer], name: str,
                    wanted: Sequence[tuple[str, float]], ray_address: str | None,
                    deadline: float | None = None, session: TuneSession | None = None) -> int:
    """Queue the ``wanted`` probes the scan lacks and screen what is queued, none started after ``deadline`` (those
    stay queued for the next run); returns how many were queued to screen."""
    job = scan_job(spec, layers, name)
    with _queue_lock(job.study_dir):  # drivers on this machine queue one at a time
        missing = [p for p in wanted if p not in _have(scan)]
        for block, ratio in missing:
            scan.enqueue_trial(probe_params(layers, block, ratio), user_attrs=records.probe_attrs(block, ratio))
    waiting = len(scan.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
    if waiting:
        logger.info("sensitivity scan: screening %d probe(s) (%d cached in %s)", waiting, len(wanted) - len(missing),
                    name)
        run_trials(scan, store, job, waiting, ray_address=ray_address, deadline=deadline, session=session)
    else:
        logger.info("sensitivity scan: all %d probes cached in %s", len(wanted), name)
    return waiting


def ensure_scan(study: optuna.Study, store: StudyStorage, spec: SearchSpec, layers: Sequence[Layer],
                ray_address: str | None = None, sizing: ScanBudget | None = None,
                session: TuneSession | None = None) -> Scan:
    """Screen the probes the cached scan lacks. With ``sizing`` (a budgeted run) the calibration probes (reference
    and sweep) go first, and what one took says at how many ratios each block is probed (``sensitivity.probes``
    without it)."""
    fingerprint = records.fingerprint(study) or ""
    name = scan_name(spec, fingerprint)
    scan = open_study(StudyOptions(name, SCAN_OBJECTIVES, spec.sampler, spec.seed, spec.trials, role="sensitivity"),
                      store)
    records.copy_study_attrs(study, scan, scan)
    if not records.scan_key(scan):
        records.set_scan_key(scan, _key(spec, fingerprint))
    journal.replay(scan, store, scan_job(spec, layers, name).study_dir)
    fail_stale_trials(scan, store, 0)
    before = {t.number for t in scan.get_trials(deepcopy=False)}  # before enqueueing: the probes run now are new
    n, probe_s = spec.sensitivity.probes, None
    if sizing is not None:
        t0 = time.perf_counter()
        done = len(scan.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
        _screen_missing(scan, store, spec, layers, name, _wanted(spec, layers, 0), ray_address, sizing.deadline(),
                        session)
        ran = len(scan.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))) - done
        # a probe's cost with its share of the orchestration; from the records when the calibration was cached
        probe_s = (time.perf_counter() - t0) / ran if ran else records.mean_wall_seconds(
            scan.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
        n = sizing.levels(spec, layers, probe_s) if probe_s is not None else 0  # none measured: the share is gone
    if n or sizing is None:
        _screen_missing(scan, store, spec, layers, name, _wanted(spec, layers, n), ray_address,
                        sizing.deadline() if sizing is not None else None, session)
    else:
        logger.info("budget: not one probe ratio per block fits budget.scan_share %.0f%% (a probe took %.1f s): no "
                    "block is probed, no allocation is made", 100 * sizing.share, probe_s or 0.0)
    return Scan(read_scan(scan, records.baseline_metrics(study).get("params", 0.0)),
                {t.number for t in scan.get_trials(deepcopy=False)} - before, scan, n, probe_s)


def read_scan(scan: optuna.Study, base_cost: float, metric: str = "params") -> Sensitivity:
    """The scan's probes (a failed probe has no mAP), costed in ``metric`` (params or macs; ``base_cost``: the
    base's); the reference mAP from the reference probe."""
    probes, sweep, reference = [], [], None
    for t in scan.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL)):
        key = records.probe(t)
        if key is None or was_interrupted(t):  # not a result: it is screened again
            continue
        m = records.trial(t).metrics
        ok = t.state == TrialState.COMPLETE and "map50_95" in m
        p = Probe(key[0], key[1], float(m["map50_95"]) if ok else None, float(m.get(metric, base_cost)))
        if p.block == REFERENCE:
            reference = p.map50_95 if p.map50_95 is not None else reference
        elif p.block == UNIFORM:
            sweep.append(p)
        else:
            probes.append(p)
    if reference is None:
        reference = max((p.map50_95 for p in probes if p.map50_95 is not None), default=0.0)
    return Sensitivity(reference, base_cost, tuple(probes), tuple(sweep))


@dataclass(frozen=True)
class Candidate:
    ratios: dict[str, float]  # per layer
    target: float  # the share of the base model's ``metric`` it was allocated to remove
    predicted_map: float  # predicted adaptive-BN mAP50-95
    exponent: float = 1.0  # the loss curve's power it was allocated under (loss ~ ratio ** exponent)
    metric: str = "params"  # what it was sized on: params, macs (counted) or latency_ratio (timed)

    @property
    def source(self) -> str:
        return (f"allocation (loss ~ ratio^{self.exponent:.1f}): {_METRIC_WORDS[self.metric]} -{self.target:.0%}, "
                f"predicted screen mAP50-95 {self.predicted_map:.3f}")


_METRIC_WORDS = {"params": "params", "macs": "MACs", "latency_ratio": "latency"}
# the knapsack's currency for a target on each metric: a latency target is allocated on MACs, then sized on the
# pruned copies' measured latency
ALLOCATION_COST = {"params": "params", "macs": "macs", "latency_ratio": "macs"}


def _per_layer(grouped: Mapping[str, Sequence[Layer]], block_ratios: Mapping[str, float]) -> dict[str, float]:
    """Per-block ratios spelled out for every layer of each block (0 for a block without one)."""
    return {layer.name: block_ratios.get(b, 0.0) for b, members in grouped.items() for layer in members}


def true_saving(spec: SearchSpec, layers: Sequence[Layer], criterion: str, round_to: int,
                metric: str = "params") -> Callable[[Mapping[str, float]], float]:
    """The share of the base's ``metric`` a per-block allocation truly removes: projected onto the space and sampled
    back as the search screens it (criterion and rounding as the allocations get them), then a copy pruned and
    counted (params, macs) or timed against the base (latency_ratio, on the spec's runtime)."""
    from autoprune.adapters import yolo
    from autoprune.engine.uniform import pruned_share

    model = yolo.load_model(spec.model).to(spec.device if metric == "latency_ratio" else "cpu")
    grouped = blocks(list(layers))
    original = {layer.name: layer.channels for layer in layers}

    def saving(block_ratios: Mapping[str, float]) -> float:
        ratios = _per_layer(grouped, block_ratios)
        params = params_for_policy(spec.space, layers, {"ratios": ratios, "criterion": criterion,
                                                        "round_to": round_to})
        policy = sample_policy(optuna.trial.FixedTrial(params), spec.space, layers)
        keep = target_keep(original, policy.ratio_map, 1, 1, policy.round_to)
        return 1.0 - pruned_share(model, spec.trial_settings, keep, metric)

    return saving


def allocated_candidates(sens: Sensitivity, space: Space, layers: Sequence[Layer], n: int,  # noqa: PLR0913
                         cuts: Sequence[float] = (),
                         saving: Callable[[Mapping[str, float]], float] | None = None,
                         metric: str = "params", curves: int = 2) -> list[Candidate]:
    """At each of ``cuts`` (shares of the base's parameters a user targets) two allocations, one with the loss along
    the scan's fitted curve and one with it linear (the knapsack's additive prediction ranks allocations of one size
    only roughly, so two answers of the same size are screened), each sized with ``saving`` (the share an allocation
    truly removes: :func:`true_saving`) to meet the cut within :data:`SIZE_TOLERANCE`; then up to ``n`` distinct
    fitted allocations at cost targets spread over the sweep's range. Without ``saving``, the uniform sweep's
    calibration alone sizes them. ``metric``: what the cuts and ``saving`` are shares of (``sens`` costed in params,
    or in MACs for a MACs or latency cut); ``curves`` 1: the fitted curve's allocation alone (each sizing of a
    latency cut times pruned copies)."""
    g = grid(space)
    fitted = block_options(sens, g)
    shapes = [(loss_exponent(sens), fitted), (1.0, block_options(dataclasses.replace(sens, sweep=()), g))][:curves]
    grouped = blocks(list(layers))
    base = sens.base_cost
    found: list[Candidate] = []

    def per_layer(block_ratios: Mapping[str, float]) -> dict[str, float]:
        return _per_layer(grouped, block_ratios)

    for cut, first in zip(cuts, calibrated(sens, fitted, [c * base for c in cuts])):
        for p, options in shapes:
            if saving is None:
                a = allocate(options, sens.reference_map, first)
            else:
                a, true = sized(options, sens.reference_map, cut * base, first, lambda r: saving(r) * base,
                                SIZE_TOLERANCE * base)
                logger.info("allocation at %s -%.0f%% (loss ~ ratio^%.1f): it removes %.1f%% of it (pruned and %s)",
                            _METRIC_WORDS[metric], 100 * cut, p, 100 * true / base if base else 0.0,
                            "timed" if metric == "latency_ratio" else "counted")
            found.append(Candidate(per_layer(a.ratios), cut, a.predicted_map, p, metric))
    spread = cost_targets(sens, n)
    for t, summed in zip(spread, calibrated(sens, fitted, spread)):
        a = allocate(fitted, sens.reference_map, summed)
        found.append(Candidate(per_layer(a.ratios), t / base if base else 0.0, a.predicted_map, loss_exponent(sens)))
    out: list[Candidate] = []
    seen: set[tuple[float, ...]] = set()
    for c in found:
        key = tuple(c.ratios[layer.name] for layer in layers)
        if key in seen or not any(key):
            continue
        seen.add(key)
        out.append(c)
    return out
