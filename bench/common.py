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


def process_tree_usage(pid: int) -> dict[int, tuple[float, int, float]]:
    """pid -> (CPU seconds, RSS bytes, of which kernel CPU seconds) for process ``pid`` and its direct children (worker
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
    out = {}
    for q in pids:
        try:
            f = (Path("/proc") / str(q) / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[q] = ((int(f[11]) + int(f[12])) / tick, int(f[21]) * page, int(f[12]) / tick)
    return out


def process_usage(pid: int) -> tuple[float, int]:
    """(CPU seconds, RSS bytes) of process ``pid`` and its direct children, summed."""
    usage = process_tree_usage(pid).values()
    return sum(u[0] for u in usage), sum(u[1] for u in usage)


def listeners(port: int) -> int:
    """How many sockets listen on TCP ``port`` (one per worker with SO_REUSEPORT)."""
    out = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True)
    return len([line for line in out.stdout.splitlines() if line.strip()])


class AcceptQueueWatch:
    """Polls the accept queues of the sockets listening on ``port`` (ss: Recv-Q is the queue's
    length, Send-Q its backlog) from a thread, until stopped: the peak tells how close a burst
    came to overflowing them, for these sockets only (the kernel's counters are per namespace)."""

    def __init__(self, port: int, every: float = 0.02) -> None:
        import threading

        self.port, self.every = port, every
        self.peak, self.backlog = 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            out = subprocess.run(
                ["ss", "-Hltn", f"sport = :{self.port}"], capture_output=True, text=True
            ).stdout
            for line in out.splitlines():
                f = line.split()
                if len(f) >= 3:
                    self.peak = max(self.peak, int(f[1]))
                    self.backlog = int(f[2])
            self._stop.wait(self.every)

    def stop(self) -> tuple[int, int]:
        """(peak queue length seen on one socket, its backlog)."""
        self._stop.set()
        self._thread.join()
        return self.peak, self.backlog


def tcp_counters() -> dict[str, int]:
    """The kernel's TCP counters for this network namespace (shared with anything else
    running on the machine): TcpExt ListenOverflows/ListenDrops (accept queue full), Tcp
    OutRsts/EstabResets."""
    out: dict[str, int] = {}
    for name, prefixes in (("/proc/net/netstat", ("TcpExt:",)), ("/proc/net/snmp", ("Tcp:",))):
        try:
            lines = Path(name).read_text().splitlines()
        except OSError:
            continue
        for head, values in zip(lines[::2], lines[1::2], strict=False):
            if head.startswith(prefixes) and values.startswith(prefixes):
                for k, v in zip(head.split()[1:], values.split()[1:], strict=False):
                    if k in ("ListenOverflows", "ListenDrops", "OutRsts", "EstabResets"):
                        out[k] = int(v)
    return out


#: Runs ``breakglass`` from another source tree (``--baseline``): its folders are mapped onto
#: the breakglass namespace ahead of the installed one.
_FROM_TREE = """
import importlib.util, runpy, sys
from pathlib import Path
root = Path(sys.argv.pop(1))
class TreeFinder:
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name != "breakglass" and not name.startswith("breakglass."):
            return None
        parts = name.split(".")[1:]
        base = root.joinpath(*parts) if parts else root / "breakglass"
        if (base / "__init__.py").exists():
            return importlib.util.spec_from_file_location(
                name, base / "__init__.py", submodule_search_locations=[str(base)])
        if base.with_suffix(".py").exists():
            return importlib.util.spec_from_file_location(name, base.with_suffix(".py"))
        return None
sys.meta_path.insert(0, TreeFinder)
sys.argv[0] = "breakglass"
runpy.run_module("breakglass.cli.main", run_name="__main__", alter_sys=True)
"""


def start_gateway_process(
    config: Path,
    port: int,
    workers: int | None = None,
    root: Path | None = None,
    python: str | None = None,
    wrapper: list[str] | None = None,
) -> subprocess.Popen:
    """``breakglass gateway`` from the source tree ``root`` (default: the installed package);
    its log goes to gateway.log beside the config (a pipe nobody reads would stall it once
    full). An older tree (top-level ``proxy``) runs from PYTHONPATH; a tree with the
    breakglass namespace through a finder (its worker processes would use the installed
    package: compare such trees with ``workers = 1``); a tree in the installed layout
    (``breakglass/proxy/...``, e.g. one built with mypyc) from PYTHONPATH. ``python``: an
    interpreter with breakglass installed (another Python version's venv), run as is.
    ``wrapper``: a script and its arguments that run the installed gateway with the breakglass
    arguments after them (``bench/step_times.py``)."""
    args = ["-c", str(config), "gateway", "--log-level", "warning"]
    env = dict(os.environ)
    if workers:
        env["BREAKGLASS_WORKERS"] = str(workers)
    root = root or ROOT
    if wrapper:
        cmd = [sys.executable, *wrapper, *args]
    elif python:  # its own installed package; not started in a tree, which -m would import
        cmd, root = [python, "-m", "breakglass.cli.main", *args], config.parent
    elif root == ROOT:
        cmd = [sys.executable, "-m", "breakglass.cli.main", *args]
    elif (root / "breakglass" / "proxy").is_dir():  # an installed layout (e.g. a compiled build)
        cmd = [sys.executable, "-m", "breakglass.cli.main", *args]
        env["PYTHONPATH"] = str(root)
    elif (root / "breakglass" / "__init__.py").exists():
        cmd = [sys.executable, "-c", _FROM_TREE, str(root), *args]
    else:
        cmd = [sys.executable, "-m", "proxy.cli.main", *args]
        env["PYTHONPATH"] = str(root)
    with open(config.parent / "gateway.log", "ab") as log:
        proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=log)
    try:
        wait_port(port, 60)  # a loaded machine takes a while to import and start a worker
    except RuntimeError:
        stop(proc)  # not left running behind a failed bench
        raise
    deadline = time.monotonic() + 30
    while (workers or 1) > 1 and listeners(port) < workers and time.monotonic() < deadline:
        time.sleep(0.1)  # bounded: every worker listens before the bench connects
    return proc


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


_DESCRIBE_INTERPRETER = """
import os, platform, sys
with open("/proc/self/maps") as maps:
    shared = any("libpython" in line for line in maps)
print(os.path.realpath(sys.executable), platform.python_version(),
      "libpython as a shared library" if shared else "libpython linked in")
"""


def describe_interpreter(python: str | None = None) -> str:
    """Which interpreter a relay runs on: its path, version and whether libpython is a shared
    library (pyenv's default build) or linked into the executable (Debian's ``python3``, built
    with PGO and LTO). The same code uses 14–21 % less CPU per transaction on the latter, so
    runs on different interpreters are not comparable."""
    out = subprocess.run(
        [python or sys.executable, "-c", _DESCRIBE_INTERPRETER],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return out.stdout.strip()


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    k = min(len(values) - 1, max(0, round(p / 100 * (len(values) - 1))))
    return values[k]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")
