"""The SSH side of the gateway: asyncssh server in front, asyncssh client to the target.

One client connection = one authenticated grant = one :class:`proxy.sessions.Session`
(one recording) = one upstream SSH connection made with the gateway's own key.

* Username ``TARGET`` or ``LOGIN@TARGET``; the grant is the password or the
  keyboard-interactive answer ("Grant token:"). Every attempt goes through
  ``Gateway.authorize``; a refusal disconnects with the reason (OpenSSH prints it).
* ``exec``: checked by :func:`policy.commands.check_command`; only ``verdict.command`` runs
  upstream (with :data:`policy.commands.SAFE_ENV` as assignments in front), without a PTY
  unless the grant allows a full shell. A denial shows the reason on stderr, exit status 126.
* ``shell``: with ``ssh.shell`` an upstream PTY shell, every byte recorded; otherwise the
  gateway's restricted shell (``proxy.ssh.restricted_shell``).
* Subsystems (sftp) and port forwarding: refused unless the grant allows them (sftp:
  ``ssh.sftp``; local -L/-W/ProxyJump and remote -R forwarding: ``ssh.forwarding``). Agent
  forwarding (-A) is refused with a message on the session; X11 and Unix-socket
  forwarding are refused.
* Recording happens before forwarding: a chunk that cannot be recorded is dropped and the
  session is closed ("no recording, no access").
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable
from typing import Any

import asyncssh
from asyncssh import (
    DISC_BY_APPLICATION,
    DISC_NO_MORE_AUTH_METHODS_AVAILABLE,
    OPEN_ADMINISTRATIVELY_PROHIBITED,
    OPEN_CONNECT_FAILED,
    ChannelOpenError,
)

from breakglass.policy.commands import CommandRules, check_command, with_safe_env
from breakglass.policy.grants import Grant, GrantTarget, Refusal, utc_text
from breakglass.policy.role_guard import SSH_RULE, SshAccessWatch
from breakglass.proxy.config import SshTarget
from breakglass.proxy.logs import log
from breakglass.proxy.sessions import SessionRefused, Termination
from breakglass.proxy.ssh.restricted_shell import LineEditor, RestrictedShell, to_crlf
from breakglass.proxy.ssh.sftp_log import SftpDecodeError, SftpLog
from breakglass.proxy.ssh.upstream import UpstreamError, connect_upstream
from breakglass.recorder.format import RecorderError

#: Exit status of an exec the grant does not allow (like a shell's "cannot execute").
DENIED_STATUS = 126
#: Exit status when the gateway itself fails the channel (target unreachable ...).
GATEWAY_ERROR_STATUS = 255
#: How long a terminated session's channels get to deliver the goodbye line.
GOODBYE_WAIT = 0.3
#: Ciphers offered to engineers' clients: AES-GCM only. OpenSSH clients prefer
#: chacha20-poly1305 and then AES-CTR whenever a server offers them; asyncssh runs those with
#: far more per-packet Python work than AES-GCM (one OpenSSL call per packet), and the
#: gateway's bulk path is bound by per-packet work. Every OpenSSH since 6.2 and PuTTY since
#: 0.76 speak AES-GCM.
SERVER_ENCRYPTION_ALGS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com")
#: Client -> gateway flow control.
SERVER_WINDOW = 8 * 1024 * 1024
SERVER_MAX_PKTSIZE = 256 * 1024
LOGIN_TIMEOUT = 30  # from connect to authenticated (the version line: banner_timeout)
#: Largest SSH packet accepted once authenticated (asyncssh's default is 256 KiB): big
#: enough that an oversized exec command (1 MB) arrives whole and is refused with a message
#: instead of the transport closing the connection. Before authentication the default holds.
MAX_REQUEST_PACKET = 2 * 1024 * 1024 + 1024
#: After Ctrl-C in the restricted shell, detach from a command still running this long.
INTERRUPT_GRACE = 1.0
#: The originator OpenSSH names for stdio forwarding (ssh -W, ProxyJump): port 65535.
STDIO_ORIGIN = "127.0.0.1"
#: Why ssh -A gets no agent: said to the engineer and recorded.
AGENT_REFUSAL = (
    "agent forwarding (ssh -A) is not supported by the gateway; your agent was not "
    "forwarded (to reach hosts behind the target use ProxyJump, ssh -J, with a grant "
    "that allows forwarding)"
)
#: Signals an engineer may send to an upstream command.
FORWARDED_SIGNALS = frozenset({"INT", "TERM", "HUP", "QUIT", "KILL", "USR1", "USR2"})

_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}\Z")
_UNPRINTABLE = re.compile(r"[^\x20-\x7e]")


def parse_username(username: str) -> tuple[str | None, str] | None:
    """``TARGET`` -> (None, TARGET); ``LOGIN@TARGET`` -> (LOGIN, TARGET); else None."""
    login, sep, target = username.rpartition("@")
    if not _NAME.match(target):
        return None
    if sep and not _NAME.match(login):
        return None
    return (login if sep else None), target


def printable(text: Any, limit: int = 200) -> str:
    """For banners and messages: no control characters from claims reach a terminal."""
    s = _UNPRINTABLE.sub("?", str(text))
    return s if len(s) <= limit else s[: limit - 3] + "..."


def goodbye_text(termination: Termination) -> str:
    return f"breakglass: {printable(termination.message)} — session closed"


# --------------------------------------------------------------------------- channels


class UpChannel(asyncssh.SSHClientSession):
    """Target side of one bridged channel: hands everything to its :class:`Bridge`."""

    def __init__(self, bridge: Bridge) -> None:
        self.bridge = bridge
        self.chan: Any = None
        self.status: int | None = None
        self.signal: tuple[str, bool, str, str] | None = None
        self.detached = False
        self.data_received = bridge.make_up_data(self)  # type: ignore[method-assign]

    def connection_made(self, chan: Any) -> None:
        self.chan = chan

    def eof_received(self) -> bool:
        self.bridge.up_eof(self)
        return True

    def exit_status_received(self, status: int) -> None:
        self.status = status

    def exit_signal_received(self, signal: str, core_dumped: bool, msg: str, lang: str) -> None:
        self.signal = (signal, core_dumped, msg, lang)

    def pause_writing(self) -> None:
        self.bridge.up_pause_writing(self)

    def resume_writing(self) -> None:
        self.bridge.up_resume_writing(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.bridge.up_closed(self, exc)


class RemoteUpChannel(UpChannel):
    """Target side of a connection to an ssh -R listener: the engineer's channel is open
    by then, so bytes flow both ways as soon as this one is."""

    def connection_made(self, chan: Any) -> None:
        super().connection_made(chan)
        self.bridge._upstream_ready(self)


class TerminalCommandChannel(UpChannel):
    """A restricted-shell command shown on the engineer's terminal: its stderr goes out in
    the stdout stream, in order, as a terminal shows both. As two SSH streams, the client
    could print stderr after the next prompt (OpenSSH writes stdout first)."""

    def __init__(self, bridge: Bridge) -> None:
        super().__init__(bridge)
        forward = self.data_received

        def merged(data: bytes, datatype: int | None) -> None:
            forward(data, None)

        self.data_received = merged  # type: ignore[method-assign]


class Bridge:
    """Client-side channel of a connection, bridged to an upstream channel, recorded."""

    kind = "?"
    #: An allowed sftp subsystem: its operations, decoded from the bytes both ways.
    sftp: SftpLog | None = None

    def __init__(self, owner: GatewayConnection, cid: str) -> None:
        self.o = owner
        self.cid = cid
        self.chan: Any = None
        self.up: UpChannel | None = None
        self.ready = False
        self.closed = False
        self.client_eof = False
        self.interactive = False  # the client has a terminal: gateway text uses CR LF
        self.crlf = False  # translate LF -> CR LF in target output (no upstream PTY)
        self._pending: list[bytes] = []
        self._up_paused: set[str] = set()
        #: The gateway ended this channel (exit status, signal or close): a connection
        #: dropped afterwards did not cut it short.
        self.ended = False

    # -- plumbing shared by session and forward channels

    def connection_made(self, chan: Any) -> None:
        self.chan = chan
        self.o.channels.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if exc is not None and not self.ended:
            self.o.channels_cut += 1
        self.o.channel_gone(self)
        if self.up is not None and self.up.chan is not None:
            self.up.chan.close()

    def make_up_data(self, up: UpChannel) -> Callable[[bytes, int | None], None]:
        """The hot path, target -> client: record, write the record, check the gate, forward."""
        recorder = self.o.recorder
        output, write = recorder.output, recorder.write
        session = self.o.session
        cid = self.cid
        o = self.o

        def data_received(data: bytes, datatype: int | None) -> None:
            if self.closed or o.terminating is not None or up.detached:
                return
            if not session.forwarding_allowed():
                return  # past exp or revoked: the session is ending and says why
            if self.crlf:
                data = to_crlf(data)
            first = recorder.event_count
            try:
                output(data, cid, "stdout" if datatype is None else "stderr")
                if self.sftp is not None and not self._record_sftp(self.sftp.server_data, data):
                    return
                write()
            except RecorderError:
                o.recording_failed()
                return
            if session.forwarding_allowed(recorded_since=first):
                self.chan.write(data, datatype)

        return data_received

    def data_received(self, data: bytes, datatype: int | None) -> None:
        """Client -> target: record, then forward (after the upstream channel is open)."""
        if self.closed or self.o.terminating is not None or datatype is not None:
            return
        if not self.ready:
            self._pending.append(data)
            self.chan.pause_reading()
            return
        self._to_upstream(data)

    def _to_upstream(self, data: bytes) -> None:
        o = self.o
        if not o.session.forwarding_allowed():
            return  # past exp or revoked: the session is ending and says why
        first = o.recorder.event_count
        try:
            o.recorder.input(data, self.cid)
            if self.sftp is not None and not self._record_sftp(self.sftp.client_data, data):
                return
            o.recorder.write()
        except RecorderError:
            o.recording_failed()
            return
        if self.interactive:
            o.watch_input(data)
        if o.session.forwarding_allowed(recorded_since=first):
            assert self.up is not None
            self.up.chan.write(data)

    def _record_sftp(self, decode: Callable[[bytes], list[dict[str, Any]]], data: bytes) -> bool:
        """Record the SFTP operations ``data`` completes; False (channel closed) when the
        stream cannot be decoded or recorded: what cannot be recorded is not relayed."""
        assert self.sftp is not None
        failed_before = self.sftp.error is not None
        try:
            ops = decode(data)
        except SftpDecodeError as e:
            if failed_before:  # already refused and closing: drop whatever still arrives
                return False
            self.o.record_event("sftp", channel=self.cid, op="undecodable", error=str(e))
            log.warning("ssh.sftp_undecodable", session=self.o.session.id, error=str(e))
            self.fail(f"breakglass: {e}; SFTP session closed (it could not be recorded)\n")
            if self.up is not None and self.up.chan is not None:
                self.up.chan.close()
            return False
        for op in ops:
            self.o.recorder.event("sftp", channel=self.cid, **op)
        return True

    def eof_received(self) -> bool:
        self.client_eof = True
        if self.ready and self.up is not None:
            self.up.chan.write_eof()
        return True

    def _upstream_ready(self, up: UpChannel) -> None:
        self.up = up
        self.ready = True
        pending, self._pending = self._pending, []
        for data in pending:
            self._to_upstream(data)
        if self.client_eof:
            up.chan.write_eof()
        if self._up_paused:
            up.chan.pause_reading()
        self.chan.resume_reading()

    # -- flow control: pause the target when the client (or the disk) is slow

    def pause_up(self, reason: str) -> None:
        if not self._up_paused and self.up is not None and self.up.chan is not None:
            self.up.chan.pause_reading()
        self._up_paused.add(reason)

    def resume_up(self, reason: str) -> None:
        if reason in self._up_paused:
            self._up_paused.discard(reason)
            if not self._up_paused and self.up is not None and self.up.chan is not None:
                self.up.chan.resume_reading()

    def pause_writing(self) -> None:
        self.pause_up("client")

    def resume_writing(self) -> None:
        self.resume_up("client")

    def up_pause_writing(self, up: UpChannel) -> None:
        if self.chan is not None:
            self.chan.pause_reading()

    def up_resume_writing(self, up: UpChannel) -> None:
        if self.chan is not None and self.ready:
            self.chan.resume_reading()

    def up_eof(self, up: UpChannel) -> None:
        if not self.closed and self.o.terminating is None:
            self.chan.write_eof()

    def up_closed(self, up: UpChannel, exc: Exception | None) -> None:
        self.o.record_event(
            "exit",
            channel=self.cid,
            status=up.status,
            signal=up.signal[0] if up.signal else None,
        )
        if self.closed or self.o.terminating is not None:
            return
        if up.signal is not None:
            sig, core, msg, lang = up.signal
            self.end_channel(signal=(sig, core, msg, lang))
        elif up.status is not None:
            self.end_channel(up.status)
        else:
            self.end_channel()

    # -- gateway messages to the engineer

    def say(self, text: str, *, stderr: bool = True, record: bool = True) -> None:
        """Show gateway text on this channel (recorded as output, like target output)."""
        if self.closed or self.chan is None:
            return
        data = text.encode("utf-8", "replace")
        if self.interactive:
            data = to_crlf(data)
        stream = "stderr" if stderr and not self.interactive else "stdout"
        if record:
            try:
                self.o.recorder.output(data, self.cid, stream)
                self.o.recorder.write()
            except RecorderError:
                self.o.recording_failed()
                return
        try:
            if stream == "stderr":
                self.chan.write_stderr(data)
            else:
                self.chan.write(data)
        except OSError:  # channel already closing
            pass

    def end_channel(
        self, status: int | None = None, signal: tuple[str, bool, str, str] | None = None
    ) -> None:
        """End the client's channel: exit signal, exit status, or a plain close."""
        self.ended = True
        if signal is not None:
            self.chan.exit_with_signal(*signal)
        elif status is not None:
            self.chan.exit(status)
        else:
            self.chan.close()

    def fail(self, text: str, status: int = GATEWAY_ERROR_STATUS) -> None:
        self.say(text)
        if not self.closed:
            self.end_channel(status)

    def stop_upstream(self) -> None:
        """Terminating: ask the target to end the command, drop the channel."""
        up = self.up
        if up is not None and up.chan is not None:
            try:
                up.chan.send_signal("TERM")
            except (OSError, ValueError):
                pass
            up.chan.close()

    def goodbye(self, text: str) -> None:
        if self.closed or self.chan is None:
            return
        self.say(("\n" if self.interactive else "") + text + "\n", record=False)
        self.chan.close()

    def warn(self, text: str) -> None:
        self.say(("\n" if self.interactive else "") + text + "\n")


