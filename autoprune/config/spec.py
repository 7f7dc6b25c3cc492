"""Search specs: parsed and validated once into frozen, typed objects.

A spec file is YAML. A plain ultralytics data set YAML is accepted too (with defaults for
everything else; the model then comes from ``--model``). Every error is a
:class:`SpecError` whose one-line message starts with the offending field. Parsing checks
the text only: whether a device exists is checked by the commands that use it.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from autoprune import yamlsafe
from autoprune.config._budget import read_budget, read_targets
from autoprune.config._checks import check_device_text, check_latency, check_name, check_storage, legacy_latency
from autoprune.config._knobs import read_space
from autoprune.config._read import (
    bounds,
    mapping,
    read_int,
    read_section,
    read_str,
    type_name,
)
from autoprune.config.sections import (
    Budget,
    Constraints,
    FinetuneSettings,
    LatencySettings,
    Resources,
    SamplerSettings,
    ScanSettings,
    Screening,
    TrialSettings,
    WarmStart,
)
from autoprune.errors import SpecError
from autoprune.model import knobs, objectives, samplers
from autoprune.model.budget import Target
from autoprune.model.samplers import SEED_MAX
from autoprune.model.space import Space
from autoprune.paths import artifacts_dir
from autoprune.registry import Registry, UnknownName

__all__ = ["Constraints", "FinetuneSettings", "LatencySettings", "Resources", "SearchSpec", "SamplerSettings",
           "WarmStart", "Screening", "ScanSettings", "TrialSettings", "Overrides", "load_spec", "parse_spec",
           "check_name", "check_storage", "check_device_text", "registered", "DEFAULT_STUDIES_DIR",
           "default_storage_url", "AUTO_ROUND_TO", "Budget", "Target"]

DEFAULT_STUDIES_DIR = Path("studies")
AUTO_IMGSZ = 0  # "the checkpoint's training image size" (resolved when the model is read)
DEFAULT_IMGSZ = 640


def default_storage_url(studies_dir: str | Path) -> str:
    return f"sqlite:///{(Path(studies_dir) / 'autoprune.db').resolve()}"


@dataclass(frozen=True)
class SearchSpec:
    name: str  # the study's name: 1-100 letters, digits, '.', '_' or '-'
    model: str  # the base: a trained ultralytics checkpoint (.pt), a model YAML, or 'demo'
    data: str  # an ultralytics data set YAML (its test split, if any, is reported, never used), or 'demo'
    imgsz: int = DEFAULT_IMGSZ  # training and validation size, a multiple of 32 (unset: the checkpoint's own)
    device: str = "cpu"  # cpu, cuda or cuda:N
    objectives: tuple[str, ...] = objectives.DEFAULT  # what the search's front trades off (names below)
    space: Space = Space()  # what is searched (below)
    trials: int = field(default=20, metadata=bounds(min=1, max=1_000_000))  # trials without a budget
    seed: int = field(default=0, metadata=bounds(min=0, max=SEED_MAX))
    storage: str | None = None  # a study storage URL (default: SQLite under studies/; or postgresql+psycopg://...)
    finetune: FinetuneSettings = FinetuneSettings()
    latency: LatencySettings = LatencySettings()
    resources: Resources = Resources()
    retries: int = 0  # times a trial that crashed (dead driver or Ray worker) is re-run with the same policy
    sampler: SamplerSettings = SamplerSettings()
    warm_start: WarmStart = WarmStart()
    screening: Screening = Screening()
    sensitivity: ScanSettings = ScanSettings()
    constraints: Constraints = Constraints()
    budget: Budget = Budget()  # a wall-clock budget for the whole run: 300, 30m, 2h, or a mapping (below)
    targets: tuple[Target, ...] = ()  # sizes to deliver a finalized model at (each needs budget.seconds)
    studies_dir: str = str(DEFAULT_STUDIES_DIR)

    @property
    def storage_url(self) -> str:
        return self.storage or default_storage_url(self.studies_dir)

    @property
    def train_threads(self) -> int:
        """CPU threads for pruning and fine-tuning: the CPUs Ray reserves per trial (at least one)."""
        return max(1, int(self.resources.cpus))

    @property
    def artifacts_dir(self) -> Path:
        return artifacts_dir(self.studies_dir)

    @property
    def study_dir(self) -> Path:
        """Where this study's files go; the name is validated so it cannot escape ``studies_dir``."""
        return self.files_dir(self.name)

    def files_dir(self, study_name: str) -> Path:
        """The folder of ``study_name``'s trial files: ``studies_dir/NAME`` for the default storage, and
        ``studies_dir/NAME@TAG`` for another (TAG from the storage URL), so studies of one name in two storages never
        share trial files."""
        tag = ""
        url = self.storage_url.split("?")[0] if self.storage_url.startswith("sqlite") else self.storage_url
        if url != default_storage_url(self.studies_dir):  # SQLite's ?timeout= does not change which database
            tag = "@" + hashlib.sha256(url.encode()).hexdigest()[:10]
        return (Path(self.studies_dir) / f"{study_name}{tag}").resolve()

    @property
    def trial_settings(self) -> TrialSettings:
        return TrialSettings(model=self.model, data=self.data, imgsz=self.imgsz, device=self.device, seed=self.seed,
                             threads=self.train_threads, finetune=self.finetune, latency=self.latency,
                             deployed_map=any(n.startswith("deployed_") for n in self.objectives))

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
    budget: str | None = None  # --budget 30m


