"""Throwaway PostgreSQL and OpenSSH servers on loopback, for tests, benchmarks and `breakglass demo`.

This module has no pytest dependency: ``tests/conftest.py`` wraps it in
fixtures, and ``bench/`` scripts or ``breakglass demo`` can use it directly::

    from tests.servers import PostgresServer, SshServer

    with PostgresServer() as pg, SshServer() as ssh:
        print(pg.dsn("app_ro"))
        print(ssh.ssh("echo hello").stdout)

Both servers listen on 127.0.0.1 only, on a free port, and keep everything
(data, sockets, keys, logs) in their own fresh directory, removed by ``stop()``.

PostgreSQL refuses to run as root: when the effective uid is 0 the server
binaries (initdb, pg_ctl, postgres) run as the ``postgres`` user and the
server directory is owned by it. Clients (psql, pgbench, ssh) run as the
caller.

Environment overrides:
    BREAKGLASS_PG_BINDIR   directory holding initdb/pg_ctl (default: PATH, then
                           /usr/lib/postgresql/<newest>/bin)
    BREAKGLASS_SSHD        path of sshd (default: /usr/sbin/sshd, then PATH)
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import glob
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = [
    "PostgresServer",
    "ServerStartError",
    "SshServer",
    "find_pg_bindir",
    "find_pg_client",
    "find_sshd",
    "free_port",
    "generate_ed25519_key",
]

LOOPBACK = "127.0.0.1"


class ServerStartError(RuntimeError):
    """A test server could not be started; the message carries its log."""


# --------------------------------------------------------------------------- helpers


#: Ports ``free_port`` handed out in this process, never handed out again: a config picks
#: several before anything binds them, and the kernel may offer the same one twice.
_handed_out: set[int] = set()
_handed_out_lock = threading.Lock()


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port that was free a moment ago (bind port 0, read it back, close), and that
    this process has not handed out before."""
    with _handed_out_lock:
        for _ in range(1000):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.bind((host, 0))
                port = s.getsockname()[1]
            if port not in _handed_out:
                _handed_out.add(port)
                return port
    raise ServerStartError(f"no free TCP port on {host} that was not handed out already")


def _wait_until(
    predicate: Callable[[], bool],
    *,
    timeout: float,
    what: str,
    alive: Callable[[], bool] | None = None,
    log: Callable[[], str] | None = None,
) -> None:
    """Poll ``predicate`` until true; bounded in time; fail early if the process died."""
    deadline = time.monotonic() + timeout
    interval = 0.01
    while True:
        if predicate():
            return
        if alive is not None and not alive():
            raise ServerStartError(f"{what}: process exited while starting\n{_fmt_log(log)}")
        if time.monotonic() >= deadline:
            raise ServerStartError(f"{what}: not ready after {timeout:.0f}s\n{_fmt_log(log)}")
        time.sleep(interval)  # poll interval, not a blind wait
        interval = min(interval * 2, 0.2)


def _fmt_log(log: Callable[[], str] | str | None, lines: int = 80) -> str:
    if log is None:
        return ""
    text = log() if callable(log) else log
    tail = "\n".join(text.splitlines()[-lines:])
    return f"--- server log (last {lines} lines) ---\n{tail}\n--- end of log ---"


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def _traversable_by(path: Path, uid: int, gids: set[int]) -> bool:
    """Whether a process with uid/gids can search every directory down to ``path``."""
    p = path.resolve()
    for d in [p, *p.parents]:
        try:
            st = d.stat()
        except OSError:
            return False
        if st.st_uid == uid:
            ok = st.st_mode & 0o100
        elif st.st_gid in gids:
            ok = st.st_mode & 0o010
        else:
            ok = st.st_mode & 0o001
        if not ok:
            return False
    return True


def _rmtree(path: Path | None) -> None:
    if path is not None:
        shutil.rmtree(path, ignore_errors=True)


def _current_login() -> str:
    return pwd.getpwuid(os.geteuid()).pw_name


# --------------------------------------------------------------------------- PostgreSQL


