"""pgbench -S: direct vs PgBouncer (session mode) vs a bare uvloop TLS relay vs the breakglass
gateway, in one run.

    python bench/pg.py [--seconds 5] [--repeat 3] [--store] [--steps]

Prints median TPS, ratios to direct, and added p50/p99 latency at 1 and 8
clients. The last line reads ``gateway/direct TPS ratio at 8 clients: R``.
Everything runs on 127.0.0.1; the machine is shared and noisy, so read the
medians and ratios, not single numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import (
    describe_interpreter,
    median,
    percentile,
    process_usage,
    start_gateway_process,
    stop,
    wait_port,
)

from breakglass.throwaway.servers import PostgresServer, free_port
from breakglass.throwaway.workdir import build_local_workdir, issue_local_grant


def run_pgbench(
    env: dict,
    host: str,
    port: int,
    user: str,
    clients: int,
    seconds: int,
    logdir: Path,
    mode: str = "simple",
) -> tuple[float, list[float], int]:
    """(TPS, per-transaction latencies in ms, transactions) of one ``pgbench -S`` run."""
    for f in logdir.glob("pgbench_log*"):
        f.unlink()
    cmd = [
        "pgbench",
        "-n",
        "-S",
        "-M",
        mode,
        "-T",
        str(seconds),
        "-c",
        str(clients),
        "-j",
        str(min(clients, 2)),
        "-h",
        host,
        "-p",
        str(port),
        "-U",
        user,
        "-l",
        "--log-prefix",
        str(logdir / "pgbench_log"),
        "shop",
    ]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=seconds + 60)
    if r.returncode != 0:
        raise RuntimeError(f"pgbench failed: {r.stderr.strip()}")
    tps = next(
        float(line.split("=")[1].split()[0])
        for line in r.stdout.splitlines()
        if line.startswith("tps =")
    )
    txns = next(
        int(line.split(":")[1].split()[0])
        for line in r.stdout.splitlines()
        if line.startswith("number of transactions actually processed")
    )
    lat = []
    for f in logdir.glob("pgbench_log*"):
        for line in f.read_text().splitlines():
            parts = line.split()
            if len(parts) > 2:
                lat.append(int(parts[2]) / 1000.0)  # ms
    return tps, lat, txns


def pgbouncer(
    pg: PostgresServer, workdir: Path, cert: Path, key: Path
) -> tuple[subprocess.Popen, int]:
    port = free_port()
    shutil.copy(cert, workdir / "tls.crt")
    shutil.copy(key, workdir / "tls.key")
    cert, key = workdir / "tls.crt", workdir / "tls.key"
    (workdir / "userlist.txt").write_text(f'"app_ro" "{pg.passwords["app_ro"]}"\n')
    (workdir / "pgbouncer.ini").write_text(
        f"""[databases]
shop = host={pg.host} port={pg.port} dbname=shop user=app_ro password={pg.passwords["app_ro"]}
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
auth_type = plain
auth_file = {workdir}/userlist.txt
pool_mode = session
max_client_conn = 100
default_pool_size = 20
client_tls_sslmode = require
client_tls_cert_file = {cert}
client_tls_key_file = {key}
logfile = {workdir}/pgbouncer.log
pidfile = {workdir}/pgbouncer.pid
"""
    )
    exe = shutil.which("pgbouncer") or shutil.which("/usr/sbin/pgbouncer")
    if exe is None:
        sys.exit("bench/pg.py: pgbouncer is not installed (Debian: apt-get install pgbouncer)")
    cmd = [exe, str(workdir / "pgbouncer.ini")]
    if os.geteuid() == 0:
        cmd = ["runuser", "-u", "postgres", "--", *cmd]
        subprocess.run(["chown", "-R", "postgres", str(workdir)], check=True)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_port(port, 10)
    except RuntimeError:
        log = (
            (workdir / "pgbouncer.log").read_text() if (workdir / "pgbouncer.log").exists() else ""
        )
        raise RuntimeError(f"pgbouncer did not start: {log[-2000:]}") from None
    return proc, port


def profiler(
    out: Path | None, pids: dict[str, int], name: str, clients: int, mode: str
) -> tuple[subprocess.Popen, Path] | None:
    """py-spy recording the gateway (and its workers) for one pgbench run, or None."""
    if out is None or name != "gateway":
        return None
    part = out.with_name(f"{out.name}.{mode}-{clients}-{os.urandom(3).hex()}")
    cmd = ["py-spy", "record", "--nonblocking", "--subprocesses", "-r", "400", "--format", "raw"]
    proc = subprocess.Popen(
        [*cmd, "-o", str(part), "-p", str(pids[name])],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return proc, part


def stop_profiler(spy: tuple[subprocess.Popen, Path] | None, out: Path | None) -> None:
    """Stop py-spy (it writes on SIGINT) and append its collapsed stacks to ``out``."""
    if spy is None or out is None:
        return
    proc, part = spy
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=60)
    if part.exists():
        with out.open("a") as f:
            f.write(part.read_text())
        part.unlink()


STEP_TIMES = Path(__file__).with_name("step_times.py")


def copy_gateway(tmp: Path, name: str, port: int) -> tuple[Path, int]:
    """A second gateway on the same workdir's keys and grants, on its own port: its config."""
    directory = tmp / name
    directory.mkdir()
    shutil.copytree(tmp / "gw", directory / "gw", ignore=shutil.ignore_patterns("*.sock", "*.rec"))
    new_port = free_port()
    config = directory / "gw" / "config.toml"
    config.write_text(
        config.read_text()
        .replace(f"127.0.0.1:{port}", f"127.0.0.1:{new_port}")
        .replace("run/admin.sock", f"run/admin-{name}.sock")
    )
    return config, new_port


