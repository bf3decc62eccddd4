"""The distribution installs one namespace, ``breakglass``, mapped onto the repository's
top-level folders: every package folder is listed, and nothing else lands at the top level
of site-packages (.ci/release-check builds the wheel and installs it beside proxy.py)."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _setuptools() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_every_package_folder_is_installed_under_breakglass():
    st = _setuptools()
    mapping = st["package-dir"]
    assert all(name == "breakglass" or name.startswith("breakglass.") for name in mapping)
    listed = set(st["packages"])
    expected = {"breakglass"}
    for name, folder in mapping.items():
        if name == "breakglass":
            continue
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder).as_posix()
            expected.add(name if rel == "." else f"{name}.{rel.replace('/', '.')}")
    assert expected == listed


def test_the_command_and_modules_come_from_the_namespace():
    import breakglass.cli.main
    import breakglass.proxy.gateway

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"breakglass": "breakglass.cli.main:main"}
    assert Path(breakglass.proxy.gateway.__file__).resolve() == ROOT / "proxy" / "gateway.py"
    assert callable(breakglass.cli.main.main)


def test_every_module_imports():
    """After a move, nothing still imports a module by its old name."""
    import importlib

    st = _setuptools()
    names = []
    for name, folder in st["package-dir"].items():
        if name == "breakglass":
            continue
        for py in sorted((ROOT / folder).rglob("*.py")):
            rel = py.relative_to(ROOT / folder).with_suffix("").as_posix().replace("/", ".")
            rel = rel.removesuffix("__init__").rstrip(".")
            names.append(f"{name}.{rel}" if rel else name)
    assert len(names) > 50
    for module in names:
        importlib.import_module(module)
