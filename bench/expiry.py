"""Expiry under load: N concurrent PostgreSQL sessions through one gateway process, grants
expiring staggered over a few seconds, each session sending statements (every --interval
seconds, or back to back with --interval 0).

    python bench/expiry.py [--sessions 500] [--interval 0] [--spread 5] [--workers 1]

Reports what issue #11 asks of the gate, from the database's clock and the recordings:
statements answered from an execution at or after their grant's exp (must be 0), query events
recorded at or after exp (must be 0), recording end - exp (p50/p99/p100, must stay <= 1 s),
login time, connection failures, and the gateway's CPU and memory per session.
"""

from __future__ import annotations

import argparse
import asyncio
import ssl
import sys
import tempfile
import time
from pathlib import Path

from common import percentile, process_usage, start_gateway_process, stop

from proxy.demo_setup import build_local_workdir, issue_local_grant
from proxy.throwaway import PostgresServer
from recorder.reader import read_events


def _tls(cert: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(cert))
    ctx.check_hostname = False  # the bench connects to 127.0.0.1; the chain is still verified
    return ctx


async def run(args: argparse.Namespace) -> int:
    import asyncpg

    work = Path(tempfile.mkdtemp(prefix="bench-expiry-"))
    pg = PostgresServer(settings={"max_connections": str(args.sessions + 50)}).start(work)
    try:
        cfg = build_local_workdir(work / "gw", pg=pg, ssh=None, name="bench-gw")
        gw = start_gateway_process(work / "gw/config.toml", cfg.postgres_listen.port, args.workers)
        tls = _tls(work / "gw/keys/gateway_tls.crt")
        cpu0, _ = process_usage(gw.pid)
        logins = asyncio.Semaphore(16)
        login_times: list[float] = []
        failures: list[str] = []

        async def connect(token: str):
            async with logins:
                t = time.monotonic()
                try:
                    c = await asyncpg.connect(
                        host="127.0.0.1",
                        port=cfg.postgres_listen.port,
                        user="erin",
                        password=token,
                        database="shop",
                        ssl=tls,
                        timeout=60,
                    )
                except Exception as e:  # noqa: BLE001 - counted and reported
                    failures.append(type(e).__name__)
                    return None
                login_times.append(time.monotonic() - t)
                return c

        # calibrate: 16 logins now tell how long all of them will take on this machine
        t0 = time.time()
        probe = await asyncio.gather(
            *(connect(issue_local_grant(cfg, "db-readonly", "shop", ttl=600)) for _ in range(16))
        )
        per_login = (time.time() - t0) / 16
        await asyncio.gather(*(c.close() for c in probe if c is not None))
        login_times.clear()
        t_login = time.time()
        start = time.time() + 5 + 2 * per_login * args.sessions
        exps = [start + args.spread * i / args.sessions for i in range(args.sessions)]
        exp_set = set(exps)
        tokens = [issue_local_grant(cfg, "db-readonly", "shop", ttl=3600, exp=e) for e in exps]
        conns = await asyncio.gather(*(connect(t) for t in tokens))
        logged_in = time.time()
        cpu1, rss1 = process_usage(gw.pid)
        late: list[float] = []
        lat: list[float] = []

        async def hammer(conn, exp: float) -> None:
            if conn is None:
                return
            try:
                while True:
                    t = time.monotonic()
                    ran = await conn.fetchval("select extract(epoch from clock_timestamp())")
                    lat.append(time.monotonic() - t)
                    if ran >= exp:
                        late.append(ran - exp)
                    if args.interval:
                        await asyncio.sleep(args.interval)
            except Exception:  # noqa: BLE001 - the session ended at expiry
                pass
            finally:
                conn.terminate()

        if logged_in >= exps[0]:
            print(f"logins took {logged_in - t_login:.1f}s, past the first exp; raise the margin")
        await asyncio.gather(*(hammer(c, e) for c, e in zip(conns, exps, strict=True)))
        cpu2, _ = process_usage(gw.pid)
        await asyncio.sleep(2)  # recordings close (fsync) after the sockets are gone
        stop(gw)
        ends, late_q = [], 0
        for rec in (work / "gw/recordings").glob("*.rec"):
            events = list(read_events(rec))
            exp = events[0]["expires_at"]
            if exp not in exp_set:
                continue  # a calibration session
            held = {
                q
                for e in events
                if e["kind"] == "not_forwarded"
                for q in range(e["since_seq"], e["seq"])
            }
            late_q += sum(
                1 for e in events if e["kind"] == "query" and e["t"] >= exp and e["seq"] not in held
            )
            end = [e["t"] for e in events if e["kind"] == "end"]
            if end:
                ends.append(end[0] - exp)
        n = args.sessions - len(failures)
        print(
            f"sessions: {args.sessions} (workers {args.workers}), connected {n}, failures {len(failures)} {sorted(set(failures))}"
        )
        print(
            f"login: p50 {percentile(login_times, 50) * 1000:.0f} ms, p99 {percentile(login_times, 99) * 1000:.0f} ms"
        )
        print(
            f"statements: {len(lat)}, latency p50 {percentile(lat, 50) * 1000:.2f} ms, p99 {percentile(lat, 99) * 1000:.2f} ms"
        )
        print(
            f"gateway CPU per session (login): {(cpu1 - cpu0) / max(1, n) * 1000:.1f} ms; RSS per session: {rss1 / max(1, n) / 1024:.0f} KiB (whole process / sessions)"
        )
        print(
            f"gateway CPU while running: {cpu2 - cpu1:.1f} s for {len(lat)} statements ({(cpu2 - cpu1) / max(1, len(lat)) * 1e6:.0f} us each)"
        )
        print(
            f"answered from an execution at/after exp: {len(late)}; query events recorded and forwarded at/after exp: {late_q}"
        )
        print(
            f"recording end - exp: p50 {percentile(ends, 50):.3f}s p99 {percentile(ends, 99):.3f}s p100 {max(ends, default=float('nan')):.3f}s over {len(ends)} recordings"
        )
        ok = not late and not late_q and ends and max(ends) <= 1.0 and not failures
        return 0 if ok else 1
    finally:
        pg.stop()


def main() -> int:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the gateway inherits it
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, default=500)
    ap.add_argument("--interval", type=float, default=0.0, help="seconds between statements")
    ap.add_argument("--spread", type=float, default=5.0, help="expiry spread, seconds")
    ap.add_argument("--workers", type=int, default=1)
    return asyncio.run(run(ap.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
