"""The command table and its handlers, with fake members on fakeredis: no socket, no node."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import fakeredis
import pytest

import node.model as model
from node import envelope as env
from node.commands import COMMANDS, HELP, hello_cost, spec_of
from node.errors import (
    AuthRequired,
    BadArguments,
    BadNick,
    BadRoom,
    Muted,
    NoSuchNick,
    NotInRoom,
    NotOperator,
    NotRegistered,
    RoomCreateThrottled,
    RoomsFull,
    TooManyRooms,
)
from node.model import (
    Ack,
    AskNick,
    BlankLine,
    Bye,
    Command,
    Error,
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
from .helpers import node_config, wait_until


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
                         model.Password, model.Hello}
    assert {c for c, s in COMMANDS.items() if s.cost is not None} == {model.Hello}
    assert {c for c, s in COMMANDS.items() if s.listing} == {model.Who, model.Rooms,
                                                             model.History}
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


async def test_a_hello_joins_the_rooms_it_may_and_says_which_it_may_not() -> None:
    async with world(max_rooms=2) as w:
        await w.named("alice")  # lobby: one room
        m = w.member()
        await w.do(m, Hello(nick="bob", rooms=("new1", "lobby", "new2"), ref="h"))
        (welcome,) = m.of(Welcome)
        assert welcome.rooms == ("new1", "lobby") and m.user.rooms == ["new1", "lobby"]
        (error,) = m.of(Error)
        assert error.code == "rooms-full" and "new2" in error.text and error.ref == "h"
        assert m.sent.index(welcome) < m.sent.index(error)
        assert "new2" not in w.hub.rooms


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


async def test_rooms_come_a_page_at_a_time_and_a_new_room_past_the_cap_is_refused(
        ) -> None:
    async with world(rooms_page=2, max_rooms=3) as w:
        m = await w.named("alice")
        for room in ("dev", "ops"):
            await w.do(m, Join(room=room))
        with pytest.raises(RoomsFull):
            await w.do(m, Join(room="zoo"))
        assert m.user.rooms == ["lobby", "dev", "ops"]  # nothing joined, nothing subscribed
        assert "zoo" not in w.hub.rooms
        await w.do(m, Rooms(ref=1))
        await w.do(m, Rooms(after="dev", ref=2))
        await w.do(m, Rooms(limit=50, ref=3))  # the page size caps a client's limit
        assert m.of(RoomsReply) == [RoomsReply((("dev", 1), ("lobby", 1)), 1, more=True),
                                    RoomsReply((("lobby", 1), ("ops", 1)), 2),
                                    RoomsReply((("dev", 1), ("lobby", 1)), 3, more=True)]
        with pytest.raises(BadRoom):
            await w.do(m, Rooms(after="Not A Room"))
        # an existing room is joined whatever the count
        bob = await w.named("bob")
        await w.do(bob, Join(room="ops"))
        assert bob.user.rooms == ["lobby", "ops"]


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


async def test_one_room_past_the_cap_is_refused_and_operators_are_exempt() -> None:
    async with world(max_rooms_per_user=3) as w:
        m = await w.named("alice")  # in the lobby
        await w.do(m, Join(room="a"))
        await w.do(m, Join(room="b"))
        m.take()
        with pytest.raises(TooManyRooms, match=r"in 3 rooms, the most .* \(3\); /part one"):
            await w.do(m, Join(room="c", ref=7))
        assert m.sent == [] and m.user.rooms == ["lobby", "a", "b"]
        assert "c" not in w.hub.rooms and m.ended is None  # refused, never disconnected
        await w.do(m, Join(room="lobby"))  # switching to a room it is in is no new room
        await w.do(m, Part(room="a"))
        await w.do(m, Join(room="c"))
        assert m.user.rooms == ["b", "lobby", "c"]
        op = await w.named("oper")
        op.user.oper = True
        for room in ("d", "e", "f", "g"):
            await w.do(op, Join(room=room))
        assert len(op.user.rooms) == 5


async def test_a_hello_past_the_cap_joins_the_first_rooms_and_names_the_rest() -> None:
    async with world(max_rooms_per_user=2) as w:
        m = w.member()
        rooms = ("a", "b", "c", "a", "d")
        with pytest.raises(TooManyRooms) as refused:
            await w.do(m, Hello(nick="bob", rooms=rooms, ref=1))
        assert refused.value.text == ("a session may be in 2 rooms at most: joined the "
                                      "first 2, not c, d")
        welcome = m.of(Welcome)[0]
        assert welcome.rooms == ("a", "b") and m.user.rooms == ["a", "b"]
        assert m.sent[1:] == [Ack(1), Joined("a", "bob"), Joined("b", "bob")]
        assert m.user.registered and sorted(w.hub.rooms) == ["a", "b"]
        many = tuple(f"r{i}" for i in range(30))
        with pytest.raises(TooManyRooms, match=r"not r2, r3, .*, r11 and 18 more$"):
            await w.do(w.member(), Hello(nick="cat", rooms=many))


async def test_new_rooms_per_address_are_capped_cluster_wide_and_existing_rooms_are_free(
        ) -> None:
    server = fakeredis.FakeServer()
    async with world(server, room_create_rate=2) as w, \
            world(server, node_id="n2", room_create_rate=2) as w2:
        alice = await w.named("alice", ip="198.51.100.7")  # created the lobby: 1
        await w.do(alice, Join(room="a"))  # 2
        key = w.relay.keys.room_creates("198.51.100.7")
        assert await w.redis.get(key) == b"2" and 0 < await w.redis.pttl(key) <= 60_000
        with pytest.raises(RoomCreateThrottled,
                           match=r"^b does not exist, and your address created 2 new rooms "
                                 r"in the last minute; join an existing room, or create one "
                                 r"in (\d+s|1m)$"):
            await w.do(alice, Join(room="b"))
        assert alice.user.rooms == ["lobby", "a"] and "b" not in w.hub.rooms
        assert alice.ended is None
        # another address creates; at the cap, a room that exists is joined all the same
        bob = await w2.named("bob", ip="198.51.100.8")
        await w2.do(bob, Join(room="b"))
        await w.do(alice, Join(room="b"))
        assert alice.user.rooms == ["lobby", "a", "b"]
        # on another node the same address is at its cap too: the count is in Redis
        carol = await w2.named("carol", ip="198.51.100.7")
        with pytest.raises(RoomCreateThrottled):
            await w2.do(carol, Join(room="c"))
        await w2.do(carol, Join(room="a"))  # exists: joined, charged and refunded
        assert await w.redis.get(key) == b"2"
        carol.user.oper = True  # operators are exempt
        await w2.do(carol, Join(room="c"))
        assert await w.redis.get(key) == b"2" and "c" in carol.user.rooms
        assert w.security.creates.refused == 1 and w2.security.creates.refused == 1


async def test_concurrent_creations_from_one_address_cannot_slip_past_the_cap() -> None:
    async with world(room_create_rate=4) as w:
        ms = [await w.named(f"u{i}", ip="198.51.100.10") for i in range(10)]  # lobby: 1
        results = await asyncio.gather(*(w.do(m, Join(room=f"new{i}"))
                                         for i, m in enumerate(ms)), return_exceptions=True)
        assert sum(r is None for r in results) == 3
        assert all(isinstance(r, RoomCreateThrottled) for r in results if r is not None)
        assert await w.redis.get(w.relay.keys.room_creates("198.51.100.10")) == b"4"


async def test_a_hello_joins_what_it_may_and_says_which_rooms_were_not_created() -> None:
    async with world(room_create_rate=1) as w:
        m = w.member(ip="198.51.100.9")
        await w.do(m, Hello(nick="dora", rooms=("a", "b", "c"), ref="h"))
        [welcome] = m.of(Welcome)
        errors = m.of(Error)
        assert m.sent == [welcome, Ack("h"), Joined("a", "dora"), *errors]
        assert welcome.rooms == ("a",) and m.user.rooms == ["a"]
        assert [(e.code, e.ref) for e in errors] == [("room-create-throttled", "h")] * 2
        assert [e.text.split()[0] for e in errors] == ["b", "c"]


def test_a_hello_costs_one_join_per_room_up_to_the_cap() -> None:
    def cost(cap: int, *rooms: str) -> int:
        svc: Any = SimpleNamespace(config=node_config("n1", max_rooms_per_user=cap))
        return hello_cost(svc, Hello(nick="x", rooms=rooms))

    assert cost(50) == 1  # the lobby
    assert cost(50, "a", "b", "a") == 2
    assert cost(50, *(f"r{i}" for i in range(450))) == 50  # the rest is not joined
    assert cost(0, *(f"r{i}" for i in range(450))) == 450


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