def step_snapshot(proc: subprocess.Popen, path: Path) -> dict:
    """The step-timed gateway's totals now (it writes them on SIGUSR1)."""
    seq = json.loads(path.read_text())["seq"] if path.exists() else 0

    proc.send_signal(signal.SIGUSR1)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and proc.poll() is None:
        data = json.loads(path.read_text()) if path.exists() else {"seq": seq}
        if data["seq"] > seq:
            return data
        time.sleep(0.01)  # a bounded poll for the other process's file
    raise RuntimeError("the step-timed gateway wrote no snapshot (see its gateway.log)")


def step_totals(runs: list[tuple[dict, dict, int]]) -> dict:
    """Per transaction over ``runs`` (before, after, transactions): each step's own CPU (less
    the timed steps it calls, and less the timing itself) and calls; the main thread's CPU."""
    txns = max(1, sum(n for _, _, n in runs))
    snapshot = runs[0][1]  # names the steps and holds the timing's measured cost
    inside, outside = snapshot["inside_us"] / 1e6, snapshot["outside_us"] / 1e6

    def delta(key: str, step: str) -> float:
        return sum(after[key][step] - before[key][step] for before, after, _ in runs)

    steps = {}
    all_calls = 0.0
    for step in snapshot["cpu"]:
        calls, child_calls = delta("calls", step), delta("child_calls", step)
        own = delta("cpu", step) - delta("child_cpu", step)
        own -= calls * inside + child_calls * outside
        steps[step] = (own / txns * 1e6, calls / txns)
        all_calls += calls
    main = sum(a["main_thread_cpu"] - b["main_thread_cpu"] for b, a, _ in runs)
    main -= all_calls * (inside + outside)
    return {"steps": steps, "main_us": main / txns * 1e6, "timing_us": inside + outside}


