"""The sections of a search spec (fine-tuning, latency, sampler, warm start, screening, resources,
constraints) and the settings one trial runs with: frozen dataclasses whose fields carry their own
defaults and bounds (read by :func:`autoprune.config._read.read_section`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from autoprune.config._read import bounds
from autoprune.model.samplers import SEED_MAX

__all__ = ["RUNTIMES", "INT8_RUNTIMES", "ESTIMATORS", "PRECISIONS", "FinetuneSettings", "LatencySettings",
           "SamplerSettings", "WarmStart", "Screening", "ScanSettings", "Resources", "Constraints", "TrialSettings",
           "Budget"]


@dataclass(frozen=True)
class FinetuneSettings:
    batch: int = field(default=16, metadata=bounds(min=1, max=4096))
    workers: int = field(default=0, metadata=bounds(min=0, max=256))
    optimizer: str = field(default="SGD", metadata=bounds(choices=("SGD", "Adam", "AdamW")))
    # batches for gradient criteria, regularising
    gradient_batches: int = field(default=4, metadata=bounds(min=1, max=10_000))
    # nominal batch; None: one optimizer step a batch
    nbs: int | None = field(default=None, metadata=bounds(min=1, max=65_536))
    warmup_epochs: float = field(default=1.0, metadata=bounds(min=0, max=1000))  # capped at epochs - 1 by the trainer
    lrf: float = field(default=0.01, metadata=bounds(gt=0, max=1))  # final learning rate as a fraction of the initial
    # keep the adaptive-BN model when the last fine-tune leaves it worse on the val split (best.pt with an epoch 0)
    keep_best: bool = True
    bn_batches: int = field(default=8, metadata=bounds(min=1, max=10_000))  # adaptive-BN batches for keep_best
    # ultralytics' ``dis`` (distillation loss gain)
    distill_weight: float = field(default=6.0, metadata=bounds(min=0, max=1e4))
    # sparse training of the base (space.sparsity > 0): epochs and learning rate, trained once per lambda and cached
    sparse_epochs: int = field(default=3, metadata=bounds(min=1, max=1000))
    sparse_lr: float = field(default=0.01, metadata=bounds(gt=0, max=1))  # ultralytics' lr0: (0, 1]

    @classmethod
    def from_record(cls, record: Any) -> FinetuneSettings:
        """The settings a study or a policy file recorded (``dataclasses.asdict`` of these); keys it does not know
        are ignored and missing ones take the defaults, so a record of an older or newer autoprune still reads."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in dict(record or {}).items() if k in known})


RUNTIMES = ("torch", "onnxruntime", "openvino", "cuda-graph", "tensorrt")  # autoprune.engine.runtimes (a test keeps
# them equal), and the ones among them that quantize to INT8 (their ``int8_tool``)
INT8_RUNTIMES = ("onnxruntime", "openvino")
ESTIMATORS = ("pooled_min", "min", "median")  # autoprune.engine.latency.ratio_of (a test keeps them equal)
# fp16: CUDA runtimes; int8: post-training static quantization (ONNX Runtime's; OpenVINO's NNCF), calibrated on
# training images
PRECISIONS = ("fp32", "fp16", "int8")  # autoprune.engine.latency.ROUND_STATISTICS (a test keeps them equal)


@dataclass(frozen=True)
class LatencySettings:
    warmup: int = field(default=10, metadata=bounds(min=0, max=100_000))
    runs: int = field(default=50, metadata=bounds(min=3, max=100_000))
    threads: int = field(default=2, metadata=bounds(min=1, max=1024))
    interleave: bool = True  # time the baseline and the candidate alternately (A/B/B/A...)
    # interleaved rounds; ratio = median per-round ratio
    rounds: int = field(default=10, metadata=bounds(min=1, max=10_000))
    # the ratio: the median of the rounds' fastest-pass ratios ("min": load only ever adds time), each model's fastest
    # pass over all rounds ("pooled_min") or the median of the rounds' median-pass ratios ("median", used before)
    estimator: str = field(default="min", metadata=bounds(choices=ESTIMATORS))
    # round ratios spread more than this ((p90 - p10) / median) are timed again, up to ``retries`` times, later;
    # a ratio still that spread is recorded as unreliable and flagged on the front
    max_spread: float = field(default=0.25, metadata=bounds(gt=0, max=100))
    retries: int = field(default=2, metadata=bounds(min=0, max=100))
    # the runtime the user deploys with (see autoprune.engine.runtimes); the baseline is timed on the same
    runtime: str = field(default="torch", metadata=bounds(choices=RUNTIMES))
    batch: int = field(default=1, metadata=bounds(min=1, max=1024))  # images per timed pass
    precision: str = field(default="fp32", metadata=bounds(choices=PRECISIONS))  # the deployed model's
    imgsz: int | None = field(default=None, metadata=bounds(min=32, max=4096))  # deployment size (default: imgsz)
    # a per-device latency lookup table (autoprune.engine.latency_table) estimates every measured model's latency
    # (metric latency_lut_ms): promotion ranks screened candidates by it instead of MACs
    lut: bool = False

    @property
    def half(self) -> bool:
        return self.precision == "fp16"

    def short(self) -> LatencySettings:
        """A short timing of these settings (a few interleaved rounds of a few passes, never timed again): what
        sizing a uniform prune by speed, or a measurement no decision rests on, takes."""
        return dataclasses.replace(self, warmup=min(self.warmup, 3), runs=min(self.runs, 20),
                                   rounds=min(self.rounds, 4), retries=0)

    @property
    def int8(self) -> bool:
        return self.precision == "int8"


