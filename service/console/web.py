"""HTTP handlers of the web console (aiohttp). See the package docstring for the rules."""

from __future__ import annotations

import asyncio
import base64
import hmac
import secrets
import shutil
import tempfile
import time
import weakref
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from breakglass.policy.templates import is_member
from breakglass.proxy.logs import log
from breakglass.service.console import pages
from breakglass.service.identity import AuthFailed, Identity

PREFIX = "/console/"
STATIC = Path(__file__).resolve().parent / "static"
SESSION_COOKIE = "__Host-bg_console"
CSRF_COOKIE = "__Host-bg_csrf"
CSP = (
    "default-src 'none'; script-src 'self'; connect-src 'self'; img-src 'self'; "
    # xterm.js sizes and themes its rows with style elements it creates at run time
    "style-src 'self' 'unsafe-inline'; font-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
    "Cross-Origin-Opener-Policy": "same-origin",
}
MAX_FRAMES_BYTES = 64 * 1024 * 1024  # larger recordings: replay them with the CLI
REMOTE_IDLE = 30.0  # a remote watch nobody has polled for this long is stopped


class Forbidden(Exception):
    pass


def _redirect(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location})


def console_reviewers(cfg: Any, admins: tuple[str, ...]) -> tuple[str, ...]:
    """``[console] reviewers`` (users and ``@groups``); default: ``[service] admins``."""
    raw = cfg.raw.get("console") or {}
    if not isinstance(raw, dict):
        raise ValueError("console: expected a table")
    unknown = [k for k in raw if k != "reviewers"]
    if unknown:
        raise ValueError(f"console.{unknown[0]}: unknown key (known: reviewers)")
    value = raw.get("reviewers", list(admins))
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError("console.reviewers: expected a list of user names and @groups")
    return tuple(value)


