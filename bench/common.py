"""Shared helpers for benchmarks: a gateway in its own process, medians, percentiles."""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


def process_usage(pid: int) -> tuple[float, int]:
    """(CPU seconds, RSS bytes) of process ``pid`` and its direct children (worker
    processes), from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    page = os.sysconf("SC_PAGE_SIZE")
    pids = [pid]
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if int((p / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    pids.append(int(p.name))
            except (OSError, ValueError, IndexError):
                pass
    cpu, rss = 0.0, 0
    for q in pids:
        try:
            f = (Path("/proc") / str(q) / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        cpu += (int(f[11]) + int(f[12])) / tick
        rss += int(f[21]) * page
    return cpu, rss


def start_gateway_process(
    config: Path, port: int, workers: int | None = None, root: Path | None = None
) -> subprocess.Popen:
    """``breakglass gateway`` from the source tree ``root`` (default: this one)."""
    cmd = [
        sys.executable,
        "-m",
        "proxy.cli.main",
        "-c",
        str(config),
        "gateway",
        "--log-level",
        "warning",
    ]
    env = dict(os.environ)
    if workers:
        env["BREAKGLASS_WORKERS"] = str(workers)
    root = root or ROOT
    env["PYTHONPATH"] = str(root)
    proc = subprocess.Popen(
        cmd, cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    wait_port(port)
    return proc


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    k = min(len(values) - 1, max(0, round(p / 100 * (len(values) - 1))))
    return values[k]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")
