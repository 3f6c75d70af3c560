"""Abusive or broken clients, against an in-process node on fakeredis: floods, connection
caps, keepalive.  Clients from 127.0.0.2 and up are separate addresses (all of 127/8 is
loopback)."""

from __future__ import annotations

import asyncio
import json
import socket

import fakeredis

from node.metrics import NodeMetrics
from node.server import ChatNode
from node.session import PARSE_SLICE

from .helpers import JsonClient, LineClient, json_user, running_node, text_user, wait_until


def port(node: ChatNode) -> int:
    assert node.port is not None
    return node.port


async def connect_from(source: str, node: ChatNode) -> LineClient:
    """A client whose socket is bound to ``source`` before connecting."""
    return await LineClient.connect(port(node), source=source)


async def refused(client: LineClient) -> str:
    """The one line a refused connection gets; the node then closes it."""
    line = await client.line()
    await client.closed()
    return line


# --------------------------------------------------------------------------- flood control


async def test_flood_is_delayed_then_disconnected_while_others_are_unaffected(
        fake_server: fakeredis.FakeServer) -> None:
    async with running_node(fake_server, rate=20.0, burst=20, flood_disconnect=20) as node:
        bob = await text_user(port(node), "bob")
        carol = await text_user(port(node), "carol")
        alice = await text_user(port(node), "alice")
        await bob.expect("* alice joined lobby")
        loop = asyncio.get_running_loop()
        started = loop.time()
        await alice.send(b"".join(f"flood {i}\n".encode() for i in range(200)))
        await bob.expect("[lobby] alice: flood 0")
        for i in range(15):  # well within carol's own budget
            await carol.send(f"calm {i}")
        assert await bob.expect("* alice quit") == "* alice quit (flooding)"
        elapsed = loop.time() - started
        # 19 at once (the burst, less the token her hello's lobby join took), then one
        # per 50 ms; the 21st line that has to wait ends the session (39 relayed, a few
        # more if the node itself was slow enough that some lines found a token waiting)
        # and nothing after it is relayed
        said = [s for s in bob.seen if s.startswith("[lobby] alice:")]
        assert said == [f"[lobby] alice: flood {i}" for i in range(len(said))]
        assert 39 <= len(said) < 60, len(said)
        assert elapsed >= 0.9, elapsed
        # carol was never held up: all her lines arrived, in order, during the flood
        calm = [s for s in bob.seen if s.startswith("[lobby] carol:")]
        assert calm == [f"[lobby] carol: calm {i}" for i in range(15)]
        assert (await alice.expect("!")).startswith("! rate-limited: more than 20 messages")
        await alice.closed()
        assert node.stats.flood_disconnects == 1
        assert "alice" not in node.roster.named
        metrics = NodeMetrics(node.state).render().decode()
        assert "hubbub_flood_disconnects_total 1.0" in metrics


async def test_flood_control_covers_publishing_commands_only_and_json_gets_the_ref(
        fake_server: fakeredis.FakeServer) -> None:
    # a rate so low no token comes back during the test; the first line over budget ends
    # it (the burst: the hello's lobby join, then two lines)
    async with running_node(fake_server, rate=0.001, burst=3, flood_disconnect=0) as node:
        c = await json_user(port(node), "spam")
        await c.op("say", text="one", ref=1)
        await c.op("me", text="two", ref=2)
        await c.event("ack", ref=1)
        await c.event("ack", ref=2)
        for i in range(10):  # pings, help and queries are not rate-limited
            await c.op("ping", ref=f"p{i}")
        await c.op("who", ref="w")
        for i in range(10):
            await c.event("pong", ref=f"p{i}")
        await c.event("who", ref="w")
        await c.op("join", room="dev", ref=3)
        error = await c.event("error")
        assert error["code"] == "rate-limited" and error["ref"] == 3
        await c.closed()


async def test_listing_is_paced_per_session_before_registration_and_never_refused(
        fake_server: fakeredis.FakeServer) -> None:
    async with running_node(fake_server, list_rate=20.0, list_burst=2, rate=0.001,
                            burst=5) as node:
        bob = await json_user(port(node), "bob")
        lister = await JsonClient.connect(port(node))  # not registered
        loop = asyncio.get_running_loop()
        started = loop.time()
        ops = [("rooms", {}), ("who", {"room": "lobby"})] * 6
        await lister.send(b"".join(
            json.dumps({"op": op, "ref": i, **f}).encode() + b"\n"
            for i, (op, f) in enumerate(ops)) + b'{"op":"hello","nick":"lister","ref":"h"}\n')
        first = await lister.event(ref=0)
        assert first["ev"] == "rooms"
        # another client is not held up by it: bob's own listing is answered at once,
        # while the lister's are still being paced out (10 of them at 20/s: 0.5 s)
        asked = loop.time()
        await bob.op("who", room="lobby", ref="b")
        assert (await bob.event("who", ref="b"))["nicks"] == ["bob"]
        bob_waited = loop.time() - asked
        replies = [first] + [await lister.event(ref=i) for i in range(1, len(ops))]
        assert [r["ev"] for r in replies] == [op for op, _ in ops]  # none refused
        elapsed = loop.time() - started
        assert bob_waited < elapsed / 2, (bob_waited, elapsed)
        await lister.event("welcome", nick="lister")  # in order, after every listing
        assert elapsed >= 0.45, elapsed  # the burst of 2, then 10 at 20 per second
        (session,) = [s for s in node.sessions if s.user.nick == "lister"]
        assert session.lister.waited == len(ops) - 2
        assert session.flood.over == 0  # listings take nothing from the flood budget
        await lister.op("ping", ref="p")
        await lister.event("pong", ref="p")


