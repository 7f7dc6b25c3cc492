"""One-line checks of the spec's plain strings: a study name, a device, a storage URL."""

from __future__ import annotations

import re
from typing import Any

from autoprune.config._read import shown
from autoprune.config.sections import INT8_RUNTIMES, LatencySettings
from autoprune.errors import SpecError, masked

__all__ = ["check_name", "check_device_text", "check_storage", "legacy_latency", "check_latency"]

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def check_name(name: str, where: str = "name") -> str:
    if not _NAME_RE.match(name):
        raise SpecError(f"{where}: {shown(name)} must be 1-100 letters, digits, '.', '_' or '-' "
                        "and start with a letter or digit")
    if name in {".", ".."} or ".." in name:
        raise SpecError(f"{where}: {name!r} may not contain '..'")
    return name


def check_device_text(device: str) -> str:
    """'cpu', 'cuda', 'gpu', 'cuda:N' or 'N' (whether it exists is checked where it is used)."""
    d = device.strip().lower()
    if d == "cpu" or d in {"cuda", "gpu"} or re.fullmatch(r"(?:cuda:?)?\d+", d):
        return device.strip()
    raise SpecError(f"device: {shown(device)} is not 'cpu', 'cuda' or 'cuda:N'")


def check_storage(url: str) -> str:
    if not re.match(r"^(sqlite|postgresql(\+\w+)?|mysql(\+\w+)?)://", url):
        raise SpecError(f"storage: {masked(url, 80)!r} is not a supported URL (sqlite:///PATH or "
                        "postgresql+psycopg://...)")
    if re.match(r"^sqlite:///?(\?.*)?$", url) or ":memory:" in url:
        raise SpecError("storage: an in-memory SQLite database keeps nothing (give a file: sqlite:///PATH)")
    return url


def legacy_latency(v: Any) -> Any:
    """The latency section with its older ``half: true`` read as ``precision: fp16``."""
    if not isinstance(v, dict) or "half" not in v:
        return v
    v = dict(v)
    half = v.pop("half")
    if not isinstance(half, bool):
        raise SpecError(f"latency.half: expected true or false, got {shown(half)}")
    if half:
        if v.get("precision", "fp16") != "fp16":
            raise SpecError(f"latency.half: true contradicts latency.precision: {shown(v['precision'])}")
        v["precision"] = "fp16"
    return v


def check_latency(latency: LatencySettings, device: str, precision_key: str = "latency.precision") -> None:
    """What the latency section asks must be possible on ``device`` (whether a runtime is installed is checked
    where it is used)."""
    if latency.imgsz is not None and latency.imgsz % 32:
        raise SpecError(f"latency.imgsz: {latency.imgsz} is not a multiple of 32")
    if latency.runtime in ("cuda-graph", "tensorrt") and not device.startswith("cuda"):
        raise SpecError(f"latency.runtime: {latency.runtime} needs device: cuda (device is {device})")
    if latency.half and not device.startswith("cuda"):
        raise SpecError(f"{precision_key}: fp16 timing needs device: cuda (device is {device})")
    if latency.int8 and latency.runtime not in INT8_RUNTIMES:
        raise SpecError(f"{precision_key}: int8 needs runtime: {' or '.join(INT8_RUNTIMES)} (their post-training "
                        f"quantization), not {latency.runtime}")
    if latency.int8 and latency.lut:
        raise SpecError(f"latency.lut: the lookup table times FP32 layers; it cannot estimate an int8 model "
                        f"({precision_key}: int8)")
