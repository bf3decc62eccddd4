"""Command allowlist: bypass corpus, pattern semantics, exact re-quoting proven with a real sh."""

from __future__ import annotations

import posixpath
import random
import shlex
import shutil
import stat
import subprocess
import time

import pytest

from breakglass.policy.commands import (
    MAX_COMMAND_BYTES,
    RULE_IDS,
    SAFE_ENV,
    CommandRules,
    CommandVerdict,
    check_command,
    scp_download_patterns,
    scp_upload_patterns,
    with_safe_env,
)

ALLOWLIST = (
    "journalctl -u app -n *",
    "systemctl status app",
    "cat /var/log/app/*",
    "uptime",
    "df -h",
    "echo *",
)
RULES = CommandRules(ALLOWLIST)


def check(line: str | bytes, rules: CommandRules = RULES) -> CommandVerdict:
    return check_command(line, rules)


# --------------------------------------------------------------------- bypass corpus

BYPASSES: list[tuple[str, str]] = [
    # command separators and chaining
    ("uptime;id", "metacharacter"),
    ("uptime ; id", "metacharacter"),
    ("uptime && id", "metacharacter"),
    ("uptime&&id", "metacharacter"),
    ("uptime || id", "metacharacter"),
    ("uptime | sh", "metacharacter"),
    ("uptime|sh", "metacharacter"),
    ("uptime &", "metacharacter"),
    ("uptime & id", "metacharacter"),
    ("uptime\nid", "metacharacter"),
    ("uptime\rid", "metacharacter"),
    ("uptime\r\n", "metacharacter"),
    ("echo 'a\nb'", "metacharacter"),  # newline inside quotes too
    ("upt\\\nime", "metacharacter"),  # backslash-newline continuation
    ("uptime \\\r\n", "metacharacter"),
    # substitutions and expansions
    ("echo $(id)", "metacharacter"),
    ("echo `id`", "metacharacter"),
    ('echo "$(id)"', "metacharacter"),
    ('echo "`id`"', "metacharacter"),
    ('echo "${PATH}"', "metacharacter"),
    ('echo "\\$(id)"', "metacharacter"),
    ("cat${IFS}/etc/passwd", "metacharacter"),
    ("echo ${IFS}", "metacharacter"),
    ("echo $HOME", "metacharacter"),
    ("echo $'\\x41'", "metacharacter"),
    ("echo {a,b}", "metacharacter"),
    ("echo ~", "metacharacter"),
    ("cat ~root/.ssh/id_rsa", "metacharacter"),
    ("echo a~b", "metacharacter"),
    ("uptime # comment", "metacharacter"),
    ("! uptime", "metacharacter"),
    ("(uptime)", "metacharacter"),
    ("{ uptime; }", "metacharacter"),
    # redirections
    ("uptime > /tmp/x", "metacharacter"),
    ("uptime >/tmp/x", "metacharacter"),
    ("uptime >> /tmp/x", "metacharacter"),
    ("uptime 2>&1", "metacharacter"),
    ("cat < /etc/shadow", "metacharacter"),
    ("cat <<< x", "metacharacter"),
    ("cat <<EOF", "metacharacter"),
    ("cat <(id)", "metacharacter"),
    ("echo >(id)", "metacharacter"),
    # globs typed unquoted (would need expansion we do not perform)
    ("cat /var/log/app/*", "metacharacter"),
    ("cat /var/log/app/?.log", "metacharacter"),
    ("cat /var/log/app/[a].log", "metacharacter"),
    ("echo *", "metacharacter"),
    # NUL, control and non-ASCII characters
    ("uptime\x00", "nul-byte"),
    ("cat /var/log/app/x.log\x00/etc/shadow", "nul-byte"),
    ("\x00", "nul-byte"),
    ("uptime\x1b[2J", "control-char"),
    ("uptime\x07", "control-char"),
    ("uptime\x7f", "control-char"),
    ("uptime\x85", "control-char"),  # C1 NEL
    ("uptime\x0b", "control-char"),
    ("uptime\x0c", "control-char"),
    ("echo 'a\tb'", "control-char"),  # tab inside quotes
    ('echo "a\tb"', "control-char"),
    ("echo a\\\tb", "control-char"),  # escaped tab
    ("upt\u0456me", "non-ascii"),  # Cyrillic i look-alike
    ("\u0443ptime", "non-ascii"),  # Cyrillic u
    ("uptime\u200b", "non-ascii"),  # zero-width space
    ("echo \u202eemitpu", "non-ascii"),  # bidi override
    ("uptime\u2028id", "non-ascii"),  # line separator
    ("echo\u00a0hi", "non-ascii"),  # no-break space is not a separator
    ("df \uff0dh", "non-ascii"),  # fullwidth hyphen
    # path traversal (plain, via //, trailing /.., quoted, in option values)
    ("cat /var/log/app/../../etc/shadow", "path-traversal"),
    ("cat /var/log/app//../../../etc/shadow", "path-traversal"),
    ("cat /var/log/app/x/..", "path-traversal"),
    ("cat /var/log/app/..", "path-traversal"),
    ("cat '/var/log/app/../../etc/shadow'", "path-traversal"),
    ('cat "/var/log/app/.."', "path-traversal"),
    ("cat /var/log/app/.\\./.\\./etc/shadow", "path-traversal"),
    ("cat ..", "path-traversal"),
    ("echo --output=../x", "path-traversal"),
    ("../../bin/sh", "path-traversal"),
    # environment assignment prefixes
    ("VAR=x uptime", "env-assignment"),
    ("PAGER=sh systemctl status app", "env-assignment"),
    ("LD_PRELOAD=/tmp/x.so uptime", "env-assignment"),
    ("'A=1' uptime", "env-assignment"),
    ("x=1", "env-assignment"),
    # option injection into operand slots
    ("journalctl -u app -n --output=/tmp/x", "option-injection"),
    ("journalctl -u app -n -f", "option-injection"),
    ("journalctl -u app -n '-f'", "option-injection"),  # quoting does not make it an operand
    ("journalctl -u app -n --", "option-injection"),
    ("echo -e", "option-injection"),
    ("echo -", "option-injection"),
    ("cat -n", "option-injection"),
    ("cat --help", "option-injection"),
    # no pattern allows these
    ("env X=1 uptime", "no-match"),
    ("sudo uptime", "no-match"),
    ("exec uptime", "no-match"),
    ("command uptime", "no-match"),
    ("/usr/bin/uptime", "no-match"),
    ("./uptime", "no-match"),
    ("UPTIME", "no-match"),
    ("uptime ''", "no-match"),
    ("'uptime '", "no-match"),
    ("uptime -p", "no-match"),
    ("df -h -a", "no-match"),
    ("df -ha", "no-match"),
    ("df -h /", "no-match"),
    ("systemctl status app --no-pager", "no-match"),
    ("systemctl status sshd", "no-match"),
    ("systemctl start app", "no-match"),
    ("journalctl -u app -n 10 -u other", "no-match"),
    ("journalctl -u other -n 10", "no-match"),
    ("journalctl -n 10 -u app", "no-match"),
    ("cat /var/log/app/x.log /etc/shadow", "no-match"),
    ("cat /etc/shadow", "no-match"),
    ("cat /var/log/app/sub/x.log", "no-match"),  # '*' does not cross '/'
    ("cat /var/log/app/", "no-match"),
    ("cat /var/log/app/.", "no-match"),
    ("cat /var/log/app", "no-match"),
    ("cat /var/log/apple", "no-match"),
    ("cat -- /var/log/app/x.log", "no-match"),
    ("cat var/log/app/x.log", "no-match"),
    ("echo a/b", "no-match"),  # '*' never matches '/'
    ("echo /etc/shadow", "no-match"),
    ("echo a b", "no-match"),
    ("-uptime", "no-match"),
    ("sh -c uptime", "no-match"),
    ("bash", "no-match"),
    ("less /var/log/app/x.log", "no-match"),
    ("ssh -o ProxyCommand=sh uptime", "no-match"),
    # quoting errors
    ("'uptime", "bad-quoting"),
    ('"uptime', "bad-quoting"),
    ("echo 'a", "bad-quoting"),
    ('echo "a\\"', "bad-quoting"),
    ("uptime\\", "bad-quoting"),
    # empty
    ("", "empty"),
    ("   ", "empty"),
    ("\t", "empty"),
    ("''", "empty"),
    ('""', "empty"),
    # length
    ("echo " + "a" * MAX_COMMAND_BYTES, "too-long"),
    ("uptime" + " " * MAX_COMMAND_BYTES, "too-long"),
]