class SessionChannel(Bridge, asyncssh.SSHServerSession):
    """An SSH "session" channel: exec, shell or subsystem."""

    def __init__(self, owner: GatewayConnection, cid: str) -> None:
        super().__init__(owner, cid)
        self.term: tuple[str, tuple[int, int, int, int], dict] | None = None
        self.kind = "session"
        self.command: str | None = None
        self.verdict: Any = None
        self.deny_text = ""
        self.subsystem: str | None = None
        self.upstream_pty = False
        # restricted shell state
        self.shell: RestrictedShell | None = None
        self.editor: LineEditor | None = None
        self.running: UpChannel | str | None = None
        self.interrupts = 0
        self._detach_timer: asyncio.TimerHandle | None = None
        self._input_paused = False

    # -- requests before the session starts

    def pty_requested(self, term_type: str, term_size: tuple, term_modes: dict) -> bool:
        self.term = (term_type, tuple(term_size), dict(term_modes))
        self.interactive = True
        self.o.record_event(
            "pty",
            channel=self.cid,
            term=printable(term_type, 64),
            cols=term_size[0],
            rows=term_size[1],
        )
        return True

    def shell_requested(self) -> bool:
        self.kind = "pty-shell" if self.o.rules.shell else "restricted-shell"
        return True

    def exec_requested(self, command: str) -> bool:
        verdict = check_command(command, self.o.rules)
        ok = self.o.record_decision(
            kind="exec",
            channel=self.cid,
            text=command,
            allowed=verdict.allowed,
            rule=verdict.rule,
            message=verdict.message,
            command=verdict.command if verdict.allowed else None,
            pattern=verdict.pattern,
        )
        if not ok:
            return False
        if verdict.allowed:
            self.o.session.commands += 1
            self.kind = "exec"
            self.verdict = verdict
        else:
            self.o.session.count_denial(verdict.rule)
            self.kind = "denied"
            self.deny_text = f"breakglass: denied: {verdict.message}\n"
        log.info("ssh.exec", session=self.o.session.id, allowed=verdict.allowed, rule=verdict.rule)
        return True

    def subsystem_requested(self, subsystem: str) -> bool:
        allowed = subsystem == "sftp" and self.o.grant_flag("sftp")
        ok = self.o.record_decision(
            kind="subsystem", channel=self.cid, text=subsystem, allowed=allowed
        )
        if not ok:
            return False
        if allowed:
            self.kind = "subsystem"
            self.subsystem = subsystem
            self.sftp = SftpLog()
        else:
            self.o.session.count_denial("subsystem")
            self.kind = "denied"
            hint = (
                " (OpenSSH's scp uses sftp by default: use 'scp -O' with a grant whose "
                "command patterns allow 'scp -f ...' / 'scp -t ...')"
                if subsystem == "sftp"
                else ""
            )
            self.deny_text = (
                f"breakglass: denied: the {printable(subsystem, 40)} subsystem is not "
                f"allowed by this grant{hint}\n"
            )
        return True

    def session_started(self) -> None:
        notes = self.o.take_notes()
        if notes:
            self.say(notes)
        if self.kind == "denied":
            self.say(self.deny_text)
            self.end_channel(DENIED_STATUS)
        elif self.kind == "exec":
            assert self.verdict is not None
            rules = self.o.rules
            self.upstream_pty = self.term is not None and rules.shell
            self.crlf = self.term is not None and not self.upstream_pty
            cmd = self.verdict.command if rules.shell else with_safe_env(self.verdict.command)
            self.o.spawn(self._open_upstream(command=cmd, recorded=self.verdict.command))
        elif self.kind == "pty-shell":
            self.upstream_pty = self.term is not None
            self.o.spawn(self._open_upstream())
        elif self.kind == "restricted-shell":
            self._start_restricted()
        elif self.kind == "subsystem":
            self.o.spawn(self._open_upstream(subsystem=self.subsystem))
        else:  # pragma: no cover - asyncssh only starts shell/exec/subsystem
            self.end_channel()

    async def _open_upstream(
        self,
        *,
        command: str | None = None,
        subsystem: str | None = None,
        recorded: str | None = None,
    ) -> None:
        kw: dict[str, Any] = {
            "encoding": None,
            "env": {},
            "x11_forwarding": False,
        }
        if self.upstream_pty and self.term is not None:
            term_type, size, modes = self.term
            kw.update(request_pty="force", term_type=term_type, term_size=size, term_modes=modes)
        else:
            kw["request_pty"] = False
        if command is not None:
            kw["command"] = command
        if subsystem is not None:
            kw["subsystem"] = subsystem
        self.o.record_event(
            "upstream",
            channel=self.cid,
            type=self.kind,
            command=recorded,
            sent=command,
            subsystem=subsystem,
            pty=self.upstream_pty,
        )
        try:
            _chan, up = await self.o.upstream.create_session(lambda: UpChannel(self), **kw)
        except (asyncssh.Error, OSError) as e:
            if not self.closed and self.o.terminating is None:
                reason = getattr(e, "reason", None) or type(e).__name__
                self.fail(f"breakglass: the target refused the session: {printable(reason)}\n")
            return
        if self.closed or self.o.terminating is not None:
            up.chan.abort()
            return
        self._upstream_ready(up)

    # -- requests while the session runs

    def terminal_size_changed(self, width: int, height: int, pixwidth: int, pixheight: int) -> None:
        self.o.record_resize(width, height)
        if self.term is not None:
            self.term = (self.term[0], (width, height, pixwidth, pixheight), self.term[2])
        if self.upstream_pty and self.up is not None and self.up.chan is not None:
            self.up.chan.change_terminal_size(width, height, pixwidth, pixheight)

    def signal_received(self, signal: str) -> None:
        self.o.record_event("signal", channel=self.cid, signal=printable(signal, 20))
        target = self.running if self.kind == "restricted-shell" else self.up
        if signal in FORWARDED_SIGNALS and isinstance(target, UpChannel) and target.chan:
            target.chan.send_signal(signal)

    def break_received(self, msec: int) -> bool:
        if self.upstream_pty and self.up is not None and self.up.chan is not None:
            self.o.record_event("break", channel=self.cid, msec=msec)
            self.up.chan.send_break(msec)
            return True
        return False

    def data_received(self, data: bytes, datatype: int | None) -> None:
        if self.kind == "restricted-shell":
            self._shell_input(data)
        elif self.crlf and b"\x03" in data and self.ready and self.up is not None:
            # A terminal served by the gateway (no upstream PTY): Ctrl-C interrupts.
            if not self.o.session.forwarding_allowed() or not self.o.record_input(data, self.cid):
                return
            self.up.chan.send_signal("INT")
            rest = data.replace(b"\x03", b"")
            if rest:
                self.up.chan.write(rest)
        else:
            super().data_received(data, datatype)

    def eof_received(self) -> bool:
        if self.kind == "restricted-shell":
            self.client_eof = True
            self._pump()
            return True
        return super().eof_received()

    # -- the restricted shell (line handling and judging live in restricted_shell.py)

    def _start_restricted(self) -> None:
        o = self.o
        self.shell = RestrictedShell(o.rules, target=o.gtarget.name, login=o.gtarget.login or "")
        self.editor = LineEditor(
            echo=self.interactive,
            prompt=to_crlf(self.shell.prompt.encode()),
            completer=self.shell.complete,
        )
        grant = o.grant
        left = max(0, int((grant.expires_at - time.time()) // 60))
        self.say(self.shell.welcome(utc_text(grant.expires_at), left), stderr=False)
        self._prompt()

    def _prompt(self) -> None:
        if self.shell is not None and not self.closed:
            self.say(self.shell.prompt, stderr=False)

    def _shell_input(self, data: bytes) -> None:
        if self.closed or self.o.terminating is not None:
            return
        if not self.o.session.forwarding_allowed() or not self.o.record_input(data, self.cid):
            return
        assert self.editor is not None
        if self.running is not None:
            if b"\x03" in data:
                self.editor.discard_pending()
                self._interrupt()
            else:
                self.editor.feed(data)  # type-ahead, handled after the command
                self._pace_input()
            return
        self.editor.feed(data)
        self._pump()

    def _pace_input(self) -> None:
        """Flow control for type-ahead and large pastes: stop reading from the client while
        the editor holds more than it should, resume once it has worked through it."""
        editor = self.editor
        if editor is None or self.closed:
            return
        if editor.backlogged and not self._input_paused:
            self._input_paused = True
            self.chan.pause_reading()
        elif not editor.backlogged and self._input_paused:
            self._input_paused = False
            self.chan.resume_reading()

    def _pump(self) -> None:
        editor = self.editor
        if editor is None:
            return
        while self.running is None and not self.closed:
            events = editor.next_events()
            if not events:
                break
            for ev in events:
                if ev.kind == "echo":
                    self._echo(ev.data)
                elif ev.kind == "interrupt":
                    self._prompt()
                elif ev.kind == "eof":
                    self._echo(b"\r\n")
                    self.end_channel(0)
                    return
                elif ev.kind == "line":
                    self._line(ev.text)
        if self.running is None and self.client_eof and not editor.pending and not self.closed:
            self.end_channel(0)
        self._pace_input()

    def _echo(self, data: bytes) -> None:
        if self.o.record_output(data, self.cid, "stdout"):
            self.chan.write(data)

    def _line(self, text: str) -> None:
        assert self.shell is not None
        action = self.shell.handle_line(text)
        if action.kind == "noop":
            self._prompt()
        elif action.kind == "output":
            self.o.record_event("builtin", channel=self.cid, name="help")
            self.say(action.text, stderr=False)
            self._prompt()
        elif action.kind == "exit":
            self.o.record_event("builtin", channel=self.cid, name="exit")
            self.end_channel(0)
        else:
            verdict = action.verdict
            assert verdict is not None
            if not self.o.record_decision(
                kind="shell",
                channel=self.cid,
                text=text if text != "\x00overflow" else "(line too long)",
                allowed=verdict.allowed,
                rule=verdict.rule,
                message=verdict.message,
                command=verdict.command if verdict.allowed else None,
                pattern=verdict.pattern,
            ):
                return
            log.info(
                "ssh.shell_line",
                session=self.o.session.id,
                allowed=verdict.allowed,
                rule=verdict.rule,
            )
            if action.kind == "deny":
                self.o.session.count_denial(verdict.rule)
                self.say(action.text)
                self._prompt()
            else:
                self.o.session.commands += 1
                self.running = "starting"
                self.interrupts = 0
                self.o.spawn(self._run(verdict.command))

    async def _run(self, command: str) -> None:
        sent = with_safe_env(command)
        self.o.record_event(
            "upstream",
            channel=self.cid,
            type="shell-command",
            command=command,
            sent=sent,
            pty=False,
        )
        interrupted = False

        def command_channel() -> UpChannel:
            # The command is "running" from here on: a quick one's output, and even its
            # exit, can arrive before create_session returns.
            nonlocal interrupted
            up = TerminalCommandChannel(self) if self.interactive else UpChannel(self)
            interrupted = self.running == "interrupt"
            self.running = up
            self.up = up
            self.crlf = self.interactive
            return up

        try:
            _chan, up = await self.o.upstream.create_session(
                command_channel,
                sent,
                encoding=None,
                env={},
                request_pty=False,
                x11_forwarding=False,
            )
        except (asyncssh.Error, OSError) as e:
            if not self.closed and self.o.terminating is None and self.running is not None:
                reason = getattr(e, "reason", None) or type(e).__name__
                self.say(f"breakglass: the target refused the command: {printable(reason)}\n")
                self.running = None
                self.up = None
                self.crlf = False
                self._prompt()
                self._pump()
            return
        if self.closed or self.o.terminating is not None:
            up.chan.abort()
            return
        if self.running is not up:  # it has already ended (up_closed showed the prompt)
            return
        up.chan.write_eof()  # commands never read the engineer's keystrokes
        if self._up_paused:
            up.chan.pause_reading()
        if interrupted:
            self._interrupt()

    def _interrupt(self) -> None:
        running = self.running
        if running == "starting":
            self.running = "interrupt"
            return
        if not isinstance(running, UpChannel) or running.chan is None:
            return
        self.interrupts += 1
        self.o.record_event("interrupt", channel=self.cid, count=self.interrupts)
        if self.interactive:
            self._echo(b"^C")
        if self.interrupts == 1:
            # sshd refuses signal requests for some logins (root, without privilege
            # separation): if the command is still running after the grace, detach from it.
            running.chan.send_signal("INT")
            self._detach_timer = asyncio.get_running_loop().call_later(
                INTERRUPT_GRACE, self._detach, running
            )
        else:
            self._detach(running)

    def _detach(self, up: UpChannel) -> None:
        if self._detach_timer is not None:
            self._detach_timer.cancel()
            self._detach_timer = None
        if self.running is not up or self.closed or self.o.terminating is not None:
            return
        up.detached = True
        self.o.record_event("detach", channel=self.cid)
        try:
            up.chan.send_signal("KILL")
        except (OSError, ValueError):
            pass
        up.chan.close()
        self.running = None
        self.up = None
        self.crlf = False
        self.say("\nbreakglass: the command did not stop on Ctrl-C; detached from it\n")
        self._prompt()
        self._pump()

    def up_eof(self, up: UpChannel) -> None:
        if self.kind != "restricted-shell":
            super().up_eof(up)

    def up_closed(self, up: UpChannel, exc: Exception | None) -> None:
        if self.kind != "restricted-shell":
            super().up_closed(up, exc)
            return
        self.o.record_event(
            "exit", channel=self.cid, status=up.status, signal=up.signal[0] if up.signal else None
        )
        if up is not self.running:
            return
        if self._detach_timer is not None:
            self._detach_timer.cancel()
            self._detach_timer = None
        self.running = None
        self.up = None
        self.crlf = False
        if self.closed or self.o.terminating is not None:
            return
        if up.signal is not None:
            self.say(f"breakglass: command ended by signal {printable(up.signal[0], 20)}\n")
        elif up.status not in (0, None):
            self.say(f"breakglass: exit status {up.status}\n")
        self._prompt()
        self._pump()

    def stop_upstream(self) -> None:
        if isinstance(self.running, UpChannel):
            self.up = self.running
        super().stop_upstream()


class ForwardChannel(Bridge, asyncssh.SSHTCPSession):
    """A direct-tcpip (ssh -L, -W) or forwarded-tcpip (ssh -R) channel, allowed by
    ``ssh.forwarding``: bytes recorded."""

    kind = "forward"

    def up_closed(self, up: UpChannel, exc: Exception | None) -> None:
        self.o.record_event("forward-closed", channel=self.cid)
        if not self.closed and self.o.terminating is None:
            self.end_channel()


# --------------------------------------------------------------------------- connection


class _UpstreamWatch(asyncssh.SSHClient):
    def __init__(self, owner: GatewayConnection) -> None:
        self.owner = owner

    def connection_lost(self, exc: Exception | None) -> None:
        self.owner.upstream_lost(exc)


class GatewayConnection(asyncssh.SSHServer):
    """One engineer's SSH connection to the gateway."""

    def __init__(self, gw: Any) -> None:
        self.gw = gw
        self.conn: Any = None
        self.client_ip = "?"
        self.username = ""
        self.grant: Grant | None = None
        self.gtarget: GrantTarget | None = None
        self.tcfg: SshTarget | None = None
        self.rules: CommandRules = CommandRules((), False)
        self.upstream: Any = None
        self.session: Any = None
        self.recorder: Any = None
        self.channels: set[Bridge] = set()
        self.closed = False
        self.terminating: Termination | None = None
        self._upstream_closing = False
        self._upstream_held: int | None = None  # key of the upstream socket in session.sockets
        self._chan_seq = 0
        self._tasks: set[asyncio.Task] = set()
        self._channels_gone = asyncio.Event()
        self._failed_recording = False
        #: Channels the connection's loss cut short (the gateway had not ended them).
        self.channels_cut = 0
        #: Session channels opened (0: a forward-only connection, e.g. ssh -W / ProxyJump).
        self.sessions_opened = 0
        #: Refusals not yet shown to the engineer (see take_notes).
        self.notes: list[str] = []
        self._access_watch = SshAccessWatch()  # input naming authorized_keys: alert
        self._preauth = False  # counted in gw.preauth until authenticated or closed
        self._banner_timer: asyncio.TimerHandle | None = None
        self._access_alerted = False

    # -- connection lifecycle

    def connection_made(self, conn: Any) -> None:
        self.conn = conn
        peer = conn.get_extra_info("peername")
        self.client_ip = str(peer[0]) if peer else "?"
        # asyncssh answers auth-agent-req itself (refused: agent_forwarding=False) and tells
        # the application nothing; its session channel asks the connection through this
        # method, before it handles the channel's next request (the shell or exec).
        conn.create_agent_listener = self.agent_forwarding_requested
        loop = asyncio.get_running_loop()
        if self.gw.preauth.admit(self.client_ip):  # over the pre-auth caps: close at once
            loop.call_soon(conn.abort)
            return
        self._preauth = True
        self._banner_timer = loop.call_later(self.gw.cfg.banner_timeout, self._banner_check)

    def _banner_check(self) -> None:
        """No SSH version line yet: an idle connection holding a slot; drop it."""
        if not self.closed and self.conn.get_extra_info("client_version") is None:
            self.conn.abort()

    def _preauth_done(self) -> None:
        if self._preauth:
            self._preauth = False
            self.gw.preauth.release(self.client_ip)
        if self._banner_timer is not None:
            self._banner_timer.cancel()
            self._banner_timer = None

    def auth_completed(self) -> None:
        self._preauth_done()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._preauth_done()
        for ch in list(self.channels):
            ch.closed = True
            if ch.up is not None and ch.up.chan is not None:
                ch.up.chan.abort()
        self._close_upstream()
        for t in list(self._tasks):
            t.cancel()
        if self.session is not None:
            # A client that drops TCP without a DISCONNECT after its channels ended (paramiko,
            # ssh -W/-N killed) closed cleanly; only work in progress makes it "lost".
            lost = exc is not None and self.channels_cut > 0
            self.session.finish("connection-lost" if lost else None)

    def _close_upstream(self) -> None:
        if self.upstream is not None and not self._upstream_closing:
            self._upstream_closing = True
            self.upstream.close()

    def upstream_lost(self, exc: Exception | None) -> None:
        if self.upstream is None:  # a failed connect attempt: reported by _authenticate
            return
        if self.session is not None:  # its socket is closed: the target sees it at once
            self.session.sockets.drop(self._upstream_held)
        if self._upstream_closing or self.closed or self.terminating is not None:
            return
        self._upstream_closing = True
        self.record_event("upstream-lost", error=type(exc).__name__ if exc else None)
        for ch in list(self.channels):
            ch.goodbye("breakglass: the connection to the target was lost — session closed")
        self.conn.disconnect(
            DISC_BY_APPLICATION, "breakglass: the connection to the target was lost"
        )

    def spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            log.error("ssh.internal_error", error=f"{type(exc).__name__}: {exc}")
            if self.conn is not None and not self.closed:
                self.conn.abort()

    def channel_gone(self, ch: Bridge) -> None:
        self.channels.discard(ch)
        if not self.channels:
            self._channels_gone.set()

    # -- authentication

    def begin_auth(self, username: str) -> bool:
        self.username = username
        return True

    def password_auth_supported(self) -> bool:
        return True

    def kbdint_auth_supported(self) -> bool:
        return True

    def public_key_auth_supported(self) -> bool:
        return False

    def host_based_auth_supported(self) -> bool:
        return False

    async def validate_password(self, username: str, password: str) -> bool:
        return await self._authenticate(username, password)

    def get_kbdint_challenge(self, username: str, lang: str, submethods: str) -> Any:
        return ("", "", "", [("Grant token: ", False)])

    async def validate_kbdint_response(self, username: str, responses: list[str]) -> bool:
        if len(responses) != 1:
            return self._refuse("expected one answer: the grant token")
        return await self._authenticate(username, responses[0])

    def _refuse(self, message: str) -> bool:
        """Refuse with a reason the client shows, and end the connection: one grant per try."""
        text = f"breakglass: access refused: {printable(message, 300)}"
        if self.conn is not None and not self.closed:
            self.conn.disconnect(DISC_NO_MORE_AUTH_METHODS_AVAILABLE, text)
        return False

    def _audit_refusal(self, target: str, message: str, grant: Grant | None, kind: str) -> None:
        if self.gw.metrics is not None:
            self.gw.metrics.auth_failures.labels("ssh", kind).inc()
        try:
            self.gw.audit.append(
                "auth.refused",
                protocol="ssh",
                target=printable(target, 128),
                client=self.client_ip,
                user=None,
                subject=grant.subject if grant else None,
                jti=grant.jti if grant else None,
                refusal=kind,
                message=message,
            )
        except RecorderError:  # refused anyway; the log line below still says so
            log.error("audit.lost", type="auth.refused", client=self.client_ip)
        log.info(
            "auth.refused",
            protocol="ssh",
            target=printable(target, 128),
            client=self.client_ip,
            kind=kind,
        )

    async def _authenticate(self, username: str, token: str) -> bool:
        if self.session is not None or self.closed:
            return False
        parsed = parse_username(username)
        if parsed is None:
            self.gw.limiter.failed(self.client_ip)
            msg = "the user name must be TARGET or LOGIN@TARGET"
            self._audit_refusal(username, msg, None, "bad-username")
            return self._refuse(msg)
        login, target = parsed
        result = await self.gw.authorize(
            token, protocol="ssh", target_name=target, source=self.client_ip
        )
        if self.closed:
            return False
        if isinstance(result, Refusal) or not isinstance(result, Grant):
            return self._refuse(getattr(result, "message", "grant refused"))
        grant = result
        gt = self.gw.target_of(grant, "ssh", target)
        tcfg = self.gw.cfg.ssh_targets.get(target)
        problem = None
        rules = None
        if login is not None and login != gt.login:
            problem = f"the grant is for login {gt.login} on {target}, not {login}"
        elif tcfg is None:
            problem = f"{target} is not an SSH target of this gateway"
        elif gt.login not in tcfg.logins:
            problem = f"the gateway holds no credentials for login {gt.login} on {target}"
        else:
            try:
                rules = CommandRules.from_claim(grant.ssh)
            except ValueError as e:
                problem = f"the grant's ssh rules are invalid ({e})"
        if problem is not None or rules is None or tcfg is None:
            problem = problem or "the grant cannot be used here"
            self._audit_refusal(target, problem, grant, "ssh-policy")
            return self._refuse(problem)
        try:
            upstream = await connect_upstream(
                tcfg, gt.login or "", client_factory=lambda: _UpstreamWatch(self)
            )
        except UpstreamError as e:
            self._audit_refusal(target, e.message, grant, f"upstream-{e.kind}")
            log.warning("ssh.upstream_failed", target=target, kind=e.kind)
            return self._refuse(e.message)
        if self.closed:
            upstream.close()
            return False
        try:
            session = self.gw.registry.open(
                protocol="ssh",
                grant=grant,
                target=gt,
                client=self.client_ip,
                ssh_user=printable(username, 300),
                upstream=f"{tcfg.host}:{tcfg.port}",
            )
        except SessionRefused as e:
            log.error("session.refused", target=target, error=str(e))
            upstream.close()
            return self._refuse(f"{e} — no recording, no access")
        self.grant, self.gtarget, self.tcfg, self.rules = grant, gt, tcfg, rules
        self.upstream = upstream
        self.session = session
        self.recorder = session.recorder
        session.sockets.hold(self.conn)
        self._upstream_held = session.sockets.hold(upstream)
        session.on_terminate = self._on_terminate
        session.on_warn = self._on_warn
        session.on_notice = self._on_notice
        session.abort = self._abort
        self._accept_large_requests()
        try:
            self.conn.send_auth_banner(self._banner())
        except OSError:
            pass
        return True

    def _accept_large_requests(self) -> None:
        # asyncssh has no public option for the transport's packet limit; it raises it for
        # channels with a larger max_pktsize through this method.
        update = getattr(self.conn, "_update_recv_pktlen", None)
        if update is not None:
            update(MAX_REQUEST_PACKET)

    def _banner(self) -> str:
        grant, gt = self.grant, self.gtarget
        assert grant is not None and gt is not None
        left = max(0, int((grant.expires_at - time.time()) // 60))
        mode = (
            "full shell"
            if self.rules.shell
            else f"restricted to {len(self.rules.patterns)} command pattern(s)"
        )
        lines = [
            f"breakglass: {printable(gt.name)} as {printable(gt.login)} for "
            f"{printable(grant.subject)} ({mode})",
            f"breakglass: grant expires {utc_text(grant.expires_at)} ({left} min left)",
            f"breakglass: reason: {printable(grant.reason)}"
            + (f" (ticket {printable(grant.ticket)})" if grant.ticket else ""),
            f"breakglass: this session is recorded (session {self.session.id})",
        ]
        return "\n".join(lines) + "\n"

    # -- channels

    def _next_cid(self, prefix: str) -> str:
        cid = f"{prefix}{self._chan_seq}"
        self._chan_seq += 1
        return cid

    def session_requested(self) -> Any:
        if self.session is None or self.terminating is not None:
            return False
        self.sessions_opened += 1
        return SessionChannel(self, self._next_cid("ch"))

    def grant_flag(self, name: str) -> bool:
        return bool(self.grant is not None and self.grant.ssh.get(name) is True)

    def connection_requested(
        self, dest_host: str, dest_port: int, orig_host: str, orig_port: int
    ) -> Any:
        allowed = self.grant_flag("forwarding")
        if self.session is None or self.terminating is not None:
            raise ChannelOpenError(OPEN_ADMINISTRATIVELY_PROHIBITED, "session is closing")
        self.record_decision(
            kind="forward",
            direction="local",
            text=f"{printable(dest_host, 255)}:{dest_port}",
            origin=f"{printable(orig_host, 255)}:{orig_port}",
            allowed=allowed,
        )
        if not allowed:
            self.session.count_denial("forwarding")
            self.refuse_forward(
                OPEN_ADMINISTRATIVELY_PROHIBITED,
                "breakglass: port forwarding is not allowed by this grant "
                "(ssh -L, -W and ProxyJump need a grant with forwarding)",
                orig_host,
                orig_port,
            )
        return self._open_forward(dest_host, dest_port, orig_host, orig_port)

    def refuse_forward(self, code: int, text: str, orig_host: str, orig_port: int) -> None:
        """Refuse a forwarding channel with ``text``. OpenSSH's stdio forwarding (``ssh -W``,
        hence ProxyJump) hides a channel-open failure behind "stdio forwarding failed"; it
        is the only channel of its connection and names the fake origin 127.0.0.1:65535.
        There the reason also ends the connection: OpenSSH prints a DISCONNECT's text."""
        stdio = self.sessions_opened == 0 and (orig_host, orig_port) == (STDIO_ORIGIN, 65535)
        if stdio and self.conn is not None and not self.closed:
            self.conn.disconnect(DISC_BY_APPLICATION, text)
        raise ChannelOpenError(code, text)

    async def _open_forward(
        self, dest_host: str, dest_port: int, orig_host: str, orig_port: int
    ) -> Any:
        fwd = ForwardChannel(self, self._next_cid("fwd"))
        try:
            _chan, up = await self.upstream.create_connection(
                lambda: UpChannel(fwd), dest_host, dest_port, orig_host, orig_port
            )
        except (asyncssh.Error, OSError) as e:
            reason = getattr(e, "reason", None) or type(e).__name__
            self.refuse_forward(
                OPEN_CONNECT_FAILED,
                f"breakglass: the target could not connect to {printable(dest_host, 255)}:"
                f"{dest_port}: {printable(reason)}",
                orig_host,
                orig_port,
            )
        fwd.up = up
        fwd.ready = True
        return fwd

    def server_requested(self, listen_host: str, listen_port: int) -> Any:
        """ssh -R: with ``ssh.forwarding`` the target listens (its sshd decides which
        addresses, GatewayPorts); every connection it accepts is bridged to the engineer's
        client and recorded like ssh -L."""
        if self.session is None or self.terminating is not None:
            return False
        allowed = self.grant_flag("forwarding")
        text = f"{printable(listen_host, 255)}:{listen_port}"
        if not self.record_decision(
            kind="forward",
            direction="remote",
            text=text,
            allowed=allowed,
            message=None if allowed else "remote port forwarding is not allowed by this grant",
        ):
            return False
        if not allowed:
            self.session.count_denial("forwarding")
            self.notes.append(
                f"breakglass: remote port forwarding (ssh -R {text}) is not allowed by this grant\n"
            )
            return False
        return self._listen_on_target(listen_host, listen_port)

    async def _listen_on_target(self, listen_host: str, listen_port: int) -> Any:
        where = [listen_host, listen_port]  # the port is known once the target listens
        try:
            listener = await self.upstream.create_server(
                lambda orig_host, orig_port: self._accept_remote(where, orig_host, orig_port),
                listen_host,
                listen_port,
            )
        except (asyncssh.Error, OSError) as e:
            reason = getattr(e, "reason", None) or type(e).__name__
            self.record_event(
                "forward-failed",
                direction="remote",
                text=f"{printable(listen_host, 255)}:{listen_port}",
                error=printable(reason),
            )
            return False  # OpenSSH says "remote port forwarding failed for listen port N"
        if listener is None:
            return False
        where[1] = listener.get_port()
        return listener

    async def _accept_remote(self, where: list[Any], orig_host: str, orig_port: int) -> Any:
        """The target accepted a connection on an ssh -R listener: open the forwarded
        channel to the engineer's client first, then take the target's channel."""
        if (
            self.session is None
            or self.terminating is not None
            or self.closed
            or not self.session.forwarding_allowed()
        ):
            raise ChannelOpenError(OPEN_ADMINISTRATIVELY_PROHIBITED, "the session is closing")
        fwd = ForwardChannel(self, self._next_cid("rfwd"))
        listen_host, listen_port = where
        if not self.record_event(
            "forward-open",
            channel=fwd.cid,
            direction="remote",
            text=f"{printable(listen_host, 255)}:{listen_port}",
            origin=f"{printable(orig_host, 255)}:{orig_port}",
        ):
            raise ChannelOpenError(OPEN_ADMINISTRATIVELY_PROHIBITED, "recording failed")
        try:
            await self.conn.create_connection(
                lambda: fwd, listen_host, listen_port, orig_host, orig_port
            )
        except (asyncssh.Error, OSError) as e:
            reason = getattr(e, "reason", None) or type(e).__name__
            self.record_event("forward-closed", channel=fwd.cid, error=printable(reason))
            raise ChannelOpenError(
                OPEN_CONNECT_FAILED, f"the engineer's client refused: {printable(reason)}"
            ) from None
        return RemoteUpChannel(fwd)

    async def agent_forwarding_requested(self) -> bool:
        """ssh -A: not supported (see the README). Recorded, and said on the session's
        channel, since OpenSSH asks without waiting for an answer and would print nothing."""
        if self.session is not None:
            self.record_decision(
                kind="agent",
                text="auth-agent-req@openssh.com",
                allowed=False,
                message=AGENT_REFUSAL,
            )
            self.session.count_denial("agent")
            self.notes.append(f"breakglass: {AGENT_REFUSAL}\n")
        return False

    def take_notes(self) -> str:
        """Refusals of requests that carry no reason in SSH (agent forwarding, tcpip-forward
        global requests), for the next session channel to show once."""
        text = "".join(self.notes)
        self.notes.clear()
        return text

    def unix_connection_requested(self, dest_path: str) -> bool:
        if self.session is not None:
            self.record_decision(
                kind="forward", direction="unix", text=printable(dest_path), allowed=False
            )
            self.session.count_denial("forwarding")
        return False

    def unix_server_requested(self, listen_path: str) -> bool:
        return False

    def tun_requested(self, unit: Any) -> bool:
        return False

    def tap_requested(self, unit: Any) -> bool:
        return False

    # -- recording helpers: append, then hand to the kernel (False when the recording
    #    failed: do not forward)

    def _record(self, append: Callable[..., None], *args: Any, **fields: Any) -> bool:
        if self.recorder is None:
            return False
        try:
            append(*args, **fields)
            self.recorder.write()
            return True
        except RecorderError:
            self.recording_failed()
            return False

    def record_event(self, kind: str, **fields: Any) -> bool:
        return self.recorder is not None and self._record(self.recorder.event, kind, **fields)

    def record_decision(self, **fields: Any) -> bool:
        if self.recorder is None:
            return False
        if not self._record(self.recorder.decision, **fields):
            return False
        if SshAccessWatch.names_access_file(str(fields.get("text", ""))):
            self.gw.takeover_attempt(self.session, SSH_RULE, "seen", via=fields.get("kind"))
        return True

    def watch_input(self, data: bytes) -> None:
        """Alert (once per connection) on typed input naming the target's SSH access files."""
        if self._access_watch.feed(data) and not self._access_alerted:
            self._access_alerted = True  # keystrokes repeat; one alert says it
            self.gw.takeover_attempt(self.session, SSH_RULE, "seen", via="input")

    def record_input(self, data: bytes, cid: str) -> bool:
        if not self._record(self.recorder.input, data, cid):
            return False
        self.watch_input(data)
        return True

    def record_output(self, data: bytes, cid: str, stream: str) -> bool:
        return self._record(self.recorder.output, data, cid, stream)

    def record_resize(self, cols: int, rows: int) -> None:
        if self.recorder is not None:
            self._record(self.recorder.resize, cols, rows)

    def recording_failed(self) -> None:
        if self._failed_recording or self.session is None:
            return
        if self.session.recording_ended_on_purpose():
            return  # e.g. an exit status that arrives after exp
        self._failed_recording = True
        log.error("ssh.recording_failed", session=self.session.id)
        for ch in list(self.channels):
            ch.pause_up("recorder-failed")
        exc = self.recorder.failed
        if exc is not None:
            self.session.recorder_failed(exc)  # a storage fault ends every session writing there
        self.session.end_now(
            Termination("recorder-failed", "the recording failed (no recording, no access)")
        )

    # -- expiry, revocation, kill

    async def _on_terminate(self, termination: Termination) -> None:
        self.terminating = termination
        text = goodbye_text(termination)
        for ch in list(self.channels):
            ch.stop_upstream()
        self._close_upstream()
        if self.channels:
            self._channels_gone.clear()
            for ch in list(self.channels):
                ch.goodbye(text)
            try:
                await asyncio.wait_for(self._channels_gone.wait(), GOODBYE_WAIT)
            except TimeoutError:
                pass
        if self.conn is not None and not self.closed:
            self.conn.disconnect(DISC_BY_APPLICATION, text)

    def _on_warn(self, seconds_left: float) -> None:
        grant = self.grant
        if grant is None:
            return
        minutes = max(1, round(seconds_left / 60))
        text = (
            f"breakglass: this grant expires in {minutes} min (at {utc_text(grant.expires_at)}); "
            "the session will be closed then"
        )
        self.record_event("warn", seconds_left=round(seconds_left, 1))
        for ch in list(self.channels):
            ch.warn(text)

    def _on_notice(self, text: str) -> None:
        """A gateway message on every channel (recorded as output, like the expiry warning)."""
        self.record_event("notice", severity="NOTICE", message=text)
        for ch in list(self.channels):
            ch.warn(text)

    def _abort(self) -> None:
        if self.upstream is not None:
            self.upstream.abort()
        if self.conn is not None:
            self.conn.abort()


# --------------------------------------------------------------------------- listener


def server_options(gw: Any) -> dict[str, Any]:
    cfg = gw.cfg
    if cfg.ssh_host_key is None:
        raise ValueError("gateway.ssh_host_key is required for the SSH listener")
    host_key = asyncssh.read_private_key(str(cfg.ssh_host_key))
    return {
        "server_host_keys": [host_key],
        "server_version": "breakglass",
        "encoding": None,
        "agent_forwarding": False,
        "x11_forwarding": False,
        "allow_pty": True,
        "line_editor": False,
        "allow_scp": False,
        "sftp_factory": None,
        "password_auth": True,
        "kbdint_auth": True,
        "public_key_auth": False,
        "host_based_auth": False,
        "gss_host": None,
        "encryption_algs": SERVER_ENCRYPTION_ALGS,
        "compression_algs": ["none"],
        "window": SERVER_WINDOW,
        "max_pktsize": SERVER_MAX_PKTSIZE,
        "login_timeout": LOGIN_TIMEOUT,
        "keepalive_interval": 60,
    }


async def start_ssh_listener(gw: Any) -> Any:
    """Listen on ``gw.cfg.ssh_listen``; the result has ``close()`` and ``wait_closed()``."""
    cfg = gw.cfg
    # asyncssh logs every command at INFO; commands belong in recordings, not logs.
    asyncssh.set_log_level(logging.WARNING)
    return await asyncssh.create_server(
        lambda: GatewayConnection(gw),
        cfg.ssh_listen.host,
        cfg.ssh_listen.port,
        reuse_port=gw.workers > 1,
        **server_options(gw),
    )
