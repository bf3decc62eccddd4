"""SSH command allowlist: a pure (no I/O) matcher for exec commands and restricted-shell lines.

The gateway calls :func:`check_command` for every ``exec`` request and every line typed in
its restricted shell. Only an allowed verdict's ``command`` may be sent upstream; it is
``shlex.join(verdict.argv)``, so the upstream shell sees exactly the matched arguments as
literal words and nothing else. Denied verdicts carry ``argv=()`` and ``command=""`` so
nothing runnable can leak out of a denial by mistake.

Everything below is fail-closed: when the input is ambiguous, it is refused with a
machine rule id and a human message that is safe to print (it never echoes control or
non-ASCII characters).

Decisions, in the order the checks run
======================================

Shell mode (``CommandRules.shell`` true)
    The grant allows a full shell: any command is allowed *as typed*; ``command`` is the
    original line unchanged, ``argv`` is ``()``. Only two things are still refused, because
    then the recording would not show what runs: invalid UTF-8 (``bad-encoding``) and NUL
    (``nul-byte``; sshd would silently cut the command there).

Input hygiene (allowlist mode)
    * ``bytes`` input must be valid UTF-8 (``bad-encoding``).
    * More than :data:`MAX_COMMAND_BYTES` (4096) UTF-8 bytes: ``too-long``.
    * NUL anywhere: ``nul-byte``.
    * Backslash-newline continuation, newline or carriage return anywhere (quoted or not):
      ``metacharacter`` (they separate commands in a shell; run one command at a time).
    * Any other C0 control character, DEL or C1 control anywhere: ``control-char``. A tab
      is accepted *only* as unquoted word separator (like a space); a tab inside quotes or
      after a backslash would become part of an argument and is ``control-char``.
    * Any character outside printable ASCII: ``non-ascii``. This refuses look-alike letters
      (``uptіme`` with a Cyrillic ``і``), zero-width and bidi-override characters
      (misleading audit trails) and removes any dependence on the target's locale when the
      upstream shell parses the re-quoted command. Trade-off: an engineer cannot pass a
      non-ASCII argument (``grep 'café'``); use a full-shell grant for that.
    * Empty or blank line, or an empty program word (``''``): ``empty``.

Splitting (POSIX shell quoting, same result as ``shlex.split(posix=True)``)
    Words are split on unquoted spaces/tabs; ``'...'`` is literal, ``"..."`` is literal
    except ``\\"`` and ``\\\\``, an unquoted backslash makes the next character literal.
    Adjacent pieces join: ``'upt''ime'`` and ``"ech"o`` are the words ``uptime`` and
    ``echo`` -- that is what a shell would run too, so they are allowed when the result
    matches. Leading/trailing blanks and repeated blanks are dropped. Unbalanced quotes or
    a trailing backslash: ``bad-quoting``. As a guard against parser differentials the
    result is cross-checked against ``shlex.split``; any disagreement is ``bad-quoting``.

Metacharacters (``metacharacter``)
    Refused when *unquoted*: ``; & | < > ( ) $ ` { } # ~ !`` -- separators, redirections,
    here-strings, process/command substitution, expansions, brace expansion, comments,
    tilde expansion, history/negation -- and the glob characters ``* ? [``: the gateway
    never expands wildcards, so ``cat /var/log/app/*`` typed unquoted is refused with a
    message instead of silently running ``cat '/var/log/app/*'``. ``$`` and backquote are
    also refused *inside double quotes*, because a shell expands them there (``"$(id)"``);
    use single quotes for a literal ``$``. Quoted or backslash-escaped metacharacters
    (``'a;b'``, ``\\;``, ``'*'``) are literal argument text: they are allowed when the
    matching pattern word accepts them, and are re-quoted before being sent upstream.

Environment assignments (``env-assignment``)
    A program word containing ``=`` (``VAR=x cmd``, ``'A=1' uptime``, ``x=1``) is refused.
    ``env X=1 uptime`` is simply not allowed unless ``env ...`` is in the allowlist (and
    :meth:`CommandRules.warnings` warns about such a pattern).

Path traversal (``path-traversal``)
    Any word (program included) containing a ``..`` segment is refused outright, quoted or
    not. Segments are split on ``/`` and also on ``= : ,`` so option values such as
    ``--output=../x`` or ``--dir=/a/../b`` are caught; ``...`` or ``a..b`` are not segments.

Path normalisation (arguments only, never the program)
    Every argument containing ``/`` has empty segments (``//``) and ``.`` segments removed
    and a trailing ``/`` dropped: ``/var/log/app//x.log`` and ``/var/log/app/./x.log``
    become ``/var/log/app/x.log``; ``//etc`` becomes ``/etc``. A leading ``./`` is *kept*:
    ``posixpath.normpath`` is deliberately not used because it turns ``./-rf`` into the
    option ``-rf`` and ``./host:x`` into the scp remote spec ``host:x``. The normalised
    argument is both what is matched and what runs.

Program matching
    The program word matches the pattern's program literally: ``systemctl`` does not allow
    ``/usr/bin/systemctl`` or ``./systemctl`` unless that exact spelling is listed. No PATH
    lookup, no basename tricks, case-sensitive.

Pattern syntax (``CommandRules.patterns``)
    Each pattern is split into words with the same POSIX quoting rules (quotes only group
    words; unquoted shell metacharacters other than glob characters and ``!`` are a
    ``ValueError``).
    The first word is the literal program (no glob characters, no ``=``). Every other word
    is a glob matched against exactly one argument; by default the argument count must be
    equal. Glob semantics, per word:

    * ``*`` matches any run of characters (also none) and ``?`` any one character, ``[seq]``
      / ``[!seq]`` a character class (as :func:`fnmatch.fnmatchcase`) -- but **none of them
      ever matches** ``/``. ``cat /var/log/app/*`` allows ``/var/log/app/x.log`` but not
      ``/var/log/app/sub/x.log``; ``systemctl status *`` never accepts a path. ``[/]`` or an
      unterminated ``[`` is a ``ValueError``; write ``[*]``, ``[?]``, ``[[]`` for literals.
    * ``DIR/**`` as the whole last path segment matches any path strictly below ``DIR``
      (any depth; ``DIR`` itself does not match). ``**`` alone matches any one argument,
      including one that contains ``/``. ``**`` anywhere else is a ``ValueError``.
    * A word starting with ``/`` only matches absolute arguments, a word not starting with
      ``/`` never matches an absolute argument (``*/x`` does not allow ``/x``).
    * Option injection: a word that does not itself start with a literal ``-`` never
      matches an argument starting with ``-``. ``journalctl -u app -n *`` refuses
      ``-n --output=/tmp/x`` and ``-n -f``; ``echo *`` refuses ``echo -e``. If that is the
      only reason no pattern matched, the rule is ``option-injection``. To allow options,
      write them: ``journalctl -u app -n * -f`` or ``ls -l*`` (warned).
    * Variadic, only as the last word: ``...`` alone allows **zero or more** further
      arguments, each like ``**`` (any text, may contain ``/``, never starting with ``-``;
      warned, since it accepts any path). ``GLOB...`` allows **one or more** further
      arguments each matching ``GLOB`` -- ``cat /var/log/app/*...`` allows several files
      but not a bare ``cat``. A word ending in ``...`` elsewhere is a ``ValueError``; write
      ``[.]..`` for a literal ``...``.

    ``CommandRules`` raises ``ValueError`` with a message naming the bad pattern.

Pagers, editors and interactive programs
    The allowlist is the authority; nothing a pattern allows is refused because of the
    program's name. Interactive programs (pagers, editors, shells, interpreters, ``env``,
    ``sudo``, ``find -exec`` ...) in a pattern produce :meth:`CommandRules.warnings` for
    config validation; admins must not allowlist them. The gateway runs allowed commands
    without a PTY upstream (pagers only start on a terminal) and sets :data:`SAFE_ENV`,
    which disables pagers and editors and puts ``less`` in secure mode. OpenSSH's sshd
    drops environment requests not listed in its ``AcceptEnv``, so :func:`with_safe_env`
    also offers the portable way: a ``VAR=value ...`` prefix on the upstream command.

Upstream shell
    sshd runs an exec command with the target account's login shell (``$SHELL -c``). The
    re-quoting produced by ``shlex.join`` is exact for POSIX shells (sh, dash, bash, ksh,
    zsh). Target accounts used by the gateway must have such a login shell, not fish,
    csh or tcsh, whose single-quote rules differ.

scp
    ``scp -f PATH`` / ``scp -t PATH`` are matched like any command. OpenSSH 9.x's scp uses
    the SFTP subsystem by default (governed by the grant's ``sftp`` flag, not by these
    patterns); only legacy mode (``scp -O``, and older clients) sends an exec command.
    Observed with OpenSSH 9.2p1 (``scp -O -S fake-ssh``):
    ``scp [-v] [-r] [-p] [-d] -f|-t [--] PATH`` in that flag order, ``--`` only when PATH
    starts with ``-``, PATH sent unquoted (the remote shell was expected to expand globs
    and split on spaces; here an unquoted glob is refused and spaces make extra words).
    A lone ``--`` is never dropped; admins list the exact forms they allow, e.g. with
    :func:`scp_download_patterns` / :func:`scp_upload_patterns`.
"""