def registered(registry: Registry[Any], name: str, where: str) -> None:
    """A registry look-up at config time: an unknown name becomes a SpecError naming ``where``."""
    try:
        registry.get(name)
    except UnknownName as e:
        raise SpecError(f"{where}: {e}") from None


def _declared(raw: Mapping[str, Any], name: str) -> int:
    """Integer top-level key ``name`` within the bounds its SearchSpec field declares."""
    f = next(f for f in dataclasses.fields(SearchSpec) if f.name == name)
    return read_int(raw.get(name, f.default), name, f.metadata.get("min"), f.metadata.get("max"))


AUTO_ROUND_TO = knobs.AUTO_ROUND_TO  # space.round_to: auto (chosen from a measurement on the device)


def _sampler(v: Any) -> SamplerSettings:
    def name(x: Any, w: str) -> str:
        n = read_str(x, w)
        registered(samplers.REGISTRY, n, w)
        return n

    return read_section(SamplerSettings, {"name": v} if isinstance(v, str) else v, "sampler", {"name": name})


def _screening(v: Any) -> Screening:
    s = read_section(Screening, v, "screening")
    if s.factor == 1:
        raise SpecError("screening.factor: 1 screens nothing out (use 0 for off, or >= 2)")
    return s


def _constraints(v: Any, latency: LatencySettings) -> Constraints:
    c = read_section(Constraints, v, "constraints")
    if c.map_floor > 1:
        raise SpecError(f"constraints.map_floor: {c.map_floor:g} is a fraction of the baseline's mAP50-95 (0 to 1)")
    if c.latency_ratio is not None and not latency.interleave:
        raise SpecError("constraints.latency_ratio: needs latency.interleave: true")
    return c


def _objectives(v: Any, latency: LatencySettings, space: Space) -> tuple[str, ...]:
    if v is None:
        return objectives.DEFAULT
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list) or not v:
        raise SpecError("objectives: expected a non-empty list of objective names")
    out: list[str] = []
    for item in v:
        if isinstance(item, Mapping):  # {name: map50, direction: maximize} is accepted if direction matches
            item = dict(item)
            name = read_str(item.get("name"), "objectives.name")
            registered(objectives.REGISTRY, name, "objectives")
            want = objectives.get(name).direction
            if "direction" in item and item["direction"] != want:
                raise SpecError(f"objectives.{name}.direction: must be {want}")
        else:
            name = read_str(item, "objectives")
            registered(objectives.REGISTRY, name, "objectives")
        if name in out:
            raise SpecError(f"objectives: {name!r} listed twice")
        out.append(name)
    if len(out) < 2:
        raise SpecError("objectives: a multi-objective study needs at least two objectives")
    if "latency_ratio" in out and not latency.interleave:
        raise SpecError("objectives: latency_ratio needs latency.interleave: true (it is the interleaved ratio)")
    deploys = latency.int8 or latency.imgsz or space.precision or space.deploy_imgsz
    if any(n.startswith("deployed_") for n in out) and not deploys:
        raise SpecError("objectives: deployed mAP needs a deployment other than the validated model (latency.precision:"
                        " int8, latency.imgsz, or space.precision / space.imgsz)")
    if "latency_lut_ms" in out and not latency.lut:
        raise SpecError("objectives: latency_lut_ms needs latency.lut: true (the latency lookup table's estimate)")
    return tuple(out)


_TOP_KEYS = {f.name for f in dataclasses.fields(SearchSpec)} - {"studies_dir"}


def _looks_like_dataset(d: Mapping[str, Any]) -> bool:
    return "names" in d and ("train" in d or "val" in d) and "space" not in d and "model" not in d


