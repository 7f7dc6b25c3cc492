"""The exported policy document (``policy.yaml``): versioned, data only, loaded with safe YAML.

Schema (version 1)::

    schema: autoprune.policy
    version: 1
    base_model: {fingerprint: sha256 of the weights, architecture: yolov8n.yaml, path: ...}
    imgsz: 160
    seed: 0
    finetune: {batch, workers, optimizer, gradient_batches}   # the search's fine-tune settings
    policy: {knob name: value}                     # one key per knob (schema_text()); a trial that ran no
                                                   # fine-tune keeps its fine-tune knobs apart, under not_run
    ratios: {layer name: fraction removed}       # layer = module path of a prunable unit
    channels: {layer name: channels kept}          # what the ratios produced
    metrics: {map50_95, map50, params, macs, latency_ms}
    baseline: {same keys}
    source: {study, trial, storage, data, finetuned}  # finetuned: false for a trial not fine-tuned (budget.direct)
    versions: {torch, ultralytics, torch_pruning, autoprune}
    finalize: {epochs, lr, before, after, ...}     # autoprune finalize only
    deployed: {format, file, imgsz, map50_95, map50, split, latency_ms, latency_ratio_vs_base, ...}  # onnx-int8
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from autoprune import yamlsafe
from autoprune.errors import InputError
from autoprune.model import knobs, records
from autoprune.model.policy import Policy
from autoprune.model.samplers import SEED_MAX

__all__ = ["SCHEMA", "VERSION", "PolicyDocument", "load_policy_file", "dump_policy_file", "document_for_trial",
           "schema_text"]

SCHEMA = "autoprune.policy"
VERSION = 1
NOT_RUN = "not_run"  # in a policy section: the fine-tune knobs of a trial that ran no fine-tune


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
    base_file_sha256: str = ""  # of the base checkpoint's bytes: checked before it is unpickled
    seed: int = 0
    finetune: Mapping[str, Any] = field(default_factory=dict)  # batch, optimizer, workers, gradient_batches
    finalize: Mapping[str, Any] = field(default_factory=dict)  # autoprune finalize: its fine-tune and metrics
    # export --format onnx-int8: the quantized file, its mAP measured on it and its latency against the base's
    deployed: Mapping[str, Any] = field(default_factory=dict)

    def _policy_section(self) -> dict[str, Any]:
        """What the trial applied: every knob's value; for a trial that ran no fine-tune (adaptive BN in its place:
        ``budget.direct``, the hand recipe's model) the fine-tune knobs it never ran stand apart, under
        ``not_run``."""
        values = self.policy.values
        if self.source.get("finetuned") is not False:
            return values
        skipped = {k.name for k in knobs.knobs() if k.stage == "finetune"}
        return {**{k: v for k, v in values.items() if k not in skipped},
                NOT_RUN: {k: v for k, v in values.items() if k in skipped}}

    def to_dict(self) -> dict[str, Any]:
        p = self.policy
        return {
            "schema": SCHEMA, "version": VERSION,
            "base_model": {"fingerprint": self.fingerprint, "architecture": self.architecture, "path": self.base_path,
                           **({"file_sha256": self.base_file_sha256} if self.base_file_sha256 else {})},
            "imgsz": self.imgsz,
            "seed": self.seed,
            "finetune": dict(self.finetune),
            "policy": self._policy_section(),
            "ratios": dict(p.ratios),
            "channels": dict(self.channels),
            "metrics": dict(self.metrics),
            "baseline": dict(self.baseline),
            "source": dict(self.source),
            "versions": dict(self.versions),
            **({"finalize": dict(self.finalize)} if self.finalize else {}),
            **({"deployed": dict(self.deployed)} if self.deployed else {}),
        }


def document_for_trial(study: records.Attrs, study_name: str, number: int, trial: records.Attrs,
                       versions: Mapping[str, str]) -> PolicyDocument:
    """The policy document of one trial, from the study's and the trial's records."""
    base = records.baseline(study)
    settings = records.trial_settings(study)
    fp = records.fingerprint(study)
    if not fp:
        raise InputError(f"study {study_name!r} has no base-model fingerprint (made by an older autoprune)")
    rec = records.trial(trial)
    if rec.policy is None:
        raise InputError(f"trial {number} of study {study_name!r} has no policy")
    return PolicyDocument(
        fingerprint=str(fp), architecture=records.architecture(study),
        base_path=str(base.get("model", "")), imgsz=int(base.get("imgsz", 640)),
        base_file_sha256=records.model_file_sha256(study) or "",
        policy=Policy.from_dict(rec.policy), channels=rec.channels,
        metrics={k: float(v) for k, v in rec.metrics.items()},
        baseline={k: float(v) for k, v in records.baseline_metrics(study).items()},
        source={"study": study_name, "trial": number, "data": base.get("data"),
                **({"finetuned": False} if rec.trained.get("finetuned") is False else {})},
        versions=dict(versions), seed=int(settings.get("seed", 0)), finetune=dict(settings.get("finetune") or {}))


def schema_text() -> str:
    """The ``policy`` section of a policy file: one line per knob of the knob table (key, allowed values, help)."""
    lines = []
    for k in knobs.knobs():
        d = k.domain
        allowed = (d.interval() if isinstance(d, (knobs.Real, knobs.Whole, knobs.Numbers)) else
                   "true | false" if isinstance(d, knobs.Flags) else " | ".join(d.allowed()))
        lines.append(f"  {k.name}: {allowed}{'' if k.required else f' (default {k.value})'}  # {k.help}")
    return "policy:\n" + "\n".join(lines)


def dump_policy_file(doc: PolicyDocument, path: str | Path) -> Path:
    path = Path(path)
    path.write_text(yamlsafe.dump(doc.to_dict()))
    return path


def _need(d: Mapping[str, Any], key: str, typ: type | tuple[type, ...], where: str) -> Any:
    if key not in d:
        raise InputError(f"{where}: missing {key!r}")
    v = d[key]
    if not isinstance(v, typ) or isinstance(v, bool) and typ in (int, float, (int, float)):
        raise InputError(f"{where}: {key!r} has the wrong type ({type(v).__name__})")
    return v


def _check_layers(ratios: Mapping[str, Any], channels: Mapping[str, Any], where: str) -> None:
    """Each ratio in [0, 1), each channel count a positive integer, and channels recorded where ratios prune."""
    for name, r in ratios.items():
        if not isinstance(r, (int, float)) or isinstance(r, bool) or not 0 <= r < 1:
            raise InputError(f"{where}: ratios.{name}: {r!r} is not in [0, 1)")
    for name, c in channels.items():
        if not isinstance(c, int) or isinstance(c, bool) or c < 1:
            raise InputError(f"{where}: channels.{name}: {c!r} is not a positive integer")
    pruned = [name for name, r in ratios.items() if r]
    if pruned and not channels:
        raise InputError(f"{where}: channels: empty, but ratios prune {len(pruned)} layer(s) (the file records what "
                         "they kept; export the trial again)")


def load_policy_file(path: str | Path) -> PolicyDocument:
    """Parse and validate a policy file (safe YAML: never executes code)."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{path}: policy file not found")
    try:
        raw = yamlsafe.load(p.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: not a valid policy file ({type(e).__name__})") from None
    where = str(path)
    if not isinstance(raw, Mapping) or raw.get("schema") != SCHEMA:
        raise InputError(f"{where}: not an autoprune policy file (schema must be {SCHEMA!r})")
    if raw.get("version") != VERSION:
        raise InputError(f"{where}: policy schema version {raw.get('version')!r} is not supported (need {VERSION})")
    base = _need(raw, "base_model", Mapping, where)
    pol = _need(raw, "policy", Mapping, where)
    not_run = pol.get(NOT_RUN) or {}
    if not isinstance(not_run, Mapping):
        raise InputError(f"{where}: policy.{NOT_RUN} has the wrong type ({type(not_run).__name__})")
    pol = {**{k: v for k, v in pol.items() if k != NOT_RUN}, **not_run}
    ratios = _need(raw, "ratios", Mapping, where)
    channels = _need(raw, "channels", Mapping, where)
    _check_layers(ratios, channels, where)
    finetune = raw.get("finetune") or {}
    if not isinstance(finetune, Mapping):
        raise InputError(f"{where}: 'finetune' has the wrong type ({type(finetune).__name__})")
    policy = Policy(tuple((str(k), float(v)) for k, v in ratios.items()),
                    **{k.name: _read_knob(k, pol, f"{where}: policy") for k in knobs.knobs()})
    _check_finetune(finetune, f"{where}: finetune")
    imgsz = int(_need(raw, "imgsz", int, where))
    if not 32 <= imgsz <= 4096 or imgsz % 32:
        raise InputError(f"{where}: imgsz: {imgsz} is not a multiple of 32 in 32..4096")
    if "seed" in raw and not 0 <= int(_need(raw, "seed", int, where)) <= SEED_MAX:
        raise InputError(f"{where}: seed: must be 0 to {SEED_MAX}")
    return PolicyDocument(
        fingerprint=str(_need(base, "fingerprint", str, f"{where}: base_model")),
        architecture=str(base.get("architecture", "")), base_path=str(base.get("path", "")),
        base_file_sha256=str(base.get("file_sha256", "")),
        imgsz=imgsz, policy=policy,
        channels={str(k): int(v) for k, v in channels.items()},
        metrics=dict(raw.get("metrics") or {}), baseline=dict(raw.get("baseline") or {}),
        source=dict(raw.get("source") or {}), versions=dict(raw.get("versions") or {}),
        seed=int(_need(raw, "seed", int, where)) if "seed" in raw else 0, finetune=finetune,
        finalize=dict(raw.get("finalize") or {}) if isinstance(raw.get("finalize") or {}, Mapping) else {},
        deployed=dict(raw.get("deployed") or {}) if isinstance(raw.get("deployed") or {}, Mapping) else {})


_OPTIMIZERS = ("SGD", "Adam", "AdamW")


def _read_knob(knob: knobs.Knob, pol: Mapping[str, Any], where: str) -> Any:
    """A knob's value from a policy file's ``policy`` section, within the bounds a spec allows (one-line
    InputError naming the field); a knob the file lacks (an older file) takes the table's value."""
    v = pol.get(knob.name)
    if v is None:
        if knob.required:
            raise InputError(f"{where}: missing {knob.name!r}")
        return knob.value
    d = knob.domain
    wrong = InputError(f"{where}: {knob.name!r} has the wrong type ({type(v).__name__})")
    if isinstance(d, knobs.Flags):
        if not isinstance(v, bool):
            raise wrong
        return v
    if isinstance(d, knobs.Names):
        if not isinstance(v, str):
            raise wrong
        if v not in d.allowed():
            shown = ", ".join(d.allowed())
            raise InputError(f"{where}.{knob.name}: unknown {d.what} {v[:40]!r} (choose from {shown})"
                             if callable(d.choices) else f"{where}.{knob.name}: {v[:40]!r} is not one of {shown}")
        return v
    integer = isinstance(d, knobs.Whole) or (isinstance(d, knobs.Numbers) and d.integer)
    if isinstance(v, bool) or not isinstance(v, int if integer else (int, float)):
        raise wrong
    v = knob.coerce(v)
    if v != v or not d.admits(v):
        raise InputError(f"{where}.{knob.name}: {v!r} is outside {d.interval()}")
    return v


def _check_finetune(finetune: Mapping[str, Any], where: str) -> None:
    batch = finetune.get("batch", 16)
    if isinstance(batch, bool) or not isinstance(batch, int) or not 1 <= batch <= 4096:
        raise InputError(f"{where}.batch: {str(batch)[:40]!r} is not an integer in 1..4096")
    if finetune.get("optimizer", "SGD") not in _OPTIMIZERS:
        raise InputError(f"{where}.optimizer: {str(finetune.get('optimizer'))[:40]!r} is not one of "
                         f"{', '.join(_OPTIMIZERS)}")
    for key in ("lrf", "warmup_epochs", "distill_weight", "sparse_lr"):
        v = finetune.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1e4):
            raise InputError(f"{where}.{key}: {str(v)[:40]!r} is not a number in 0..10000")
