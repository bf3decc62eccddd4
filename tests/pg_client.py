"""A minimal raw PostgreSQL client over TLS, for sending what real clients never send."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

from breakglass.proxy.postgres import codec
from breakglass.proxy.postgres.codec import Message, MessageReader


def client_tls(cert: Path) -> ssl.SSLContext:
    """Trust the gateway's self-signed certificate (verification stays on)."""
    ctx = ssl.create_default_context(cafile=str(cert))
    ctx.check_hostname = True
    return ctx


class RawClient:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.mr = MessageReader()

    @classmethod
    async def connect(cls, port: int, cert: Path | None = None, *, tls: bool = True) -> RawClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        c = cls(reader, writer)
        if tls:
            writer.write(codec.encode_ssl_request())
            assert await reader.readexactly(1) == b"S"
            await writer.start_tls(client_tls(cert), server_hostname="127.0.0.1")
        return c

    async def login(self, user: str, token: str, database: str = "shop") -> list[Message]:
        self.writer.write(codec.encode_startup({"user": user, "database": database}))
        await self.until(b"R")
        self.writer.write(codec.encode_password(token))
        return await self.until(b"Z", b"E")

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def recv(self, timeout: float = 10) -> list[Message]:
        data = await asyncio.wait_for(self.reader.read(65536), timeout)
        if not data:
            raise ConnectionResetError("closed")
        return self.mr.feed_and_split(data)

    async def until(self, *types: bytes, timeout: float = 10) -> list[Message]:
        got: list[Message] = []
        while True:
            for m in await self.recv(timeout):
                got.append(m)
                if m.type in types:
                    return got

    async def read_all(self, timeout: float = 10) -> bytes:
        """Everything until the server closes."""
        out = b""
        while True:
            data = await asyncio.wait_for(self.reader.read(65536), timeout)
            if not data:
                return out
            out += data

    def close(self) -> None:
        self.writer.close()


def error_of(msgs: list[Message]) -> dict[str, str] | None:
    for m in msgs:
        if m.type == b"E":
            return codec.decode_error_fields(m.body)
    return None