def print_steps(clients: int, mode: str, totals: dict) -> None:
    print(
        f"steps at {clients} clients (-M {mode}): the main thread's CPU per transaction, each "
        f"step's own (less the steps it calls and the timing, ~{totals['timing_us'] * 1e6:.1f} us "
        "a call)"
    )
    timed = 0.0
    for step, (us, calls) in totals["steps"].items():
        print(f"  {step:<26} {us:>7.1f} us  {calls:>5.2f} calls")
        timed += us
    print(f"  {'rest of the loop':<26} {totals['main_us'] - timed:>7.1f} us")
    print(f"  {'main thread':<26} {totals['main_us']:>7.1f} us")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--clients", default="1,8")
    ap.add_argument(
        "--workers", type=int, default=1, help="gateway worker processes ([gateway] workers)"
    )
    ap.add_argument("--modes", default="simple", help="pgbench -M modes: simple,extended,prepared")
    ap.add_argument(
        "--baseline",
        type=Path,
        help="also run the gateway from this source tree (e.g. a git worktree of an older "
        "commit) as 'baseline', in the same run",
    )
    ap.add_argument(
        "--baseline-python",
        help="run the baseline gateway with this Python interpreter, from the breakglass "
        "installed for it (e.g. a venv of another Python version), instead of a tree",
    )
    ap.add_argument(
        "--store",
        action="store_true",
        help="also run a gateway streaming its recordings to a throwaway SeaweedFS "
        "([recorder.store]) as 'store', in the same run: store/gateway is the cost of the store",
    )
    ap.add_argument(
        "--setups",
        default="direct,pgbouncer,bare,gateway",
        help="comma-separated subset (direct is needed for ratios)",
    )
    ap.add_argument(
        "--steps",
        action="store_true",
        help="also run a gateway with its relay steps timed (bench/step_times.py) as 'steps', "
        "in the same run, and print each step's CPU per transaction between real sockets",
    )
    ap.add_argument(
        "--profile",
        type=Path,
        help="record the gateway with py-spy (--nonblocking) during its runs; writes "
        "collapsed stacks to this file (summarise with bench/profile_summary.py)",
    )
    args = ap.parse_args()
    clients = [int(c) for c in args.clients.split(",")]

    tmp = Path(tempfile.mkdtemp(prefix="bg-bench-pg-"))
    os.chmod(tmp, 0o755)
    pg = PostgresServer(log_connections=False).start()
    procs = []
    s3 = None
    try:
        cfg = build_local_workdir(tmp / "gw", pg=pg, ssh=None, name="bench")
        cfg_path = tmp / "gw" / "config.toml"
        if args.workers > 1:
            text = cfg_path.read_text().replace(
                "\nworkers = 1\n", f"\nworkers = {args.workers}\n", 1
            )
            cfg_path.write_text(text)
        gw_proc = start_gateway_process(cfg_path, cfg.postgres_listen.port)
        procs.append(gw_proc)
        cpu_pid = {"gateway": gw_proc.pid}
        if args.baseline or args.baseline_python:
            base_cfg, base_port = copy_gateway(tmp, "baseline", cfg.postgres_listen.port)
            base_proc = start_gateway_process(
                base_cfg, base_port, root=args.baseline, python=args.baseline_python
            )
            procs.append(base_proc)
            cpu_pid["baseline"] = base_proc.pid
        if args.steps:
            steps_cfg, steps_port = copy_gateway(tmp, "steps", cfg.postgres_listen.port)
            steps_file = tmp / "steps.json"
            steps_proc = start_gateway_process(
                steps_cfg, steps_port, wrapper=[str(STEP_TIMES), str(steps_file)]
            )
            procs.append(steps_proc)
            cpu_pid["steps"] = steps_proc.pid
        if args.store:
            from store import S3Server, store_gateway_config

            s3 = S3Server().start()
            store_port, store_metrics_port = free_port(), free_port()
            store_cfg = store_gateway_config(
                cfg_path, s3, "bench-pg", cfg.postgres_listen.port, store_port, store_metrics_port
            )
            store_proc = start_gateway_process(store_cfg, store_port)
            procs.append(store_proc)
            cpu_pid["store"] = store_proc.pid
        bouncer_dir = tmp / "bouncer"
        bouncer_dir.mkdir()
        bouncer, bouncer_port = pgbouncer(pg, bouncer_dir, cfg.tls_cert, cfg.tls_key)
        procs.append(bouncer)
        bare_port = free_port()
        bare_proc = subprocess.Popen(
            [
                sys.executable,
                str(Path(__file__).with_name("bare_tls_relay.py")),
                str(bare_port),
                str(pg.port),
                str(cfg.tls_cert),
                str(cfg.tls_key),
            ]
        )
        procs.append(bare_proc)
        cpu_pid["bare"] = bare_proc.pid
        wait_port(bare_port)
        token = issue_local_grant(cfg, "db-readonly", "shop", ttl=3600)
        logdir = tmp / "logs"
        logdir.mkdir()
        os.chmod(logdir, 0o777)
        base = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        setups = {
            "direct": (
                dict(base, PGPASSWORD=pg.passwords["app_ro"], PGSSLMODE="disable"),
                pg.port,
                "app_ro",
            ),
            "pgbouncer": (
                dict(base, PGPASSWORD=pg.passwords["app_ro"], PGSSLMODE="require"),
                bouncer_port,
                "app_ro",
            ),
            "bare": (  # floor: uvloop + TLS, copying bytes (bench/bare_tls_relay.py)
                dict(base, PGPASSWORD=pg.passwords["app_ro"], PGSSLMODE="require"),
                bare_port,
                "app_ro",
            ),
            "gateway": (
                dict(
                    base, PGPASSWORD=token, PGSSLMODE="verify-full", PGSSLROOTCERT=str(cfg.tls_cert)
                ),
                cfg.postgres_listen.port,
                "erin",
            ),
        }
        if args.baseline or args.baseline_python:
            setups["baseline"] = (setups["gateway"][0], base_port, "erin")
        if args.store:
            setups["store"] = (setups["gateway"][0], store_port, "erin")
        if args.steps:
            setups["steps"] = (setups["gateway"][0], steps_port, "erin")
        wanted = (
            set(args.setups.split(","))
            | {"direct"}
            | ({"baseline"} if args.baseline or args.baseline_python else set())
            | ({"store"} if args.store else set())
            | ({"steps"} if args.steps else set())
        )
        setups = {k: v for k, v in setups.items() if k in wanted}
        modes = args.modes.split(",")
        results: dict[tuple[str, int, str], tuple[float, float, float, float]] = {}
        step_results: dict[tuple[int, str], dict] = {}
        for mode in modes:
            for c in clients:
                tps: dict[str, list[float]] = {k: [] for k in setups}
                lat: dict[str, list[float]] = {k: [] for k in setups}
                cpu_us: dict[str, list[float]] = {k: [] for k in setups}
                step_runs: list[tuple[dict, dict, int]] = []
                for _ in range(args.repeat):
                    for name, (env, port, user) in setups.items():  # interleaved: noise hits all
                        before = process_usage(cpu_pid[name])[0] if name in cpu_pid else 0.0
                        spy = profiler(args.profile, cpu_pid, name, c, mode)
                        if name == "steps":
                            steps_before = step_snapshot(steps_proc, steps_file)
                        t, latencies, txns = run_pgbench(
                            env, "127.0.0.1", port, user, c, args.seconds, logdir, mode
                        )
                        stop_profiler(spy, args.profile)
                        if name == "steps":
                            step_runs.append(
                                (steps_before, step_snapshot(steps_proc, steps_file), txns)
                            )
                        if name in cpu_pid:
                            used = process_usage(cpu_pid[name])[0] - before
                            cpu_us[name].append(used / max(1, txns) * 1e6)
                        tps[name].append(t)
                        lat[name].extend(latencies)
                if step_runs:
                    step_results[(c, mode)] = step_totals(step_runs)
                for name in setups:
                    results[(name, c, mode)] = (
                        median(tps[name]),
                        percentile(lat[name], 50),
                        percentile(lat[name], 99),
                        median(cpu_us[name]),
                    )
        print(
            f"pgbench -S, {args.seconds}s x {args.repeat} runs each, medians "
            f"(TLS for pgbouncer, bare and gateway; gateway workers: {args.workers}); "
            "CPU = the relay process's CPU time per transaction"
        )
        print(f"interpreter of the relays: {describe_interpreter()}")
        if args.baseline_python:
            print(f"interpreter of the baseline: {describe_interpreter(args.baseline_python)}")
        for mode in modes:
            print(f"\n-M {mode}")
            print(
                f"{'setup':<10} {'clients':>7} {'TPS':>10} {'ratio':>6} {'p50 ms':>8} {'p99 ms':>8} "
                f"{'+p50':>7} {'+p99':>7} {'CPU us':>7}"
            )
            for c in clients:
                d_tps, d50, d99, _ = results[("direct", c, mode)]
                for name in setups:
                    t, p50, p99, cpu = results[(name, c, mode)]
                    cpu_text = f"{cpu:>7.0f}" if name in cpu_pid else f"{'':>7}"
                    print(
                        f"{name:<10} {c:>7} {t:>10.0f} {t / d_tps:>6.2f} {p50:>8.3f} {p99:>8.3f} "
                        f"{p50 - d50:>+7.3f} {p99 - d99:>+7.3f} {cpu_text}"
                    )
            if "gateway" in setups and "bare" in setups:
                for c in clients:
                    g, b = results[("gateway", c, mode)], results[("bare", c, mode)]
                    print(
                        f"gateway/bare relay at {c} clients: TPS {g[0] / b[0]:.2f}, "
                        f"CPU per transaction {g[3]:.0f} us vs {b[3]:.0f} us"
                    )
            if "baseline" in setups:
                for c in clients:
                    g, b = results[("gateway", c, mode)], results[("baseline", c, mode)]
                    print(
                        f"gateway/baseline at {c} clients: TPS {g[0] / b[0]:.2f}, "
                        f"CPU per transaction {g[3]:.0f} us vs {b[3]:.0f} us"
                    )
            if "store" in setups and "gateway" in setups:
                for c in clients:
                    g, st = results[("gateway", c, mode)], results[("store", c, mode)]
                    print(
                        f"store/local TPS ratio at {c} clients (-M {mode}): {st[0] / g[0]:.2f}; "
                        f"p99 {st[2]:.3f} ms vs {g[2]:.3f} ms; CPU per transaction {st[3]:.0f} us "
                        f"vs {g[3]:.0f} us"
                    )
            for c in clients:
                if (c, mode) in step_results:
                    print_steps(c, mode, step_results[(c, mode)])
            if "gateway" in setups:
                for c in clients:
                    print(
                        f"gateway/direct TPS ratio at {c} clients (-M {mode}): "
                        f"{results[('gateway', c, mode)][0] / results[('direct', c, mode)][0]:.2f}"
                    )
        if args.store:
            from store import store_summary

            print(store_summary(store_metrics_port))
    finally:
        for p in procs:
            stop(p)
        if s3 is not None:
            s3.stop()
        pg.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