def test_corpus_is_big_enough() -> None:
    assert len(BYPASSES) >= 50


@pytest.mark.parametrize(("line", "rule"), BYPASSES, ids=[repr(b[0])[:60] for b in BYPASSES])
def test_bypass_denied(line: str, rule: str) -> None:
    v = check(line)
    assert not v.allowed, v
    assert not v
    assert v.rule == rule, v
    assert v.rule in RULE_IDS
    assert v.argv == () and v.command == "" and v.pattern is None
    assert v.message
    # Messages are safe to print on the engineer's terminal.
    assert all(0x20 <= ord(c) <= 0x7E for c in v.message), v.message


def test_messages_name_the_problem() -> None:
    assert check("rm -rf /").message == "command not allowed by this grant: rm -rf /"
    assert "';'" in check("uptime; id").message
    assert "'*'" in check("cat /var/log/app/*").message
    assert "U+0456" in check("upt\u0456me").message
    assert "4096" in check("x" * 5000).message
    assert "option" in check("journalctl -u app -n -f").message


def test_long_message_is_truncated() -> None:
    v = check("rm " + "a" * 3000)
    assert v.rule == "no-match" and len(v.message) < 300


def test_pager_escape_is_neutralised_by_safe_env() -> None:
    # systemctl status app is allowed; what keeps it from opening `less` (and `!sh`) is that
    # the gateway runs it without a PTY and with SAFE_ENV.
    assert check("systemctl status app").allowed
    assert SAFE_ENV["PAGER"] == "cat"
    assert SAFE_ENV["GIT_PAGER"] == "cat"
    assert SAFE_ENV["MANPAGER"] == "cat"
    assert SAFE_ENV["SYSTEMD_PAGER"] in ("", "cat")
    assert SAFE_ENV["LESSSECURE"] == "1"
    assert SAFE_ENV["LESSOPEN"] == ""
    assert SAFE_ENV["EDITOR"] == SAFE_ENV["VISUAL"] == "/bin/false"
    assert SAFE_ENV["SYSTEMD_EDITOR"] == "/bin/false"


