"""The committer: a few threads that make every live recording durable.

A recording's bytes reach the kernel on the relay's own thread, before they are forwarded
(``RecordingWriter.write``). What is left is background work with deadlines: fsync a dirty
file at most ``commit_interval`` after its first unsynced write (group commit), and sign a
checkpoint when the oldest unsigned event is ``checkpoint_interval`` old. This module runs that
work for all recordings of a process on a small pool of threads sharing one deadline heap,
rather than one thread per recording: with a thousand sessions a thread each meant a thousand
wake-ups (and GIL hand-offs with the event loop) per round of statements; here one wake-up
serves every recording due in that round (``RecordingWriter._commit_due`` puts their fsyncs on
a common grid).

A writer asks to be served with :func:`schedule` (``when``, in ``time.monotonic`` seconds); the
earliest request counts, and a served writer says when it needs serving next. Serving is
``writer._serve()``: it checks its own state, so a stale or early call does no harm.
"""

from __future__ import annotations

import heapq
import itertools
import os
import threading
import time
from typing import Protocol

__all__ = ["BEHIND", "THREADS", "lag", "schedule", "threads"]

#: Threads serving all recordings, at most. One does the work while it keeps up: every thread
#: that waits for the GIL after an fsync takes it from the event loop (1,000 sessions, four
#: paired runs: one thread used 10-27 % less gateway CPU than four). Another
#: is started whenever a recording is served more than ``BEHIND`` seconds late (a slow disk:
#: fsync releases the GIL, so several run at once and the journal commits them together).
THREADS = 4
BEHIND = 1.0
#: An extra thread with nothing to do for this long ends (one always stays).
IDLE_EXIT = 10.0

_monotonic = time.monotonic
_INF = float("inf")


class Served(Protocol):
    _due: float  # the earliest time it is in the heap for (inf: not queued)

    def _serve(self) -> float | None:
        """Do what is due; return when to be served next (monotonic), or None."""


class _Committer:
    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._heap: list[tuple[float, int, Served]] = []
        self._order = itertools.count()
        self._threads = 0  # running
        self._waiting = 0
        self._started: list[threading.Thread] = []  # those still running (and tests' view)
        self._names = itertools.count(1)

    def schedule(self, writer: Served, when: float) -> None:
        with self._cond:
            if when >= writer._due:
                return  # already queued for as early
            writer._due = when
            heap = self._heap
            head = heap[0][0] if heap else _INF
            heapq.heappush(heap, (when, next(self._order), writer))
            if self._threads == 0:
                self._start_thread()
            elif when < head:
                self._cond.notify()  # waiting threads sleep until the old head: wake one

    def lag(self) -> float:
        with self._cond:
            heap = self._heap
            while heap and heap[0][0] != heap[0][2]._due:
                heapq.heappop(heap)  # superseded entries say nothing about lateness
            return max(0.0, _monotonic() - heap[0][0]) if heap else 0.0

    def _start_thread(self) -> None:
        self._threads += 1
        thread = threading.Thread(
            target=self._run, name=f"recorder-commit-{next(self._names)}", daemon=True
        )
        # threads that ended (idle) are dropped: a gateway that falls behind now and then
        # for months does not keep a list of them
        self._started = [t for t in self._started if t.is_alive()]
        self._started.append(thread)
        thread.start()

    def _next(self) -> Served | None:
        """Block until a writer is due; take it off the heap. None: this thread is surplus
        (idle for ``IDLE_EXIT`` while others run) and should end."""
        with self._cond:
            heap = self._heap
            idle_since = None
            while True:
                now = _monotonic()
                if heap:
                    when, _, writer = heap[0]
                    delay = when - now
                    if delay <= 0:
                        heapq.heappop(heap)
                        if when != writer._due:
                            continue  # superseded by an earlier request, already served
                        writer._due = _INF
                        if -delay > BEHIND and self._threads < THREADS and not self._waiting:
                            self._start_thread()  # not keeping up: one more at a time
                        return writer
                else:
                    delay = None
                if idle_since is None:
                    idle_since = now
                elif self._threads > 1 and now - idle_since >= IDLE_EXIT:
                    self._threads -= 1
                    return None
                if self._threads > 1 and (delay is None or delay > IDLE_EXIT):
                    delay = IDLE_EXIT
                self._waiting += 1
                self._cond.wait(delay)
                self._waiting -= 1

    def _run(self) -> None:
        while True:
            writer = self._next()
            if writer is None:
                return
            try:
                again = writer._serve()  # failures are the writer's to report (on_failure)
            except Exception:  # noqa: BLE001 - a bug there must not stop every recording's commits
                continue
            if again is not None:
                self.schedule(writer, again)

    def _after_fork(self) -> None:
        """In a forked child the threads are gone: start afresh (the child's recordings, if
        any, are its own; the parent's heap entries are not)."""
        self.__init__()


_COMMITTER = _Committer()
schedule = _COMMITTER.schedule


def threads() -> int:
    """Committer threads running in this process (a metric)."""
    return _COMMITTER._threads


def lag() -> float:
    """Seconds the most overdue fsync or checkpoint has waited past its time (a metric: above
    ``commit_interval`` the disk is not keeping up, and a host crash would lose that much)."""
    return _COMMITTER.lag()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_COMMITTER._after_fork)
