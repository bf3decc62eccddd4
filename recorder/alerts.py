"""Alerts: Slack-compatible webhooks for what security must hear about at once.

Alert types (``event`` in the payload):

* ``breakglass.used`` - a session started under a break-glass grant;
* ``denials`` - a session had ``denials`` denied commands/statements within ``denials_window``
  (once per session);
* ``recording.verify_failed`` - a recording failed verification (gateway: right after it was
  finalized; CLI: when the index finds it);
* ``review.overdue`` - a break-glass session is still unreviewed after the review deadline;
* ``takeover.attempt`` - a session tried to change the gateway's own access to a target (its
  upstream database roles, authentication settings, role passwords, or on SSH the target's
  ``authorized_keys``), see policy/role_guard.py.

API: ``notify(event_type, **fields)`` is synchronous, thread-safe and never blocks: it formats
the alert and puts it on a bounded in-memory queue per webhook (full queue: the alert is dropped
and logged). A daemon thread per webhook POSTs them in order, retrying connection errors, 429
and 5xx with exponential backoff (``Retry-After`` honoured, capped), giving up on other 4xx.
``notify("denial", session=..., ...)`` feeds the per-session denial counter instead of alerting.

Each alert carries an ``alert_id`` so a receiver can drop a duplicate (a POST whose response was
lost is retried). Webhook URLs are secrets (a Slack URL is its own credential): they are never
logged (only the webhook's name and host), and can come from a file or the environment.
Denied command or statement text is not sent (it may hold secrets or personal data): an alert
names the session; security looks at the recording.

Config (validated here, with key paths in errors)::

    [alerts]
    denials = 5                 # N denied commands/statements in one session ...
    denials_window = "5m"       # ... within this window -> one "denials" alert per session
    retries = 8                 # attempts after the first, backoff doubling from `backoff`
    backoff = 1.0               # seconds before the first retry (capped at 300 s)
    timeout = 5.0               # seconds per HTTP request
    queue_limit = 1000          # alerts waiting per webhook before new ones are dropped

    [[alerts.webhooks]]
    name = "security-slack"
    url_env = "BREAKGLASS_SLACK_WEBHOOK"   # or url_file = "secrets/slack", or url = "https://..."
    events = ["breakglass.used", "denials", "recording.verify_failed", "review.overdue"]
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import hmac
import http.client
import json
import os
import queue
import secrets
import ssl
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from breakglass.policy.drill import is_drill
from breakglass.policy.durations import DurationError, parse_duration
from breakglass.proxy.config import Config, ConfigError
from breakglass.proxy.logs import log

BREAKGLASS_USED = "breakglass.used"
DENIALS = "denials"
VERIFY_FAILED = "recording.verify_failed"
REVIEW_OVERDUE = "review.overdue"
TAKEOVER = "takeover.attempt"
#: Access-request events for approvers (the grant service sends them).
REQUEST_EVENTS = ("request.created", "request.approved", "request.denied", "request.expired")
#: What a webhook without ``events`` gets: security alerts, not the approvers' request traffic.
DEFAULT_EVENTS = (BREAKGLASS_USED, DENIALS, VERIFY_FAILED, REVIEW_OVERDUE, TAKEOVER)
ALERT_TYPES = (*DEFAULT_EVENTS, *REQUEST_EVENTS)
SIGNATURE_HEADER = "X-Breakglass-Signature"
TIMESTAMP_HEADER = "X-Breakglass-Timestamp"
DENIAL = "denial"  # input only: one denied command/statement

MAX_BACKOFF = 300.0
_LOOPBACK = {"127.0.0.1", "::1", "localhost"}


# ------------------------------------------------------------------------------------ settings


@dataclass(frozen=True)
class Webhook:
    name: str
    url: str = field(repr=False)  # a secret: never logged or printed
    events: frozenset[str] = frozenset(DEFAULT_EVENTS)
    secret: bytes | None = field(default=None, repr=False)  # HMAC key for signed payloads

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or "?"


@dataclass(frozen=True)
class AlertSettings:
    webhooks: tuple[Webhook, ...] = ()
    denials: int = 5
    denials_window: float = 300.0
    retries: int = 8
    backoff: float = 1.0
    timeout: float = 5.0
    queue_limit: int = 1000


@dataclass(frozen=True)
class ReviewSettings:
    deadline: float = 24 * 3600.0


def _seconds(v: Any, path: str, problems: list[str], default: float) -> float:
    if v is None:
        return default
    if isinstance(v, bool):
        problems.append(f'{path}: expected a number of seconds or a duration like "5m"')
        return default
    if isinstance(v, int | float):
        if v <= 0:
            problems.append(f"{path}: must be positive")
            return default
        return float(v)
    try:
        s = parse_duration(v)
    except DurationError as e:
        problems.append(f"{path}: {e}")
        return default
    if s <= 0:
        problems.append(f"{path}: must be positive")
        return default
    return float(s)


def _int(doc: dict, key: str, path: str, problems: list[str], default: int, lo: int, hi: int):
    v = doc.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        problems.append(f"{path}: expected an integer between {lo} and {hi}")
        return default
    return v


def _check_url(url: str, path: str, problems: list[str]) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        problems.append(f"{path}: expected an http(s) URL")
    elif parts.scheme == "http" and parts.hostname not in _LOOPBACK:
        problems.append(f"{path}: must be https (plain http only to a loopback receiver)")


def _secret(h: dict, p: str, base: Path, problems: list[str]) -> bytes | None:
    """The webhook's signing secret (``secret_env`` or ``secret_file``), at least 16 bytes."""
    sources = [k for k in ("secret_env", "secret_file") if k in h]
    if not sources:
        return None
    if len(sources) > 1:
        problems.append(f"{p}: set at most one of secret_env, secret_file")
        return None
    k = sources[0]
    if not isinstance(h[k], str) or not h[k]:
        problems.append(f"{p}.{k}: expected a non-empty string")
        return None
    if k == "secret_env":
        value = os.environ.get(h[k], "").strip()
        if not value:
            problems.append(f"{p}.secret_env: environment variable {h[k]} is not set")
            return None
    else:
        f = Path(h[k]).expanduser()
        f = f if f.is_absolute() else base / f
        try:
            value = f.read_text().strip()
        except OSError as e:
            problems.append(f"{p}.secret_file: cannot read {f}: {e.strerror}")
            return None
    if len(value) < 16:
        problems.append(f"{p}.{k}: the secret must be at least 16 characters")
        return None
    return value.encode()