from __future__ import annotations

import fnmatch
import re
import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

__all__ = [
    "MAX_COMMAND_BYTES",
    "MAX_PATTERNS",
    "RULE_IDS",
    "SAFE_ENV",
    "CommandRules",
    "CommandVerdict",
    "check_command",
    "scp_download_patterns",
    "scp_upload_patterns",
    "with_safe_env",
]

MAX_COMMAND_BYTES = 4096
MAX_PATTERNS = 1000
MAX_PATTERN_CHARS = 4096

# Rule ids (CommandVerdict.rule).
ALLOWED = "allowed"
METACHARACTER = "metacharacter"
NO_MATCH = "no-match"
EMPTY = "empty"
TOO_LONG = "too-long"
BAD_QUOTING = "bad-quoting"
BAD_ENCODING = "bad-encoding"
PATH_TRAVERSAL = "path-traversal"
NUL_BYTE = "nul-byte"
CONTROL_CHAR = "control-char"
NON_ASCII = "non-ascii"
ENV_ASSIGNMENT = "env-assignment"
OPTION_INJECTION = "option-injection"

RULE_IDS = frozenset(
    {
        ALLOWED,
        METACHARACTER,
        NO_MATCH,
        EMPTY,
        TOO_LONG,
        BAD_QUOTING,
        BAD_ENCODING,
        PATH_TRAVERSAL,
        NUL_BYTE,
        CONTROL_CHAR,
        NON_ASCII,
        ENV_ASSIGNMENT,
        OPTION_INJECTION,
    }
)

