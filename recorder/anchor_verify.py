"""Verify recordings against the store: the objects themselves and the off-host anchors.

A recording's hash chain and signatures prove it whole only to someone who trusts the key.
Root on the gateway holds that key, so it could rewrite a recording and sign it again. The
anchors - signed heads (sequence number and SHA-256 of each anchored checkpoint or trailer
line) written to the locked store as the gateway saw them - do not depend on the key: a
rewritten recording no longer hashes to its anchored heads and is reported as tampered, with
whatever key it was signed. Anchors beyond the end of what the store holds name the events
that were lost (written on the gateway, never uploaded).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .audit import verify_audit
from .store import AUDIT, StoreConfig
from .store_read import PullResult, StoreFile, pull
from .uploader import _Scan, scan_file
from .verify import VerifyResult, verify_recording

__all__ = [
    "AnchorCheck",
    "StoreVerdict",
    "StoreView",
    "check_anchors",
    "open_view",
    "verify_store",
    "TAMPERED",
    "LOST",
]

TAMPERED = "tampered"
LOST = "lost"


@dataclass
class AnchorCheck:
    ok: bool
    problem: str | None = None
    message: str = ""
    anchored: int = 0  # anchors compared
    last_anchored_seq: int | None = None


def _when(t: Any) -> str:
    try:
        return dt.datetime.fromtimestamp(float(t), dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (TypeError, ValueError, OverflowError):
        return "?"


def check_anchors(path: Path, anchors: list[dict[str, Any]]) -> AnchorCheck:
    """Compare the signed lines of the recording at ``path`` with its anchored heads."""
    scan = _Scan()
    heads = {}
    with open(path, "rb") as f:
        size = f.seek(0, 2)
        while True:
            before = scan.offset
            for h in scan_file(f, scan, size):
                heads[h.seq] = h
            if scan.offset == before:
                break
    lines = scan.seq
    res = AnchorCheck(ok=True, anchored=len(anchors))
    lost: list[dict[str, Any]] = []
    for a in anchors:
        seq = a.get("seq")
        if not isinstance(seq, int):
            continue
        res.last_anchored_seq = (
            seq if res.last_anchored_seq is None else max(res.last_anchored_seq, seq)
        )
        rid = a.get("recording_id")
        if rid and scan.recording_id and rid != scan.recording_id:
            return AnchorCheck(
                False,
                TAMPERED,
                f"tampered: the recording id {scan.recording_id} is not the anchored one ({rid}); "
                "this is a different recording put in its place",
                len(anchors),
                res.last_anchored_seq,
            )
        if seq >= lines:
            lost.append(a)
            continue
        h = heads.get(seq)
        if h is None or h.line_sha256 != a.get("line_sha256"):
            return AnchorCheck(
                False,
                TAMPERED,
                f"tampered: event {seq} does not match the {a.get('kind', 'signed line')} "
                f"anchored off-host at {_when(a.get('_stored_at', a.get('anchored_at')))}: the "
                f"recording was rewritten after it was made (re-signed with key "
                f"{h.key_id if h else '?'!r}, anchored key {a.get('key_id')!r})",
                len(anchors),
                res.last_anchored_seq,
            )
    if lost:
        last = max(lost, key=lambda a: a["seq"])
        res.ok = False
        res.problem = LOST
        res.message = (
            f"events {lines}..{last['seq']} are missing: the gateway anchored them off-host "
            f"(last at {_when(last.get('_stored_at', last.get('anchored_at')))}) but they never "
            f"reached the store (the gateway stopped within its upload lag)"
        )
    else:
        res.message = f"matches {len(anchors)} off-host anchor(s)"
    return res


@dataclass
class StoreVerdict:
    """The verdict for one file in the store."""

    area: str
    name: str
    ok: bool
    messages: list[str] = field(default_factory=list)
    problem: str | None = None
    result: VerifyResult | None = None
    anchors: AnchorCheck | None = None
    store_ok: bool = True  # no tampering attempt, gap or anchor mismatch in the store itself

    def to_dict(self) -> dict[str, Any]:
        return {
            "area": self.area,
            "name": self.name,
            "ok": self.ok,
            "problem": self.problem,
            "messages": self.messages,
            "events": self.result.events if self.result else 0,
            "checkpoints": self.result.checkpoints if self.result else 0,
            "anchors": self.anchors.anchored if self.anchors else 0,
        }


def _verdict(sf: StoreFile, r: VerifyResult | None) -> StoreVerdict:
    v = StoreVerdict(sf.area, sf.name, ok=True, result=r)
    if sf.path is None:
        v.ok, v.problem, v.store_ok = False, LOST, False
        v.messages.append("no data in the store for this file (only anchors or markers)")
    elif r is not None:
        v.messages.append(r.message)
        if not r.ok:
            v.ok, v.problem = False, r.problem
            if not r.finalized and sf.last_upload is not None:
                v.messages.append(
                    f"its last segment reached the store at {_when(sf.last_upload)} (a session "
                    "still running, or a gateway that stopped without closing it)"
                )
    for p in sf.problems:
        v.ok = v.store_ok = False
        v.problem = v.problem or TAMPERED
        v.messages.append(p)
    if sf.path is not None and sf.anchors:
        a = check_anchors(sf.path, sf.anchors)
        v.anchors = a
        if a.ok:
            v.messages.append(a.message)
        else:
            v.ok = v.store_ok = False
            v.problem = TAMPERED if a.problem == TAMPERED else v.problem or a.problem
            v.messages.append(a.message)
    elif sf.path is not None and sf.area != AUDIT:
        v.ok = v.store_ok = False
        v.problem = v.problem or TAMPERED
        v.messages.append("no off-host anchor for this recording: it was not made by a gateway")
    return v


async def verify_store(
    cfg: StoreConfig,
    dest: Path,
    trusted_keys: dict[str, Ed25519PublicKey],
    only: str | None = None,
) -> tuple[PullResult, list[StoreVerdict]]:
    """Pull (rebuild) the store's files under ``dest`` and verify each: chain and signatures
    (:func:`verify_recording`), audit segment links (:func:`verify_audit`), the anchors, and
    any tampering attempt seen in the bucket (later versions, delete markers)."""
    pulled = await pull(cfg, dest, only=only)
    verdicts: list[StoreVerdict] = []
    for sf in pulled.recordings():
        r = verify_recording(sf.path, trusted_keys) if sf.path is not None else None
        verdicts.append(_verdict(sf, r))
    return pulled, verdicts + _audit_and_foreign(pulled, dest, trusted_keys)


def _audit_and_foreign(
    pulled: PullResult, dest: Path, trusted_keys: dict[str, Ed25519PublicKey]
) -> list[StoreVerdict]:
    verdicts: list[StoreVerdict] = []
    audit_files = pulled.audit()
    if audit_files:
        by_name = {}
        if (dest / AUDIT).is_dir():
            by_name = {p.name: r for p, r in verify_audit(dest / AUDIT, trusted_keys)}
        for sf in audit_files:
            verdicts.append(_verdict(sf, by_name.get(sf.name)))
        for name, r in by_name.items():
            if name not in {sf.name for sf in audit_files}:  # a removed predecessor
                verdicts.append(
                    StoreVerdict(AUDIT, name, False, [r.message], r.problem, r, store_ok=False)
                )
    for key in pulled.foreign:
        verdicts.append(
            StoreVerdict(
                "?",
                key,
                False,
                [f"tampering attempt: {key} is not a name a gateway writes; it was ignored"],
                TAMPERED,
                store_ok=False,
            )
        )
    return verdicts


@dataclass
class StoreView:
    """The store as reading commands see it: its files rebuilt under ``directory``
    (``recordings/``, ``audit/``), and what the store itself says about them.

    ``recordings``: session id -> the store's verdict on that recording *apart from* its own
    chain and signatures (which the reading commands verify as they do for local files):
    tampering attempts in the bucket, bytes missing from the store, the off-host anchors.
    ``problems``: failing verdicts of everything else (audit segments, foreign objects,
    recordings of which the store holds anchors but no data)."""

    url: str
    directory: Path
    recordings: dict[str, StoreVerdict] = field(default_factory=dict)
    problems: list[StoreVerdict] = field(default_factory=list)

    def verdict(self, session_id: str) -> StoreVerdict | None:
        return self.recordings.get(session_id)


async def open_view(
    cfg: StoreConfig, dest: Path, trusted_keys: dict[str, Ed25519PublicKey]
) -> StoreView:
    """Pull everything under ``cfg``'s prefix into ``dest`` (incrementally: a file whose
    segments did not change and still match their ETags is not fetched again) and check it
    against the bucket's history and the anchors (:class:`StoreView`)."""
    pulled = await pull(cfg, dest)
    view = StoreView(cfg.url, Path(dest))
    for sf in pulled.recordings():
        v = _verdict(sf, None)  # the store's own checks; the chain is verified by the reader
        if sf.path is None:
            view.problems.append(v)
        else:
            view.recordings[sf.name.removesuffix(".rec")] = v
    view.problems += [
        v
        for v in _audit_and_foreign(pulled, dest, trusted_keys)
        if not v.store_ok or v.result is None or not v.result.good
    ]
    return view


def check_local(
    paths: list[Path], pulled: PullResult, area_of: Any = None
) -> list[tuple[Path, AnchorCheck]]:
    """Check local recordings against the anchors in ``pulled`` (pulled without segments)."""
    out = []
    for p in paths:
        area = "audit" if p.name.endswith(".audit") else "recordings"
        sf = pulled.files.get((area, p.name))
        if sf is None or not sf.anchors:
            out.append(
                (p, AnchorCheck(False, LOST, f"no off-host anchor for {p.name} in the store"))
            )
            continue
        out.append((p, check_anchors(p, sf.anchors)))
    return out
