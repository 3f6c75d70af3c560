"""Several nodes in one process on one fakeredis server, real TCP clients on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import fakeredis
import pytest

from node.errors import RelayUnavailable
from node.server import ChatNode

from .helpers import JsonClient, LineClient, json_user, running_node, text_user, wait_until


@contextlib.asynccontextmanager
async def two_nodes(server: fakeredis.FakeServer, **overrides: object
                    ) -> AsyncIterator[tuple[ChatNode, ChatNode]]:
    async with running_node(server, "n1", **overrides) as a, \
            running_node(server, "n2", **overrides) as b:
        yield a, b


def port(node: ChatNode) -> int:
    assert node.port is not None
    return node.port


async def test_message_crosses_nodes(fake_server: fakeredis.FakeServer) -> None:
    async with two_nodes(fake_server) as (a, b):
        alice = await text_user(port(a), "alice")
        bob = await text_user(port(b), "bob")
        await alice.expect("* bob joined lobby")
        await alice.send("hello from node one")
        assert await bob.expect("[lobby]") == "[lobby] alice: hello from node one"
        await bob.send("/me waves")
        assert await alice.expect("[lobby]") == "[lobby] * bob waves"
        await bob.send("//slash at the start")
        assert await alice.expect("[lobby]") == "[lobby] bob: /slash at the start"


async def test_text_sender_gets_no_echo_json_sender_does(
        fake_server: fakeredis.FakeServer) -> None:
    async with two_nodes(fake_server) as (a, b):
        alice = await text_user(port(a), "alice")
        carol = await json_user(port(a), "carol")
        bob = await text_user(port(b), "bob")
        await carol.event("join", nick="bob")
        await alice.send("one")
        await carol.op("say", text="two", ref=7)
        # the ack (after the publishing round trip) and the echo (through the bus) race:
        # either may come first
        got: dict[str, dict[str, Any]] = {}
        while len(got) < 2:
            ev = await carol.event(None)
            if (ev.get("ev"), ev.get("ref"), ev.get("text")) in (("ack", 7, None),
                                                                  ("msg", None, "two")):
                got[ev["ev"]] = ev
        ack, own = got["ack"], got["msg"]
        assert own["id"] == ack["id"] and own["from"] == "carol"
        assert await bob.expect("[lobby]") == "[lobby] alice: one"
        assert await bob.expect("[lobby]") == "[lobby] carol: two"
        # alice sees carol's line, never her own
        assert await alice.expect("[lobby]") == "[lobby] carol: two"
        assert "[lobby] alice: one" not in alice.seen


async def test_ids_increase_and_every_member_sees_one_order(
        fake_server: fakeredis.FakeServer) -> None:
    async with two_nodes(fake_server) as (a, b):
        x = await json_user(port(a), "x")
        y = await json_user(port(b), "y")
        await x.event("join", nick="y")
        for i in range(20):
            await (x if i % 2 else y).op("say", text=f"m{i}")
        seen_x = [(await x.event("msg"))["id"] for _ in range(20)]
        seen_y = [(await y.event("msg"))["id"] for _ in range(20)]
        assert seen_x == seen_y
        assert seen_x == sorted(seen_x, key=lambda i: tuple(map(int, i.split("-"))))


async def test_join_part_quit_announced_across_nodes(
        fake_server: fakeredis.FakeServer) -> None:
    async with two_nodes(fake_server) as (a, b):
        alice = await text_user(port(a), "alice")
        bob = await text_user(port(b), "bob")
        await alice.send("/join dev")
        await alice.expect("* alice joined dev")
        await bob.send("/join #Dev")
        await alice.expect("* bob joined dev")
        await bob.send("/part dev")
        assert await alice.expect("* bob") == "* bob left dev"
        await bob.send("/quit gone fishing")
        assert await alice.expect("* bob") == "* bob quit (gone fishing)"
        await bob.closed()


async def test_private_message_across_nodes(fake_server: fakeredis.FakeServer) -> None:
    async with two_nodes(fake_server) as (a, b):
        alice = await text_user(port(a), "alice")
        bob = await json_user(port(b), "bob")
        await alice.send("/msg BOB psst, over here")
        pm = await bob.event("pm")
        assert (pm["from"], pm["to"], pm["text"]) == ("alice", "bob", "psst, over here")
        await bob.op("msg", to="alice", text="hi back", ref="r1")
        await bob.event("ack", ref="r1")
        assert await alice.expect("[pm]") == "[pm] bob: hi back"
        await alice.send("/msg nobody hello?")
        assert (await alice.expect("!")).startswith("! no-such-nick:")


async def test_who_and_rooms_span_the_cluster(fake_server: fakeredis.FakeServer) -> None:
    async with two_nodes(fake_server) as (a, b):
        alice = await text_user(port(a), "alice")
        bob = await json_user(port(b), "Bob")
        await bob.op("join", room="dev", ref=1)
        await bob.event("ack", ref=1)
        await alice.send("/who")
        assert await alice.expect("* lobby:") == "* lobby: 2 users: alice, Bob"
        await bob.op("who", room="lobby", ref=2)
        who = await bob.event("who", ref=2)
        assert sorted(who["nicks"]) == ["Bob", "alice"]
        await bob.op("rooms", ref=3)
        rooms = await bob.event("rooms", ref=3)
        assert {(r["room"], r["members"]) for r in rooms["rooms"]} == {("lobby", 2), ("dev", 1)}


async def test_history_returns_recent_messages_in_order(
        fake_server: fakeredis.FakeServer) -> None:
    async with two_nodes(fake_server) as (a, b):
        alice = await json_user(port(a), "alice")
        for i in range(5):
            await alice.op("say", text=f"line {i}", ref=i)
            await alice.event("ack", ref=i)
        bob = await json_user(port(b), "bob")
        await bob.op("history", limit=3, ref="h")
        hist = await bob.event("history", ref="h")
        assert [m["text"] for m in hist["messages"]] == ["line 2", "line 3", "line 4"]


async def test_nick_change_announced_and_folded_collision(
        fake_server: fakeredis.FakeServer) -> None:
    async with two_nodes(fake_server) as (a, b):
        alice = await text_user(port(a), "alice")
        bob = await text_user(port(b), "bob")
        await alice.expect("* bob joined")
        await bob.send("/nick ALICE")
        assert (await bob.expect("!")).startswith("! nick-taken:")
        await bob.send("/nick ＡＬＩＣＥ")
        assert (await bob.expect("!")).startswith("! nick-taken:")
        await bob.send("/nick robert")
        assert await alice.expect("* bob is now") == "* bob is now robert"
        assert await bob.expect("* bob is now") == "* bob is now robert"
        # the old name is free again, cluster-wide
        carol = await text_user(port(a), "Bob")
        await carol.send("hi")
        assert await bob.expect("[lobby]") == "[lobby] Bob: hi"


async def test_registration_refusals_then_success(fake_server: fakeredis.FakeServer) -> None:
    async with two_nodes(fake_server) as (a, b):
        await text_user(port(a), "Alice")
        c = await LineClient.connect(port(b))
        await c.expect("* GET_NAME")
        for bad, code in [("alice", "nick-taken"), ("ＡＬＩＣＥ", "nick-taken"),
                          ("two words", "bad-nick"), ("x" * 33, "bad-nick")]:
            await c.send(bad)
            assert (await c.expect("!")).startswith(f"! {code}:")
            await c.expect("* GET_NAME")
        await c.send("alicia")
        assert (await c.expect("* welcome")).startswith("* welcome alicia")


async def test_look_alike_names_are_taken_cluster_wide_and_shown_as_typed(
        fake_server: fakeredis.FakeServer) -> None:
    async with two_nodes(fake_server) as (a, b):
        evan = await text_user(port(a), "evan")
        c = await LineClient.connect(port(b))
        await c.expect("* GET_NAME")
        for look_alike in ("\u0435van", "\u0415VAN", "\u0435v\u0430n"):  # Cyrillic е, а
            await c.send(look_alike)
            assert (await c.expect("!")).startswith("! nick-taken:"), look_alike
            await c.expect("* GET_NAME")
        await c.send("\u0435v\u0430n_")  # a look-alike of a free name is free, shown as typed
        assert (await c.expect("* welcome")).startswith("* welcome \u0435v\u0430n_")
        assert await evan.expect("* \u0435") == "* \u0435v\u0430n_ joined lobby"
        await c.send("/nick b0b")
        assert await evan.expect("* \u0435") == "* \u0435v\u0430n_ is now b0b"
        await evan.send("/nick BOB")
        assert (await evan.expect("!")).startswith("! nick-taken:")


async def test_nick_race_exactly_one_winner(fake_server: fakeredis.FakeServer) -> None:
    async with two_nodes(fake_server) as (a, b):
        for trial in range(100):
            nick = f"racer{trial}"
            c1 = await JsonClient.connect(port(a))
            c2 = await JsonClient.connect(port(b))
            await asyncio.gather(c1.op("hello", nick=nick), c2.op("hello", nick=nick))
            r1, r2 = await asyncio.gather(_outcome(c1), _outcome(c2))
            assert sorted([r1, r2]) == ["nick-taken", "welcome"], (trial, r1, r2)
            await c1.close()
            await c2.close()


async def _outcome(c: JsonClient) -> str:
    while True:
        obj = await c.event()
        if obj["ev"] == "welcome":
            return "welcome"
        if obj["ev"] == "error":
            return str(obj["code"])


N_BURST = 1500  # 5 MB: more than the kernel buffers (~3 MB on loopback) for a stalled reader


async def test_slow_reader_disconnected_others_keep_receiving(
        fake_server: fakeredis.FakeServer) -> None:
    async with two_nodes(fake_server, send_queue_lines=50,
                         send_queue_bytes=64 * 1024) as (a, b):
        slow = await LineClient.connect(port(a), rcvbuf=4096)
        slow.writer.transport.pause_reading()  # type: ignore[attr-defined]
        await slow.send("sloth")
        fast = await json_user(port(a), "fast")
        talker = await json_user(port(b), "talker")
        text = "x" * 3500
        for i in range(N_BURST):
            await talker.op("say", text=f"{i} {text}")
        for i in range(N_BURST):
            msg = await fast.event("msg")
            assert msg["text"].startswith(f"{i} ")
        assert a.stats.slow_consumers == 1
        await fast.op("who", ref="w")
        assert "sloth" not in (await fast.event("who", ref="w"))["nicks"]


async def test_resume_token_takes_the_name_over_on_another_node(
        fake_server: fakeredis.FakeServer) -> None:
    async with two_nodes(fake_server) as (a, b):
        old = await JsonClient.connect(port(a))
        await old.op("hello", nick="Xena")
        token = (await old.event("welcome"))["token"]
        await old.op("join", room="dev", ref=1)
        await old.event("ack", ref=1)
        watcher = await json_user(port(b), "watcher")
        await watcher.op("join", room="dev", ref=2)
        await watcher.event("ack", ref=2)
        await old.op("say", room="dev", text="seen", ref="s1")
        seen = (await old.event("ack", ref="s1"))["id"]
        await watcher.op("say", room="dev", text="missed", ref="s2")
        missed = (await watcher.event("ack", ref="s2"))["id"]

        new = await JsonClient.connect(port(b))
        await new.op("hello", nick="xena", token="a/forged", rooms=["lobby", "dev"])
        assert (await new.event("error"))["code"] == "bad-args"  # not a token's shape
        await new.op("hello", nick="xena", token="n1/" + "0" * 32, rooms=["lobby", "dev"])
        assert (await new.event("error"))["code"] == "nick-taken"  # not the holder's
        # the resume and the catch-up of a room it rejoins, in one packet: the history is
        # answered once the rejoin is done (members only), never not-in-room
        await new.send(json.dumps({"op": "hello", "nick": "xena", "token": token,
                                   "rooms": ["lobby", "dev"]}) + "\n"
                       + json.dumps({"op": "history", "room": "dev", "after": seen,
                                     "ref": "c"}))
        welcome = await new.event("welcome")
        assert welcome["resumed"] is True and welcome["token"] != token
        assert welcome["rooms"] == ["lobby", "dev"]
        assert [m["id"] for m in (await new.event("history", ref="c"))["messages"]] == [missed]
        # the old session learns at its node's next renewal that the name moved on
        assert (await old.event("error"))["code"] == "nick-lost"
        await old.closed()
        # the new session is in both rooms, and nobody was told it joined again
        await watcher.op("say", room="dev", text="still there?", ref=3)
        assert (await new.event("msg", room="dev"))["text"] == "still there?"
        await watcher.event("msg", text="still there?")
        assert not any('"ev":"join","room":"dev","nick":"xena"' in line
                       for line in watcher.seen)
        await watcher.op("who", room="dev", ref=4)
        assert (await watcher.event("who", ref=4))["nicks"] == ["watcher", "xena"]


async def test_history_after_an_id_returns_what_came_later(
        fake_server: fakeredis.FakeServer) -> None:
    async with running_node(fake_server) as a:
        c = await json_user(port(a), "c")
        ids = []
        for i in range(5):
            await c.op("say", text=f"n{i}", ref=i)
            ids.append((await c.event("ack", ref=i))["id"])
        await c.op("history", after=ids[1], ref="h")
        hist = await c.event("history", ref="h")
        assert [m["id"] for m in hist["messages"]] == ids[2:]
        await c.op("history", after=ids[1], limit=2, ref="h2")
        assert [m["text"] for m in (await c.event("history", ref="h2"))["messages"]] == [
            "n2", "n3"]
        await c.op("history", after="not-an-id", ref="h3")
        assert (await c.event("error", ref="h3"))["code"] == "bad-args"
        # each part of an id is an unsigned 64-bit number: beyond is the client's mistake
        await c.op("history", after="99999999999999999999-0", ref="h4")
        assert (await c.event("error", ref="h4"))["code"] == "bad-args"
        await c.op("history", after="18446744073709551615-18446744073709551615", ref="h5")
        assert (await c.event("history", ref="h5"))["messages"] == []


async def test_history_is_for_members_only(fake_server: fakeredis.FakeServer) -> None:
    """JSON history of a room needs being in it, as text mode's /history (current room)
    does: nobody reads a room unseen by its /who."""
    async with running_node(fake_server) as a:
        insider = await json_user(port(a), "insider")
        await insider.op("join", room="secret", ref="j")
        await insider.event("ack", ref="j")
        await insider.op("say", room="secret", text="between us", ref="s")
        await insider.event("ack", ref="s")
        outsider = await json_user(port(a), "outsider")
        asks: list[dict[str, Any]] = [{"room": "secret"},
                                      {"room": "#Secret", "after": "0-0", "limit": 5}]
        for ref, fields in enumerate(asks):
            await outsider.op("history", ref=ref, **fields)
            assert (await outsider.event("error", ref=ref))["code"] == "not-in-room"
        await outsider.op("join", room="secret", ref="j")
        await outsider.event("ack", ref="j")
        await outsider.op("history", room="secret", ref="h")
        assert [m["text"] for m in (await outsider.event("history", ref="h"))["messages"]] == [
            "between us"]
        await outsider.op("part", room="secret", ref="p")
        await outsider.event("ack", ref="p")
        await outsider.op("history", room="secret", ref="h2")
        assert (await outsider.event("error", ref="h2"))["code"] == "not-in-room"
        assert "between us" not in "".join(outsider.seen[-2:])


async def test_a_subscription_gap_is_repaired_from_the_stream(
        fake_server: fakeredis.FakeServer) -> None:
    """Messages published while a node's subscription is down reach its users anyway,
    once each and in order, after it resubscribes."""
    async with running_node(fake_server, "n1", reconnect_min=1.0) as a, \
            running_node(fake_server, "n2") as b:
        alice = await json_user(port(a), "alice")
        bob = await json_user(port(b), "bob")
        await alice.event("join", nick="bob")
        await bob.op("say", text="before", ref=0)
        assert (await alice.event("msg"))["text"] == "before"
        a.relay._rebuild = True  # drop node 1's subscription (as CLIENT KILL would)
        await wait_until(lambda: not a.relay.ready)
        for i in range(5):  # said while node 1 hears nothing: at least 0.5 s of gap
            await bob.op("say", text=f"gap {i}", ref=i + 1)
            await bob.event("ack", ref=i + 1)
        assert not a.relay.ready, "the gap closed before the test could use it"
        await bob.op("say", text="after", ref=9)
        texts = [(await alice.event("msg"))["text"] for _ in range(6)]
        assert texts == [f"gap {i}" for i in range(5)] + ["after"]
        assert a.stats.repaired >= 5  # "after" may come from the stream too


async def test_notices_of_a_gap_are_repaired_once_in_order(
        fake_server: fakeredis.FakeServer) -> None:
    """Joins, parts, renames and quits are in the room's stream like its messages: what a
    node's subscription missed reaches its text and JSON users, once, in order."""
    async with running_node(fake_server, "n1", reconnect_min=1.0) as a, \
            running_node(fake_server, "n2") as b:
        alice = await json_user(port(a), "alice")
        tom = await text_user(port(a), "tom")
        bob = await json_user(port(b), "bob")
        await alice.event("join", nick="bob")
        await tom.expect("* bob joined lobby")
        a.relay._rebuild = True  # drop node 1's subscription (as CLIENT KILL would)
        await wait_until(lambda: not a.relay.ready)
        carol = await json_user(port(b), "carol")  # joins while node 1 hears nothing
        await carol.op("say", text="said in the gap", ref=1)
        await carol.event("ack", ref=1)
        await carol.op("nick", nick="caroline", ref=2)
        await carol.event("ack", ref=2)
        await bob.op("quit", reason="off")
        await bob.closed()
        assert not a.relay.ready, "the gap closed before the test could use it"
        await tom.expect("* bob quit (off)")
        assert [line for line in tom.seen if "bob joined" not in line][-4:] == [
            "* carol joined lobby", "[lobby] carol: said in the gap",
            "* carol is now caroline", "* bob quit (off)"]
        got = [await alice.event() for _ in range(4)]
        assert [(e["ev"], e.get("nick") or e.get("from") or e.get("new")) for e in got] == [
            ("join", "carol"), ("msg", "carol"), ("nick", "caroline"), ("quit", "bob")]
        await tom.send("/ping")
        await tom.expect("* pong")
        assert sum("carol joined" in line for line in tom.seen) == 1


