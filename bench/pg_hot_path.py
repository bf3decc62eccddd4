"""The gateway's own work per PostgreSQL transaction, without sockets: split, judge, record
and hand to the kernel a ``pgbench -S`` round trip (simple, extended or prepared), in one
process, so its CPU time is ours alone (no TLS, no loopback, no scheduler noise).

    python bench/pg_hot_path.py [--mode simple|extended|prepared] [--n 20000] [--profile]

Prints CPU µs per transaction (median of --repeat runs). ``--profile`` runs cProfile once and
prints the functions by own time. The recording is verified at the end.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import random
import statistics
import struct
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402

from breakglass.policy.sql_rules import SqlChecker, SqlRules  # noqa: E402
from breakglass.proxy.postgres import codec  # noqa: E402
from breakglass.proxy.postgres.codec import MessageReader  # noqa: E402
from breakglass.proxy.postgres.relay import BOOKKEEPING, Relay  # noqa: E402
from breakglass.recorder.verify import verify_recording  # noqa: E402
from breakglass.recorder.writer import RecordingWriter  # noqa: E402

SQL = "SELECT abalance FROM pgbench_accounts WHERE aid = {};"
PREPARED = "SELECT abalance FROM pgbench_accounts WHERE aid = $1;"


def _msg(t: bytes, body: bytes) -> bytes:
    return t + struct.pack("!I", len(body) + 4) + body


def _response(balance: int) -> bytes:
    """What PostgreSQL answers: RowDescription, DataRow, CommandComplete, ReadyForQuery."""
    field = b"abalance\x00" + struct.pack("!IhIhih", 16400, 3, 23, 4, -1, 0)
    row = struct.pack("!hi", 1, len(str(balance))) + str(balance).encode()
    return (
        _msg(b"T", struct.pack("!h", 1) + field)
        + _msg(b"D", row)
        + _msg(b"C", b"SELECT 1\x00")
        + _msg(b"Z", b"I")
    )


def _bind(statement: str, aid: int) -> bytes:
    value = str(aid).encode()
    head = b"\x00" + statement.encode() + b"\x00" + struct.pack("!hhi", 0, 1, len(value))
    body = head + value + struct.pack("!h", 0)  # text parameter, default result formats
    return _msg(b"B", body)


def _client(mode: str, aid: int) -> bytes:
    if mode == "simple":
        return codec.encode_query(SQL.format(aid))
    describe_execute_sync = _msg(b"D", b"P\x00") + _msg(b"E", b"\x00" + struct.pack("!i", 0))
    describe_execute_sync += _msg(b"S", b"")
    if mode == "extended":
        return codec.encode_parse("", PREPARED) + _bind("", aid) + describe_execute_sync
    return _bind("P0_1", aid) + describe_execute_sync


def _server(mode: str, balance: int) -> bytes:
    if mode == "simple":
        return _response(balance)
    resp = _response(balance)
    bind_complete = _msg(b"2", b"")
    if mode == "extended":
        return _msg(b"1", b"") + bind_complete + resp
    return bind_complete + resp


def run(mode: str, n: int, workdir: Path, profile: bool = False) -> float:
    """CPU µs per transaction for ``n`` transactions through a fresh relay and recording."""
    key = Ed25519PrivateKey.generate()
    path = workdir / f"{mode}-{time.monotonic_ns()}.rec"
    rec = RecordingWriter.create(path, {"bench": "pg_hot_path"}, key, "bench")
    relay = Relay(
        SqlChecker(SqlRules.from_claim({"mode": "read-only"})), rec, allow_everything=False
    )
    client, server = MessageReader(), MessageReader()
    if mode == "prepared":  # the statement pgbench -M prepared parses once per connection
        msgs = client.feed_and_split(codec.encode_parse("P0_1", PREPARED) + _msg(b"S", b""))
        relay.from_client(msgs)
        relay.from_server(server.feed_and_split(_msg(b"1", b"") + _msg(b"Z", b"I")))
    rng = random.Random(1)
    inputs = [
        (_client(mode, rng.randint(1, 100_000)), _server(mode, rng.randint(-5000, 5000)))
        for _ in range(n)
    ]
    prof = cProfile.Profile() if profile else None
    t0 = time.process_time()
    if prof:
        prof.enable()
    for up, down in inputs:
        relay.from_client(client.feed_and_split(up))
        rec.write()
        relay.from_server(*reversed(server.split_kept(down, BOOKKEEPING)))
        rec.write()
    if prof:
        prof.disable()
    used = time.process_time() - t0
    rec.close("bench done")
    result = verify_recording(path, {"bench": key.public_key()})
    if not result.ok:
        raise SystemExit(f"recording does not verify: {result}")
    if prof:
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)
    return used / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mode", default="simple,extended,prepared")
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bg-hot-") as tmp:
        for mode in args.mode.split(","):
            if args.profile:
                run(mode, args.n, Path(tmp), profile=True)
                continue
            runs = [run(mode, args.n, Path(tmp)) for _ in range(args.repeat)]
            print(
                f"{mode:9s} {statistics.median(runs):7.1f} µs CPU per transaction "
                f"(median of {args.repeat}; min {min(runs):.1f})"
            )


if __name__ == "__main__":
    main()
