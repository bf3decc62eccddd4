"""Build a modified copy of the gateway for ``bench/pg.py --baseline``: measurements, not products.

    python bench/variant_tree.py OUT --variant compiled|no-file-write|no-fsync|frame-only

OUT gets the installed layout (``breakglass/proxy/...``), which ``bench/pg.py --baseline OUT``
runs from PYTHONPATH beside the real gateway, in the same run. Each variant answers one
question of issue #17 (the README's "Fourth pass" has the figures):

- ``compiled``: the per-read path compiled with mypyc (``codec``, ``relay``, ``format``,
  ``writer``, ``server``, ``sessions``); how much would a compiled build save? It needs
  ``pip install mypy`` and a C compiler, and takes a few minutes. mypyc needs a few edits
  (below), and ``# type: ignore`` where mypy cannot prove an attribute is not None; the
  recordings' weak registry becomes a plain set (mypyc classes take no weak references).
- ``no-file-write``: records are chained and buffered but never written to the file; what
  do the recording's ``write`` calls cost?
- ``no-fsync``: records are written but not fsynced within an hour; what does the commit
  cadence (``commit_interval``) cost the latency?
- ``frame-only``: the relay judges and records nothing (it forwards everything as is); what
  does the gateway cost around the judging and recording?

Each edit names the exact source text it replaces and fails if that text is gone, so the
variants cannot silently drift from the code they measure (``tests/test_bench_variant_tree.py``).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

Edit = tuple[str, str, str]  # file in the installed layout, source text, replacement

_WRITER_SETUP_START = "        self = object.__new__(cls)\n"
_WRITER_SETUP_END = "        self._t_offset = self._wall0 - self._mono0\n"

NO_FILE_WRITE: list[Edit] = [
    (
        "breakglass/recorder/writer.py",
        "_os_write = os.write\n_writev = os.writev\n",
        "_os_write = lambda fd, b: len(b)  # variant no-file-write\n"
        "_writev = lambda fd, bufs: sum(map(len, bufs))  # variant no-file-write\n",
    ),
]

NO_FSYNC: list[Edit] = [
    (
        "breakglass/recorder/writer.py",
        "        step = self._commit_interval / 2\n        now = _monotonic()\n",
        "        step = self._commit_interval / 2\n        now = _monotonic()\n"
        "        return now + 3600  # variant no-fsync: not within a bench run\n",
    ),
]

FRAME_ONLY: list[Edit] = [
    (
        "breakglass/proxy/postgres/relay.py",
        "            raise SessionBroken(self.broken)\n        out: list[bytes] = []\n",
        "            raise SessionBroken(self.broken)\n"
        "        return None  # variant frame-only: no judging, no recording\n"
        "        out: list[bytes] = []\n",
    ),
    (
        "breakglass/proxy/postgres/relay.py",
        "        rewrite = self.substitutions > 0\n",
        "        return None  # variant frame-only\n        rewrite = self.substitutions > 0\n",
    ),
]

COMPILED: list[Edit] = [
    # mypy's types, where they differ from what the code does at run time (a compiled
    # module checks them): a None among the parameters, a list where a count was
    (
        "breakglass/proxy/postgres/relay.py",
        'fields["params"] = params = []',
        'params: list[Any] = []\n            fields["params"] = params',
    ),
    (
        "breakglass/proxy/postgres/relay.py",
        "            rows = [r for r in (rows_from_tag(x) for x in p.tags) if r is not None]\n"
        "            if rows:\n"
        '                fields["rows"] = sum(rows)',
        "            counts = [r for r in (rows_from_tag(x) for x in p.tags) if r is not None]\n"
        "            if counts:\n"
        '                fields["rows"] = sum(counts)',
    ),
    (
        "breakglass/proxy/postgres/codec.py",
        "                complete = src  # the whole read",
        "                complete = bytes(src)  # the whole read",
    ),
    (
        "breakglass/recorder/writer.py",
        "            extra = self._field_cache.get((channel, stream))\n            if extra is None:",
        "            cached = self._field_cache.get((channel, stream))\n"
        "            extra = cached or b''\n"
        "            if cached is None:",
    ),
    # mypyc classes take no weak references; a bench gateway closes its writers anyway
    (
        "breakglass/recorder/writer.py",
        "_live_writers: weakref.WeakSet[RecordingWriter] = weakref.WeakSet()",
        "_live_writers: set = set()  # variant compiled",
    ),
    # exceptions with two bases stay Python classes
    (
        "breakglass/recorder/format.py",
        "class RecorderError(Exception):",
        "@mypyc_attr(native_class=False)\nclass RecorderError(Exception):",
    ),
    (
        "breakglass/recorder/format.py",
        "class RecorderFieldError(RecorderError, TypeError):",
        "@mypyc_attr(native_class=False)\nclass RecorderFieldError(RecorderError, TypeError):",
    ),
    (
        "breakglass/recorder/format.py",
        "from __future__ import annotations\n",
        "from __future__ import annotations\n\nfrom mypy_extensions import mypyc_attr\n",
    ),
    # mypyc names the C field of ``_thread`` ``__thread``, a C keyword
    ("breakglass/proxy/sessions.py", "self._thread", "self._watch_thread"),
]

#: Compiled as one group: the modules each PostgreSQL read goes through.
COMPILED_MODULES = [
    "breakglass/proxy/postgres/codec.py",
    "breakglass/proxy/postgres/relay.py",
    "breakglass/recorder/format.py",
    "breakglass/recorder/writer.py",
    "breakglass/proxy/postgres/server.py",
    "breakglass/proxy/sessions.py",
]
#: Where mypy cannot prove an attribute set or a value not None, but the code does (a
#: ``# type: ignore`` there is enough; a wrong type elsewhere would fail at run time).
IGNORE_ERRORS_IN = (
    "breakglass/proxy/postgres/server.py",
    "breakglass/proxy/sessions.py",
    "breakglass/recorder/writer.py",
)

VARIANTS = {
    "compiled": COMPILED,
    "no-file-write": NO_FILE_WRITE,
    "no-fsync": NO_FSYNC,
    "frame-only": FRAME_ONLY,
}


def copy_installed_layout(out: Path) -> None:
    """The repository's folders at their installed names (pyproject's ``package-dir``)."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    for package, folder in config["package-dir"].items():
        shutil.copytree(
            ROOT / folder,
            out.joinpath(*package.split(".")),
            ignore=shutil.ignore_patterns("__pycache__", "node_modules", "*.so"),
            dirs_exist_ok=True,
        )