async def test_a_gap_repair_tries_the_stream_again_when_redis_still_stumbles(
        fake_server: fakeredis.FakeServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fault that cut the subscription often breaks the first reads of the stream
    too: the repair tries again instead of leaving the gap."""
    async with running_node(fake_server, "n1", reconnect_min=1.0) as a, \
            running_node(fake_server, "n2") as b:
        alice = await json_user(port(a), "alice")
        bob = await json_user(port(b), "bob")
        await alice.event("join", nick="bob")
        events = a.relay.events
        failures: list[tuple[Any, ...]] = []

        async def stumbling(*args: Any) -> Any:
            if len(failures) < 2:
                failures.append(args)
                raise RelayUnavailable("relay unavailable (test)") from ConnectionError()
            return await events(*args)

        monkeypatch.setattr(a.relay, "events", stumbling)
        a.relay._rebuild = True  # drop node 1's subscription (as CLIENT KILL would)
        await wait_until(lambda: not a.relay.ready)
        for i in range(3):
            await bob.op("say", text=f"gap {i}", ref=i + 1)
            await bob.event("ack", ref=i + 1)
        assert not a.relay.ready, "the gap closed before the test could use it"
        texts = [(await alice.event("msg"))["text"] for _ in range(3)]
        assert texts == [f"gap {i}" for i in range(3)]
        assert len(failures) == 2


async def test_redis_losing_its_data_is_noticed_and_repaired(
        fake_server: fakeredis.FakeServer) -> None:
    """Redis restarted empty: names, rooms and the heartbeat come back by themselves,
    members are told history may have a hole, and nobody has to reconnect."""
    fast = {"canary_interval": 0.1}
    async with running_node(fake_server, "n1", **fast) as a, \
            running_node(fake_server, "n2", **fast) as b:
        alice = await text_user(port(a), "alice")
        bob = await text_user(port(b), "bob")
        await alice.expect("* bob joined")
        r = fakeredis.FakeAsyncRedis(server=fake_server)
        try:
            await r.flushall()  # the test's own in-memory server, not anything shared
            # a newcomer grabs bob's name before node 2 noticed: first claimant wins
            thief = await text_user(port(a), "bob")
            await alice.expect("* the cluster's store restarted")
            note = await bob.expect("* your nickname bob was claimed")
            assert note.endswith("you are now bob_2")
            assert await alice.expect("* bob is now") == "* bob is now bob_2"
            # names are held again: alice cannot be taken, and membership is back
            late = await LineClient.connect(port(b))
            await late.expect("* GET_NAME")
            await late.send("alice")
            assert (await late.expect("!")).startswith("! nick-taken")
            await thief.send("/who")
            assert await thief.expect("* lobby:") == "* lobby: 3 users: alice, bob, bob_2"
            await bob.send("still here")
            assert await alice.expect("[lobby] bob_2") == "[lobby] bob_2: still here"
            assert a.relay.stats.data_resets == 1 and b.relay.stats.data_resets == 1
        finally:
            await r.aclose()


async def test_messages_said_while_redis_is_away_wait_in_the_outbox(
        fake_server: fakeredis.FakeServer) -> None:
    async with two_nodes(fake_server, reconnect_max=0.2) as (a, b):
        alice = await json_user(port(a), "alice")
        bob = await json_user(port(b), "bob")
        await alice.event("join", nick="bob")
        fake_server.connected = False  # Redis unreachable for everyone
        try:
            for i in range(3):
                await alice.op("say", text=f"held {i}", ref=i)
            await wait_until(lambda: a.relay.publisher.stats.outboxed >= 1)
        finally:
            fake_server.connected = True
        acks = [(await alice.event("ack", ref=i))["id"] for i in range(3)]
        got = [await bob.event("msg") for _ in range(3)]
        assert [g["text"] for g in got] == ["held 0", "held 1", "held 2"]
        assert [g["id"] for g in got] == acks


async def test_past_the_outbox_bound_the_sender_is_told(
        fake_server: fakeredis.FakeServer) -> None:
    async with running_node(fake_server, outbox_seconds=0.2) as a:
        alice = await json_user(port(a), "alice")
        fake_server.connected = False
        try:
            await alice.op("say", text="into the void", ref="v")
            error = await alice.event("error", ref="v")
        finally:
            fake_server.connected = True
        assert error["code"] == "relay-unavailable"
        assert a.relay.publisher.stats.outbox_expired == 1


async def test_a_restarted_node_is_not_mistaken_for_its_predecessor(
        fake_server: fakeredis.FakeServer) -> None:
    """A node restarted under the same id publishes anew: its first messages must not be
    taken for retries of the previous process's (the publish once-keys differ)."""
    async with running_node(fake_server, "n1") as a:
        alice = await text_user(port(a), "alice")
        async with running_node(fake_server, "n2") as b:
            bob = await text_user(port(b), "bob")
            await bob.send("before restart")
            assert await alice.expect("[lobby] bob") == "[lobby] bob: before restart"
        async with running_node(fake_server, "n2") as b:
            carol = await text_user(port(b), "carol")
            await carol.send("after restart")
            assert await alice.expect("[lobby] carol") == "[lobby] carol: after restart"
