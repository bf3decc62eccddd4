"""Many sessions through one gateway: N concurrent PostgreSQL sessions, each sending a statement
every --interval seconds (or back to back with --interval 0), grants expiring staggered over
--spread seconds.

    python bench/expiry.py --sessions 1000 --interval 1 --burst --workers 1 2    # issue #17
    python bench/expiry.py [--sessions 500] [--interval 0] [--spread 5]          # issue #11

--burst opens every session at once (no client-side pacing: the listen backlog takes the
burst); without it 16 logins run at a time. --workers 1 2 runs the whole thing once per
value, each with a fresh gateway, and ends with a table of both.

Reported for each run, all from this process's own clock and the gateway's recordings:
- connection set-up time (TCP + TLS + startup + grant check, as the client sees it) p50/p99,
  failures by kind, and the kernel's accept-queue overflow counters during the logins;
- statement latency p50/p99 measured by the client per statement, in the steady state (all
  sessions logged in, before the first exp) and over the whole run; with --direct (default) the
  same client against PostgreSQL directly first, as the anchor;
- gateway CPU per session (ms of CPU per session-second in the steady state, and per
  statement) and RSS per session (added since idle, and whole process / sessions), for each
  gateway process and summed over them with workers > 1;
- expiry: statements answered from an execution at or after their grant's exp, query events
  recorded and forwarded at or after exp (both must be 0), recording end - exp p50/p99/p100
  and connection closed - exp as the client sees it (asyncpg's termination listener, which it
  does not call for a connection it was already closing), both p100 <= 1 s, statements failing before their exp (must be 0).
Exit status 1 if any target is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import ssl
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from common import (
    AcceptQueueWatch,
    describe_interpreter,
    median,
    percentile,
    process_tree_usage,
    start_gateway_process,
    stop,
    tcp_counters,
)

from breakglass.recorder.reader import read_events
from breakglass.throwaway.servers import PostgresServer
from breakglass.throwaway.workdir import build_local_workdir, issue_local_grant

STATEMENT = "select extract(epoch from clock_timestamp())"


def _tls(cert: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(cert))
    ctx.check_hostname = False  # the bench connects to 127.0.0.1; the chain is still verified
    return ctx


def _kind(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e)[:70]}" if str(e) else type(e).__name__


def _ms(v: float) -> str:
    return f"{v * 1000:.1f}" if v == v else "nan"


class Sessions:
    """Opens N connections and runs the statement loop on each; collects the timings."""

    def __init__(self, args: argparse.Namespace, connect_kw: dict) -> None:
        self.args = args
        self.kw = connect_kw
        self.gate = None if args.burst else asyncio.Semaphore(16)
        self.setup: list[float] = []
        self.connect_failures: Counter[str] = Counter()
        self.done: list[tuple[float, float]] = []  # (time finished, latency)
        self.late: list[float] = []  # answered from an execution at/after exp
        self.stmt_failures: Counter[str] = Counter()  # before exp: not an expiry
        self.ended = 0
        self.closed: list[float] = []  # connection closed by the gateway - exp (client's view)

    async def connect(self, password: str | None = None):
        import asyncpg

        kw = dict(self.kw, **({"password": password} if password is not None else {}))

        async def once():
            t = time.monotonic()
            try:
                c = await asyncpg.connect(timeout=120, **kw)
            except Exception as e:  # noqa: BLE001 - counted and reported
                self.connect_failures[_kind(e)] += 1
                return None
            self.setup.append(time.monotonic() - t)
            return c

        if self.gate is None:
            return await once()
        async with self.gate:
            return await once()

    async def run(self, conn, exp: float, until: float) -> None:
        """Statements until the session is ended (at exp) or ``until``, on a fixed grid with
        a random phase so that the sessions do not fire together."""
        if conn is None:
            return
        ours = False  # the close we make ourselves (finally) is not the gateway's

        def closed(_conn) -> None:
            if not ours:
                self.closed.append(time.time() - exp)

        conn.add_termination_listener(closed)
        interval = self.args.interval
        nxt = time.monotonic() + random.random() * interval
        try:
            while time.time() < until:
                if interval:
                    await asyncio.sleep(max(0.0, nxt - time.monotonic()))
                    nxt += interval
                t = time.monotonic()
                try:
                    ran = await conn.fetchval(STATEMENT)
                except Exception as e:  # noqa: BLE001 - ended at expiry, or a failure
                    if time.time() < exp - 0.05:
                        self.stmt_failures[_kind(e)] += 1
                    else:
                        self.ended += 1
                        conn = None  # ended by the gateway: its listener call may be pending
                    return
                self.done.append((time.time(), time.monotonic() - t))
                if ran >= exp:
                    self.late.append(ran - exp)
        finally:
            if conn is not None:
                ours = True
                conn.terminate()

    def latencies(self, t0: float = 0.0, t1: float = float("inf")) -> list[float]:
        return [lat for t, lat in self.done if t0 <= t < t1]


def _setting(text: str, section: str, setting: str) -> str:
    """``text`` (a config) with ``KEY=VALUE`` set in ``[section]``."""
    key = setting.split("=", 1)[0].strip()
    text, found = re.subn(rf"(?m)^{re.escape(key)} = .*$", setting, text, count=1)
    return text if found else text.replace(f"\n[{section}]\n", f"\n[{section}]\n{setting}\n", 1)


def usage_delta(a: dict, b: dict) -> dict[int, tuple[float, int, float]]:
    """pid -> (CPU s between the samples, RSS at b, kernel CPU s between the samples)."""
    return {
        pid: (cpu - a.get(pid, (0.0, 0, 0.0))[0], rss, sys - a.get(pid, (0.0, 0, 0.0))[2])
        for pid, (cpu, rss, sys) in b.items()
    }


async def direct_anchor(args: argparse.Namespace, pg: PostgresServer) -> dict:
    """The same client and statement loop against PostgreSQL itself, for --hold seconds."""
    s = Sessions(args, pg.connect_kwargs("app_ro"))
    conns = await asyncio.gather(*(s.connect() for _ in range(args.sessions)))
    t0 = time.time()
    await asyncio.gather(*(s.run(c, float("inf"), t0 + args.hold) for c in conns))
    lat = s.latencies(t0 + 1, t0 + args.hold)
    return {
        "setup": s.setup,
        "lat": lat,
        "failures": s.connect_failures + s.stmt_failures,
        "rate": len(lat) / max(0.1, args.hold - 1),
    }


async def gateway_run(
    args: argparse.Namespace, pg: PostgresServer, work: Path, workers: int
) -> dict:
    n = args.sessions
    cfg = build_local_workdir(work / f"gw{workers}", pg=pg, ssh=None, name="bench-gw")
    path = work / f"gw{workers}/config.toml"
    text = path.read_text()
    # every session comes from 127.0.0.1: let all of them be logging in at once
    text = _setting(text, "gateway", f"preauth_per_source = {n + 100}")
    text = _setting(text, "gateway", f"preauth_total = {max(1024, n + 100)}")
    for section in ("gateway", "recorder"):  # e.g. commit_interval=1.0: what does it cost?
        for setting in getattr(args, section):
            text = _setting(text, section, setting)
    path.write_text(text.replace("\nworkers = 1\n", f"\nworkers = {workers}\n", 1))
    gw = start_gateway_process(path, cfg.postgres_listen.port, workers)
    try:
        s = Sessions(
            args,
            {
                "host": "127.0.0.1",
                "port": cfg.postgres_listen.port,
                "user": "erin",
                "database": "shop",
                "ssl": _tls(work / f"gw{workers}/keys/gateway_tls.crt"),
            },
        )
        # calibrate: 16 logins now tell how long all of them will take on this machine
        t = time.time()
        probe = await asyncio.gather(
            *(s.connect(issue_local_grant(cfg, "db-readonly", "shop", ttl=600)) for _ in range(16))
        )
        per_login = (time.time() - t) / 16
        await asyncio.gather(*(c.close() for c in probe if c is not None))
        s.setup.clear()
        s.connect_failures.clear()
        idle = process_tree_usage(gw.pid)
        net0 = tcp_counters()
        queue = AcceptQueueWatch(cfg.postgres_listen.port)
        t_login = time.time()
        first = t_login + 5 + 2 * per_login * n + args.hold
        exps = [first + args.spread * i / n for i in range(n)]
        tokens = [issue_local_grant(cfg, "db-readonly", "shop", ttl=3600, exp=e) for e in exps]
        conns = await asyncio.gather(*(s.connect(tok) for tok in tokens))
        logged_in = time.time()
        net1 = tcp_counters()
        queue_peak, backlog = queue.stop()
        after_login = process_tree_usage(gw.pid)
        if logged_in >= first - 3:
            print(f"  logins took {logged_in - t_login:.1f}s, into the steady window; raise --hold")
        window: dict = {}

        async def sample() -> None:  # the steady state: all logged in, none expired
            w0 = time.time() + 1
            w1 = first - 0.5
            await asyncio.sleep(max(0.0, w0 - time.time()))
            a = process_tree_usage(gw.pid)
            await asyncio.sleep(max(0.0, w1 - time.time()))
            window.update(t0=w0, t1=w1, usage=usage_delta(a, process_tree_usage(gw.pid)))

        load_during = os.getloadavg()[0]
        await asyncio.gather(
            sample(), *(s.run(c, e, float("inf")) for c, e in zip(conns, exps, strict=True))
        )
        load_during = max(load_during, os.getloadavg()[0])
        await asyncio.sleep(2)  # recordings close (fsync) after the sockets are gone
    finally:
        stop(gw)
    logged: Counter[str] = Counter()  # the gateway's warnings and errors, by event
    for line in (work / f"gw{workers}/gateway.log").read_text(errors="replace").splitlines():
        try:
            e = json.loads(line)
        except ValueError:  # two workers' lines interleaved
            logged["(unparsed line)"] += 1
            continue
        detail = e.get("error") or e.get("reason") or ""
        logged[f"{e.get('event')}" + (f" ({str(detail)[:60]})" if detail else "")] += 1
    exp_set = set(exps)
    ends, late_q = [], 0
    for rec in (work / f"gw{workers}/recordings").glob("*.rec"):
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
    connected = n - sum(s.connect_failures.values())
    span = window["t1"] - window["t0"]
    steady = s.latencies(window["t0"], window["t1"])
    procs = {}
    for pid, (cpu, rss, _) in window["usage"].items():
        role = "supervisor" if workers > 1 and pid == gw.pid else f"worker {pid}"
        procs[role] = {
            "cpu_ms_per_session_s": cpu / span / max(1, connected / workers) * 1000,
            "core": cpu / span,
            "rss_per_session": (rss - idle.get(pid, (0, 0))[1]) / max(1, connected / workers),
            "rss": rss,
        }
    cpu_total = sum(u[0] for u in window["usage"].values())
    sys_total = sum(u[2] for u in window["usage"].values())
    rss_total = sum(u[1] for u in window["usage"].values())
    rss_idle = sum(u[1] for u in idle.values())
    login_cpu = sum(u[0] for u in after_login.values()) - sum(u[0] for u in idle.values())
    return {
        "workers": workers,
        "connected": connected,
        "connect_failures": s.connect_failures,
        "stmt_failures": s.stmt_failures,
        "net": {k: net1.get(k, 0) - net0.get(k, 0) for k in net1},
        "queue": (queue_peak, backlog),
        "login_wall": logged_in - t_login,
        "setup": s.setup,
        "steady": steady,
        "all": s.latencies(),
        "rate": len(steady) / span,
        "span": span,
        "cpu_ms_per_session_s": cpu_total / span / max(1, connected) * 1000,
        "core": cpu_total / span,
        "kernel": sys_total / max(cpu_total, 1e-9),
        "cpu_us_per_stmt": cpu_total / max(1, len(steady)) * 1e6,
        "login_cpu_ms": login_cpu / max(1, connected) * 1000,
        "rss_per_session": (rss_total - rss_idle) / max(1, connected),
        "rss_whole_per_session": rss_total / max(1, connected),
        "procs": procs,
        "late": s.late,
        "late_q": late_q,
        "ends": ends,
        "closed": s.closed,
        "ended": s.ended,
        "load": load_during,
        "logged": logged,
    }


def offered(r: dict) -> float:
    """Statements per second the connected sessions ask for (back to back: what was served)."""
    return r["connected"] / ARGS.interval if ARGS.interval else r["rate"]


def report(r: dict, direct: dict | None) -> bool:
    w = r["workers"]
    print(f"\n== workers {w}: {args_text()}")
    print(f"  interpreter: {describe_interpreter()}")
    print(
        f"  sessions connected {r['connected']}, connect failures {dict(r['connect_failures']) or 0}, "
        f"statement failures before exp {dict(r['stmt_failures']) or 0}"
    )
    net = r["net"]
    print(
        f"  during the logins (netns-wide): ListenOverflows {net.get('ListenOverflows', '?')}, "
        f"ListenDrops {net.get('ListenDrops', '?')}, OutRsts {net.get('OutRsts', '?')}; "
        f"the gateway's accept queue peaked at {r['queue'][0]} of {r['queue'][1]}; "
        f"all logged in after {r['login_wall']:.1f}s"
    )
    print(
        f"  connection set-up: p50 {_ms(percentile(r['setup'], 50))} ms, p99 {_ms(percentile(r['setup'], 99))} ms,"
        f" max {_ms(max(r['setup'], default=float('nan')))} ms"
        + (
            f" (direct: p50 {_ms(percentile(direct['setup'], 50))}, p99 {_ms(percentile(direct['setup'], 99))})"
            if direct
            else ""
        )
    )
    print(
        f"  statement latency, steady state ({r['span']:.0f}s, {r['rate']:.0f} of {offered(r):.0f} statements/s offered): p50 {_ms(percentile(r['steady'], 50))} ms,"
        f" p99 {_ms(percentile(r['steady'], 99))} ms; whole run p50 {_ms(percentile(r['all'], 50))},"
        f" p99 {_ms(percentile(r['all'], 99))} ms"
        + (
            f" (direct: p50 {_ms(percentile(direct['lat'], 50))}, p99 {_ms(percentile(direct['lat'], 99))} ms at {direct['rate']:.0f}/s)"
            if direct
            else ""
        )
    )
    print(
        f"  gateway CPU: {r['cpu_ms_per_session_s']:.2f} ms per session-second ({r['core'] * 100:.0f} % of a core),"
        f" {r['cpu_us_per_stmt']:.0f} us per statement, {r['kernel'] * 100:.0f} % of it in the kernel; login {r['login_cpu_ms']:.1f} ms per session"
    )
    print(
        f"  gateway RSS per session: {r['rss_per_session'] / 1024:.0f} KiB added since idle,"
        f" {r['rss_whole_per_session'] / 1024:.0f} KiB whole process(es) / sessions"
    )
    if w > 1:
        for role, p in r["procs"].items():
            print(
                f"    {role}: {p['core'] * 100:.0f} % of a core, {p['cpu_ms_per_session_s']:.2f} ms per session-second"
                f" (sessions / workers), RSS {p['rss'] / 2**20:.0f} MiB"
            )
    if r["logged"]:
        print("  gateway log:", "; ".join(f"{k} x{v}" for k, v in r["logged"].most_common(6)))
    ends = r["ends"]
    print(
        f"  answered from an execution at/after exp: {len(r['late'])}; query events recorded and forwarded at/after exp: {r['late_q']}"
    )
    print(
        f"  recording end - exp: p50 {percentile(ends, 50):.3f}s p99 {percentile(ends, 99):.3f}s"
        f" p100 {max(ends, default=float('nan')):.3f}s over {len(ends)} recordings; load average {r['load']:.1f}"
    )
    closed = r["closed"]
    print(
        f"  connection closed - exp (client's view): p50 {percentile(closed, 50):.3f}s"
        f" p99 {percentile(closed, 99):.3f}s p100 {max(closed, default=float('nan')):.3f}s"
        f" over {len(closed)} connections (asyncpg skips its listener for a connection it"
        " was already closing, e.g. on the gateway's FATAL message)"
    )
    failures = sum(r["connect_failures"].values()) + sum(r["stmt_failures"].values())
    if r["rate"] < 0.9 * offered(r):
        print(f"  the gateway did not keep up: {r['rate']:.0f} of {offered(r):.0f} statements/s")
    return bool(
        r["rate"] >= 0.9 * offered(r)
        and not r["late"]
        and not r["late_q"]
        and ends
        and len(ends) == r["connected"]
        and max(ends) <= 1.0
        and closed
        and max(closed) <= 1.0
        and not failures
        and r["queue"][0] < r["queue"][1]
    )


def table(runs: list[dict], direct: dict | None) -> None:
    """The runs side by side, as the README's table."""
    head = "| " + " | ".join([args_text(), *(f"workers = {r['workers']}" for r in runs)]) + " |"
    print("\n" + head + "\n|" + "---|" * (len(runs) + 1))

    def row(name, f):
        print(f"| {name} | " + " | ".join(f(r) for r in runs) + " |")

    row(
        "sessions connected / failures / ListenOverflows (netns-wide)",
        lambda r: (
            f"{r['connected']} / {sum(r['connect_failures'].values()) + sum(r['stmt_failures'].values())}"
            f" / {r['net'].get('ListenOverflows', '?')}"
        ),
    )
    row(
        "connection set-up p50 / p99" + (" (direct)" if direct else ""),
        lambda r: (
            f"{_ms(percentile(r['setup'], 50))} / {_ms(percentile(r['setup'], 99))} ms"
            + (
                f" ({_ms(percentile(direct['setup'], 50))} / {_ms(percentile(direct['setup'], 99))})"
                if direct
                else ""
            )
        ),
    )
    row(
        "statement latency p50 / p99, steady" + (" (direct)" if direct else ""),
        lambda r: (
            f"{_ms(percentile(r['steady'], 50))} / {_ms(percentile(r['steady'], 99))} ms"
            + (
                f" ({_ms(percentile(direct['lat'], 50))} / {_ms(percentile(direct['lat'], 99))})"
                if direct
                else ""
            )
        ),
    )
    row("statements/s served / offered (steady)", lambda r: f"{r['rate']:.0f} / {offered(r):.0f}")
    row(
        "gateway CPU per session-second / per statement / % of a core",
        lambda r: (
            f"{r['cpu_ms_per_session_s']:.2f} ms / {r['cpu_us_per_stmt']:.0f} µs / {r['core'] * 100:.0f} %"
        ),
    )
    row("gateway CPU per login", lambda r: f"{r['login_cpu_ms']:.1f} ms")
    row(
        "RSS per session: added / whole ÷ sessions",
        lambda r: (
            f"{r['rss_per_session'] / 1024:.0f} / {r['rss_whole_per_session'] / 1024:.0f} KiB"
        ),
    )
    row(
        "recording end − exp p50 / p99 / p100",
        lambda r: (
            f"{percentile(r['ends'], 50):.3f} / {percentile(r['ends'], 99):.3f} / {max(r['ends'], default=float('nan')):.3f} s"
        ),
    )
    row(
        "connection closed − exp p50 / p99 / p100 (client's view)",
        lambda r: (
            f"{percentile(r['closed'], 50):.3f} / {percentile(r['closed'], 99):.3f} / {max(r['closed'], default=float('nan')):.3f} s"
        ),
    )
    row("late statements (answered / recorded)", lambda r: f"{len(r['late'])} / {r['late_q']}")
    row("load average during the run", lambda r: f"{r['load']:.1f}")
    print(
        f"one run per column (median of statement p50s: "
        f"{median([percentile(r['steady'], 50) for r in runs]) * 1000:.1f} ms)"
    )


