"""What an SFTP session did, decoded from the bytes both ways, for the recording. No I/O.

The gateway relays an allowed ``sftp`` subsystem byte for byte (and records those bytes); this
decoder turns the same bytes into one event per operation, so a reviewer reads "open
/etc/app.conf for writing, 312 bytes written; rename a -> b; remove c" instead of packets.

* :meth:`SftpLog.client_data` takes bytes the client sends, :meth:`SftpLog.server_data` bytes
  the target answers; each returns the finished operations as dicts of event fields.
* An operation is reported when its reply arrives, with ``status`` ``ok`` or ``error`` (and the
  server's message). Reads and writes are not reported one by one: their bytes are counted per
  open handle and reported when the handle is closed (``read``/``written``; ``entries`` for a
  directory).
* Packets are parsed with asyncssh's SSH packet reader and SFTP attribute decoder (SFTP v3, as
  OpenSSH speaks it). A stream that does not parse, or a packet longer than OpenSSH's
  sftp-server accepts, raises :class:`SftpDecodeError`: the caller closes the channel rather
  than relay operations it cannot record (fail closed).
"""

from __future__ import annotations

from typing import Any

import asyncssh.sftp as sftp
from asyncssh.packet import PacketDecodeError, SSHPacket

__all__ = ["SftpDecodeError", "SftpLog", "MAX_PACKET"]

#: OpenSSH's sftp-server refuses longer messages (SFTP_MAX_MSG_LENGTH, 256 KiB); a little slack.
MAX_PACKET = 256 * 1024 + 1024
#: At most this many requests awaiting replies, and open handles, are tracked.
MAX_PENDING = 4096
#: Paths and names are cut to this many characters in events.
MAX_TEXT = 4096

_PATH_OPS = {
    sftp.FXP_LSTAT: "lstat",
    sftp.FXP_OPENDIR: "opendir",
    sftp.FXP_REMOVE: "remove",
    sftp.FXP_RMDIR: "rmdir",
    sftp.FXP_REALPATH: "realpath",
    sftp.FXP_STAT: "stat",
    sftp.FXP_READLINK: "readlink",
}
_TWO_PATH_OPS = {sftp.FXP_RENAME: "rename", sftp.FXP_SYMLINK: "symlink"}
_TWO_PATH_EXTENSIONS = {"posix-rename@openssh.com": "rename", "hardlink@openssh.com": "hardlink"}
_PATH_EXTENSIONS = {"statvfs@openssh.com": "statvfs", "expand-path@openssh.com": "expand-path"}
_OPEN_FLAGS = (
    (sftp.FXF_READ, "read"),
    (sftp.FXF_WRITE, "write"),
    (sftp.FXF_APPEND, "append"),
    (sftp.FXF_CREAT, "create"),
    (sftp.FXF_TRUNC, "truncate"),
    (sftp.FXF_EXCL, "exclusive"),
)


class SftpDecodeError(Exception):
    """The stream is not SFTP as this decoder understands it; the message says why."""


def _text(raw: bytes) -> str:
    return raw[:MAX_TEXT].decode("utf-8", "backslashreplace")


def _attrs(attrs: sftp.SFTPAttrs) -> dict[str, Any]:
    """The attributes a request sets (SETSTAT, MKDIR, OPEN ...), only those present."""
    out: dict[str, Any] = {}
    if attrs.permissions is not None:
        out["mode"] = f"{attrs.permissions & 0o7777:04o}"
    for name in ("uid", "gid", "size", "mtime"):
        value = getattr(attrs, name)
        if value is not None:
            out[name] = value
    return out


class _Frames:
    """Splits one direction of the stream into SFTP packets (uint32 length, then the packet)."""

    def __init__(self, who: str) -> None:
        self.who = who
        self.buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        self.buf += data
        packets = []
        buf = self.buf
        at = 0
        while len(buf) - at >= 4:
            size = int.from_bytes(buf[at : at + 4], "big")
            if size == 0 or size > MAX_PACKET:
                raise SftpDecodeError(f"{self.who} sent an SFTP packet of {size} bytes")
            if len(buf) - at - 4 < size:
                break
            packets.append(bytes(buf[at + 4 : at + 4 + size]))
            at += 4 + size
        if at:
            del buf[:at]
        return packets


