"""Search specs: parsed and validated once into frozen, typed objects.

A spec file is YAML.  A plain ultralytics data set YAML is accepted too (with
defaults for everything else; the model then comes from ``--model``).  Every error is
a :class:`SpecError` whose one-line message starts with the offending field.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from autoprune import criteria, objectives
from autoprune.errors import SpecError

__all__ = ["FloatRange", "IntRange", "Space", "FinetuneSettings", "LatencySettings", "Resources", "SearchSpec",
           "SamplerSettings", "WarmStart", "Screening", "SHAPES",
           "load_spec", "parse_spec", "Overrides"]

SHAPES = ("layer", "stage", "global")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
DEFAULT_STORAGE_DIR = Path("studies")


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


@dataclass(frozen=True)
class Space:
    ratio: FloatRange = FloatRange(0.0, 0.6)
    criteria: tuple[str, ...] = tuple(criteria.names())
    iterations: IntRange = IntRange(1, 3)
    lr: FloatRange = FloatRange(1e-4, 1e-2, log=True)
    ema: tuple[bool, ...] = (True, False)
    epochs: IntRange = IntRange(1, 1)
    shape: str = "stage"  # layer | stage | global: how per-layer ratios are parameterised
    multiplier: FloatRange = FloatRange(0.5, 1.5)  # shape global: per-layer factor on the global ratio
    round_to: tuple[int, ...] = (1, 8)  # channel rounding choices (torch-pruning's round_to)


@dataclass(frozen=True)
class FinetuneSettings:
    batch: int = 16
    workers: int = 0
    optimizer: str = "SGD"
    gradient_batches: int = 4  # training batches for gradient criteria and regularisation


@dataclass(frozen=True)
class LatencySettings:
    warmup: int = 10
    runs: int = 50
    threads: int = 2
    interleave: bool = True  # time the baseline and the candidate alternately (A/B/B/A...)
    rounds: int = 10  # interleaved rounds; the latency ratio is the median of the per-round ratios


@dataclass(frozen=True)
class SamplerSettings:
    name: str = "tpe"  # see autoprune.samplers: tpe, nsga2, gp, random
    seed: int | None = None  # default: the spec's seed


@dataclass(frozen=True)
class WarmStart:
    uniform: int = 2  # enqueue this many uniform-ratio policies spread over the ratio range
    from_fronts: bool = True  # enqueue the fronts of earlier studies on the same base model (fingerprint)


@dataclass(frozen=True)
class Screening:
    factor: int = 2  # screen factor x trials candidates with adaptive BN; fine-tune the best 1/factor (0: off)
    batches: int = 8  # training batches used to re-estimate BatchNorm statistics


@dataclass(frozen=True)
class Resources:
    cpus: float = 2
    gpus: float = 0
    concurrent: int = 1


@dataclass(frozen=True)
class SearchSpec:
    name: str
    model: str
    data: str
    imgsz: int = 640
    device: str = "cpu"
    objectives: tuple[str, ...] = objectives.DEFAULT
    space: Space = Space()
    trials: int = 20
    seed: int = 0
    storage: str | None = None
    finetune: FinetuneSettings = FinetuneSettings()
    latency: LatencySettings = LatencySettings()
    resources: Resources = Resources()
    retries: int = 0  # times a trial that crashed (dead driver or Ray worker) is re-run with the same policy
    sampler: SamplerSettings = SamplerSettings()
    warm_start: WarmStart = WarmStart()
    screening: Screening = Screening()
    studies_dir: str = str(DEFAULT_STORAGE_DIR)

    @property
    def storage_url(self) -> str:
        if self.storage:
            return self.storage
        return f"sqlite:///{(Path(self.studies_dir) / 'autoprune.db').resolve()}"

    @property
    def train_threads(self) -> int:
        """CPU threads for pruning and fine-tuning: the CPUs Ray reserves per trial (at least one)."""
        return max(1, int(self.resources.cpus))

    @property
    def study_dir(self) -> Path:
        """Where this study's files go; the name is validated so it cannot escape ``studies_dir``."""
        return (Path(self.studies_dir) / self.name).resolve()

    def replace(self, **changes: Any) -> SearchSpec:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class Overrides:
    """CLI overrides applied on top of a spec file."""

    trials: int | None = None
    storage: str | None = None
    study_name: str | None = None
    device: str | None = None
    seed: int | None = None
    model: str | None = None
    data: str | None = None
    cpus_per_trial: float | None = None
    gpus_per_trial: float | None = None
    concurrent: int | None = None