def sign_payload(secret: bytes, timestamp: int, body: bytes) -> str:
    """``v1=`` + hex HMAC-SHA256 over ``"{timestamp}." + body`` (as GitHub and Slack do)."""
    mac = hmac.new(secret, str(timestamp).encode() + b"." + body, hashlib.sha256)
    return "v1=" + mac.hexdigest()


def verify_payload(
    secret: bytes, timestamp: str, signature: str, body: bytes, *, tolerance: float = 300
) -> bool:
    """What a receiver does: the signature matches and the timestamp is recent."""
    try:
        ts = int(timestamp)
    except (TypeError, ValueError):
        return False
    if abs(time.time() - ts) > tolerance:
        return False
    return hmac.compare_digest(sign_payload(secret, ts, body), signature or "")


def parse_alert_settings(raw: Any, base: Path) -> AlertSettings:
    """``[alerts]`` of the config document; raises ConfigError listing every problem."""
    problems: list[str] = []
    if raw is None:
        return AlertSettings()
    if not isinstance(raw, dict):
        raise ConfigError(["alerts: expected a table"])
    known = {"denials", "denials_window", "retries", "backoff", "timeout", "queue_limit"}
    for k in raw:
        if k not in known | {"webhooks"}:
            problems.append(f"alerts.{k}: unknown key")
    hooks = []
    raw_hooks = raw.get("webhooks", [])
    if not isinstance(raw_hooks, list):
        problems.append("alerts.webhooks: expected an array of tables ([[alerts.webhooks]])")
        raw_hooks = []
    names = set()
    for i, h in enumerate(raw_hooks):
        p = f"alerts.webhooks[{i}]"
        if not isinstance(h, dict):
            problems.append(f"{p}: expected a table")
            continue
        for k in h:
            if k not in (
                "name",
                "url",
                "url_env",
                "url_file",
                "events",
                "secret_env",
                "secret_file",
            ):
                problems.append(f"{p}.{k}: unknown key")
        name = h.get("name", f"webhook-{i + 1}")
        if not isinstance(name, str) or not name:
            problems.append(f"{p}.name: expected a non-empty string")
            name = f"webhook-{i + 1}"
        if name in names:
            problems.append(f"{p}.name: duplicate webhook name {name!r}")
        names.add(name)
        sources = [k for k in ("url", "url_env", "url_file") if k in h]
        url = None
        if len(sources) != 1:
            problems.append(f"{p}: set exactly one of url, url_env, url_file")
        elif not isinstance(h[sources[0]], str) or not h[sources[0]]:
            problems.append(f"{p}.{sources[0]}: expected a non-empty string")
        elif sources[0] == "url":
            url = h["url"]
        elif sources[0] == "url_env":
            url = os.environ.get(h["url_env"])
            if not url:
                problems.append(f"{p}.url_env: environment variable {h['url_env']} is not set")
        else:
            f = Path(h["url_file"]).expanduser()
            f = f if f.is_absolute() else base / f
            try:
                url = f.read_text().strip()
            except OSError as e:
                problems.append(f"{p}.url_file: cannot read {f}: {e.strerror}")
        if url is not None:
            _check_url(url, f"{p}.{sources[0]}", problems)
        events = h.get("events", list(DEFAULT_EVENTS))
        if not isinstance(events, list) or not all(isinstance(e, str) for e in events):
            problems.append(f"{p}.events: expected a list of strings")
            events = list(ALERT_TYPES)
        bad = [e for e in events if e not in ALERT_TYPES]
        if bad:
            problems.append(
                f"{p}.events: unknown alert {', '.join(bad)} (known: {', '.join(ALERT_TYPES)})"
            )
        secret = _secret(h, p, base, problems)
        if url:
            hooks.append(Webhook(name, url, frozenset(events), secret))
    s = AlertSettings(
        webhooks=tuple(hooks),
        denials=_int(raw, "denials", "alerts.denials", problems, 5, 1, 100_000),
        denials_window=_seconds(raw.get("denials_window"), "alerts.denials_window", problems, 300),
        retries=_int(raw, "retries", "alerts.retries", problems, 8, 0, 100),
        backoff=_seconds(raw.get("backoff"), "alerts.backoff", problems, 1.0),
        timeout=_seconds(raw.get("timeout"), "alerts.timeout", problems, 5.0),
        queue_limit=_int(raw, "queue_limit", "alerts.queue_limit", problems, 1000, 1, 1_000_000),
    )
    if problems:
        raise ConfigError(problems)
    return s


