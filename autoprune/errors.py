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
_SHORT = 4  # a userinfo part shorter than this is masked only where it stands as a word of its own


def _userinfo(url: str) -> tuple[str, str, str] | None:
    """``url`` split as (scheme, userinfo, rest) where it has a userinfo: everything between the scheme and the
    URL's last '@' (a malformed password may hold '@', ':', '/' or '?'; the host never holds '@'); sqlite paths
    have none."""
    m = _SCHEME.match(url)
    if not m or m.group(1).lower().startswith("sqlite"):
        return None
    at = m.group(2).rfind("@")
    return (m.group(1), m.group(2)[:at], m.group(2)[at:]) if at >= 0 else None


def masked(url: str, limit: int = 300) -> str:
    """``url`` as every message shows it: its whole userinfo (user and password, however malformed) and any
    ``password=`` parameter replaced by ***, and at most ``limit`` characters."""
    parts = _userinfo(url)
    out = parts[0] + "***" + parts[2] if parts else url
    out = _SECRET_PARAM.sub(r"\1***", out)
    return out if len(out) <= limit else out[:limit] + "..."


def _secrets(url: str) -> list[str]:
    """The pieces of ``url`` no message may quote: its userinfo, each piece of it between ':', '@' and '/' (a
    library that splits a malformed URL elsewhere quotes such pieces), their %-decoded forms, and ``password=``
    values; longest first."""
    from urllib.parse import unquote

    pieces = []
    parts = _userinfo(url)
    if parts:
        pieces += [parts[1], *re.split(r"[:@/?#]", parts[1])]
    pieces += [url[m.end(1):m.end()] for m in _SECRET_PARAM.finditer(url)]
    pieces += [unquote(p) for p in pieces]
    return sorted({p for p in pieces if p}, key=len, reverse=True)


def scrubbed(text: str, url: str) -> str:
    """``text`` (a library's error message) with ``url`` masked and every piece of its userinfo and password,
    wherever it appears, replaced by *** (a piece shorter than 4 characters where it stands as a word)."""
    out = text.replace(url, masked(url))
    for piece in _secrets(url):
        if len(piece) >= _SHORT:
            out = out.replace(piece, "***")
        else:
            out = re.sub(rf"(?<![A-Za-z0-9]){re.escape(piece)}(?![A-Za-z0-9])", "***", out)
    return out
