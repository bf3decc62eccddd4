"""The judged relay between an authenticated client and its upstream, without I/O.

``Relay.from_client`` takes complete frontend messages and returns the bytes to
send upstream: each statement is checked (``SqlChecker``) and recorded before
it is returned. A denied message is replaced by a harmless statement that the
upstream rejects at parse time (so the upstream itself aborts a transaction
block and, in the extended protocol, discards until Sync exactly as it would
for a real error); ``Relay.from_server`` swaps that upstream error for our
ErrorResponse (SQLSTATE 42501, naming the rule) and records each statement's
outcome (command tag, rows, error, duration).

Recording accuracy: binary parameters are recorded as text, decoded with the
statement's parameter types (from Parse, or the upstream's ParameterDescription);
a portal read in batches (Execute with a row limit, PortalSuspended) gets one
result for the whole portal, with every row and the time from the first fetch;
FunctionCall names the function and its arguments; COPY data carries the
statement number.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

from breakglass.proxy.postgres import codec
from breakglass.proxy.postgres.binary_values import decode_binary, type_name
from breakglass.proxy.postgres.codec import Message, ProtocolError
from breakglass.proxy.postgres.function_names import call_args, large_object_function
from breakglass.recorder.format import encode_str

#: Sent upstream in place of a denied statement: a syntax error, so nothing runs.
REFUSED_PROBE = "/* breakglass: refused by policy */ breakglass_refused"
INSUFFICIENT_PRIVILEGE = "42501"
MAX_TRACKED_NAMES = 10_000

_FRONTEND_RELAYED = frozenset(b"QPBESHDCFdcfX")
#: Backend messages the relay looks at; everything else (rows, descriptions...) just passes.
BOOKKEEPING = frozenset((b"C", b"I", b"E", b"s", b"Z", b"S", b"t", b"3"))


class SessionBroken(Exception):
    """The upstream session can no longer be judged safely (message says why)."""


@dataclass(slots=True)
class Statement:
    """A prepared statement as the relay knows it."""

    text: str
    #: Parameter type oids: from Parse (0 = unspecified), then from ParameterDescription.
    param_types: tuple[int, ...] = ()


@dataclass(slots=True)
class PortalRun:
    """A portal read in batches (Execute with a row limit): one result for all of them."""

    n: int
    started: float
    rows: int = 0  # rows of the batches that ended in PortalSuspended
    fetches: int = 0
    inflight: int = 0  # Executes sent and not answered yet
    detached: bool = False  # the portal is gone (closed, replaced, transaction ended)
    recorded: bool = False


@dataclass(slots=True)
class Pending:
    """A request sent upstream whose response we are waiting for."""

    # Q (simple query), X (Execute), F (FunctionCall), P (refused Parse), S (Sync),
    # D (Describe of a statement: waits for ParameterDescription), K (Close: CloseComplete)
    kind: str
    n: int = 0  # statement number in this session, 0 for S
    text: str = ""
    started: float = 0.0
    substitute: bytes | None = None  # our ErrorResponse replacing the upstream's
    tags: list[str] = field(default_factory=list)
    error: dict[str, str] | None = None
    done: bool = False
    run: PortalRun | None = None  # X with a row limit
    limit: int = 0  # X: Execute's row limit
    name: str = ""  # D: statement; K: portal name ("" for a statement Close)


def rows_from_tag(tag: str) -> int | None:
    """``SELECT 5`` -> 5, ``INSERT 0 3`` -> 3; None for tags without a count."""
    last = tag.rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() and " " in tag else None


class Relay:
    """Judges and records one session's traffic. ``checker`` is a ``policy.sql_rules.SqlChecker``."""

    #: Names functions called with FunctionCall (``function_names.FunctionNames``), set by
    #: the server; None: only the large-object functions are named.
    function_names: Any = None

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
        self.statements: OrderedDict[str, Statement] = OrderedDict()
        #: Portals being read in batches, by name.
        self.runs: dict[str, PortalRun] = {}
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
                self._execute(m)
                out.append(m.raw)
            elif t == b"S":
                self.discarding = False
                self.pending.append(Pending("S"))
                out.append(m.raw)
            elif t == b"F":
                self._function_call(m, out)
            elif t == b"d":
                head = self._head()
                self.recorder.event("copy_data", n=head.n if head else 0, data=bytes(m.body))
                out.append(m.raw)
            elif t == b"C":
                kind, name = codec.decode_close(m.body)
                if kind == "S":
                    self.statements.pop(name, None)
                else:
                    self.portals.pop(name, None)
                self.pending.append(Pending("K", name=name if kind == "P" else ""))
                out.append(m.raw)
            elif t == b"D":
                kind, name = codec.decode_describe(m.body)
                if kind == "S" and name in self.statements:
                    self.pending.append(Pending("D", name=name))
                out.append(m.raw)
            elif t == b"X":
                self.terminated = True
                out.append(m.raw)
            else:  # H (Flush), c (CopyDone), f (CopyFail): no statement text
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
        self._detach("")  # a simple Query replaces the unnamed portal
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
            self.recorder.append_encoded(
                "parse", b'"statement":%s,"text":%s' % (encode_str(p.name), encode_str(p.query))
            )
            self._remember(self.statements, p.name, Statement(p.query, p.param_type_oids))
            out.append(m.raw)
            return
        err = self._deny(verdict.rule, verdict.message, p.query, "extended")
        self.substitutions += 1
        self.discarding = True
        self.pending.append(Pending("P", 0, p.query, time.monotonic(), substitute=err))
        out.append(codec.encode_parse("", REFUSED_PROBE))

    def _bind(self, m: Message, out: list[bytes]) -> None:
        b = codec.decode_bind(m.body)
        st = self.statements.get(b.statement)
        text = st.text if st is not None else ""
        self.counter += 1
        if self.record_parameters and (not b.param_formats or not any(b.param_formats)):
            # The common case, all parameters in text format: encoded without a dict, to
            # the same bytes as the general path below.
            params = b",".join(
                [
                    b"null" if v is None else encode_str(v.decode("utf-8", "replace"))
                    for v in b.params
                ]
            )
            self.recorder.append_encoded(
                "query",
                b'"n":%d,"protocol":"extended","statement":%s,"portal":%s,"text":%s,"params":[%s]'
                % (
                    self.counter,
                    encode_str(b.statement),
                    encode_str(b.portal),
                    encode_str(text),
                    params,
                ),
            )
        else:
            self.recorder.query(
                n=self.counter, protocol="extended", **self._bind_fields(b, st, text)
            )
        self.on_statement()
        self._detach(b.portal)  # Bind replaces an unnamed portal; a named one must be closed
        self._remember(self.portals, b.portal, (self.counter, text))
        out.append(m.raw)

    def _bind_fields(self, b: codec.Bind, st: Statement | None, text: str) -> dict[str, Any]:
        """A Bind's recorded fields: binary parameters decoded by the statement's types."""
        fields: dict[str, Any] = {"statement": b.statement, "portal": b.portal, "text": text}
        if self.record_parameters:
            fields["params"] = params = []
            types = st.param_types if st is not None else ()
            binary = False
            for i, v in enumerate(b.params):
                if v is None:
                    params.append(None)
                elif b.param_format(i) == 0:
                    params.append(v.decode("utf-8", "replace"))
                else:
                    binary = True
                    decoded = decode_binary(types[i], v) if i < len(types) else None
                    params.append(v if decoded is None else decoded)
            if binary and any(types):
                fields["param_types"] = [type_name(o) if o else None for o in types]
        else:
            fields["params"] = f"{len(b.params)} not recorded"
        return fields

    def _execute(self, m: Message) -> None:
        ex = codec.decode_execute(m.body)
        n, text = self.portals.get(ex.portal, (0, ""))
        now = time.monotonic()
        run = self.runs.get(ex.portal)
        if run is None and ex.max_rows > 0:
            run = self.runs[ex.portal] = PortalRun(n, now)
        if run is not None:
            run.inflight += 1
        self.pending.append(Pending("X", n, text, now, run=run, limit=max(ex.max_rows, 0)))

    def _detach(self, portal: str) -> None:
        """The portal is gone: record its batched read now, or when its last batch answers."""
        run = self.runs.pop(portal, None)
        if run is not None:
            run.detached = True
            if run.inflight == 0:
                self._record_run(run)

    def _record_run(self, run: PortalRun, now: float | None = None) -> None:
        """A portal left suspended (the client stopped reading): the rows it fetched."""
        if run.recorded or run.fetches == 0 or run.n == 0:
            return
        run.recorded = True
        duration = ((now or time.monotonic()) - run.started) * 1000
        self.recorder.event(
            "result",
            n=run.n,
            duration_ms=round(duration, 3),
            tag="(suspended)",
            rows=run.rows,
            fetches=run.fetches,
        )

    def finish(self) -> None:
        """The session ends: record the portals still suspended."""
        runs, self.runs = self.runs, {}
        for run in runs.values():
            run.detached = True
            self._record_run(run)

    def _function_call(self, m: Message, out: list[bytes]) -> None:
        fc = codec.decode_function_call(m.body)
        self.counter += 1
        if self.allow_everything:
            names = self.function_names  # server.py: FunctionNames (the name follows if unknown)
            info = names.known(fc.oid) if names is not None else large_object_function(fc.oid)
            fields: dict[str, Any] = {"n": self.counter, "oid": fc.oid}
            if info is not None:
                fields["name"] = info.name
                if info.signature:
                    fields["signature"] = info.signature
            if self.record_parameters:
                fields["args"] = call_args(fc, info.arg_types if info is not None else ())
            else:
                fields["args"] = f"{len(fc.args)} not recorded"
            self.recorder.event("function_call", **fields)
            if info is None and names is not None:
                names.resolve(self.counter, fc, self.record_parameters)
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

    def from_server(self, messages: list[Message], complete: bytes | None = None) -> bytes | None:
        """Book-keep the upstream's answers; return the bytes for the client, or None when
        they are the messages as received. ``complete``: ``messages`` are only the
        book-keeping ones (``MessageReader.split_kept``) out of these bytes; only possible
        while no answer has to be rewritten (no substitution pending)."""
        rewrite = self.substitutions > 0
        if complete is not None and rewrite:
            raise SessionBroken("internal error: an answer to rewrite was split without its rows")
        out: list[bytes] = []
        for i, m in enumerate(messages):
            t = m.type
            if t not in BOOKKEEPING:
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
            elif t == b"t":
                head = self._head()
                if head is not None and head.kind == "D":
                    head.done = True
                    st = self.statements.get(head.name)
                    if st is not None:
                        st.param_types = codec.decode_parameter_description(m.body)
            elif t == b"3":
                head = self._head()
                if head is not None and head.kind == "K":
                    head.done = True
                    if head.name:
                        self._detach(head.name)
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
                    elif head.kind in "DK":
                        head.done = True
            elif t == b"s":
                head = self._head()
                if head is not None and head.kind == "X":
                    self._suspended(head)
            elif t == b"Z":
                self._ready(codec.decode_ready_for_query(m.body))
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
                    if complete is not None:
                        return complete[: m.end - len(m.raw)]
                    return b"".join(out) if rewrite else b"".join([x.raw for x in messages[:i]])
            if rewrite:
                out.append(m.raw)
        return b"".join(out) if rewrite else None

    def _suspended(self, p: Pending) -> None:
        """PortalSuspended: the batch returned exactly its row limit; more may follow."""
        p.done = True
        run = p.run
        if run is None:  # an Execute without a limit never suspends; be safe
            p.tags.append("(suspended)")
            self._finish(p)
            return
        run.inflight -= 1
        run.rows += p.limit
        run.fetches += 1
        if run.detached and run.inflight == 0:
            self._record_run(run)

    def _finish(self, p: Pending) -> None:
        p.done = True
        run = p.run
        if run is not None:
            run.inflight -= 1
        if p.kind == "P" or p.n == 0:
            return
        now = time.monotonic()
        if run is not None:
            self._finish_run(p, run, now)
            return
        duration = (now - p.started) * 1000
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

    def _finish_run(self, p: Pending, run: PortalRun, now: float) -> None:
        """The last batch of a portal read in batches: one result for the whole portal."""
        for portal, current in list(self.runs.items()):
            if current is run:
                del self.runs[portal]  # complete: a later Execute starts a new read
        run.recorded = True
        rows = run.rows
        tag = p.tags[-1] if p.tags else None
        last = rows_from_tag(tag) if tag else None
        if last is not None:
            rows += last
        fields: dict[str, Any] = {"n": p.n, "duration_ms": round((now - run.started) * 1000, 3)}
        if tag is not None:
            fields["tag"] = tag
        fields["rows"] = rows
        fields["fetches"] = run.fetches + 1
        if p.error:
            fields["error"] = {"sqlstate": p.error.get("C"), "message": p.error.get("M")}
        self.recorder.event("result", **fields)

    def _ready(self, status: str = "I") -> None:
        """ReadyForQuery ends one Q, F or Sync; anything left before it was skipped."""
        try:
            self._ready_pending()
        finally:
            if status == "I" and self.runs:  # no transaction: its portals are gone
                for portal in [k for k, r in self.runs.items() if r.inflight == 0]:
                    self._detach(portal)  # (a run with Executes in flight is a later Sync's)

    def _ready_pending(self) -> None:
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
            if not p.done:  # X or P skipped after an error (D, K: nothing to record)
                if p.substitute is not None:
                    self.substitutions -= 1
                elif p.kind == "X":
                    if p.run is not None:  # a later batch skipped: the rows so far stand
                        p.done = True
                        p.run.inflight -= 1
                        if p.run.detached and p.run.inflight == 0:
                            self._record_run(p.run)
                        continue
                    p.tags.append("(skipped)")
                    self._finish(p)
