"""The audit log: grants, approvals, sessions, denials, kills, revocations, reviews.

Several processes append at once (the gateway, the grant service, the ``breakglass`` CLI, ...),
and one file with one hash chain cannot take concurrent writers without a cross-process lock on
the hot path. So the log is a set of *segments*: recordings in the ordinary format
(docs/recording-format.md) whose header has ``"log": "audit"`` and whose events have kind
``"audit"`` and a ``type`` field. :func:`read_audit` merges all segments by time.

Segments are chained per **writer**, a stable identity (``host/role``, e.g.
``db-gw1/gateway-prod-w0``, ``db-gw1/service``, ``db-gw1/cli``): each segment's header names
the writer, its ``segment_seq`` (0, 1, 2, ... per writer, across restarts) and its predecessor
(``previous_segment``, ``previous_hash`` = SHA-256 of the predecessor's last line,
``previous_events`` = its line count). So a deleted, truncated, replaced or reordered segment is
found by :func:`verify_audit` and named.

Two ways of writing:

* **streaming** (gateway, service): one long-lived :class:`AuditLog` that appends through a
  :class:`RecordingWriter` (group commit, never blocks on the disk) and rotates after
  ``rotate_events`` events or ``rotate_seconds``. While it writes it holds an exclusive
  ``flock`` on its segment, which is how :func:`verify_audit` tells a live segment from one
  whose writer died.
* **shared** (the CLI): short runs take turns on one chain per host under a lock file,
  continuing the open segment (read its tail, continue from its last hash) and ending every run
  with a signed checkpoint, so nothing is left unsigned between runs; the segment rotates by
  events, size or age. An hour of CLI use is one file, not sixty.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import secrets
import socket
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from . import format as fmt
from .format import RecorderError
from .reader import read_events
from .verify import VerifyResult, verify_recording
from .writer import RecordingWriter

__all__ = [
    "AuditLog",
    "read_audit",
    "verify_audit",
    "segments",
    "segment_live",
    "SEGMENT_SUFFIX",
    "CLI_WRITER",
]

SEGMENT_SUFFIX = ".audit"
CLI_WRITER = "cli"
_USER_FIELDS = ("actor", "subject", "user")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
_LIVE_MODE = 0o640
_FINAL_MODE = 0o440


def _host() -> str:
    return socket.gethostname() or "localhost"


def _segment_name() -> str:
    stamp = time.strftime("%Y-%m-%dT%H-%M-%SZ", time.gmtime())
    return f"{stamp}-{os.getpid()}-{secrets.token_hex(4)}{SEGMENT_SUFFIX}"


def _lock_path(directory: Path, writer: str) -> Path:
    return directory / f".{_UNSAFE.sub('_', writer)}.lock"


def _try_flock(fd: int, mode: int = fcntl.LOCK_EX) -> bool:
    try:
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def segment_live(path: Path) -> bool:
    """True if a running writer holds the segment (its exclusive ``flock``). Local host only."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        return not _try_flock(fd, fcntl.LOCK_SH)
    finally:
        os.close(fd)  # closing drops our probe lock, if we got it


@dataclass
class _Tail:
    """What the end of a segment file looks like (no verification)."""

    events: int = 0  # complete lines
    last_hash: str = fmt.ZERO_HASH  # of the last complete line
    last_t: float = 0.0
    last_kind: str | None = None
    torn: bool = False  # bytes after the last complete line
    header: dict[str, Any] | None = None
    size: int = 0


def _read_tail(path: Path) -> _Tail:
    tail = _Tail()
    with open(path, "rb") as f:
        framed = False
        while raw := f.readline():
            if not raw.endswith(b"\n"):
                tail.torn = True
                break
            try:
                obj = json.loads(raw)
            except ValueError:
                tail.torn = True
                break
            if not isinstance(obj, dict):
                tail.torn = True
                break
            if tail.events == 0:
                tail.header = obj
                framed = obj.get("format") != fmt.FORMAT_V1
            if framed and fmt.RAW_LEN in obj:
                try:
                    size = fmt.frame_length(obj) or 0
                except ValueError:
                    tail.torn = True
                    break
                if len(f.read(size)) < size:
                    tail.torn = True
                    break
            tail.events += 1
            tail.last_hash = hashlib.sha256(raw).hexdigest()
            tail.last_kind = obj.get("kind")
            if isinstance(obj.get("t"), int | float):
                tail.last_t = float(obj["t"])
        tail.size = f.tell()
    return tail