# ------------------------------------------------------------------- allowed commands

ALLOWED: list[tuple[str, tuple[str, ...], str]] = [
    ("uptime", ("uptime",), "uptime"),
    ("  uptime  ", ("uptime",), "uptime"),
    ("\tuptime\t", ("uptime",), "uptime"),
    ("'upt''ime'", ("uptime",), "uptime"),  # a shell would run `uptime` too
    ('"upt"ime', ("uptime",), "uptime"),
    ("u\\ptime", ("uptime",), "uptime"),
    ("df -h", ("df", "-h"), "df -h"),
    ("df\t-h", ("df", "-h"), "df -h"),
    ("df   -h", ("df", "-h"), "df -h"),
    ("'df' '-h'", ("df", "-h"), "df -h"),
    ("systemctl status app", ("systemctl", "status", "app"), "systemctl status app"),
    ("journalctl -u app -n 10", ("journalctl", "-u", "app", "-n", "10"), "journalctl -u app -n 10"),
    (
        'journalctl -u "app" -n "10"',
        ("journalctl", "-u", "app", "-n", "10"),
        "journalctl -u app -n 10",
    ),
    ("journalctl -u app -n ''", ("journalctl", "-u", "app", "-n", ""), "journalctl -u app -n ''"),
    (
        "journalctl -u app -n '10; id'",
        ("journalctl", "-u", "app", "-n", "10; id"),
        "journalctl -u app -n '10; id'",
    ),
    ("cat /var/log/app/x.log", ("cat", "/var/log/app/x.log"), "cat /var/log/app/x.log"),
    ("cat /var/log/app//x.log", ("cat", "/var/log/app/x.log"), "cat /var/log/app/x.log"),
    ("cat /var/log/app/./x.log", ("cat", "/var/log/app/x.log"), "cat /var/log/app/x.log"),
    ("cat //var/log/app/x.log", ("cat", "/var/log/app/x.log"), "cat /var/log/app/x.log"),
    ("cat /var//log/./app/x.log/", ("cat", "/var/log/app/x.log"), "cat /var/log/app/x.log"),
    ("cat /var/log/app/.htaccess", ("cat", "/var/log/app/.htaccess"), "cat /var/log/app/.htaccess"),
    ("cat /var/log/app/...", ("cat", "/var/log/app/..."), "cat /var/log/app/..."),
    ("cat '/var/log/app/*'", ("cat", "/var/log/app/*"), "cat '/var/log/app/*'"),  # literal '*'
    ("cat /var/log/app/\\*", ("cat", "/var/log/app/*"), "cat '/var/log/app/*'"),
    ("cat '/var/log/app/a b'", ("cat", "/var/log/app/a b"), "cat '/var/log/app/a b'"),
    ("echo hi", ("echo", "hi"), "echo hi"),
    ("echo 'a;b'", ("echo", "a;b"), "echo 'a;b'"),
    ("echo hi\\;id", ("echo", "hi;id"), "echo 'hi;id'"),
    ("echo '$(id)'", ("echo", "$(id)"), "echo '$(id)'"),
    ("echo '`id`'", ("echo", "`id`"), "echo '`id`'"),
    ('echo "it\'s"', ("echo", "it's"), "echo 'it'\"'\"'s'"),
    ("echo 'a|b>c<d&e'", ("echo", "a|b>c<d&e"), "echo 'a|b>c<d&e'"),
    ("echo '~root'", ("echo", "~root"), "echo '~root'"),
    ("echo ''", ("echo", ""), "echo ''"),
    ("echo 'x=1'", ("echo", "x=1"), "echo x=1"),
]


