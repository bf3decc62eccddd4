"""S3-compatible object storage with Object Lock: settings, object names, the async client.

Layout under ``s3://BUCKET/PREFIX``:

* ``recordings/<file>/<start>-<end>``: bytes ``[start, end)`` of recording ``<file>`` (e.g.
  ``<session>.rec``), cut right after a signed checkpoint or the trailer; offsets are 16
  decimal digits, so names sort in file order.
* ``audit/<file>/<start>-<end>``: the same for audit log segments.
* ``anchors/<area>/<file>/<seq>``: one small JSON document per anchored signed line (its
  sequence number, the SHA-256 of the line, its prev hash, key id, offset), written as the
  gateway sees the checkpoint, before the segment holding it goes up.
* ``gateways/<name>/<stamp>-<pid>-<random>``: one per gateway process start (the probe that
  proves bucket, credentials and Object Lock before any session is accepted).

Every object is written once (``If-None-Match: *``) with its Object Lock retention set in the
same request. Nothing here reads the recording files; see :mod:`recorder.uploader` and
:mod:`recorder.store_read`.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "StoreConfig",
    "StoreError",
    "parse_url",
    "parse_retention",
    "parse_size",
    "open_client",
    "RECORDINGS",
    "AUDIT",
    "ANCHORS",
]

RECORDINGS = "recordings"
AUDIT = "audit"
ANCHORS = "anchors"
GATEWAYS = "gateways"  # one locked object per gateway start
#: Area of the store each local file suffix goes to.
AREA_OF_SUFFIX = {".rec": RECORDINGS, ".audit": AUDIT}

_BUCKET = re.compile(r"[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]\Z")
_SIZE = re.compile(r"(\d+)\s*([KMGT]i?B|B)?\Z", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}
_UNITS.update({"kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40})


class StoreError(Exception):
    """The store is misconfigured or cannot be read/written."""


@dataclass(frozen=True)
class StoreConfig:
    """``[recorder.store]``. Credentials are never part of it: they come from the environment
    (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, an instance role, ...) or from the
    AWS-format ``credentials_file`` (``profile`` picks a section)."""

    bucket: str
    prefix: str = ""
    endpoint_url: str | None = None
    region: str | None = None
    credentials_file: Path | None = None
    profile: str | None = None
    retention_mode: str = "COMPLIANCE"
    retention_days: int = 400
    upload_lag: float = 5.0
    anchor_interval: float = 1.0
    spool_limit: int = 4 << 30
    timeout: float = 30.0
    addressing_style: str = "path"

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    def key(self, *parts: str) -> str:
        return "/".join(p for p in (self.prefix, *parts) if p)

    def with_url(self, url: str) -> StoreConfig:
        bucket, prefix = parse_url(url)
        return StoreConfig(**{**self.__dict__, "bucket": bucket, "prefix": prefix})


def parse_url(url: str) -> tuple[str, str]:
    """``s3://BUCKET[/PREFIX]`` -> (bucket, prefix without surrounding slashes)."""
    if not isinstance(url, str) or not url.startswith("s3://"):
        raise StoreError(f"expected s3://BUCKET/PREFIX, got {url!r}")
    bucket, _, prefix = url[5:].partition("/")
    if not _BUCKET.match(bucket):
        raise StoreError(f"{url!r}: {bucket!r} is not a valid bucket name")
    prefix = prefix.strip("/")
    if any(part in ("", ".", "..") for part in prefix.split("/")) and prefix:
        raise StoreError(f"{url!r}: the prefix has an empty, '.' or '..' part")
    return bucket, prefix


def parse_retention(text: str) -> tuple[str, int]:
    """``"compliance:400d"`` / ``"governance:30d"`` (``d`` days or ``y`` years of 365 days)."""
    mode, sep, length = str(text).partition(":")
    mode = mode.strip().upper()
    if not sep or mode not in ("COMPLIANCE", "GOVERNANCE"):
        raise StoreError(f'expected "compliance:DAYSd" or "governance:DAYSd", got {text!r}')
    m = re.fullmatch(r"\s*(\d+)\s*([dy])\s*", length)
    if not m:
        raise StoreError(f"retention length must be like 400d or 7y, got {length!r}")
    days = int(m.group(1)) * (365 if m.group(2) == "y" else 1)
    if not 1 <= days <= 36500:
        raise StoreError("retention must be between 1 day and 100 years")
    return mode, days


def parse_size(text: str | int) -> int:
    """``"4GiB"``, ``"500MB"``, ``1048576``."""
    if isinstance(text, int) and not isinstance(text, bool):
        return text
    m = _SIZE.match(str(text).strip())
    if not m:
        raise StoreError(f'expected a size like "4GiB" or "500MB", got {text!r}')
    return int(m.group(1)) * _UNITS[(m.group(2) or "").lower()]


@contextlib.asynccontextmanager
async def open_client(cfg: StoreConfig) -> AsyncIterator[Any]:
    """An aiobotocore S3 client for ``cfg`` (SigV4, retries and checksums by botocore)."""
    try:
        from aiobotocore.config import AioConfig
        from aiobotocore.session import AioSession
    except ImportError as e:  # pragma: no cover - a declared dependency
        raise StoreError(f"the S3 store needs aiobotocore: {e}") from None
    session = AioSession()
    if cfg.credentials_file is not None:
        session.set_config_variable("credentials_file", str(cfg.credentials_file))
    if cfg.profile:
        session.set_config_variable("profile", cfg.profile)
    config = AioConfig(
        connect_timeout=min(cfg.timeout, 10.0),
        read_timeout=cfg.timeout,
        retries={"max_attempts": 2, "mode": "standard"},
        s3={"addressing_style": cfg.addressing_style},
    )
    async with session.create_client(
        "s3", endpoint_url=cfg.endpoint_url, region_name=cfg.region, config=config
    ) as client:
        yield client


def error_code(exc: BaseException) -> str:
    """The S3 error code of a botocore ``ClientError`` (``AccessDenied``, ...), else ''."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", ""))
    return ""
