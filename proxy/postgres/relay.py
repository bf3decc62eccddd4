"""The judged relay between an authenticated client and its upstream, without I/O.

``Relay.from_client`` takes complete frontend messages and returns the bytes to
send upstream: each statement is checked (``SqlChecker``) and recorded before
it is returned. A denied message is replaced by a harmless statement that the
upstream rejects at parse time (so the upstream itself aborts a transaction
block and, in the extended protocol, discards until Sync exactly as it would
for a real error); ``Relay.from_server`` swaps that upstream error for our
ErrorResponse (SQLSTATE 42501, naming the rule) and records each statement's
outcome (command tag, rows, error, duration).
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

from proxy.postgres import codec
from proxy.postgres.codec import Message, ProtocolError
from recorder.format import encode_str

#: Sent upstream in place of a denied statement: a syntax error, so nothing runs.
REFUSED_PROBE = "/* breakglass: refused by policy */ breakglass_refused"
INSUFFICIENT_PRIVILEGE = "42501"
MAX_TRACKED_NAMES = 10_000

_FRONTEND_RELAYED = frozenset(b"QPBESHDCFdcfX")
#: Backend messages the relay looks at; everything else (rows, descriptions...) just passes.
_BOOKKEEPING = frozenset((b"C", b"I", b"E", b"s", b"Z", b"S"))


class SessionBroken(Exception):
    """The upstream session can no longer be judged safely (message says why)."""


@dataclass(slots=True)
class Pending:
    """A request sent upstream whose response we are waiting for."""

    kind: str  # Q (simple query), X (Execute), F (FunctionCall), P (refused Parse), S (Sync)
    n: int = 0  # statement number in this session, 0 for S
    text: str = ""
    started: float = 0.0
    substitute: bytes | None = None  # our ErrorResponse replacing the upstream's
    tags: list[str] = field(default_factory=list)
    error: dict[str, str] | None = None
    done: bool = False


def rows_from_tag(tag: str) -> int | None:
    """``SELECT 5`` -> 5, ``INSERT 0 3`` -> 3; None for tags without a count."""
    last = tag.rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() and " " in tag else None


class Relay:
    """Judges and records one session's traffic. ``checker`` is a ``policy.sql_rules.SqlChecker``."""

    def __init__(
        self,
        checker: Any,
        recorder: Any,
        *,
        allow_everything: bool,
        record_parameters: bool = True,
        on_denial: Any = None,
        on_statement: Any = None,
        parameter_problem: Any = None,
    ) -> None:
        self.checker = checker
        self.recorder = recorder
        self.allow_everything = allow_everything
        self.record_parameters = record_parameters
        self.on_denial = on_denial or (lambda rule: None)
        self.on_statement = on_statement or (lambda: None)
        self.parameter_problem = parameter_problem or (lambda name, value: None)
        #: Set when the upstream's state stops matching what the checker assumes; from then
        #: on nothing more is forwarded and the session must end.
        self.broken: str | None = None
        self.pending: deque[Pending] = deque()
        self.discarding = False  # after a refused extended-protocol message, until Sync
        self.substitutions = 0
        self.statements: OrderedDict[str, str] = OrderedDict()  # prepared name -> text
        self.portals: OrderedDict[str, tuple[int, str]] = OrderedDict()  # portal -> (n, text)
        self.counter = 0
        self.terminated = False

    @property
    def busy(self) -> bool:
        """Whether the upstream may be executing something for us now."""
        return bool(self.pending)

    # -- client -> upstream -------------------------------------------------

    def from_client(self, messages: list[Message]) -> bytes | None:
        """Judge and record client messages; return the bytes for the upstream, or None
        when that is exactly the messages as received (the caller forwards them as is)."""
        if self.broken:
            raise SessionBroken(self.broken)
        out: list[bytes] = []
        for m in messages:
            t = m.type
            if t[0] not in _FRONTEND_RELAYED:
                raise ProtocolError(f"unexpected message type {t!r} after authentication")
            if self.discarding and t not in (b"S", b"H", b"X"):
                continue
            if t == b"Q":
                self._query(m, out)
            elif t == b"P":
                self._parse(m, out)
            elif t == b"B":
                self._bind(m, out)
            elif t == b"E":
                ex = codec.decode_execute(m.body)
                n, text = self.portals.get(ex.portal, (0, ""))
                self.pending.append(Pending("X", n, text, time.monotonic()))
                out.append(m.raw)
            elif t == b"S":
                self.discarding = False
                self.pending.append(Pending("S"))
                out.append(m.raw)
            elif t == b"F":
                self._function_call(m, out)
            elif t == b"d":
                self.recorder.event("copy_data", data=bytes(m.body))
                out.append(m.raw)
            elif t == b"C":
                kind, name = codec.decode_close(m.body)
                (self.statements if kind == "S" else self.portals).pop(name, None)
                out.append(m.raw)
            elif t == b"X":
                self.terminated = True
                out.append(m.raw)
            else:  # D (Describe), H (Flush), c (CopyDone), f (CopyFail): no statement text
                out.append(m.raw)
        if len(out) == len(messages) and all(
            o is m.raw for o, m in zip(out, messages, strict=True)
        ):
            return None
        return b"".join(out)

    def _deny(self, rule: str, message: str, text: str, protocol: str) -> bytes:
        self.recorder.decision(
            kind="sql",
            allowed=False,
            rule=rule,
            message=message,
            text=text,
            protocol=protocol,
        )
        self.on_denial(rule)
        return codec.encode_error(
            "ERROR",
            INSUFFICIENT_PRIVILEGE,
            f"breakglass: {message}",
            detail=f"rule: {rule}",
        )

    def _query(self, m: Message, out: list[bytes]) -> None:
        text = codec.decode_query(m.body)
        verdict = self.checker.check(text)
        self.counter += 1
        if verdict.allowed:
            self.recorder.append_encoded(
                "query", b'"n":%d,"text":%s,"protocol":"simple"' % (self.counter, encode_str(text))
            )
            self.on_statement()
            self.pending.append(Pending("Q", self.counter, text, time.monotonic()))
            out.append(m.raw)
            return
        err = self._deny(verdict.rule, verdict.message, text, "simple")
        self.substitutions += 1
        self.pending.append(Pending("Q", self.counter, text, time.monotonic(), substitute=err))
        out.append(codec.encode_query(REFUSED_PROBE))

    def _parse(self, m: Message, out: list[bytes]) -> None:
        p = codec.decode_parse(m.body)
        verdict = self.checker.check(p.query, single=True)
        if verdict.allowed:
            self.recorder.event("parse", statement=p.name, text=p.query)
            self._remember(self.statements, p.name, p.query)
            out.append(m.raw)
            return
        err = self._deny(verdict.rule, verdict.message, p.query, "extended")
        self.substitutions += 1
        self.discarding = True
        self.pending.append(Pending("P", 0, p.query, time.monotonic(), substitute=err))
        out.append(codec.encode_parse("", REFUSED_PROBE))

    def _bind(self, m: Message, out: list[bytes]) -> None:
        b = codec.decode_bind(m.body)
        text = self.statements.get(b.statement, "")
        fields: dict[str, Any] = {"statement": b.statement, "portal": b.portal, "text": text}
        if self.record_parameters:
            fields["params"] = [
                None
                if v is None
                else (v.decode("utf-8", "replace") if b.param_format(i) == 0 else v)
                for i, v in enumerate(b.params)
            ]
        else:
            fields["params"] = f"{len(b.params)} not recorded"
        self.counter += 1
        self.recorder.query(n=self.counter, protocol="extended", **fields)
        self.on_statement()
        self._remember(self.portals, b.portal, (self.counter, text))
        out.append(m.raw)

    def _function_call(self, m: Message, out: list[bytes]) -> None:
        fc = codec.decode_function_call(m.body)
        self.counter += 1
        if self.allow_everything:
            self.recorder.event("function_call", n=self.counter, oid=fc.oid)
            self.pending.append(
                Pending("F", self.counter, f"function call oid {fc.oid}", time.monotonic())
            )
            out.append(m.raw)
            return

        err = self._deny(
            "function-call",
            "FunctionCall messages are not allowed by this grant",
            f"FunctionCall oid {fc.oid}",
            "function-call",
        )
        self.substitutions += 1
        self.pending.append(Pending("F", self.counter, "", time.monotonic(), substitute=err))
        out.append(codec.encode_query(REFUSED_PROBE))

    @staticmethod
    def _remember(d: OrderedDict, key: str, value: Any) -> None:
        d[key] = value
        d.move_to_end(key)
        if len(d) > MAX_TRACKED_NAMES:
            d.popitem(last=False)

    # -- upstream -> client -------------------------------------------------

    def _head(self) -> Pending | None:
        for p in self.pending:
            if p.kind != "S" and not p.done:
                return p
        return None

    def from_server(self, messages: list[Message]) -> bytes | None:
        """Book-keep the upstream's answers; return the bytes for the client, or None when
        they are the messages as received."""
        rewrite = self.substitutions > 0
        out: list[bytes] = []
        for i, m in enumerate(messages):
            t = m.type
            if t not in _BOOKKEEPING:
                if rewrite:
                    out.append(m.raw)
                continue
            if t == b"C" or t == b"I":
                head = self._head()
                if head is not None:
                    tag = codec.decode_command_complete(m.body) if t == b"C" else ""
                    head.tags.append(tag)
                    if head.kind == "X":
                        self._finish(head)
            elif t == b"E":
                head = self._head()
                if head is not None:
                    if head.substitute is not None:
                        out.append(head.substitute)
                        self.substitutions -= 1
                        head.substitute = None
                        head.error = {"C": INSUFFICIENT_PRIVILEGE, "M": "refused by policy"}
                        head.done = True
                        continue
                    head.error = codec.decode_error_fields(m.body)
                    if head.kind in "XP":
                        self._finish(head)
            elif t == b"s":
                head = self._head()
                if head is not None and head.kind == "X":
                    head.tags.append("(suspended)")
                    self._finish(head)
            elif t == b"Z":
                self._ready()
            elif t == b"S":
                name, value = codec.decode_parameter_status(m.body)
                problem = self.parameter_problem(name, value)
                if problem and not self.broken:
                    self.broken = problem
                    self.recorder.event(
                        "parameter_violation", name=name, value=value, message=problem
                    )
                    # Nothing after this point reaches the client: it gets a FATAL instead
                    # of ReadyForQuery, so no further statement can be sent on this session.
                    return b"".join(out) if rewrite else b"".join([x.raw for x in messages[:i]])
            if rewrite:
                out.append(m.raw)
        return b"".join(out) if rewrite else None

    def _finish(self, p: Pending) -> None:
        p.done = True
        if p.kind == "P" or p.n == 0:
            return
        duration = (time.monotonic() - p.started) * 1000
        if len(p.tags) == 1 and not p.error:  # the common case, encoded without a dict
            tag = p.tags[0]
            rows = rows_from_tag(tag)
            encoded = b'"n":%d,"duration_ms":%.3f,"tag":%s' % (p.n, duration, encode_str(tag))
            if rows is not None:
                encoded += b',"rows":%d' % rows
            self.recorder.append_encoded("result", encoded)
            return
        fields: dict[str, Any] = {"n": p.n, "duration_ms": round(duration, 3)}
        if p.tags:
            fields["tag"] = p.tags[-1] if len(p.tags) == 1 else p.tags
            rows = [r for r in (rows_from_tag(x) for x in p.tags) if r is not None]
            if rows:
                fields["rows"] = sum(rows)
        if p.error:
            fields["error"] = {"sqlstate": p.error.get("C"), "message": p.error.get("M")}
        self.recorder.event("result", **fields)

    def _ready(self) -> None:
        """ReadyForQuery ends one Q, F or Sync; anything left before it was skipped."""
        while self.pending:
            p = self.pending.popleft()
            if p.kind in "QF":
                if not p.done and p.substitute is None:
                    self._finish(p)
                elif p.substitute is not None:  # upstream never answered our probe
                    self.substitutions -= 1
                return
            if p.kind == "S":
                return
            if not p.done:  # X or P skipped after an error
                if p.substitute is not None:
                    self.substitutions -= 1
                elif p.kind == "X":
                    p.tags.append("(skipped)")
                    self._finish(p)