def _first_line(path: Path) -> dict[str, Any] | None:
    try:
        with open(path, "rb") as f:
            obj = json.loads(f.readline(1 << 20))
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def _chain_head(directory: Path, writer: str) -> tuple[Path, dict[str, Any]] | None:
    """The newest segment (highest ``segment_seq``) of ``writer`` in ``directory``."""
    best: tuple[int, Path, dict[str, Any]] | None = None
    for seg in segments(directory):
        h = _first_line(seg)
        if h is None or h.get("writer") != writer:
            continue
        n = h.get("segment_seq")
        if isinstance(n, int) and (best is None or n > best[0]):
            best = (n, seg, h)
    return None if best is None else (best[1], best[2])


@dataclass
class _Link:
    """How a new segment names its predecessor."""

    segment: str
    hash: str
    events: int
    segment_seq: int

    def header(self) -> dict[str, Any]:
        return {
            "segment_seq": self.segment_seq + 1,
            "previous_segment": self.segment,
            "previous_hash": self.hash,
            "previous_events": self.events,
        }


def _link_to(path: Path, header: dict[str, Any]) -> _Link:
    tail = _read_tail(path)
    return _Link(path.name, tail.last_hash, tail.events, int(header.get("segment_seq", 0)))


def _base_header(writer: str, run: str) -> dict[str, Any]:
    return {"log": "audit", "pid": os.getpid(), "host": _host(), "writer": writer, "run": run}