def parse_review_settings(raw: Any) -> ReviewSettings:
    """``[review]``: ``deadline`` (default ``"24h"``)."""
    if raw is None:
        return ReviewSettings()
    if not isinstance(raw, dict):
        raise ConfigError(["review: expected a table"])
    problems = [f"review.{k}: unknown key" for k in raw if k != "deadline"]
    deadline = _seconds(raw.get("deadline"), "review.deadline", problems, 24 * 3600.0)
    if problems:
        raise ConfigError(problems)
    return ReviewSettings(deadline=deadline)


def config_base(cfg: Config) -> Path:
    return cfg.path.resolve().parent if cfg.path else cfg.state_database.parent


def index_path(cfg: Config) -> Path:
    """``[index] database`` (default ``index.db`` next to the config file)."""
    raw = cfg.raw.get("index")
    value: Any = "index.db"
    if raw is not None:
        if not isinstance(raw, dict):
            raise ConfigError(["index: expected a table"])
        bad = [f"index.{k}: unknown key" for k in raw if k != "database"]
        if bad:
            raise ConfigError(bad)
        value = raw.get("database", value)
        if not isinstance(value, str) or not value:
            raise ConfigError(["index.database: expected a file name"])
    p = Path(value).expanduser()
    return p if p.is_absolute() else config_base(cfg) / p