# --- low-level readers: each names the field it complains about -------------------------------------------------


def _type_name(v: Any) -> str:
    return "null" if v is None else type(v).__name__


def _int(v: Any, where: str, minimum: int | None = None) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise SpecError(f"{where}: expected an integer, got {_type_name(v)} {v!r}")
    if minimum is not None and v < minimum:
        raise SpecError(f"{where}: must be >= {minimum}, got {v}")
    return v


def _float(v: Any, where: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        if isinstance(v, str):
            try:
                return float(v)
            except ValueError:
                pass
        raise SpecError(f"{where}: expected a number, got {_type_name(v)} {v!r}")
    return float(v)


def _str(v: Any, where: str) -> str:
    if not isinstance(v, str) or not v.strip():
        raise SpecError(f"{where}: expected a non-empty string, got {_type_name(v)} {v!r}")
    return v.strip()


def _mapping(v: Any, where: str, allowed: set[str]) -> dict[str, Any]:
    if v is None:
        return {}
    if not isinstance(v, Mapping):
        raise SpecError(f"{where}: expected a mapping, got {_type_name(v)}")
    unknown = sorted(set(map(str, v)) - allowed)
    if unknown:
        raise SpecError(f"{where}.{unknown[0]}: unknown key (allowed: {', '.join(sorted(allowed))})".lstrip("."))
    return dict(v)


def _float_range(v: Any, where: str, default: FloatRange, lo: float, hi: float, hi_open: bool = False) -> FloatRange:
    if v is None:
        return default
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        v = {"low": v, "high": v}
    if isinstance(v, (list, tuple)) and len(v) == 2:
        v = {"low": v[0], "high": v[1]}
    d = _mapping(v, where, {"low", "high", "log", "step"})
    low = _float(d.get("low", default.low), f"{where}.low")
    high = _float(d.get("high", default.high), f"{where}.high")
    for val, key in ((low, "low"), (high, "high")):
        too_high = val >= hi if hi_open else val > hi
        if val < lo or too_high:
            interval = f"[{lo:g}, {hi:g}{')' if hi_open else ']'}"
            raise SpecError(f"{where}.{key}: {val:g} is outside {interval}")
    if low > high:
        raise SpecError(f"{where}: low ({low:g}) is greater than high ({high:g})")
    log = d.get("log", default.log)
    if not isinstance(log, bool):
        raise SpecError(f"{where}.log: expected true or false, got {log!r}")
    if log and low <= 0:
        raise SpecError(f"{where}.low: must be > 0 for a log range")
    step = d.get("step", default.step)
    if step is not None:
        step = _float(step, f"{where}.step")
        if step <= 0:
            raise SpecError(f"{where}.step: must be > 0")
    return FloatRange(low, high, log, step)


def _int_range(v: Any, where: str, default: IntRange, minimum: int) -> IntRange:
    if v is None:
        return default
    if isinstance(v, int) and not isinstance(v, bool):
        v = {"low": v, "high": v}
    if isinstance(v, (list, tuple)) and len(v) == 2:
        v = {"low": v[0], "high": v[1]}
    d = _mapping(v, where, {"low", "high"})
    low = _int(d.get("low", default.low), f"{where}.low", minimum)
    high = _int(d.get("high", default.high), f"{where}.high", minimum)
    if low > high:
        raise SpecError(f"{where}: low ({low}) is greater than high ({high})")
    return IntRange(low, high)


def _space(v: Any) -> Space:
    d = _mapping(v, "space", {f.name for f in dataclasses.fields(Space)})
    base = Space()
    crit = d.get("criteria", list(base.criteria))
    if isinstance(crit, str):
        crit = [crit]
    if not isinstance(crit, list):
        raise SpecError(f"space.criteria: expected a list of names, got {_type_name(crit)}")
    if not crit:
        raise SpecError(f"space.criteria: empty list (choose from {', '.join(criteria.names())})")
    for c in crit:
        if not isinstance(c, str):
            raise SpecError(f"space.criteria: expected names, got {_type_name(c)} {c!r}")
        try:
            criteria.get(c)
        except Exception as e:
            raise SpecError(f"space.criteria: {e}") from None
    ema = d.get("ema", list(base.ema))
    if isinstance(ema, bool):
        ema = [ema]
    if not isinstance(ema, list) or not ema or not all(isinstance(e, bool) for e in ema):
        raise SpecError(f"space.ema: expected a non-empty list of true/false, got {ema!r}")
    return Space(
        ratio=_float_range(d.get("ratio"), "space.ratio", base.ratio, 0.0, 1.0, hi_open=True),
        criteria=tuple(dict.fromkeys(crit)),
        iterations=_int_range(d.get("iterations"), "space.iterations", base.iterations, 1),
        lr=_float_range(d.get("lr"), "space.lr", base.lr, 1e-8, 1.0),
        ema=tuple(dict.fromkeys(ema)),
        epochs=_int_range(d.get("epochs"), "space.epochs", base.epochs, 1),
        shape=_choice(d.get("shape", base.shape), "space.shape", SHAPES),
        multiplier=_float_range(d.get("multiplier"), "space.multiplier", base.multiplier, 0.0, 10.0),
        round_to=_round_to(d.get("round_to", list(base.round_to))),
    )


def _choice(v: Any, where: str, choices: tuple[str, ...]) -> str:
    v = _str(v, where)
    if v not in choices:
        raise SpecError(f"{where}: {v!r} is not one of {', '.join(choices)}")
    return v


def _bool(v: Any, where: str) -> bool:
    if not isinstance(v, bool):
        raise SpecError(f"{where}: expected true or false, got {_type_name(v)} {v!r}")
    return v


def _round_to(v: Any) -> tuple[int, ...]:
    if isinstance(v, int) and not isinstance(v, bool):
        v = [v]
    if not isinstance(v, list) or not v:
        raise SpecError(f"space.round_to: expected a non-empty list of integers, got {_type_name(v)} {v!r}")
    return tuple(dict.fromkeys(_int(x, "space.round_to", 1) for x in v))


def _sampler(v: Any) -> SamplerSettings:
    from autoprune import samplers

    if isinstance(v, str):
        v = {"name": v}
    d = _mapping(v, "sampler", {f.name for f in dataclasses.fields(SamplerSettings)})
    name = _str(d.get("name", "tpe"), "sampler.name")
    samplers.get(name)
    seed = d.get("seed")
    return SamplerSettings(name=name, seed=None if seed is None else _int(seed, "sampler.seed", 0))


def _warm_start(v: Any) -> WarmStart:
    d = _mapping(v, "warm_start", {f.name for f in dataclasses.fields(WarmStart)})
    base = WarmStart()
    return WarmStart(uniform=_int(d.get("uniform", base.uniform), "warm_start.uniform", 0),
                     from_fronts=_bool(d.get("from_fronts", base.from_fronts), "warm_start.from_fronts"))


def _screening(v: Any) -> Screening:
    d = _mapping(v, "screening", {f.name for f in dataclasses.fields(Screening)})
    base = Screening()
    factor = _int(d.get("factor", base.factor), "screening.factor", 0)
    if factor == 1:
        raise SpecError("screening.factor: 1 screens nothing out (use 0 for off, or >= 2)")
    return Screening(factor=factor, batches=_int(d.get("batches", base.batches), "screening.batches", 1))


def _finetune(v: Any) -> FinetuneSettings:
    d = _mapping(v, "finetune", {f.name for f in dataclasses.fields(FinetuneSettings)})
    base = FinetuneSettings()
    opt = _str(d.get("optimizer", base.optimizer), "finetune.optimizer")
    if opt not in {"SGD", "Adam", "AdamW"}:
        raise SpecError(f"finetune.optimizer: {opt!r} is not one of SGD, Adam, AdamW")
    return FinetuneSettings(
        batch=_int(d.get("batch", base.batch), "finetune.batch", 1),
        workers=_int(d.get("workers", base.workers), "finetune.workers", 0),
        optimizer=opt,
        gradient_batches=_int(d.get("gradient_batches", base.gradient_batches), "finetune.gradient_batches", 1),
    )


def _latency(v: Any) -> LatencySettings:
    d = _mapping(v, "latency", {f.name for f in dataclasses.fields(LatencySettings)})
    base = LatencySettings()
    return LatencySettings(
        warmup=_int(d.get("warmup", base.warmup), "latency.warmup", 0),
        runs=_int(d.get("runs", base.runs), "latency.runs", 3),
        threads=_int(d.get("threads", base.threads), "latency.threads", 1),
        interleave=_bool(d.get("interleave", base.interleave), "latency.interleave"),
        rounds=_int(d.get("rounds", base.rounds), "latency.rounds", 1),
    )


def _resources(v: Any) -> Resources:
    d = _mapping(v, "resources", {f.name for f in dataclasses.fields(Resources)})
    base = Resources()
    cpus = _float(d.get("cpus", base.cpus), "resources.cpus")
    gpus = _float(d.get("gpus", base.gpus), "resources.gpus")
    if gpus > 0:
        import torch

        if not torch.cuda.is_available():
            raise SpecError(f"resources.gpus: {gpus:g} GPU(s) per trial requested but no CUDA device is available")
    if cpus <= 0:
        raise SpecError(f"resources.cpus: must be > 0, got {cpus:g}")
    if gpus < 0:
        raise SpecError(f"resources.gpus: must be >= 0, got {gpus:g}")
    return Resources(cpus=cpus, gpus=gpus, concurrent=_int(d.get("concurrent", base.concurrent),
                                                           "resources.concurrent", 1))


def _objectives(v: Any) -> tuple[str, ...]:
    if v is None:
        return objectives.DEFAULT
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list) or not v:
        raise SpecError("objectives: expected a non-empty list of objective names")
    out = []
    for item in v:
        if isinstance(item, Mapping):  # {name: map50, direction: maximize} is accepted if direction matches
            item = dict(item)
            name = _str(item.get("name"), "objectives.name")
            obj = objectives.get(name)
            if "direction" in item and item["direction"] != obj.direction:
                raise SpecError(f"objectives.{name}.direction: must be {obj.direction}")
        else:
            name = _str(item, "objectives")
            objectives.get(name)
        if name in out:
            raise SpecError(f"objectives: {name!r} listed twice")
        out.append(name)
    if len(out) < 2:
        raise SpecError("objectives: a multi-objective study needs at least two objectives")
    return tuple(out)


