"""bench/common.py: the benches name the interpreter each relay runs on, since the same code
costs 14-21 % less CPU on a PGO/LTO build with libpython linked in than on a shared-libpython
build (README, issue #17 fifth pass)."""

from __future__ import annotations

import importlib.util
import os
import platform
import sys
from pathlib import Path

SPEC = importlib.util.spec_from_file_location(
    "bench_common", Path(__file__).resolve().parent.parent / "bench" / "common.py"
)
common = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(common)


def libpython_is_shared() -> bool:
    with open("/proc/self/maps") as maps:
        return any("libpython" in line for line in maps)


def test_names_the_running_interpreter_its_version_and_how_libpython_is_linked():
    text = common.describe_interpreter()
    path, version, rest = text.split(" ", 2)
    assert path == os.path.realpath(sys.executable)
    assert version == platform.python_version()
    expected = "libpython as a shared library" if libpython_is_shared() else "libpython linked in"
    assert rest == expected