def alert_settings(cfg: Config) -> AlertSettings:
    return parse_alert_settings(cfg.raw.get("alerts"), config_base(cfg))


def review_settings(cfg: Config) -> ReviewSettings:
    return parse_review_settings(cfg.raw.get("review"))


# ------------------------------------------------------------------------------------ delivery


def _summary(event: str, f: dict[str, Any]) -> str:
    if f.get("drill"):
        return "[DRILL] " + _summary(event, {**f, "drill": False})
    who = f.get("user") or "?"
    where = f.get("target") or "?"
    sid = f.get("session") or "?"
    if event == BREAKGLASS_USED:
        extra = "".join(
            f", {k} {f[k]}" for k in ("reason", "ticket") if isinstance(f.get(k), str) and f[k]
        )
        return f"Break-glass session started by {who} on {where} (session {sid}{extra})"
    if event == DENIALS:
        return (
            f"{f.get('count', '?')} denied commands/statements within "
            f"{f.get('window', '?')} s by {who} on {where} (session {sid})"
        )
    if event == VERIFY_FAILED:
        return f"Recording of session {sid} ({who} on {where}) FAILED verification: {f.get('problem', '?')}"
    if event == REVIEW_OVERDUE:
        return f"Break-glass session {sid} ({who} on {where}) is overdue for review"
    if event in REQUEST_EVENTS:
        rid = f.get("request") or "?"
        what = event.split(".", 1)[1]
        text = (
            f"Access request {rid} by {f.get('requester', '?')} for {f.get('template', '?')} "
            f"on {where} {what}"
        )
        if f.get("by"):
            text += f" by {f['by']}"
        if event == "request.created":
            text += (
                f" (reason: {f.get('reason', '')}"
                + (f", ticket {f['ticket']}" if f.get("ticket") else "")
                + f"). Decide: `{f.get('approve_command', '')}` or `{f.get('deny_command', '')}`"
            )
        return text
    if event == TAKEOVER:
        return (
            f"{who} tried to change the gateway's own access on {where} "
            f"({f.get('rule', '?')}, {f.get('action', 'refused')}; session {sid})"
        )
    return f"{event} (session {sid})"


@dataclass
class _Delivery:
    alert_id: str
    body: bytes
    event: str
    #: this alert's entry in ``Alerter.recent`` (delivery outcomes are counted into it)
    record: dict[str, Any] = field(default_factory=dict)