@dataclass(frozen=True)
class SamplerSettings:
    name: str = "tpe"  # see autoprune.model.samplers: tpe, nsga2, gp, random
    seed: int | None = field(default=None, metadata=bounds(min=0, max=SEED_MAX))  # default: the spec's seed


@dataclass(frozen=True)
class WarmStart:
    uniform: int = field(default=2, metadata=bounds(min=0, max=1000))  # uniform-ratio policies spread over the range
    from_fronts: bool = True  # enqueue the fronts of earlier studies on the same base model (fingerprint)


@dataclass(frozen=True)
class Screening:
    factor: int = field(default=2, metadata=bounds(min=0, max=100))  # screen factor x trials candidates (0: off)
    # training batches that re-estimate BN statistics
    batches: int = field(default=8, metadata=bounds(min=1, max=10_000))
    rounds: int = field(default=2, metadata=bounds(min=1, max=100))  # screen -> promote -> fine-tune rounds per run
    # screen the sampler's (and warm starts') proposals besides the sensitivity allocations; false: allocations only
    proposals: bool = True


@dataclass(frozen=True)
class ScanSettings:
    """The sensitivity scan and its allocated candidates (with screening on)."""

    probes: int = field(default=2, metadata=bounds(min=0, max=20))  # ratios each block is probed at (0: off)
    sweep: int = field(default=5, metadata=bounds(min=0, max=100))  # uniform ratios screened (the cost range)
    candidates: int = field(default=8, metadata=bounds(min=0, max=1000))  # allocations screened in the first round


@dataclass(frozen=True)
class Resources:
    cpus: float = field(default=2.0, metadata=bounds(gt=0, min=0.01, max=4096))  # Ray counts resources to 1e-4
    gpus: float = field(default=0.0, metadata=bounds(min=0, max=1024))
    concurrent: int = field(default=1, metadata=bounds(min=1, max=1024))


@dataclass(frozen=True)
class Constraints:
    """Infeasible trials stay in the study but never reach the front, exports or promotion."""

    map_floor: float = field(default=0.5, metadata=bounds(min=0))  # keep >= this fraction of the baseline mAP50-95
    params: float | None = field(default=None, metadata=bounds(gt=0))  # at most this many parameters
    macs: float | None = field(default=None, metadata=bounds(gt=0))
    latency_ms: float | None = field(default=None, metadata=bounds(gt=0))
    latency_ratio: float | None = field(default=None, metadata=bounds(gt=0))  # vs the baseline, timed interleaved

    @property
    def budgets(self) -> dict[str, float]:
        return {k: v for k, v in (("params", self.params), ("macs", self.macs), ("latency_ms", self.latency_ms),
                                  ("latency_ratio", self.latency_ratio)) if v is not None}