@pytest.mark.parametrize(("line", "argv", "command"), ALLOWED, ids=[a[0] for a in ALLOWED])
def test_allowed(line: str, argv: tuple[str, ...], command: str) -> None:
    v = check(line)
    assert v.allowed, v
    assert v
    assert v.rule == "allowed"
    assert v.argv == argv
    assert v.command == command
    assert v.command == shlex.join(v.argv)
    assert v.pattern in ALLOWLIST
    # Idempotent: the command we send is itself allowed, unchanged.
    again = check(v.command)
    assert again.allowed and again.argv == v.argv and again.command == v.command


def test_pattern_reported() -> None:
    assert check("journalctl -u app -n 5").pattern == "journalctl -u app -n *"
    assert check("df -h").pattern == "df -h"


def test_bytes_input() -> None:
    assert check(b"uptime").allowed
    assert check(b"upt\xffime").rule == "bad-encoding"
    assert check("upt\u0456me".encode()).rule == "non-ascii"


def test_lone_surrogate_is_denied_not_crashing() -> None:
    assert check("uptime\udc80").rule == "non-ascii"


def test_length_limit_is_bytes() -> None:
    assert check("echo " + "a" * (MAX_COMMAND_BYTES - 5)).allowed
    assert check("echo " + "a" * (MAX_COMMAND_BYTES - 4)).rule == "too-long"


# ------------------------------------------------- re-quoting proven with a real shell

SHELLS = [s for s in ("sh", "dash", "bash") if shutil.which(s)]


