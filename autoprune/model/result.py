"""What a trial or a screen reports (one JSON payload from a Ray worker to the driver), and the user attributes
the study records of it (:mod:`autoprune.model.records` writes them)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["TrialResult"]


@dataclass
class TrialResult:
    """What a trial or a screen reports, from the engine through the executor to the study: its metrics, and the
    user attributes the study records (each non-None field below, under its own name)."""

    ok: bool
    metrics: dict[str, float] = field(default_factory=dict)
    reason: str = ""  # why it failed (one line)
    policy: dict[str, Any] | None = None  # Policy.to_dict()
    channels: dict[str, int] | None = None  # channels kept per prunable unit
    latency: dict[str, Any] | None = None  # the latency record (engine.measure)
    seconds: dict[str, float] | None = None  # wall seconds per phase (load, prune, finetune, measure, ...)
    checkpoint: str | None = None  # the pruned model's plain-ultralytics checkpoint
    roundtrip: dict[str, float] | None = None  # the reloaded checkpoint's metrics
    finetune: dict[str, Any] | None = None  # epochs, batches, optimizer steps; kept: finetuned | adaptive_bn
    sparse: dict[str, Any] | None = None  # the sparse-trained base it pruned
    blocks: dict[str, Any] | None = None  # layer pruning: bottlenecks removed per block
    bn_batches: int | None = None  # a screen: batches its BN statistics were re-estimated on
    screen_seconds: float | None = None  # a screen: its own wall time
    wall_seconds: float | None = None  # the whole job's wall time
    ray_node: str | None = None  # the Ray node that ran it
    ray_worker: dict[str, int] | None = None  # its worker process: pid, and (counted by the driver) jobs run
    extra: dict[str, Any] = field(default_factory=dict)  # attributes of a payload this version does not know

    @property
    def attrs(self) -> dict[str, Any]:
        """The user attributes the study records for it."""
        return {**self.extra, **{f.name: v for f in dataclasses.fields(self)
                                 if f.name not in _RESULT_ONLY and (v := getattr(self, f.name)) is not None}}

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "metrics": self.metrics, "attrs": self.attrs, "reason": self.reason}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> TrialResult:
        known = {f.name for f in dataclasses.fields(cls)} - _RESULT_ONLY
        raw = dict(d.get("attrs") or {})
        return cls(ok=bool(d.get("ok")), metrics=dict(d.get("metrics") or {}), reason=str(d.get("reason") or ""),
                   **{k: v for k, v in raw.items() if k in known},
                   extra={k: v for k, v in raw.items() if k not in known})


_RESULT_ONLY = frozenset({"ok", "metrics", "reason", "extra"})
