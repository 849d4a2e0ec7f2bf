"""One-line messages for bad user values, and the checks of ids and URIs: ids become object-key
components and URIs name where inputs are read and results written, so both refuse anything that
could point somewhere else than it seems (and URIs, credentials that would end up in manifests).
"""

from __future__ import annotations

import re

from pydantic import ValidationError

# Ids become object-key components: no separators, no dots at the start, nothing exotic.
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
_ID_RE = re.compile(ID_PATTERN)


def shown(value: str, limit: int = 60) -> str:
    """A user's value quoted for a one-line message: repr'd (no control characters) and bounded,
    so a hostile megabyte-long id cannot flood a log line or a terminal."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_id(value: str, what: str) -> str:
    if not _ID_RE.match(value) or ".." in value:
        raise ValueError(f"{what} {shown(value)} is not a safe id (letters, digits, '_', '-', '.')")
    return value


# Percent-encoded '.', '/' and '\\' mean nothing to S3 or a filesystem, but any layer that decodes
# them (a proxy, a browser, a later tool) would see a different path: refuse the ambiguity.
_ENCODED_SEPARATOR = re.compile(r"%(2e|2f|5c|00)", re.IGNORECASE)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def check_uri(value: str) -> str:
    """An input or results URI: ``s3://bucket/prefix`` or a path, nothing that could point
    somewhere else than it seems, and no credentials (they would end up in manifests)."""
    # First, so that no message below can echo a password.
    if "://" in value and "@" in value.split("://", 1)[1].split("/", 1)[0]:
        raise ValueError(
            "URI carries credentials (user@ or user:password@); use the AWS credential chain"
        )
    if _CONTROL.search(value):
        raise ValueError(f"URI {shown(value)} contains control characters")
    if any(part == ".." for part in value.replace("\\", "/").split("/")):
        raise ValueError(f"URI {shown(value)} contains '..'")
    if _ENCODED_SEPARATOR.search(value):
        raise ValueError(f"URI {shown(value)} contains a percent-encoded '.', '/', '\\' or NUL")
    if not value.startswith(("s3://", "file://", "/", "./")) and "://" in value:
        raise ValueError(f"URI {shown(value)}: use s3://bucket/prefix or a path")
    return value.rstrip("/") or value


def describe(exc: ValidationError) -> str:
    """A pydantic error as one line a user can act on."""
    parts = []
    for err in exc.errors()[:3]:
        where = ".".join(str(p) for p in err["loc"]) or "job"
        parts.append(f"{where}: {err['msg'].removeprefix('Value error, ')}")
    more = len(exc.errors()) - 3
    return "; ".join(parts) + (f" (+{more} more)" if more > 0 else "")