def check_name(name: str, where: str = "name") -> str:
    if not _NAME_RE.match(name):
        raise SpecError(f"{where}: {name!r} must be 1-100 letters, digits, '.', '_' or '-' "
                        "and start with a letter or digit")
    if name in {".", ".."} or ".." in name:
        raise SpecError(f"{where}: {name!r} may not contain '..'")
    return name


def check_device(device: str) -> str:
    d = device.strip().lower()
    if d == "cpu":
        return "cpu"
    m = re.fullmatch(r"(?:cuda:?)?(\d+)?", d)
    if d in {"cuda", "gpu"} or m:
        import torch

        index = int(m.group(1)) if m and m.group(1) else 0
        if not torch.cuda.is_available():
            raise SpecError(f"device: {device!r} requested but no CUDA device is available")
        if index >= torch.cuda.device_count():
            raise SpecError(f"device: {device!r} does not exist ({torch.cuda.device_count()} CUDA device(s))")
        return f"cuda:{index}"
    raise SpecError(f"device: {device!r} is not 'cpu', 'cuda' or 'cuda:N'")


def check_storage(url: str) -> str:
    if not re.match(r"^(sqlite|postgresql(\+\w+)?|mysql(\+\w+)?)://", url):
        raise SpecError(f"storage: {url!r} is not a supported URL (sqlite:///PATH or postgresql+psycopg://...)")
    return url