def apply(out: Path, edits: list[Edit]) -> None:
    """Replace each edit's source text, which must occur in its file (all occurrences)."""
    for name, old, new in edits:
        path = out / name
        text = path.read_text()
        if old not in text:
            raise SystemExit(f"variant_tree: {name} no longer contains {old[:60]!r}; update")
        path.write_text(text.replace(old, new))


def writer_setup_method(out: Path) -> None:
    """``RecordingWriter.create`` fills a bare instance; mypyc needs the attributes set in a
    method of the class: move them into ``_setup``, called by ``create``."""
    path = out / "breakglass/recorder/writer.py"
    text = path.read_text()
    start, end = text.find(_WRITER_SETUP_START), text.find(_WRITER_SETUP_END)
    init = (
        "    def __init__(self) -> None:  # pragma: no cover - use create()\n"
        '        raise TypeError("use RecordingWriter.create(...)")\n'
    )
    if start < 0 or end < start or init not in text:
        raise SystemExit("variant_tree: RecordingWriter.create changed; update writer_setup_method")
    end += len(_WRITER_SETUP_END)
    body = text[start + len(_WRITER_SETUP_START) : end]
    params = (
        "path, recording_id, key_id, header, signing_key, checkpoint_interval, "
        "checkpoint_events, commit_interval, on_failure, max_buffer, raw_min, write_through"
    )
    setup = (
        "    def __init__(self) -> None:\n        pass\n\n"
        "    def _setup(self, path: Path, recording_id: str, key_id: str, header: dict, "
        "signing_key: Ed25519PrivateKey, checkpoint_interval: float, checkpoint_events: int, "
        "commit_interval: float, on_failure: Callable[[Exception], None] | None, "
        "max_buffer: int, raw_min: int, write_through: bool) -> None:\n"
        f"{body}        self._fd: int = -1\n"
    )
    text = text[:start] + f"        self = cls()\n        self._setup({params})\n" + text[end:]
    path.write_text(text.replace(init, setup))


def ignore_reported_errors(out: Path) -> None:
    """Run mypy on the compiled modules and put ``# type: ignore`` on each error line of
    ``IGNORE_ERRORS_IN`` (an error in another compiled module stops the build: fix it as an
    edit above)."""
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--no-incremental", *COMPILED_MODULES],
        cwd=out,
        capture_output=True,
        text=True,
    )
    lines: dict[str, set[int]] = {}
    for m in re.finditer(r"^(breakglass/\S+\.py):(\d+): error:", result.stdout, re.M):
        if m.group(1) not in COMPILED_MODULES:
            continue  # imported, not compiled: mypyc does not mind
        if m.group(1) not in IGNORE_ERRORS_IN:
            raise SystemExit(f"variant_tree: mypy error outside {IGNORE_ERRORS_IN}:\n{m.group(0)}")
        lines.setdefault(m.group(1), set()).add(int(m.group(2)))
    for name, numbers in lines.items():
        path = out / name
        src = path.read_text().split("\n")
        for n in numbers:
            code, hash_, comment = src[n - 1].partition("  #")
            src[n - 1] = f"{code}  # type: ignore{hash_}{comment}"
        path.write_text("\n".join(src))


def build(out: Path, variant: str) -> None:
    if out.exists():
        raise SystemExit(f"variant_tree: {out} exists; give a new directory")
    copy_installed_layout(out)
    apply(out, VARIANTS[variant])
    if variant == "compiled":
        writer_setup_method(out)
        ignore_reported_errors(out)
        subprocess.run([sys.executable, "-m", "mypyc", *COMPILED_MODULES], cwd=out, check=True)
        shutil.rmtree(out / "build", ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--variant", choices=sorted(VARIANTS), required=True)
    args = ap.parse_args()
    build(args.out.resolve(), args.variant)
    print(f"python bench/pg.py --baseline {args.out.resolve()}")


if __name__ == "__main__":
    main()
