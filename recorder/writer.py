"""The chained, signed, group-committed recording writer.

Write before forward
--------------------
* Appends (``input``/``output``/``resize``/``query``/``decision``/``event``) run on the caller's
  thread, take a short lock, build one line, chain it and put it in a memory buffer. They are
  thread-safe and never touch the disk.
* :meth:`write` hands everything appended so far to the kernel in one ``writev`` and raises
  ``RecorderError`` if it cannot. A relay appends the events of one socket read, calls
  ``write()`` once, and forwards only if it returned: so every byte a client or a target sees
  is in the recording file first, and a ``kill -9`` of the gateway loses nothing either side
  saw. A write that fails (ENOSPC, EIO, EROFS ...) is cut back off the file (``ftruncate`` to
  the last whole line), the chain is rolled back to what is in the file, and the writer is
  failed: nothing that could not be written is forwarded, and no torn line is left behind.
* The *committer* (``recorder/committer.py``: a few threads shared by every recording of the
  process) makes the writes durable: a file written to is fsynced at most ``commit_interval``
  later (group commit, within a recording and across recordings), so a host crash loses at most
  about ``commit_interval`` plus one fsync. It also writes what was appended but not yet
  written (events of code paths that do not forward anything) and signs a time-based
  checkpoint when a signed event would otherwise wait longer than ``checkpoint_interval``.
* Data payloads of ``raw_min`` bytes or more are written as raw frames after their line
  (format /2): hashed once, never base64-encoded or copied (the bytes object itself is
  buffered and handed to ``writev``). Smaller ones stay base64 inside their line.
* A checkpoint is signed inline by the append that makes ``checkpoint_events`` unsigned events,
  or that finds the oldest unsigned event older than ``checkpoint_interval``.
* After each fsync the committer tells the kernel to drop the synced pages from the page
  cache: a recording is written once and read rarely, so gigabytes of bulk output should not
  push useful data out of memory; and on virtual machines, reusing freed pages at once costs
  far less CPU than faulting in fresh ones (measured: kernel copy time 0.9-2.3 s per GiB
  without, a steady 0.4 with).
* ``finish()`` appends the end event and the signed trailer and writes them (no fsync), so an
  event loop can end a recording at the moment a session ends; ``flush()`` and ``close()`` are
  blocking (write + fsync); from async code call them through ``asyncio.to_thread``.

Failure
-------
If writing or fsyncing fails (disk full, EIO, ...), ``failed`` is set, ``on_failure(exc)`` is
called exactly once - from a committer thread, or from the thread whose ``write``/``flush``/
``close`` failed - and every later append and ``write`` raises ``RecorderError``. The same
happens (from the appending thread) if more than ``max_buffer`` bytes wait for a disk that
does not keep up. When the failed write could be cut back off the file, ``close`` still tries
to finalize the recording (end event with ``recorder_error`` and trailer), which succeeds once
there is room again (see ``recorder/space.py`` for the reserve that makes that room). Async
callers should hop back to their loop with ``loop.call_soon_threadsafe``. ``on_failure`` is
never called with a writer lock held, so it may call ``close``.
"""

from __future__ import annotations

import atexit
import binascii
import contextlib
import hashlib
import math
import os
import secrets
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from . import committer
from . import format as fmt
from .format import RecorderError, RecorderFieldError

__all__ = ["RecordingWriter", "RecorderError", "RecorderFieldError", "STATS"]

#: Mode while the recording is being written, and once finalized. Not world-readable: a PTY
#: recording can contain whatever the engineer typed (a sudo password at a prompt, say).
LIVE_MODE = 0o640
FINAL_MODE = 0o440

_sha256 = hashlib.sha256
_os_write = os.write
_writev = os.writev
_b2a = binascii.b2a_base64
_hexlify = binascii.hexlify
_monotonic = time.monotonic
_schedule = committer.schedule

#: Data payloads this long or longer are written as raw frames (base64 and copying a 32 KiB
#: SSH packet into a line cost more CPU than relaying it); shorter ones, keystrokes and
#: prompts, stay readable base64 in their line.
RAW_MIN = 4096

_IOV_CHUNK = min(1024, os.sysconf("SC_IOV_MAX")) if hasattr(os, "sysconf") else 1024

_fadvise = getattr(os, "posix_fadvise", None)
_PAGE = 4096

_live_writers: weakref.WeakSet[RecordingWriter] = weakref.WeakSet()


