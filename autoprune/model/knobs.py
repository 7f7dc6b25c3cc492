"""The knob table: every searchable policy knob declared once.

A :class:`Knob` says what a knob is (its name: the Optuna parameter, the policy's attribute and
the policy file's key), what a spec may set it to (its :class:`Domain`), what the default space
searches, the value a policy holds when the space does not search it, whether an adaptive-BN
screen can judge it, which stage of a trial uses it, what the hand recipe picks, and a line of help.
The spec reader, :class:`~autoprune.model.space.Space`, sampling and projection
(:mod:`autoprune.model.sampling`), the screen's space and the recipe, both policy codecs, the
policy file's checks and schema text, and the report's knob columns all read this table: a new
knob is one :func:`register` call here plus the code that uses its value.

The per-layer prune ratios are not a knob: their shape (:mod:`autoprune.model.sampling`) decides
how many parameters they take.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from autoprune.model import criteria
from autoprune.registry import Registry

__all__ = ["FloatRange", "IntRange", "Real", "Whole", "Flags", "Names", "Numbers", "Domain", "Knob", "REGISTRY",
           "register", "get", "names", "knobs", "searched", "first", "lowest", "highest", "off", "fixed",
           "prefer", "clipped", "span"]


@dataclass(frozen=True)
class FloatRange:
    low: float
    high: float
    log: bool = False
    step: float | None = None


@dataclass(frozen=True)
class IntRange:
    low: int
    high: int


# What a spec may write for a knob (its bounds); the space holds a FloatRange, an IntRange or a tuple of choices.
@dataclass(frozen=True)
class Real:
    """A float range within [low, high] (``low_open``/``high_open``: the bound itself excluded)."""

    low: float
    high: float
    low_open: bool = False
    high_open: bool = False

    def admits(self, v: float) -> bool:
        return (self.low < v if self.low_open else self.low <= v) and (v < self.high if self.high_open
                                                                       else v <= self.high)

    def interval(self) -> str:
        return f"{'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"


@dataclass(frozen=True)
class Whole:
    """An integer range within [low, high]."""

    low: int
    high: int

    def admits(self, v: int) -> bool:
        return self.low <= v <= self.high

    def interval(self) -> str:
        return f"[{self.low}, {self.high}]"


@dataclass(frozen=True)
class Flags:
    """A list of true/false to choose from."""


@dataclass(frozen=True)
class Names:
    """A list of names to choose from: a fixed tuple, or a registry's names (``what`` names its kind)."""

    choices: tuple[str, ...] | Callable[[], Sequence[str]]
    what: str = "name"

    def allowed(self) -> tuple[str, ...]:
        return tuple(self.choices if isinstance(self.choices, tuple) else self.choices())


@dataclass(frozen=True)
class Numbers:
    """A list of numbers within [low, high] to choose from (``integer``: whole numbers; ``auto``: the word
    ``auto`` stands for this tuple, resolved when the search starts)."""

    low: float
    high: float
    integer: bool = False
    auto: tuple[int, ...] | None = None
    what: str = "numbers"

    def admits(self, v: float) -> bool:
        return self.low <= v <= self.high

    def interval(self) -> str:
        return f"[{self.low:g}, {self.high:g}]"


Domain = Real | Whole | Flags | Names | Numbers
SpaceDomain = FloatRange | IntRange | tuple[Any, ...] | None  # None: not searched (the policy holds Knob.value)


@dataclass(frozen=True)
class Knob:
    name: str  # the Optuna parameter, the Policy attribute and the policy file's key
    help: str
    domain: Domain  # what a spec may write
    space: SpaceDomain  # what the default space searches
    value: Any  # the policy's value where the space does not search it, or an older file or dict lacks it
    # base: which base is pruned; prune: what goes; finetune: recovery; deploy: how the pruned model is deployed
    stage: Literal["base", "prune", "finetune", "deploy"]
    screen_fix: Callable[[SpaceDomain], SpaceDomain] | None = None  # how a screen's space fixes it (None: it sees it)
    recipe: Callable[[SpaceDomain], Any] | None = None  # the hand recipe's choice from a searched domain
    required: bool = False  # policy files and dicts must carry it (the first knobs; later ones default)
    spec_key: str = ""  # its key under the spec's ``space:`` when not its name
    partial: FloatRange | IntRange | None = None  # what a spec's partial range ({high: x}) is completed from
    log_axis: bool = False  # the report plots it on a log axis

    @property
    def key(self) -> str:
        """The knob's key under the spec's ``space:``."""
        return self.spec_key or self.name

    @property
    def screen(self) -> bool:
        """Whether an adaptive-BN screen can judge it (the model's structure and channel choice)."""
        return self.screen_fix is None

    def coerce(self, v: Any) -> Any:
        """``v`` as this knob's value type (None: the knob's value)."""
        if v is None:
            return self.value
        d = self.domain
        if isinstance(d, Flags):
            return bool(v)
        if isinstance(d, Names):
            return str(v)
        if isinstance(d, Whole) or (isinstance(d, Numbers) and d.integer):
            return int(v)
        return float(v)


REGISTRY: Registry[Knob] = Registry("knob")
register, get, names = REGISTRY.register, REGISTRY.get, REGISTRY.names


def knobs() -> list[Knob]:
    """Every knob, in sampling order (the order Optuna parameters are suggested in; keep it stable)."""
    return list(REGISTRY)


def searched(domain: SpaceDomain) -> bool:
    """Whether a space domain leaves a choice (a range wider than a point, more than one choice)."""
    if domain is None:
        return False
    if isinstance(domain, (FloatRange, IntRange)):
        return domain.low != domain.high
    return len(domain) > 1