@pytest.fixture(scope="module")
def stub_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    d = tmp_path_factory.mktemp("stubbin")
    for name, body in {
        "argdump": "#!/bin/sh\nprintf '%s\\0' \"$0\" \"$@\"\nprintf '\\001\\n'\n",
        "envdump": "#!/bin/sh\nfor v in PAGER SYSTEMD_PAGER GIT_PAGER LESSSECURE EDITOR; do\n"
        '  eval "printf \'%s=%s\\0\' $v \\"\\${$v-UNSET}\\""\ndone\n',
    }.items():
        p = d / name
        p.write_text(body)
        p.chmod(p.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return f"{d}:/usr/bin:/bin"


def run_sh(shell: str, script: str, path: str) -> bytes:
    env = {"PATH": path, "LC_ALL": "C"}
    return subprocess.run(
        [shell, "-c", script], env=env, capture_output=True, check=True, timeout=10
    ).stdout


def dumped(out: bytes) -> list[list[str]]:
    """Parse argdump output: one record per call, argv without $0."""
    records = out.split(b"\x01\n")
    assert records[-1] == b""
    return [rec.decode().split("\0")[1:-1] for rec in records[:-1]]


TRICKY_ARGS = [
    "plain",
    "",
    " ",
    "a b",
    "it's",
    "'",
    "''",
    '"',
    "\\",
    "\\'",
    "$(id)",
    "`id`",
    "${IFS}",
    "$HOME",
    ";id",
    "a|b",
    "&&",
    "*",
    "?",
    "[a]",
    "{a,b}",
    "~root",
    "#c",
    "!",
    "x=1",
    "%s%n",
    "<(id)",
    "a'b\"c",
    "'\"'\"'",
]

ROUNDTRIP_RULES = CommandRules(("argdump ...", "argdump /var/log/app/**"))


@pytest.mark.skipif(not SHELLS, reason="no POSIX shell")
@pytest.mark.parametrize("shell", SHELLS)
def test_requoting_is_exact_in_real_shell(shell: str, stub_path: str) -> None:
    cases = [[a] for a in TRICKY_ARGS] + [TRICKY_ARGS, ["/var/log/app//x y/./z"]]
    commands, expected = [], []
    for args in cases:
        v = check_command(shlex.join(["argdump", *args]), ROUNDTRIP_RULES)
        assert v.allowed, (args, v)
        commands.append(v.command)
        expected.append(list(v.argv[1:]))
    got = dumped(run_sh(shell, "\n".join(commands), stub_path))
    assert got == expected
    assert expected[-1] == ["/var/log/app/x y/z"]


@pytest.mark.skipif(not SHELLS, reason="no POSIX shell")
def test_what_the_user_typed_is_what_runs(stub_path: str) -> None:
    """Differential: lines the checker accepts mean the same argv to a real sh."""
    rng = random.Random(1234)
    pieces = [
        "a",
        "b",
        "'x y'",
        '"q r"',
        "\\ ",
        "\\'",
        "'$(id)'",
        '"\\""',
        "''",
        "x=1",
        ".",
        "/",
        "'*'",
        '"a\\b"',
        '"\\\\"',
        "\\\\",
        "\\a",
        "'\\'",
        '"it\'s"',
        '\\"',
        '"!"',
        "%",
        ":",
        "@",
    ]
    lines = []
    for _ in range(300):
        words = [
            "".join(rng.choice(pieces) for _ in range(rng.randint(1, 4)))
            for _ in range(rng.randint(0, 4))
        ]
        line = " ".join(["argdump", *words])
        if check_command(line, ROUNDTRIP_RULES).allowed:
            lines.append(line)
    assert len(lines) > 100
    verdicts = [check_command(line, ROUNDTRIP_RULES) for line in lines]
    typed = dumped(run_sh("sh", "\n".join(lines), stub_path))
    sent = dumped(run_sh("sh", "\n".join(v.command for v in verdicts), stub_path))
    for line, v, t, s in zip(lines, verdicts, typed, sent, strict=True):
        assert [ref_normalise(a) for a in t] == list(v.argv[1:]), line
        assert s == list(v.argv[1:]), line


def test_leading_dot_slash_is_kept() -> None:
    # posixpath.normpath would turn "./-e" into the option "-e" and "./h:x" into scp's "h:x".
    v = check_command("argdump ./-e .//-e ./././h:x ./ .", ROUNDTRIP_RULES)
    assert v.argv == ("argdump", "./-e", "./-e", "./h:x", ".", ".")
    assert v.command == "argdump ./-e ./-e ./h:x . ."


@pytest.mark.skipif(not SHELLS, reason="no POSIX shell")
def test_with_safe_env_prefix_reaches_the_program(stub_path: str) -> None:
    v = check_command("envdump", CommandRules(("envdump",)))
    out = run_sh("sh", with_safe_env(v.command), stub_path).decode().split("\0")[:-1]
    assert out == [
        "PAGER=cat",
        "SYSTEMD_PAGER=",
        "GIT_PAGER=cat",
        "LESSSECURE=1",
        "EDITOR=/bin/false",
    ]
    with pytest.raises(ValueError):
        with_safe_env("uptime", {"BAD NAME": "x"})
    assert with_safe_env("uptime", {}) == "uptime"


# ------------------------------------------------------------------ pattern semantics


def allowed(patterns: tuple[str, ...], line: str) -> bool:
    return check_command(line, CommandRules(patterns)).allowed


def test_star_stays_in_one_segment() -> None:
    p = ("cat /var/log/app/*.log",)
    assert allowed(p, "cat /var/log/app/x.log")
    assert allowed(p, "cat /var/log/app/.log")
    assert not allowed(p, "cat /var/log/app/sub/x.log")
    assert not allowed(p, "cat /var/log/app/x.log.gz")
    assert allowed(("systemctl status *",), "systemctl status nginx.service")
    assert not allowed(("systemctl status *",), "systemctl status /etc/shadow")


def test_question_mark_and_classes() -> None:
    p = ("cat /var/log/app/x.[0-9]", "cat /var/log/app/y.[!a]", "cat /var/log/app/z?")
    assert allowed(p, "cat /var/log/app/x.3")
    assert not allowed(p, "cat /var/log/app/x.a")
    assert allowed(p, "cat /var/log/app/y.b")
    assert not allowed(p, "cat /var/log/app/y.a")
    assert allowed(p, "cat /var/log/app/zz")
    assert not allowed(p, "cat /var/log/app/z")
    assert allowed(("echo [*]",), "echo '*'")
    assert not allowed(("echo [*]",), "echo x")


def test_double_star_subtree() -> None:
    p = ("ls /srv/app/**",)
    assert allowed(p, "ls /srv/app/a")
    assert allowed(p, "ls /srv/app/a/b/c.txt")
    assert not allowed(p, "ls /srv/app")
    assert not allowed(p, "ls /srv/app/")
    assert not allowed(p, "ls /srv/apple/x")
    assert allowed(p, "ls /srv/app/-x")  # the argument starts with '/', not '-'
    assert check_command("ls /srv/app/../x", CommandRules(p)).rule == "path-traversal"
    assert not allowed(("ls /**",), "ls /")
    assert allowed(("ls /**",), "ls /etc")
    assert allowed(("echo **",), "echo /etc/shadow")
    assert check_command("echo -n", CommandRules(("echo **",))).rule == "option-injection"


def test_absolute_and_relative_words_do_not_mix() -> None:
    assert not allowed(("cat */x",), "cat /x")
    assert allowed(("cat */x",), "cat a/x")
    assert not allowed(("cat *",), "cat /x")
    assert not allowed(("cat /var/*",), "cat var/x")


def test_program_is_literal() -> None:
    p = ("systemctl status app", "/usr/bin/id", "./run.sh")
    assert not allowed(p, "/usr/bin/systemctl status app")
    assert not allowed(p, "/bin/systemctl status app")
    assert allowed(p, "/usr/bin/id")
    assert not allowed(p, "id")
    assert not allowed(p, "/usr//bin/id")
    assert allowed(p, "./run.sh")
    assert not allowed(p, "run.sh")


def test_options_only_where_the_pattern_has_them() -> None:
    p = ("journalctl -u app -n * -f", "ls -l*", "tail -n * /var/log/app/*")
    assert allowed(p, "journalctl -u app -n 5 -f")
    assert check_command("journalctl -u app -n -f -f", CommandRules(p)).rule == "option-injection"
    assert allowed(p, "ls -la")
    assert not allowed(p, "ls -a")
    assert allowed(p, "tail -n +5 /var/log/app/x")  # '+' is not treated as an option marker
    r = CommandRules(("ssh * uptime",))
    assert check_command("ssh db1 uptime", r).allowed
    assert check_command("ssh -oProxyCommand=sh uptime", r).rule == "option-injection"
    assert check_command("ssh '-oProxyCommand=sh -c id' uptime", r).rule == "option-injection"


def test_variadic() -> None:
    p = ("echo ...", "cat /var/log/app/*...")
    assert allowed(p, "echo")
    assert allowed(p, "echo a /etc/x 'b c'")
    assert check_command("echo a -n", CommandRules(p)).rule == "option-injection"
    assert allowed(p, "cat /var/log/app/a /var/log/app/b")
    assert not allowed(p, "cat")
    assert not allowed(p, "cat /var/log/app/a /etc/shadow")
    assert check_command("cat /var/log/app/a -", CommandRules(p)).rule == "option-injection"
    assert allowed(("echo [.]..",), "echo ...")
    assert not allowed(("echo [.]..",), "echo a")


def test_first_matching_pattern_wins_and_option_only_reported_when_it_is_the_reason() -> None:
    r = CommandRules(("tail -n * /var/log/app/*", "tail -f /var/log/app/*"))
    assert check_command("tail -f /var/log/app/x", r).pattern == "tail -f /var/log/app/*"
    assert check_command("tail -n -5 /etc/x", r).rule == "no-match"
    assert check_command("tail -n -5 /var/log/app/x", r).rule == "option-injection"


BAD_PATTERNS = [
    "",
    "   ",
    "'uptime",
    'echo "a',
    "uptime; id",
    "uptime | sh",
    "echo $HOME",
    'echo "$(id)"',
    "echo {a,b}",
    "cat ~/x",
    "uptime > /tmp/x",
    "upt*",
    "*",
    "[u]ptime",
    "VAR=1 uptime",
    "...",
    "cat /var/log/../x",
    "cat /var/**/x",
    "cat /var/a**",
    "cat /var/[a",
    "cat /var/[a/b]",
    "echo ... x",
    "upt\u0456me",
    "uptime\x00",
    "uptime\n",
    "echo 'a\tb'",
    "x" * 5000,
]


@pytest.mark.parametrize("pattern", BAD_PATTERNS, ids=[repr(p)[:40] for p in BAD_PATTERNS])
def test_bad_pattern_raises(pattern: str) -> None:
    with pytest.raises(ValueError) as exc:
        CommandRules((pattern,))
    assert "pattern" in str(exc.value)


def test_bad_pattern_message_names_it() -> None:
    with pytest.raises(ValueError, match=r"#2 'uptime; id'.*';'"):
        CommandRules(("df -h", "uptime; id"))
    with pytest.raises(ValueError, match="unbalanced"):
        CommandRules(("'uptime",))


def test_rules_construction() -> None:
    r = CommandRules(["uptime"])  # type: ignore[arg-type]
    assert r.patterns == ("uptime",)
    assert hash(r) == hash(CommandRules(("uptime",)))
    with pytest.raises(ValueError):
        CommandRules("uptime")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        CommandRules((1,))  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        CommandRules(("uptime",), shell="false")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="too many"):
        CommandRules(tuple(f"p{i}" for i in range(1001)))
    with pytest.raises(TypeError):
        check_command("uptime", ("uptime",))  # type: ignore[arg-type]
    assert check_command("uptime", CommandRules()).rule == "no-match"