#: Environment for upstream commands: no pagers, no editors, ``less`` in secure mode,
#: no terminal features, no interactive git prompts.
SAFE_ENV: dict[str, str] = {
    "PAGER": "cat",
    "GIT_PAGER": "cat",
    "MANPAGER": "cat",
    "PSQL_PAGER": "cat",
    "SYSTEMD_PAGER": "",  # systemd: empty (or "cat") disables the pager
    "SYSTEMD_PAGERSECURE": "1",
    "AWS_PAGER": "",
    "LESSSECURE": "1",  # less: no shell escapes, no editor, no pipes, no LESSOPEN
    "LESSOPEN": "",
    "LESSCLOSE": "",
    "EDITOR": "/bin/false",
    "VISUAL": "/bin/false",
    "SYSTEMD_EDITOR": "/bin/false",
    "GIT_EDITOR": "/bin/false",
    "GIT_TERMINAL_PROMPT": "0",
    "TERM": "dumb",
}

_UNQUOTED_META = frozenset(";&|<>()$`{}#~!")
_GLOB_CHARS = frozenset("*?[")
_DQ_META = frozenset("$`")
_TRAVERSAL_SPLIT = re.compile(r"[/=:,]")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")

_SHOW_MAX = 200


class _Deny(Exception):
    """Internal: a refusal with a rule id and a human message."""

    def __init__(self, rule: str, message: str) -> None:
        super().__init__(message)
        self.rule = rule
        self.message = message


@dataclass(frozen=True, slots=True)
class CommandVerdict:
    """Outcome of :func:`check_command`.

    ``command`` is the exact string to run upstream (allowed verdicts only; ``""`` when
    denied). ``bool(verdict)`` is ``verdict.allowed``.
    """

    allowed: bool
    rule: str
    message: str
    argv: tuple[str, ...] = ()
    command: str = ""
    pattern: str | None = None

    def __bool__(self) -> bool:
        return self.allowed


def _deny(rule: str, message: str) -> CommandVerdict:
    return CommandVerdict(allowed=False, rule=rule, message=message)


def _show(text: str) -> str:
    """Shorten printable text for a message."""
    return text if len(text) <= _SHOW_MAX else text[: _SHOW_MAX - 3] + "..."


# --------------------------------------------------------------------------- lexing


def _check_chars(line: str) -> None:
    """Refuse NUL, line breaks, control and non-ASCII characters (tab is checked in _lex)."""
    if "\x00" in line:
        raise _Deny(NUL_BYTE, "a NUL byte is not allowed in a command")
    if "\\\n" in line or "\\\r\n" in line:
        raise _Deny(
            METACHARACTER,
            "a backslash-newline line continuation is not allowed; type the command on one line",
        )
    for ch in ("\n", "\r"):
        if ch in line:
            name = "newline" if ch == "\n" else "carriage return"
            raise _Deny(
                METACHARACTER,
                f"a {name} is not allowed in a command; run one command at a time",
            )
    for pos, ch in enumerate(line):
        o = ord(ch)
        if 0x20 <= o <= 0x7E or ch == "\t":
            continue
        if o < 0x20 or 0x7F <= o <= 0x9F:
            raise _Deny(
                CONTROL_CHAR,
                f"control character U+{o:04X} at position {pos} is not allowed",
            )
        raise _Deny(
            NON_ASCII,
            f"non-ASCII character U+{o:04X} at position {pos} is not allowed "
            "(commands must be plain ASCII; look-alike letters can disguise a command)",
        )


