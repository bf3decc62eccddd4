"""Read recordings and audit segments back from the object store (read permissions only).

:func:`pull` lists every object version under the prefix and rebuilds each file from its
segments into a local directory (``recordings/`` and ``audit/``), where every reading command
works as on the gateway's own directories. It uses the *first* version of each object name:
a later version (someone with write access putting over a locked object) or a delete marker
is reported as a tampering attempt, and the locked original is what is read. Downloads are
cached by version id, so pulling again fetches only what is new.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .store import ANCHORS, AUDIT, GATEWAYS, RECORDINGS, StoreConfig, StoreError, open_client

__all__ = ["StoreFile", "PullResult", "pull", "pull_sync", "cache_dir"]

_AREAS = (RECORDINGS, AUDIT)
#: What a file name in the store may look like: it becomes a local file name when pulled, so
#: nothing that could leave the directory (``..``, ``/``) or hide (a leading dot).
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,200}\.(rec|audit)\Z")
_SUFFIX = {RECORDINGS: ".rec", AUDIT: ".audit"}


@dataclass
class StoreFile:
    """One recording or audit segment as the store holds it."""

    area: str
    name: str
    path: Path | None = None  # the rebuilt local copy
    size: int = 0
    segments: int = 0
    last_upload: float | None = None  # when its newest segment reached the store (server time)
    problems: list[str] = field(default_factory=list)  # tampering attempts, gaps
    anchors: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class PullResult:
    directory: Path
    files: dict[tuple[str, str], StoreFile] = field(default_factory=dict)
    foreign: list[str] = field(default_factory=list)  # object names no gateway writes
    gateway_starts: list[str] = field(default_factory=list)  # gateways/NAME/STAMP objects

    def recordings(self) -> list[StoreFile]:
        return [f for (a, _), f in sorted(self.files.items()) if a == RECORDINGS]

    def audit(self) -> list[StoreFile]:
        return [f for (a, _), f in sorted(self.files.items()) if a == AUDIT]


@dataclass
class _Version:
    key: str
    version_id: str
    etag: str
    size: int
    modified: Any


async def _list_versions(client: Any, cfg: StoreConfig, prefix: str) -> tuple[dict, list]:
    """All versions under ``prefix``: key -> versions oldest first; and delete markers."""
    versions: dict[str, list[_Version]] = {}
    markers: list[dict[str, Any]] = []
    paginator = client.get_paginator("list_object_versions")
    async for page in paginator.paginate(Bucket=cfg.bucket, Prefix=prefix):
        for v in page.get("Versions", []):
            versions.setdefault(v["Key"], []).append(
                _Version(
                    v["Key"],
                    v.get("VersionId") or "null",
                    v.get("ETag", ""),
                    v["Size"],
                    v["LastModified"],
                )
            )
        markers += page.get("DeleteMarkers", [])
    for vs in versions.values():
        # S3 lists a key's versions newest first; LastModified has whole-second resolution,
        # so within one second only the listing order tells which came first (the locked
        # original): reverse it, then a stable sort by time keeps that order for ties.
        vs.reverse()
        vs.sort(key=lambda v: v.modified)
    return versions, markers


async def pull(
    cfg: StoreConfig,
    dest: Path,
    *,
    only: str | None = None,
    anchors: bool = True,
    segments: bool = True,
) -> PullResult:
    """Rebuild the store's files under ``dest`` (``dest/recordings``, ``dest/audit``).

    ``only``: a session id or file name: just that recording (and its anchors)."""
    dest = Path(dest)
    result = PullResult(dest)
    root = cfg.key()
    base = f"{root}/" if root else ""
    async with open_client(cfg) as client:
        try:
            versions, markers = await _list_versions(client, cfg, base)
        except Exception as e:  # noqa: BLE001 - AccessDenied, no such bucket, unreachable
            raise StoreError(f"cannot list {cfg.url}: {e}") from None
        segs: dict[tuple[str, str], list[tuple[int, int, _Version, list[_Version]]]] = {}
        anchor_keys: dict[tuple[str, str], list[_Version]] = {}
        for key, vs in versions.items():
            parts = key[len(base) :].split("/")
            if parts[0] == GATEWAYS and len(parts) == 3:
                result.gateway_starts.append(key)
                continue
            if len(parts) in (3, 4) and (not _NAME.match(parts[-2]) or ".." in parts[-2]):
                result.foreign.append(key)
                continue
            if len(parts) == 3 and parts[0] in _AREAS:
                area, name, rng = parts
                start, _, end = rng.partition("-")
                if not (start.isdigit() and end.isdigit()):
                    continue
                if only and not _matches(name, only):
                    continue
                segs.setdefault((area, name), []).append((int(start), int(end), vs[0], vs))
            elif len(parts) == 4 and parts[0] == ANCHORS and parts[1] in _AREAS:
                if only and not _matches(parts[2], only):
                    continue
                anchor_keys.setdefault((parts[1], parts[2]), []).append(vs[0])
                if len(vs) > 1 and any(v.etag != vs[0].etag for v in vs[1:]):
                    sf = result.files.setdefault(
                        (parts[1], parts[2]), StoreFile(parts[1], parts[2])
                    )
                    sf.problems.append(
                        f"tampering attempt: anchor {parts[3]} was written again with other "
                        f"content; the first (locked) version is used"
                    )
        for m in markers:
            parts = m["Key"][len(base) :].split("/")
            area_name = (
                (parts[1], parts[2])
                if parts[0] == ANCHORS and len(parts) == 4
                else ((parts[0], parts[1]) if len(parts) == 3 else None)
            )
            if area_name and area_name[0] in _AREAS and (not only or _matches(area_name[1], only)):
                sf = result.files.setdefault(area_name, StoreFile(*area_name))
                sf.problems.append(
                    f"tampering attempt: someone tried to delete {m['Key'][len(base) :]} "
                    f"(delete marker of {m['LastModified']}); the locked object is intact"
                )
        sem = asyncio.Semaphore(16)

        async def fetch(v: _Version) -> bytes:
            async with sem:
                r = await client.get_object(Bucket=cfg.bucket, Key=v.key, VersionId=v.version_id)
                async with r["Body"] as body:
                    return await body.read()

        for (area, name), items in sorted(segs.items()):
            sf = result.files.setdefault((area, name), StoreFile(area, name))
            if segments:
                await _rebuild(sf, items, dest, fetch)
        if anchors:
            for (area, name), vs in sorted(anchor_keys.items()):
                sf = result.files.setdefault((area, name), StoreFile(area, name))
                bodies = await asyncio.gather(*(_cached(v, dest, base, fetch) for v in vs))
                for v, body in zip(vs, bodies, strict=True):
                    try:
                        doc = json.loads(body)
                    except ValueError:
                        sf.problems.append(f"anchor {v.key} is not valid JSON")
                        continue
                    if isinstance(doc, dict):
                        doc["_stored_at"] = v.modified.timestamp()
                        sf.anchors.append(doc)
                sf.anchors.sort(
                    key=lambda d: d.get("seq", -1) if isinstance(d.get("seq"), int) else -1
                )
    return result


def _md5_etag(etag: str) -> str | None:
    """The MD5 an ETag stands for (a single-part upload), or None (multipart, other)."""
    e = etag.strip('"').lower()
    return e if re.fullmatch(r"[0-9a-f]{32}", e) else None


def _same_as_listed(data: bytes, v: _Version) -> bool:
    """A cached body is reused only while it still hashes to the ETag the store lists for
    that version (when the ETag is an MD5): a cache edited on disk is fetched again."""
    md5 = _md5_etag(v.etag)
    return md5 is None or hashlib.md5(data, usedforsecurity=False).hexdigest() == md5


async def _cached(v: _Version, dest: Path, base: str, fetch: Any) -> bytes:
    """An anchor body, from ``dest/.pulled/objects`` when that version was fetched before."""
    name = hashlib.sha256(f"{v.key[len(base) :]}\0{v.version_id}".encode()).hexdigest()
    path = dest / ".pulled" / "objects" / name
    try:
        data = path.read_bytes()
        if _same_as_listed(data, v):
            return data
    except OSError:
        pass
    data = await fetch(v)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return data


def _matches(name: str, only: str) -> bool:
    return name == only or name.rsplit(".", 1)[0] == only


async def _rebuild(sf: StoreFile, items: list, dest: Path, fetch: Any) -> None:
    """Concatenate the segments of one file in offset order into ``dest/<area>/<name>``."""
    items.sort(key=lambda it: (it[0], -it[1]))
    sf.last_upload = max(v.modified.timestamp() for _, _, v, _ in items)
    for start, end, first, vs in items:
        if len(vs) > 1 and any(v.etag != first.etag for v in vs[1:]):
            sf.problems.append(
                f"tampering attempt: segment {start}-{end} was written again with other "
                f"content ({len(vs) - 1} later version(s)); the first (locked) version is used"
            )
    out_dir = dest / sf.area
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / sf.name
    cache = dest / ".pulled" / sf.area / f"{sf.name}.json"
    manifest = [[s, e, v.version_id] for s, e, v, _ in items]
    try:
        if json.loads(cache.read_text()) == manifest and _intact(path, items):
            sf.path, sf.size, sf.segments = path, path.stat().st_size, len(items)
            return
    except (OSError, ValueError):
        pass
    tmp = path.with_name(path.name + ".part")
    cur = 0
    with open(tmp, "w+b") as out:
        for start, end, first, _ in items:
            if start > cur:
                sf.problems.append(
                    f"bytes {cur}..{start - 1} are missing from the store (no segment holds them)"
                )
                break
            data = await fetch(first)
            if len(data) != end - start:
                sf.problems.append(f"segment {start}-{end} holds {len(data)} bytes")
                break
            if start < cur:
                # Segments that overlap (an upload resumed after a restart) must agree on the
                # bytes they share: one that does not is a second story of the same bytes,
                # whichever of the two is used.
                upto = min(end, cur)
                out.seek(start)
                if out.read(upto - start) != data[: upto - start]:
                    sf.problems.append(
                        f"tampering attempt: segment {start}-{end} disagrees with the segments "
                        f"before it on bytes {start}..{upto - 1}"
                    )
                out.seek(cur)
            if end <= cur:
                continue  # covered by a longer segment already
            out.write(data[cur - start :])
            sf.segments += 1
            cur = end
    os.chmod(tmp, 0o440)  # read-only: the verifier treats it as a finished file, not a live one
    os.replace(tmp, path)
    sf.path, sf.size = path, cur
    cache.parent.mkdir(parents=True, exist_ok=True)
    if not sf.problems:
        cache.write_text(json.dumps(manifest))


def _intact(path: Path, items: list) -> bool:
    """The cached rebuild still holds, segment by segment, what the store lists (its MD5
    ETags): a copy altered on disk since the last pull is rebuilt from the store."""
    with open(path, "rb") as f:
        for start, end, first, _ in items:
            f.seek(start)
            if not _same_as_listed(f.read(end - start), first):
                return False
        return f.seek(0, 2) == max(end for _, end, _, _ in items)


def cache_dir(cfg: StoreConfig) -> Path:
    """Where reading commands keep their copy of ``cfg``'s store (per user, mode 0700):
    ``$XDG_CACHE_HOME/breakglass/store/BUCKET-HASH`` (the hash names endpoint and prefix)."""
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    tag = hashlib.sha256(f"{cfg.endpoint_url}|{cfg.bucket}|{cfg.prefix}".encode()).hexdigest()
    path = root / "breakglass" / "store" / f"{cfg.bucket}-{tag[:16]}"
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def pull_sync(cfg: StoreConfig, dest: Path, **kw: Any) -> PullResult:
    """:func:`pull` for synchronous callers (the CLI)."""
    return asyncio.run(pull(cfg, dest, **kw))
