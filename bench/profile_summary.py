"""Summarise py-spy collapsed stacks (``--format raw``): the functions with the most samples,
by self time and by inclusive time.

    python bench/profile_summary.py PROFILE [--top 40] [--match proxy/]
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("profile", type=Path)
    ap.add_argument("--top", type=int, default=40)
    ap.add_argument("--match", default="", help="only frames whose text contains this")
    args = ap.parse_args()
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in args.profile.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    print(f"{total} samples")
    for title, counter in (("self", own), ("inclusive", inclusive)):
        print(f"\n-- {title} --")
        rows = [(f, n) for f, n in counter.most_common() if args.match in f][: args.top]
        for frame, n in rows:
            print(f"{100 * n / max(1, total):6.1f}%  {frame}")


if __name__ == "__main__":
    main()
