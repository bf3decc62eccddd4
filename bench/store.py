"""Object store benchmark (not a test): does streaming to S3 slow the recorder down, and how far
behind the session is the store?

    python bench/store.py [--size-mb 256] [--rounds 3] [--rate-mb 20 --seconds 10]

Against a throwaway SeaweedFS on loopback (Object Lock bucket, COMPLIANCE retention):
  * bulk: a recording writer appends SIZE MiB of 32 KiB output frames as fast as it can,
    with no store and with the uploader following the file (same run, interleaved rounds);
    prints MB/s for each and the ratio;
  * paced: RATE MB/s for SECONDS seconds with the uploader (upload_lag 5 s): the longest and
    the median wait of data for its upload (``Uploader.max_lag``), and how long after the
    trailer the store held the whole file.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402

from breakglass.recorder.store import StoreConfig  # noqa: E402
from breakglass.recorder.uploader import Uploader  # noqa: E402
from breakglass.recorder.writer import RecordingWriter  # noqa: E402
from breakglass.throwaway.s3 import S3Server  # noqa: E402

CHUNK = 32 << 10


def store_cfg(s3: S3Server, prefix: str, lag: float) -> StoreConfig:
    a, s = s3.keys["gateway"]
    cred = Path(s3.dir) / "bench-cred"
    cred.write_text(f"[default]\naws_access_key_id = {a}\naws_secret_access_key = {s}\n")
    return StoreConfig(
        bucket=s3.bucket,
        prefix=prefix,
        endpoint_url=s3.endpoint_url,
        region=s3.region,
        credentials_file=cred,
        retention_days=1,
        upload_lag=lag,
    )


def store_gateway_config(
    config: Path, s3: S3Server, prefix: str, port: int, new_port: int, metrics_port: int
) -> Path:
    """For ``bench/ssh.py --store`` and ``bench/pg.py --store``: a copy of a gateway's config
    (``config-store.toml`` next to it) listening on ``new_port`` instead of ``port``, with its
    own recordings, audit log and admin socket, streaming them to ``s3`` under ``prefix``
    (COMPLIANCE, 1 day), and its metrics on ``metrics_port`` (the upload lag)."""
    a, s = s3.keys["gateway"]
    cred = config.parent / "s3-bench-credentials"
    cred.write_text(f"[default]\naws_access_key_id = {a}\naws_secret_access_key = {s}\n")
    cred.chmod(0o600)
    text = (
        config.read_text()
        .replace(f"127.0.0.1:{port}", f"127.0.0.1:{new_port}")
        .replace('admin_socket = "run/admin.sock"', 'admin_socket = "run/admin-store.sock"')
        .replace('directory = "recordings"', 'directory = "recordings-store"', 1)
        .replace('audit_directory = "audit"', 'audit_directory = "audit-store"', 1)
        .replace("\n[gateway]\n", f'\n[gateway]\nmetrics_listen = "127.0.0.1:{metrics_port}"\n', 1)
    )
    text += (
        f'\n[recorder.store]\nurl = "s3://{s3.bucket}/{prefix}"\n'
        f'endpoint_url = "{s3.endpoint_url}"\nregion = "{s3.region}"\n'
        f'credentials_file = "{cred}"\nretention = "compliance:1d"\n'
    )
    out = config.with_name("config-store.toml")
    out.write_text(text)
    return out


def store_metrics(metrics_port: int) -> dict[str, float]:
    """``breakglass_store_*`` of a gateway's /metrics (names without the prefix)."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("breakglass_store_"):
            name, value = line.rsplit(" ", 1)
            out[name.removeprefix("breakglass_store_")] = float(value)
    return out


def store_summary(metrics_port: int, timeout: float = 60.0) -> str:
    """Wait (bounded) for the store gateway's backlog to drain; one line about its uploads."""
    deadline = time.monotonic() + timeout
    m = store_metrics(metrics_port)
    while m["pending_bytes"] > 0 and time.monotonic() < deadline:
        time.sleep(0.5)
        m = store_metrics(metrics_port)
    return (
        f"store: {m['uploads_total']:.0f} segments, {m['uploaded_bytes_total'] / 1e6:.0f} MB "
        f"uploaded, longest upload lag {m['upload_lag_max_seconds']:.1f} s, "
        f"{m['upload_failures_total']:.0f} failed attempts, {m['pending_bytes']:.0f} bytes "
        "still pending"
    )


async def write(directory: Path, name: str, size: int, rate: float | None) -> tuple[float, float]:
    """Append ``size`` bytes of output; returns (seconds, time the trailer was written)."""
    key = Ed25519PrivateKey.generate()
    block = os.urandom(CHUNK)
    w = RecordingWriter.create(directory / name, {"bench": True}, key, "bench")
    t0 = time.perf_counter()
    n = 0
    while n < size:
        w.output(block)
        n += CHUNK
        if rate is not None:
            ahead = n / rate - (time.perf_counter() - t0)
            if ahead > 0:
                await asyncio.sleep(ahead)
        elif n % (4 << 20) == 0:
            await asyncio.sleep(0)  # let the uploader's loop run, as a gateway's would
    await asyncio.to_thread(w.close, "done")
    return time.perf_counter() - t0, time.perf_counter()


async def main_async(a: argparse.Namespace) -> None:
    with S3Server() as s3, tempfile.TemporaryDirectory(prefix="bench-store-") as tmp:
        base = Path(tmp)
        size = a.size_mb << 20
        plain: list[float] = []
        streamed: list[float] = []
        for r in range(a.rounds):
            d = base / f"plain{r}"
            d.mkdir()
            secs, _ = await write(d, "s.rec", size, None)
            plain.append(size / secs / 1e6)
            d = base / f"store{r}"
            d.mkdir()
            up = await Uploader(store_cfg(s3, f"bulk{r}", 5.0), [(d, ".rec")]).start()
            secs, _ = await write(d, "s.rec", size, None)
            streamed.append(size / secs / 1e6)
            await up.close(timeout=120)
        p, s = statistics.median(plain), statistics.median(streamed)
        print(f"bulk {a.size_mb} MiB: local only {p:.0f} MB/s, with the store {s:.0f} MB/s")
        print(f"store/local writer throughput ratio: {s / p:.2f}")

        d = base / "paced"
        d.mkdir()
        cfg = store_cfg(s3, "paced", a.lag)
        up = await Uploader(cfg, [(d, ".rec")]).start()
        _, t_end = await write(d, "s.rec", int(a.rate_mb * 1e6 * a.seconds), a.rate_mb * 1e6)
        while (d / "s.rec") not in up.finished:
            await asyncio.sleep(0.02)
        closed_after = time.perf_counter() - t_end
        print(
            f"paced {a.rate_mb} MB/s for {a.seconds} s, upload_lag {a.lag} s: "
            f"{up.uploads} segments, data in the store after {statistics.median(up.lags):.2f} s "
            f"(median), {up.max_lag:.2f} s (longest), "
            f"whole file in the store {closed_after:.2f} s after the trailer"
        )
        await up.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mb", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--rate-mb", type=float, default=20.0)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--lag", type=float, default=5.0)
    asyncio.run(main_async(ap.parse_args()))


if __name__ == "__main__":
    main()
