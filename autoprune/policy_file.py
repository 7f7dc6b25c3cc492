"""The exported policy document (``policy.yaml``): versioned, data only, loaded with safe YAML.

Schema (version 1)::

    schema: autoprune.policy
    version: 1
    base_model: {fingerprint: sha256 of the weights, architecture: yolov8n.yaml, path: ...}
    imgsz: 160
    seed: 0
    finetune: {batch, workers, optimizer, gradient_batches}   # the search's fine-tune settings
    policy: {criterion, iterations, lr, ema, epochs, round_to}
    ratios: {layer name: fraction removed}       # layer = module path of a prunable unit
    channels: {layer name: channels kept}          # what the ratios produced
    metrics: {map50_95, map50, params, macs, latency_ms}
    baseline: {same keys}
    source: {study, trial, storage, data}
    versions: {torch, ultralytics, torch_pruning, autoprune}
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from autoprune.errors import InputError
from autoprune.policy import Policy

__all__ = ["SCHEMA", "VERSION", "PolicyDocument", "fingerprint", "load_policy_file", "dump_policy_file",
           "versions", "document_for_trial"]

SCHEMA = "autoprune.policy"
VERSION = 1


def fingerprint(model: Any) -> str:
    """sha256 over the model's state (names, shapes, dtypes, values in float32): same weights, same print."""
    import torch

    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        if t.is_floating_point():
            t = t.detach().float()
        h.update(t.detach().cpu().contiguous().numpy().tobytes() if t.numel() else b"")
    del torch
    return "sha256:" + h.hexdigest()


def architecture(model: Any) -> str:
    yml = getattr(model, "yaml", None) or {}
    return str(yml.get("yaml_file") or type(model).__name__)


def versions() -> dict[str, str]:
    import torch

    import autoprune
    from autoprune.adapters import tp, ultra

    return {"torch": str(torch.__version__), "ultralytics": str(ultra.version()), "torch_pruning": str(tp.version()),
            "autoprune": str(autoprune.__version__)}


@dataclass(frozen=True)
class PolicyDocument:
    fingerprint: str
    architecture: str
    imgsz: int
    policy: Policy
    channels: Mapping[str, int]
    metrics: Mapping[str, float]
    baseline: Mapping[str, float]
    source: Mapping[str, Any]
    versions: Mapping[str, str]
    base_path: str = ""
    seed: int = 0
    finetune: Mapping[str, Any] = field(default_factory=dict)  # batch, optimizer, workers, gradient_batches

    def to_dict(self) -> dict[str, Any]:
        p = self.policy
        return {
            "schema": SCHEMA, "version": VERSION,
            "base_model": {"fingerprint": self.fingerprint, "architecture": self.architecture, "path": self.base_path},
            "imgsz": self.imgsz,
            "seed": self.seed,
            "finetune": dict(self.finetune),
            "policy": {"criterion": p.criterion, "iterations": p.iterations, "lr": p.lr, "ema": p.ema,
                       "epochs": p.epochs, "round_to": p.round_to},
            "ratios": dict(p.ratios),
            "channels": dict(self.channels),
            "metrics": dict(self.metrics),
            "baseline": dict(self.baseline),
            "source": dict(self.source),
            "versions": dict(self.versions),
        }


def document_for_trial(study_attrs: Mapping[str, Any], study_name: str, number: int,
                       trial_attrs: Mapping[str, Any], metrics: Mapping[str, float]) -> PolicyDocument:
    """The policy document of one trial, from the study's and the trial's user attributes."""
    base = dict(study_attrs.get("baseline") or {})
    settings = dict(study_attrs.get("trial_settings") or {})
    fp = study_attrs.get("model_fingerprint")
    if not fp:
        raise InputError(f"study {study_name!r} has no base-model fingerprint (made by an older autoprune)")
    return PolicyDocument(
        fingerprint=str(fp), architecture=str(study_attrs.get("architecture", "")),
        base_path=str(base.get("model", "")), imgsz=int(base.get("imgsz", 640)),
        policy=Policy.from_dict(trial_attrs["policy"]), channels=dict(trial_attrs.get("channels") or {}),
        metrics={k: float(v) for k, v in metrics.items()},
        baseline={k: float(v) for k, v in base.items() if isinstance(v, (int, float)) and not isinstance(v, bool)},
        source={"study": study_name, "trial": number, "data": base.get("data")},
        versions=versions(), seed=int(settings.get("seed", 0)), finetune=dict(settings.get("finetune") or {}))


