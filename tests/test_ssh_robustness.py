"""Bad input never crashes the SSH gateway nor disturbs other sessions."""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import threading
import time

import asyncssh
import pytest

from tests.ssh_gateway_fixture import GatewayHarness, ssh_gateway  # noqa: F401

pytestmark = pytest.mark.timeout(120)


def _read_until_closed(sock: socket.socket, limit: int = 1 << 20) -> bytes:
    """Read what the gateway sends until it closes the connection (bounded in size and by
    the socket timeout)."""
    got = b""
    while len(got) < limit:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        got += chunk
    return got


def garbage_before_banner(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + os.urandom(4096))
        return _read_until_closed(s)


def garbage_after_banner(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"SSH-2.0-evil\r\n")
        s.sendall(os.urandom(65536))
        return _read_until_closed(s)


def huge_packet_length(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"SSH-2.0-evil\r\n" + struct.pack(">I", 0xFFFFFFF0) + b"\x04" + b"A" * 64)
        return _read_until_closed(s)


def long_version_line(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"SSH-2.0-" + b"x" * 100_000 + b"\r\n")
        return _read_until_closed(s)


def test_garbage_and_auth_flood_do_not_disturb_a_live_session(ssh_gateway: GatewayHarness):  # noqa: F811
    h = ssh_gateway
    good = h.token(shell=True)

    async def go():
        async with await h.connect(good) as conn:
            proc = await conn.create_process("cat", encoding=None)
            proc.stdin.write(b"ping-1\n")
            assert await proc.stdout.readline() == b"ping-1\n"

            # Raw garbage from many sockets at once (blocking sockets in threads).
            results: list[bytes] = []
            attacks = [
                garbage_before_banner,
                garbage_after_banner,
                huge_packet_length,
                long_version_line,
            ] * 10
            threads = [
                threading.Thread(target=lambda f=f: results.append(f(h.port))) for f in attacks
            ]
            for t in threads:
                t.start()

            # A flood of failed authentications from another source address.
            async def bad_auth(i: int) -> str:
                try:
                    await h.connect(f"garbage-token-{i}", local_addr=("127.0.0.3", 0))
                except (asyncssh.Error, OSError) as e:
                    return str(getattr(e, "reason", e))
                return "accepted?!"

            reasons = await asyncio.gather(*(bad_auth(i) for i in range(60)))
            for t in threads:
                await asyncio.to_thread(t.join, 30)
            assert len(results) == len(attacks)
            assert all(r.startswith(b"SSH-2.0-breakglass") for r in results)
            assert "accepted?!" not in reasons
            assert any("answer delayed: too many failed attempts" in r for r in reasons)

            # A valid grant from the flooding address (an office behind NAT) is still
            # accepted at once: the failures slow their author, they lock nobody out...
            t0 = time.monotonic()
            async with await h.connect(good, local_addr=("127.0.0.3", 0)) as conn3:
                res = await conn3.run("echo nat-ok")
                assert res.stdout == "nat-ok\n"
            assert time.monotonic() - t0 < 3

            # ...and the live session, and new sessions from elsewhere, are unaffected.
            proc.stdin.write(b"ping-2\n")
            assert await proc.stdout.readline() == b"ping-2\n"
            async with await h.connect(good) as conn2:
                res = await conn2.run("echo still-serving")
                assert res.stdout == "still-serving\n"
            proc.stdin.write_eof()
            await proc.wait()

    asyncio.run(go())


def test_many_channels_and_unknown_requests(ssh_gateway: GatewayHarness):  # noqa: F811
    h = ssh_gateway
    tok = h.token(commands=["echo *"])

    async def go():
        async with await h.connect(tok) as conn:
            outs = await asyncio.gather(*(conn.run(f"echo {i}") for i in range(40)))
            assert [o.stdout for o in outs] == [f"{i}\n" for i in range(40)]
            # subsystems other than sftp, and x11 / agent requests, are refused
            res = await conn.run(subsystem="netconf")
            assert res.exit_status == 126

    asyncio.run(go())
