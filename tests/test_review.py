"""Post-incident review and the review/sessions/replay/export/search commands on real recordings."""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from breakglass.cli.review_cmds import os_user
from breakglass.recorder.audit import AuditLog, read_audit
from breakglass.recorder.index import SqliteIndex, refresh
from breakglass.recorder.review import ReviewRefused, load_reviews, record_review, review_queue
from tests.test_export import EXPECTED_TEXT, asciinema
from tests.test_index_helpers import (
    SHELL_OUTPUT,
    Recorder,
    make_workdir,
    run_cli,
    tamper,
    write_pg_session,
    write_shell_session,
)

pytestmark = pytest.mark.timeout(60)

DAY = 86400


@pytest.fixture
def cfg(tmp_path):
    return make_workdir(tmp_path / "bg")


@pytest.fixture
def rec(cfg):
    return Recorder.for_config(cfg)


def cli_json(capsys, *argv: str):
    capsys.readouterr()
    rc = run_cli(list(argv) + ["--json"])
    out = capsys.readouterr().out
    if isinstance(out, bytes):
        out = out.decode()
    return rc, json.loads(out) if out.strip() else None


def text(captured) -> tuple[str, str]:
    return captured.out.decode("utf-8", "replace"), captured.err.decode("utf-8", "replace")


def as_user(monkeypatch, name: str) -> None:
    for var in ("LOGNAME", "USER", "LNAME", "USERNAME"):
        monkeypatch.setenv(var, name)


def test_review_queue_lifecycle(cfg, rec, monkeypatch, capsys):
    c = str(cfg.path)
    me = os_user()  # the reviewer: the real uid running the command (not logged in: os:NAME)
    now = time.time()
    old = write_shell_session(rec, user="ina", breakglass=True, started_at=now - 2 * DAY)
    new = write_shell_session(rec, user="ina", breakglass=True, started_at=now - 60)
    mine = write_shell_session(rec, user=me, breakglass=True, started_at=now - 30)
    write_pg_session(rec, user="erin")  # not break-glass: never queued

    rc, items = cli_json(capsys, "-c", c, "review", "list")
    assert rc == 0
    assert [(i["session"]["session_id"], i["status"]) for i in items] == [
        (old.stem, "overdue"),
        (new.stem, "pending"),
        (mine.stem, "pending"),
    ]
    rc, items = cli_json(capsys, "-c", c, "review", "list", "--overdue")
    assert [i["session"]["session_id"] for i in items] == [old.stem]

    # nobody reviews their own session, whatever their environment claims
    as_user(monkeypatch, "sam")
    capsys.readouterr()
    assert run_cli(["-c", c, "review", mine.stem[-10:], "--notes", "all fine"]) == 1
    assert "their own session" in capsys.readouterr().err

    assert run_cli(["-c", c, "review", old.stem, "--notes", "checked: restart only"]) == 0
    rc, items = cli_json(capsys, "-c", c, "review", "list")
    assert [i["session"]["session_id"] for i in items] == [new.stem, mine.stem]
    rc, items = cli_json(capsys, "-c", c, "review", "list", "--all")
    assert [(i["session"]["session_id"], i["status"]) for i in items] == [
        (old.stem, "ok"),
        (new.stem, "pending"),
        (mine.stem, "pending"),
    ]
    (done,) = read_audit(cfg.audit_dir, type="review.done")
    assert (done["session"], done["actor"], done["subject"], done["outcome"]) == (
        old.stem,
        f"os:{me}",
        "ina",
        "ok",
    )