async def test_waiting_listings_are_parsed_a_slice_at_a_time_and_dropped_with_the_socket(
        fake_server: fakeredis.FakeServer) -> None:
    async with running_node(fake_server, list_rate=5.0, list_burst=1) as node:
        c = await JsonClient.connect(port(node))
        line = b'{"op":"rooms","ref":"r"}\n'
        await c.send(line * (200_000 // len(line)))  # 200 kB: 27 min of listings at 5/s
        await c.event("rooms", ref="r")
        await c.event("rooms", ref="r")  # the second one waited for its token
        (session,) = node.sessions
        # what waits is at most one slice of parsed commands, not 200 kB of them
        assert len(session.wire._ready) <= PARSE_SLICE // len(line) + 1
        # gone (the node learns it at its next answer): what it queued is dropped, not
        # paced out for nobody
        await c.close()
        await wait_until(lambda: not node.sessions)


async def test_a_hello_naming_rooms_takes_a_flood_token_per_room(
        fake_server: fakeredis.FakeServer) -> None:
    # the burst covers a hello with 3 rooms and one line: the next line is one too many
    async with running_node(fake_server, rate=0.001, burst=4, flood_disconnect=0) as node:
        c = await JsonClient.connect(port(node))
        await c.op("hello", nick="many", rooms=["a", "b", "c"], ref="h")
        await c.event("ack", ref="h")
        await c.op("say", text="one", ref=1)
        await c.event("ack", ref=1)
        await c.op("say", text="two", ref=2)
        error = await c.event("error")
        assert error["code"] == "rate-limited" and error["ref"] == 2
        await c.closed()


# --------------------------------------------------------------------------- connection caps


async def test_per_ip_cap_refuses_with_a_reason_while_another_address_gets_in(
        fake_server: fakeredis.FakeServer) -> None:
    async with running_node(fake_server, max_per_ip=3) as node:
        held = [await connect_from("127.0.0.2", node) for _ in range(3)]
        for c in held:
            await c.expect("* GET_NAME")
        line = await refused(await connect_from("127.0.0.2", node))
        assert line == ("! too-many-connections: too many connections from your address "
                        "(at most 3 at once)")
        other = await connect_from("127.0.0.3", node)
        await other.expect("* GET_NAME")
        await other.send("dora")
        await other.expect("* welcome dora")
        assert node.stats.refused == {"node-full": 0, "per-ip": 1, "ip-rate": 0,
                                      "proxy-header": 0}
        # a closed connection frees its place
        await held[0].send("/quit")
        await held[0].closed()
        again = await connect_from("127.0.0.2", node)
        await again.expect("* GET_NAME")
        assert node.gate.limiter.open_from("127.0.0.2") == 3


async def test_total_cap_refuses_and_is_counted_in_metrics(
        fake_server: fakeredis.FakeServer) -> None:
    async with running_node(fake_server, max_connections=2) as node:
        a = await text_user(port(node), "a")
        await text_user(port(node), "b")
        line = await refused(await LineClient.connect(port(node)))
        assert line.startswith("! too-many-connections: this node is full (2 connections)")
        await a.send("/quit")
        await a.closed()
        await text_user(port(node), "c")
        metrics = NodeMetrics(node.state).render().decode()
        assert 'hubbub_connections_refused_total{reason="node-full"} 1.0' in metrics
        assert 'hubbub_connections_refused_total{reason="per-ip"} 0.0' in metrics
        assert node.stats.connections == 3


async def test_connection_rate_per_ip(fake_server: fakeredis.FakeServer) -> None:
    # burst 3, and a rate so low that no token comes back during the test
    async with running_node(fake_server, conn_rate_per_ip=0.01, conn_burst_per_ip=3) as node:
        for _ in range(3):
            c = await connect_from("127.0.0.4", node)
            await c.expect("* GET_NAME")
            await c.send("/quit")
            await c.closed()
        line = await refused(await connect_from("127.0.0.4", node))
        assert line == ("! too-many-connections: too many new connections from your "
                        "address (at most 0.01 per second)")
        other = await connect_from("127.0.0.5", node)
        await other.expect("* GET_NAME")
        assert node.stats.refused["ip-rate"] == 1


# --------------------------------------------------------------------------- keepalive


async def server_socket(node: ChatNode) -> socket.socket:
    """The node's side of the only connection, once its session has started."""
    c = await LineClient.connect(port(node))
    await c.expect("* GET_NAME")
    (session,) = node.sessions
    sock: socket.socket = session.connection.transport.get_extra_info("socket")  # type: ignore[union-attr]
    return sock


async def test_keepalive_is_set_on_accepted_sockets(fake_server: fakeredis.FakeServer) -> None:
    async with running_node(fake_server) as node:  # the defaults: 30 s, 10 s, 3
        sock = await server_socket(node)
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        if hasattr(socket, "TCP_KEEPIDLE"):  # Linux
            tcp = socket.IPPROTO_TCP
            assert sock.getsockopt(tcp, socket.TCP_KEEPIDLE) == 30
            assert sock.getsockopt(tcp, socket.TCP_KEEPINTVL) == 10
            assert sock.getsockopt(tcp, socket.TCP_KEEPCNT) == 3
            # data in flight to a dead peer is bounded the same way: 30 + 10 x 3 s
            assert sock.getsockopt(tcp, socket.TCP_USER_TIMEOUT) == 60_000


async def test_keepalive_options_and_off(fake_server: fakeredis.FakeServer) -> None:
    async with running_node(fake_server, keepalive_idle=5, keepalive_interval=2,
                            keepalive_count=4) as node:
        sock = await server_socket(node)
        if hasattr(socket, "TCP_KEEPIDLE"):
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 5
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 13_000
    async with running_node(fake_server, keepalive_idle=0) as node:
        sock = await server_socket(node)
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 0
