"""The session index: metadata, counts, integrity, filters, rebuild, missing recordings."""

from __future__ import annotations

import os
import time

import pytest

from breakglass.recorder.index import (
    LIVE,
    MISSING,
    OK,
    SessionFilter,
    SqliteIndex,
    merge_live,
    refresh,
    summarize_recording,
)
from tests.test_index_helpers import (
    Recorder,
    tamper,
    write_exec_session,
    write_pg_session,
    write_shell_session,
)

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def rec(tmp_path):
    return Recorder(tmp_path / "recordings")


@pytest.fixture
def index(tmp_path):
    with SqliteIndex(tmp_path / "index.db") as idx:
        yield idx


def test_summary_of_each_kind_of_session(rec):
    pg = summarize_recording(write_pg_session(rec, user="erin"), rec.trusted)
    assert (pg.protocol, pg.user, pg.target, pg.integrity) == ("postgres", "erin", "shop", OK)
    assert pg.statements == 3 and pg.denials == 1
    assert pg.end_reason == "client disconnected" and pg.ended_at >= pg.started_at
    assert pg.grant_jti and pg.template == "ssh-shell" and pg.reason == "demo"

    ex = summarize_recording(write_exec_session(rec, denials=2), rec.trusted)
    assert ex.commands == 1 and ex.denials == 2 and ex.integrity == OK

    bg = summarize_recording(write_shell_session(rec, breakglass=True), rec.trusted)
    assert bg.breakglass and bg.ticket == "INC-7" and bg.reason == "incident"
    assert bg.duration is not None and bg.duration >= 0


def test_live_recording_is_live_then_ok_once_finalized(rec, index):
    w = rec.open()
    w.output(b"hello", "0")
    w.flush()
    refresh(index, rec.dir, rec.trusted)
    (row,) = index.query(SessionFilter(live=True))
    assert row.integrity == LIVE and row.live and row.ended_at is None
    w.close("client disconnected")
    refresh(index, rec.dir, rec.trusted)
    assert index.query(SessionFilter(live=True)) == []
    row = index.get(row.session_id)
    assert row.integrity == OK and not row.live and row.end_reason == "client disconnected"


def test_filters_and_newest_first(rec, index):
    now = time.time()
    old = write_pg_session(rec, user="erin", started_at=now - 3 * 86400)
    bg = write_shell_session(rec, user="ina", breakglass=True, started_at=now - 3600)
    den = write_exec_session(rec, user="erin", target="web-2", started_at=now - 60, jti="J1")
    refresh(index, rec.dir, rec.trusted)
    ids = [r.session_id for r in index.query(SessionFilter())]
    assert ids == [den.stem, bg.stem, old.stem]
    assert [r.session_id for r in index.query(SessionFilter(user="erin"))] == [den.stem, old.stem]
    assert [r.session_id for r in index.query(SessionFilter(target="web-2"))] == [den.stem]
    assert [r.session_id for r in index.query(SessionFilter(since=now - 86400))] == [
        den.stem,
        bg.stem,
    ]
    assert [r.session_id for r in index.query(SessionFilter(until=now - 86400))] == [old.stem]
    assert [r.session_id for r in index.query(SessionFilter(grant="J1"))] == [den.stem]
    assert [r.session_id for r in index.query(SessionFilter(breakglass=True))] == [bg.stem]
    assert {r.session_id for r in index.query(SessionFilter(denied=True))} == {den.stem, old.stem}
    assert index.resolve(den.stem[-10:]).session_id == den.stem


def test_tampered_recording_flagged_even_with_mtime_restored(rec, index):
    path = write_shell_session(rec)
    refresh(index, rec.dir, rec.trusted)
    assert index.get(path.stem).integrity == OK
    st = os.stat(path)
    tamper(path, b'"rows":40', b'"rows":41')  # one byte of the resize event
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # hide the edit from mtime
    report = refresh(index, rec.dir, rec.trusted)
    row = index.get(path.stem)
    assert row.integrity == "altered", row.problem_message
    assert [s.session_id for s in report.failed] == [path.stem]


def test_deleted_recording_is_missing_and_rebuild_finds_it_from_the_audit_log(rec, index):
    keep = write_pg_session(rec)
    gone = write_exec_session(rec, user="mallory")
    refresh(index, rec.dir, rec.trusted)
    gone.unlink()
    report = refresh(index, rec.dir, rec.trusted)
    assert index.get(gone.stem).integrity == MISSING and report.missing == 1
    # rebuilt from the recordings alone: the deleted one is only known from the audit log
    audit = [{"session": gone.stem, "user": "mallory", "target": "web-1", "t": time.time()}]
    refresh(index, rec.dir, rec.trusted, rebuild=True, audit_sessions=audit)
    rows = {r.session_id: r for r in index.all()}
    assert rows[keep.stem].integrity == OK
    assert rows[gone.stem].integrity == MISSING and rows[gone.stem].user == "mallory"


def test_header_naming_another_session_is_renamed(rec, index):
    w = rec.open(session_id="s-real")
    w.close("closed")
    os.rename(w.path, rec.dir / "s-other.rec")
    refresh(index, rec.dir, rec.trusted)
    row = index.get("s-other")
    assert row.integrity == "renamed"
    assert "header names session 's-real'" in row.problem_message


def test_merge_live_marks_dead_writers_and_adds_gateway_counters(rec, index):
    live = rec.open(user="erin")
    live.flush()
    dead = rec.open(user="bob")
    dead.flush()
    refresh(index, rec.dir, rec.trusted)
    rows = index.query(SessionFilter())
    gw = [
        {
            "id": live.header["session_id"],
            "protocol": "ssh",
            "commands": 4,
            "denials": 2,
            "started_at": time.time(),
        }
    ]
    merged = {r.session_id: r for r in merge_live(rows, gw, flt=SessionFilter(), gateway="test-gw")}
    assert merged[live.header["session_id"]].live
    assert merged[live.header["session_id"]].denials == 2
    assert merged[dead.header["session_id"]].integrity == "unfinalized"
    live.close("x")
    dead.close("x")