def _meta_message(ch: str) -> str:
    if ch in _GLOB_CHARS:
        return (
            f"unquoted wildcard {ch!r} is not allowed: the gateway does not expand file "
            f"names; name the files explicitly (or quote it for a literal {ch!r})"
        )
    if ch == "~":
        return "unquoted '~' is not allowed: the gateway does not expand home directories; spell the path"
    return (
        f"shell metacharacter {ch!r} is not allowed: commands run without a shell "
        f"(quote it for a literal {ch!r})"
    )


def _lex(line: str, *, patterns: bool = False) -> list[str]:
    """Split ``line`` like a POSIX shell, refusing what a shell would interpret.

    With ``patterns`` true, unquoted ``* ? [`` and ``!`` are kept (glob syntax, ``[!seq]``).
    """
    words: list[str] = []
    cur: list[str] = []
    in_word = False
    i, n = 0, len(line)
    while i < n:
        c = line[i]
        if c in " \t":
            if in_word:
                words.append("".join(cur))
                cur, in_word = [], False
            i += 1
        elif c == "'":
            j = line.find("'", i + 1)
            if j < 0:
                raise _Deny(BAD_QUOTING, "unbalanced single quote (')")
            piece = line[i + 1 : j]
            if "\t" in piece:
                raise _Deny(CONTROL_CHAR, "a tab inside quotes is not allowed")
            cur.append(piece)
            in_word = True
            i = j + 1
        elif c == '"':
            j = i + 1
            while True:
                if j >= n:
                    raise _Deny(BAD_QUOTING, 'unbalanced double quote (")')
                d = line[j]
                if d == '"':
                    break
                if d == "\\" and j + 1 < n and line[j + 1] in '"\\':
                    cur.append(line[j + 1])
                    j += 2
                    continue
                if d in _DQ_META:
                    raise _Deny(
                        METACHARACTER,
                        f"{d!r} inside double quotes would be expanded by a shell and is not "
                        f"allowed; use single quotes for a literal {d!r}",
                    )
                if d == "\t":
                    raise _Deny(CONTROL_CHAR, "a tab inside quotes is not allowed")
                cur.append(d)
                j += 1
            in_word = True
            i = j + 1
        elif c == "\\":
            if i + 1 >= n:
                raise _Deny(BAD_QUOTING, "trailing backslash")
            nxt = line[i + 1]
            if nxt == "\t":
                raise _Deny(CONTROL_CHAR, "an escaped tab is not allowed")
            cur.append(nxt)
            in_word = True
            i += 2
        elif (c in _UNQUOTED_META and not (patterns and c == "!")) or (
            c in _GLOB_CHARS and not patterns
        ):
            raise _Deny(METACHARACTER, _meta_message(c))
        else:
            cur.append(c)
            in_word = True
            i += 1
    if in_word:
        words.append("".join(cur))
    # Defence against parser differentials: our split must be exactly shlex's.
    try:
        reference = shlex.split(line, posix=True)
    except ValueError:
        reference = None
    if reference != words:
        raise _Deny(BAD_QUOTING, "the command could not be split unambiguously")
    return words


# ------------------------------------------------------------------ path handling


def _has_traversal(word: str) -> bool:
    return ".." in _TRAVERSAL_SPLIT.split(word)


def _normalise_path(arg: str) -> str:
    """Collapse ``//`` and ``/./``, drop a trailing ``/``; keep a leading ``./`` (see module doc)."""
    if "/" not in arg:
        return arg
    head, *rest = arg.split("/")
    kept = [p for p in rest if p not in ("", ".")]
    if not kept:
        return "/" if head == "" else head
    return "/".join([head, *kept])


# ------------------------------------------------------------------ pattern words


def _check_brackets(word: str) -> None:
    """Validate ``[...]`` classes the way fnmatch parses them: terminated, no ``/``."""
    i, n = 0, len(word)
    while i < n:
        if word[i] == "[":
            j = i + 1
            if j < n and word[j] == "!":
                j += 1
            if j < n and word[j] == "]":
                j += 1
            while j < n and word[j] != "]":
                j += 1
            if j >= n:
                raise ValueError(f"unterminated '[' in {word!r} (write '[[]' for a literal '[')")
            if "/" in word[i + 1 : j]:
                raise ValueError(f"a character class cannot contain '/' in {word!r}")
            i = j + 1
        else:
            i += 1


def _has_glob(word: str) -> bool:
    return any(c in _GLOB_CHARS for c in word)


