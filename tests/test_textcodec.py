"""Tests for node.textcodec: typed lines to commands, events to text lines."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

import node.model as m
from node.errors import BadArguments, ProtocolError, UnknownCommand
from node.textcodec import TEXT, USAGE, command_word

# --------------------------------------------------------------------------- text parsing


def parse_text(line: str, registered: bool = True) -> m.Command | None:
    return TEXT.parse(line, registered)


def text_error(line: str, registered: bool = True) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        TEXT.parse(line, registered)
    return info.value


@pytest.mark.parametrize(
    ("line", "command"),
    [
        ("hello there", m.Say(text="hello there")),
        ("  spaced  out  ", m.Say(text="  spaced  out  ")),
        ("//join is a command", m.Say(text="/join is a command")),
        ("//", m.Say(text="/")),
        ("/join dev", m.Join(room="dev")),
        ("/JOIN #Dev", m.Join(room="#Dev")),
        ("/join   dev  ", m.Join(room="dev")),
        ("/part", m.Part()),
        ("/part dev", m.Part(room="dev")),
        ("/msg bob hi  there ", m.Msg(to="bob", text="hi  there ")),
        ("/msg   bob   hi", m.Msg(to="bob", text="hi")),
        ("/Msg bob x", m.Msg(to="bob", text="x")),
        ("/me waves  twice", m.Me(text="waves  twice")),
        ("/nick carol", m.Nick(nick="carol")),
        ("/who", m.Who()),
        ("/who dev", m.Who(room="dev")),
        ("/rooms", m.Rooms()),
        ("/rooms dev", m.Rooms(after="dev")),
        ("/history", m.History()),
        ("/history 20", m.History(limit=20)),
        ("/help", m.Help()),
        ("/ping", m.Ping()),
        ("/quit", m.Quit()),
        ("/quit gone  fishing ", m.Quit(reason="gone  fishing")),
        ("/QUIT", m.Quit()),
        ("/exit", m.Quit()),
        ("/q", m.Quit()),
        ("/close", m.Quit()),
        ("/disconnect", m.Quit()),
        ("/exit later", m.Quit(reason="later")),
        ("q", m.Quit()),
        ("Q", m.Quit()),
        ("  exit  ", m.Quit()),
        ("CLOSE", m.Quit()),
        ("disconnect", m.Quit()),
        ("quit", m.Say(text="quit")),
        ("q please", m.Say(text="q please")),
    ],
)
def test_text_registered_commands(line: str, command: m.Command) -> None:
    assert parse_text(line) == command


@pytest.mark.parametrize("line", ["", "   ", "\t"])
def test_text_blank_is_nothing_once_registered_and_asks_again_before(line: str) -> None:
    assert parse_text(line) is None
    assert parse_text(line, registered=False) == m.BlankLine()


@pytest.mark.parametrize(
    ("line", "command"),
    [
        ("alice", m.Hello(nick="alice")),
        ("  alice  ", m.Hello(nick="alice")),
        ("not a nick", m.Hello(nick="not a nick")),
        ("/join dev", m.Hello(nick="/join dev")),
        ("/quit", m.Quit()),
        ("/quit bye", m.Quit(reason="bye")),
        ("/disconnect", m.Quit()),
        ("exit", m.Quit()),
        (" Q ", m.Quit()),
    ],
)
def test_text_unregistered(line: str, command: m.Command) -> None:
    assert parse_text(line, registered=False) == command


@pytest.mark.parametrize(
    ("line", "usage"),
    [
        ("/join", "usage: /join ROOM"),
        ("/join a b", "usage: /join ROOM"),
        ("/part a b", "usage: /part [ROOM]"),
        ("/msg", "usage: /msg NICK TEXT"),
        ("/msg bob", "usage: /msg NICK TEXT"),
        ("/msg bob   ", "usage: /msg NICK TEXT"),
        ("/me", "usage: /me TEXT"),
        ("/me   ", "usage: /me TEXT"),
        ("/nick", "usage: /nick NEW"),
        ("/nick a b", "usage: /nick NEW"),
        ("/who a b", "usage: /who [ROOM]"),
        ("/history 0", "usage: /history [N] (N a positive integer)"),
        ("/history -3", "usage: /history [N] (N a positive integer)"),
        ("/history ten", "usage: /history [N] (N a positive integer)"),
        ("/history 1.5", "usage: /history [N] (N a positive integer)"),
        ("/history ٣", "usage: /history [N] (N a positive integer)"),
        ("/history 1 2", "usage: /history [N] (N a positive integer)"),
    ],
)
def test_text_bad_arguments(line: str, usage: str) -> None:
    error = text_error(line)
    assert isinstance(error, BadArguments)
    assert error.code == "bad-args"
    assert error.text == usage
    assert error.ref is None


@pytest.mark.parametrize("line", ["/frobnicate", "/", "/ join", "/joinx dev"])
def test_text_unknown_command(line: str) -> None:
    error = text_error(line)
    assert isinstance(error, UnknownCommand)
    assert error.code == "unknown-command"


def test_text_unknown_command_names_it() -> None:
    assert text_error("/frob\x1b[2J x").text == "unknown command /frob[2J; try /help"


def test_history_time_is_utc() -> None:
    message = m.Message(room="r", sender="a", text="t", id="1", ts=1700000000.9)
    assert TEXT.render(m.HistoryReply(room="r", messages=(message,))).splitlines()[1] == (
        b"* [r] 22:13:20 a: t"
    )


def test_history_single_message_wording() -> None:
    message = m.Message(room="lobby", sender="alice", text="hi there", id="1700000000000-0",
                        ts=3661.25)
    reply = m.HistoryReply(room="r", messages=(message,))
    assert TEXT.render(reply).startswith(b"* history r: 1 message\n")


# --------------------------------------------------------------------------- security commands


@pytest.mark.parametrize(("line", "command"), [
    ("/auth  tok en ", m.Auth(secret="tok en")),
    ("/login alice my pass phrase", m.Login(nick="alice", password="my pass phrase")),
    ("/register hunter22", m.Register(password="hunter22")),
    ("/password  new pass phrase ", m.Password(password="new pass phrase")),
    ("/oper s3cret", m.Oper(secret="s3cret")),
    ("/kick bob", m.Kick(nick="bob")),
    ("/kick bob  go  away ", m.Kick(nick="bob", reason="go  away")),
    ("/ban bob", m.Ban(target="bob")),
    ("/ban bob 10m", m.Ban(target="bob", duration=600)),
    ("/ban bob 2h spam links", m.Ban(target="bob", duration=7200, reason="spam links")),
    ("/ban 10.0.0.1 spam", m.Ban(target="10.0.0.1", reason="spam")),
    ("/BAN bob spam 10m", m.Ban(target="bob", reason="spam 10m")),
    ("/unban 10.0.0.1", m.Unban(target="10.0.0.1")),
    ("/mute bob 30s", m.Mute(nick="bob", duration=30)),
    ("/mute bob hush", m.Mute(nick="bob", reason="hush")),
    ("/unmute bob", m.Unmute(nick="bob")),
    ("/bans", m.Bans()),
])
def test_text_security_commands(line: str, command: m.Command) -> None:
    assert parse_text(line) == command


@pytest.mark.parametrize("line", [
    "/auth", "/login alice", "/login", "/register", "/password", "/password  ", "/oper  ",
    "/kick", "/ban",
    "/ban bob 0m", "/ban bob 99999d", "/ban bob 5x", "/unban", "/unban a b", "/mute",
    "/unmute", "/bans all",
])
def test_text_security_bad_args(line: str) -> None:
    assert isinstance(text_error(line), BadArguments)


def test_auth_and_login_work_before_a_name_the_rest_are_nick_attempts() -> None:
    assert parse_text("/auth tok", registered=False) == m.Auth(secret="tok")
    assert parse_text("/login a pw", registered=False) == m.Login(nick="a", password="pw")
    assert parse_text("/oper x", registered=False) == m.Hello(nick="/oper x")


@given(st.text(max_size=60))
def test_ban_and_mute_lines_never_raise_anything_else(rest: str) -> None:
    for word in ("ban", "mute", "kick", "login", "unban"):
        try:
            cmd = parse_text(f"/{word} {rest}")
        except ProtocolError:
            continue
        assert cmd is not None
        if isinstance(cmd, m.Ban | m.Mute):
            assert cmd.duration is None or cmd.duration >= 1


# --------------------------------------------------------------------------- command words


@pytest.mark.parametrize(("line", "word"), [
    ("/join dev", "join"),
    ("/JOIN\tdev", "join"),
    ("/q", "q"),
    ("/", ""),
    ("/ join", ""),
    ("//join", None),
    ("join", None),
    (" /join", None),
])
def test_command_word_is_the_name_the_parser_reads(line: str, word: str | None) -> None:
    assert command_word(line) == word


_QUIT_NAMES = {"quit", "exit", "q", "close", "disconnect"}


@given(st.sampled_from(sorted({*USAGE, *_QUIT_NAMES, "frob", ""})),
       st.sampled_from(["", " ", "\t", "  x", " a b"]), st.booleans())
def test_the_parser_knows_exactly_the_command_words(word: str, rest: str, upper: bool) -> None:
    line = f"/{word.upper() if upper else word}{rest}"
    assert command_word(line) == word
    try:
        parse_text(line)
    except UnknownCommand:
        assert word not in USAGE and word not in _QUIT_NAMES
    except ProtocolError:
        assert word in USAGE
    else:
        assert word in USAGE or word in _QUIT_NAMES