def test_from_claim() -> None:
    r = CommandRules.from_claim({"commands": ["uptime", "df -h"], "shell": False, "sftp": True})
    assert r.patterns == ("uptime", "df -h") and r.shell is False
    assert CommandRules.from_claim({"shell": True}).shell is True
    assert CommandRules.from_claim({}).patterns == ()
    assert CommandRules.from_claim(None).patterns == ()
    assert CommandRules.from_claim({"commands": None}).patterns == ()
    for bad in (
        {"commands": "uptime"},
        {"commands": [1]},
        {"commands": ["uptime; id"]},
        {"commands": ["'x"]},
        {"shell": "yes"},
        {"shell": 1},
        ["uptime"],
    ):
        with pytest.raises(ValueError):
            CommandRules.from_claim(bad)  # type: ignore[arg-type]


def test_shell_mode_allows_as_typed() -> None:
    r = CommandRules.from_claim({"commands": [], "shell": True})
    for line in ("uptime; id | sh", "cat /var/log/*", "echo $(id) > /tmp/x", "a\nb", ""):
        v = check_command(line, r)
        assert v.allowed and v.command == line and v.argv == () and v.pattern is None
    assert check_command("uptime\x00id", r).rule == "nul-byte"
    assert check_command(b"\xff", r).rule == "bad-encoding"