@dataclass(frozen=True, slots=True)
class _Glob:
    """One compiled pattern word (matches exactly one argument)."""

    text: str
    any_arg: bool  # "**": any argument
    absolute: bool
    segments: tuple[str, ...]  # fnmatch patterns, one per '/'-segment
    subtree: bool  # ends with "/**"

    @classmethod
    def compile(cls, word: str) -> _Glob:
        if word == "**":
            return cls(word, True, False, (), False)
        subtree = word.endswith("/**")
        body = word[:-3] if subtree else word
        if "**" in body:
            raise ValueError(
                f"'**' is only allowed alone or as the last path segment ('DIR/**'): {word!r}"
            )
        _check_brackets(body)
        if _has_traversal(word):
            raise ValueError(f"a '..' segment can never match: {word!r}")
        if subtree:
            if body == "" or body == "/":
                segments: tuple[str, ...] = ("",)
            else:
                segments = tuple(_normalise_path(body + "/").split("/"))
        else:
            segments = tuple(_normalise_path(body).split("/"))
        absolute = word.startswith("/")
        return cls(word, False, absolute, segments, subtree)

    @property
    def allows_options(self) -> bool:
        return self.text.startswith("-")

    def glob_match(self, arg: str) -> bool:
        """Match ignoring the option-injection rule."""
        if self.any_arg:
            return True
        if arg.startswith("/") != self.absolute:
            return False
        parts = arg.split("/")
        nseg = len(self.segments)
        if self.subtree:
            if len(parts) <= nseg or not all(parts[nseg:]):
                return False
            parts = parts[:nseg]
        elif len(parts) != nseg:
            return False
        return all(fnmatch.fnmatchcase(p, s) for p, s in zip(parts, self.segments, strict=True))


@dataclass(frozen=True, slots=True)
class _Pattern:
    source: str
    program: str
    words: tuple[_Glob, ...]
    variadic: _Glob | None  # glob for the extra arguments, if any
    variadic_min: int  # 0 for "...", 1 for "GLOB..."

    def match(self, argv: list[str]) -> str | None:
        """Return ALLOWED, OPTION_INJECTION (matched but for an option) or None."""
        args = argv[1:]
        nfixed = len(self.words)
        if self.variadic is None:
            if len(args) != nfixed:
                return None
        elif len(args) < nfixed + self.variadic_min:
            return None
        option = False
        for i, arg in enumerate(args):
            glob = self.words[i] if i < nfixed else self.variadic
            assert glob is not None
            if arg.startswith("-") and not glob.allows_options:
                option = True  # an option where the pattern has an operand: never allowed
            elif not glob.glob_match(arg):
                return None
        return OPTION_INJECTION if option else ALLOWED


def _compile_pattern(source: object, index: int) -> _Pattern:
    where = f"command pattern #{index + 1}"
    if not isinstance(source, str):
        raise ValueError(f"{where} must be a string, got {type(source).__name__}")
    shown = repr(source) if len(source) <= _SHOW_MAX else repr(source[:_SHOW_MAX]) + "..."
    where = f"{where} {shown}"
    if len(source) > MAX_PATTERN_CHARS:
        raise ValueError(f"{where} is longer than {MAX_PATTERN_CHARS} characters")
    try:
        _check_chars(source)
        words = _lex(source, patterns=True)
    except _Deny as exc:
        raise ValueError(f"{where}: {exc.message}") from None
    if not words or words[0] == "":
        raise ValueError(f"{where} is empty")
    program, rest = words[0], words[1:]
    if _has_glob(program) or program.endswith("..."):
        raise ValueError(f"{where}: the program must be a literal name, not a glob")
    if "=" in program:
        raise ValueError(f"{where}: the program cannot contain '=' (environment assignment)")
    if _has_traversal(program):
        raise ValueError(f"{where}: the program cannot contain a '..' segment")
    variadic: _Glob | None = None
    variadic_min = 0
    if rest and rest[-1].endswith("..."):
        last = rest.pop()
        if last == "...":
            variadic = _Glob.compile("**")
        else:
            variadic_min = 1
            try:
                variadic = _Glob.compile(last[:-3])
            except ValueError as exc:
                raise ValueError(f"{where}: {exc}") from None
    globs: list[_Glob] = []
    for word in rest:
        if word.endswith("..."):
            raise ValueError(
                f"{where}: '...' is only allowed at the end of the last word "
                f"(write '[.]..' for a literal '...')"
            )
        try:
            globs.append(_Glob.compile(word))
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
    return _Pattern(source, program, tuple(globs), variadic, variadic_min)


# ----------------------------------------------------------------------- warnings

