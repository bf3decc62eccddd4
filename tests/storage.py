"""Real storage faults for tests: a small tmpfs mounted on a directory, filled up, made
read-only. Needs root (CI runs as root); otherwise skips, or fails under
BREAKGLASS_REQUIRE_SERVERS=1 like the real-server tests."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

from tests.conftest import _unavailable


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """Mount a tmpfs of ``size`` (e.g. "4m") on ``path`` for the block."""
    if os.geteuid() != 0:
        _unavailable("mounting a tmpfs for storage-fault tests needs root")
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0750", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        _unavailable(f"cannot mount a tmpfs on {path}: {r.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def fill(path: Path, leave: int) -> Path:
    """Take all but ``leave`` bytes of the filesystem under ``path`` with one file."""
    filler = path / "filler.bin"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.posix_fallocate(fd, 0, max(1, free_bytes(path) - leave))
    finally:
        os.close(fd)
    return filler


@contextlib.contextmanager
def ext4(path: Path, image: Path, size: str = "32M") -> Iterator[Path]:
    """Mount a fresh ext4 filesystem (a loop device over ``image``) on ``path``."""
    if os.geteuid() != 0:
        _unavailable("mounting a loop device for storage-fault tests needs root")
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["truncate", "-s", size, str(image)], check=True)
    r = subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], capture_output=True, text=True)
    if r.returncode != 0:
        _unavailable(f"mkfs.ext4 failed: {r.stderr.strip()}")
    mount_image(image, path)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def mount_image(image: Path, path: Path) -> None:
    r = subprocess.run(
        ["mount", "-o", "loop", str(image), str(path)], capture_output=True, text=True
    )
    if r.returncode != 0:
        _unavailable(f"cannot mount a loop device on {path}: {r.stderr.strip()}")
    path.chmod(0o750)


def abort_ext4(path: Path) -> None:
    """Make the ext4 filesystem on ``path`` read-only at once, as the kernel does on a
    filesystem error (every later write fails with EROFS), even with files open for writing."""
    subprocess.run(["mount", "-o", "remount,abort", str(path)], check=True, capture_output=True)


def remount_fresh(image: Path, path: Path) -> None:
    """Replace an aborted mount by a fresh one of the same image (what an operator does)."""
    subprocess.run(["umount", "-l", str(path)], check=True, capture_output=True)
    subprocess.run(["e2fsck", "-fy", str(image)], capture_output=True)
    mount_image(image, path)
