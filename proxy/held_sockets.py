"""A session's sockets, held so that a thread other than the event loop can cut them off.

The event loop closes a session's connections when it ends; a loop that is saturated (or
starved of CPU by the rest of the host) gets to that late. The expiry watch, a thread of its
own, then shuts the held sockets down (``shutdown(2)``: both peers see the connection closed)
so that no connection outlives its session by more than a second, whatever the load.

Each socket is held as a duplicate descriptor: while held, its number cannot be reused by
another connection, so the watch can never cut the wrong one. The loop releases them as soon
as it closes the connections itself (the duplicates then close too).
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from typing import Any


class HeldSockets:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._socks: dict[int, socket.socket] = {}
        self._released = False

    def hold(self, transport: Any) -> int | None:
        """Hold the socket under ``transport`` (or an asyncssh connection); a key for
        :meth:`drop`, or None when it has no socket (any longer)."""
        sock = transport.get_extra_info("socket") if transport is not None else None
        if sock is None:
            return None
        try:
            dup = socket.socket(fileno=os.dup(sock.fileno()))
        except (OSError, ValueError):  # already closed: nothing to hold
            return None
        with self._lock:
            if not self._released:
                self._socks[dup.fileno()] = dup
                return dup.fileno()
        dup.close()
        return None

    def shutdown(self) -> int:
        """Shut every held socket down both ways; how many it shut. Thread-safe."""
        n = 0
        with self._lock:
            for s in self._socks.values():
                with contextlib.suppress(OSError):  # the peer already went away
                    s.shutdown(socket.SHUT_RDWR)
                    n += 1
        return n

    def drop(self, key: int | None) -> None:
        """One connection was closed by the loop (e.g. the upstream one): let go of it."""
        with self._lock:
            s = self._socks.pop(key, None) if key is not None else None
        if s is not None:
            s.close()

    def release(self) -> None:
        """The loop closes the connections itself: let go of all (idempotent)."""
        with self._lock:
            self._released = True
            socks, self._socks = self._socks, {}
        for s in socks.values():
            s.close()
