"""A pruning policy: what one trial does to the base model, and its one dict codec."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["Policy", "ratio_summary"]


@dataclass(frozen=True)
class Policy:
    ratios: tuple[tuple[str, float], ...]  # (layer name, fraction of its channels to remove)
    criterion: str
    iterations: int
    lr: float
    ema: bool
    epochs: int
    round_to: int = 1  # kept channels are rounded to a multiple of this (where the layer has that many)
    schedule: str = "linear"  # fine-tune learning rate: linear or cosine decay to finetune.lrf
    distill: bool = False  # fine-tune with knowledge distillation from the unpruned base (ultralytics' distill_model)
    lrf: float | None = None  # final lr fraction (None: finetune.lrf)
    warmup: float | None = None  # warm-up epochs (None: finetune.warmup_epochs)
    lr_step: float = 1.0  # prune step k fine-tunes at lr * lr_step ** (k - 1)
    sparsity: float = 0.0  # prune a base sparse-trained with this BN-scale L1 (network slimming); 0: the base
    depth: float = 0.0  # layer pruning: share of each block's repeated bottlenecks removed (at least one kept)

    def step_lr(self, step: int) -> float:
        """The initial learning rate of prune step ``step`` (1-based)."""
        return self.lr * self.lr_step ** (step - 1)

    @property
    def ratio_map(self) -> dict[str, float]:
        return dict(self.ratios)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ratios"] = self.ratio_map
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Policy:
        return cls(ratios=tuple((str(k), float(v)) for k, v in dict(d["ratios"]).items()),
                   criterion=str(d["criterion"]), iterations=int(d["iterations"]), lr=float(d["lr"]),
                   ema=bool(d["ema"]), epochs=int(d["epochs"]), round_to=int(d.get("round_to", 1)),
                   schedule=str(d.get("schedule", "linear")), distill=bool(d.get("distill", False)),
                   lrf=_opt_float(d.get("lrf")), warmup=_opt_float(d.get("warmup")),
                   lr_step=float(d.get("lr_step", 1.0) or 1.0), sparsity=float(d.get("sparsity", 0.0) or 0.0),
                   depth=float(d.get("depth", 0.0) or 0.0))


def _opt_float(v: Any) -> float | None:
    return None if v is None else float(v)


def ratio_summary(ratios: Mapping[str, float]) -> str:
    if not ratios:
        return "-"
    vals = list(ratios.values())
    return f"mean {sum(vals) / len(vals):.2f} [{min(vals):.2f}..{max(vals):.2f}]"
