"""Search: a keystroke sequence, an output string, a statement, a command."""

from __future__ import annotations

import pytest

from breakglass.recorder.search import search_recording
from tests.test_index_helpers import (
    Recorder,
    write_exec_session,
    write_pg_session,
    write_shell_session,
)

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def rec(tmp_path):
    return Recorder(tmp_path / "recordings")


def test_keystroke_sequence_typed_one_key_per_event(rec):
    path = write_shell_session(rec)
    hits = search_recording(path, "cat /etc/motd", where=["input"])
    assert len(hits) == 1
    h = hits[0]
    assert h.where == "input" and h.session_id == path.stem and h.offset >= 0
    assert h.context.startswith("cat /etc/motd\\r")
    # the hit points at the first key of the sequence
    from breakglass.recorder.reader import read_events

    ev = next(e for e in read_events(path) if e["seq"] == h.seq)
    assert ev["kind"] == "input" and ev["data"] == b"c"


def test_output_string_split_across_chunks(rec):
    path = write_shell_session(rec)
    hits = search_recording(path, "maintenance window", where=["output"])
    assert [h.where for h in hits] == ["output"]
    assert search_recording(path, "cat /etc/motd", where=["output"])  # the echo
    assert not search_recording(path, "MAINTENANCE", where=["output"])
    assert search_recording(path, "MAINTENANCE", where=["output"], ignore_case=True)


def test_statement_and_parameters(rec):
    path = write_pg_session(rec)
    hits = search_recording(path, "from orders where id", where=["queries"])
    assert {h.kind for h in hits} == {"parse", "query"}
    denied = search_recording(path, "delete from orders")
    assert [(h.where, h.denied) for h in denied] == [("queries", True)]
    assert search_recording(path, "42", where=["queries"])  # a bound parameter
    assert not search_recording(path, "orders", where=["input", "output", "commands"])


def test_commands(rec):
    path = write_exec_session(rec, denials=1)
    hits = search_recording(path, "rm -rf", where=["commands"])
    assert [(h.kind, h.denied) for h in hits] == [("decision", True)]
    hits = search_recording(path, "systemctl status", where=["commands"])
    assert {h.kind for h in hits} == {"decision", "upstream"}


def test_sftp_operations_are_found_as_commands(rec):
    w = rec.open(protocol="ssh")
    w.event("sftp", channel="0", op="open", path="/etc/app.conf", flags="write", status="ok")
    w.event("sftp", channel="0", op="rename", path="/tmp/a", to="/etc/cron.d/x", status="ok")
    w.close("client disconnected")
    hits = search_recording(w.path, "/etc/cron.d", where=["commands"])
    assert [(h.kind, h.context) for h in hits] == [("sftp", "rename /tmp/a /etc/cron.d/x")]
    assert [h.kind for h in search_recording(w.path, "open /etc/app")] == ["sftp"]
    assert not search_recording(w.path, "/etc/app.conf", where=["input", "output"])