class Console:
    def __init__(self, service: Any) -> None:
        self.service = service
        self.cfg = service.cfg
        self.reviewers = console_reviewers(service.cfg, tuple(service.settings.admins))
        #: live sessions on other gateways being watched: (session, reviewer) -> RemoteWatch
        self.remote: dict[tuple[str, str], Any] = {}
        self._remote_lock = asyncio.Lock()
        self._tmp: Path | None = None

    # -- identity, cookies, CSRF ----------------------------------------------------

    def _is_reviewer(self, who: Identity) -> bool:
        groups = dict(self.cfg.groups)
        for g in who.groups:
            groups[g] = (*groups.get(g, ()), who.user)
        return is_member(who.user, self.reviewers, groups)

    def identity(self, request: web.Request) -> Identity | None:
        token = request.cookies.get(SESSION_COOKIE, "")
        if not token:
            return None
        try:
            return self.service.sessions.verify(token)
        except AuthFailed:
            return None

    @staticmethod
    def csrf(request: web.Request) -> str:
        return request.cookies.get(CSRF_COOKIE, "")

    @staticmethod
    def _check_csrf(request: web.Request, form: Any) -> None:
        """Double-submit: the form's token equals the SameSite=Strict cookie's, and the
        request comes from this origin when the browser says where it comes from."""
        cookie = request.cookies.get(CSRF_COOKIE, "")
        sent = str(form.get("csrf") or "")
        if not cookie or not hmac.compare_digest(cookie, sent):
            raise Forbidden("missing or wrong CSRF token; reload the page")
        origin = request.headers.get("Origin")
        if origin and origin != "null":
            want = f"{request.scheme}://{request.host}"
            if origin != want:
                raise Forbidden("cross-origin form refused")

    def _set_cookie(self, resp: web.StreamResponse, name: str, value: str, max_age: int) -> None:
        resp.set_cookie(
            name,
            value,
            max_age=max_age,
            path="/",
            secure=True,
            httponly=True,
            samesite="Strict",
        )

    def _ensure_csrf(self, request: web.Request, resp: web.StreamResponse) -> str:
        token = self.csrf(request)
        if not token:
            token = secrets.token_urlsafe(32)
            self._set_cookie(resp, CSRF_COOKIE, token, 12 * 3600)
        return token

    # -- middleware -----------------------------------------------------------------

    @web.middleware
    async def middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        try:
            resp = await handler(request)
        except Forbidden as e:
            resp = web.Response(text=str(e), status=403, content_type="text/plain")
        except web.HTTPException as e:
            if e.status >= 400:
                resp = web.Response(text=e.reason or "error", status=e.status)
            else:  # redirects
                resp = web.Response(status=e.status, headers={"Location": e.location or PREFIX})
        except Exception as e:  # fail closed, never a traceback to the browser
            log.exception("console.error", path=request.path, error=type(e).__name__)
            resp = web.Response(text="internal error", status=500, content_type="text/plain")
        for k, v in SECURITY_HEADERS.items():
            resp.headers.setdefault(k, v)
        return resp

    async def page(self, request: web.Request, title: str, body: str) -> web.Response:
        resp = web.Response(content_type="text/html", charset="utf-8")
        csrf = self._ensure_csrf(request, resp)
        who = self.identity(request)
        resp.text = pages.layout(title, body.replace(pages.CSRF_SLOT, csrf), who, csrf)
        return resp

    def reviewer(self, request: web.Request) -> Identity:
        """The logged-in reviewer, or a redirect to the login page / 403."""
        who = self.identity(request)
        if who is None:
            raise web.HTTPSeeOther(PREFIX + "login")
        if not self._is_reviewer(who):
            raise Forbidden(f"{who.user} is not a console reviewer ([console] reviewers)")
        return who

    def audit(self, what: str, **fields: Any) -> None:
        self.service.audit.append(what, **fields)

    # -- login / logout -------------------------------------------------------------

    async def login_form(self, request: web.Request) -> web.Response:
        return await self.page(request, "Log in", pages.login_form(""))

    async def login(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        self._check_csrf(request, form)
        client = request.remote or "?"
        oidc_token = str(form.get("id_token") or "").strip()
        method = "oidc" if oidc_token else "local"
        claimed = str(form.get("username") or "")[:200]
        s = self.service
        throttle = s.throttle  # the API's login throttle: per user and address, with backoff
        wait = throttle.retry_after(claimed, client) if claimed else 0.0
        if wait > 0:
            self.audit(
                "login.failed",
                method=method,
                user=claimed or None,
                client=client,
                reason="backing off",
                via="console",
            )
            s.metrics.login(method, "console", "backoff")
            return await self.page(
                request,
                "Log in",
                pages.login_form(f"Too many failed logins; try again in {max(1, round(wait))} s."),
            )
        if not throttle.begin(client):
            return await self.page(
                request, "Log in", pages.login_form("Too many logins in progress; try again.")
            )
        body = {
            "password": form.get("password") or "",
            "totp": form.get("totp") or "",
            "id_token": oidc_token,
        }
        try:
            who = await s._verify_login(method, claimed, body, via="console", client=client)
        except AuthFailed as e:
            throttle.end(client)
            if claimed:
                throttle.pair_failed(claimed, client)
            delay = throttle.address_failed(client)
            self.audit(
                "login.failed",
                method=method,
                user=claimed or None,
                client=client,
                reason=e.reason,
                via="console",
            )
            if delay:  # a slow answer, never a refusal of someone else's correct login
                await asyncio.sleep(delay)
            return await self.page(request, "Log in", pages.login_form(e.public))
        throttle.end(client)
        if claimed:
            throttle.pair_succeeded(claimed, client)
        if not self._is_reviewer(who):
            self.audit(
                "console.refused", actor=who.user, client=client, reason="not a console reviewer"
            )
            return await self.page(
                request, "Log in", pages.login_form(f"{who.user} may not open the console.")
            )
        token, exp = s.sessions.issue(who)
        self.audit(
            "login.succeeded",
            actor=who.user,
            method=who.method,
            groups=list(who.groups),
            client=client,
            via="console",
        )
        resp = _redirect(PREFIX + "sessions")
        self._set_cookie(resp, SESSION_COOKIE, token, max(1, int(exp - time.time())))
        self._set_cookie(resp, CSRF_COOKIE, secrets.token_urlsafe(32), 12 * 3600)
        return resp

    async def logout(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        self._check_csrf(request, form)
        resp = _redirect(PREFIX + "login")
        resp.del_cookie(SESSION_COOKIE, path="/", secure=True, httponly=True, samesite="Strict")
        return resp

    async def root(self, request: web.Request) -> web.StreamResponse:
        raise web.HTTPSeeOther(PREFIX + "sessions")

    # -- sessions -------------------------------------------------------------------

    async def sessions(self, request: web.Request) -> web.Response:
        self.reviewer(request)
        q = request.query
        flt = pages.parse_filters(q)
        rows = await asyncio.to_thread(self._query, flt)
        return await self.page(request, "Sessions", pages.sessions_page(rows, q))

    def _query(self, flt: dict[str, Any]) -> list[Any]:
        from breakglass.cli.review_cmds import _open_index, _refresh, fetch_live
        from breakglass.recorder.index import OK, SessionFilter, merge_live

        sf = SessionFilter(
            user=flt.get("user"),
            target=flt.get("target"),
            since=flt.get("since"),
            until=flt.get("until"),
            denied=bool(flt.get("denied")),
            breakglass=bool(flt.get("breakglass")),
        )
        with _open_index(self.cfg) as index:
            _refresh(self.cfg, index, with_audit=True)
            rows = index.query(sf)
        rows = merge_live(rows, fetch_live(self.cfg), flt=sf, gateway=self.cfg.gateway_name)
        integ = flt.get("integrity")
        if integ == "ok":
            rows = [r for r in rows if r.integrity == OK]
        elif integ == "failed":
            rows = [r for r in rows if r.integrity not in (OK, "live")]
        elif integ == "live":
            rows = [r for r in rows if r.live]
        return rows[:500]

    def _resolve(self, sid: str) -> Any:
        from breakglass.cli.review_cmds import _open_index, _refresh
        from breakglass.recorder.index import SessionNotFound, valid_session_id

        if not valid_session_id(sid):
            raise web.HTTPNotFound(reason="no such session")
        with _open_index(self.cfg) as index:
            s = index.get(sid)
            if s is None:
                _refresh(self.cfg, index)
                try:
                    s = index.resolve(sid)
                except SessionNotFound:
                    raise web.HTTPNotFound(reason="no such session") from None
        if s.session_id != sid:
            raise web.HTTPNotFound(reason="no such session")
        return s

    def _load(self, sid: str, force: bool) -> tuple[Any, Any, str | None, list[dict[str, Any]]]:
        """(summary, verify result, warning or refusal text, events or [] if refused)."""
        from breakglass.proxy.context import trusted_recorder_keys
        from breakglass.recorder.replay import IntegrityRefused, check_integrity, load_events

        s = self._resolve(sid)
        try:
            result, warning = check_integrity(
                Path(s.path), trusted_recorder_keys(self.cfg), force=force
            )
        except IntegrityRefused as e:
            return s, e.result, str(e), []
        return s, result, warning, load_events(Path(s.path))

    async def _load_any(
        self, sid: str, who: Identity, force: bool
    ) -> tuple[Any, Any, str | None, list[dict[str, Any]], bool]:
        """:meth:`_load`, or for a session live on another gateway sharing the state, the same
        from the local copy its watch keeps current; the last item says which."""
        self._sweep()
        rw = self.remote.get((sid, who.user))
        if rw is None:
            try:
                return (*await asyncio.to_thread(self._load, sid, force), False)
            except web.HTTPNotFound:
                rw = await self._remote_watch(sid, who.user)
                if rw is None:
                    raise
        else:
            await rw.pull()
        return (*await asyncio.to_thread(self._load_path, rw.path, force), True)

    def _load_path(
        self, path: Path, force: bool
    ) -> tuple[Any, Any, str | None, list[dict[str, Any]]]:
        from breakglass.proxy.context import trusted_recorder_keys
        from breakglass.recorder.index import summarize_recording
        from breakglass.recorder.replay import IntegrityRefused, check_integrity, load_events

        keys = trusted_recorder_keys(self.cfg)
        s = summarize_recording(path, keys)
        try:
            result, warning = check_integrity(path, keys, force=force)
        except IntegrityRefused as e:
            return s, e.result, str(e), []
        return s, result, warning, load_events(path)

    async def session(self, request: web.Request) -> web.Response:
        who = self.reviewer(request)
        sid = request.match_info["sid"]
        force = request.query.get("force") == "1"
        s, result, warning, events, remote = await self._load_any(sid, who, force)
        live = bool(result.live) and bool(events) and events[-1].get("kind") != "end"
        if live and not remote:
            await self._watching(s.session_id, who.user)
        elif not live:
            self.audit(
                "recording.replayed",
                session=s.session_id,
                actor=who.user,
                via="console",
                integrity=result.problem or "ok",
                forced=force,
            )
        body = pages.session_page(s, result, warning, events, force, live=live)
        return await self.page(request, f"Session {s.session_id}", body)

    async def _remote_watch(self, sid: str, user: str) -> Any:
        """A watch of ``sid`` if it is live on another gateway sharing this config's
        PostgreSQL state (the owning gateway tells the engineer; audited here), else None."""
        from breakglass.proxy.admin import admin_request, admin_sockets
        from breakglass.proxy.gateway import LIVE_STALE
        from breakglass.proxy.watch_relay import RemoteWatch, WatchFailed

        if not self.cfg.state_url or not hasattr(self.service.state, "pool"):
            return None
        for sock in admin_sockets(self.cfg.admin_socket):  # on this host: the local path
            try:
                reply = await admin_request(sock, {"op": "sessions"}, timeout=3.0)
            except (OSError, TimeoutError, ValueError):
                continue
            if any(x.get("id") == sid for x in reply.get("sessions") or []):
                return None
        live = {x.get("id"): x for x in await self.service.state.live_sessions(
            time.time() - LIVE_STALE)}  # fmt: skip
        info = live.get(sid)
        if info is None:
            return None
        async with self._remote_lock:
            self._sweep()
            rw = self.remote.get((sid, user))
            if rw is not None:
                return rw
            if self._tmp is None:
                self._tmp = Path(tempfile.mkdtemp(prefix="breakglass-console-"))  # 0700
                weakref.finalize(self, shutil.rmtree, self._tmp, True)
            d = Path(tempfile.mkdtemp(dir=self._tmp))
            rw = RemoteWatch(
                await self.service.state.pool(), sid, user, "console", d / f"{sid}.rec"
            )
            self.audit(
                "session.watched",
                session=sid,
                actor=user,
                via="console",
                gateway=info.get("gateway_instance"),
            )
            try:
                await rw.start()
            except WatchFailed as e:
                shutil.rmtree(d, ignore_errors=True)
                raise web.HTTPServiceUnavailable(reason=str(e)) from None
            self.remote[(sid, user)] = rw
            return rw

    async def _watching(self, sid: str, user: str) -> None:
        """A live session opened in the console: tell the engineer (through the gateway that
        runs it, on this host) and audit the watch."""
        from breakglass.proxy.admin import admin_request, admin_sockets

        self.audit("session.watched", session=sid, actor=user, via="console")
        for sock in admin_sockets(self.cfg.admin_socket):
            try:
                reply = await admin_request(
                    sock, {"op": "watch", "session": sid, "actor": user}, timeout=3.0
                )
            except (OSError, TimeoutError, ValueError):
                continue
            if reply.get("ok"):
                return

    def _sweep(self) -> None:
        """Stop remote watches nobody has polled for :data:`REMOTE_IDLE` s."""
        now = time.monotonic()
        for key, rw in list(self.remote.items()):
            if now - rw.last_used > REMOTE_IDLE:
                del self.remote[key]
                asyncio.ensure_future(rw.stop())
                shutil.rmtree(rw.path.parent, ignore_errors=True)

    async def cast(self, request: web.Request) -> web.Response:
        """The terminal frames of an SSH session, filtered, base64 (never HTML)."""
        from breakglass.recorder.replay import ssh_timeline, terminal_frames

        who = self.reviewer(request)
        sid = request.match_info["sid"]
        force = request.query.get("force") == "1"
        try:
            after = int(request.query.get("after", "-1"))
        except ValueError:
            after = -1
        s, result, refusal, events, _ = await self._load_any(sid, who, force)
        if not events:
            return web.json_response({"error": refusal or "no events"}, status=409)
        live = bool(result.live) and events[-1].get("kind") != "end"

        def build() -> dict[str, Any]:
            from breakglass.recorder.replay import recorded_size

            frames = terminal_frames(events, show_input=True)
            total = sum(len(f.data) for f in frames)
            if total > MAX_FRAMES_BYTES:
                raise web.HTTPRequestEntityTooLarge(MAX_FRAMES_BYTES, total)
            cols, rows = recorded_size(events) or (80, 24)
            # a recorded resize: the player resizes its terminal there (its "r" frame)
            sizes = {
                e.get("seq"): (e["cols"], e["rows"])
                for e in events
                if e.get("kind") == "resize"
                and isinstance(e.get("cols"), int)
                and isinstance(e.get("rows"), int)
                and 0 < e["cols"] <= 1000
                and 0 < e["rows"] <= 1000
            }
            markers = [
                {"t": round(e.offset, 3), "kind": e.what, "label": pages.marker_label(e)}
                for e in ssh_timeline(events)
                if e.what in ("command", "denied", "sftp", "gateway", "terminate")
            ]
            return {
                "session": s.session_id,
                "cols": cols,
                "rows": rows,
                "duration": round(frames[-1].offset, 3) if frames else 0.0,
                "frames": [
                    [round(f.offset, 3), f.kind, base64.b64encode(f.data).decode("ascii")]
                    + (list(sizes[f.seq]) if f.kind == "r" and f.seq in sizes else [])
                    for f in frames
                    if f.seq > after
                ],
                "markers": markers,
                "live": live,  # still being written: poll with ?after=last_seq
                "last_seq": max((int(e.get("seq", -1)) for e in events), default=-1),
            }

        return web.json_response(await asyncio.to_thread(build))

    async def timeline(self, request: web.Request) -> web.Response:
        """The statement timeline of a PostgreSQL session as text fields (never HTML), from
        entry ``from`` on: a live view asks again from the first statement still running."""
        from breakglass.recorder.replay import statement_timeline

        who = self.reviewer(request)
        sid = request.match_info["sid"]
        force = request.query.get("force") == "1"
        try:
            start = max(0, int(request.query.get("from", "0")))
        except ValueError:
            start = 0
        s, result, refusal, events, _ = await self._load_any(sid, who, force)
        if not events:
            return web.json_response({"error": refusal or "no events"}, status=409)
        live = bool(result.live) and events[-1].get("kind") != "end"

        def build() -> dict[str, Any]:
            entries = statement_timeline(events)
            return {
                "session": s.session_id,
                "from": min(start, len(entries)),
                "entries": [pages.timeline_row(x, live) for x in entries[start:]],
                "next": len(entries),
                "pending": pages.first_pending(entries),
                "live": live,
            }

        return web.json_response(await asyncio.to_thread(build))

    # -- review ---------------------------------------------------------------------

    async def review_queue(self, request: web.Request) -> web.Response:
        self.reviewer(request)
        items = await asyncio.to_thread(self._queue, request.query.get("all") == "1")
        return await self.page(request, "Review queue", pages.review_page(items, request.query))

    def _queue(self, include_reviewed: bool) -> list[Any]:
        from breakglass.cli.review_cmds import _open_index, _refresh
        from breakglass.proxy.context import trusted_recorder_keys
        from breakglass.recorder.alerts import review_settings
        from breakglass.recorder.index import SessionFilter
        from breakglass.recorder.review import load_reviews, review_queue

        with _open_index(self.cfg) as index:
            _refresh(self.cfg, index, with_audit=True)
            rows = index.query(SessionFilter(breakglass=True))
        return review_queue(
            rows,
            load_reviews(self.cfg.audit_dir, trusted_recorder_keys(self.cfg)),
            deadline=review_settings(self.cfg).deadline,
            include_reviewed=include_reviewed,
        )

    async def review(self, request: web.Request) -> web.StreamResponse:
        from breakglass.recorder.review import ReviewRefused, record_review

        who = self.reviewer(request)
        form = await request.post()
        self._check_csrf(request, form)
        sid = request.match_info["sid"]
        s = await asyncio.to_thread(self._resolve, sid)
        try:
            record_review(
                self.service.audit,
                s,
                who.user,
                str(form.get("outcome") or ""),
                str(form.get("notes") or ""),
            )
        except ReviewRefused as e:
            body = pages.message_page("Review refused", str(e), PREFIX + "review")
            resp = await self.page(request, "Review refused", body)
            resp.set_status(409)
            return resp
        await asyncio.to_thread(self.service.audit.flush)
        raise web.HTTPSeeOther(PREFIX + "review?done=" + s.session_id)

    # -- static ---------------------------------------------------------------------

    async def static(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        allowed = {
            "console.js": "application/javascript",
            "console.css": "text/css",
            "vendor/xterm.js": "application/javascript",
            "vendor/xterm.css": "text/css",
        }
        if name not in allowed:
            raise web.HTTPNotFound()
        data = await asyncio.to_thread((STATIC / name).read_bytes)
        resp = web.Response(body=data, content_type=allowed[name])
        resp.headers["Cache-Control"] = "no-cache"
        return resp


def setup_console(app: web.Application, service: Any) -> Console:
    """Register the console's routes on the service's app (under /console/)."""
    c = Console(service)
    sub = web.Application(middlewares=[c.middleware])
    sub.router.add_get("/", c.root)
    sub.router.add_get("/login", c.login_form)
    sub.router.add_post("/login", c.login)
    sub.router.add_post("/logout", c.logout)
    sub.router.add_get("/sessions", c.sessions)
    sub.router.add_get("/sessions/{sid}", c.session)
    sub.router.add_get("/api/sessions/{sid}/cast", c.cast)
    sub.router.add_get("/api/sessions/{sid}/timeline", c.timeline)
    sub.router.add_get("/review", c.review_queue)
    sub.router.add_post("/review/{sid}", c.review)
    sub.router.add_get("/static/{name:(vendor/)?[a-z.]+}", c.static)
    app.add_subapp(PREFIX.rstrip("/"), sub)
    return c
