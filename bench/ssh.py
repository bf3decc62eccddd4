"""SSH gateway benchmark (not a test): one run, one throwaway sshd, the gateway in its own
process (uvloop), every gateway session recorded.

    python bench/ssh.py [--size-mb 512] [--sessions 500] [--echo 2000] [--store]

Measures, all against the same sshd and file:
  * bulk ``cat`` of a SIZE file: direct OpenSSH, through the gateway, and through an OpenSSH
    jump host (``ssh -J``, the same sshd hopping to itself) as an anchor for "one extra hop";
  * legacy scp (``scp -O``) of the file, direct and through the gateway;
  * keystroke echo round trip (1 byte to ``cat`` and back, asyncssh client) p50/p99;
  * SESSIONS concurrent recorded sessions: gateway memory per session, and how long after
    the grant's ``exp`` each one was closed.
With ``--store`` the bulk runs also go through a second gateway streaming its recordings to a
throwaway SeaweedFS ([recorder.store]): ``store/local bulk throughput ratio: R``.
The last line reads ``gateway/direct bulk throughput ratio: R``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import asyncssh  # noqa: E402

from bench.common import (  # noqa: E402
    describe_interpreter,
    median,
    percentile,
    start_gateway_process,
    stop,
)
from breakglass.throwaway.servers import SshServer  # noqa: E402
from breakglass.throwaway.ssh_gateway import GatewayHarness  # noqa: E402


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def make_file(path: Path, size_mb: int) -> None:
    block = os.urandom(1 << 20)
    with open(path, "wb") as f:
        for i in range(size_mb):
            f.write(block[i % 251 :] + block[: i % 251])  # not one repeated MiB


def timed(argv: list[str], env: dict[str, str] | None = None) -> float:
    t0 = time.perf_counter()
    with open(os.devnull, "wb") as devnull:
        res = subprocess.run(
            argv, stdin=subprocess.DEVNULL, stdout=devnull, stderr=subprocess.PIPE, env=env
        )
    dt = time.perf_counter() - t0
    if res.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed ({res.returncode}): {res.stderr.decode()[-500:]}")
    return dt


def direct_opts(s: SshServer) -> list[str]:
    return s.ssh_command()[1:-1]  # options without "ssh" and the host


def scp_opts(s: SshServer) -> list[str]:
    """The ssh options, minus -p PORT and -l LOGIN (scp spells those differently)."""
    opts = direct_opts(s)
    out = []
    skip = False
    for o in opts:
        if skip:
            skip = False
            continue
        if o in ("-p", "-l"):
            skip = True
            continue
        out.append(o)
    return out


async def echo_rtt(connect, command: str, n: int) -> list[float]:
    async with await connect() as conn:
        proc = await conn.create_process(command, encoding=None)
        out = []
        for i in range(n):
            b = bytes([97 + i % 26])
            t0 = time.perf_counter()
            proc.stdin.write(b)
            got = await proc.stdout.readexactly(1)
            out.append(time.perf_counter() - t0)
            assert got == b
        proc.stdin.write_eof()
        await proc.wait()
        return out


async def many_sessions(h: GatewayHarness, gw_pid: int, n: int) -> dict[str, float]:
    base_rss = rss_kb(gw_pid)
    conns: list = []
    closed_at: list[float] = []
    sem = asyncio.Semaphore(16)  # bounded opening rate (the test sshd's MaxStartups is 200)

    ttl = max(30.0, n * 0.4)
    claims = h.claims(commands=["sleep *"], ttl=ttl)
    token = h.sign(claims)

    async def one(i: int) -> None:
        async with sem:
            conn = await asyncssh.connect(
                "127.0.0.1",
                h.port,
                username="web-1",
                password=token,
                known_hosts=asyncssh.import_known_hosts(h.known_hosts.read_text()),
                client_keys=None,
                agent_path=None,
                config=None,
                preferred_auth="password",
                connect_timeout=120,
            )
            chan, _ = await conn.create_session(asyncssh.SSHClientSession, "sleep 600")
            conns.append(conn)
            if len(conns) % 25 == 0:
                print(f"  {len(conns)} open after {time.time() - t_start:.1f} s", flush=True)

        await conn.wait_closed()
        closed_at.append(time.time())

    t_start = time.time()
    tasks = [asyncio.ensure_future(one(i)) for i in range(n)]
    while len(conns) < n:
        done = [t for t in tasks if t.done() and t.exception()]
        if done:
            raise done[0].exception()
        await asyncio.sleep(0.05)
    up_at = time.time()
    print(f"opened {n} sessions in {up_at - t_start:.1f} s", flush=True)
    rss = rss_kb(gw_pid)
    assert up_at < claims["exp"], "sessions took longer to open than the grant lasted"
    await asyncio.wait_for(asyncio.gather(*tasks), claims["exp"] - time.time() + 30)
    late = [t - claims["exp"] for t in closed_at]
    return {
        "sessions": n,
        "rss_per_session_kb": (rss - base_rss) / n,
        "gateway_rss_mb": rss / 1024,
        "close_after_exp_p50_ms": percentile(late, 50) * 1000,
        "close_after_exp_p99_ms": percentile(late, 99) * 1000,
        "close_after_exp_max_ms": max(late) * 1000,
        "closed_before_exp": sum(1 for x in late if x < 0),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mb", type=int, default=512)
    ap.add_argument("--sessions", type=int, default=500)
    ap.add_argument("--echo", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--skip", action="append", default=[], help="bulk|scp|echo|sessions")
    ap.add_argument(
        "--store",
        action="store_true",
        help="bulk: also through a gateway streaming to a throwaway SeaweedFS (same run)",
    )
    a = ap.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    with SshServer(log_level="ERROR") as sshd:
        big = sshd.workdir / "big.bin"
        make_file(big, a.size_mb)
        size = big.stat().st_size
        h = GatewayHarness(sshd, auth_limit=10000)
        gw = start_gateway_process(h.dir / "config.toml", h.port)
        s3 = store_gw = None
        try:
            if a.store:
                from bench.store import S3Server, store_gateway_config, store_summary
                from breakglass.throwaway.servers import free_port

                s3 = S3Server().start()
                store_port, metrics_port = free_port(), free_port()
                cfg = store_gateway_config(
                    h.dir / "config.toml", s3, "bench-ssh", h.port, store_port, metrics_port
                )
                store_gw = start_gateway_process(cfg, store_port)
                with open(h.known_hosts, "a") as f:  # the same host key on the second port
                    f.write(f"[127.0.0.1]:{store_port} {h.host_key_line}\n")
            token = h.token(commands=[f"cat {big}", "cat", "sleep *", f"scp -f {big}"], ttl=7200)
            gf = h.grant_file(token)
            genv = h.client_env(gf)
            mb = size / 1e6
            print(f"file: {mb:.0f} MB; cpus: {os.cpu_count()}; gateway pid {gw.pid} (uvloop)")
            print(f"interpreter: {describe_interpreter()}")
            results: dict[str, float] = {}
            if "bulk" not in a.skip:
                direct = ["ssh", *direct_opts(sshd), sshd.host, f"cat {big}"]
                via_gw = h.ssh_argv("web-1", f"cat {big}")
                jump = [
                    "ssh",
                    *direct_opts(sshd),
                    "-o",
                    "ProxyCommand="
                    + " ".join(["ssh", *direct_opts(sshd), "-W", "%h:%p", sshd.host]),
                    sshd.host,
                    f"cat {big}",
                ]
                timed(direct)  # warm the page cache
                runs: dict[str, list[float]] = {"direct": [], "gateway": [], "jump": []}
                todo = [("direct", direct, None), ("gateway", via_gw, genv), ("jump", jump, None)]
                if store_gw is not None:
                    i = via_gw.index(str(h.port))
                    todo.append(("store", [*via_gw[:i], str(store_port), *via_gw[i + 1 :]], genv))
                    runs["store"] = []
                gw_cpu: list[float] = []
                for _ in range(a.rounds):  # interleaved, so a noisy neighbour hits all of them
                    for name, argv, env in todo:
                        c0 = cpu_seconds(gw.pid)
                        runs[name].append(timed(argv, env))
                        if name == "gateway":
                            gw_cpu.append(cpu_seconds(gw.pid) - c0)
                for name, times in runs.items():
                    t = median(times)
                    results[name] = mb / t
                    print(
                        f"bulk cat {name:8s} {mb / t:8.1f} MB/s  (median of {len(times)}: {t:.2f} s)"
                    )
                print(
                    f"gateway CPU: {median(gw_cpu) / (mb / 1000):.2f} s per GB relayed and recorded"
                )
                print(
                    f"anchor: OpenSSH jump host/direct {results['jump'] / results['direct']:.2f}; "
                    f"gateway/jump {results['gateway'] / results['direct'] / (results['jump'] / results['direct']):.2f}"
                )
            if "scp" not in a.skip:
                dst = sshd.basedir / "copy.bin"
                d = timed(
                    [
                        "scp",
                        "-O",
                        "-P",
                        str(sshd.port),
                        *scp_opts(sshd),
                        f"{sshd.login}@{sshd.host}:{big}",
                        str(dst),
                    ]
                )
                g = timed(
                    [
                        "scp",
                        "-O",
                        "-P",
                        str(h.port),
                        *h.client_options(),
                        f"web-1@127.0.0.1:{big}",
                        str(dst),
                    ],
                    genv,
                )
                dst.unlink(missing_ok=True)
                print(
                    f"scp -O   direct   {mb / d:8.1f} MB/s;  gateway {mb / g:8.1f} MB/s  (ratio {d / g:.2f})"
                )
            if "echo" not in a.skip:

                async def direct_conn():
                    return await asyncssh.connect(
                        sshd.host,
                        sshd.port,
                        username=sshd.login,
                        client_keys=[str(sshd.client_key)],
                        known_hosts=str(sshd.known_hosts),
                        config=None,
                        agent_path=None,
                    )

                d = asyncio.run(echo_rtt(direct_conn, "cat", a.echo))
                g = asyncio.run(echo_rtt(lambda: h.connect(token), "cat", a.echo))
                dp50, dp99 = percentile(d, 50) * 1e3, percentile(d, 99) * 1e3
                gp50, gp99 = percentile(g, 50) * 1e3, percentile(g, 99) * 1e3
                print(f"echo rtt direct  p50 {dp50:.3f} ms  p99 {dp99:.3f} ms")
                print(
                    f"echo rtt gateway p50 {gp50:.3f} ms  p99 {gp99:.3f} ms  (added p99 {gp99 - dp99:.3f} ms)"
                )
            if "sessions" not in a.skip:
                r = asyncio.run(many_sessions(h, gw.pid, a.sessions))
                print(
                    f"{r['sessions']} concurrent recorded sessions: gateway RSS {r['gateway_rss_mb']:.0f} MB, "
                    f"{r['rss_per_session_kb']:.0f} KB per session; closed after exp: "
                    f"p50 {r['close_after_exp_p50_ms']:.0f} ms, p99 {r['close_after_exp_p99_ms']:.0f} ms, "
                    f"max {r['close_after_exp_max_ms']:.0f} ms, before exp: {r['closed_before_exp']}"
                )
            if "bulk" not in a.skip and store_gw is not None:
                print(store_summary(metrics_port))
                print(
                    f"store/local bulk throughput ratio: {results['store'] / results['gateway']:.2f}"
                )
            if "bulk" not in a.skip:
                print(
                    f"gateway/direct bulk throughput ratio: {results['gateway'] / results['direct']:.2f}"
                )
        finally:
            stop(gw)
            if store_gw is not None:
                stop(store_gw)
            if s3 is not None:
                s3.stop()
            h.stop()
            big.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
