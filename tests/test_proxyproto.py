"""The PROXY protocol header: the parser with bytes (node/proxyproto.py), then a node on
fakeredis that trusts 127.0.0.1 as its load balancer.  Clients from 127.0.0.2 and up are
other addresses (all of 127/8 is loopback)."""

from __future__ import annotations

import ipaddress
import struct

import fakeredis
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node.config import NodeConfig
from node.errors import BadProxyHeader
from node.proxyproto import V1_MAX, V2_SIGNATURE, ProxyHeader, encode_v1, encode_v2, parse
from node.server import ChatNode
from node.user import User

from .helpers import LineClient, running_node, text_user, wait_until

OPER = "open-sesame"

_v4 = st.ip_addresses(v=4).map(str)
_v6 = st.ip_addresses(v=6).map(str)
_port = st.integers(min_value=0, max_value=65535)
_pair = st.one_of(st.tuples(_v4, _port, _v4, _port), st.tuples(_v6, _port, _v6, _port))
_after = st.binary(max_size=40)


def _fed(data: bytes, cuts: list[int]) -> tuple[list[ProxyHeader | None], ProxyHeader]:
    """Parse growing prefixes of ``data`` as a socket would deliver it: every answer
    before the last, and the first complete one."""
    answers: list[ProxyHeader | None] = []
    for cut in sorted({min(c, len(data)) for c in cuts} | {len(data)}):
        answer = parse(data[:cut])
        answers.append(answer)
        if answer is not None:
            return answers, answer
    raise AssertionError("never complete")


# --------------------------------------------------------------------------- the parser


@settings(max_examples=200)
@given(pair=_pair, after=_after, cuts=st.lists(st.integers(min_value=0, max_value=120)))
def test_v1_header_in_any_pieces(pair: tuple[str, int, str, int], after: bytes,
                                 cuts: list[int]) -> None:
    src, sport, dst, dport = pair
    header = encode_v1((src, sport), (dst, dport))
    answers, done = _fed(header + after, cuts)
    assert done == ProxyHeader((src, sport), len(header))
    assert all(a is None for a in answers[:-1])
    assert len(header) <= V1_MAX


@settings(max_examples=200)
@given(pair=_pair, tlvs=st.binary(max_size=30), after=_after,
       cuts=st.lists(st.integers(min_value=0, max_value=120)))
def test_v2_header_in_any_pieces(pair: tuple[str, int, str, int], tlvs: bytes, after: bytes,
                                 cuts: list[int]) -> None:
    src, sport, dst, dport = pair
    header = encode_v2((src, sport), (dst, dport), tlvs)
    answers, done = _fed(header + after, cuts)
    assert done == ProxyHeader((str(ipaddress.ip_address(src)), sport), len(header))
    assert all(a is None for a in answers[:-1])


@settings(max_examples=500)
@given(data=st.one_of(st.binary(max_size=200),
                      st.binary(max_size=120).map(lambda b: b"PROXY " + b),
                      st.binary(max_size=120).map(lambda b: V2_SIGNATURE + b)))
def test_any_bytes_parse_or_fail_cleanly(data: bytes) -> None:
    try:
        answer = parse(data)
    except BadProxyHeader as exc:
        assert exc.code == "bad-proxy-header" and str(exc)
        return
    if answer is not None:
        assert 0 < answer.length <= len(data)


@pytest.mark.parametrize("data", [
    b"nick\n",
    b"{\"op\":\"hello\"}\n",
    b"PROXY TCP4 1.2.3.4 5.6.7.8 1000\r\n",              # a field missing
    b"PROXY TCP4 1.2.3.4 5.6.7.8 1000 99999\r\n",        # port out of range
    b"PROXY TCP4 1.2.3.4 5.6.7.8 01000 80\r\n",          # leading zero
    b"PROXY TCP4 ::1 ::1 1000 80\r\n",                   # IPv6 as TCP4
    b"PROXY TCP6 1.2.3.4 5.6.7.8 1000 80\r\n",           # IPv4 as TCP6
    b"PROXY UDP4 1.2.3.4 5.6.7.8 1000 80\r\n",
    b"PROXY TCP4 1.2.3.4 5.6.7.8 1000 80\n",             # LF without CR
    b"PROXY " + b"x" * (V1_MAX - 6),                     # no CRLF within 107 bytes
    b"PROXY TCP4 1.2.3.\xff 5.6.7.8 1000 80\r\n",        # not ASCII
    V2_SIGNATURE + struct.pack("!BBH", 0x11, 0x11, 12) + bytes(12),  # version 1
    V2_SIGNATURE + struct.pack("!BBH", 0x22, 0x11, 12) + bytes(12),  # command 2
    V2_SIGNATURE + struct.pack("!BBH", 0x21, 0x11, 4) + bytes(4),    # too short for TCP4
], ids=lambda d: repr(d[:24]))
def test_bad_headers_are_refused(data: bytes) -> None:
    with pytest.raises(BadProxyHeader):
        parse(data)


