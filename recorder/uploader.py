"""Stream recordings and audit segments to the object store while they are written.

The local files are the spool: the writer appends to them (write before forward) and knows
nothing of the store. This uploader, a task in the gateway's event loop, follows the files as
they grow and, for each one:

* finds line and raw-frame boundaries (the format's rules, :mod:`recorder.format`) and the
  signed lines (checkpoints, the trailer);
* *anchors* the newest signed head off-host at most every ``anchor_interval`` (and the
  trailer at once): a small object holding its sequence number and the SHA-256 of the line;
* uploads the bytes up to the newest signed line as one segment object once it has waited
  ``upload_lag`` (the trailer closes the file at once), each object written once with its
  Object Lock retention in the same request.

Progress is kept in ``<dir>/.store/<file>.json`` (fsynced after each upload), so pending
uploads resume after a restart; a per-file ``flock`` makes several gateway processes sharing
a directory upload each file once. When the store is slow or down, sessions go on against
the spool; when the spool (bytes not yet uploaded) passes ``spool_limit``, :meth:`spool_full`
turns true: the gateway refuses new sessions and ends running ones.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import os
import re
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from . import format as fmt
from .format import RecorderError
from .store import ANCHORS, AREA_OF_SUFFIX, StoreConfig, StoreError, error_code, open_client

__all__ = ["Uploader", "Head", "scan_file", "STATE_DIR"]

log = structlog.get_logger(__name__)

STATE_DIR = ".store"
#: How far one scan reads ahead.
SEGMENT_MAX = 64 << 20
#: Bulk output does not wait out the lag: once this much is signed and waiting, it goes up, and
#: a segment is cut at the last signed line within this many bytes (a single checkpoint
#: interval larger than this still makes one segment).
SEGMENT_EARLY = 8 << 20
_SIGNED = re.compile(
    rb'\{"seq":(\d+),(?:"t":[-+0-9.eE]+,)?"kind":"(checkpoint|trailer)","prev":"([0-9a-f]{64})"'
)


@dataclass(frozen=True)
class Head:
    """A signed line (checkpoint or trailer): what an anchor records."""

    seq: int
    kind: str
    prev: str
    line_sha256: str
    end: int  # file offset just after the line
    key_id: str = ""

    def anchor(self, file: str, area: str, recording_id: str | None) -> dict[str, Any]:
        return {
            "file": file,
            "area": area,
            "recording_id": recording_id,
            "seq": self.seq,
            "kind": self.kind,
            "prev": self.prev,
            "line_sha256": self.line_sha256,
            "end": self.end,
            "key_id": self.key_id,
            "anchored_at": time.time(),
        }


@dataclass
class _Scan:
    """Where an incremental scan of a file stands: next line at ``offset`` has seq ``seq``."""

    offset: int = 0
    seq: int = 0
    framed: bool | None = None  # None until the header was read
    recording_id: str | None = None


def scan_file(f: Any, scan: _Scan, size: int, limit: int = SEGMENT_MAX) -> list[Head]:
    """Advance ``scan`` over the complete lines (and frames) of ``f`` up to ``size`` bytes,
    reading at most about ``limit`` bytes; return the signed lines found. Stops before a torn
    line or frame (the writer is still writing it). ``RecorderError`` on a line that breaks
    the format (the uploader then stops following that file)."""
    heads: list[Head] = []
    f.seek(scan.offset)
    start = scan.offset
    while scan.offset < size and scan.offset - start < limit:
        line = f.readline()
        if not line.endswith(b"\n") or scan.offset + len(line) > size:
            break
        end = scan.offset + len(line)
        if scan.seq == 0:
            try:
                obj = json.loads(line)
            except ValueError:
                raise RecorderError("header is not valid JSON") from None
            if not isinstance(obj, dict) or obj.get("format") not in fmt.FORMATS:
                raise RecorderError("not a recording (bad header)")
            scan.framed = obj["format"] != fmt.FORMAT_V1
            rid = obj.get("recording_id")
            scan.recording_id = rid if isinstance(rid, str) else None
        elif scan.framed and b'"raw_len":' in line:
            try:
                n = fmt.frame_length(json.loads(line))
            except ValueError as e:
                raise RecorderError(f"event {scan.seq}: {e}") from None
            if n:
                if end + n > size:
                    break  # the frame is not all there yet
                f.seek(n, os.SEEK_CUR)
                end += n
        m = _SIGNED.match(line)
        if m is not None and int(m.group(1)) == scan.seq:
            key_id = ""
            with contextlib.suppress(ValueError, AttributeError):
                key_id = str(json.loads(line).get("key_id", ""))
            heads.append(
                Head(
                    seq=scan.seq,
                    kind=m.group(2).decode(),
                    prev=m.group(3).decode(),
                    line_sha256=hashlib.sha256(line).hexdigest(),
                    end=end,
                    key_id=key_id,
                )
            )
        scan.offset = end
        scan.seq += 1
    return heads


@dataclass
class _File:
    path: Path
    area: str
    state_path: Path
    lock_fd: int
    uploaded: int = 0
    uploaded_seq: int = 0
    anchored: int = -1
    scan: _Scan = field(default_factory=_Scan)
    heads: list[Head] = field(default_factory=list)  # signed lines past `uploaded`
    pending_since: float | None = None
    last_anchor: float = 0.0
    retry_at: float = 0.0
    failures: int = 0
    size: int = 0
    task: asyncio.Task | None = None
    done: bool = False
    broken: str | None = None

    @property
    def name(self) -> str:
        return self.path.name

    def state(self) -> dict[str, Any]:
        return {
            "uploaded": self.uploaded,
            "seq": self.uploaded_seq,
            "anchored": self.anchored,
            "framed": self.scan.framed,
            "recording_id": self.scan.recording_id,
            "done": self.done,
        }


class Uploader:
    """Follows ``directories`` (``(path, suffix)`` pairs, e.g. the recordings directory with
    ``.rec`` and the audit directory with ``.audit``) and streams their files to the store.

    ``on_event(type, **fields)`` receives store events worth an audit entry (spool full,
    spool file lost, uploads failing); ``on_spool_full()`` is called when the spool passes
    its limit (the gateway ends running sessions)."""

    def __init__(
        self,
        cfg: StoreConfig,
        directories: list[tuple[Path, str]],
        *,
        on_event: Callable[..., None] | None = None,
        on_spool_full: Callable[[], Any] | None = None,
        poll: float | None = None,
    ) -> None:
        self.cfg = cfg
        self.directories = [(Path(d), s) for d, s in directories]
        self.on_event = on_event
        self.on_spool_full = on_spool_full
        self.poll = poll if poll is not None else max(0.05, min(1.0, cfg.upload_lag / 5))
        self.files: dict[Path, _File] = {}
        self.finished: set[Path] = set()
        self.spool_bytes = 0
        self._full = False
        self._stopping = False
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._client: Any = None
        self._sem = asyncio.Semaphore(8)
        self.uploads = 0  # segment objects written (for tests, benchmarks and metrics)
        self.uploaded_bytes = 0
        self.anchors = 0  # anchor objects written
        self.failures = 0  # upload attempts that failed (store down, refusing, timing out)
        self.last_upload: float | None = None  # wall clock of the last object written
        self.max_lag = 0.0  # longest wait of data for its upload, seconds
        self.lags: collections.deque[float] = collections.deque(maxlen=10_000)

    # ------------------------------------------------------------------ public

    def spool_full(self) -> bool:
        """True while the bytes waiting for the store exceed ``spool_limit``: no new session."""
        return self._full

    def check_spool(self) -> None:
        """Raise ``RecorderError`` with a clear message when the spool is full."""
        if self._full:
            raise RecorderError(
                f"recording store {self.cfg.url} is not keeping up: {self.spool_bytes} bytes "
                f"wait for upload (spool limit {self.cfg.spool_limit}); new sessions refused"
            )

    def guard(self, make_recorder: Callable[..., Any]) -> Callable[..., Any]:
        """Wrap a recorder factory so that no session starts while the spool is full."""

        def make(*args: Any, **kwargs: Any) -> Any:
            self.check_spool()
            return make_recorder(*args, **kwargs)

        return make

    async def start(self) -> Uploader:
        """Open the client and start following the directories (a task in this loop)."""
        self._cm = open_client(self.cfg)
        self._client = await self._cm.__aenter__()
        self._task = asyncio.ensure_future(self._run())
        return self

    async def probe(self, gateway: str) -> bool:
        """Record this gateway's start in the store (``gateways/NAME/...``, locked like the
        rest): proves the bucket, credentials and Object Lock work before any session. Raises
        ``StoreError`` when the store answers with a refusal (no such bucket, access denied,
        no Object Lock ...); returns False when it cannot be reached (sessions then spool)."""
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        key = self.cfg.key("gateways", gateway, f"{stamp}-{os.getpid()}-{os.urandom(4).hex()}")
        body = json.dumps(
            {
                "gateway": gateway,
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "started_at": time.time(),
            }
        ).encode()
        try:
            await asyncio.wait_for(self._put(key, body, "application/json"), self.cfg.timeout + 5)
        except Exception as e:  # noqa: BLE001
            code = error_code(e)
            if code:
                raise StoreError(
                    f"{self.cfg.url}: the store refuses a locked upload: {e}"
                ) from None
            log.warning("store.unreachable", url=self.cfg.url, error=str(e) or type(e).__name__)
            return False
        return True

    def stats(self) -> dict[str, float]:
        """What the gateway's metrics show: how far the store trails the spool."""
        now = time.monotonic()
        waiting = [f for f in list(self.files.values()) if f.size > f.uploaded]
        oldest = min(
            (f.pending_since for f in waiting if f.pending_since is not None), default=None
        )
        return {
            "lag": 0.0 if oldest is None else max(0.0, now - oldest),
            "pending_bytes": sum(f.size - f.uploaded for f in waiting),
            "pending_files": len(waiting),
            "broken_files": sum(1 for f in list(self.files.values()) if f.broken is not None),
            "spool_full": 1.0 if self._full else 0.0,
            "uploads": self.uploads,
            "uploaded_bytes": self.uploaded_bytes,
            "anchors": self.anchors,
            "failures": self.failures,
            "max_lag": self.max_lag,
            "last_upload": self.last_upload or 0.0,
        }

    def kick(self) -> None:
        """Run a pass now (tests, shutdown)."""
        self._wake.set()

    async def close(self, timeout: float = 10.0) -> None:
        """Upload what is pending (everything up to the last signed line, without waiting out
        the lag), bounded by ``timeout``; then stop. What is left resumes at the next start."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError, Exception):
                await asyncio.wait_for(asyncio.shield(self._task), timeout)
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        for f in list(self.files.values()):
            if f.task is not None and not f.task.done():
                f.task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await f.task
            self._release(f)
        if self._client is not None:
            with contextlib.suppress(Exception):
                await self._cm.__aexit__(None, None, None)
            self._client = None

    # ------------------------------------------------------------------ loop

    async def _run(self) -> None:
        while True:
            stopping = self._stopping
            try:
                await self._pass(force=stopping)
            except Exception as e:  # noqa: BLE001 - never let the uploader die
                log.error("store.pass_failed", error=str(e))
            if stopping:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll)
            self._wake.clear()

    async def _pass(self, force: bool = False) -> None:
        """Scan every file (local, quick), account the spool, then start an upload task for
        each file that has none running: a store that hangs never delays the spool check."""
        await asyncio.to_thread(self._discover)
        files = list(self.files.values())
        await asyncio.gather(*(self._follow(f) for f in files))
        self._account()
        if force:  # shutting down: let running uploads finish, then ship the rest at once
            await asyncio.gather(
                *(f.task for f in files if f.task is not None), return_exceptions=True
            )
        now = time.monotonic()
        for f in files:
            if f.broken is None and f.path in self.files and (f.task is None or f.task.done()):
                if force or now >= f.retry_at:
                    f.task = asyncio.ensure_future(self._ship(f, force))
        if force:
            await asyncio.gather(
                *(f.task for f in files if f.task is not None), return_exceptions=True
            )

    def _discover(self) -> None:
        for directory, suffix in self.directories:
            try:
                names = [p for p in directory.iterdir() if p.name.endswith(suffix)]
            except OSError:
                continue
            for p in names:
                if p in self.files or p in self.finished or not p.is_file():
                    continue
                f = self._track(p, AREA_OF_SUFFIX.get(suffix, suffix.strip(".")))
                if f is not None:
                    self.files[p] = f

    def _track(self, path: Path, area: str) -> _File | None:
        sdir = path.parent / STATE_DIR
        sdir.mkdir(mode=0o750, exist_ok=True)
        state_path = sdir / f"{path.name}.json"
        state: dict[str, Any] = {}
        with contextlib.suppress(OSError, ValueError):
            state = json.loads(state_path.read_text())
        if state.get("done"):
            self.finished.add(path)
            return None
        fd = os.open(sdir / f"{path.name}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # another gateway process follows it
            os.close(fd)
            return None
        with contextlib.suppress(OSError, ValueError):  # re-read under the lock
            state = json.loads(state_path.read_text())
        if state.get("done"):
            os.close(fd)
            self.finished.add(path)
            return None
        f = _File(path=path, area=area, state_path=state_path, lock_fd=fd)
        f.uploaded = int(state.get("uploaded", 0))
        f.uploaded_seq = int(state.get("seq", 0))
        f.anchored = int(state.get("anchored", -1))
        f.scan = _Scan(
            offset=f.uploaded,
            seq=f.uploaded_seq,
            framed=state.get("framed"),
            recording_id=state.get("recording_id"),
        )
        if f.uploaded:
            log.info("store.resume", file=path.name, uploaded=f.uploaded)
        # What is in the file already was written before we looked: it is due now. An empty
        # file (a session that just started) has nothing waiting: its bytes wait upload_lag.
        with contextlib.suppress(OSError):
            if path.stat().st_size > f.uploaded:
                f.pending_since = time.monotonic() - self.cfg.upload_lag
        return f

    def _release(self, f: _File) -> None:
        self.files.pop(f.path, None)
        if f.lock_fd >= 0:
            with contextlib.suppress(OSError):
                os.close(f.lock_fd)
            f.lock_fd = -1

    async def _follow(self, f: _File) -> None:
        if f.broken is not None:
            return
        now = time.monotonic()
        try:
            new = await asyncio.to_thread(self._scan, f)
        except FileNotFoundError:
            self._lost(f)
            return
        except _Shrunk as e:
            # The writer cut a failed write back off the file: forget what was scanned past
            # the upload point and read it again. Below the upload point it cannot be mended.
            if e.size >= f.uploaded:
                f.scan = _Scan(f.uploaded, f.uploaded_seq, f.scan.framed, f.scan.recording_id)
                f.heads = []
                return
            f.broken = f"shrank to {e.size} bytes below its uploaded {f.uploaded}"
            log.error("store.file_shrank", file=f.name, size=e.size, uploaded=f.uploaded)
            self._event("store.file_shrank", file=f.name, size=e.size, uploaded=f.uploaded)
            return
        except (OSError, RecorderError) as e:
            f.broken = str(e)
            log.error("store.file_unreadable", file=f.name, error=str(e))
            self._event("store.file_unreadable", file=f.name, error=str(e))
            return
        if new or f.scan.offset > f.uploaded:
            if f.pending_since is None:
                f.pending_since = now
        f.heads.extend(new)

    async def _ship(self, f: _File, force: bool) -> None:
        async with self._sem:
            now = time.monotonic()
            try:
                await self._anchor(f, now, force)
                await self._upload(f, now, force)
                f.failures = 0
            except Exception as e:  # noqa: BLE001 - the store is down or refusing: retry
                f.failures += 1
                self.failures += 1
                f.retry_at = time.monotonic() + min(10.0, 0.5 * 2**f.failures)
                code = error_code(e) or type(e).__name__
                log.warning("store.upload_failed", file=f.name, error=code, attempt=f.failures)
                if f.failures == 3:
                    self._event("store.upload_failing", file=f.name, error=code)

    def _scan(self, f: _File) -> list[Head]:
        with open(f.path, "rb") as fh:
            f.size = os.fstat(fh.fileno()).st_size
            if f.size < f.scan.offset:
                raise _Shrunk(f.size)
            return scan_file(fh, f.scan, f.size, limit=SEGMENT_MAX * 4)

    def _lost(self, f: _File) -> None:
        """The spool file is gone. Harmless once all of it was uploaded; otherwise say what
        was lost (verify names the gap too)."""
        if f.heads or f.scan.offset > f.uploaded or not f.done:
            log.error("store.spool_file_lost", file=f.name, uploaded=f.uploaded)
            self._event(
                "store.spool_file_lost", file=f.name, uploaded_bytes=f.uploaded, seq=f.uploaded_seq
            )
        self._release(f)
        self.finished.add(f.path)

    async def _anchor(self, f: _File, now: float, force: bool) -> None:
        fresh = [h for h in f.heads if h.seq > f.anchored]
        if not fresh:
            return
        head = fresh[-1]
        if (
            head.kind != fmt.TRAILER
            and not force
            and now - f.last_anchor < self.cfg.anchor_interval
        ):
            return
        body = json.dumps(head.anchor(f.name, f.area, f.scan.recording_id)).encode()
        key = self.cfg.key(ANCHORS, f.area, f.name, f"{head.seq:012d}")
        await self._put(key, body, "application/json")
        self.anchors += 1
        f.anchored = head.seq
        f.last_anchor = now

    async def _upload(self, f: _File, now: float, force: bool) -> None:
        if not f.heads:
            return
        last = f.heads[-1]
        due = (
            force
            or last.kind == fmt.TRAILER
            or (f.pending_since is not None and now - f.pending_since >= self._wait())
            or last.end - f.uploaded >= SEGMENT_EARLY
        )
        if not due:
            return
        cut = f.heads[0]
        for h in f.heads:  # segments of about SEGMENT_EARLY: a steady stream of modest PUTs
            if h.end - f.uploaded > SEGMENT_EARLY:
                break
            cut = h
        data = await asyncio.to_thread(_read_range, f.path, f.uploaded, cut.end)
        key = self.cfg.key(f.area, f.name, f"{f.uploaded:016d}-{cut.end:016d}")
        await self._put(key, data, "application/octet-stream")
        if f.pending_since is not None:  # how long the oldest of these bytes waited
            lag = time.monotonic() - f.pending_since
            self.max_lag = max(self.max_lag, lag)
            self.lags.append(lag)
        self.uploads += 1
        self.uploaded_bytes += len(data)
        self.last_upload = time.time()
        f.uploaded, f.uploaded_seq = cut.end, cut.seq + 1
        f.heads = [h for h in f.heads if h.end > cut.end]
        f.pending_since = now if (f.heads or f.scan.offset > f.uploaded) else None
        f.done = cut.kind == fmt.TRAILER
        await asyncio.to_thread(_write_state, f.state_path, f.state())
        if f.done:
            self._release(f)
            self.finished.add(f.path)
        elif f.heads:  # more than one segment's worth waiting: keep going
            await self._upload(f, now, True)

    def _wait(self) -> float:
        """How long data may wait before its segment goes up, so it is in the store within
        ``upload_lag`` (one poll to see it, one to upload it)."""
        return max(0.0, self.cfg.upload_lag - 2 * self.poll)

    async def _put(self, key: str, body: bytes, content_type: str) -> None:
        until = dt.datetime.now(dt.UTC) + dt.timedelta(days=self.cfg.retention_days)
        put = self._client.put_object(
            Bucket=self.cfg.bucket,
            Key=key,
            Body=body,
            ContentType=content_type,
            IfNoneMatch="*",
            ObjectLockMode=self.cfg.retention_mode,
            ObjectLockRetainUntilDate=until,
        )
        try:
            # A deadline of our own: the client's timeouts do not cover a server that accepts
            # the connection and then stops answering (it waits for "100 Continue" forever).
            await asyncio.wait_for(put, 2 * self.cfg.timeout + len(body) / (1 << 20))
        except Exception as e:
            if error_code(e) == "PreconditionFailed":
                return  # written before a restart lost our progress note: it is there
            raise

    def _account(self) -> None:
        total = 0
        for f in self.files.values():
            total += max(0, f.size - f.uploaded)
        self.spool_bytes = total
        full = total > self.cfg.spool_limit
        if full and not self._full:
            self._full = True
            log.error("store.spool_full", pending=total, limit=self.cfg.spool_limit)
            self._event("store.spool_full", pending_bytes=total, limit=self.cfg.spool_limit)
            if self.on_spool_full is not None:
                try:
                    res = self.on_spool_full()
                    if asyncio.iscoroutine(res):
                        asyncio.ensure_future(res)
                except Exception as e:  # noqa: BLE001
                    log.error("store.spool_full_callback_failed", error=str(e))
        elif not full and self._full:
            self._full = False
            log.info("store.spool_ok", pending=total)
            self._event("store.spool_ok", pending_bytes=total)

    def _event(self, type_: str, **fields: Any) -> None:
        if self.on_event is not None:
            with contextlib.suppress(Exception):
                self.on_event(type_, store=self.cfg.url, **fields)


class _Shrunk(Exception):
    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.size = size


def _read_range(path: Path, start: int, end: int) -> bytes:
    with open(path, "rb") as fh:
        fh.seek(start)
        data = fh.read(end - start)
    if len(data) != end - start:
        raise RecorderError(f"{path.name}: shorter than when it was scanned")
    return data


def _write_state(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as fh:
        json.dump(state, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