def find_pg_bindir() -> Path | None:
    """Directory holding initdb, pg_ctl and postgres (PostgreSQL 15 preferred)."""
    env = os.environ.get("BREAKGLASS_PG_BINDIR")
    candidates: list[Path] = []
    if env:
        candidates.append(Path(env))
    else:
        on_path = shutil.which("initdb")
        if on_path:
            candidates.append(Path(os.path.realpath(on_path)).parent)
        versioned = sorted(
            glob.glob("/usr/lib/postgresql/*/bin"),
            key=lambda p: (p.split("/")[-2] != "15", -_int(p.split("/")[-2])),
        )
        candidates.extend(Path(p) for p in versioned)
    for d in candidates:
        if all(os.access(d / exe, os.X_OK) for exe in ("initdb", "pg_ctl", "postgres")):
            return d
    return None


def _int(s: str) -> int:
    try:
        return int(s)
    except ValueError:
        return 0


def find_pg_client(name: str, bindir: Path | None = None) -> str | None:
    """A PostgreSQL client program (psql, pgbench, pg_isready): the server's bindir first."""
    bindir = bindir or find_pg_bindir()
    if bindir is not None and os.access(bindir / name, os.X_OK):
        return str(bindir / name)
    return shutil.which(name)


class PostgresServer:
    """A throwaway PostgreSQL cluster on 127.0.0.1 with sample data and roles.

    After ``start()``:
      host, port, socket_dir, basedir, datadir, log_path, bindir
      superuser ("postgres"), superuser_password
      passwords: {"postgres": ..., "app_ro": ..., "app_rw": ..., "app_md5": ...}
      database ("shop")

    Authentication (pg_hba.conf, first match wins):
      local all all                    scram-sha-256
      host  all app_md5 127.0.0.1/32   md5            (its password is stored as md5)
      host  all all     127.0.0.1/32   scram-sha-256

    Database ``shop``:
      public.customers(id, name, email)                      200 rows
      public.orders(id, customer_id, amount numeric, created_at)  500 rows
      secret.keys(id, value)                                 3 rows, readable by app_ro/app_rw
      pgbench_* tables (``pgbench -i -s 1``) unless pgbench=False
    Roles: app_ro and app_md5 SELECT everything above; app_rw SELECT/INSERT/UPDATE/DELETE
    on customers/orders, SELECT on secret.keys, SELECT/INSERT/UPDATE on pgbench tables.
    """

    SUPERUSER = "postgres"
    DATABASE = "shop"
    ROLES = ("app_ro", "app_rw", "app_md5")
    PG_USER = "postgres"  # OS user the server runs as when we are root

    def __init__(
        self,
        *,
        fast: bool = True,
        pgbench: bool = True,
        log_connections: bool = True,
        settings: dict[str, str] | None = None,
        start_timeout: float = 30.0,
        die_with_parent: bool = True,
    ) -> None:
        """fast: fsync/synchronous_commit/full_page_writes off (never for real data).
        pgbench: load the pgbench tables (scale 1) into ``shop``.
        log_connections: log each connection with its auth method (tests read the log).
        settings: extra postgresql.conf settings, already-quoted values, e.g. {"max_connections": "300"}.
        die_with_parent: the server gets SIGQUIT if the thread that started it dies (only
            applied when started from the main thread), so a killed test run leaves no server.
        """
        self.fast = fast
        self.with_pgbench = pgbench
        self.log_connections = log_connections
        self.settings = dict(settings or {})
        self.start_timeout = start_timeout
        self.die_with_parent = die_with_parent

        self.host = LOOPBACK
        self.port: int = 0
        self.superuser = self.SUPERUSER
        self.database = self.DATABASE
        self.superuser_password = ""
        self.passwords: dict[str, str] = {}
        self.bindir: Path | None = None
        self.basedir: Path | None = None
        self.datadir: Path | None = None
        self.socket_dir: Path | None = None
        self.log_path: Path | None = None
        self._run_as: tuple[int, int] | None = None  # (uid, gid) of the server process
        self.proc: subprocess.Popen[bytes] | None = None  # the postmaster
        self._running = False

    # ---------------------------------------------------------------- availability

    @classmethod
    def unavailable_reason(cls) -> str | None:
        """None when a server can be started here, else why not."""
        bindir = find_pg_bindir()
        if bindir is None:
            return (
                "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found on PATH "
                "nor in /usr/lib/postgresql/*/bin (set BREAKGLASS_PG_BINDIR)"
            )
        for client in ("psql", "pg_isready"):
            if find_pg_client(client, bindir) is None:
                return f"PostgreSQL client {client!r} not found"
        if os.geteuid() == 0:
            try:
                pwd.getpwnam(cls.PG_USER)
            except KeyError:
                return (
                    f"running as root and there is no {cls.PG_USER!r} OS user to run PostgreSQL as"
                )
        return None

    # ---------------------------------------------------------------- lifecycle

    def __enter__(self) -> PostgresServer:
        if not self._running:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, tmpdir: str | os.PathLike[str] | None = None) -> PostgresServer:
        """Create, configure, start and populate the cluster; returns self.

        tmpdir: parent for the server's own directory. When running as root it must
        be traversable by the postgres user (pytest's tmp dirs are not), and the
        socket path must stay short; otherwise the system temp dir is used instead.
        """
        if self._running:
            raise RuntimeError("PostgresServer already started")
        reason = self.unavailable_reason()
        if reason:
            raise ServerStartError(reason)
        self.bindir = find_pg_bindir()
        if os.geteuid() == 0:
            pw = pwd.getpwnam(self.PG_USER)
            self._run_as = (pw.pw_uid, pw.pw_gid)
        try:
            self._make_dirs(tmpdir)
            self._initdb()
            self._write_config()
            self._start_with_free_port()
            self._running = True
            atexit.register(self.stop)
            self._populate()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop the server (pg_ctl stop -m immediate) and remove its directory. Idempotent."""
        atexit.unregister(self.stop)
        self._stop_process()
        self._running = False
        _rmtree(self.basedir)
        self.basedir = self.datadir = self.socket_dir = None

    def restart(self) -> None:
        """Immediate stop then start again, same port and data (drops every connection)."""
        self._stop_process()
        self._spawn()
        self._wait_ready()

    # ---------------------------------------------------------------- client side

    def dsn(self, user: str = SUPERUSER, db: str = DATABASE) -> str:
        """libpq/asyncpg URL with the role's password, e.g. postgresql://app_ro:...@127.0.0.1:P/shop."""
        pw = urllib.parse.quote(self.passwords[user], safe="")
        return f"postgresql://{urllib.parse.quote(user, safe='')}:{pw}@{self.host}:{self.port}/{db}"

    def connect_kwargs(self, user: str = SUPERUSER, db: str = DATABASE) -> dict[str, object]:
        """Keyword arguments for ``asyncpg.connect(**kw)`` (no TLS: the test server has none)."""
        return {
            "host": self.host,
            "port": self.port,
            "user": user,
            "password": self.passwords[user],
            "database": db,
            "ssl": False,
        }

    def client_env(self, user: str = SUPERUSER, db: str = DATABASE) -> dict[str, str]:
        """Environment for libpq clients (psql, pgbench) connecting as ``user`` over TCP."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(
            PGHOST=self.host,
            PGPORT=str(self.port),
            PGUSER=user,
            PGDATABASE=db,
            PGPASSWORD=self.passwords[user],
            PGCONNECT_TIMEOUT="10",
            PGSSLMODE="disable",
            PGAPPNAME="breakglass-tests",
        )
        return env

    def psql(
        self,
        args: Sequence[str],
        user: str = SUPERUSER,
        db: str = DATABASE,
        *,
        input: str | None = None,
        check: bool = False,
        timeout: float = 60,
    ) -> subprocess.CompletedProcess[str]:
        """Run the real psql (``-X``, no psqlrc) as ``user`` over TCP; PGPASSWORD in env."""
        cmd = [self._client("psql"), "-X", *args]
        return self._run_client(cmd, user, db, input=input, check=check, timeout=timeout)

    def query(self, sql: str, user: str = SUPERUSER, db: str = DATABASE) -> str:
        """Run SQL with psql (unaligned, tuples only); return stdout stripped; raise on error."""
        res = self.psql(["-Atq", "-v", "ON_ERROR_STOP=1", "-c", sql], user, db)
        if res.returncode != 0:
            raise RuntimeError(f"psql as {user} failed ({res.returncode}): {res.stderr.strip()}")
        return res.stdout.strip()

    def pgbench(
        self,
        args: Sequence[str],
        user: str = SUPERUSER,
        db: str = DATABASE,
        *,
        check: bool = False,
        timeout: float = 600,
    ) -> subprocess.CompletedProcess[str]:
        """Run the real pgbench against this server as ``user``."""
        cmd = [self._client("pgbench"), *args]
        return self._run_client(cmd, user, db, check=check, timeout=timeout)

    def log(self) -> str:
        return _read(self.log_path) if self.log_path else ""

    # ---------------------------------------------------------------- internals

    def _bin(self, name: str) -> str:
        assert self.bindir is not None
        return str(self.bindir / name)

    def _client(self, name: str) -> str:
        path = find_pg_client(name, self.bindir)
        if path is None:
            raise FileNotFoundError(f"PostgreSQL client {name!r} not found")
        return path

    def _run_client(self, cmd, user, db, *, input=None, check=False, timeout=60):
        return subprocess.run(
            cmd,
            env=self.client_env(user, db),
            input=input,
            capture_output=True,
            text=True,
            check=check,
            timeout=timeout,
        )

    def _own(self, *paths: Path) -> None:
        if self._run_as is not None:
            for p in paths:
                os.chown(p, *self._run_as)

    def _server_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        if self._run_as is not None:
            pw = pwd.getpwuid(self._run_as[0])
            env.update(HOME=str(self.basedir), USER=pw.pw_name, LOGNAME=pw.pw_name)
        return env

    def _as_server(self, cmd: list[str], *, timeout: float) -> subprocess.CompletedProcess[str]:
        """Run a server-side binary, as the postgres OS user when we are root."""
        kw: dict[str, object] = {}
        if self._run_as is not None:
            uid, gid = self._run_as
            kw = {"user": uid, "group": gid, "extra_groups": []}
        return subprocess.run(
            cmd,
            cwd=self.basedir,
            env=self._server_env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            **kw,
        )

    def _make_dirs(self, tmpdir) -> None:
        parent = Path(tmpdir) if tmpdir is not None else Path(tempfile.gettempdir())
        if self._run_as is not None:
            uid, gid = self._run_as
            if not _traversable_by(parent, uid, {gid}):
                parent = Path(tempfile.gettempdir())
        # unix socket paths are limited to 107 bytes: "<dir>/sock/.s.PGSQL.65535"
        if len(str(parent.resolve())) > 60:
            parent = Path(tempfile.gettempdir())
        self.basedir = Path(tempfile.mkdtemp(prefix="breakglass-pg-", dir=parent))
        os.chmod(self.basedir, 0o755)
        self.datadir = self.basedir / "data"
        self.socket_dir = self.basedir / "sock"
        self.socket_dir.mkdir(mode=0o755)
        self.log_path = self.basedir / "postgres.log"
        self.log_path.touch(mode=0o644)
        self._own(self.basedir, self.socket_dir, self.log_path)

    def _initdb(self) -> None:
        self.superuser_password = secrets.token_urlsafe(18)
        self.passwords = {self.superuser: self.superuser_password}
        self.passwords.update({r: secrets.token_urlsafe(18) for r in self.ROLES})
        assert self.basedir is not None
        pwfile = self.basedir / "pwfile"
        pwfile.write_text(self.superuser_password + "\n")
        os.chmod(pwfile, 0o600)
        self._own(pwfile)
        try:
            res = self._as_server(
                [self._bin("initdb"), "-D", str(self.datadir), "-U", self.superuser]
                + ["-A", "scram-sha-256", f"--pwfile={pwfile}", "-E", "UTF8", "--no-locale"]
                + ["--no-sync", "--no-instructions"],
                timeout=120,
            )
        finally:
            pwfile.unlink(missing_ok=True)
        if res.returncode != 0:
            raise ServerStartError(f"initdb failed ({res.returncode}):\n{res.stdout}{res.stderr}")

    def _write_config(self) -> None:
        assert self.datadir is not None
        conf = self.datadir / "postgresql.conf"
        with conf.open("a") as f:
            f.write("\n# breakglass test server\ninclude 'breakglass.conf'\n")
        (self.datadir / "pg_hba.conf").write_text(
            "# breakglass test server: first match wins\n"
            "local all all                  scram-sha-256\n"
            f"host  all app_md5 {LOOPBACK}/32  md5\n"
            f"host  all all     {LOOPBACK}/32  scram-sha-256\n"
        )

    def _write_port_config(self) -> None:
        assert self.datadir is not None
        settings = {
            "listen_addresses": f"'{LOOPBACK}'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.socket_dir}'",
            "password_encryption": "'scram-sha-256'",
            "log_connections": "on" if self.log_connections else "off",
            "log_line_prefix": "'%m [%p] %q%u@%d '",
            "logging_collector": "off",
            "max_connections": "100",
        }
        if self.fast:
            settings.update(fsync="off", synchronous_commit="off", full_page_writes="off")
        settings.update(self.settings)
        path = self.datadir / "breakglass.conf"
        path.write_text("".join(f"{k} = {v}\n" for k, v in settings.items()))
        self._own(path)

    def _spawn(self) -> None:
        """Run the postmaster in the foreground as our child, so we see it die and it
        dies with us (parent-death signal) even if the test run is killed."""
        assert self.log_path is not None
        kw: dict[str, object] = {}
        if self._run_as is not None:
            uid, gid = self._run_as
            kw = {"user": uid, "group": gid, "extra_groups": []}
        with self.log_path.open("ab") as logf:
            self.proc = subprocess.Popen(
                [self._bin("postgres"), "-D", str(self.datadir)],
                cwd=self.basedir,
                env=self._server_env(),
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent(signal.SIGQUIT) if self.die_with_parent else None,
                **kw,
            )

    def _stop_process(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        try:
            self._as_server(
                [self._bin("pg_ctl"), "-D", str(self.datadir), "stop", "-m", "immediate"]
                + ["-w", "-t", "10"],
                timeout=20,
            )
        except (subprocess.SubprocessError, OSError):
            pass
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGQUIT)  # postmaster: immediate shutdown
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    def _start_with_free_port(self) -> None:
        last: ServerStartError | None = None
        for _ in range(5):  # another process may grab the port between probe and bind
            self.port = free_port()
            self._write_port_config()
            log_size = self.log_path.stat().st_size if self.log_path else 0
            self._spawn()
            try:
                self._wait_ready()
            except ServerStartError as e:
                self._stop_process()
                new_log = self.log()[log_size:]
                if "could not bind" in new_log or "Address already in use" in new_log:
                    last = e
                    continue
                raise
            return
        assert last is not None
        raise last

    def _wait_ready(self) -> None:
        """Bounded pg_isready loop over TCP; fails at once (with the log) if the postmaster exits."""
        isready = self._client("pg_isready")
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}

        def ready() -> bool:
            res = subprocess.run(
                [isready, "-q", "-h", self.host, "-p", str(self.port), "-t", "2"],
                capture_output=True,
                env=env,
                timeout=10,
            )
            return res.returncode == 0

        _wait_until(
            ready,
            timeout=self.start_timeout,
            what=f"PostgreSQL on {self.host}:{self.port}",
            alive=lambda: self.proc is not None and self.proc.poll() is None,
            log=self.log,
        )

    def _setup_sql(self) -> str:
        pw = self.passwords
        return f"""
