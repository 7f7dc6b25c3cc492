"""Typed views of what a study stores in Optuna's user attributes: the only code that knows the keys.

Readers take anything with a ``user_attrs`` mapping (``optuna.Study``, ``optuna.Trial``,
``FrozenTrial``, a study summary); writers anything with ``set_user_attr`` (a study or a
live trial). Nothing here imports Optuna.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from autoprune.model import objectives
from autoprune.model.result import TrialResult
from autoprune.model.space import Layer

__all__ = ["Attrs", "Writer", "study_objectives", "stored_objectives", "baseline", "baseline_metrics", "layers",
           "fingerprint", "architecture", "trial_settings", "warm_started", "screening", "runs", "heartbeats",
           "is_side_study", "side_study_name", "RunTimings", "ScreenScore", "TrialResult", "TrialRecord", "trial",
           "HEARTBEAT_PREFIX", "continued_attrs", "set_recovery_probe", "recovery_probe",
           "set_objectives", "set_baseline", "set_references", "references", "role", "set_identity",
           "model_file_sha256", "set_layers",
           "set_trial_settings", "mark_warm_started", "set_screening", "append_run", "set_heartbeat", "set_role",
           "start_trial", "set_policy", "set_fail_reason", "write_result", "set_screen_score", "retry_attrs",
           "warm_start_attrs", "recipe_attrs", "screen_source_attrs", "remeasured_attrs", "set_artifact_dir",
           "copy_study_attrs", "probe_attrs", "probe",
           "set_scan_key", "scan_key", "set_driver_start", "driver_starts", "deliveries", "set_delivery",
           "append_budget_run", "budget_runs", "delivered_attrs", "mean_wall_seconds"]

HEARTBEAT_PREFIX = "heartbeat:"
_DRIVER_PREFIX = "driver:"  # when each driver (host:pid) opened the study
_ROLE = "autoprune_role"  # "screen" / "sensitivity" on an internal side study
_SIDE_SUFFIX = "-screen"  # the screen side study is NAME-screen (so it is known when made before roles)


class Attrs(Protocol):
    @property
    def user_attrs(self) -> Mapping[str, Any]: ...


class Writer(Protocol):
    def set_user_attr(self, key: str, value: Any) -> None: ...


# --- study -------------------------------------------------------------------------------------------------------

def study_objectives(s: Attrs) -> list[str]:
    return list(s.user_attrs.get("objectives") or objectives.DEFAULT)


def stored_objectives(s: Attrs) -> list[str] | None:
    """The objectives the study was created with (None for a study autoprune did not create)."""
    raw = s.user_attrs.get("objectives")
    return list(raw) if raw is not None else None


def baseline(s: Attrs) -> dict[str, Any]:
    """The baseline record (metrics, latency statistics, model, data, imgsz); empty if not measured."""
    return dict(s.user_attrs.get("baseline") or {})


def set_references(s: Writer, refs: Sequence[Mapping[str, Any]]) -> None:
    s.set_user_attr("references", [dict(r) for r in refs])


def references(s: Attrs) -> list[dict[str, Any]]:
    """Reference points drawn beside the front: the base model at each deployment the space searches
    ({"name", "precision", "imgsz", metric: value, ...}); empty if none were measured."""
    return [dict(r) for r in s.user_attrs.get("references") or []]


def baseline_metrics(s: Attrs) -> dict[str, float]:
    return {k: v for k, v in baseline(s).items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def layers(s: Attrs) -> list[Layer] | None:
    raw = s.user_attrs.get("layers")
    return [Layer(str(item[0]), int(item[1]), *(str(x) for x in item[2:3])) for item in raw] if raw else None


def fingerprint(s: Attrs) -> str | None:
    return s.user_attrs.get("model_fingerprint")


def architecture(s: Attrs) -> str:
    return str(s.user_attrs.get("architecture", ""))


def trial_settings(s: Attrs) -> dict[str, Any]:
    return dict(s.user_attrs.get("trial_settings") or {})


def warm_started(s: Attrs) -> int | None:
    return s.user_attrs.get("warm_started")


def screening(s: Attrs) -> dict[str, Any] | None:
    return s.user_attrs.get("screening")


def runs(s: Attrs) -> list[dict[str, Any]]:
    return list(s.user_attrs.get("runs") or [])


def deliveries(s: Attrs) -> dict[str, dict[str, Any]]:
    """The finalized model of each target, by target label (the latest budgeted run's): trial, folder, mAP before
    and after, or why there is none."""
    return dict(s.user_attrs.get("deliveries") or {})


def set_delivery(s: Attrs, w: Writer, label: str, record: Mapping[str, Any]) -> None:
    w.set_user_attr("deliveries", {**deliveries(s), label: dict(record)})


def delivered_attrs(t: Attrs, label: str, record: Mapping[str, Any],
                    earlier: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The trial attribute ``delivered`` that marks trial ``t`` as delivered for target ``label`` (what the final
    fine-tune made of it: val and test mAP50-95 after, its folder), beside any other target it was delivered for
    (``earlier``: this run's marks, which a cached trial ``t`` may not show yet): optuna-dashboard shows it on the
    trial's page next to the search's own values."""
    after = record.get("after") or {}
    entry = {"out_dir": record.get("out_dir"), "epochs": record.get("epochs"),
             **{f"{split}_map50_95": m.get("map50_95") for split, m in after.items()}}
    return {"delivered": {**dict(t.user_attrs.get("delivered") or {}), **dict(earlier or {}), label: entry}}


def budget_runs(s: Attrs) -> list[dict[str, Any]]:
    """Budgeted runs: the budget, the seconds charged to each phase, whether the scan was reused."""
    return list(s.user_attrs.get("budget_runs") or [])


def append_budget_run(s: Attrs, w: Writer, record: Mapping[str, Any], keep: int = 20) -> None:
    w.set_user_attr("budget_runs", [*budget_runs(s), dict(record)][-keep:])


def heartbeats(s: Attrs) -> dict[str, float]:
    return {k[len(HEARTBEAT_PREFIX):]: float(v) for k, v in s.user_attrs.items() if k.startswith(HEARTBEAT_PREFIX)}


def driver_starts(s: Attrs) -> dict[str, float]:
    return {k[len(_DRIVER_PREFIX):]: float(v) for k, v in s.user_attrs.items() if k.startswith(_DRIVER_PREFIX)}


def set_driver_start(s: Writer, driver: str, when: float) -> None:
    s.set_user_attr(f"{_DRIVER_PREFIX}{driver}", when)


def side_study_name(name: str) -> str:
    """The name of study ``name``'s screen side study."""
    return f"{name}{_SIDE_SUFFIX}"


def is_side_study(name: str, s: Attrs) -> bool:
    role = s.user_attrs.get(_ROLE)
    return role is not None and role != "main" or role is None and name.endswith(_SIDE_SUFFIX)


def set_objectives(s: Writer, names: Sequence[str]) -> None:
    s.set_user_attr("objectives", list(names))


def set_baseline(s: Writer, record: Mapping[str, Any]) -> None:
    s.set_user_attr("baseline", dict(record))


def set_identity(s: Writer, fingerprint: str, architecture: str, file_sha256: str | None = None) -> None:
    s.set_user_attr("model_fingerprint", fingerprint)
    s.set_user_attr("architecture", architecture)
    if file_sha256:
        s.set_user_attr("model_file_sha256", file_sha256)


def model_file_sha256(s: Attrs) -> str | None:
    return s.user_attrs.get("model_file_sha256")


def set_layers(s: Writer, layers: Sequence[Layer]) -> None:
    s.set_user_attr("layers", [[layer.name, layer.channels, layer.stage] for layer in layers])


def set_trial_settings(s: Writer, seed: int, finetune: Mapping[str, Any]) -> None:
    s.set_user_attr("trial_settings", {"seed": seed, "finetune": dict(finetune)})


def mark_warm_started(s: Writer, n: int) -> None:
    s.set_user_attr("warm_started", n)


def set_screening(s: Writer, summary: Mapping[str, Any]) -> None:
    s.set_user_attr("screening", dict(summary))


def set_heartbeat(s: Writer, driver: str, when: float) -> None:
    s.set_user_attr(f"{HEARTBEAT_PREFIX}{driver}", when)


def role(s: Attrs) -> str | None:
    """"main" (a user study), "screen" (an internal side study), or None (made by an older autoprune)."""
    return s.user_attrs.get(_ROLE)


def set_role(s: Writer, role: str) -> None:
    s.set_user_attr(_ROLE, role)


def set_scan_key(s: Writer, key: Mapping[str, Any]) -> None:
    """On a sensitivity study: what its probes depend on (base model, data, imgsz, criterion, rounding...)."""
    s.set_user_attr("scan_key", dict(key))


def scan_key(s: Attrs) -> dict[str, Any]:
    return dict(s.user_attrs.get("scan_key") or {})


_SHARED = ("baseline", "layers", "model_fingerprint", "model_file_sha256", "architecture", "trial_settings")


def copy_study_attrs(src: Attrs, dst: Writer, have: Attrs) -> None:
    """Copy the base-model records (baseline, layers, identity, settings) that ``have`` lacks."""
    for key in _SHARED:
        if key in src.user_attrs and key not in have.user_attrs:
            dst.set_user_attr(key, src.user_attrs[key])


@dataclass(frozen=True)
class RunTimings:
    """One ``autoprune search`` run's orchestration timing (kept in the study's ``runs`` list)."""

    started: str
    ray_init_s: float
    screen_run_s: float = 0.0
    screen_trial_s: float = 0.0
    run_s: float = 0.0
    trials: int = 0
    trial_s: float = 0.0
    overhead_share: float | None = None  # of the run's wall time, the share in which no trial or screen ran
    busy_s: float = 0.0  # wall time in which at least one trial or screen ran (overlaps counted once)
    trials_per_hour: float | None = None  # fine-tuned trials per hour of the run's wall time


def append_run(s: Attrs, w: Writer, run: RunTimings, keep: int = 20) -> None:
    w.set_user_attr("runs", [*runs(s), dataclasses.asdict(run)][-keep:])


# --- trial -------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ScreenScore:
    """On a promoted trial: the screen trial it came from and its adaptive-BN scores."""

    trial: int
    map50_95: float
    map50: float
    seconds: float | None = None


@dataclass(frozen=True)
class TrialRecord:
    policy: dict[str, Any] | None
    metrics: dict[str, float]
    fail_reason: str | None
    driver: str
    retry: int
    retry_of: int | None
    screen: ScreenScore | None
    wall_seconds: float
    checkpoint: str | None
    artifact_dir: str | None
    channels: dict[str, int]
    ray_node: str  # the Ray node that ran it ("" when unknown)
    ray_worker: dict[str, int]  # the worker process: its pid and how many jobs it had run, this one included
    latency: dict[str, Any]  # the latency record (engine.measure): pass statistics, ratio, its spread, ...
    sparse: dict[str, Any] | None  # the sparse base it pruned: L1 strength, epochs, BN-scale histograms
    remeasured: list[dict[str, Any]]  # earlier values that ``autoprune remeasure`` replaced, oldest first
    trained: dict[str, Any]  # its fine-tune: epochs, batches, optimizer steps, what keep-best kept (``finetuned``:
    # False for a trial that had adaptive BN in place of its fine-tune, ``budget.direct``)
    recipe: dict[str, Any] | None = None  # the hand recipe's model at a target: ``{"target": label, "ratio": r}``
    # a model the final phase made from an earlier delivery (progressive delivery, capped to a candidate's channels):
    # ``{"target", "trial", "candidate", "capped_layers", "prune_s"}``; neither the search's nor the recipe's
    continued: dict[str, Any] | None = None

    @property
    def searched(self) -> bool:
        """Made by the search: neither the hand recipe's model nor a continuation the final phase made."""
        return self.recipe is None and not self.continued


def trial(t: Attrs) -> TrialRecord:
    a = t.user_attrs
    sc = a.get("screen")
    return TrialRecord(
        policy=a.get("policy"), metrics=dict(a.get("metrics") or {}), fail_reason=a.get("fail_reason"),
        driver=str(a.get("driver", "")), retry=int(a.get("retry", 0)),
        retry_of=int(a["retry_of"]) if "retry_of" in a else None,
        screen=ScreenScore(int(sc["trial"]), float(sc["map50_95"]), float(sc["map50"]), sc.get("seconds"))
        if sc else None,
        wall_seconds=float(a.get("wall_seconds", 0.0) or 0.0), checkpoint=a.get("checkpoint"),
        artifact_dir=a.get("artifact_dir"), channels=dict(a.get("channels") or {}),
        ray_node=str(a.get("ray_node") or ""), ray_worker=dict(a.get("ray_worker") or {}),
        latency=dict(a.get("latency") or {}), remeasured=list(a.get("remeasured") or []),
        sparse=dict(a["sparse"]) if isinstance(a.get("sparse"), dict) else None,
        trained=dict(a["finetune"]) if isinstance(a.get("finetune"), dict) else {},
        recipe=dict(a["recipe"]) if isinstance(a.get("recipe"), dict) else None,
        continued=dict(a["continued"]) if isinstance(a.get("continued"), dict) else None)


def remeasured_attrs(rec: TrialRecord, metrics: Mapping[str, float], latency: Mapping[str, Any],
                     before: Mapping[str, float], at: str) -> dict[str, Any]:
    """The user attributes a re-timing of a finished trial replaces (its metrics and latency record), with the
    values it replaces appended to the trial's ``remeasured`` history."""
    return {"metrics": dict(metrics), "latency": dict(latency),
            "remeasured": [*rec.remeasured, {"at": at, **before, "latency": rec.latency}]}


def mean_wall_seconds(trials: Sequence[Attrs]) -> float | None:
    """Mean recorded wall time of ``trials`` (those that recorded one; None if none did)."""
    w = [x for x in (trial(t).wall_seconds for t in trials) if x > 0]
    return sum(w) / len(w) if w else None


def start_trial(t: Writer, driver: str, ray_trial_id: str) -> None:
    t.set_user_attr("driver", driver)
    t.set_user_attr("ray_trial_id", ray_trial_id)


def set_policy(t: Writer, policy: Mapping[str, Any]) -> None:
    t.set_user_attr("policy", dict(policy))


def set_fail_reason(t: Writer, reason: str) -> None:
    t.set_user_attr("fail_reason", reason)


def write_result(t: Writer, attrs: Mapping[str, Any], metrics: Mapping[str, float] | None = None,
                 baseline: Mapping[str, float] | None = None) -> None:
    """A trial's result record: the engine's attributes, then its metrics and the baseline's."""
    for k, v in attrs.items():
        t.set_user_attr(k, v)
    if metrics is not None:
        t.set_user_attr("metrics", dict(metrics))
    if baseline:
        t.set_user_attr("baseline", dict(baseline))


def set_artifact_dir(t: Writer, path: str) -> None:
    t.set_user_attr("artifact_dir", path)


def set_screen_score(t: Writer, score: ScreenScore) -> None:
    t.set_user_attr("screen", dataclasses.asdict(score))


def retry_attrs(t: Attrs) -> dict[str, Any]:
    """User attributes of a retry of ``t`` (which attempt, and the first trial of the chain)."""
    a = t.user_attrs
    attempt = int(a.get("retry", 0))
    return {"retry_of": int(a.get("retry_of", getattr(t, "number", 0))), "retry": attempt + 1}


def warm_start_attrs(source: str) -> dict[str, Any]:
    return {"warm_start": source}


def recipe_attrs(label: str, ratio: float) -> dict[str, Any]:
    """User attributes of the hand recipe's model at target ``label``: every layer pruned at ``ratio``."""
    return {"recipe": {"target": label, "ratio": ratio},
            **warm_start_attrs(f"hand recipe at {label}: uniform ratio {ratio:.2f}")}


def continued_attrs(result: Mapping[str, Any], continued: Mapping[str, Any]) -> dict[str, Any]:
    """User attributes of a capped continuation: its measured ``result`` (policy, channels, metrics, latency,
    checkpoint, wall_seconds) and the ``continued`` record (which delivery, which candidate)."""
    return {**dict(result), "continued": dict(continued)}


def set_recovery_probe(s: Writer, have: Attrs, trial: int, record: Mapping[str, Any]) -> None:
    """The recovery probe of recipe trial ``trial`` (on the study: its cached trials do not see a later mark)."""
    s.set_user_attr("recovery", {**(have.user_attrs.get("recovery") or {}), str(trial): dict(record)})


def recovery_probe(s: Attrs, trial: int) -> dict[str, Any] | None:
    found = (s.user_attrs.get("recovery") or {}).get(str(trial))
    return dict(found) if isinstance(found, dict) else None


def screen_source_attrs(score: ScreenScore) -> dict[str, Any]:
    return {"screen": dataclasses.asdict(score)}


def probe_attrs(block: str, ratio: float) -> dict[str, Any]:
    """User attributes of a sensitivity probe: which block (or the uniform sweep / the reference) at which ratio."""
    return {"probe": {"block": block, "ratio": ratio}}


def probe(t: Attrs) -> tuple[str, float] | None:
    p = t.user_attrs.get("probe")
    return (str(p["block"]), float(p["ratio"])) if p else None
