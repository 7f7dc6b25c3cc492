"""Re-applying an exported policy to its base model: the same channels, optionally the same fine-tuning."""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from autoprune.config.spec import FinetuneSettings, TrialSettings
from autoprune.engine import criteria
from autoprune.errors import InputError, TrialError
from autoprune.model.document import PolicyDocument, load_policy_file
from autoprune.model.space import Layer
from autoprune.search.inputs import check_folder

logger = logging.getLogger(__name__)

__all__ = ["ApplyResult", "apply_policy"]


@dataclass(frozen=True)
class ApplyResult:
    out: Path
    channels: dict[str, int]
    params: int
    metrics: dict[str, float] | None  # measured when data was given
    fingerprint_matched: bool


def _check_layers(doc: PolicyDocument, base_channels: dict[str, int]) -> None:
    for name in list(doc.policy.ratio_map) + list(doc.channels):
        if name not in base_channels:
            raise InputError(f"policy layer {name!r} is not a prunable layer of the base model")
    for name, c in doc.channels.items():
        if c > base_channels[name]:
            raise InputError(f"policy channels.{name} = {c} exceeds the base model's {base_channels[name]}")


def _check_applied(doc: PolicyDocument, channels: dict[str, int], params: int, out: Path | None,
                   same_base: bool) -> None:
    """The applied model must have the channels the policy records and, on the policy's own base, the parameter
    count it records (a file with an incomplete ``channels:`` section would otherwise leave layers unpruned); else
    ``out`` is removed and this raises."""
    wanted = dict(doc.channels)
    got = {n: channels[n] for n in wanted}
    recorded = doc.metrics.get("params") if same_base else None  # another base (--force) may have another head
    why = ""
    if got != wanted:
        bad = next(n for n in wanted if got[n] != wanted[n])
        why = f"re-applied layer {bad} has {got[bad]} channels, the policy records {wanted[bad]}"
    elif isinstance(recorded, (int, float)) and int(recorded) != params:
        why = (f"policy: applying it gives {params:,} parameters, but it records {int(recorded):,} (its channels: "
               f"section names {len(wanted)} layer(s); export the trial again)")
    if why:
        if out is not None:
            out.unlink(missing_ok=True)
        raise InputError(why)


def _atomic_copy(src: Path, out: Path) -> None:
    tmp = out.with_name(out.name + ".part")
    shutil.copyfile(src, tmp)
    tmp.replace(out)


def apply_policy(policy_path: str | Path, model: str | Path, out: str | Path, data: str | None = None,
                 finetune: bool = False, force: bool = False, device: str = "cpu") -> ApplyResult:
    """Prune ``model`` by the policy file; with ``finetune`` repeat the trial (prune steps and fine-tuning).

    Refuses a base model whose weights fingerprint differs from the policy's, unless ``force``.
    The result always has exactly the channel counts recorded in the policy, or this raises.
    """
    from autoprune.adapters import pruning, yolo
    from autoprune.engine.identity import file_sha256, fingerprint
    from autoprune.engine.pipeline import TRACE_IMGSZ

    doc = load_policy_file(policy_path)
    out = Path(out)
    if out.suffix != ".pt":
        raise InputError(f"--out: {out} must be a .pt file")
    check_folder(out.parent, "--out")
    if not Path(model).is_file():
        raise InputError(f"--model: {model}: file not found")
    if doc.policy.sparsity > 0 and not finetune:
        raise InputError(f"--finetune: the policy prunes a base sparse-trained with BN-scale L1 "
                         f"{doc.policy.sparsity:g}; re-apply it with --finetune --data DATA (which trains that base "
                         "again)")
    if (finetune or criteria.get(doc.policy.criterion).needs_data) and not data:
        why = "--finetune" if finetune else f"criterion {doc.policy.criterion} (gradients)"
        raise InputError(f"--data: {why} needs a data set YAML")
    if doc.base_file_sha256 and not force and file_sha256(model) != doc.base_file_sha256:
        raise InputError(f"--model: {model} is not the policy's base checkpoint (file fingerprint differs, sha256; "
                         "not loaded; --force to apply anyway)")
    base = yolo.load_model(model)
    if data:
        from autoprune.search.inputs import check_data

        check_data(data, "--data", model_nc=yolo.model_nc(base))
    matched = fingerprint(base) == doc.fingerprint
    if not matched and not force:
        raise InputError(f"--model: {model} is not the policy's base model (fingerprint differs; --force to apply "
                         "anyway)")
    if not matched:
        logger.warning("applying to a different base model than the policy's (forced)")
    base_channels = pruning.channel_counts(base, TRACE_IMGSZ)
    _check_layers(doc, base_channels)
    out.parent.mkdir(parents=True, exist_ok=True)
    settings = _settings(doc, Path(model), data, device)
    metrics = None
    if finetune:
        channels, metrics = _repeat_trial(doc, settings, out, base_channels)
    else:
        channels = _prune_only(doc, base, settings)
        _check_applied(doc, channels, yolo.count_params(base), None, matched)  # before anything is written
        if data:
            from autoprune.engine.measure import measure_model

            metrics = measure_model(base, settings).metrics()
        with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
            _atomic_copy(yolo.save_checkpoint(base, Path(tmp) / "pruned.pt"), out)
    params = yolo.checkpoint_param_count(out)
    _check_applied(doc, channels, params, out, matched)
    logger.info("applied %s to %s: %s parameters -> %s", policy_path, model, f"{params:,}", out)
    return ApplyResult(out=out, channels=channels, params=params, metrics=metrics, fingerprint_matched=matched)


def _settings(doc: PolicyDocument, model: Path, data: str | None, device: str) -> TrialSettings:
    """The trial's settings as the policy file records them (its seed, image size, fine-tune settings)."""
    return TrialSettings(model=str(model), data=str(data or ""), imgsz=doc.imgsz, device=device, seed=doc.seed,
                         finetune=FinetuneSettings.from_record(doc.finetune))


def _prune_only(doc: PolicyDocument, model: nn.Module, settings: TrialSettings) -> dict[str, int]:
    """One prune step straight to the recorded channel counts, by the policy's criterion."""
    from autoprune.engine.pipeline import prune_once

    model.to(settings.device)
    torch.manual_seed(doc.seed)
    if doc.policy.depth > 0:
        from autoprune.adapters import yolo

        yolo.remove_blocks(model, doc.policy.depth)
    channels = prune_once(model, settings, doc.policy.criterion, dict(doc.channels), regularize=False)
    model.cpu()
    return channels


def _repeat_trial(doc: PolicyDocument, settings: TrialSettings, out: Path,
                  base_channels: dict[str, int]) -> tuple[dict[str, int], dict[str, float]]:
    """Run the trial again: the same prune steps, criterion and fine-tuning settings (adaptive BN in place of the
    fine-tune for a trial that had none, ``budget.direct``)."""
    from autoprune.engine.trial import run_trial

    layers = [Layer(n, c) for n, c in base_channels.items()]
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        try:
            result = run_trial(settings, doc.policy, layers, Path(tmp),
                               finetune=doc.source.get("finetuned") is not False)
        except TrialError as e:
            raise InputError(f"re-applying the policy failed: {e}") from e
        _atomic_copy(Path(str(result.checkpoint)), out)
    return dict(result.channels or {}), result.metrics