class _Worker:
    """One webhook: a bounded queue and a thread POSTing in order, with retries."""

    def __init__(self, hook: Webhook, settings: AlertSettings, stats: dict[str, int]) -> None:
        self.hook = hook
        self.settings = settings
        self.stats = stats
        self.queue: queue.Queue[_Delivery | None] = queue.Queue(settings.queue_limit)
        self.stop = threading.Event()
        self.pending = 0  # queued or being delivered
        self.cond = threading.Condition()
        self.thread = threading.Thread(target=self._run, name=f"alerts:{hook.name}", daemon=True)
        self.thread.start()

    def put(self, d: _Delivery) -> bool:
        with self.cond:
            try:
                self.queue.put_nowait(d)
            except queue.Full:
                return False
            self.pending += 1
            return True

    def wait_idle(self, timeout: float) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: self.pending == 0, timeout)

    def _run(self) -> None:
        while True:
            try:
                d = self.queue.get(timeout=0.5)
            except queue.Empty:
                if self.stop.is_set():
                    return
                continue
            if d is None:
                return
            try:
                self._deliver(d)
            finally:
                with self.cond:
                    self.pending -= 1
                    self.cond.notify_all()

    def _deliver(self, d: _Delivery) -> None:
        delay = self.settings.backoff
        for attempt in range(self.settings.retries + 1):
            retry_after, outcome = self._post(d)
            if outcome == "ok":
                self.stats["delivered"] += 1
                d.record["delivered"] = d.record.get("delivered", 0) + 1
                return
            if outcome == "fatal" or attempt == self.settings.retries:
                break
            self.stats["retries"] += 1
            wait = min(MAX_BACKOFF, retry_after if retry_after is not None else delay)
            delay = min(MAX_BACKOFF, delay * 2)
            if self.stop.wait(wait):
                break  # shutting down: give up
        self.stats["failed"] += 1
        d.record["failed"] = d.record.get("failed", 0) + 1
        log.error("alert.undelivered", webhook=self.hook.name, host=self.hook.host, alert=d.event)

    def _post(self, d: _Delivery) -> tuple[float | None, str]:
        parts = urlsplit(self.hook.url)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        conn: http.client.HTTPConnection
        if parts.scheme == "https":
            conn = http.client.HTTPSConnection(
                parts.hostname,
                parts.port,
                timeout=self.settings.timeout,
                context=ssl.create_default_context(),
            )
        else:
            conn = http.client.HTTPConnection(
                parts.hostname, parts.port, timeout=self.settings.timeout
            )
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "breakglass-alerts",
            "X-Breakglass-Alert-Id": d.alert_id,
        }
        if self.hook.secret is not None:  # signed at each attempt: a retry has a fresh time
            ts = int(time.time())
            headers[TIMESTAMP_HEADER] = str(ts)
            headers[SIGNATURE_HEADER] = sign_payload(self.hook.secret, ts, d.body)
        try:
            conn.request("POST", path, body=d.body, headers=headers)
            resp = conn.getresponse()
            resp.read(64 * 1024)
            status = resp.status
            retry_after = resp.getheader("Retry-After")
        except (OSError, http.client.HTTPException) as e:
            log.warning(
                "alert.post_failed",
                webhook=self.hook.name,
                host=self.hook.host,
                error=type(e).__name__,
            )
            return None, "retry"
        finally:
            conn.close()
        if 200 <= status < 300:
            return None, "ok"
        ra: float | None = None
        if retry_after and retry_after.strip().isdigit():
            ra = float(retry_after.strip())
        log.warning("alert.rejected", webhook=self.hook.name, host=self.hook.host, status=status)
        if status == 429 or status >= 500 or status == 408:
            return ra, "retry"
        return None, "fatal"


