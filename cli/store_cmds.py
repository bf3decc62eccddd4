"""``breakglass verify s3://...``, ``verify --anchors s3://... FILES`` and ``breakglass store pull``:
the reading side of the object store (read-only credentials are enough)."""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from breakglass.cli.output import CliError, emit_json
from breakglass.proxy.config import Config, load_config
from breakglass.proxy.context import trusted_recorder_keys
from breakglass.recorder.store import StoreConfig, StoreError, parse_url

if TYPE_CHECKING:
    from breakglass.recorder.anchor_verify import StoreView

_SESSION = re.compile(r"\d{8}T\d{6}Z-[0-9a-f]+(\.rec)?\Z|.+\.(rec|audit)\Z")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "store",
        help="read recordings and audit segments from the object store",
        description="Work with the S3 store of [recorder.store] (or any s3:// URL; endpoint and "
        "credentials from the config's [recorder.store] when the bucket matches, else from the "
        "AWS environment: AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ...).",
    )
    ssub = p.add_subparsers(dest="store_command", metavar="COMMAND")
    ssub.required = True
    q = ssub.add_parser(
        "pull",
        help="rebuild the store's recordings and audit segments in a local directory",
        description="Download s3://BUCKET/PREFIX[/SESSION] into DIR/recordings and DIR/audit "
        "(first, locked version of every object; cached by version). Every reading command then "
        "works on DIR: point [recorder] directory/audit_directory at it, or verify DIR.",
    )
    q.add_argument("url", metavar="s3://BUCKET/PREFIX[/SESSION]")
    q.add_argument("directory", metavar="DIR")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_pull)


def store_for(url: str, cfg: Config | None) -> tuple[StoreConfig, str | None]:
    """The store settings for ``url``, and the session it names (if its last part is one)."""
    try:
        bucket, prefix = parse_url(url)
    except StoreError as e:
        raise CliError(str(e)) from None
    only = None
    base = cfg.store if cfg is not None and cfg.store is not None else None
    head, _, last = prefix.rpartition("/")
    if last and (
        _SESSION.match(last) or (base is not None and base.bucket == bucket and base.prefix == head)
    ):
        only, prefix = last, head
    if base is not None and base.bucket == bucket:
        return StoreConfig(**{**base.__dict__, "prefix": prefix}), only
    return StoreConfig(bucket=bucket, prefix=prefix), only


def _config(args: argparse.Namespace) -> Config | None:
    try:
        return load_config(args.config)
    except Exception:  # noqa: BLE001 - pulling needs no config
        return None


def cmd_pull(args: argparse.Namespace) -> int:
    from breakglass.recorder.store_read import pull

    store, only = store_for(args.url, _config(args))
    try:
        res = asyncio.run(pull(store, Path(args.directory), only=only, anchors=False))
    except StoreError as e:
        raise CliError(str(e)) from None
    files = list(res.files.values())
    if args.json:
        emit_json(
            [
                {
                    "area": f.area,
                    "name": f.name,
                    "path": str(f.path),
                    "bytes": f.size,
                    "segments": f.segments,
                    "problems": f.problems,
                }
                for f in files
            ]
        )
    else:
        for f in files:
            print(f"{f.area}/{f.name}  {f.size} bytes in {f.segments} segment(s)")
            for p in f.problems:
                print(f"  ! {p}")
        print(f"{len(files)} file(s) in {args.directory}")
    return 1 if any(f.problems for f in files) else 0


def cmd_verify(args: argparse.Namespace) -> int:
    """``verify`` with s3:// URLs among the paths, or ``--anchors``."""
    from breakglass.cli.record_cmds import recording_files
    from breakglass.recorder.anchor_verify import check_local, verify_store
    from breakglass.recorder.store_read import pull

    cfg = load_config(args.config)
    keys = trusted_recorder_keys(cfg)
    rows: list[dict] = []
    urls = [p for p in args.paths if p.startswith("s3://")]
    local = recording_files([p for p in args.paths if not p.startswith("s3://")])
    try:
        for url in urls:
            store, only = store_for(url, cfg)
            with tempfile.TemporaryDirectory(prefix="breakglass-verify-") as tmp:
                _, verdicts = asyncio.run(verify_store(store, Path(tmp), keys, only))
            if not verdicts:
                raise CliError(f"{url}: no recordings or audit segments found")
            for v in verdicts:
                rows.append(
                    {
                        "path": f"{store.url}/{v.area}/{v.name}",
                        **v.to_dict(),
                        "message": "; ".join(v.messages),
                    }
                )
        if local:
            anchors_url = getattr(args, "anchors", None) or (cfg.store.url if cfg.store else None)
            if anchors_url is None:
                raise CliError("--anchors s3://BUCKET/PREFIX is needed to check local files")
            store, _ = store_for(anchors_url, cfg)
            from breakglass.recorder.verify import verify_recording

            with tempfile.TemporaryDirectory(prefix="breakglass-verify-") as tmp:
                pulled = asyncio.run(pull(store, Path(tmp), segments=False))
            for path, a in check_local(local, pulled):
                r = verify_recording(path, keys)
                ok = r.ok and a.ok
                problem = a.problem if not a.ok else r.problem
                rows.append(
                    {
                        "path": str(path),
                        "ok": ok,
                        "problem": problem,
                        "message": f"{r.message}; {a.message}",
                        "events": r.events,
                        "checkpoints": r.checkpoints,
                        "anchors": a.anchored,
                    }
                )
    except StoreError as e:
        raise CliError(str(e)) from None
    failed = [r for r in rows if not r["ok"]]
    if args.json:
        emit_json(rows)
    else:
        for r in rows:
            print(f"{'OK  ' if r['ok'] else 'FAIL'}  {r['path']}  {r['message']}")
        print(f"{len(rows) - len(failed)} ok, {len(failed)} failed")
    return 1 if failed else 0


