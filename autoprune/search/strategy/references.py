"""Reference points on the front: the unpruned base at each deployment the space searches.

When ``space.precision`` or ``space.imgsz`` is searched, a pruned member's deployed mAP and latency mean
something only beside the base deployed the same ways: "pruned + INT8 at 128 px" must beat the base in INT8
at 128 px, not just the FP32 base. Each reference is measured once, when the study's baseline is: the base
exported (and quantized) as a trial at that precision and size would be, validated on that file, and timed on
it (plain, not interleaved: the references are timed one after another at the start of the search).
"""

from __future__ import annotations

import itertools
import logging
from typing import Any

import optuna

from autoprune.config.spec import SearchSpec
from autoprune.model import records

logger = logging.getLogger(__name__)

__all__ = ["deployments", "ensure_references", "measure_reference", "add_reference"]


def deployments(spec: SearchSpec) -> list[tuple[str, int]]:
    """Every (precision, deployment size) the space searches (empty when it searches neither)."""
    precisions = spec.space.precision
    sizes = spec.space.deploy_imgsz
    if not precisions and not sizes:
        return []
    lat = spec.latency
    return list(itertools.product(precisions or (lat.precision,), sizes or (lat.imgsz or spec.imgsz,)))


def ensure_references(study: optuna.Study, spec: SearchSpec, baseline: dict[str, Any]) -> list[dict[str, Any]]:
    """The study's reference points, measured once (recorded in the study; a later run reads them back)."""
    done = records.references(study)
    wanted = deployments(spec)
    if not wanted or done:
        return done
    from autoprune.adapters import yolo

    model = yolo.load_model(spec.model).to(spec.device)
    refs = [measure_reference(model, spec, precision, imgsz, f"base {precision} @{imgsz}", baseline)
            for precision, imgsz in wanted]
    records.set_references(study, refs)
    return refs


def measure_reference(model: Any, spec: SearchSpec, precision: str, imgsz: int, name: str,
                      baseline: dict[str, Any]) -> dict[str, Any]:
    """One reference point: ``model`` deployed at ``precision`` and ``imgsz`` as a trial would be (exported, in INT8
    quantized, validated on that file), timed plainly on it."""
    from autoprune.adapters import pruning, yolo
    from autoprune.engine.latency import measure_latency
    from autoprune.engine.measure import deployed_map

    deployed = yolo.deploy_copy(model)
    s = spec.trial_settings.deployed_as(precision, imgsz)
    maps = dict(deployed_map(deployed, s, imgsz))
    lat = measure_latency(deployed, imgsz, s.device, s.latency, calibration=s.data)
    base_ms = float(baseline.get("latency_ms") or 0.0)
    logger.info("reference: %s: deployed mAP50-95 %.3f, latency %.2f ms", name, maps["deployed_map50_95"],
                lat.median_ms)
    return {"name": name, "precision": precision, "imgsz": imgsz, **maps, "params": float(yolo.count_params(model)),
            "macs": float(pruning.count_macs(model, spec.imgsz)),
            "latency_ms": lat.median_ms, "latency_spread": lat.spread,
            "speedup_vs_baseline": base_ms / lat.median_ms if base_ms and lat.median_ms else None}


def add_reference(study: optuna.Study, ref: dict[str, Any]) -> None:
    """Record one more reference point in the study (one of the same name is replaced)."""
    refs = [r for r in records.references(study) if r.get("name") != ref["name"]]
    records.set_references(study, [*refs, ref])