class Alerter:
    """Formats alerts and hands them to the webhook workers. Thread-safe, never blocks."""

    def __init__(self, settings: AlertSettings, *, gateway: str = "") -> None:
        self.settings = settings
        self.gateway = gateway
        self.stats: dict[str, int] = collections.Counter()
        self._workers = [_Worker(h, settings, self.stats) for h in settings.webhooks]
        self._lock = threading.Lock()
        self._denials: collections.OrderedDict[str, collections.deque[float]] = (
            collections.OrderedDict()
        )
        self._fired: set[str] = set()
        #: the latest alerts and their delivery counts (admin socket op "alerts"; drills)
        self.recent: collections.deque[dict[str, Any]] = collections.deque(maxlen=500)
        self._verify_q: queue.Queue[tuple[Path, dict]] | None = None
        self._closed = False

    @property
    def enabled(self) -> bool:
        return bool(self._workers)

    def notify(self, event_type: str, **fields: Any) -> None:
        """Raise an alert (or count a ``denial``). Returns at once; never raises."""
        try:
            if event_type == DENIAL:
                self._denial(fields)
                return
            self._send(event_type, fields)
        except Exception as e:  # an alert must never break a session
            log.error("alert.notify_failed", alert=event_type, error=type(e).__name__)

    def _denial(self, fields: dict[str, Any]) -> None:
        sid = str(fields.get("session") or "")
        now = time.monotonic()
        window = self.settings.denials_window
        with self._lock:
            if sid in self._fired:
                return
            q = self._denials.get(sid)
            if q is None:
                q = self._denials[sid] = collections.deque()
                if len(self._denials) > 10_000:
                    self._denials.popitem(last=False)
            q.append(now)
            while q and q[0] < now - window:
                q.popleft()
            if len(q) < self.settings.denials:
                return
            self._fired.add(sid)
            if len(self._fired) > 100_000:
                self._fired.clear()
            count = len(q)
            del self._denials[sid]
        keep = {k: fields[k] for k in ("session", "user", "target", "protocol") if k in fields}
        self._send(DENIALS, {**keep, "count": count, "window": window})

    def session_ended(self, session_id: str) -> None:
        """Forget a session's denial counter."""
        with self._lock:
            self._denials.pop(session_id, None)

    def _send(self, event: str, fields: dict[str, Any]) -> None:
        if self._closed:
            return
        targets = [w for w in self._workers if event in w.hook.events]
        if not targets:
            return
        alert_id = secrets.token_hex(8)
        clean = {
            k: v for k, v in fields.items() if isinstance(v, str | int | float | bool) or v is None
        }
        if is_drill(clean.get("ticket"), clean.get("reason")):
            clean["drill"] = True
        record = {
            "alert_id": alert_id,
            "event": event,
            "session": clean.get("session"),
            "drill": bool(clean.get("drill")),
            "t": time.time(),
            "webhooks": len(targets),
        }
        self.recent.append(record)
        body = json.dumps(
            {
                "text": f":rotating_light: breakglass{' ' + self.gateway if self.gateway else ''}: "
                + _summary(event, clean),
                "breakglass": {
                    "alert_id": alert_id,
                    "event": event,
                    "gateway": self.gateway,
                    "t": time.time(),
                    "fields": clean,
                },
            },
            default=str,
        ).encode()
        for w in targets:
            if w.put(_Delivery(alert_id, body, event, record)):
                self.stats["queued"] += 1
            else:
                self.stats["dropped"] += 1
                log.error("alert.dropped", webhook=w.hook.name, alert=event, reason="queue full")

    def check_recording(self, path: Path, trusted_keys: dict, **fields: Any) -> None:
        """Verify a finalized recording off the caller's thread; alert if it fails."""
        if not self.enabled or self._closed:
            return
        with self._lock:
            if self._verify_q is None:
                self._verify_q = queue.Queue(10_000)
                threading.Thread(
                    target=self._verify_loop, name="alerts:verify", daemon=True
                ).start()
        with contextlib.suppress(queue.Full):
            self._verify_q.put_nowait((Path(path), {"keys": trusted_keys, **fields}))

    def _verify_loop(self) -> None:
        from breakglass.recorder.verify import verify_recording

        assert self._verify_q is not None
        while True:
            path, f = self._verify_q.get()
            try:
                keys = f.pop("keys")
                r = verify_recording(path, keys)
                if not r.ok:
                    self.notify(
                        VERIFY_FAILED, session=path.stem, problem=r.problem, message=r.message, **f
                    )
            except Exception as e:  # pragma: no cover - verify reports, never raises
                log.error("alert.verify_crashed", error=type(e).__name__)
            finally:
                self._verify_q.task_done()

    def drain(self, timeout: float = 10.0) -> bool:
        """Wait until every queued alert is delivered or given up (for short-lived processes)."""
        deadline = time.monotonic() + timeout
        if self._verify_q is not None:
            while self._verify_q.unfinished_tasks and time.monotonic() < deadline:
                time.sleep(0.01)
        for w in self._workers:
            left = deadline - time.monotonic()
            if not w.wait_idle(max(0.0, left)):
                return False
        return True

    def close(self, timeout: float = 5.0) -> None:
        """Deliver what is queued (up to ``timeout``), then stop the workers."""
        self.drain(timeout)
        self._closed = True
        for w in self._workers:
            w.stop.set()
            with contextlib.suppress(queue.Full):
                w.queue.put_nowait(None)
        for w in self._workers:
            w.thread.join(1.0)


