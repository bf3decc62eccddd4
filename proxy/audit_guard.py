"""The gateway's audit log: every append is in the file when it returns, a storage fault
fails closed, and the log recovers by itself once there is room again.

``append`` raises :class:`AuditUnavailable` while the audit directory cannot be written;
callers refuse what they would have audited (a session start, say). The first failure also
ends the running sessions (``on_fault``): nothing runs unaudited. Each later append probes
the directory's space reserve; when it can be allocated again, a new segment is opened and
appends go on.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from breakglass.proxy.logs import log
from breakglass.recorder.format import RecorderError
from breakglass.recorder.space import SpaceReserve


class AuditUnavailable(RecorderError):
    """The audit log cannot be written now (the message says why)."""


class GuardedAudit:
    """Wraps an ``AuditLog`` opened by ``open_log`` (with write-through appends)."""

    def __init__(
        self,
        open_log: Callable[[], Any],
        directory: Path,
        on_fault: Callable[[str], None] | None = None,
    ) -> None:
        self._open = open_log
        self.reserve = SpaceReserve(directory)
        self.on_fault = on_fault
        self.fault: str | None = None
        self._lock = threading.Lock()
        self._log: Any = None
        try:
            if not self.reserve.ensure():
                raise RecorderError("no free space for the audit log's reserve")
            self._log = open_log()
        except (RecorderError, OSError) as e:  # start anyway, refusing sessions until it heals
            self.fault = f"the audit log cannot be written ({e}); no new sessions until it recovers"
            log.error("audit.storage_fault", error=str(e))

    @property
    def path(self) -> Path | None:
        return None if self._log is None else self._log.path

    @property
    def failed(self) -> Exception | None:
        return None if self._log is None else self._log.failed

    def append(self, type: str, **fields: Any) -> None:  # noqa: A002 - AuditLog's name
        with self._lock:
            if self.fault is not None and not self._recover_locked():
                raise AuditUnavailable(self.fault)
            log_ = self._log
        try:
            log_.append(type, **fields)
        except RecorderError as e:
            message = self._failed(log_, e)
            raise AuditUnavailable(message) from e

    def _failed(self, broken: Any, exc: RecorderError) -> str:
        with self._lock:
            if self.fault is not None:
                return self.fault
            cause = exc.__cause__
            reason = getattr(cause, "strerror", None) or str(cause or exc)
            self.fault = (
                f"the audit log cannot be written ({reason}); no new sessions until it recovers"
            )
            with contextlib.suppress(Exception):
                broken.close()  # ends its committer thread, releases the file
            self.reserve.release()
        log.error("audit.storage_fault", error=str(exc))
        if self.on_fault is not None:
            self.on_fault(self.fault)
        return self.fault

    def _recover_locked(self) -> bool:
        if not self.reserve.recovered():
            return False
        try:
            self._log = self._open()
        except (RecorderError, OSError) as e:
            log.warning("audit.reopen_failed", error=str(e))
            return False
        log.info("audit.recovered")
        self.fault = None
        return True

    def flush(self) -> None:
        if self.fault is None and self._log is not None:
            self._log.flush()

    def close(self) -> None:
        if self._log is not None:
            with contextlib.suppress(RecorderError):
                self._log.close()
        self.reserve.release()