# ------------------------------------------------------------ reading commands on the store


def store_source(cfg: Config, url: str | None) -> tuple[Config, StoreView, str | None]:
    """Read ``url`` (default: ``[recorder.store] url``) as reading commands read a directory:
    pull it into this user's cache (:func:`recorder.store_read.cache_dir`, only what changed
    is fetched), check it against the bucket's history and the off-host anchors, and return
    a config whose recordings, audit log and session index are that copy, the store's
    verdicts, and the session the URL names (if any). Store-level problems that belong to no
    recording (audit segments, foreign objects) are printed as warnings."""
    import dataclasses

    from breakglass.recorder.anchor_verify import open_view
    from breakglass.recorder.store_read import cache_dir

    if not url:
        if cfg.store is None:
            raise CliError("--store needs s3://BUCKET/PREFIX (no [recorder.store] in the config)")
        url = cfg.store.url
    store, only = store_for(url, cfg)
    try:
        cache = cache_dir(store)
    except OSError as e:
        raise CliError(
            f"cannot create the store cache ({e.strerror}: {e.filename}); set XDG_CACHE_HOME "
            "to a directory of yours"
        ) from None
    try:
        view = asyncio.run(open_view(store, cache, trusted_recorder_keys(cfg)))
    except StoreError as e:
        raise CliError(str(e)) from None
    for v in view.problems:
        print(
            f"breakglass: warning: store {store.url}: {v.area}/{v.name}: "
            f"{v.problem or 'failed'}: {'; '.join(v.messages)}",
            file=sys.stderr,
        )
    rcfg = dataclasses.replace(
        cfg,
        recordings_dir=cache / "recordings",
        audit_dir=cache / "audit",
        raw={**cfg.raw, "index": {"database": str(cache / "index.db")}},
    )
    return rcfg, view, only


def apply_verdicts(index, view: StoreView, failed: list, facts=None) -> None:
    """Add the store's verdicts to the index rows of ``view``'s copy: a recording the store
    holds with a tampering attempt, a gap, or heads that do not match their anchors is not
    shown as fine, whatever its own chain says. (Rows that are not ok are re-checked on every
    refresh, so this is applied again each time.)

    A recording the store holds up to a checkpoint, without its trailer, whose session the
    store's audit log (``facts``) does not say ended, is a session still running (or whose
    gateway was lost): listed as live, as the local file of a running session is; ``sessions``
    then asks the gateway, which makes it ``unfinalized`` if it does not know it."""
    from breakglass.recorder.anchor_verify import LOST
    from breakglass.recorder.index import LIVE, OK
    from breakglass.recorder.verify import TRUNCATED

    by_id = {s.session_id: s for s in index.all()}
    for sid, v in view.recordings.items():
        s = by_id.get(sid)
        if s is None:
            continue
        text = "; ".join(v.messages)
        sf = facts.sessions.get(sid) if facts is not None else None
        if (
            s.integrity == TRUNCATED
            and s.problem_message.startswith("truncated after checkpoint")
            and "not covered by a signature" not in s.problem_message
            and v.problem in (None, LOST)
            and facts is not None
            and sf is not None
            and sf.start is not None
            and sf.end is None
        ):
            s.integrity, s.live = LIVE, True
            s.problem_message = (
                f"in the store through its last checkpoint ({s.problem_message.split(' after ')[1]}): "
                "the session is running, or its gateway stopped before uploading the rest"
                + (f"; {text}" if text else "")
            )
            index.upsert(s)
            failed[:] = [f for f in failed if f.session_id != sid]
            continue
        if v.store_ok:
            continue
        if s.integrity in (OK, LIVE):
            s.integrity, s.live = v.problem or "tampered", False
            s.problem_message = f"in the store: {text}"
        elif text not in s.problem_message:
            s.problem_message = f"{s.problem_message}; in the store: {text}"
        else:
            continue
        index.upsert(s)
        if all(f.session_id != sid for f in failed):
            failed.append(s)