# ------------------------------------------------------------------------ process-wide default

_current: Alerter | None = None


def setup(cfg: Config) -> Alerter:
    """Build the process's alerter from the config and make ``notify`` use it."""
    global _current
    a = Alerter(alert_settings(cfg), gateway=cfg.gateway_name)
    _current = a
    return a


def install(alerter: Alerter | None) -> None:
    global _current
    _current = alerter


def notify(event_type: str, **fields: Any) -> None:
    """Module-level ``Alerter.notify`` on the installed alerter (no-op if none)."""
    a = _current
    if a is not None:
        a.notify(event_type, **fields)


def current() -> Alerter | None:
    return _current


def shutdown(timeout: float = 5.0) -> None:
    global _current
    a, _current = _current, None
    if a is not None:
        a.close(timeout)


# ------------------------------------------------------------------- overdue-review watcher


def check_overdue_reviews(cfg: Config, alerter: Alerter, *, now: float | None = None) -> int:
    """Alert once (across processes, via the index) for each overdue break-glass review.
    Blocking (reads recordings and the audit log): run it in a thread."""
    from breakglass.proxy.context import trusted_recorder_keys
    from breakglass.recorder.index import SessionFilter, SqliteIndex, refresh
    from breakglass.recorder.review import load_reviews, review_queue
    from breakglass.recorder.session_check import load_audit_facts

    keys = trusted_recorder_keys(cfg)
    deadline = review_settings(cfg).deadline
    sent = 0
    with SqliteIndex(index_path(cfg)) as index:
        report = refresh(
            index, cfg.recordings_dir, keys, facts=load_audit_facts(cfg.audit_dir, keys)
        )
        for s in report.failed or []:  # the index found a recording that fails: alert once
            if index.mark_once(f"{VERIFY_FAILED}:{s.session_id}:{s.integrity}"):
                alerter.notify(
                    VERIFY_FAILED,
                    session=s.session_id,
                    user=s.user,
                    target=s.target,
                    problem=s.integrity,
                    message=s.problem_message,
                )
        items = review_queue(
            index.query(SessionFilter(breakglass=True)),
            load_reviews(cfg.audit_dir, keys),
            deadline=deadline,
            now=now,
            overdue_only=True,
        )
        for item in items:
            s = item.session
            if index.mark_once(f"{REVIEW_OVERDUE}:{s.session_id}"):
                alerter.notify(
                    REVIEW_OVERDUE,
                    session=s.session_id,
                    user=s.user,
                    target=s.target,
                    started_at=s.started_at,
                    due_at=item.due_at,
                )
                sent += 1
    return sent


async def watch_overdue_reviews(cfg: Config, alerter: Alerter, interval: float = 300.0) -> None:
    """Gateway task: check for overdue reviews every ``interval`` seconds, off the loop."""
    import asyncio

    while True:
        try:
            await asyncio.to_thread(check_overdue_reviews, cfg, alerter)
        except Exception as e:  # keep watching
            log.error("alert.review_watch_failed", error=type(e).__name__, message=str(e))
        await asyncio.sleep(interval)