_SHELLS = {"sh", "bash", "zsh", "dash", "ksh", "mksh", "csh", "tcsh", "fish", "busybox"}
_WRAPPERS = {
    "env",
    "sudo",
    "su",
    "doas",
    "pkexec",
    "runuser",
    "xargs",
    "nohup",
    "timeout",
    "nice",
    "ionice",
    "stdbuf",
    "setsid",
    "chroot",
    "nsenter",
    "unshare",
    "flock",
    "watch",
    "script",
    "strace",
    "ltrace",
    "gdb",
    "time",
    "exec",
    "eval",
    "command",
    "builtin",
    "source",
    ".",
}
_INTERPRETERS_PREFIX = ("python", "perl", "ruby", "node", "php", "lua", "tclsh", "wish")
_INTERPRETERS = {"awk", "gawk", "mawk", "nawk", "busybox", "deno", "bun", "irb", "R", "Rscript"}
_INTERACTIVE = {
    "less",
    "more",
    "most",
    "pg",
    "vi",
    "vim",
    "nvim",
    "view",
    "rvim",
    "nano",
    "pico",
    "emacs",
    "ed",
    "ex",
    "man",
    "info",
    "top",
    "htop",
    "tmux",
    "screen",
    "mysql",
    "psql",
    "sqlite3",
    "ftp",
    "telnet",
    "crontab",
    "visudo",
    "vipw",
}
_EXEC_CAPABLE = {
    "ssh": "can run commands on other hosts (-o ProxyCommand, remote commands)",
    "scp": "copies files; '-t' writes files on the target",
    "rsync": "can run programs via -e/--rsh and write files",
    "tar": "can run programs (--to-command, --checkpoint-action, -I) and write files",
    "sed": "GNU sed's 'e' and 'w' commands run programs and write files",
    "docker": "gives root-equivalent access",
    "kubectl": "can exec into containers",
    "systemd-run": "runs arbitrary programs",
    "zip": "can run programs (-T -TT)",
    "dd": "reads and writes arbitrary files",
    "tee": "writes files",
    "git": "runs hooks, aliases and pagers from repository configuration",
}
_FIND_ACTIONS = {
    "-exec",
    "-execdir",
    "-ok",
    "-okdir",
    "-delete",
    "-fprint",
    "-fprint0",
    "-fprintf",
    "-fls",
}


def _pattern_warnings(p: _Pattern) -> list[str]:
    out: list[str] = []
    name = p.program.rsplit("/", 1)[-1]
    label = f"command pattern {p.source!r}"
    if name in _SHELLS:
        out.append(f"{label}: '{name}' is a shell; it can run anything")
    elif name in _WRAPPERS:
        out.append(f"{label}: '{name}' runs another program; it can run anything")
    elif name in _INTERPRETERS or name.startswith(_INTERPRETERS_PREFIX):
        out.append(f"{label}: '{name}' is an interpreter; it can run anything")
    elif name in _INTERACTIVE:
        out.append(
            f"{label}: '{name}' is interactive (pager, editor or client with shell escapes); "
            "do not allowlist interactive programs"
        )
    elif name in _EXEC_CAPABLE:
        if name != "scp" or any(w.text == "-t" for w in p.words):
            out.append(f"{label}: '{name}' {_EXEC_CAPABLE[name]}")
    if name == "find":
        actions = sorted({w.text for w in p.words} & _FIND_ACTIONS)
        if actions:
            out.append(f"{label}: find {' '.join(actions)} runs programs or changes files")
    if "/" in p.program and not p.program.startswith("/"):
        out.append(f"{label}: relative program path {p.program!r} depends on the working directory")
    for w in p.words:
        if w.text.startswith("-") and _has_glob(w.text):
            out.append(f"{label}: word {w.text!r} allows arbitrary options")
        if w.any_arg:
            out.append(f"{label}: '**' accepts any argument, including any path")
        elif w.subtree and w.segments == ("",):
            out.append(f"{label}: '/**' accepts any absolute path")
    if p.variadic is not None:
        if p.variadic.any_arg:
            out.append(
                f"{label}: a trailing '...' accepts any further arguments, including any path"
            )
        elif p.variadic.text.startswith("-") and _has_glob(p.variadic.text):
            out.append(f"{label}: the variadic word allows arbitrary options")
    return out


# ---------------------------------------------------------------------- the rules