def dump_policy_file(doc: PolicyDocument, path: str | Path) -> Path:
    path = Path(path)
    path.write_text(yaml.safe_dump(doc.to_dict(), sort_keys=False))
    return path


def _need(d: Mapping[str, Any], key: str, typ: type | tuple[type, ...], where: str) -> Any:
    if key not in d:
        raise InputError(f"{where}: missing {key!r}")
    v = d[key]
    if not isinstance(v, typ) or isinstance(v, bool) and typ in (int, float, (int, float)):
        raise InputError(f"{where}: {key!r} has the wrong type ({type(v).__name__})")
    return v


def load_policy_file(path: str | Path) -> PolicyDocument:
    """Parse and validate a policy file (safe YAML: never executes code)."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{path}: policy file not found")
    try:
        raw = yaml.safe_load(p.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: not a valid policy file ({type(e).__name__})") from None
    where = str(path)
    if not isinstance(raw, Mapping) or raw.get("schema") != SCHEMA:
        raise InputError(f"{where}: not an autoprune policy file (schema must be {SCHEMA!r})")
    if raw.get("version") != VERSION:
        raise InputError(f"{where}: policy schema version {raw.get('version')!r} is not supported (need {VERSION})")
    base = _need(raw, "base_model", Mapping, where)
    pol = _need(raw, "policy", Mapping, where)
    ratios = _need(raw, "ratios", Mapping, where)
    channels = _need(raw, "channels", Mapping, where)
    for name, r in ratios.items():
        if not isinstance(r, (int, float)) or isinstance(r, bool) or not 0 <= r < 1:
            raise InputError(f"{where}: ratios.{name}: {r!r} is not in [0, 1)")
    for name, c in channels.items():
        if not isinstance(c, int) or isinstance(c, bool) or c < 1:
            raise InputError(f"{where}: channels.{name}: {c!r} is not a positive integer")
    finetune = raw.get("finetune") or {}
    if not isinstance(finetune, Mapping):
        raise InputError(f"{where}: 'finetune' has the wrong type ({type(finetune).__name__})")
    policy = Policy(ratios=tuple((str(k), float(v)) for k, v in ratios.items()),
                    criterion=str(_need(pol, "criterion", str, f"{where}: policy")),
                    iterations=int(_need(pol, "iterations", int, f"{where}: policy")),
                    lr=float(_need(pol, "lr", (int, float), f"{where}: policy")),
                    ema=bool(_need(pol, "ema", bool, f"{where}: policy")),
                    epochs=int(_need(pol, "epochs", int, f"{where}: policy")),
                    round_to=int(_need(pol, "round_to", int, f"{where}: policy")) if "round_to" in pol else 1)
    return PolicyDocument(
        fingerprint=str(_need(base, "fingerprint", str, f"{where}: base_model")),
        architecture=str(base.get("architecture", "")), base_path=str(base.get("path", "")),
        imgsz=int(_need(raw, "imgsz", int, where)), policy=policy,
        channels={str(k): int(v) for k, v in channels.items()},
        metrics=dict(raw.get("metrics") or {}), baseline=dict(raw.get("baseline") or {}),
        source=dict(raw.get("source") or {}), versions=dict(raw.get("versions") or {}),
        seed=int(_need(raw, "seed", int, where)) if "seed" in raw else 0, finetune=finetune)
