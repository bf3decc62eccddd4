"""Room kept aside in a recordings (or audit) directory, so recordings can still be finalized
when the filesystem fills up.

A gateway process keeps one preallocated file, ``.reserve-PID``, in each directory it writes.
When a write fails because the filesystem is full, the gateway stops forwarding, deletes the
reserve and uses the space it frees to write the end event and signed trailer of every
recording it is closing. Once the reserve can be allocated again (someone freed space), the
directory is healthy again: :meth:`SpaceReserve.ensure` is the probe.
"""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path

#: Enough for the end event and trailer of about 2,000 sessions.
DEFAULT_RESERVE = 1 << 20

#: Errors that mean "this storage cannot take writes" (as opposed to one bad recording).
STORAGE_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.EFBIG, errno.ENOMEM}
)

_PREFIX = ".reserve-"


def is_storage_error(exc: BaseException | None) -> bool:
    """Whether ``exc`` (or what caused it) is an OSError that affects the whole storage."""
    seen = 0
    while exc is not None and seen < 5:
        if isinstance(exc, OSError) and exc.errno in STORAGE_ERRNOS:
            return True
        exc = exc.__cause__
        seen += 1
    return False


class SpaceReserve:
    """One preallocated file per process in ``directory``."""

    def __init__(self, directory: Path, size: int = DEFAULT_RESERVE) -> None:
        self.directory = Path(directory)
        self.size = size
        self.path = self.directory / f"{_PREFIX}{os.getpid()}"

    def ensure(self) -> bool:
        """Allocate the reserve if it is not there; False when the filesystem has no room
        (or cannot be written at all). Also removes reserves left by dead processes."""
        try:
            self.directory.mkdir(mode=0o750, parents=True, exist_ok=True)
        except OSError:
            return False
        self._remove_stale()
        try:
            if self.path.stat().st_size >= self.size:
                return True
        except FileNotFoundError:
            pass
        except OSError:
            return False
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError:
            return False
        try:
            os.posix_fallocate(fd, 0, self.size)
            os.fsync(fd)
            return True
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(self.path)
            return False
        finally:
            os.close(fd)

    def recovered(self) -> bool:
        """The probe after a fault: the reserve is back and as much room again is free, so
        the space the reserve gave back for finalizing is not mistaken for a recovery."""
        if not self.ensure():
            return False
        try:
            st = os.statvfs(self.directory)
        except OSError:
            return False
        return st.f_bavail * st.f_frsize >= self.size

    def release(self) -> bool:
        """Give the space back to the filesystem (for finalizing recordings). True if freed."""
        try:
            os.unlink(self.path)
            return True
        except OSError:
            return False

    def _remove_stale(self) -> None:
        with contextlib.suppress(OSError):
            for p in self.directory.glob(f"{_PREFIX}*"):
                pid = p.name[len(_PREFIX) :]
                if not pid.isdigit() or int(pid) == os.getpid():
                    continue
                try:
                    os.kill(int(pid), 0)
                except ProcessLookupError:
                    with contextlib.suppress(OSError):
                        p.unlink()
                except PermissionError:
                    pass