def test_new_session_becomes_overdue_after_the_deadline(cfg, rec):
    s = write_shell_session(rec, user="ina", breakglass=True)
    with SqliteIndex(tmp_index := cfg.state_database.parent / "idx.db") as index:
        refresh(index, cfg.recordings_dir, rec.trusted)
        rows = index.all()
    reviews = load_reviews(cfg.audit_dir, rec.trusted)
    started = rows[0].started_at
    assert [q.status for q in review_queue(rows, reviews, now=started + 3600)] == ["pending"]
    assert [q.status for q in review_queue(rows, reviews, now=started + DAY + 1)] == ["overdue"]
    assert [q.status for q in review_queue(rows, reviews, deadline=60, now=started + 61)] == [
        "overdue"
    ]
    assert s.stem == rows[0].session_id and tmp_index.exists()


def test_forged_review_in_a_tampered_audit_segment_does_not_count(cfg, rec, tmp_path):
    s = write_shell_session(rec, user="ina", breakglass=True)
    with SqliteIndex(tmp_path / "i.db") as index:
        refresh(index, cfg.recordings_dir, rec.trusted)
        (summary,) = index.all()
    audit = AuditLog(cfg.audit_dir, rec.key, rec.key_id)
    record_review(audit, summary, "sam", "follow-up", "looked at it")
    audit.close()
    assert load_reviews(cfg.audit_dir, rec.trusted).by_session[s.stem][0].outcome == "follow-up"
    (seg,) = cfg.audit_dir.glob("*.audit")
    tamper(seg, b'"outcome":"follow-up"', b'"outcome":"ok"       ')
    reviews = load_reviews(cfg.audit_dir, rec.trusted)
    assert reviews.by_session == {} and reviews.untrusted == [seg.name]


def test_review_rules(cfg, rec, tmp_path):
    write_shell_session(rec, user="ina", breakglass=True)
    p = write_shell_session(rec, user="ina", breakglass=True)
    tamper(p, b'"rows":40', b'"rows":41')
    w = rec.open(user="ina", breakglass=True)
    w.flush()
    write_pg_session(rec, user="erin")
    with SqliteIndex(tmp_path / "i.db") as index:
        refresh(index, cfg.recordings_dir, rec.trusted)
        by = {(s.integrity, s.breakglass): s for s in index.all()}
    audit = AuditLog(cfg.audit_dir, rec.key, rec.key_id)
    try:
        with pytest.raises(ReviewRefused, match="not under a break-glass grant"):
            record_review(audit, by[("ok", False)], "sam", "ok", "n")
        with pytest.raises(ReviewRefused, match="still live"):
            record_review(audit, by[("live", True)], "sam", "ok", "n")
        with pytest.raises(ReviewRefused, match="does not verify"):
            record_review(audit, by[("altered", True)], "sam", "ok", "n")
        with pytest.raises(ReviewRefused, match="needs --notes"):
            record_review(audit, by[("ok", True)], "sam", "ok", "  ")
        record_review(audit, by[("altered", True)], "sam", "follow-up", "recording altered!")
    finally:
        audit.close()
        w.close("x")


def test_tampered_recording_flagged_by_sessions_refused_by_replay_and_export(
    cfg, rec, capsysbinary, tmp_path
):
    capsys = capsysbinary
    c = str(cfg.path)
    good = write_shell_session(rec, user="erin")
    bad = write_shell_session(rec, user="mallory")
    tamper(bad, b'"rows":40', b'"rows":41')
    rc, rows = cli_json(capsys, "-c", c, "sessions")
    assert rc == 0
    assert {r["session_id"]: r["integrity"] for r in rows} == {
        good.stem: "ok",
        bad.stem: "altered",
    }
    capsys.readouterr()
    assert run_cli(["-c", c, "sessions"]) == 0
    out, err = text(capsys.readouterr())
    assert "ALTERED" in out and bad.stem in err

    for argv in (["replay", bad.stem], ["export", bad.stem, "--format", "asciicast"]):
        assert run_cli(["-c", c, *argv]) == 3
        out, err = text(capsys.readouterr())
        assert "FAILED verification" in err and out == ""
    assert (
        run_cli(["-c", c, "replay", bad.stem, "--force", "--idle-limit", "0", "--speed", "64"]) == 0
    )
    out, err = text(capsys.readouterr())
    assert "WARNING: THIS RECORDING FAILED VERIFICATION" in err and "maintenance" in out