_TOP_KEYS = {f.name for f in dataclasses.fields(SearchSpec)} - {"studies_dir"}


def _looks_like_dataset(d: Mapping[str, Any]) -> bool:
    return "names" in d and ("train" in d or "val" in d) and "space" not in d and "model" not in d


def parse_spec(raw: Any, source: str, overrides: Overrides | None = None, studies_dir: Path | None = None) -> SearchSpec:
    """Validate ``raw`` (the YAML document) and apply ``overrides``."""
    o = overrides or Overrides()
    if not isinstance(raw, Mapping):
        raise SpecError(f"{source}: expected a YAML mapping at the top level, got {_type_name(raw)}")
    raw = dict(raw)
    if _looks_like_dataset(raw):  # `autoprune search VOC.yaml`
        raw = {"name": Path(source).stem, "data": source}
    raw.update({k: v for k, v in {"trials": o.trials, "storage": o.storage, "name": o.study_name,
                                  "device": o.device, "seed": o.seed, "model": o.model, "data": o.data}.items()
                if v is not None})
    res = {k: v for k, v in {"cpus": o.cpus_per_trial, "gpus": o.gpus_per_trial,
                             "concurrent": o.concurrent}.items() if v is not None}
    if res:
        base_res = raw.get("resources") if isinstance(raw.get("resources"), Mapping) else {}
        raw["resources"] = {**base_res, **res}
    unknown = sorted(set(map(str, raw)) - _TOP_KEYS)
    if unknown:
        raise SpecError(f"{unknown[0]}: unknown key (allowed: {', '.join(sorted(_TOP_KEYS))})")
    if "model" not in raw:
        raise SpecError("model: missing (a checkpoint .pt, a model YAML, or 'demo'; or pass --model)")
    if "data" not in raw:
        raise SpecError("data: missing (an ultralytics data set YAML, or 'demo')")
    name = check_name(_str(raw.get("name", Path(source).stem), "name"))
    imgsz = _int(raw.get("imgsz", 640), "imgsz", 32)
    if imgsz % 32:
        raise SpecError(f"imgsz: {imgsz} is not a multiple of 32")
    storage = raw.get("storage")
    if storage is not None:
        storage = check_storage(_str(storage, "storage"))
    return SearchSpec(
        name=name,
        model=_str(raw["model"], "model"),
        data=_str(raw["data"], "data"),
        imgsz=imgsz,
        device=check_device(_str(str(raw.get("device", "cpu")), "device")),
        objectives=_objectives(raw.get("objectives")),
        space=_space(raw.get("space")),
        trials=_int(raw.get("trials", 20), "trials", 1),
        seed=_int(raw.get("seed", 0), "seed", 0),
        storage=storage,
        finetune=_finetune(raw.get("finetune")),
        latency=_latency(raw.get("latency")),
        resources=_resources(raw.get("resources")),
        retries=_int(raw.get("retries", 0), "retries", 0),
        sampler=_sampler(raw.get("sampler")),
        warm_start=_warm_start(raw.get("warm_start")),
        screening=_screening(raw.get("screening")),
        studies_dir=str((studies_dir or DEFAULT_STORAGE_DIR).resolve()),
    )


def load_spec(path: str | Path, overrides: Overrides | None = None, studies_dir: Path | None = None) -> SearchSpec:
    """Read and validate a spec (or a data set YAML) from ``path``."""
    p = Path(path)
    if not p.is_file():
        raise SpecError(f"{path}: spec file not found")
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(e, "problem", None) or "invalid YAML"
        raise SpecError(f"{path}: malformed YAML{where}: {problem}") from None
    except UnicodeDecodeError:
        raise SpecError(f"{path}: not a text file") from None
    spec = parse_spec(raw, str(p), overrides, studies_dir)
    if _looks_like_dataset(raw if isinstance(raw, Mapping) else {}):
        spec = spec.replace(data=str(p.resolve()))
    return spec