ARGS: argparse.Namespace | None = None


def args_text() -> str:
    a = ARGS
    mode = "burst" if a.burst else "16 at a time"
    every = f"every {a.interval:g}s" if a.interval else "back to back"
    rec = "".join(
        f", [{s}] {' '.join(getattr(a, s))}" for s in ("gateway", "recorder") if getattr(a, s)
    )
    return f"{a.sessions} sessions ({mode}), a statement {every}, exp spread {a.spread:g}s{rec}"


async def run(args: argparse.Namespace) -> int:
    work = Path(tempfile.mkdtemp(prefix="bench-expiry-"))
    pg = PostgresServer(settings={"max_connections": str(args.sessions + 50)}).start(work)
    try:
        print(
            f"load average at start: {' '.join(f'{x:.1f}' for x in os.getloadavg())}; "
            f"somaxconn {Path('/proc/sys/net/core/somaxconn').read_text().strip()}"
        )
        direct = await direct_anchor(args, pg) if args.direct else None
        if direct:
            print(
                f"direct: {args.sessions - sum(direct['failures'].values())} sessions,"
                f" failures {dict(direct['failures']) or 0}"
            )
        runs = [await gateway_run(args, pg, work, w) for w in args.workers]
    finally:
        pg.stop()
    ok = True
    for r in runs:
        ok = report(r, direct) and ok
    table(runs, direct)
    print("targets met" if ok else "TARGETS MISSED (see above)")
    return 0 if ok else 1


def main() -> int:
    import resource

    global ARGS
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the gateway inherits it
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, default=500)
    ap.add_argument("--interval", type=float, default=0.0, help="seconds between statements")
    ap.add_argument("--spread", type=float, default=5.0, help="expiry spread, seconds")
    ap.add_argument(
        "--hold", type=float, default=10.0, help="steady-state seconds before the first exp"
    )
    ap.add_argument("--workers", type=int, nargs="+", default=[1], help="one run per value")
    ap.add_argument("--burst", action="store_true", help="open every session at once")
    ap.add_argument(
        "--no-direct", dest="direct", action="store_false", help="skip the direct anchor"
    )
    ap.add_argument(
        "--gateway",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a [gateway] setting, e.g. listen_backlog=128",
    )
    ap.add_argument(
        "--recorder",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a [recorder] setting, e.g. commit_interval=1.0 (to measure what it costs)",
    )
    ARGS = ap.parse_args()
    try:
        import uvloop  # the client's own overhead is part of every latency measured
    except ImportError:
        return asyncio.run(run(ARGS))
    return uvloop.run(run(ARGS))


if __name__ == "__main__":
    sys.exit(main())
