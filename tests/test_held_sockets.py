"""HeldSockets: what the expiry watch thread cuts off when the event loop is late, and the
rules that keep it from ever cutting a connection that is not the session's."""

from __future__ import annotations

import socket
import threading

import pytest

from breakglass.proxy.held_sockets import HeldSockets


class _Transport:
    """What HeldSockets reads from an asyncio transport or asyncssh connection."""

    def __init__(self, sock: socket.socket | None) -> None:
        self.sock = sock

    def get_extra_info(self, name: str, default=None):
        return self.sock if name == "socket" else default


def _pair() -> tuple[socket.socket, socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as srv:
        client = socket.create_connection(srv.getsockname(), timeout=5)
        ours, _ = srv.accept()
    ours.settimeout(5)
    return ours, client


def test_shutdown_from_another_thread_closes_the_connection_for_the_peer():
    ours, peer = _pair()
    held = HeldSockets()
    assert held.hold(_Transport(ours)) is not None
    t = threading.Thread(target=lambda: held.shutdown())
    t.start()
    t.join(5)
    assert peer.recv(10) == b""  # the peer sees the connection closed
    held.release()
    ours.close()
    peer.close()


def test_a_held_socket_outlives_the_loops_close_until_released():
    """Why the loop must release when it closes a connection itself: the duplicate keeps the
    connection open (and its descriptor number taken) until then."""
    ours, peer = _pair()
    held = HeldSockets()
    held.hold(_Transport(ours))
    ours.close()  # the loop closed its descriptor
    peer.setblocking(False)
    with pytest.raises(BlockingIOError):  # no end of stream: still open (on loopback a FIN
        peer.recv(10)  # would be there by the time close() returned)
    held.release()
    peer.setblocking(True)
    peer.settimeout(5)
    assert peer.recv(10) == b""
    peer.close()


def test_after_release_nothing_is_cut_even_where_a_descriptor_number_is_reused():
    ours, peer = _pair()
    held = HeldSockets()
    held.hold(_Transport(ours))
    ours.close()
    held.release()
    other, other_peer = _pair()  # may take any of the numbers just freed
    assert held.shutdown() == 0
    other_peer.sendall(b"still open")
    assert other.recv(20) == b"still open"
    assert held.hold(_Transport(other)) is None  # released: holds nothing more
    for s in (peer, other, other_peer):
        s.close()


def test_drop_lets_go_of_one_connection_only():
    a, a_peer = _pair()
    b, b_peer = _pair()
    held = HeldSockets()
    key_a = held.hold(_Transport(a))
    held.hold(_Transport(b))
    a.close()
    held.drop(key_a)
    assert a_peer.recv(10) == b""  # closed at once, not at the session's end
    assert held.shutdown() == 1
    assert b_peer.recv(10) == b""
    held.release()
    for s in (b, a_peer, b_peer):
        s.close()


def test_a_transport_without_a_socket_is_skipped():
    held = HeldSockets()
    assert held.hold(_Transport(None)) is None
    assert held.hold(None) is None
    closed, peer = _pair()
    closed.close()
    assert held.hold(_Transport(closed)) is None
    assert held.shutdown() == 0
    peer.close()