# ---------------------------------------------------------------------------- warnings


def test_warnings() -> None:
    risky = CommandRules(
        (
            "bash -c *",
            "env ...",
            "sudo systemctl status app",
            "python3 /opt/x.py",
            "awk *",
            "find /srv -name * -delete",
            "less /var/log/app/*",
            "vim /etc/hosts",
            "xargs",
            "nohup x",
            "ls --*",
            "echo **",
            "cat /**",
            "echo ...",
            "./local.sh",
            "scp -t /tmp/*",
            "/usr/bin/bash",
        )
    )
    w = "\n".join(risky.warnings())
    for needle in (
        "'bash' is a shell",
        "'env' runs another program",
        "'sudo' runs another program",
        "'python3' is an interpreter",
        "'awk' is an interpreter",
        "find -delete",
        "'less' is interactive",
        "'vim' is interactive",
        "'xargs'",
        "'nohup'",
        "'--*' allows arbitrary options",
        "'**' accepts any argument",
        "'/**' accepts any absolute path",
        "trailing '...'",
        "relative program path",
        "writes files on the target",
    ):
        assert needle in w, needle
    assert "/usr/bin/bash' is" not in w and "'bash' is a shell" in w
    assert RULES.warnings() == []
    assert CommandRules(tuple(scp_download_patterns("/var/backups/*"))).warnings() == []
    assert CommandRules((), shell=True).warnings()


# ------------------------------------------------------------------------------- scp


def test_scp_helpers() -> None:
    assert scp_download_patterns("/var/backups/*") == [
        "scp -f /var/backups/*",
        "scp -p -f /var/backups/*",
    ]
    assert scp_download_patterns("/var/backups/*", recursive=True, preserve=False) == [
        "scp -f /var/backups/*",
        "scp -r -f /var/backups/*",
    ]
    assert len(scp_download_patterns("/x/*", recursive=True, verbose=True)) == 8
    assert scp_upload_patterns("/tmp/up/*", directory=True) == [
        "scp -t /tmp/up/*",
        "scp -d -t /tmp/up/*",
        "scp -p -t /tmp/up/*",
        "scp -p -d -t /tmp/up/*",
    ]
    assert scp_download_patterns("/srv/a b/*") == ["scp -f '/srv/a b/*'", "scp -p -f '/srv/a b/*'"]
    for bad in ("", "-x", "/var/[x", "/var/../x"):
        with pytest.raises(ValueError):
            scp_download_patterns(bad)


@pytest.mark.skipif(not shutil.which("scp"), reason="OpenSSH scp not installed")
def test_real_scp_legacy_commands_match_helper_patterns(tmp_path) -> None:  # noqa: ANN001
    """Run the installed OpenSSH scp in legacy mode with a fake ssh; check what it sends."""
    log = tmp_path / "log"
    fake = tmp_path / "fakessh"
    fake.write_text(
        f'#!/bin/sh\nfor a in "$@"; do last="$a"; done\nprintf "%s\\n" "$last" >> {log}\nexit 1\n'
    )
    fake.chmod(0o755)
    local = tmp_path / "f.txt"
    local.write_text("x")
    runs = [
        ["-O", "host:/var/backups/db.tar", str(tmp_path / "o")],
        ["-O", "-p", "host:/var/backups/db.tar", str(tmp_path / "o")],
        ["-O", "-r", "host:/var/backups/db.tar", str(tmp_path / "o")],
        ["-O", "host:-weird", str(tmp_path / "o")],
        ["-O", str(local), "host:/tmp/up/f.txt"],
        ["-O", "-p", str(local), str(local), "host:/tmp/up/"],
    ]
    for args in runs:
        subprocess.run(
            ["scp", "-S", str(fake), *args], capture_output=True, timeout=10, check=False
        )
    sent = log.read_text().splitlines()
    assert sent == [
        "scp -f /var/backups/db.tar",
        "scp -p -f /var/backups/db.tar",
        "scp -r -f /var/backups/db.tar",
        "scp -f -- -weird",
        "scp -t /tmp/up/f.txt",
        "scp -p -d -t /tmp/up/",
    ]
    r = CommandRules(
        (
            *scp_download_patterns("/var/backups/*"),
            *scp_upload_patterns("/tmp/up/**", directory=True),
            "scp -t /tmp/up",
            "scp -p -d -t /tmp/up",
        )
    )
    verdicts = [check_command(c, r) for c in sent]
    assert [v.allowed for v in verdicts] == [True, True, False, False, True, True]
    assert verdicts[2].rule == "no-match"  # -r not allowed by default
    assert verdicts[3].rule == "no-match"  # "--" is never dropped
    assert verdicts[5].command == "scp -p -d -t /tmp/up"


