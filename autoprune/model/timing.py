"""Sanity checks of a recorded latency: is this timing one to trust on the front?

A timing on a busy machine can be off by several times. Besides its own spread (a ratio that stayed noisy after
its re-measurements is marked unreliable when it is taken), a ratio to the base can be checked against what the
model's size predicts: its MACs ratio (pruning cannot make a model much faster than the compute it removes, and a
smaller model is rarely much slower) and, with ``latency.lut``, the latency lookup table's ratio (each
convolution timed alone, no timing noise). A ratio far from both predictions is flagged, not changed:
``autoprune remeasure`` times it again.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["latency_flags", "MACS_FASTER_LIMIT", "MACS_SLOWER_LIMIT", "LUT_FACTOR"]

MACS_FASTER_LIMIT = 0.5  # a ratio under half its MACs ratio: faster than the compute it removed explains
MACS_SLOWER_LIMIT = 1.25  # slower than the base by this much while ...
MACS_SMALLER = 0.8  # ... holding at most this share of its MACs
LUT_FACTOR = 1.5  # measured and table ratios apart by more than this factor


def latency_flags(metrics: Mapping[str, float], latency: Mapping[str, Any],
                  baseline: Mapping[str, float]) -> list[str]:
    """Short reasons to doubt one trial's latency ratio (empty when nothing is odd or no ratio was timed)."""
    ratio = metrics.get("latency_ratio", latency.get("ratio"))
    if ratio is None or not ratio > 0:
        return []
    ratio = float(ratio)
    flags = []
    if latency.get("unreliable"):
        flags.append(f"noisy: round ratios spread {float(latency.get('ratio_spread') or 0):.2f} after "
                     f"{int(latency.get('attempts') or 1)} timings")
    macs, base_macs = metrics.get("macs"), baseline.get("macs")
    if macs and base_macs:
        macs_ratio = float(macs) / float(base_macs)
        if ratio < MACS_FASTER_LIMIT * macs_ratio:
            flags.append(f"x{ratio:.2f} is faster than its MACs (x{macs_ratio:.2f}) explain")
        elif ratio > MACS_SLOWER_LIMIT and macs_ratio <= MACS_SMALLER:
            flags.append(f"x{ratio:.2f} is slower than the base with MACs x{macs_ratio:.2f}")
    lut, base_lut = metrics.get("latency_lut_ms"), baseline.get("latency_lut_ms")
    if lut and base_lut:
        lut_ratio = float(lut) / float(base_lut)
        if not 1 / LUT_FACTOR <= ratio / lut_ratio <= LUT_FACTOR:
            flags.append(f"x{ratio:.2f} is far from the lookup table's x{lut_ratio:.2f}")
    return flags