@dataclass(frozen=True, slots=True)
class CommandRules:
    """A grant's command allowlist (``ssh.commands``) and full-shell flag (``ssh.shell``).

    Patterns are validated and compiled on construction; a bad pattern raises
    ``ValueError`` naming it.
    """

    patterns: tuple[str, ...] = ()
    shell: bool = False
    _compiled: dict[str, tuple[_Pattern, ...]] = field(
        init=False, repr=False, compare=False, hash=False, default=None
    )

    def __post_init__(self) -> None:
        patterns = self.patterns
        if isinstance(patterns, str | bytes) or not isinstance(patterns, Iterable):
            raise ValueError("command patterns must be a list of strings")
        patterns = tuple(patterns)
        if len(patterns) > MAX_PATTERNS:
            raise ValueError(f"too many command patterns ({len(patterns)} > {MAX_PATTERNS})")
        if not isinstance(self.shell, bool):
            raise ValueError(f"'shell' must be true or false, got {self.shell!r}")
        by_program: dict[str, list[_Pattern]] = {}
        for i, source in enumerate(patterns):
            compiled = _compile_pattern(source, i)
            by_program.setdefault(compiled.program, []).append(compiled)
        object.__setattr__(self, "patterns", patterns)
        object.__setattr__(self, "_compiled", {k: tuple(v) for k, v in by_program.items()})

    @classmethod
    def from_claim(cls, claim: Mapping[str, object] | None) -> CommandRules:
        """Build from the grant's ``ssh`` claim ``{"commands": [...], "shell": bool, ...}``.

        Other keys (``forwarding``, ``sftp``) are not this module's business and are ignored.
        A missing claim or missing ``commands`` means no commands are allowed.
        """
        if claim is None:
            return cls((), False)
        if not isinstance(claim, Mapping):
            raise ValueError("the 'ssh' claim must be an object")
        commands = claim.get("commands", [])
        if commands is None:
            commands = []
        if not isinstance(commands, list | tuple) or not all(isinstance(c, str) for c in commands):
            raise ValueError("'ssh.commands' must be a list of strings")
        shell = claim.get("shell", False)
        if not isinstance(shell, bool):
            raise ValueError(f"'ssh.shell' must be true or false, got {shell!r}")
        return cls(tuple(commands), shell)

    def warnings(self) -> list[str]:
        """Human warnings about risky patterns (for config validation); never a refusal."""
        out: list[str] = []
        if self.shell:
            out.append("'shell' is true: any command is allowed, the allowlist is not used")
        for compiled in self._compiled.values():
            for p in compiled:
                out.extend(_pattern_warnings(p))
        return out

    def _candidates(self, program: str) -> tuple[_Pattern, ...]:
        return self._compiled.get(program, ())

    def completions(self, words: Sequence[str], partial: str) -> list[tuple[str, bool]]:
        """Tab completion from the allowlist alone (nothing runs on the target): the next
        word the patterns allow after ``words``, starting with ``partial``. Each candidate
        is ``(text, complete)``: ``complete`` for a whole literal word; otherwise the
        literal start of a pattern word (``/var/log/app/`` for ``/var/log/app/*``)."""
        found: dict[str, bool] = {}
        if not words:
            for program in self._compiled:
                found[program] = True
        else:
            args = list(words[1:])
            for p in self._candidates(words[0]):
                if p.variadic is None and len(args) >= len(p.words):
                    continue
                globs = [_word_at(p, i) for i in range(len(args) + 1)]
                if all(g.glob_match(a) for g, a in zip(globs, args, strict=False)):
                    text, complete = _literal_start(globs[-1])
                    if text:
                        found[text] = found.get(text, False) or complete
        return sorted((t, c) for t, c in found.items() if t.startswith(partial))


def _word_at(p: _Pattern, i: int) -> _Glob:
    glob = p.words[i] if i < len(p.words) else p.variadic
    assert glob is not None
    return glob


def _literal_start(glob: _Glob) -> tuple[str, bool]:
    """The literal text a pattern word starts with, and whether that is the whole word."""
    if glob.any_arg:
        return "", False
    text = glob.text[:-2] if glob.subtree else glob.text
    for i, c in enumerate(text):
        if c in _GLOB_CHARS:
            return text[:i], False
    return text, not glob.subtree


# ----------------------------------------------------------------------- checking


def _check(line: str, rules: CommandRules) -> CommandVerdict:
    size = len(line.encode("utf-8", "surrogatepass"))
    if size > MAX_COMMAND_BYTES:
        raise _Deny(
            TOO_LONG, f"the command is too long ({size} bytes; the limit is {MAX_COMMAND_BYTES})"
        )
    _check_chars(line)
    words = _lex(line)
    if not words or words[0] == "":
        raise _Deny(EMPTY, "empty command")
    program = words[0]
    if "=" in program:
        raise _Deny(
            ENV_ASSIGNMENT,
            f"environment assignments such as {_show(program)!r} are not allowed before a command",
        )
    for word in words:
        if _has_traversal(word):
            raise _Deny(PATH_TRAVERSAL, f"'..' path segments are not allowed: {_show(word)!r}")
    argv = [program, *(_normalise_path(a) for a in words[1:])]
    shown = _show(shlex.join(argv))
    option_hit = False
    for pattern in rules._candidates(program):
        result = pattern.match(argv)
        if result == ALLOWED:
            return CommandVerdict(
                allowed=True,
                rule=ALLOWED,
                message=f"allowed by {pattern.source!r}",
                argv=tuple(argv),
                command=shlex.join(argv),
                pattern=pattern.source,
            )
        if result == OPTION_INJECTION:
            option_hit = True
    if option_hit:
        raise _Deny(
            OPTION_INJECTION,
            f"command not allowed by this grant: {shown} "
            "(an argument starting with '-' is an option this grant does not allow there)",
        )
    raise _Deny(NO_MATCH, f"command not allowed by this grant: {shown}")