def test_replay_command_writes_the_recorded_bytes(cfg, rec, capsysbinary):
    c = str(cfg.path)
    path = write_shell_session(rec)
    t = time.monotonic()
    assert run_cli(["-c", c, "replay", path.stem, "--idle-limit", "0.001", "--speed", "4"]) == 0
    assert time.monotonic() - t < 5
    # the recorded bytes, the scroll-region reset where the engineer resized their terminal,
    # and the terminal modes put back at the end (recorder/replay.py)
    from breakglass.recorder.replay import END_RESET, RESIZE_RESET

    want = b"".join(SHELL_OUTPUT)
    resized = len(b"".join(SHELL_OUTPUT[:7]))
    out = capsysbinary.readouterr().out
    assert out == want[:resized] + RESIZE_RESET + want[resized:] + END_RESET
    types = [e["type"] for e in read_audit(cfg.audit_dir, type="recording.")]
    assert types == ["recording.replayed"]


def test_export_command_plays_in_asciinema(cfg, rec, tmp_path):
    path = write_shell_session(rec)
    cast = tmp_path / "out.cast"
    assert (
        run_cli(
            ["-c", str(cfg.path), "export", path.stem, "--format", "asciicast", "-o", str(cast)]
        )
        == 0
    )
    cat = subprocess.run(
        [*asciinema(), "cat", str(cast)], capture_output=True, timeout=20, stdin=subprocess.DEVNULL
    )
    assert cat.returncode == 0 and cat.stdout == EXPECTED_TEXT.encode()


def test_search_and_sessions_filters_through_the_cli(cfg, rec, capsys):
    c = str(cfg.path)
    now = time.time()
    shell = write_shell_session(rec, user="erin", started_at=now - 3 * DAY)
    pg = write_pg_session(rec, user="bob")
    rc, res = cli_json(capsys, "-c", c, "search", "cat /etc/motd", "--in", "input")
    assert rc == 0 and [r["session"] for r in res] == [shell.stem]
    assert res[0]["hits"][0]["where"] == "input"
    rc, res = cli_json(capsys, "-c", c, "search", "maintenance window")
    assert [r["session"] for r in res] == [shell.stem]
    rc, res = cli_json(capsys, "-c", c, "search", "delete from orders", "--in", "queries")
    assert [r["session"] for r in res] == [pg.stem] and res[0]["hits"][0]["denied"]
    rc, res = cli_json(capsys, "-c", c, "search", "maintenance window", "--since", "1d")
    assert rc == 1 and res == []
    searched = read_audit(cfg.audit_dir, type="recording.searched")
    assert len(searched) == 4 and searched[0]["matched"] == [shell.stem]
    assert "cat /etc/motd" not in json.dumps(searched)  # the search text may be a secret
    rc, rows = cli_json(capsys, "-c", c, "sessions", "--since", "1d")
    assert [r["session_id"] for r in rows] == [pg.stem]
    rc, rows = cli_json(capsys, "-c", c, "sessions", "--denied")
    assert [r["session_id"] for r in rows] == [pg.stem]
    rc, rows = cli_json(capsys, "-c", c, "sessions", "--user", "erin")
    assert [r["session_id"] for r in rows] == [shell.stem]
    rc, rows = cli_json(capsys, "-c", c, "sessions", "--live")
    assert rows == []


def test_index_rebuild_command(cfg, rec, capsys):
    c = str(cfg.path)
    write_shell_session(rec)
    rc, report = cli_json(capsys, "-c", c, "index", "--rebuild")
    assert rc == 0 and report["sessions"] == 1 and report["verified"] == 1
    rc, report = cli_json(capsys, "-c", c, "index")
    assert rc == 0 and report["verified"] == 0  # unchanged: not re-verified