class SftpLog:
    """The decoder for one SFTP channel."""

    def __init__(self) -> None:
        self._requests = _Frames("the client")
        self._replies = _Frames("the target")
        self._pending: dict[int, dict[str, Any]] = {}  # request id -> the operation so far
        self._handles: dict[bytes, dict[str, Any]] = {}  # open handle -> its open event
        self._reads: dict[int, bytes] = {}  # READ / READDIR request id -> handle
        self.version: int | None = None
        #: The first decode error; once set, every later call raises it (the stream is out of
        #: sync, so nothing after it can be recorded as operations).
        self.error: SftpDecodeError | None = None

    def client_data(self, data: bytes) -> list[dict[str, Any]]:
        return self._decode(self._requests, self._request, "request", data)

    def server_data(self, data: bytes) -> list[dict[str, Any]]:
        return self._decode(self._replies, self._reply, "reply", data)

    def _decode(self, frames: _Frames, handle: Any, what: str, data: bytes) -> list[dict[str, Any]]:
        if self.error is not None:
            raise self.error
        out: list[dict[str, Any]] = []
        try:
            for raw in frames.feed(data):
                try:
                    handle(SSHPacket(raw), out)
                except PacketDecodeError as exc:
                    raise SftpDecodeError(f"malformed SFTP {what}: {exc}") from None
        except SftpDecodeError as exc:
            self.error = exc
            raise
        return out

    # ------------------------------------------------------------------ client -> target

    def _request(self, p: SSHPacket, out: list[dict[str, Any]]) -> None:
        kind = p.get_byte()
        if kind == sftp.FXP_INIT:
            p.get_uint32()  # the version; extensions may follow
            return
        req_id = p.get_uint32()
        if len(self._pending) + len(self._reads) >= MAX_PENDING:
            raise SftpDecodeError(f"more than {MAX_PENDING} SFTP requests without a reply")
        op: dict[str, Any] | None = None
        if kind == sftp.FXP_OPEN:
            path = _text(p.get_string())
            flags = p.get_uint32()
            attrs = sftp.SFTPAttrs.decode(p, 3)
            modes = [name for bit, name in _OPEN_FLAGS if flags & bit]
            op = {"op": "open", "path": path, "flags": ",".join(modes), **_attrs(attrs)}
        elif kind in (sftp.FXP_CLOSE, sftp.FXP_FSTAT, sftp.FXP_FSETSTAT, sftp.FXP_READDIR):
            handle = p.get_string()
            if kind == sftp.FXP_READDIR:
                self._reads[req_id] = handle
            if kind in (sftp.FXP_READDIR, sftp.FXP_FSTAT):  # counted / not worth an event
                p.check_end()
                return
            op = self._on_handle(handle, "close" if kind == sftp.FXP_CLOSE else "fsetstat")
            if kind == sftp.FXP_FSETSTAT:
                op.update(_attrs(sftp.SFTPAttrs.decode(p, 3)))
            else:
                op["_close"] = handle
        elif kind == sftp.FXP_READ:
            self._reads[req_id] = p.get_string()
            p.get_uint64()
            p.get_uint32()
        elif kind == sftp.FXP_WRITE:
            handle = p.get_string()
            p.get_uint64()
            n = len(p.get_string())
            if handle in self._handles:
                self._handles[handle]["written"] += n
        elif kind in _PATH_OPS:
            op = {"op": _PATH_OPS[kind], "path": _text(p.get_string())}
        elif kind in (sftp.FXP_SETSTAT, sftp.FXP_MKDIR):
            path = _text(p.get_string())
            attrs = _attrs(sftp.SFTPAttrs.decode(p, 3))
            op = {"op": "setstat" if kind == sftp.FXP_SETSTAT else "mkdir", "path": path, **attrs}
        elif kind in _TWO_PATH_OPS:
            # as sent; OpenSSH's SYMLINK puts the link's target first (a known quirk)
            op = {"op": _TWO_PATH_OPS[kind], "path": _text(p.get_string())}
            op["to"] = _text(p.get_string())
        elif kind == sftp.FXP_EXTENDED:
            op = self._extended(p)
        else:
            raise SftpDecodeError(f"unknown SFTP request type {kind}")
        p.check_end()
        if op is not None:
            self._pending[req_id] = op

    def _on_handle(self, handle: bytes, name: str) -> dict[str, Any]:
        opened = self._handles.get(handle)
        op: dict[str, Any] = {"op": name}
        if opened is not None:
            op["path"] = opened["path"]
        return op

    def _extended(self, p: SSHPacket) -> dict[str, Any]:
        name = _text(p.get_string())[:100]
        op: dict[str, Any] = {"op": name}
        if name in _TWO_PATH_EXTENSIONS:
            op = {"op": _TWO_PATH_EXTENSIONS[name], "path": _text(p.get_string())}
            op["to"] = _text(p.get_string())
        elif name in _PATH_EXTENSIONS:
            op = {"op": _PATH_EXTENSIONS[name], "path": _text(p.get_string())}
        elif name == "lsetstat@openssh.com":
            op = {"op": "lsetstat", "path": _text(p.get_string())}
            op.update(_attrs(sftp.SFTPAttrs.decode(p, 3)))
        elif name in ("fsync@openssh.com", "fstatvfs@openssh.com"):
            op = self._on_handle(p.get_string(), name.split("@")[0])
        else:  # other extensions: their name is what is recorded
            p.get_bytes(len(p.get_remaining_payload()))
        return op

    # ------------------------------------------------------------------ target -> client

    def _reply(self, p: SSHPacket, out: list[dict[str, Any]]) -> None:
        kind = p.get_byte()
        if kind == sftp.FXP_VERSION:
            self.version = p.get_uint32()
            return
        req_id = p.get_uint32()
        read_handle = self._reads.pop(req_id, None)
        if read_handle is not None:
            opened = self._handles.get(read_handle)
            if opened is not None:
                if kind == sftp.FXP_DATA:
                    opened["read"] += len(p.get_string())
                elif kind == sftp.FXP_NAME:
                    opened["entries"] += p.get_uint32()
            return
        op = self._pending.pop(req_id, None)
        if op is None:
            return  # a reply to a request we do not report (FSTAT, ...)
        if kind == sftp.FXP_STATUS:
            code = p.get_uint32()
            rest = p.get_remaining_payload()  # message and language tag (optional in v3)
            message = _text(SSHPacket(rest).get_string()) if rest else ""
            op["status"] = "ok" if code == sftp.FX_OK else "error"
            if code != sftp.FX_OK:
                op["error"] = message or f"status {code}"
        else:
            op["status"] = "ok"
            if kind == sftp.FXP_HANDLE and op["op"] in ("open", "opendir"):
                if len(self._handles) >= MAX_PENDING:
                    raise SftpDecodeError(f"more than {MAX_PENDING} open SFTP handles")
                handle = p.get_string()
                self._handles[handle] = {"path": op["path"], "read": 0, "written": 0, "entries": 0}
                if op["op"] == "opendir":
                    self._handles[handle]["dir"] = True
            elif kind == sftp.FXP_NAME and op["op"] in ("realpath", "readlink", "expand-path"):
                if p.get_uint32() >= 1:
                    op["result"] = _text(p.get_string())
        handle = op.pop("_close", None)
        if handle is not None and op["status"] == "ok":
            opened = self._handles.pop(handle, None)
            if opened is not None:
                if opened.get("dir"):
                    op["entries"] = opened["entries"]
                else:
                    op["read"], op["written"] = opened["read"], opened["written"]
        out.append(op)