def test_headers_without_a_client_address_keep_the_peer() -> None:
    assert parse(b"PROXY UNKNOWN\r\nbob\n") == ProxyHeader(None, 15)
    assert parse(b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n") == ProxyHeader(None, 35)
    local = encode_v2(None, tlvs=b"\x01\x00\x01x")
    assert parse(local + b"bob\n") == ProxyHeader(None, len(local))
    unix = V2_SIGNATURE + struct.pack("!BBH", 0x21, 0x31, 216) + bytes(216)
    assert parse(unix) == ProxyHeader(None, len(unix))


def test_incomplete_headers_ask_for_more() -> None:
    assert parse(b"") is None
    assert parse(b"PRO") is None
    assert parse(b"PROXY TCP4 1.2.3.4 5.6.7.8 1000 80\r") is None
    assert parse(V2_SIGNATURE[:5]) is None
    assert parse(encode_v2(("1.2.3.4", 1), ("5.6.7.8", 2))[:-1]) is None


def test_proxy_from_is_checked_at_the_edge() -> None:
    with pytest.raises(ValueError, match="not an address or network"):
        NodeConfig(node_id="n", proxy_from=("10.0.0.0/8", "haproxy"))
    with pytest.raises(ValueError, match="proxy timeout must be positive"):
        NodeConfig(node_id="n", proxy_from=("10.0.0.1",), proxy_timeout=0)
    with pytest.raises(ValueError, match="needs a plaintext chat port"):
        NodeConfig(node_id="n", proxy_from=("10.0.0.1",), tls_cert="c.pem", tls_key="k.pem")
    assert NodeConfig(node_id="n", proxy_from=("10.0.0.1", "fd00::/8")).proxy_from


# --------------------------------------------------------------------------- a node behind it


def port(node: ChatNode) -> int:
    assert node.port is not None
    return node.port


async def from_address(source: str, node: ChatNode) -> LineClient:
    """A client whose socket is bound to ``source`` (127.0.0.1: the trusted balancer)."""
    return await LineClient.connect(port(node), source=source)


async def proxied(node: ChatNode, client: tuple[str, int], first: bytes = b"",
                  v2: bool = False) -> LineClient:
    """A connection from the balancer (127.0.0.1) carrying ``client``'s address."""
    c = await from_address("127.0.0.1", node)
    dest = ("127.0.0.1", port(node)) if ":" not in client[0] else ("::1", port(node))
    header = encode_v2(client, dest) if v2 else encode_v1(client, dest)
    await c.send(header + first)
    return c


def session_of(node: ChatNode, nick: str) -> User:
    return next(s.user for s in node.sessions if s.user.nick == nick)


async def test_the_header_gives_the_clients_address(fake_server: fakeredis.FakeServer) -> None:
    async with running_node(fake_server, proxy_from=("127.0.0.1/32",)) as n:
        alice = await proxied(n, ("203.0.113.7", 40000), b"alice\n")  # one write
        await alice.expect("* welcome alice")
        bob = await proxied(n, ("2001:db8::5", 41000), v2=True)
        await bob.expect("* GET_NAME")
        await bob.send("bob")
        await bob.expect("* welcome bob")
        sessions = {s.user.nick: s.user for s in n.sessions}
        assert (sessions["alice"].host, sessions["alice"].peer) == ("203.0.113.7",
                                                                    "203.0.113.7:40000")
        assert sessions["bob"].ip == "2001:db8::/64"
        assert n.gate.limiter.open_from("203.0.113.7") == 1
        assert n.gate.limiter.open_from("127.0.0.1") == 0


async def test_limits_count_the_clients_not_the_balancer(
        fake_server: fakeredis.FakeServer) -> None:
    async with running_node(fake_server, proxy_from=("127.0.0.1",), max_per_ip=1) as n:
        first = await proxied(n, ("198.51.100.1", 1000), b"first\n")
        await first.expect("* welcome first")
        again = await proxied(n, ("198.51.100.1", 1001))
        assert (await again.line()).startswith("! too-many-connections: too many "
                                               "connections from your address")
        await again.closed()
        other = await proxied(n, ("198.51.100.2", 1000), b"other\n")
        await other.expect("* welcome other")
        assert n.stats.refused["per-ip"] == 1


async def test_an_address_ban_reaches_clients_behind_the_balancer(
        fake_server: fakeredis.FakeServer) -> None:
    async with running_node(fake_server, proxy_from=("127.0.0.1",), oper_secret=OPER) as n:
        op = await from_address("127.0.0.2", n)  # straight to the node, not trusted
        await op.expect("* GET_NAME")
        await op.send("op")
        await op.expect("* op joined lobby")
        await op.send(f"/oper {OPER}")
        await op.expect("* you are now an operator")
        mallory = await proxied(n, ("192.0.2.66", 5000), b"mallory\n")
        await mallory.expect("* welcome mallory")
        bystander = await proxied(n, ("192.0.2.67", 5000), b"bystander\n")
        await bystander.expect("* welcome bystander")
        await op.send("/ban 192.0.2.66 10m")
        await op.expect("* banned 192.0.2.66 for 10m")
        assert (await mallory.expect("!")).startswith("! kicked: you were banned by op")
        await mallory.closed()
        back = await proxied(n, ("192.0.2.66", 5001))
        assert (await back.expect("!")).startswith("! banned: your address is banned")
        await bystander.send("/who")
        await bystander.expect("* bystander")  # still here: one address was banned, not the
        await op.send("/quit")                  # balancer's


async def test_no_header_or_a_bad_one_closes_without_a_word(
        fake_server: fakeredis.FakeServer) -> None:
    async with running_node(fake_server, proxy_from=("127.0.0.1",)) as n:
        plain = await from_address("127.0.0.1", n)
        await plain.send("alice")  # no header: the balancer must send one
        await plain.closed()
        assert plain.seen == []
        bad = await from_address("127.0.0.1", n)
        await bad.send(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 99999\r\nalice\n")
        await bad.closed()
        assert bad.seen == []
        assert n.stats.refused["proxy-header"] == 2
        assert not n.sessions and n.gate.limiter.total == 0


async def test_a_header_that_never_comes_is_timed_out(fake_server: fakeredis.FakeServer
                                                      ) -> None:
    async with running_node(fake_server, proxy_from=("127.0.0.1",), proxy_timeout=0.2) as n:
        silent = await from_address("127.0.0.1", n)
        await silent.send(b"PROXY TCP4 1.2.3.4")  # and then nothing
        await silent.closed()
        assert n.stats.refused["proxy-header"] == 1
        late = await from_address("127.0.0.1", n)  # the node still serves the balancer
        await late.send(encode_v1(("10.1.2.3", 9), ("127.0.0.1", port(n))) + b"late\n")
        await late.expect("* welcome late")


async def test_others_cannot_claim_an_address(fake_server: fakeredis.FakeServer) -> None:
    async with running_node(fake_server, proxy_from=("127.0.0.1",)) as n:
        sneaky = await from_address("127.0.0.3", n)
        await sneaky.expect("* GET_NAME")
        await sneaky.send(encode_v1(("10.9.9.9", 1), ("127.0.0.1", port(n))))  # CRLF
        assert (await sneaky.expect("!")).startswith("! bad-nick:")
        await sneaky.send("sneaky")
        await sneaky.expect("* welcome sneaky")
        assert session_of(n, "sneaky").host == "127.0.0.3"


async def test_a_local_header_keeps_the_balancers_address(
        fake_server: fakeredis.FakeServer) -> None:
    async with running_node(fake_server, proxy_from=("127.0.0.0/8",)) as n:
        check = await from_address("127.0.0.1", n)
        await check.send(encode_v2(None) + b"probe\n")
        await check.expect("* welcome probe")
        assert session_of(n, "probe").host == "127.0.0.1"


async def test_without_proxy_from_nothing_changes(fake_server: fakeredis.FakeServer) -> None:
    async with running_node(fake_server) as n:
        alice = await text_user(port(n), "alice")
        assert session_of(n, "alice").host == "127.0.0.1"
        await alice.send("/quit")
        await wait_until(lambda: not n.sessions)


def test_ipv4_mapped_peers_match_ipv4_networks() -> None:
    from node.gate import Gate
    from node.server import NodeStats

    gate = Gate(NodeConfig(node_id="n", proxy_from=("10.0.0.0/8",)), NodeStats())
    assert gate.trusted("10.1.2.3") and gate.trusted("::ffff:10.1.2.3")
    assert not gate.trusted("11.1.2.3") and not gate.trusted("") and not gate.trusted("?")
    assert not Gate(NodeConfig(node_id="n"), NodeStats()).trusted("10.1.2.3")


async def test_shutdown_closes_connections_still_waiting_for_their_header(
        fake_server: fakeredis.FakeServer) -> None:
    async with running_node(fake_server, proxy_from=("127.0.0.1",), proxy_timeout=30) as n:
        waiting = await from_address("127.0.0.1", n)  # and then nothing comes
        await wait_until(lambda: n.awaiting_header)
        n.stop()
        await waiting.closed()  # long before the 30 s header timeout
    assert not n.awaiting_header