@dataclass(frozen=True)
class Budget:
    """A wall-clock budget for the whole run (``budget: 30m``): scan, screens, fine-tuned trials and, with targets,
    the final fine-tune of each target's winner, which gets ``final_share`` of it (with ``direct``, all that the scan
    and one round of screens leave); the scan and its allocations shrink to fit ``scan_share`` of it."""

    seconds: float | None = None  # None: no clock; the search runs ``trials`` trials
    final_share: float = field(default=0.5, metadata=bounds(gt=0))  # of the budget, for the final fine-tunes
    # the final fine-tune's highest learning rate (ultralytics' default lr0, the hand recipe's)
    final_lr: float = field(default=0.01, metadata=bounds(gt=0, max=1))
    # the final phase's race (autoprune.deploy.race): of each target's final seconds, the share spent fine-tuning
    # its candidates (the search's pick, the hand recipe's model) at ``race_lrs`` learning rates from final_lr down
    # to race_lr_low (log-spaced) for a short while; the winner on val mAP50-95 x latency gets the rest (0: no race).
    # One lr by default: a rung is a fraction of the final fine-tune, and over it a smaller lr leads whether or not
    # it ends ahead (on a fresh task's stopped-early base the race chose 0.001 on a 10 s rung, and the recipe's 0.01
    # over a minute ended 18 points higher); a target with one candidate is not raced
    race_share: float = field(default=0.3, metadata=bounds(min=0, max=0.9))
    race_lrs: int = field(default=1, metadata=bounds(min=1, max=8))
    race_lr_low: float = field(default=0.001, metadata=bounds(gt=0, max=1))
    # progressive delivery (autoprune.deploy.chain): the targets are finalized from the largest model to the smallest,
    # and a later target's candidates (the hand recipe's model; the search's pick where it fits) continue from an
    # earlier delivery pruned on to their channels (their architecture, the earlier targets' training inherited)
    # instead of starting from the base; every target gets an equal part of the final phase's time (what the hand
    # recipe gives each: the training a later target inherits comes on top) unless chain_first_share gives the chain's
    # first target that share of it (the others equal parts of the rest); where no search ran, the chain's first
    # (which inherits nothing) gets at least a target's part of the budget, less what the recovery probe trained it,
    # plus the export's reserve (the recipe's part holds no export)
    # (false: every target from its own start)
    progressive: bool = True
    # the search's pick at a target is the best val mAP50-95 among the searched trials that meet it and are measured
    # no more than the race's latency margin (10%) slower than the hand recipe's model there: a user prunes for
    # speed, and a slower pick leads a short race on its better start while the recipe's model, trained as long,
    # catches up (false: a pick of any speed races)
    as_fast_as_recipe: bool = True
    chain_first_share: float | None = field(default=None, metadata=bounds(gt=0, max=0.9))
    # before a search, the hand recipe's model at the chain's first target is fine-tuned for as long as the smallest
    # search would cost (autoprune.search.strategy.recovery); where it is back at the base's val mAP50-95 (or its gap
    # closes at that rate) within the search's share, no searched start is worth the search's time: no search. The
    # probe runs only where the search's share holds it and the smallest search after it. The probed weights start
    # that target's recipe model either way (false: no probe)
    recovery_probe: bool = True
    # rounds in a row in which no target's winner improved, after which the search hands what is left of its share
    # to the final fine-tunes (0: the search uses its whole share)
    patience: int = field(default=0, metadata=bounds(min=0, max=10_000))
    # with targets: no fine-tuned trials; each target's best screened candidate is pruned, BN-recalibrated, measured
    # and handed straight to its final fine-tune, which gets what the short fine-tunes would have spent
    direct: bool = False
    # the most of the budget the sensitivity scan and its allocations' screens may take (from the scan's start,
    # within the search's share): at short budgets they
    # shrink to fit (fewer probe ratios per block, fewer allocations), from the first probes' measured cost;
    # None: always full size
    scan_share: float | None = field(default=0.25, metadata=bounds(gt=0, max=1))


@dataclass(frozen=True)
class TrialSettings:
    """What the engine needs to run one trial, screen or re-application (not the whole spec)."""

    model: str
    data: str
    imgsz: int
    device: str = "cpu"
    seed: int = 0
    threads: int = 2  # CPU threads for pruning and fine-tuning
    finetune: FinetuneSettings = FinetuneSettings()
    latency: LatencySettings = LatencySettings()

    deployed_map: bool = False  # measure deployed_map50/_95 (an objective, target or constraint uses them)

    def replace(self, **changes: Any) -> TrialSettings:
        return dataclasses.replace(self, **changes)

    def deployed_as(self, precision: str | None, imgsz: int | None) -> TrialSettings:
        """These settings with a policy's deployment (its precision and input size; None: the spec's)."""
        if precision is None and imgsz is None:
            return self
        lat = dataclasses.replace(self.latency, precision=precision or self.latency.precision,
                                  imgsz=imgsz or self.latency.imgsz)
        return dataclasses.replace(self, latency=lat)