CREATE ROLE app_ro LOGIN PASSWORD '{pw["app_ro"]}';
CREATE ROLE app_rw LOGIN PASSWORD '{pw["app_rw"]}';
SET password_encryption = 'md5';
CREATE ROLE app_md5 LOGIN PASSWORD '{pw["app_md5"]}';
RESET password_encryption;

CREATE TABLE public.customers (
    id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    name text NOT NULL,
    email text NOT NULL UNIQUE
);
CREATE TABLE public.orders (
    id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    customer_id bigint NOT NULL REFERENCES public.customers(id),
    amount numeric(12,2) NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO public.customers (id, name, email)
    SELECT i, 'Customer ' || i, 'customer' || i || '@example.com'
    FROM generate_series(1, 200) AS i;
INSERT INTO public.orders (id, customer_id, amount, created_at)
    SELECT i, 1 + (i * 7) % 200, ((i * 3779) % 100000) / 100.0,
           timestamptz '2024-01-01 00:00:00+00' + i * interval '1 hour'
    FROM generate_series(1, 500) AS i;
SELECT setval(pg_get_serial_sequence('public.customers', 'id'), 200);
SELECT setval(pg_get_serial_sequence('public.orders', 'id'), 500);

CREATE SCHEMA secret;
CREATE TABLE secret.keys (id integer PRIMARY KEY, value text NOT NULL);
INSERT INTO secret.keys VALUES
    (1, 'test-only-not-a-secret-1'),
    (2, 'test-only-not-a-secret-2'),
    (3, 'test-only-not-a-secret-3');

GRANT USAGE ON SCHEMA public, secret TO app_ro, app_rw, app_md5;
GRANT SELECT ON public.customers, public.orders, secret.keys TO app_ro, app_md5;
GRANT SELECT, INSERT, UPDATE, DELETE ON public.customers, public.orders TO app_rw;
GRANT SELECT ON secret.keys TO app_rw;
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO app_rw;
DO $$
DECLARE t text;
BEGIN
    FOR t IN SELECT tablename FROM pg_tables
             WHERE schemaname = 'public' AND tablename LIKE 'pgbench\\_%'
    LOOP
        EXECUTE format('GRANT SELECT ON public.%I TO app_ro, app_md5', t);
        EXECUTE format('GRANT SELECT, INSERT, UPDATE ON public.%I TO app_rw', t);
    END LOOP;
END $$;
ANALYZE;
"""

    def _populate(self) -> None:
        self._check(
            self.psql(["-q", "-v", "ON_ERROR_STOP=1", "-c", "CREATE DATABASE shop"], db="postgres"),
            "CREATE DATABASE",
        )
        if self.with_pgbench:
            self._check(
                self.pgbench(["-i", "-s", "1", "-q", "-I", "dtGvp"], timeout=120), "pgbench -i"
            )
        self._check(
            self.psql(["-q", "-v", "ON_ERROR_STOP=1", "-f", "-"], input=self._setup_sql()),
            "setup SQL",
        )

    def _check(self, res: subprocess.CompletedProcess[str], what: str) -> None:
        if res.returncode != 0:
            raise ServerStartError(
                f"PostgreSQL {what} failed ({res.returncode}):\n{res.stdout}{res.stderr}\n{_fmt_log(self.log)}"
            )


# --------------------------------------------------------------------------- OpenSSH


def find_sshd() -> str | None:
    env = os.environ.get("BREAKGLASS_SSHD")
    for cand in (env,) if env else ("/usr/sbin/sshd", shutil.which("sshd")):
        if cand and os.path.isabs(cand) and os.access(cand, os.X_OK):
            return cand
    return None


def generate_ed25519_key(path: str | os.PathLike[str], comment: str = "breakglass-test") -> str:
    """Create an unencrypted ed25519 key pair at ``path`` (+ ``.pub``); return the public line."""
    path = Path(path)
    path.unlink(missing_ok=True)
    Path(f"{path}.pub").unlink(missing_ok=True)
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        capture_output=True,
        stdin=subprocess.DEVNULL,
        timeout=30,
    )
    return Path(f"{path}.pub").read_text().strip()


class SshServer:
    """A real OpenSSH sshd on 127.0.0.1, in its own directory, public-key auth only.

    After ``start()``:
      host, port, login (current user; root when root), basedir, workdir, log_path
      client_key (private key path, authorized), client_public_key (line)
      host_key_line ("ssh-ed25519 AAAA..."), known_hosts (path: "[127.0.0.1]:PORT <hostkey>")
      authorized_keys (path; sshd re-reads it at every authentication)
    """

    def __init__(
        self,
        *,
        start_timeout: float = 15.0,
        log_level: str = "VERBOSE",
        die_with_parent: bool = True,
    ) -> None:
        self.start_timeout = start_timeout
        self.die_with_parent = die_with_parent
        self.log_level = log_level
        self.host = LOOPBACK
        self.port = 0
        self.login = _current_login()
        self.sshd: str | None = None
        self.basedir: Path | None = None
        self.workdir: Path | None = None
        self.config_path: Path | None = None
        self.log_path: Path | None = None
        self.host_key: Path | None = None
        self.host_key_line = ""
        self.client_key: Path | None = None
        self.client_public_key = ""
        self.authorized_keys: Path | None = None
        self.known_hosts: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None

    @classmethod
    def unavailable_reason(cls) -> str | None:
        if find_sshd() is None:
            return "OpenSSH server not found at /usr/sbin/sshd nor on PATH (apt-get install openssh-server)"
        for tool in ("ssh", "ssh-keygen"):
            if shutil.which(tool) is None:
                return f"OpenSSH client tool {tool!r} not found"
        if os.geteuid() == 0:
            try:
                pwd.getpwnam("sshd")
            except KeyError:
                return "sshd privilege-separation user 'sshd' does not exist"
        return None

    # ---------------------------------------------------------------- lifecycle

    def __enter__(self) -> SshServer:
        if self.proc is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, tmpdir: str | os.PathLike[str] | None = None) -> SshServer:
        if self.proc is not None:
            raise RuntimeError("SshServer already started")
        reason = self.unavailable_reason()
        if reason:
            raise ServerStartError(reason)
        self.sshd = find_sshd()
        try:
            self._prepare(tmpdir)
            self._start_with_free_port()
        except BaseException:
            self.stop()
            raise
        atexit.register(self.stop)
        return self

    def stop(self) -> None:
        """Kill sshd and its connection processes; remove the directory. Idempotent."""
        atexit.unregister(self.stop)
        if self.proc is not None:
            children = _children_of(self.proc.pid)
            _terminate(self.proc)
            for pid in children:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            self.proc = None
        _rmtree(self.basedir)
        self.basedir = None

    # ---------------------------------------------------------------- client side

    def ssh_command(
        self,
        *remote: str,
        key: str | os.PathLike[str] | None = None,
        known_hosts: str | os.PathLike[str] | None = None,
        options: Sequence[str] = (),
    ) -> list[str]:
        """argv for the real OpenSSH client to this server (for subprocess or pexpect)."""
        return [
            "ssh",
            "-F",
            "/dev/null",
            "-p",
            str(self.port),
            "-l",
            self.login,
            "-i",
            str(key or self.client_key),
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "IdentityAgent=none",
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            f"UserKnownHostsFile={known_hosts or self.known_hosts}",
            "-o",
            "GlobalKnownHostsFile=/dev/null",
            "-o",
            "UpdateHostKeys=no",
            "-o",
            "PasswordAuthentication=no",
            "-o",
            "ConnectTimeout=10",
            "-o",
            "LogLevel=ERROR",
            *options,
            self.host,
            *remote,
        ]

    def ssh(
        self,
        args: str | Sequence[str] = (),
        *,
        key: str | os.PathLike[str] | None = None,
        known_hosts: str | os.PathLike[str] | None = None,
        options: Sequence[str] = (),
        input: str | None = None,
        check: bool = False,
        timeout: float = 30,
    ) -> subprocess.CompletedProcess[str]:
        """Run the real ssh client; ``args`` is the remote command (a str or argv list)."""
        remote = [args] if isinstance(args, str) else list(args)
        return subprocess.run(
            self.ssh_command(*remote, key=key, known_hosts=known_hosts, options=options),
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            capture_output=True,
            text=True,
            check=check,
            timeout=timeout,
        )

    def authorize_key(self, public_key_line: str) -> None:
        """Also accept this public key (e.g. the gateway's upstream key) for ``login``."""
        assert self.authorized_keys is not None
        with self.authorized_keys.open("a") as f:
            f.write(public_key_line.strip() + "\n")

    def new_client_key(self, name: str) -> tuple[Path, str]:
        """A fresh key pair in this server's dir, NOT authorized; returns (private path, public line)."""
        assert self.basedir is not None
        path = self.basedir / f"{name}_ed25519"
        return path, generate_ed25519_key(path, f"breakglass-test-{name}")

    @property
    def known_hosts_line(self) -> str:
        return f"[{self.host}]:{self.port} {self.host_key_line}"

    def log(self) -> str:
        return _read(self.log_path) if self.log_path else ""

    # ---------------------------------------------------------------- internals

    def _prepare(self, tmpdir) -> None:
        if os.geteuid() == 0 and not os.path.isdir("/run/sshd"):
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        parent = Path(tmpdir) if tmpdir is not None else None
        self.basedir = Path(tempfile.mkdtemp(prefix="breakglass-sshd-", dir=parent))
        os.chmod(self.basedir, 0o755)
        self.workdir = self.basedir / "work"
        self.workdir.mkdir()
        self.config_path = self.basedir / "sshd_config"
        self.log_path = self.basedir / "sshd.log"
        self.authorized_keys = self.basedir / "authorized_keys"
        self.known_hosts = self.basedir / "known_hosts"
        self.host_key = self.basedir / "ssh_host_ed25519_key"
        self.client_key = self.basedir / "client_ed25519"
        host_pub = generate_ed25519_key(self.host_key, "breakglass-test-host")
        self.host_key_line = " ".join(host_pub.split()[:2])
        self.client_public_key = generate_ed25519_key(self.client_key, "breakglass-test-client")
        self.authorized_keys.write_text(self.client_public_key + "\n")

    def _write_config(self) -> None:
        assert self.config_path is not None
        self.config_path.write_text(
            f"""# breakglass throwaway test sshd
ListenAddress {self.host}:{self.port}
HostKey {self.host_key}
PidFile {self.basedir}/sshd.pid
AuthorizedKeysFile {self.authorized_keys}
StrictModes no
UsePAM no
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
AllowUsers {self.login}
UseDNS no
PrintMotd no
PrintLastLog no
LogLevel {self.log_level}
LoginGraceTime 30
MaxStartups 200
MaxSessions 100
X11Forwarding no
Subsystem sftp internal-sftp
"""
        )

    def _start_with_free_port(self) -> None:
        assert self.sshd and self.log_path and self.known_hosts
        last: ServerStartError | None = None
        for _ in range(5):  # the probed port may be taken before sshd binds it
            self.port = free_port()
            self._write_config()
            log_size = self.log_path.stat().st_size if self.log_path.exists() else 0
            with self.log_path.open("ab") as logf:
                self.proc = subprocess.Popen(
                    [self.sshd, "-D", "-e", "-f", str(self.config_path)],
                    stdin=subprocess.DEVNULL,
                    stdout=logf,
                    stderr=logf,
                    cwd=self.basedir,
                    start_new_session=True,
                    preexec_fn=_die_with_parent(signal.SIGTERM) if self.die_with_parent else None,
                )
            try:
                _wait_until(
                    self._banner_ok,
                    timeout=self.start_timeout,
                    what=f"sshd on {self.host}:{self.port}",
                    alive=lambda: self.proc is not None and self.proc.poll() is None,
                    log=self.log,
                )
            except ServerStartError as e:
                new_log = self.log()[log_size:]
                if self.proc is not None:
                    _terminate(self.proc)
                    self.proc = None
                if "Address already in use" in new_log:
                    last = e
                    continue
                raise
            self.known_hosts.write_text(self.known_hosts_line + "\n")
            return
        assert last is not None
        raise last

    def _banner_ok(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=2) as s:
                s.settimeout(2)
                return s.recv(64).startswith(b"SSH-2.0-")
        except OSError:
            return False


def _die_with_parent(sig: int) -> Callable[[], None] | None:
    """preexec_fn asking Linux to send ``sig`` to the child when the thread that spawned it
    dies (pytest killed, pytest-timeout's os._exit...). Only from the main thread: a worker
    thread that exits would otherwise take the server with it."""
    if (
        not sys.platform.startswith("linux")
        or threading.current_thread() is not threading.main_thread()
    ):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
    parent = os.getpid()

    def preexec() -> None:
        libc.prctl(1, int(sig), 0, 0, 0)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # parent already gone before prctl took effect
            os.kill(os.getpid(), sig)

    return preexec


def _terminate(proc: subprocess.Popen[bytes], timeout: float = 5) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)


def _children_of(pid: int) -> list[int]:
    """Direct children of ``pid`` (sshd's per-connection processes call setsid)."""
    kids = []
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            data = Path(stat).read_text()
        except OSError:
            continue
        # fields after the ")" that closes comm: state ppid ...
        fields = data[data.rfind(")") + 2 :].split()
        if len(fields) > 1 and fields[1] == str(pid):
            kids.append(int(stat.split("/")[2]))
    return kids
