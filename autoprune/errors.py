"""autoprune's exceptions: one root, narrow subclasses.

The CLI turns every :class:`AutopruneError` into a one-line message and exit code 2.
"""

from __future__ import annotations

import re

__all__ = ["AutopruneError", "SpecError", "InputError", "TrialError", "UnsupportedVersionError", "StorageWriteError",
           "UnsupportedModelError", "masked", "scrubbed"]


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


_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)(.*)$", re.S)
_SECRET_PARAM = re.compile(r"(?i)([?&](?:password|passwd|pwd|sslpassword)=)[^&]*")


def _password(url: str) -> str | None:
    m = _SCHEME.match(url)
    if not m or m.group(1).lower().startswith("sqlite"):
        return None
    authority = m.group(2).split("?", 1)[0]
    at = authority.rfind("@")  # a password may hold '@', '/' or ':'; the host part holds none of '@'
    if at < 0 or ":" not in authority[:at]:
        return None
    return authority[:at].split(":", 1)[1] or None


def masked(url: str, limit: int = 300) -> str:
    """``url`` as every message shows it: any password (in the user part, whatever it holds, or as a
    ``password=`` parameter) replaced by ***, and at most ``limit`` characters."""
    out = url
    m = _SCHEME.match(url)
    if m and not m.group(1).lower().startswith("sqlite"):
        head, _, query = m.group(2).partition("?")
        at = head.rfind("@")
        if at >= 0 and ":" in head[:at]:
            head = head[:at].split(":", 1)[0] + ":***" + head[at:]
        out = m.group(1) + head + ("?" + query if query else "")
    out = _SECRET_PARAM.sub(r"\1***", out)
    return out if len(out) <= limit else out[:limit] + "..."


def scrubbed(text: str, url: str) -> str:
    """``text`` (a library's error message) with ``url``'s password, wherever it appears, replaced by ***."""
    secret = _password(url)
    out = text.replace(url, masked(url))
    if secret:
        out = out.replace(secret, "***")
    for m in _SECRET_PARAM.finditer(url):
        value = url[m.end(1):m.end()]
        if value:
            out = out.replace(value, "***")
    return out
