"""The SFTP operation decoder, fed packets built with asyncssh's own encoders."""

from __future__ import annotations

import asyncssh.sftp as sftp
import pytest
from asyncssh.packet import Byte, String, UInt32, UInt64

from breakglass.proxy.ssh.sftp_log import MAX_PACKET, SftpDecodeError, SftpLog


def pkt(kind: int, *fields: bytes) -> bytes:
    body = Byte(kind) + b"".join(fields)
    return UInt32(len(body)) + body


def attrs(**kw) -> bytes:
    return sftp.SFTPAttrs(**kw).encode(3)


def ok(req: int) -> bytes:
    return pkt(sftp.FXP_STATUS, UInt32(req), UInt32(sftp.FX_OK), String("Success"), String(""))


def started() -> SftpLog:
    log = SftpLog()
    assert log.client_data(pkt(sftp.FXP_INIT, UInt32(3))) == []
    assert log.server_data(pkt(sftp.FXP_VERSION, UInt32(3))) == []
    return log


def test_an_upload_is_one_open_and_one_close_with_the_bytes_written():
    log = started()
    assert (
        log.client_data(
            pkt(
                sftp.FXP_OPEN,
                UInt32(1),
                String("/srv/app.conf"),
                UInt32(0x1A),
                attrs(permissions=0o640),
            )
        )
        == []
    )
    [opened] = log.server_data(pkt(sftp.FXP_HANDLE, UInt32(1), String(b"h1")))
    assert opened == {
        "op": "open",
        "path": "/srv/app.conf",
        "flags": "write,create,truncate",
        "mode": "0640",
        "status": "ok",
    }
    writes = b"".join(
        pkt(sftp.FXP_WRITE, UInt32(10 + i), String(b"h1"), UInt64(i * 100), String(b"x" * 100))
        for i in range(3)
    )
    # delivered in awkward pieces: packets cut anywhere must still decode
    for i in range(0, len(writes), 7):
        assert log.client_data(writes[i : i + 7]) == []
    assert log.server_data(b"".join(ok(10 + i) for i in range(3))) == []
    assert log.client_data(pkt(sftp.FXP_CLOSE, UInt32(20), String(b"h1"))) == []
    [closed] = log.server_data(ok(20))
    assert closed == {
        "op": "close",
        "path": "/srv/app.conf",
        "status": "ok",
        "read": 0,
        "written": 300,
    }


def test_download_counts_bytes_read_and_listing_counts_entries():
    log = started()
    log.client_data(pkt(sftp.FXP_OPEN, UInt32(1), String("/etc/hosts"), UInt32(1), attrs()))
    log.server_data(pkt(sftp.FXP_HANDLE, UInt32(1), String(b"f")))
    log.client_data(pkt(sftp.FXP_READ, UInt32(2), String(b"f"), UInt64(0), UInt32(32768)))
    log.server_data(pkt(sftp.FXP_DATA, UInt32(2), String(b"y" * 1234)))
    log.client_data(pkt(sftp.FXP_CLOSE, UInt32(3), String(b"f")))
    [closed] = log.server_data(ok(3))
    assert (closed["path"], closed["read"], closed["written"]) == ("/etc/hosts", 1234, 0)

    log.client_data(pkt(sftp.FXP_OPENDIR, UInt32(4), String("/var/log")))
    [opened] = log.server_data(pkt(sftp.FXP_HANDLE, UInt32(4), String(b"d")))
    assert opened == {"op": "opendir", "path": "/var/log", "status": "ok"}
    log.client_data(pkt(sftp.FXP_READDIR, UInt32(5), String(b"d")))
    name = String("a") + String("-rw a") + attrs()
    log.server_data(pkt(sftp.FXP_NAME, UInt32(5), UInt32(2), name, name))
    log.client_data(pkt(sftp.FXP_CLOSE, UInt32(6), String(b"d")))
    [closed] = log.server_data(ok(6))
    assert closed == {"op": "close", "path": "/var/log", "status": "ok", "entries": 2}


def test_path_operations_and_errors():
    log = started()
    log.client_data(
        pkt(sftp.FXP_RENAME, UInt32(1), String("/a"), String("/b"))
        + pkt(sftp.FXP_REMOVE, UInt32(2), String("/etc/shadow"))
        + pkt(sftp.FXP_MKDIR, UInt32(3), String("/d"), attrs(permissions=0o700))
        + pkt(sftp.FXP_SETSTAT, UInt32(4), String("/d"), attrs(permissions=0o4755, uid=0, gid=0))
        + pkt(
            sftp.FXP_EXTENDED,
            UInt32(5),
            String("posix-rename@openssh.com"),
            String("/b"),
            String("/c"),
        )
        + pkt(sftp.FXP_EXTENDED, UInt32(6), String("made-up@example.com"), String("whatever"))
    )
    denied = pkt(
        sftp.FXP_STATUS,
        UInt32(2),
        UInt32(sftp.FX_PERMISSION_DENIED),
        String("Permission denied"),
        String(""),
    )
    ops = log.server_data(ok(1) + denied + ok(3) + ok(4) + ok(5) + ok(6))
    assert ops == [
        {"op": "rename", "path": "/a", "to": "/b", "status": "ok"},
        {"op": "remove", "path": "/etc/shadow", "status": "error", "error": "Permission denied"},
        {"op": "mkdir", "path": "/d", "mode": "0700", "status": "ok"},
        {"op": "setstat", "path": "/d", "mode": "4755", "uid": 0, "gid": 0, "status": "ok"},
        {"op": "rename", "path": "/b", "to": "/c", "status": "ok"},
        {"op": "made-up@example.com", "status": "ok"},
    ]


def test_paths_that_are_not_utf8_are_kept_readable():
    log = started()
    log.client_data(pkt(sftp.FXP_REMOVE, UInt32(1), String(b"/tmp/\xff\x1b[31m")))
    [op] = log.server_data(ok(1))
    assert op["path"] == "/tmp/\\xff\x1b[31m"


@pytest.mark.parametrize(
    "garbage",
    [
        UInt32(MAX_PACKET + 1) + b"x" * 16,  # longer than sftp-server accepts
        UInt32(0),  # empty packet
        pkt(99, UInt32(1)),  # no such request type
        pkt(sftp.FXP_REMOVE, UInt32(1)),  # path missing
        pkt(sftp.FXP_REMOVE, UInt32(1), String("/a"), b"trailing"),  # bytes after the fields
        b"SSH-2.0-not sftp\r\n",
    ],
)
def test_what_does_not_decode_is_refused(garbage):
    log = started()
    with pytest.raises(SftpDecodeError):
        log.client_data(garbage)
    # and stays refused: nothing after a desynchronised stream is taken as operations
    with pytest.raises(SftpDecodeError):
        log.client_data(pkt(sftp.FXP_REMOVE, UInt32(2), String("/a")))
    with pytest.raises(SftpDecodeError):
        log.server_data(ok(2))


def test_malformed_reply_is_refused():
    log = started()
    log.client_data(pkt(sftp.FXP_OPEN, UInt32(1), String("/a"), UInt32(1), attrs()))
    with pytest.raises(SftpDecodeError):
        log.server_data(pkt(sftp.FXP_HANDLE, UInt32(1)))  # the handle is missing
