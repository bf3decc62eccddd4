"""Run the gateway with its PostgreSQL relay steps timed: where one transaction's CPU goes
between real sockets (``bench/pg.py --steps`` starts it and prints the figures).

    python bench/step_times.py SNAPSHOT_FILE [breakglass arguments ...]

``bench/pg_hot_path.py`` times the same code in a tight loop, where it runs on warm CPU
caches; between real sockets each step costs several times that, and this shows how much.
Each timed step is wrapped to read the main thread's CPU clock (``time.thread_time``, a
system call) before and after it. That costs about 2-3 us per call, measured at start on a
no-op (``inside_us``: within the interval it measures; ``outside_us``: in the caller) and put
in the snapshot, so that ``bench/pg.py`` can subtract it from each step's own time; the
instrumented gateway is still slower than the real one, and on cold caches the timing costs
more than the calibration says. On SIGUSR1 the totals so far are
written to SNAPSHOT_FILE (JSON, replaced atomically, with a ``seq`` that counts snapshots).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

_thread_time = time.thread_time
CPU: dict[str, float] = {}  # inclusive: the step and the timed steps it calls
CALLS: dict[str, int] = {}
CHILD_CPU: dict[str, float] = {}  # of the timed steps it calls
CHILD_CALLS: dict[str, int] = {}
_active: list[str] = []


def timed(step: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn``, adding the main thread's CPU time spent in it to ``CPU[step]`` (and to its
    caller's ``CHILD_CPU``, when a timed step calls it)."""
    CPU[step] = CHILD_CPU[step] = 0.0
    CALLS[step] = CHILD_CALLS[step] = 0

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        _active.append(step)
        t0 = _thread_time()
        try:
            return fn(*args, **kwargs)
        finally:
            spent = _thread_time() - t0
            _active.pop()
            CPU[step] += spent
            CALLS[step] += 1
            if _active:
                caller = _active[-1]
                CHILD_CPU[caller] += spent
                CHILD_CALLS[caller] += 1

    return wrapper


class TimedTransport:
    """A transport whose ``write`` (TLS, the send system call) is timed as "forward write"."""

    def __init__(self, transport: Any, write: Callable[..., Any]) -> None:
        self._transport = transport
        self.write = write

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def install() -> None:
    """Wrap the relay's steps, in the order a byte meets them."""
    from breakglass.policy import sql_rules
    from breakglass.proxy import sessions
    from breakglass.proxy.postgres import codec, relay, server
    from breakglass.recorder import writer

    side = server._Side  # noqa: SLF001 - instrumenting the relay's own callbacks
    side.data_received = timed("callback", side.data_received)
    codec.MessageReader.feed_and_split = timed("split client", codec.MessageReader.feed_and_split)
    codec.MessageReader.split_kept = timed("split upstream", codec.MessageReader.split_kept)
    sessions.Session.forwarding_allowed = timed("gate", sessions.Session.forwarding_allowed)
    relay.Relay.from_client = timed("judge client", relay.Relay.from_client)
    relay.Relay.from_server = timed("judge upstream", relay.Relay.from_server)
    sql_rules.SqlChecker.check = timed("check", sql_rules.SqlChecker.check)
    writer.RecordingWriter._append = timed("record append", writer.RecordingWriter._append)  # noqa: SLF001
    writer.RecordingWriter.write = timed("record write", writer.RecordingWriter.write)
    forward = timed("forward write", lambda transport, data: transport.write(data))
    init = side.__init__

    def side_init(self: Any, conn: Any, judge: Any, out: Any, name: str) -> None:
        init(self, conn, judge, TimedTransport(out, lambda data: forward(out, data)), name)

    side.__init__ = side_init


def wrapper_overhead() -> tuple[float, float]:
    """Seconds one timed call adds, measured on a no-op: (inside the interval it measures,
    outside it). Inside counts in the step's own time, outside in its caller's."""
    n = 20_000
    noop = timed("(overhead)", lambda: None)
    caller = timed("(caller)", lambda: [noop() for _ in range(n)])
    caller()
    inside = CPU["(overhead)"] / n
    outside = CPU["(caller)"] / n - inside
    for d in (CPU, CALLS, CHILD_CPU, CHILD_CALLS):
        del d["(overhead)"], d["(caller)"]
    return max(0.0, inside), max(0.0, outside)


def main() -> None:
    snapshot = Path(sys.argv[1])
    install()
    inside, outside = wrapper_overhead()
    seq = 0

    def write_snapshot(signum: int, frame: Any) -> None:
        nonlocal seq
        seq += 1
        data = {
            "seq": seq,
            "main_thread_cpu": _thread_time(),
            "inside_us": inside * 1e6,
            "outside_us": outside * 1e6,
            "cpu": CPU,
            "calls": CALLS,
            "child_cpu": CHILD_CPU,
            "child_calls": CHILD_CALLS,
        }
        part = snapshot.with_name(snapshot.name + ".part")
        part.write_text(json.dumps(data))
        os.replace(part, snapshot)

    signal.signal(signal.SIGUSR1, write_snapshot)
    from breakglass.cli.main import main as breakglass_main

    sys.exit(breakglass_main(sys.argv[2:]))


if __name__ == "__main__":
    main()
