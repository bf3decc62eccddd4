"""A bare uvloop relay for PostgreSQL, used by bench/pg.py as a floor (not a product).

    python bench/bare_tls_relay.py LISTEN_PORT UPSTREAM_PORT CERT KEY

It answers the client's SSLRequest with 'S', terminates TLS with the gateway's certificate and
then copies bytes both ways to a plaintext upstream on 127.0.0.1, with no parsing, judging or
recording. It is what the gateway's transport costs on this machine (Python, uvloop, TLS)
before any of its own work, so ``gateway / bare`` in the benchmark output is the share of
throughput the gateway's judging and recording keep.
"""

from __future__ import annotations

import asyncio
import ssl
import sys

import uvloop

SSL_REQUEST_LEN = 8


class Upstream(asyncio.Protocol):
    def __init__(self, client: Client) -> None:
        self.client = client
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.client.transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.client.transport.close()


class Client(asyncio.Protocol):
    def __init__(self, ctx: ssl.SSLContext, upstream_port: int) -> None:
        self.ctx = ctx
        self.upstream_port = upstream_port
        self.head = b""
        self.upstream: Upstream | None = None
        self.early: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.upstream is None or self.upstream.transport is None:
            if len(self.head) < SSL_REQUEST_LEN:  # the SSLRequest, before TLS
                self.head += data
                if len(self.head) >= SSL_REQUEST_LEN:
                    self.transport.write(b"S")
                    asyncio.ensure_future(self._start())
                return
            self.early.append(data)
            return
        self.upstream.transport.write(data)

    async def _start(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            self.transport = await loop.start_tls(self.transport, self, self.ctx, server_side=True)
            self.upstream = Upstream(self)
            await loop.create_connection(lambda: self.upstream, "127.0.0.1", self.upstream_port)
        except (OSError, ssl.SSLError):
            self.transport.close()
            return
        for data in self.early:
            self.upstream.transport.write(data)
        self.early.clear()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.close()


async def serve(listen_port: int, upstream_port: int, cert: str, key: str) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Client(ctx, upstream_port), "127.0.0.1", listen_port)
    await server.serve_forever()


if __name__ == "__main__":
    listen, upstream, cert_path, key_path = sys.argv[1:5]
    uvloop.run(serve(int(listen), int(upstream), cert_path, key_path))