class WriterStats:
    """Process-wide counters for metrics (read by proxy/metrics.py). Updated without a lock:
    each field has one writer per call site and a scrape tolerates a torn read."""

    def __init__(self) -> None:
        self.bytes_written = 0
        self.writes = 0
        self.write_seconds = 0.0
        self.fsyncs = 0
        self.fsync_seconds = 0.0
        self.fsync_max = 0.0
        self.failures = 0

    @staticmethod
    def pending_bytes() -> int:
        return sum(w.pending_bytes for w in list(_live_writers))


STATS = WriterStats()
_perf = time.perf_counter


@atexit.register
def _flush_all_at_exit() -> None:  # best effort: a clean interpreter exit loses nothing
    for w in list(_live_writers):
        with contextlib.suppress(Exception):
            w.flush()


def _after_fork_in_child() -> None:
    """A forked child has a fresh committer (committer.py): queue its inherited recordings
    there (they were queued, if at all, in the parent's heap)."""
    for w in list(_live_writers):
        w._due = math.inf
        due = min(w._sync_due, w._ckpt_deadline if w._unsigned else math.inf)
        if due != math.inf:
            _schedule(w, due)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


#: JSON-encoded event kinds, so the hot path does not re-encode them.
_KIND_JSON: dict[str, bytes] = {}


