"""Choosing a trial and exporting it for other tools; re-applying an exported policy."""

from __future__ import annotations

import dataclasses
import logging
import operator
import re
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from autoprune import yamlsafe
from autoprune.errors import InputError
from autoprune.model import objectives, records
from autoprune.model.constraints import feasible
from autoprune.model.document import (
    PolicyDocument,
    document_for_trial,
    dump_policy_file,
)
from autoprune.model.formats import FORMATS, Format
from autoprune.model.objectives import Objective
from autoprune.model.pareto import knee_index
from autoprune.registry import UnknownName
from autoprune.search.storage.study import StudyStorage

logger = logging.getLogger(__name__)

__all__ = ["Condition", "parse_condition", "select_trial", "knee_trial", "export_trial", "ExportResult", "FORMATS",
           "Format", "check_format", "deployed_artifact", "tp_ratio_mapping", "remove_stale_staging",
           "trial_checkpoint"]

_OPS = {"<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt, "==": operator.eq}
_COND_RE = re.compile(r"^\s*([A-Za-z0-9_]+)\s*(<=|>=|==|<|>)\s*([-+0-9.eE]+)\s*$")


@dataclass(frozen=True)
class Condition:
    metric: str
    op: str
    value: float

    def holds(self, metrics: dict[str, float]) -> bool:
        v = metrics.get(self.metric)
        return v is not None and _OPS[self.op](float(v), self.value)


def parse_condition(text: str) -> Condition:
    m = _COND_RE.match(text)
    if not m:
        raise InputError(f"--where: {text!r} is not METRIC OP NUMBER (OP one of <=, >=, <, >, ==)")
    metric, op, value = m.groups()
    _objective(metric, "--where")
    try:
        return Condition(metric, op, float(value))
    except ValueError:
        raise InputError(f"--where: {value!r} is not a number") from None


def _objective(name: str, flag: str) -> Objective:
    try:
        return objectives.get(name)
    except UnknownName as e:
        raise InputError(f"{flag}: {e}") from None


def knee_trial(study: optuna.Study) -> FrozenTrial:
    """The front member closest to the ideal point, objectives min-max normalised over the front."""
    front = study.best_trials
    if not front:
        raise InputError(f"study {study.study_name!r} has no completed trial")
    return front[knee_index([t.values for t in front], records.study_objectives(study))]


def select_trial(study: optuna.Study, trial: int | None = None, best: str | None = None,
                 where: Sequence[str] = (), knee: bool = False) -> FrozenTrial:
    """Exactly one of ``trial``, ``best`` (with optional ``where`` conditions) or ``knee``."""
    if sum(x is not None and x is not False for x in (trial, best, knee or None)) != 1:
        raise InputError("choose one of --trial N, --best METRIC or --knee")
    if trial is not None:
        found = [t for t in study.get_trials(deepcopy=False) if t.number == trial]
        if not found:
            raise InputError(f"--trial: study {study.study_name!r} has no trial {trial}")
        if found[0].state != TrialState.COMPLETE:
            raise InputError(f"--trial: trial {trial} is {found[0].state.name}, not COMPLETE")
        return found[0]
    if knee:
        return knee_trial(study)
    assert best is not None
    objective = _objective(best, "--best")
    conditions = [parse_condition(w) for w in where]
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    scored = [(t, records.trial(t).metrics) for t in complete if feasible(t.constraints)]
    candidates = [(t, m) for t, m in scored if best in m and all(c.holds(m) for c in conditions)]
    if not candidates:
        cond = " and ".join(where) or "no condition"
        raise InputError(f"--best {best}: no completed trial matches ({cond}; infeasible trials left out)")
    return min(candidates, key=lambda tm: objective.sign * tm[1][best])[0]


def tp_ratio_mapping(modules: dict[str, list[str]], original: dict[str, int],
                     channels: dict[str, int]) -> dict[str, float]:
    """``{conv module name: ratio}`` for torch-pruning's ``pruning_ratio_dict`` (C2f_v2 form).

    torch-pruning keeps ``int(c * (1 - ratio))`` channels; the ratio written is
    ``(c - keep - 0.5) / c`` (at least 0), so that rounding gives exactly the policy's ``keep``.
    """
    out: dict[str, float] = {}
    for unit, names in modules.items():
        c, keep = original[unit], channels.get(unit, original[unit])
        ratio = max(0.0, (c - keep - 0.5) / c)
        for name in names:
            out[name] = round(ratio, 9)
    return out


@dataclass(frozen=True)
class ExportResult:
    trial: int
    out_dir: Path
    policy: Path
    checkpoint: Path
    onnx: Path | None
    tp_ratios: Path
    onnx_max_abs_diff: float | None


def _document(study: optuna.Study, t: FrozenTrial) -> PolicyDocument:
    from autoprune.engine.identity import versions

    return document_for_trial(study, study.study_name, t.number, t, versions())


def onnx_max_abs_diff(checkpoint: Path, onnx_path: Path, imgsz: int, seed: int = 0) -> float:
    """Run the same input through the pruned torch model and onnxruntime; the largest absolute difference."""
    import torch

    from autoprune.adapters import onnx_runtime, yolo

    torch.manual_seed(seed)
    x = torch.rand(1, 3, imgsz, imgsz)
    model = yolo.deploy_copy(yolo.load_model(checkpoint))
    wants = [t.numpy() for t in yolo.inference_output(model, x)]
    gots = onnx_runtime.run(onnx_runtime.session(onnx_path), x.numpy())
    if len(gots) != len(wants):
        raise InputError(f"ONNX has {len(gots)} outputs, the torch model {len(wants)}")
    for got, want in zip(gots, wants):
        if got.shape != want.shape:
            raise InputError(f"ONNX output shape {got.shape} differs from torch {want.shape}")
    return max(float(np.abs(got - want).max()) for got, want in zip(gots, wants))


def trial_checkpoint(store: StudyStorage, t: FrozenTrial, artifact_dir: Path | None, dest: Path,
                   params: int) -> Path:
    """The trial's pruned checkpoint: its recorded path if it still holds the trial's model (``params``
    parameters; another study of the same name may have overwritten it), else its copy in the artifact store."""
    from autoprune.adapters import yolo

    src = records.trial(t).checkpoint
    found = None
    if src and Path(src).is_file():
        shutil.copyfile(src, dest)
        found = yolo.count_params(yolo.load_model(dest))
        if found == params:
            return dest
        logger.warning("trial %d: %s holds %d parameters, the trial recorded %d; trying the artifact store",
                       t.number, src, found, params)
    if artifact_dir is not None and artifact_dir.is_dir():
        from optuna.artifacts import FileSystemArtifactStore, download_artifact, get_all_artifact_meta

        for meta in get_all_artifact_meta(t, storage=store.rdb):
            if meta.filename == Path(src or "pruned.pt").name:
                dest.unlink(missing_ok=True)
                download_artifact(artifact_store=FileSystemArtifactStore(str(artifact_dir)),
                                  artifact_id=meta.artifact_id, file_path=str(dest))
                if yolo.count_params(yolo.load_model(dest)) == params:
                    return dest
    if found is not None:
        raise InputError(f"trial {t.number}: checkpoint has {found} parameters, the trial recorded {params} "
                         "(and the artifact store has no intact copy)")
    raise InputError(f"trial {t.number}: its checkpoint {src} is missing and not in the artifact store")


Prepare = Callable[[Path, PolicyDocument], dict[str, Any]]
STAGING_PREFIX = "."  # an export stages its files in out.parent/.NAME.XXXX, then moves them into out


def remove_stale_staging(out: Path) -> list[Path]:
    """Staging folders an earlier export to ``out`` left behind (killed with kill -9), removed; returns them."""
    stale = [p for p in out.parent.glob(f"{STAGING_PREFIX}{out.name}.*") if p.is_dir()]
    for p in stale:
        shutil.rmtree(p, ignore_errors=True)
        logger.info("removed %s, left by an export that was killed", p)
    return stale


def check_format(name: str) -> Format:
    """The format ``name``, refused in one line when its runtime or quantizer cannot run here."""
    from autoprune.engine.runtimes import check_runtime

    fmt = FORMATS[name]
    if fmt.runtime is not None:
        try:
            check_runtime(fmt.runtime, fmt.device, fmt.precision)
        except InputError as e:
            raise InputError(f"--format {name}: {str(e).split(': ', 1)[1]}") from None
    return fmt


def deployed_artifact(study: optuna.Study, t: FrozenTrial, checkpoint: Path, dest: Path, fmt: Format) -> dict[str, Any]:
    """``checkpoint`` as it ships in ``fmt`` at ``dest`` (exported by ultralytics' exporter at the trial's deployment
    size; INT8 quantized on 64 training images of the study's data set, head decoding in floating point); its mAP
    measured on that artifact (val split, ultralytics' backend for the format) and its latency timed interleaved
    with the study's base model exported alike (batch 1, the trial's threads)."""
    from autoprune.adapters import yolo
    from autoprune.config.sections import LatencySettings
    from autoprune.engine.latency import measure_interleaved, run_spec
    from autoprune.engine.runtimes import CALIBRATION_IMAGES, export_deployed

    assert fmt.runtime is not None
    data = str(records.baseline(study).get("data") or "")
    base_path = str(records.baseline(study).get("model") or "")
    if not Path(data).is_file() or not Path(base_path).is_file():
        raise InputError(f"--format {fmt.name}: the study's data set {data or '-'} and base model {base_path or '-'} "
                         "are needed to calibrate, validate and time against")
    lat = records.trial(t).latency
    imgsz = int(lat.get("imgsz") or records.baseline(study).get("imgsz") or 640)
    timing = LatencySettings(warmup=5, runs=30, rounds=6, threads=int(lat.get("threads", 2)), runtime=fmt.runtime,
                             precision=fmt.precision)
    model = yolo.deploy_copy(yolo.load_model(checkpoint))
    path = export_deployed(model, run_spec(fmt.device, imgsz, timing, data), fmt.runtime)
    try:
        (shutil.copytree if path.is_dir() else shutil.copyfile)(path, dest)
    finally:
        shutil.rmtree(path.parent, ignore_errors=True)
    m50, m = yolo.validate_exported(dest, data, imgsz, yolo.model_task(model), device=fmt.device)
    il = measure_interleaved(model, yolo.deploy_copy(yolo.load_model(base_path)), imgsz, fmt.device, timing,
                             calibration=data)
    out = {"format": fmt.name, "file": dest.name, "runtime": fmt.runtime, "precision": fmt.precision, "imgsz": imgsz,
           "split": "val", "map50_95": m, "map50": m50, "latency_ms": il.candidate.median_ms,
           "base_latency_ms": il.reference.median_ms, "latency_ratio_vs_base": il.ratio, "threads": timing.threads}
    if fmt.precision == "int8":
        out["calibration"] = f"{CALIBRATION_IMAGES} train images of {data}"
    return out


def export_trial(study: optuna.Study, store: StudyStorage, t: FrozenTrial, out_dir: str | Path, onnx: bool = True,
                 artifact_dir: str | Path | None = None, prepare: Prepare | None = None,
                 force: bool = False, fmt: str = "onnx") -> ExportResult:
    """Write policy.yaml, pruned.pt, tp_ratios.yaml and (optionally) pruned.onnx of trial ``t`` into ``out_dir``;
    with a deployment ``fmt`` (:data:`FORMATS`: onnx-int8, openvino, openvino-int8, engine) also its artifact (see
    :func:`deployed_artifact`), whose measured mAP and latency go into the policy file's ``deployed`` section.

    ``prepare(checkpoint, document)`` may change the staged checkpoint in place (``autoprune finalize``
    fine-tunes it) and returns a record stored as the policy file's ``finalize`` section. Files are staged
    in a temporary folder and moved into ``out_dir`` only when all of them were made.
    """
    from autoprune.adapters import pruning, yolo

    deployment = check_format(fmt)
    if fmt == "onnx-int8" and not onnx:
        raise InputError(f"--format {fmt} needs the ONNX export (drop --no-onnx)")
    if t.state != TrialState.COMPLETE:
        raise InputError(f"trial {t.number} is {t.state.name}, not COMPLETE")
    role = records.role(study)
    if role not in (None, "main"):
        raise InputError(f"study: {study.study_name!r} is autoprune's internal {role} study: its trials are screens "
                         "that keep no checkpoint; export from the user study")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out: {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise InputError(f"--out: {out} is not empty (--force replaces the files an export writes there)")
    if any(p.exists() and not p.is_dir() for p in out.parents):
        raise InputError(f"--out: {out} lies under a file")
    doc = _document(study, t)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(out)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f"{STAGING_PREFIX}{out.name}.") as tmp:
        stage = Path(tmp)
        checkpoint = trial_checkpoint(store, t, Path(artifact_dir) if artifact_dir else None, stage / "pruned.pt",
                                    int(doc.metrics.get("params", -1)))
        if prepare is not None:
            doc = dataclasses.replace(doc, finalize=prepare(checkpoint, doc))
        if deployment.runtime is not None:
            doc = dataclasses.replace(doc, deployed=deployed_artifact(study, t, checkpoint, stage / deployment.file,
                                                                      deployment))
        dump_policy_file(doc, stage / "policy.yaml")
        original = {layer.name: layer.channels for layer in records.layers(study) or []}
        modules = pruning.torch_pruning_modules(yolo.load_model(checkpoint), list(original))
        (stage / "tp_ratios.yaml").write_text(yamlsafe.dump(tp_ratio_mapping(modules, original, dict(doc.channels))))
        diff = None
        if onnx:
            yolo.export_onnx(checkpoint, doc.imgsz, stage / "pruned.onnx")
            diff = onnx_max_abs_diff(checkpoint, stage / "pruned.onnx", doc.imgsz)
        out.mkdir(parents=True, exist_ok=True)
        for f in sorted(stage.iterdir()):
            if (out / f.name).is_dir():  # an artifact folder (OpenVINO) written before, replaced with --force
                shutil.rmtree(out / f.name)
            f.replace(out / f.name)
    logger.info("exported trial %d to %s", t.number, out)
    return ExportResult(t.number, out, out / "policy.yaml", out / "pruned.pt", out / "pruned.onnx" if onnx else None,
                        out / "tp_ratios.yaml", diff)
