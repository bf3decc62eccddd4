"""The forwarding gate is checked after a batch is written; if the expiry watch ends the
recording in between, the gate still holds the batch back, and the recording must say so
(found by tests/test_expiry_load.py under load: a query timed 27 µs after exp, unmarked)."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from breakglass.policy.grants import Grant, GrantTarget
from breakglass.proxy.sessions import Session
from breakglass.recorder.reader import read_events
from breakglass.recorder.writer import RecordingWriter
from tests.factories import grant_claims


def _session(tmp_path, exp_in: float) -> tuple[Session, RecordingWriter, float]:
    rec = RecordingWriter.create(
        tmp_path / "s.rec", {"session_id": "s1"}, Ed25519PrivateKey.generate(), "k"
    )
    exp = rec.now() + exp_in
    grant = Grant(
        claims=grant_claims(exp=exp), targets=(GrantTarget("postgres", "orders", db_user="app_ro"),)
    )
    tasks: set = set()  # what the registry keeps a reference to (the session's ending)
    registry = SimpleNamespace(revoked=set(), keep=lambda task: tasks.add(task) or task)
    session = Session(
        registry, protocol="postgres", grant=grant, target=grant.targets[0], client="127.0.0.1",
        recorder=rec, session_id="s1",
    )  # fmt: skip
    return session, rec, exp


def _expiry_watch_ends(session: Session) -> None:
    t = threading.Thread(target=session._end_recording, args=(session.expiry(),))
    t.start()
    t.join(10)


def _held(events: list[dict]) -> set[int]:
    return {
        q for e in events if e["kind"] == "not_forwarded" for q in range(e["since_seq"], e["seq"])
    }


async def test_a_batch_written_after_exp_is_marked_held_when_the_watch_ends_first(tmp_path):
    session, rec, exp = _session(tmp_path, 0.05)
    time.sleep(max(0.0, exp - rec.now()))  # until the grant's exp, by the recording's clock
    first = rec.event_count
    rec.append_encoded("query", b'"n":1,"text":"select 1","protocol":"simple"')  # the loop
    rec.write()
    _expiry_watch_ends(session)  # before the loop's second gate check
    assert not session.forwarding_allowed(recorded_since=first)  # the gate holds it back
    rec.close("test")
    events = list(read_events(rec.path))
    [query] = [e for e in events if e["kind"] == "query"]
    assert query["t"] >= exp and query["seq"] in _held(events)


async def test_a_batch_written_before_exp_is_not_marked(tmp_path):
    session, rec, exp = _session(tmp_path, 0.2)
    rec.append_encoded("query", b'"n":1,"text":"select 1","protocol":"simple"')
    rec.write()
    assert session.forwarding_allowed(recorded_since=rec.event_count - 1)  # forwarded
    time.sleep(max(0.0, exp - rec.now()))
    _expiry_watch_ends(session)
    rec.close("test")
    events = list(read_events(rec.path))
    [query] = [e for e in events if e["kind"] == "query"]
    assert query["t"] < exp and not _held(events)