class AuditLog:
    """Append-only audit log writer. Thread-safe.

    ``writer``: the role of this process (``"gateway-NAME-w0"``, ``"service"``, ``"cli"``); the
    chain is per ``host/writer``. None: a chain of its own for this instance only.
    ``shared``: take turns with other processes of the same writer (the CLI), see the module
    docstring. ``writer_kwargs`` go to ``RecordingWriter.create`` (streaming only).
    """

    def __init__(
        self,
        directory: Path,
        signing_key: Ed25519PrivateKey,
        key_id: str,
        *,
        writer: str | None = None,
        shared: bool = False,
        rotate_events: int = 100_000,
        rotate_seconds: float = 3600.0,
        rotate_bytes: int = 16 << 20,
        **writer_kwargs: Any,
    ) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(mode=0o750, parents=True, exist_ok=True)
        self._key = signing_key
        self._key_id = key_id
        self._writer_kwargs = writer_kwargs
        self._rotate_events = rotate_events
        self._rotate_seconds = rotate_seconds
        self._rotate_bytes = rotate_bytes
        self._lock = threading.Lock()
        self._closed = False
        self.run = secrets.token_hex(8)
        self._identity_fd = -1
        self._segment_fd = -1
        self._shared: _SharedChain | None = None
        self._writer: RecordingWriter | None = None
        if writer is None:
            self.writer = f"{_host()}/pid{os.getpid()}-{self.run}"
        else:
            self.writer = f"{_host()}/{writer}"
        if shared:
            self._shared = _SharedChain(self)
            return
        link: _Link | None = None
        if writer is not None:
            self._claim_identity()
            if self._identity_fd >= 0:
                link = _missing_head(self.directory, _read_state(self._identity_fd))
            if link is None:
                head = _chain_head(self.directory, self.writer)
                link = _link_to(*head) if head is not None else None
        self._writer = self._new_segment(link)

    def _claim_identity(self) -> None:
        """Hold ``host/writer`` for this process; if another live process holds it (two
        gateways with one name on one host), write a chain of our own instead of forking."""
        fd = os.open(
            _lock_path(self.directory, self.writer), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640
        )
        if _try_flock(fd):
            self._identity_fd = fd
            return
        os.close(fd)
        self.writer = f"{self.writer}/pid{os.getpid()}-{self.run}"

    @property
    def path(self) -> Path:
        """The current segment file."""
        if self._shared is not None:
            return self._shared.path
        assert self._writer is not None
        return self._writer.path

    @property
    def failed(self) -> Exception | None:
        return None if self._writer is None else self._writer.failed

    def _new_segment(self, link: _Link | None) -> RecordingWriter:
        header = _base_header(self.writer, self.run)
        header.update(link.header() if link is not None else {"segment_seq": 0})
        w = RecordingWriter.create(
            self.directory / _segment_name(),
            header,
            self._key,
            self._key_id,
            **self._writer_kwargs,
        )
        self._segment_seq = header["segment_seq"]
        self._hold(w.path)
        if self._identity_fd >= 0:
            with contextlib.suppress(OSError):
                _write_state(
                    self._identity_fd, {"segment": w.path.name, "segment_seq": self._segment_seq}
                )
        self._started = time.monotonic()
        return w

    def _hold(self, path: Path) -> None:
        """Lock the segment being written: verify reads the lock as "its writer is alive"."""
        if self._segment_fd >= 0:
            os.close(self._segment_fd)
            self._segment_fd = -1
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return
        if _try_flock(fd):
            self._segment_fd = fd
        else:
            os.close(fd)

    def append(self, type: str, **fields: Any) -> None:  # noqa: A002 - the contract's name
        """Record one audit event, e.g. ``append("grant.issued", actor=..., jti=...)``."""
        if not isinstance(type, str) or not type:
            raise fmt.RecorderFieldError("audit event type must be a non-empty string")
        with self._lock:
            if self._closed:
                raise RecorderError("audit log is closed")
            if self._shared is not None:
                self._shared.append(fmt.encode_fields({"type": type, **fields}))
                return
            w = self._writer
            assert w is not None
            if (
                w.event_count >= self._rotate_events
                or time.monotonic() - self._started >= self._rotate_seconds
            ):
                w.close("rotated")
                link = _Link(w.path.name, w.last_hash, w.event_count, self._segment_seq)
                w = self._writer = self._new_segment(link)
            w.event(fmt.AUDIT, type=type, **fields)

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        """Finalize the current segment (streaming) and let go of the chain. Idempotent."""
        with self._lock:
            self._closed = True
            try:
                if self._writer is not None:
                    self._writer.close("closed")
            finally:
                for attr in ("_segment_fd", "_identity_fd"):
                    fd = getattr(self, attr)
                    if fd >= 0:
                        os.close(fd)
                        setattr(self, attr, -1)

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _SharedChain:
    """One chain per host for short-lived processes, appended to in turns under a lock file.

    The lock file also remembers where the chain ended (segment, line count, last hash). A
    process that finds the open segment different from that (cut back, or rewritten) does not
    continue it: it starts a new segment naming what the chain really ended with, so
    :func:`verify_audit` reports the old one as truncated or altered.
    """

    def __init__(self, log: AuditLog) -> None:
        self.log = log
        self.path = Path()
        self._seg_seq = 0
        self._lock_file = _lock_path(log.directory, log.writer)
        try:  # fail at open, as a streaming writer does, if the directory cannot be written
            os.close(os.open(self._lock_file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640))
        except OSError as exc:
            raise RecorderError(f"cannot write the audit log in {log.directory}: {exc}") from exc

    def append(self, fields: bytes) -> None:
        try:
            fd = os.open(self._lock_file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
        except OSError as exc:
            raise RecorderError(f"cannot write the audit log: {exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            state = _read_state(fd)
            self._append_locked(fd, state, fields)
        except OSError as exc:
            raise RecorderError(f"cannot write the audit log: {exc}") from exc
        finally:
            os.close(fd)

    def _append_locked(self, lock_fd: int, state: dict[str, Any], fields: bytes) -> None:
        log = self.log
        gone = _missing_head(log.directory, state)
        if gone is not None:  # the chain's newest segment was deleted: keep naming it
            self._create(gone, fields, lock_fd)
            return
        link: _Link | None = None
        head = self._head(state)
        if head is not None:
            path, header = head
            tail = _read_tail(path)
            expected = (state.get("events"), state.get("hash"))
            recorded = state.get("segment") == path.name
            seg_seq = int(header.get("segment_seq", 0))
            if recorded and expected != (tail.events, tail.last_hash):
                # not what this chain left behind: never sign over it; name what it was
                link = _Link(
                    path.name, str(state.get("hash")), int(state.get("events") or 0), seg_seq
                )
            elif (
                tail.torn
                or tail.last_kind != fmt.CHECKPOINT
                or not os.stat(path).st_mode & stat.S_IWUSR
            ):
                link = _Link(path.name, tail.last_hash, tail.events, seg_seq)
            elif (
                tail.events >= log._rotate_events
                or tail.size >= log._rotate_bytes
                or time.time() - float((tail.header or {}).get("t", 0)) >= log._rotate_seconds
            ):
                last = self._finalize(path, tail)
                link = _Link(path.name, last, tail.events + 2, seg_seq)
            else:
                self.path = path
                self._seg_seq = seg_seq
                self._write(path, tail.events, tail.last_hash, tail.last_t, [fields], lock_fd)
                return
        self._create(link, fields, lock_fd)

    def _head(self, state: dict[str, Any]) -> tuple[Path, dict[str, Any]] | None:
        name = state.get("segment")
        if isinstance(name, str) and "/" not in name:
            path = self.log.directory / name
            header = _first_line(path)
            if header is not None and header.get("writer") == self.log.writer:
                return path, header
        return _chain_head(self.log.directory, self.log.writer)

    def _lines(
        self, seq: int, prev: str, t: float, items: list[tuple[str, bytes]], sign: str | None
    ) -> tuple[bytes, int, str]:
        out = b""
        for kind, fields in items:
            sep = b"," if fields else b""
            line = b'{"seq":%d,"t":%.6f,"kind":%s,"prev":"%s"%s%s}\n' % (
                seq,
                t,
                fmt.encode_str(kind),
                prev.encode(),
                sep,
                fields,
            )
            out += line
            prev, seq = hashlib.sha256(line).hexdigest(), seq + 1
        if sign is not None:
            sig = self.log._key.sign(fmt.signed_message(sign, seq, prev)).hex()
            key_id = fmt.encode_str(self.log._key_id)
            if sign == fmt.TRAILER:
                line = b'{"seq":%d,"kind":"trailer","prev":"%s","key_id":%s,"sig":"%s"}\n' % (
                    seq,
                    prev.encode(),
                    key_id,
                    sig.encode(),
                )
            else:
                line = b'{"seq":%d,"t":%.6f,"kind":"%s","prev":"%s","key_id":%s,"sig":"%s"}\n' % (
                    seq,
                    t,
                    sign.encode(),
                    prev.encode(),
                    key_id,
                    sig.encode(),
                )
            out += line
            prev, seq = hashlib.sha256(line).hexdigest(), seq + 1
        return out, seq, prev

    def _write(
        self,
        path: Path,
        seq: int,
        prev: str,
        last_t: float,
        events: list[bytes],
        lock_fd: int,
        *,
        create: bool = False,
        header: bytes = b"",
    ) -> None:
        t = max(time.time(), last_t)
        data = b""
        if create:
            data, seq, prev = self._lines(
                0, fmt.ZERO_HASH, t, [(fmt.HEADER, header)], fmt.CHECKPOINT
            )
        more, seq, prev = self._lines(
            seq, prev, t, [(fmt.AUDIT, e) for e in events], fmt.CHECKPOINT
        )
        data += more
        flags = os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC
        if create:
            flags |= os.O_CREAT | os.O_EXCL
        try:
            fd = os.open(path, flags, _LIVE_MODE)
        except OSError as exc:
            raise RecorderError(f"cannot write audit segment {path}: {exc}") from exc
        try:
            _write_all(fd, data)
            os.fsync(fd)
        except OSError as exc:
            raise RecorderError(f"cannot write audit segment {path}: {exc}") from exc
        finally:
            os.close(fd)
        if create:
            with contextlib.suppress(OSError):
                dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
                try:
                    os.fsync(dfd)
                finally:
                    os.close(dfd)
        _write_state(
            lock_fd,
            {"segment": path.name, "events": seq, "hash": prev, "segment_seq": self._seg_seq},
        )

    def _create(self, link: _Link | None, fields: bytes, lock_fd: int) -> None:
        log = self.log
        header = {
            "format": fmt.FORMAT,
            "recording_id": secrets.token_hex(16),
            "key_id": log._key_id,
            **_base_header(log.writer, log.run),
            "shared": True,
            **(link.header() if link is not None else {"segment_seq": 0}),
        }
        path = log.directory / _segment_name()
        self.path = path
        self._seg_seq = header["segment_seq"]
        self._write(
            path,
            0,
            fmt.ZERO_HASH,
            0.0,
            [fields],
            lock_fd,
            create=True,
            header=fmt.encode_fields(header),
        )

    def _finalize(self, path: Path, tail: _Tail) -> str:
        """Close a full segment: ``end`` + signed trailer, read-only. Returns the last hash."""
        t = max(time.time(), tail.last_t)
        sep_fields = fmt.encode_fields({"reason": "rotated"})
        data, _seq, prev = self._lines(
            tail.events, tail.last_hash, t, [(fmt.END, sep_fields)], fmt.TRAILER
        )
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        try:
            _write_all(fd, data)
            os.fchmod(fd, _FINAL_MODE)
            os.fsync(fd)
        except OSError as exc:
            raise RecorderError(f"cannot finalize audit segment {path}: {exc}") from exc
        finally:
            os.close(fd)
        return prev


def _read_state(fd: int) -> dict[str, Any]:
    os.lseek(fd, 0, os.SEEK_SET)
    data = os.read(fd, 65536)
    try:
        state = json.loads(data) if data else {}
    except ValueError:
        state = {}
    return state if isinstance(state, dict) else {}


def _missing_head(directory: Path, state: dict[str, Any]) -> _Link | None:
    """The lock file names the chain's newest segment, and it is gone: the next segment names
    it as its predecessor (so ``verify_audit`` reports it removed) rather than quietly
    continuing from an older one."""
    name = state.get("segment")
    if not isinstance(name, str) or "/" in name or not name or (directory / name).exists():
        return None
    seq = state.get("segment_seq")
    events = state.get("events")
    return _Link(
        name,
        str(state.get("hash") or ""),
        events if isinstance(events, int) else 0,
        seq if isinstance(seq, int) else 0,
    )


def _write_state(fd: int, state: dict[str, Any]) -> None:
    """Where a writer's chain ends, in its lock file (``verify_audit`` reads it)."""
    data = json.dumps(state, sort_keys=True).encode() + b"\n"
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def segments(directory: Path) -> list[Path]:
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if p.name.endswith(SEGMENT_SUFFIX))


def _type_matches(want: str, got: Any) -> bool:
    if not isinstance(got, str):
        return False
    if want.endswith("."):
        return got.startswith(want)
    return got == want


def read_audit(
    directory: Path,
    *,
    since: float | None = None,
    user: str | None = None,
    type: str | None = None,  # noqa: A002 - the contract's name
) -> list[dict[str, Any]]:
    """All audit events of all segments in ``directory``, merged by time, filtered.

    Each is a dict with ``t``, ``type`` and the event's fields, plus ``segment`` (file name) and
    ``seq``. ``since``: ``t >= since``. ``user``: equals one of ``actor``/``subject``/``user``.
    ``type``: exact, or a prefix when it ends with ``.`` (``"grant."``). Does not verify; use
    :func:`verify_audit` for that. Events still in another process's memory buffer (at most its
    commit interval) are not seen yet.
    """
    out: list[dict[str, Any]] = []
    for seg in segments(directory):
        events: list[dict[str, Any]] = []
        try:
            for ev in read_events(seg):
                events.append(ev)
        except (OSError, RecorderError):
            pass  # keep what decoded before the damage; verify_audit reports the segment
        for ev in events:
            if ev.get("kind") != fmt.AUDIT:
                continue
            if since is not None and ev["t"] < since:
                continue
            if type is not None and not _type_matches(type, ev.get("type")):
                continue
            if user is not None and not any(ev.get(k) == user for k in _USER_FIELDS):
                continue
            item = {k: v for k, v in ev.items() if k not in ("kind", "prev")}
            item["segment"] = seg.name
            out.append(item)
    out.sort(key=lambda e: (e["t"], e["segment"], e["seq"]))
    return out


def _fail(r: VerifyResult, problem: str, message: str) -> None:
    r.ok = False
    r.problem = problem
    r.message = message
    r.status = "tampered"


def verify_audit(
    directory: Path, trusted_keys: dict[str, Ed25519PublicKey]
) -> list[tuple[Path, VerifyResult]]:
    """Verify every segment, and every writer's chain of segments.

    Each result has a ``status`` (see :mod:`recorder.verify`): a segment held by a running
    writer is ``live``; a shared (CLI) segment between runs whose every event is signed is
    ``open``; one whose writer died is ``unfinalized``, or ``crashed`` once the writer's next
    segment has vouched for its lines (``previous_hash``/``previous_events``). Chain problems:
    a predecessor that is gone gets an extra entry for its path with problem ``removed``; one
    shorter than its successor says is ``truncated``; one with other contents is ``altered``;
    a predecessor that is not the writer's previous segment is ``reordered``; the newest
    segment named by a writer's lock file but gone is ``removed``. Limits: the newest segment of
    a writer can be deleted undetected by anyone who also rewrites the writer's lock file;
    ``breakglass verify`` cross-checks sessions against recordings (docs/recording-format.md).
    """
    directory = Path(directory)
    results = [(seg, verify_recording(seg, trusted_keys)) for seg in segments(directory)]
    by_name = {seg.name: (seg, r) for seg, r in results}
    extra: list[tuple[Path, VerifyResult]] = []
    for seg, r in results:
        if r.status == "unfinalized":
            _live_status(seg, r)
    for seg, r in results:
        h = r.header or {}
        prev_name = h.get("previous_segment")
        if not isinstance(prev_name, str):
            continue
        prev_path = directory / prev_name
        found = by_name.get(prev_name)
        writer = h.get("writer")
        if found is None:
            gone = VerifyResult(path=prev_path, ok=False)
            _fail(
                gone,
                "removed",
                f"segment {prev_name} is missing: {seg.name} names it as its predecessor"
                + (
                    f" (segment {h.get('segment_seq', 1) - 1} of writer {writer})" if writer else ""
                ),
            )
            extra.append((prev_path, gone))
            continue
        _, prev = found
        ph = prev.header or {}
        if writer is not None and (
            ph.get("writer") != writer or ph.get("segment_seq") != h.get("segment_seq", 0) - 1
        ):
            _fail(
                r,
                "reordered",
                f"segment {seg.name} (segment {h.get('segment_seq')} of writer {writer}) names "
                f"{prev_name} as its predecessor, but that is segment {ph.get('segment_seq')} of "
                f"writer {ph.get('writer')}",
            )
            continue
        tail = _read_tail(prev_path)
        want_events = h.get("previous_events")
        if tail.last_hash == h.get("previous_hash") and want_events in (None, tail.events):
            if prev.status == "unfinalized":
                prev.status = "crashed"
                prev.message = (
                    f"writer died without finalizing it; {seg.name} continues the chain and "
                    f"vouches for its {tail.events} lines; " + prev.message
                )
            continue
        if isinstance(want_events, int) and tail.events < want_events:
            _fail(
                prev,
                "truncated",
                f"segment {prev_name} truncated: {seg.name} says it ended with {want_events} "
                f"lines, it has {tail.events}",
            )
        else:
            _fail(
                prev,
                "altered",
                f"segment {prev_name} is not the one {seg.name} follows (its final hash differs)",
            )
    for lock in sorted(directory.glob(".*.lock")):
        try:
            state = json.loads(lock.read_bytes() or b"{}")
        except (OSError, ValueError):
            continue
        name = state.get("segment") if isinstance(state, dict) else None
        if isinstance(name, str) and "/" not in name and name not in by_name:
            gone = VerifyResult(path=directory / name, ok=False)
            _fail(
                gone,
                "removed",
                f"segment {name} is missing: the writer's lock file {lock.name} names it as "
                f"the newest segment of its chain",
            )
            extra.append((directory / name, gone))
    return results + extra


def _live_status(seg: Path, r: VerifyResult) -> None:
    """Refine a segment with no trailer: held by a running writer, or an open shared one."""
    where = f"checkpoint {r.checkpoints}, event {r.last_checkpoint}"
    if segment_live(seg):
        r.status = "live"
        r.message = f"live (verified through {where})"
        return
    h = r.header or {}
    tail = _read_tail(seg)
    if h.get("shared") is True and not tail.torn and r.last_checkpoint == r.events - 1:
        r.status = "open"
        r.message = f"open (shared segment between appends; every event signed, through {where})"
        return
    r.message = (
        "not finalized: no process on this host holds it (its writer died, or this is a "
        "copy or another host's segment); " + r.message
    )


def _last_line_hash(path: Path) -> str | None:
    t = _read_tail(path)
    return t.last_hash if t.events else None