def check_command(command_line: str | bytes, rules: CommandRules) -> CommandVerdict:
    """Check one exec command or restricted-shell line against ``rules``. Pure; never raises
    for any string input (only for wrong argument types)."""
    if not isinstance(rules, CommandRules):
        raise TypeError("rules must be a CommandRules")
    if isinstance(command_line, bytes | bytearray):
        try:
            command_line = bytes(command_line).decode("utf-8")
        except UnicodeDecodeError:
            return _deny(BAD_ENCODING, "the command is not valid UTF-8")
    if not isinstance(command_line, str):
        raise TypeError("command_line must be str or bytes")
    if rules.shell:
        if "\x00" in command_line:
            return _deny(NUL_BYTE, "a NUL byte is not allowed in a command")
        try:
            command_line.encode("utf-8")
        except UnicodeEncodeError:
            return _deny(BAD_ENCODING, "the command is not valid UTF-8")
        return CommandVerdict(
            allowed=True,
            rule=ALLOWED,
            message="allowed: this grant allows a full shell",
            argv=(),
            command=command_line,
            pattern=None,
        )
    try:
        return _check(command_line, rules)
    except _Deny as exc:
        return _deny(exc.rule, exc.message)


# ------------------------------------------------------------------------ helpers


def with_safe_env(command: str, env: Mapping[str, str] | None = None) -> str:
    """Prefix ``command`` with POSIX-shell assignments of ``env`` (default :data:`SAFE_ENV`).

    ``with_safe_env("systemctl status app")`` ->
    ``"PAGER=cat ... SYSTEMD_PAGER='' ... systemctl status app"``. Use this when the target's
    sshd does not accept the variables through ``AcceptEnv``. Only for POSIX login shells.
    """
    env = SAFE_ENV if env is None else env
    parts = []
    for key, value in env.items():
        if not _ENV_NAME.match(key):
            raise ValueError(f"invalid environment variable name: {key!r}")
        parts.append(f"{key}={shlex.quote(value)}")
    return " ".join([*parts, command]) if parts else command


def _scp_patterns(direction: str, glob: str, flag_sets: Iterable[tuple[str, ...]]) -> list[str]:
    if not isinstance(glob, str) or not glob or glob.startswith("-"):
        raise ValueError("scp path glob must be a non-empty string not starting with '-'")
    try:
        word = glob if _lex(glob, patterns=True) == [glob] else shlex.quote(glob)
    except _Deny:
        word = shlex.quote(glob)
    out = [shlex.join(["scp", *flags, direction]) + " " + word for flags in flag_sets]
    # Validate (raises ValueError on a bad glob).
    CommandRules(tuple(out))
    return out


def _flag_combos(*optional: tuple[str, bool]) -> list[tuple[str, ...]]:
    combos: list[tuple[str, ...]] = [()]
    for flag, enabled in optional:
        if enabled:
            combos = [c for base in combos for c in (base, (*base, flag))]
    return combos


def scp_download_patterns(
    glob: str, *, preserve: bool = True, recursive: bool = False, verbose: bool = False
) -> list[str]:
    """Patterns for legacy-scp downloads (``scp -O host:PATH .``) of files matching ``glob``.

    OpenSSH sends ``scp [-v] [-r] [-p] -f PATH``. Default: ``scp -f G`` and ``scp -p -f G``.
    ``recursive`` adds ``-r`` forms (note: legacy scp follows symlinks below PATH).
    """
    flags = _flag_combos(("-v", verbose), ("-r", recursive), ("-p", preserve))
    return _scp_patterns("-f", glob, flags)


def scp_upload_patterns(
    glob: str, *, preserve: bool = True, directory: bool = False, verbose: bool = False
) -> list[str]:
    """Patterns for legacy-scp uploads (``scp -O FILE host:PATH``) to targets matching ``glob``.

    OpenSSH sends ``scp [-v] [-p] [-d] -t PATH`` (``-d`` when several files go to a directory).
    """
    flags = _flag_combos(("-v", verbose), ("-p", preserve), ("-d", directory))
    return _scp_patterns("-t", glob, flags)