def span(domain: FloatRange | IntRange) -> float:
    """The middle of a range (geometric for a log range)."""
    if isinstance(domain, FloatRange) and domain.log:
        return math.sqrt(domain.low * domain.high)
    return (domain.low + domain.high) / 2


# How a screen's space fixes a knob it cannot judge.
def first(d: SpaceDomain) -> SpaceDomain:
    return d[:1] if isinstance(d, tuple) else d


def lowest(d: SpaceDomain) -> SpaceDomain:
    if isinstance(d, IntRange):
        return IntRange(d.low, d.low)
    return FloatRange(d.low, d.low) if isinstance(d, FloatRange) else d


def highest(d: SpaceDomain) -> SpaceDomain:
    if isinstance(d, IntRange):
        return IntRange(d.high, d.high)
    return FloatRange(d.high, d.high) if isinstance(d, FloatRange) else d


def off(d: SpaceDomain) -> SpaceDomain:
    return None


def fixed(value: FloatRange | IntRange) -> Callable[[SpaceDomain], SpaceDomain]:
    return lambda d: value


# What the hand recipe picks from a searched domain.
def prefer(value: Any) -> Callable[[SpaceDomain], Any]:
    return lambda d: value if isinstance(d, tuple) and value in d else (d[0] if isinstance(d, tuple) else value)


def clipped(value: float) -> Callable[[SpaceDomain], Any]:
    return lambda d: min(d.high, max(d.low, value)) if isinstance(d, (FloatRange, IntRange)) else value


def _low(d: SpaceDomain) -> Any:
    return d.low if isinstance(d, (FloatRange, IntRange)) else None


def _high(d: SpaceDomain) -> Any:
    return d.high if isinstance(d, (FloatRange, IntRange)) else None


AUTO_ROUND_TO = (0,)  # space.round_to: auto (chosen from a measurement on the device when the search starts)

# The recipe: torch-pruning's YOLOv8 example (group L2, one prune step, SGD at lr 0.01 with EMA, cosine decay,
# channels rounded to 8, the longest fine-tune allowed).
register(Knob("criterion", "channel-importance criterion (a name in autoprune.model.criteria)",
              Names(criteria.names, "criterion"), criteria.DEFAULT, None, "prune", recipe=prefer("l2"),
              required=True, spec_key="criteria"))
register(Knob("iterations", "prune -> fine-tune steps to reach the ratios", Whole(1, 20), IntRange(1, 3), 1,
              "finetune", screen_fix=fixed(IntRange(1, 1)), recipe=_low, required=True))
register(Knob("lr", "initial fine-tune learning rate", Real(0.0, 1.0, low_open=True),
              FloatRange(1e-4, 1e-2, log=True), None, "finetune", screen_fix=highest, recipe=clipped(0.01),
              required=True, log_axis=True))
register(Knob("ema", "fine-tune with an exponential moving average of the weights", Flags(), (True, False), None,
              "finetune", screen_fix=first, recipe=prefer(True), required=True))
register(Knob("epochs", "fine-tune epochs per prune step", Whole(1, 1000), IntRange(1, 1), None, "finetune",
              screen_fix=lowest, recipe=_high, required=True))
register(Knob("round_to", "kept channels rounded to a multiple of this (torch-pruning's round_to; auto: "
              "measured on the device)", Numbers(1, 1024, integer=True, auto=AUTO_ROUND_TO,
                                                 what="integers"), (1, 8), 1, "prune", recipe=prefer(8)))
register(Knob("schedule", "fine-tune learning-rate decay to lrf", Names(("cosine", "linear"), "schedule"),
              ("cosine", "linear"), "linear", "finetune", screen_fix=first, recipe=prefer("cosine")))
register(Knob("distill", "fine-tune with knowledge distillation from the unpruned base (ultralytics' distill_model)",
              Flags(), (False,), False, "finetune", screen_fix=first, recipe=prefer(False)))
register(Knob("lrf", "final learning rate as a fraction of the initial (unset: finetune.lrf)",
              Real(0.0, 1.0, low_open=True), None, None, "finetune", screen_fix=off, partial=FloatRange(0.01, 0.01)))
register(Knob("warmup", "warm-up epochs (unset: finetune.warmup_epochs; capped at epochs - 1 by the trainer)",
              Real(0.0, 100.0), None, None, "finetune", screen_fix=off, partial=FloatRange(1.0, 1.0)))
register(Knob("lr_step", "prune step k of k iterations fine-tunes at lr * lr_step ** (k - 1)", Real(0.01, 10.0),
              None, 1.0, "finetune", screen_fix=off))
register(Knob("sparsity", "BN-scale L1 of the sparse-trained base pruned from (network slimming; 0: the base "
              "itself)", Numbers(0.0, 100.0, what="L1 strengths (0: no sparse training)"), (0.0,), 0.0, "base",
              recipe=prefer(0.0)))
register(Knob("depth", "layer pruning: share of each block's repeated bottlenecks removed (at least one kept)",
              Real(0.0, 1.0, high_open=True), None, 0.0, "prune", recipe=_low))
register(Knob("precision", "the deployed model's precision (unset: latency.precision): fp32, fp16 (GPU runtimes) or "
              "int8 (static quantization on ONNX Runtime or OpenVINO, calibrated on training images); latency and "
              "deployed mAP are measured on the model in it", Names(("fp32", "fp16", "int8"), "precision"), None, None,
              "deploy", screen_fix=first))
register(Knob("deploy_imgsz", "the deployment input size (unset: latency.imgsz, else imgsz); latency and deployed mAP "
              "are measured at it", Numbers(32, 4096, integer=True, what="image sizes (multiples of 32)"), None,
              None, "deploy", screen_fix=first, spec_key="imgsz"))
