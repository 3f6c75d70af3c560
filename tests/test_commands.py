"""The command table and its handlers, with fake members on fakeredis: no socket, no node."""

from __future__ import annotations

import asyncio

import fakeredis
import pytest

import node.model as model
from node import envelope as env
from node.commands import COMMANDS, HELP, spec_of
from node.errors import (
    AuthRequired,
    BadArguments,
    BadNick,
    Muted,
    NoSuchNick,
    NotInRoom,
    NotOperator,
    NotRegistered,
)
from node.model import (
    Ack,
    AskNick,
    BlankLine,
    Bye,
    Command,
    Hello,
    Help,
    History,
    HistoryReply,
    Join,
    Joined,
    Me,
    Msg,
    Notice,
    Part,
    Parted,
    Ping,
    Pong,
    Private,
    Quit,
    Rooms,
    RoomsReply,
    Say,
    Welcome,
    Who,
    WhoReply,
)

from .fakes import world
from .helpers import wait_until


def test_every_command_has_one_entry() -> None:
    assert set(COMMANDS) == set(model.COMMAND_TYPES)


def test_policies_of_the_table() -> None:
    pipelined = {c for c, s in COMMANDS.items() if s.pipelined}
    throttled = {c for c, s in COMMANDS.items() if s.throttled}
    muted = {c for c, s in COMMANDS.items() if s.muted}
    operator = {c.__name__ for c, s in COMMANDS.items() if s.operator}
    early = {c.__name__ for c, s in COMMANDS.items() if s.unregistered}
    assert pipelined == {Say, Me}
    assert throttled == {Say, Me, Msg, model.Nick, Join, Part, model.Register,
                         model.Password}
    assert muted == {Say, Me, Msg}
    assert operator == {"Kick", "Ban", "Unban", "Mute", "Unmute", "Bans"}
    assert early == {"Hello", "BlankLine", "Quit", "Ping", "Help", "Who", "Rooms", "Auth",
                     "Login", "Register", "Password"}
    assert [c for c, s in COMMANDS.items() if s.ends] == [Quit]


def test_an_unknown_command_is_refused() -> None:
    with pytest.raises(BadArguments, match="object is not supported here"):
        spec_of(object())


async def test_hello_registers_joins_the_lobby_and_welcomes() -> None:
    async with world() as w:
        m = w.member()
        await w.do(m, Hello(nick="Alice", ref=1))
        welcome, ack = m.of(Welcome)[0], m.of(Ack)[0]
        assert (welcome.nick, welcome.rooms, welcome.resumed) == ("Alice", ("lobby",), False)
        assert welcome.token == m.user.token and m.user.token.startswith("n1/")
        assert ack.ref == 1
        assert m.sent.index(welcome) < m.sent.index(ack) < m.sent.index(m.of(Joined)[0])
        assert m.user.folded == "alice" and w.roster.named["alice"] is m
        assert await w.relay.who("lobby") == ["Alice"]


async def test_a_text_member_gets_no_token_and_rooms_of_its_choice() -> None:
    async with world() as w:
        m = w.member(mode="text")
        await w.do(m, Hello(nick="bob", rooms=("a", "b", "a")))
        (welcome,) = m.of(Welcome)
        assert welcome.token is None and welcome.rooms == ("a", "b")
        assert m.user.rooms == ["a", "b"] and m.user.room == "b"


async def test_hello_twice_is_refused() -> None:
    async with world() as w:
        m = await w.named("alice")
        with pytest.raises(BadArguments, match="already registered as alice"):
            await w.do(m, Hello(nick="other"))


@pytest.mark.parametrize("nick", ["", "has space", "x" * 40, "#room"])
async def test_hello_with_a_bad_nick_is_refused(nick: str) -> None:
    async with world() as w:
        m = w.member()
        with pytest.raises(BadNick):
            await w.do(m, Hello(nick=nick))
        assert not m.user.registered and not w.roster.named


async def test_hello_with_a_malformed_token_is_bad_args() -> None:
    async with world() as w:
        with pytest.raises(BadArguments):
            await w.do(w.member(), Hello(nick="alice", token="nonsense"))


@pytest.mark.parametrize("cmd", [Say(text="hi"), Me(text="waves"), Join(room="x"),
                                 Part(), Msg(to="bob", text="hi"), History(),
                                 model.Nick(nick="other"), model.Oper(secret="s"),
                                 model.Kick(nick="bob")])
async def test_commands_that_need_a_name_are_refused_before_registration(
        cmd: Command) -> None:
    async with world() as w:
        with pytest.raises(NotRegistered):
            await w.do(w.member(), cmd)


async def test_who_and_rooms_may_look_before_registration() -> None:
    async with world() as w:
        await w.named("alice")
        m = w.member()
        await w.do(m, Who(room="lobby", ref=1))
        await w.do(m, Rooms(ref=2))
        assert m.of(WhoReply)[0] == WhoReply("lobby", ("alice",), 1)
        assert m.of(RoomsReply)[0] == RoomsReply((("lobby", 1),), 2)


async def test_who_without_a_room_before_joining_is_not_in_room() -> None:
    async with world() as w:
        with pytest.raises(NotInRoom, match="in no room"):
            await w.do(w.member(), Who())


