"""autoprune's exceptions: one root, narrow subclasses.

The CLI turns every :class:`AutopruneError` into a one-line message and exit code 2.
"""

from __future__ import annotations

__all__ = ["AutopruneError", "SpecError", "InputError", "TrialError", "UnsupportedVersionError", "StorageWriteError",
           "UnsupportedModelError"]


class AutopruneError(Exception):
    """Base class of all errors autoprune raises on purpose."""


class SpecError(AutopruneError):
    """A search spec (or a CLI override of it) is invalid; the message names the field."""


class InputError(AutopruneError):
    """A file the user pointed at (model, data set, storage) is missing or unusable."""


class TrialError(AutopruneError):
    """One trial failed for a known reason (the study records it FAILED and goes on)."""


class UnsupportedVersionError(AutopruneError):
    """An installed third-party library has a version autoprune does not support."""


class StorageWriteError(AutopruneError):
    """The study storage refused writes for longer than the retries wait (results are kept in a local journal)."""


class UnsupportedModelError(AutopruneError):
    """The model's architecture cannot be pruned by autoprune (e.g. YOLOv9's GELAN, RT-DETR)."""
