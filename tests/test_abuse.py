"""Abusive or broken clients, against an in-process node on fakeredis: floods, connection
caps, keepalive.  Clients from 127.0.0.2 and up are separate addresses (all of 127/8 is
loopback)."""

from __future__ import annotations

import asyncio
import socket

import fakeredis

from node.metrics import NodeMetrics
from node.server import ChatNode

from .helpers import LineClient, json_user, running_node, text_user


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
        # 20 at once (the burst), then one per 50 ms; the 21st line that has to wait
        # ends the session (40 relayed, a few more if the node itself was slow enough
        # that some lines found a token waiting) and nothing after it is relayed
        said = [s for s in bob.seen if s.startswith("[lobby] alice:")]
        assert said == [f"[lobby] alice: flood {i}" for i in range(len(said))]
        assert 40 <= len(said) < 60, len(said)
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
    # a rate so low no token comes back during the test; the first line over budget ends it
    async with running_node(fake_server, rate=0.001, burst=2, flood_disconnect=0) as node:
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
