"""bench/variant_tree.py: the measurement variants of #17 still apply to the code they
measure, and do what they say (mypyc itself is not run here: it takes minutes)."""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from breakglass.proxy.postgres import codec
from breakglass.recorder.verify import verify_recording

BENCH = Path(__file__).resolve().parent.parent / "bench"


def load(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    # (a name inside the breakglass package: its relative imports take the installed modules)
    spec.loader.exec_module(module)
    return module


variant_tree = load(BENCH / "variant_tree.py", "variant_tree")


@pytest.fixture
def tree(tmp_path: Path):
    def build(edits) -> Path:
        out = tmp_path / "tree"
        variant_tree.copy_installed_layout(out)
        variant_tree.apply(out, edits)
        return out

    return build


class Recorded:
    """Takes the relay's records."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def append_encoded(self, kind: str, fields: bytes) -> None:
        self.lines.append(kind)

    def event(self, kind: str, **fields) -> None:
        self.lines.append(kind)


class AllowAll:
    def check(self, text: str, single: bool = False):
        raise AssertionError("the frame-only relay judges nothing")


def test_frame_only_relay_forwards_as_is_and_records_nothing(tree):
    out = tree(variant_tree.FRAME_ONLY)
    relay = load(
        out / "breakglass/proxy/postgres/relay.py", "breakglass.proxy.postgres.variant_relay"
    )
    recorder = Recorded()
    r = relay.Relay(AllowAll(), recorder, allow_everything=False)
    messages = codec.MessageReader().feed_and_split(codec.encode_query("delete from orders"))
    assert r.from_client(messages) is None
    assert r.from_server(messages) is None
    assert recorder.lines == []


def variant_writer(out: Path, name: str, path: Path, key=None, **options):
    """A ``RecordingWriter`` of the variant tree ``out`` (``name``: its module's, unique)."""
    module = load(out / "breakglass/recorder/writer.py", f"breakglass.recorder.writer_{name}")
    key = key or Ed25519PrivateKey.generate()
    return module.RecordingWriter.create(path, {"user": "test"}, key, "k1", **options)


def test_no_file_write_writer_chains_but_writes_nothing(tree, tmp_path):
    w = variant_writer(tree(variant_tree.NO_FILE_WRITE), "no_file_write", tmp_path / "r.rec")
    before = w.event_count
    w.append_encoded("query", b'"n":1')
    w.write()
    assert w.event_count == before + 1
    assert (tmp_path / "r.rec").stat().st_size == 0
    w.close()


def test_no_fsync_writer_puts_its_fsync_an_hour_away(tree, tmp_path):
    w = variant_writer(tree(variant_tree.NO_FSYNC), "no_fsync", tmp_path / "r.rec")
    w.append_encoded("query", b'"n":1')
    w.write()
    assert w._sync_due - time.monotonic() > 3000
    w.close()


def test_compiled_variant_edits_apply_and_the_restructured_writer_still_records(tree, tmp_path):
    out = tree(variant_tree.COMPILED)
    variant_tree.writer_setup_method(out)
    key = Ed25519PrivateKey.generate()
    path = tmp_path / "r.rec"
    w = variant_writer(out, "compiled", path, key, checkpoint_events=2)
    for n in range(5):
        w.append_encoded("query", b'"n":%d' % n)
    w.close("done")
    result = verify_recording(path, {"k1": key.public_key()})
    assert result.ok, result
    assert path.read_bytes().count(b'"kind":"query"') == 5


def test_an_edit_whose_source_text_is_gone_stops_the_build(tree):
    with pytest.raises(SystemExit, match="no longer contains"):
        tree([("breakglass/proxy/postgres/relay.py", "text that is not there", "x")])
