"""Benchmark the chained recording writer with its default checkpoint and group-commit settings.

    python bench/recorder.py [--events N] [--size BYTES] [--dir DIR]

Measures, in one process:
  * throughput: N ``output`` events of BYTES bytes appended as fast as possible from an asyncio
    coroutine (so the committer thread's write+fsync competes with the loop like in the gateway),
    timed up to and including ``close()`` (end, trailer, final fsync): every event is on disk;
  * append latency: a second run timing each append (p50/p99/p99.9/max), which includes the
    inline checkpoint signatures (every 1,000 events or 1 s) and GIL hand-offs to the committer;
  * the verifier's speed on the result.
The LAST line is ``events/s: N`` (throughput run).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402

from breakglass.recorder.verify import verify_recording  # noqa: E402
from breakglass.recorder.writer import RecordingWriter  # noqa: E402


async def throughput(path: Path, key: Ed25519PrivateKey, n: int, payload: bytes) -> float:
    w = RecordingWriter.create(path, {"bench": "throughput"}, key, "bench")
    out = w.output
    t0 = time.perf_counter()
    for i in range(n):
        out(payload)
        if i & 0x3FFF == 0:
            await asyncio.sleep(0)  # let the loop breathe, as a real relay does
    await asyncio.to_thread(w.close, "bench done")
    return time.perf_counter() - t0


async def latency(path: Path, key: Ed25519PrivateKey, n: int, payload: bytes) -> list[int]:
    w = RecordingWriter.create(path, {"bench": "latency"}, key, "bench")
    out = w.output
    clock = time.perf_counter_ns
    samples = [0] * n
    for i in range(n):
        t0 = clock()
        out(payload)
        samples[i] = clock() - t0
        if i & 0x3FFF == 0:
            await asyncio.sleep(0)
    await asyncio.to_thread(w.close, "bench done")
    return samples


def pct(sorted_ns: list[int], p: float) -> float:
    return sorted_ns[min(len(sorted_ns) - 1, int(len(sorted_ns) * p))] / 1000.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--dir", type=Path, default=None, help="where to write (default: a temp dir)")
    args = ap.parse_args()
    payload = os.urandom(args.size)
    key = Ed25519PrivateKey.generate()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        d = Path(tmp)
        lat = sorted(asyncio.run(latency(d / "latency.rec", key, args.events, payload)))
        print(
            f"append latency (us): p50 {pct(lat, 0.50):.2f}  p99 {pct(lat, 0.99):.2f}  "
            f"p99.9 {pct(lat, 0.999):.2f}  max {lat[-1] / 1000:.0f}"
        )
        secs = asyncio.run(throughput(d / "throughput.rec", key, args.events, payload))
        size = (d / "throughput.rec").stat().st_size
        t0 = time.perf_counter()
        r = verify_recording(d / "throughput.rec", {"bench": key.public_key()})
        vsecs = time.perf_counter() - t0
        print(f"file: {size / 1e6:.1f} MB, {r.events} lines, {r.checkpoints} checkpoints")
        print(
            f"verify: {r.message.split(':')[0]} in {vsecs:.2f} s ({r.events / vsecs:,.0f} lines/s)"
        )
        print(f"{args.events} x {args.size}-byte output events in {secs:.3f} s (incl. close+fsync)")
        print(f"events/s: {args.events / secs:.0f}")


if __name__ == "__main__":
    main()