# --------------------------------------------------------------------- property tests


def ref_normalise(arg: str) -> str:
    """Independent reference for argument normalisation (no '..' can be present)."""
    if "/" not in arg:
        return arg
    n = posixpath.normpath(arg)
    if n.startswith("//"):
        n = n[1:]
    if arg.startswith("./") and n != ".":
        n = "./" + n
    return n


PROP_RULES = CommandRules(("argdump ...", "echo *", "cat /var/log/app/**", "uptime"))
ALPHABET = [chr(c) for c in range(0x20, 0x7F)]
HOT = list("/.-'\"\\ $`;|&*?[]{}~#!=<>()") + ["..", "//", "./", "-"]


def random_word(rng: random.Random) -> str:
    out = []
    for _ in range(rng.randint(0, 10)):
        out.append(rng.choice(HOT) if rng.random() < 0.4 else rng.choice(ALPHABET))
    return "".join(out)


def test_property_joined_argv_roundtrips() -> None:
    rng = random.Random(20240601)
    n_allowed = 0
    start = time.monotonic()
    for _ in range(4000):
        prog = rng.choice(["argdump", "argdump", "echo", "cat", "uptime", random_word(rng)])
        argv = [prog, *(random_word(rng) for _ in range(rng.randint(0, 5)))]
        if rng.random() < 0.2:
            argv.append("/var/log/app/" + random_word(rng))
        line = shlex.join(argv)
        v = check_command(line, PROP_RULES)
        assert v.rule in RULE_IDS
        if v.allowed:
            n_allowed += 1
            assert list(v.argv) == [argv[0], *(ref_normalise(a) for a in argv[1:])], line
            assert v.command == shlex.join(v.argv)
            assert shlex.split(v.command) == list(v.argv)
            again = check_command(v.command, PROP_RULES)
            assert again.allowed and again.argv == v.argv
        else:
            assert v.argv == () and v.command == ""
        # Completeness: anything without a reason to refuse is allowed by "argdump ...".
        if (
            prog == "argdump"
            and not any(a.startswith("-") for a in argv[1:])
            and not any(
                ".."
                in a.replace("/", " ").replace("=", " ").replace(":", " ").replace(",", " ").split()
                for a in argv
            )
        ):
            assert v.allowed, (line, v)
    assert n_allowed > 1000
    assert time.monotonic() - start < 3


def test_property_random_lines_never_crash() -> None:
    rng = random.Random(7)
    chars = ALPHABET + HOT + ["\t", "\n", "\r", "\x00", "\x1b", "\u0456", "\u202e"]
    for _ in range(4000):
        prefix = rng.choice(["argdump ", "echo ", "cat /var/log/app/", "", "uptime"])
        line = prefix + "".join(rng.choice(chars) for _ in range(rng.randint(0, 30)))
        v = check_command(line, PROP_RULES)
        assert v.rule in RULE_IDS
        if v.allowed:
            assert shlex.split(v.command) == list(v.argv)
            assert all(0x20 <= ord(c) <= 0x7E for a in v.argv for c in a)
            assert not any(a.startswith("-") for a in v.argv[1:])
        else:
            assert v.command == ""


def test_pathological_globs_are_fast() -> None:
    r = CommandRules(("echo " + "*a" * 30 + "b", "echo " + "?*" * 40 + "c"))
    start = time.monotonic()
    for arg in ("a" * 4000, "a" * 3990 + "b", "x" * 4000):
        check_command("echo " + arg, r)
    assert time.monotonic() - start < 1
    assert check_command("echo " + "a" * 4000 + "b", r).rule in ("allowed", "too-long")


def test_many_words_are_fast() -> None:
    start = time.monotonic()
    v = check_command("argdump " + "a " * 2000, PROP_RULES)
    assert v.allowed and len(v.argv) == 2001
    assert time.monotonic() - start < 1