class RecordingWriter:
    """Append-only, hash-chained, signed recording. Create with :meth:`create`."""

    def __init__(self) -> None:  # pragma: no cover - use create()
        raise TypeError("use RecordingWriter.create(...)")

    @classmethod
    def create(
        cls,
        path: Path,
        header: dict,
        signing_key: Ed25519PrivateKey,
        key_id: str,
        *,
        checkpoint_interval: float = 1.0,
        checkpoint_events: int = 1000,
        commit_interval: float = 0.05,
        on_failure: Callable[[Exception], None] | None = None,
        max_buffer: int = 256 * 1024 * 1024,
        raw_min: int = RAW_MIN,
        write_through: bool = False,
    ) -> RecordingWriter:
        """Create ``path`` exclusively and write (and fsync) the header and a first checkpoint.

        Synchronous; does not need an event loop. Raises ``RecorderError`` if the file exists or
        cannot be created, ``RecorderFieldError`` if ``header`` cannot be recorded.
        ``max_buffer``: if this many bytes are waiting for the disk, the writer fails rather than
        grow without bound (the disk is not keeping up). ``raw_min``: data payloads this long
        or longer are written as raw frames rather than base64. ``write_through``: every append
        is written at once (for logs of rare events, such as the audit log: an append that
        returns is in the file, and one that cannot be written raises).
        """
        if not isinstance(signing_key, Ed25519PrivateKey):
            raise TypeError("signing_key must be an Ed25519PrivateKey")
        if not isinstance(key_id, str) or not key_id:
            raise ValueError("key_id must be a non-empty string")
        if checkpoint_interval <= 0 or checkpoint_events < 1 or commit_interval < 0:
            raise ValueError(
                "checkpoint_interval > 0, checkpoint_events >= 1, commit_interval >= 0"
            )
        header = dict(header)
        for k in header:
            if k in fmt.HEADER_FIELDS:
                raise RecorderFieldError(f"header field {k!r} is set by the recorder")
        recording_id = secrets.token_hex(16)
        header_fields = fmt.encode_fields(
            {"format": fmt.FORMAT, "recording_id": recording_id, "key_id": key_id, **header}
        )

        self = object.__new__(cls)
        self.path = Path(path)
        self.recording_id = recording_id
        self.key_id = key_id
        self.header = header
        self._key = signing_key
        self._key_id_json = fmt.encode_str(key_id)
        self._ckpt_interval = float(checkpoint_interval)
        self._ckpt_events = int(checkpoint_events)
        self._commit_interval = float(commit_interval)
        self._on_failure = on_failure
        self._max_buffer = int(max_buffer)
        self._raw_min = max(1, int(raw_min))
        self._write_through = bool(write_through)
        self._early_sign_after = 0.0 if write_through else self._ckpt_interval / 2

        self._lock = threading.Lock()  # chain state + buffer
        self._io_lock = threading.Lock()  # serialises write+fsync, keeps file order = chain order
        self._serve_lock = threading.Lock()  # one committer thread at a time; close waits
        self._due = math.inf  # when the committer is asked to serve it (committer.py)
        self._sync_due = math.inf  # when its written bytes are to be fsynced (inf: clean)
        self._synced_at = -math.inf  # when the last fsync ended (monotonic)
        self._buf: list[bytes] = []
        self._buffered = 0  # bytes in _buf
        self._durable = 0  # lines written and fsynced
        self._durable_cond = threading.Condition(threading.Lock())
        self._file_size = 0  # bytes handed to the kernel so far (the file ends on a line)
        self._dropped = 0  # the file's first bytes already dropped from the page cache
        self._seq = 0
        self._prev = fmt.ZERO_HASH.encode("ascii")
        self._written_seq = 0  # chain position of the last line in the file
        self._written_prev = self._prev
        self._cut_back = False  # a failed write was cut off the file: it ends on a whole line
        self._finished = False  # end event and trailer appended
        self._trailer_written = False  # ... and handed to the kernel
        self._unsigned = 0  # events appended since the last checkpoint
        self._ckpt_deadline = 0.0  # monotonic time the oldest unsigned event must be signed by
        self._signed_at = 0.0  # monotonic time of the last checkpoint
        self._dead = False  # closed or failed: appends raise
        self._closed = False
        self._failed: Exception | None = None  # first failure of any kind
        self._io_failed: OSError | None = None  # the file cannot be written any more
        self._failure_reported = False
        self._field_cache: dict[tuple[str | None, str], bytes] = {}
        #: ``hold_after``: events timed at or after this are never forwarded (the gate is
        #: checked after they are written, on the same clock); the first one's seq, or -1.
        self._late_after = math.inf
        self._first_late = -1
        self._wall0 = time.time()
        self._mono0 = _monotonic()
        self._t_offset = self._wall0 - self._mono0

        try:
            self._fd = os.open(
                self.path,
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC,
                LIVE_MODE,
            )
        except FileExistsError as exc:
            raise RecorderError(
                f"recording {self.path} already exists; recordings are write-once"
            ) from exc
        except OSError as exc:
            raise RecorderError(f"cannot create recording {self.path}: {exc}") from exc

        with self._lock:
            self._append_locked(fmt.HEADER, header_fields, self._now())
            self._checkpoint_locked(self._now())
        err = self._write_out()
        if err is None:
            err = self._sync()
        if err is None:
            _fsync_dir(self.path.parent)
        else:
            # nothing was recorded, so nothing may remain: no empty or torn recordings
            self._dead = True
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -1
            with contextlib.suppress(OSError):
                os.unlink(self.path)
            raise RecorderError(f"cannot write recording {self.path}: {err}") from err

        _live_writers.add(self)
        return self

    # ------------------------------------------------------------------ state

    @property
    def failed(self) -> Exception | None:
        return self._failed

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def event_count(self) -> int:
        """Lines in the recording so far (header, events, checkpoints; the next ``seq``)."""
        return self._seq

    @property
    def durable_events(self) -> int:
        """Lines written and fsynced so far."""
        return self._durable

    def wait_durable(self, count: int | None = None, timeout: float | None = None) -> bool:
        """Block until the first ``count`` lines (default: all appended so far) are on disk.
        Returns False on timeout or if the recording failed first. Blocking: from async code use
        ``asyncio.to_thread``. Does not force a commit (``flush`` does)."""
        want = self._seq if count is None else count
        with self._durable_cond:
            return (
                self._durable_cond.wait_for(
                    lambda: self._durable >= want or self._io_failed is not None or self._fd < 0,
                    timeout,
                )
                and self._durable >= want
            )

    @property
    def last_hash(self) -> str:
        """Hex SHA-256 of the last line appended (after ``close``: of the trailer)."""
        return self._prev.decode("ascii")

    @property
    def pending_bytes(self) -> int:
        """Bytes appended but not yet written to the file (for back-pressure)."""
        return self._buffered

    def _now(self) -> float:
        return self._t_offset + _monotonic()

    def now(self) -> float:
        """The clock of this recording's ``t`` (wall time at creation, advanced monotonically):
        compare deadlines with it so that what is recorded before a deadline says so."""
        return self._t_offset + _monotonic()

    def _dead_error(self) -> RecorderError:
        if self._failed is not None:
            err = RecorderError(f"recording {self.path} failed: {self._failed}")
            err.__cause__ = self._failed
            return err
        return RecorderError(f"recording {self.path} is closed")

    # ------------------------------------------------------------------ appends (hot path)

    def output(self, data: bytes, channel: str | None = None, stream: str = "stdout") -> None:
        """Bytes from the target to the client (``stream``: stdout/stderr/...)."""
        self._data_event(b"output", data, channel, stream)

    def input(self, data: bytes, channel: str | None = None) -> None:
        """Bytes from the client to the target (keystrokes, pasted text, ...)."""
        self._data_event(b"input", data, channel, "stdout")

    def _data_event(self, kind: bytes, data: bytes, channel: str | None, stream: str) -> None:
        if self._dead:
            raise self._dead_error()
        if channel is None and stream == "stdout":
            extra = b""
        else:
            extra = self._field_cache.get((channel, stream))
            if extra is None:
                extra = self._extra_fields(channel, stream)
        if type(data) is not bytes:
            # a frame is buffered by reference until written, so take a copy the caller cannot
            # change; also counts bytes, not items. TypeError for str or int, before the chain
            # is touched.
            data = memoryview(data).tobytes()
        size = len(data)
        if size < self._raw_min:
            self._push_data(kind, extra, b',"data":"%s"}\n' % _b2a(data, newline=False), None)
            return
        for start in range(0, size, fmt.MAX_RAW_LEN):
            piece = data if size <= fmt.MAX_RAW_LEN else data[start : start + fmt.MAX_RAW_LEN]
            digest = _sha256(piece).hexdigest().encode("ascii")
            tail = b',"raw_len":%d,"raw_sha256":"%s"}\n' % (len(piece), digest)
            self._push_data(kind, extra, tail, piece)

    def _push_data(self, kind: bytes, extra: bytes, tail: bytes, frame: bytes | None) -> None:
        """Append a data event: its line ends with ``tail`` (base64 ``data``, or the frame's
        length and digest), and ``frame``, if given, follows the line as is."""
        with self._lock:
            if self._dead:
                raise self._dead_error()
            if self._buffered <= self._max_buffer:
                now = _monotonic()
                if self._t_offset + now >= self._late_after and self._first_late < 0:
                    self._first_late = self._seq
                line = b'{"seq":%d,"t":%.6f,"kind":"%s","prev":"%s"%s%s' % (
                    self._seq,
                    self._t_offset + now,
                    kind,
                    self._prev,
                    extra,
                    tail,
                )
                if frame is None:
                    self._push_locked(line)
                else:
                    self._enqueue_locked(_sha256(line), (line, frame), len(line) + len(frame))
                self._count_locked(now)
                exc = None
            else:
                exc = self._overflow_locked()
        self._appended(exc)

    def _appended(self, overflow: RecorderError | None) -> None:
        """After an append (outside the lock): report an overflow, or write through."""
        if overflow is not None:
            self._report_failure(overflow)
            raise overflow
        if self._write_through:
            self.write()

    def _extra_fields(self, channel: str | None, stream: str) -> bytes:
        if channel is not None and not isinstance(channel, str):
            raise RecorderFieldError("channel must be a string")
        if not isinstance(stream, str):
            raise RecorderFieldError("stream must be a string")
        extra = b""
        if channel is not None:
            extra += b',"channel":' + fmt.encode_str(channel)
        if stream != "stdout":
            extra += b',"stream":' + fmt.encode_str(stream)
        if len(self._field_cache) < 256:
            self._field_cache[(channel, stream)] = extra
        return extra

    def resize(self, cols: int, rows: int) -> None:
        """Terminal window size change."""
        self.event(fmt.RESIZE, cols=int(cols), rows=int(rows))

    def query(self, **fields: Any) -> None:
        """A statement and its outcome (``text=``, ``params=``, ``tag=``, ``rows=``, ``error=``,
        ``duration_ms=`` ...)."""
        self.event(fmt.QUERY, **fields)

    def decision(self, **fields: Any) -> None:
        """A policy decision (``kind="sql"|"exec"``, ``allowed=``, ``rule=``, ``text=`` ...).

        ``kind`` is stored as ``decision_kind`` (``kind`` names the event kind in every line)."""
        if "kind" in fields:
            if "decision_kind" in fields:
                raise RecorderFieldError("give kind= or decision_kind=, not both")
            fields["decision_kind"] = fields.pop("kind")
        self.event(fmt.DECISION, **fields)

    def event(self, kind: str, **fields: Any) -> None:
        """Generic event. Fields must be JSON-serialisable; bytes values (at any depth) are
        allowed and read back as bytes. ``input``/``output`` take ``data`` bytes plus optional
        ``channel`` (and ``stream`` for output)."""
        if self._dead:
            raise self._dead_error()
        if not isinstance(kind, str) or not kind:
            raise RecorderFieldError("event kind must be a non-empty string")
        if kind in fmt.RESERVED_KINDS:
            raise RecorderFieldError(f"event kind {kind!r} is reserved for the recorder")
        if kind in fmt.DATA_KINDS:
            data = fields.pop("data", None)
            channel = fields.pop("channel", None)
            stream = fields.pop("stream", "stdout")
            if not isinstance(data, bytes | bytearray | memoryview) or fields:
                raise RecorderFieldError(
                    f"{kind} events take data=bytes, channel= and stream= only"
                )
            self._data_event(kind.encode("ascii"), bytes(data), channel, stream)
            return
        self._append(kind, fmt.encode_fields(fields))

    def append_encoded(self, kind: str, encoded_fields: bytes) -> None:
        """Append an event whose fields are already JSON object members in ASCII, e.g.
        ``b'"n":7,"text":' + format.encode_str(text)``. For hot paths; the caller is trusted
        to produce valid JSON (use ``format.encode_str`` for every string)."""
        if kind in fmt.RESERVED_KINDS or kind in fmt.DATA_KINDS:
            raise RecorderFieldError(f"event kind {kind!r} cannot be appended pre-encoded")
        self._append(kind, encoded_fields)

    def _append(self, kind: str, encoded_fields: bytes) -> None:
        # The hot path of every statement and result: chaining, buffering and counting are
        # inlined here (``_append_locked_json``, ``_push_locked``, ``_count_locked`` do the
        # same for the other callers).
        kind_json = _KIND_JSON.get(kind)
        if kind_json is None:
            kind_json = fmt.encode_str(kind)
            if len(_KIND_JSON) < 1024:
                _KIND_JSON[kind] = kind_json
        with self._lock:
            if self._dead:
                raise self._dead_error()
            if self._buffered <= self._max_buffer:
                now = _monotonic()
                if self._t_offset + now >= self._late_after and self._first_late < 0:
                    self._first_late = self._seq
                line = b'{"seq":%d,"t":%.6f,"kind":%s,"prev":"%s"%s%s}\n' % (
                    self._seq,
                    self._t_offset + now,
                    kind_json,
                    self._prev,
                    b"," if encoded_fields else b"",
                    encoded_fields,
                )
                self._prev = _hexlify(_sha256(line).digest())
                self._seq += 1
                self._buf.append(line)
                self._buffered += len(line)
                n = self._unsigned
                if n == 0:
                    self._ckpt_deadline = now + self._ckpt_interval
                    _schedule(self, self._ckpt_deadline)  # sign it by then if no append does
                self._unsigned = n + 1
                if n + 1 >= self._ckpt_events or now >= self._ckpt_deadline:
                    self._checkpoint_locked(self._t_offset + now)
                exc = None
            else:
                exc = self._overflow_locked()
        if exc is not None or self._write_through:
            self._appended(exc)

    def _append_locked(self, kind: str, encoded_fields: bytes, t: float) -> None:
        self._append_locked_json(fmt.encode_str(kind), encoded_fields, t)

    def _append_locked_json(self, kind_json: bytes, encoded_fields: bytes, t: float) -> None:
        sep = b"," if encoded_fields else b""
        line = b'{"seq":%d,"t":%.6f,"kind":%s,"prev":"%s"%s%s}\n' % (
            self._seq,
            t,
            kind_json,
            self._prev,
            sep,
            encoded_fields,
        )
        self._push_locked(line)

    def _count_locked(self, now: float) -> None:
        """One more unsigned event: sign a checkpoint when the interval or count is reached."""
        n = self._unsigned
        if n == 0:
            self._ckpt_deadline = now + self._ckpt_interval
            _schedule(self, self._ckpt_deadline)  # sign it by then if no append does
        self._unsigned = n + 1
        if n + 1 >= self._ckpt_events or now >= self._ckpt_deadline:
            self._checkpoint_locked(self._t_offset + now)

    def _push_locked(self, line: bytes) -> None:
        """Chain ``line`` and buffer it."""
        self._enqueue_locked(_sha256(line), (line,), len(line))

    def _enqueue_locked(self, digest: Any, pieces: tuple[bytes, ...], size: int) -> None:
        """Make ``digest`` (of the line) the chain head and buffer ``pieces`` (the line, and
        its frame if it has one)."""
        self._prev = _hexlify(digest.digest())
        self._seq += 1
        self._buf += pieces
        self._buffered += size

    def _checkpoint_locked(self, t: float) -> None:
        self._signed_line_locked(fmt.CHECKPOINT, t)
        self._unsigned = 0
        self._signed_at = t - self._t_offset

    def _signed_line_locked(self, kind: str, t: float | None) -> None:
        seq = self._seq
        prev = self._prev.decode("ascii")
        sig = self._key.sign(fmt.signed_message(kind, seq, prev)).hex()
        if t is None:  # the trailer: every field is covered by its signature
            line = b'{"seq":%d,"kind":"%s","prev":"%s","key_id":%s,"sig":"%s"}\n' % (
                seq,
                kind.encode("ascii"),
                self._prev,
                self._key_id_json,
                sig.encode("ascii"),
            )
        else:
            line = b'{"seq":%d,"t":%.6f,"kind":"%s","prev":"%s","key_id":%s,"sig":"%s"}\n' % (
                seq,
                t,
                kind.encode("ascii"),
                self._prev,
                self._key_id_json,
                sig.encode("ascii"),
            )
        self._push_locked(line)

    def _overflow_locked(self) -> RecorderError:
        """Too much waiting for the disk: refuse further appends. What is buffered is still
        written, and ``close`` still finalizes the recording (its chain is intact)."""
        exc = RecorderError(
            f"recording {self.path}: {self._buffered} bytes waiting for the disk "
            f"(limit {self._max_buffer}); storage is not keeping up"
        )
        self._dead = True
        if self._failed is None:
            self._failed = exc
        return exc

    # ------------------------------------------------------------------ write and commit

    def write(self) -> None:
        """Hand everything appended so far to the kernel (one ``writev``), before forwarding.

        Cheap when nothing is buffered. Raises ``RecorderError`` if the recording has failed
        or this write fails (then ``on_failure`` has fired, the failed bytes are cut back off
        the file where possible, and the caller must forward nothing)."""
        if self._buf:
            err = self._write_out()
            if err is not None:
                self._report_failure(err)
        if self._failed is not None:
            raise self._dead_error()

    def _write_out(self, *, final: bool = False) -> OSError | None:
        """Write what is buffered; return the I/O error, if any (the caller reports it outside
        the locks). The io lock keeps file order equal to chain order. ``final``: also after a
        failure that was cut back cleanly (close's last attempt to finalize)."""
        with self._io_lock:
            if self._fd < 0:
                return None
            if self._io_failed is not None and not (final and self._cut_back):
                return None
            with self._lock:
                buf = self._buf
                if not buf:
                    return None
                size = self._buffered
                self._buf = []
                self._buffered = 0
                upto_seq, upto_prev = self._seq, self._prev
            start = self._file_size
            t0 = _perf()
            try:
                if len(buf) == 1:  # the common case: one line (a statement, a keystroke)
                    n = _os_write(self._fd, buf[0])
                elif len(buf) <= _IOV_CHUNK:
                    n = _writev(self._fd, buf)
                else:
                    n = _write_all(self._fd, buf)
                if n != size:  # short write (a signal, a nearly full disk): finish it plainly
                    rest = memoryview(b"".join(buf))[n:]
                    while rest:
                        rest = rest[_os_write(self._fd, rest) :]
            except OSError as exc:
                self._cut_back_locked(start, exc)
                return exc
            self._file_size = start + size
            self._written_seq, self._written_prev = upto_seq, upto_prev
            stats = STATS
            stats.writes += 1
            stats.bytes_written += size
            stats.write_seconds += _perf() - t0
            if self._sync_due == math.inf:
                self._sync_due = due = self._commit_due()
                _schedule(self, due)
        return None

    def _commit_due(self) -> float:
        """When bytes written now are to be fsynced: within ``commit_interval``, on a grid of
        half that interval so that one committer wake-up serves every recording written in
        the same stretch (group commit across recordings), and not sooner than
        ``commit_interval`` after this recording's last fsync ended (``_serve`` holds to that
        too, for bytes written while an fsync ran)."""
        step = self._commit_interval / 2
        now = _monotonic()
        if step <= 0:
            return now
        # and not sooner than commit_interval after the last fsync ended: a busy recording
        # is fsynced once per interval plus one fsync (as a thread of its own did before)
        return max((now // step + 2) * step, self._synced_at + self._commit_interval)

    def _cut_back_locked(self, start: int, exc: OSError) -> None:
        """A write failed: cut what it left of its lines off the file, roll the chain back to
        the last line in the file, and fail the writer. Called with the io lock."""
        try:
            os.ftruncate(self._fd, start)
            self._cut_back = True
        except OSError:
            self._cut_back = False  # EIO/EROFS: the file may end on a torn line
        with self._lock:
            self._dead = True
            self._io_failed = exc
            if self._failed is None:
                self._failed = exc
            self._seq, self._prev = self._written_seq, self._written_prev
            self._buf = []
            self._buffered = 0
            self._unsigned = 0
        with self._durable_cond:
            self._durable_cond.notify_all()

    def _sync(self) -> OSError | None:
        """fsync what is written (without the io lock: writes go on meanwhile) and drop the
        synced pages from the page cache. Returns the I/O error, if any."""
        self._sync_due = math.inf
        upto, size = self._written_seq, self._file_size
        if upto <= self._durable or self._fd < 0:
            return None
        try:
            t0 = _perf()
            os.fsync(self._fd)
            self._synced_at = _monotonic()
            took = _perf() - t0
            STATS.fsyncs += 1
            STATS.fsync_seconds += took
            STATS.fsync_max = max(STATS.fsync_max, took)
            self._drop_cached(size)
        except OSError as exc:
            with self._lock:
                self._dead = True
                if self._io_failed is None:
                    self._io_failed = exc
                if self._failed is None:
                    self._failed = exc
            with self._durable_cond:
                self._durable_cond.notify_all()
            return exc
        with self._durable_cond:
            self._durable = max(self._durable, upto)
            self._durable_cond.notify_all()
        return None

    def _drop_cached(self, size: int) -> None:
        """Drop the fsynced (clean) whole pages from the page cache; keep the last partial page,
        which the next write would otherwise read back from disk."""
        stop = size - size % _PAGE
        if _fadvise is not None and stop > self._dropped:
            _fadvise(self._fd, self._dropped, stop - self._dropped, os.POSIX_FADV_DONTNEED)
            self._dropped = stop

    def _report_failure(self, exc: Exception) -> None:
        """Call ``on_failure`` once. Never called with a lock held."""
        with self._lock:
            if self._failure_reported:
                return
            self._failure_reported = True
        STATS.failures += 1
        if self._on_failure is not None:
            try:
                self._on_failure(exc)
            except Exception:  # noqa: BLE001 - a broken callback must not kill the committer
                pass

    def _sync_at(self) -> float:
        """When to fsync what is written: when due, and not sooner than ``commit_interval``
        after the last fsync ended (bytes written during that fsync were given a due time
        before it ended). inf: nothing to fsync."""
        return max(self._sync_due, self._synced_at + self._commit_interval)

    def _serve(self) -> float | None:
        """The committer's work for this recording (committer.py calls it on one of its threads):
        sign the time-based checkpoint and fsync, each when due. Returns when it is due next."""
        err: Exception | None = None
        with self._serve_lock:
            if self._closed or self._io_failed is not None:
                return None
            try:
                now = _monotonic()
                sync = now >= self._sync_at()
                with self._lock:
                    # Sign when the oldest unsigned event is due; or with this fsync, so that
                    # one fsync makes both durable, unless a checkpoint was signed lately (a
                    # busy recording is signed at most twice per checkpoint interval this way).
                    # A log of rare events (write_through: the audit log) is signed with every
                    # fsync: what it says (a session started) is signed, and can be uploaded,
                    # before the recording it speaks of.
                    if (
                        self._unsigned
                        and not self._dead
                        and (
                            now >= self._ckpt_deadline
                            or (sync and now - self._signed_at >= self._early_sign_after)
                        )
                    ):
                        self._checkpoint_locked(self._t_offset + now)
                err = self._write_out()
                if err is None and sync:
                    err = self._sync()
            except Exception as exc:  # noqa: BLE001 - e.g. signing failed: the recording failed
                with self._lock:
                    self._dead = True
                    if self._failed is None:
                        self._failed = exc
                err = exc
            if err is None and self._io_failed is None:
                again = self._sync_at()
                if self._unsigned and not self._dead:
                    again = min(again, self._ckpt_deadline)
                return None if again == math.inf else again
        self._report_failure(err or self._io_failed)
        return None

    def flush(self) -> None:
        """Write and fsync everything appended so far. Blocking. Raises ``RecorderError`` if
        the recording cannot be written."""
        err = self._write_out() or self._sync()
        if err is not None:
            self._report_failure(err)
        if self._io_failed is not None:
            raise self._dead_error()

    def hold_after(self, t: float) -> None:
        """Note the seq of the first event appended at or after ``t`` (by this recording's
        clock): the forwarding gate closes at ``t`` and is checked after each write, so no
        such event can have been forwarded (``first_late_seq``)."""
        with self._lock:
            self._late_after = float(t)

    @property
    def first_late_seq(self) -> int | None:
        """The seq of the first event appended at or after ``hold_after``'s time, if any."""
        return self._first_late if self._first_late >= 0 else None

    def finish(self, reason: str = "closed", **fields: Any) -> None:
        """Append the ``end`` event and the signed trailer and write them, without fsync: an
        event loop can call this the moment a session ends (``close`` then makes it durable
        and read-only, off the loop). Idempotent; never raises for a failed recording (a write
        failure is reported through ``on_failure`` as usual)."""
        with self._lock:
            if self._finished or self._closed:
                return
            self._finished = True
            self._dead = True
            if self._io_failed is not None and not self._cut_back:
                return  # the file cannot take more: it stays unfinalized
            end = {"reason": str(reason), **fields}
            if self._failed is not None:
                end["recorder_error"] = str(self._failed)
            try:
                end_fields = fmt.encode_fields(end)
            except RecorderFieldError:
                end_fields = fmt.encode_fields({"reason": str(reason)})
            self._append_locked(fmt.END, end_fields, self._now())
            self._signed_line_locked(fmt.TRAILER, None)
        err = self._write_out(final=True)
        if err is not None:
            self._report_failure(err)
        else:
            self._trailer_written = True

    def close(self, reason: str = "closed", **fields: Any) -> None:
        """Finish (end event and signed trailer, unless ``finish`` did already), fsync, make
        the file read-only.

        Idempotent. Blocking (fsync). If writing had failed and the file could not be cut back
        to a whole line, it just releases the file (the failure was reported through
        ``on_failure``); if finalizing fails now, ``on_failure`` fires and ``RecorderError`` is
        raised.
        """
        with self._lock:
            if self._closed:
                return
            failed_before = self._failed is not None and not self._finished
        self.finish(reason, **fields)
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._dead = True
            finalized = self._trailer_written
        _live_writers.discard(self)
        err: OSError | None = None
        with self._serve_lock, self._io_lock:  # after the committer's last turn, if it had one
            if finalized and self._fd >= 0:
                try:
                    os.fsync(self._fd)
                    os.fchmod(self._fd, FINAL_MODE)
                    os.fsync(self._fd)
                    with self._durable_cond:
                        self._durable = self._written_seq
                except OSError as exc:
                    with self._lock:
                        self._io_failed = self._io_failed or exc
                        self._failed = self._failed or exc
                    err = exc
            if self._fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(self._fd)
                self._fd = -1
        with self._durable_cond:
            self._durable_cond.notify_all()
        if err is not None:
            self._report_failure(err)
        if not failed_before and (err is not None or not finalized):
            raise self._dead_error() from (err or self._io_failed)

    def __enter__(self) -> RecordingWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close("error" if exc_type else "closed")

    def __repr__(self) -> str:
        state = "failed" if self._failed else "closed" if self._closed else "live"
        return f"<RecordingWriter {self.path} {state} events={self._seq}>"


def _write_all(fd: int, buf: list[bytes]) -> int:
    """Write ``buf`` in order with writev, ``_IOV_CHUNK`` pieces per system call: no big join
    holding the GIL (the event loop thread may be waiting for it), no copy. Returns the bytes
    written."""
    total = 0
    for start in range(0, len(buf), _IOV_CHUNK):
        chunk = buf[start : start + _IOV_CHUNK]
        want = sum(map(len, chunk))
        n = os.writev(fd, chunk)
        if n != want:  # short write (rare: signal, nearly full disk): finish it plainly
            rest = memoryview(b"".join(chunk))[n:]
            while rest:
                rest = rest[os.write(fd, rest) :]
        total += want
    return total


def _fsync_dir(directory: Path) -> None:
    """Make the new directory entry durable (best effort where directories can't be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