def _apply_overrides(raw: dict[str, Any], o: Overrides) -> dict[str, Any]:
    raw.update({k: v for k, v in {"trials": o.trials, "storage": o.storage, "name": o.study_name,
                                  "device": o.device, "seed": o.seed, "model": o.model, "data": o.data}.items()
                if v is not None})
    if o.budget is not None:  # --budget sets the clock; the spec's other budget knobs stay
        given = raw.get("budget")
        raw["budget"] = {**given, "seconds": o.budget} if isinstance(given, Mapping) else o.budget
    res = {k: v for k, v in {"cpus": o.cpus_per_trial, "gpus": o.gpus_per_trial,
                             "concurrent": o.concurrent}.items() if v is not None}
    if res:
        given = raw.get("resources")
        raw["resources"] = {**(given if isinstance(given, Mapping) else {}), **res}
    return raw


def parse_spec(raw: Any, source: str, overrides: Overrides | None = None,
               studies_dir: Path | None = None) -> SearchSpec:
    """Validate ``raw`` (the YAML document) and apply ``overrides``."""
    if not isinstance(raw, Mapping):
        raise SpecError(f"{source}: expected a YAML mapping at the top level, got {type_name(raw)}")
    raw = dict(raw)
    if _looks_like_dataset(raw):  # `autoprune search VOC.yaml`
        raw = {"name": Path(source).stem, "data": source}
    raw = _apply_overrides(raw, overrides or Overrides())
    mapping(raw, "", _TOP_KEYS)
    if "model" not in raw:
        raise SpecError("model: missing (a checkpoint .pt, a model YAML, or 'demo'; or pass --model)")
    if "data" not in raw:
        raise SpecError("data: missing (an ultralytics data set YAML, or 'demo')")
    name = check_name(read_str(raw.get("name", Path(source).stem), "name"))
    # no imgsz: 0, resolved by `autoprune search` to the checkpoint's training size (else 640)
    imgsz = read_int(raw["imgsz"], "imgsz", 32, 4096) if "imgsz" in raw else AUTO_IMGSZ
    if imgsz % 32:
        raise SpecError(f"imgsz: {imgsz} is not a multiple of 32")
    storage = raw.get("storage")
    if storage is not None:
        storage = check_storage(read_str(storage, "storage"))
    latency = read_section(LatencySettings, legacy_latency(raw.get("latency")), "latency")
    device = check_device_text(read_str(str(raw.get("device", "cpu")), "device"))
    check_latency(latency, device)
    space = read_space(raw.get("space"))
    for p in space.precision or ():
        check_latency(dataclasses.replace(latency, precision=p), device, "space.precision")
    for size in space.deploy_imgsz or ():
        if size % 32:
            raise SpecError(f"space.imgsz: {size} is not a multiple of 32")
    budget = read_budget(raw.get("budget"))
    targets = read_targets(raw.get("targets"), budget, latency.interleave)
    screening = _screening(raw.get("screening"))
    if budget.direct and not targets:
        raise SpecError("budget.direct: needs targets (it hands each target's best screened candidate to its final "
                        "fine-tune)")
    if budget.direct and not screening.factor:
        raise SpecError("budget.direct: needs screening (screening.factor >= 2): the screens choose each target's "
                        "model")
    return SearchSpec(
        name=name,
        model=read_str(raw["model"], "model"),
        data=read_str(raw["data"], "data"),
        imgsz=imgsz,
        device=device,
        objectives=_objectives(raw.get("objectives"), latency, space),
        space=space,
        trials=_declared(raw, "trials"),
        seed=_declared(raw, "seed"),
        storage=storage,
        finetune=read_section(FinetuneSettings, raw.get("finetune"), "finetune"),
        latency=latency,
        resources=read_section(Resources, raw.get("resources"), "resources"),
        retries=read_int(raw.get("retries", 0), "retries", 0, 100),
        sampler=_sampler(raw.get("sampler")),
        warm_start=read_section(WarmStart, raw.get("warm_start"), "warm_start"),
        screening=screening,
        sensitivity=read_section(ScanSettings, raw.get("sensitivity"), "sensitivity"),
        constraints=_constraints(raw.get("constraints"), latency),
        budget=budget,
        targets=targets,
        studies_dir=str((studies_dir or DEFAULT_STUDIES_DIR).resolve()),
    )


def load_spec(path: str | Path, overrides: Overrides | None = None, studies_dir: Path | None = None) -> SearchSpec:
    """Read and validate a spec (or a data set YAML) from ``path``."""
    p = Path(path)
    if not p.is_file():
        raise SpecError(f"{path}: spec file not found")
    try:
        raw = yamlsafe.load(p.read_text())
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