async def test_token_mode_lets_nobody_look_before_the_token() -> None:
    async with world(auth="token", auth_token="sesame-token") as w:
        m = w.member(authed=False)
        with pytest.raises(AuthRequired):
            await w.do(m, Rooms())
        await w.do(m, Ping(ref=3))  # ping, help and quit need nothing
        assert m.of(Pong) == [Pong(3)]


async def test_ping_help_blank_line() -> None:
    async with world() as w:
        text, js = w.member(mode="text"), w.member(mode="json")
        await w.do(text, BlankLine())
        await w.do(js, BlankLine())
        assert text.sent == [AskNick()] and js.sent == []
        await w.do(js, Help(ref="h"))
        assert js.sent == [Notice(HELP), Ack("h")]
        await w.do(js, Ping(ref=9))
        assert js.sent[-1] == Pong(9)


async def test_quit_records_the_reason_and_says_goodbye() -> None:
    async with world() as w:
        m = await w.named("alice")
        await w.do(m, Quit(reason="  off \x07to bed "))
        assert m.user.said_quit and m.user.quit_reason == "off to bed"
        assert m.sent == [Bye("goodbye")]


async def test_say_returns_the_message_to_publish_and_checks_the_room() -> None:
    async with world() as w:
        m = await w.named("alice")
        msg = await w.do(m, Say(text="hello  there", ref=1))
        assert msg == env.RoomMsg("lobby", "alice", m.user.sid, "hello there", False)
        action = await w.do(m, Me(text="waves", room="lobby"))
        assert action is not None and action.action
        with pytest.raises(NotInRoom, match="not in elsewhere"):
            await w.do(m, Say(text="hi", room="elsewhere"))
        assert m.sent == []  # the session acknowledges once Redis stored it


async def test_a_muted_member_may_not_say_me_or_msg() -> None:
    async with world() as w:
        m = await w.named("alice")
        m.user.muted_until = asyncio.get_running_loop().time() + 60
        for cmd in (Say(text="hi"), Me(text="waves"), Msg(to="alice", text="hi")):
            with pytest.raises(Muted, match="your message was not sent"):
                await w.do(m, cmd)
        await w.do(m, Join(room="still-allowed"))


async def test_join_acks_after_its_own_join_and_join_again_switches_rooms() -> None:
    async with world() as w:
        m = await w.named("alice")
        await w.do(m, Join(room="Den", ref=5))
        assert m.sent == [Joined("den", "alice"), Ack(5)]
        assert m.user.rooms == ["lobby", "den"] and "den" in w.hub.rooms
        m.take()
        await w.do(m, Join(room="lobby", ref=6))
        assert m.sent == [Notice("current room is now lobby"), Ack(6)]
        assert m.user.rooms == ["den", "lobby"]


async def test_part_leaves_the_current_room_and_unsubscribes() -> None:
    async with world() as w:
        m = await w.named("alice")
        await w.do(m, Part(ref=2))
        assert m.sent == [Parted("lobby", "alice"), Ack(2)]
        assert m.user.rooms == [] and "lobby" not in w.hub.rooms
        assert "lobby" not in w.relay.subscribed_rooms()
        with pytest.raises(NotInRoom):
            await w.do(m, Part())


async def test_history_is_for_members_only_and_bounded() -> None:
    async with world(history_limit=3) as w:
        m = await w.named("alice")
        for i in range(5):
            msg = await w.do(m, Say(text=f"line {i}"))
            assert msg is not None
            await w.relay.say(msg)
        await w.do(m, History(limit=50, ref=1))
        (reply,) = m.of(HistoryReply)
        assert [x.text for x in reply.messages] == ["line 2", "line 3", "line 4"]
        with pytest.raises(NotInRoom):
            await w.do(m, History(room="secret"))
        with pytest.raises(BadArguments):
            await w.do(m, History(after="not-an-id"))


async def test_msg_to_someone_offline_and_online() -> None:
    async with world() as w:
        alice, bob = await w.named("alice"), await w.named("bob", mode="text")
        with pytest.raises(NoSuchNick, match="carol is not online"):
            await w.do(alice, Msg(to="carol", text="hi"))
        await w.do(alice, Msg(to="BOB", text="psst", ref=4))
        (echo,) = alice.of(Private)
        assert (echo.sender, echo.to, echo.text) == ("alice", "bob", "psst")
        assert alice.of(Ack) == [Ack(4, echo.id)]
        await wait_until(lambda: bool(bob.of(Private)))  # through the bus
        await w.do(bob, Msg(to="alice", text="back"))
        assert [p.text for p in bob.of(Private)] == ["psst"]  # text mode: no echo
        await wait_until(lambda: len(alice.of(Private)) == 2)
        assert alice.of(Private)[1].text == "back"


async def test_operator_commands_need_an_operator() -> None:
    async with world() as w:
        m = await w.named("alice")
        for cmd in (model.Kick(nick="bob"), model.Ban(target="bob"), model.Bans(),
                    model.Unban(target="bob"), model.Mute(nick="bob"),
                    model.Unmute(nick="bob")):
            with pytest.raises(NotOperator):
                await w.do(m, cmd)


async def test_two_nodes_share_rooms_through_one_redis() -> None:
    server = fakeredis.FakeServer()
    async with world(server, "n1") as a, world(server, "n2") as b:
        alice = await a.named("alice")
        bob = await b.named("bob")
        await a.do(alice, Who(ref=1))
        assert alice.of(WhoReply)[0].nicks == ("alice", "bob")
        await b.do(bob, Msg(to="alice", text="across"))
        assert bob.of(Ack)
