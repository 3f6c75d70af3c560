"""TLS on the chat port: chat across nodes, the client's verification, and the handshake's
bounds (plaintext on a TLS port, a stalled handshake) with no descriptor left behind."""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import fakeredis
import pytest
import trustme

from cli.client.script import query, say_once
from cli.client.state import Address
from cli.cluster import free_port
from node.config import NodeConfig
from node.server import ChatNode
from node.tls import client_context

from .helpers import JsonClient, json_user, running_node, text_user


@dataclass(frozen=True)
class Certs:
    cert: str
    key: str
    ca: str
    """PEM file of the CA that signed ``cert`` (for the clients)."""


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    """A throwaway CA and a server certificate for localhost and 127.0.0.1."""
    ca = trustme.CA()
    server = ca.issue_cert("localhost", "127.0.0.1")
    where: Path = tmp_path_factory.mktemp("tls")
    cert, key, ca_file = where / "cert.pem", where / "key.pem", where / "ca.pem"
    server.private_key_and_cert_chain_pem.write_to_path(str(cert))
    server.private_key_pem.write_to_path(str(key))
    ca.cert_pem.write_to_path(str(ca_file))
    return Certs(str(cert), str(key), str(ca_file))


def tls_node(server: fakeredis.FakeServer, certs: Certs, node_id: str = "n1",
             **overrides: object) -> contextlib.AbstractAsyncContextManager[ChatNode]:
    return running_node(server, node_id, tls_cert=certs.cert, tls_key=certs.key, **overrides)


async def tls_user(port: int, nick: str, certs: Certs) -> JsonClient:
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=client_context(certs.ca), server_hostname="127.0.0.1")
    c = JsonClient(reader, writer)
    await c.op("hello", nick=nick)
    await c.event("welcome")
    await c.event("join", nick=nick, room="lobby")
    return c


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_tls_options_are_checked() -> None:
    with pytest.raises(ValueError, match="both a certificate and a key"):
        NodeConfig(node_id="x", tls_cert="c.pem")
    with pytest.raises(ValueError, match="TLS port needs"):
        NodeConfig(node_id="x", tls_port=5443)
    with pytest.raises(ValueError, match="handshake timeout"):
        NodeConfig(node_id="x", tls_cert="c", tls_key="k", tls_handshake_timeout=0)


def test_contexts_refuse_anything_older_than_tls_1_2(certs: Certs) -> None:
    from node.tls import server_context

    assert server_context(certs.cert, certs.key).minimum_version == ssl.TLSVersion.TLSv1_2
    client = client_context(certs.ca)
    assert client.minimum_version == ssl.TLSVersion.TLSv1_2
    assert client.verify_mode == ssl.CERT_REQUIRED and client.check_hostname


async def test_chat_over_tls_across_two_nodes(fake_server: fakeredis.FakeServer,
                                              certs: Certs) -> None:
    async with tls_node(fake_server, certs, "n1") as a, tls_node(fake_server, certs, "n2") as b:
        assert a.tls_port == a.port and b.tls_port == b.port
        alice = await tls_user(a.port or 0, "alice", certs)
        bob = await tls_user(b.port or 0, "bob", certs)
        await alice.event("join", nick="bob")
        await alice.op("say", text="over tls", ref=1)
        got = await bob.event("msg")
        assert (got["from"], got["text"]) == ("alice", "over tls")
        # the hubbub client verifies the node against the given CA
        addr = [Address("127.0.0.1", b.port or 0)]
        assert await say_once(addr, "carol", "lobby", "hi from the client",
                              tls=client_context(certs.ca)) == 0
        assert (await alice.event("msg", text="hi from the client"))["from"] == "carol"
        who = await query(addr, {"op": "who", "room": "lobby"}, tls=client_context(certs.ca))
        assert set(who["nicks"]) >= {"alice", "bob"}


async def test_client_refuses_a_node_it_cannot_verify(fake_server: fakeredis.FakeServer,
                                                      certs: Certs,
                                                      capsys: pytest.CaptureFixture[str]
                                                      ) -> None:
    other_ca = trustme.CA()
    with contextlib.ExitStack() as stack:
        ca_file = stack.enter_context(other_ca.cert_pem.tempfile())
        async with tls_node(fake_server, certs) as node:
            addr = [Address("127.0.0.1", node.port or 0)]
            assert await say_once(addr, "mallory", "lobby", "x",
                                  tls=client_context(ca_file)) == 1
            assert node.stats.connections == 0
    assert "tls-unverified" in capsys.readouterr().err


async def test_extra_tls_port_keeps_the_chat_port_plaintext(
        fake_server: fakeredis.FakeServer, certs: Certs) -> None:
    async with tls_node(fake_server, certs, tls_port=free_port()) as node:
        assert node.tls_port is not None and node.tls_port != node.port
        plain = await text_user(node.port or 0, "plain")
        secure = await tls_user(node.tls_port, "secure", certs)
        await plain.expect("* secure joined lobby")
        await secure.op("say", text="from tls to plaintext", ref=1)
        assert await plain.expect("[lobby]") == "[lobby] secure: from tls to plaintext"


async def _closed_by_server(reader: asyncio.StreamReader, timeout: float) -> None:
    async with asyncio.timeout(timeout):
        while await reader.read(65536):
            pass


@contextlib.asynccontextmanager
async def raw_connection(port: int) -> AsyncIterator[tuple[asyncio.StreamReader,
                                                             asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await writer.wait_closed()


async def test_plaintext_on_the_tls_port_is_closed_without_a_session(
        fake_server: fakeredis.FakeServer, certs: Certs) -> None:
    async with tls_node(fake_server, certs, tls_handshake_timeout=30.0) as node:
        before = open_fds()
        async with raw_connection(node.port or 0) as (reader, writer):
            writer.write(b'{"op":"hello","nick":"plain"}\n')
            await _closed_by_server(reader, timeout=5.0)  # long before the 30 s timeout
        assert open_fds() == before
        assert node.stats.connections == 0 and not node.sessions


async def test_a_stalled_handshake_is_dropped_within_the_timeout(
        fake_server: fakeredis.FakeServer, certs: Certs) -> None:
    async with tls_node(fake_server, certs, tls_handshake_timeout=0.3) as node:
        before = open_fds()
        loop = asyncio.get_running_loop()
        async with raw_connection(node.port or 0) as (reader, _):
            start = loop.time()
            await _closed_by_server(reader, timeout=5.0)  # sends nothing at all
            waited = loop.time() - start
        assert 0.2 < waited < 2.0
        assert open_fds() == before  # the server's socket is gone, and ours
        assert node.stats.connections == 0 and not node.sessions
        # the node still serves TLS clients afterwards
        await tls_user(node.port or 0, "after", certs)


async def test_a_stalled_half_handshake_is_dropped_too(
        fake_server: fakeredis.FakeServer, certs: Certs) -> None:
    """A client that sends its ClientHello and then stops answering."""
    async with tls_node(fake_server, certs, tls_handshake_timeout=0.3) as node:
        before = open_fds()
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = client_context(certs.ca).wrap_bio(incoming, outgoing,
                                                server_hostname="127.0.0.1")
        with contextlib.suppress(ssl.SSLWantReadError):
            tls.do_handshake()
        async with raw_connection(node.port or 0) as (reader, writer):
            writer.write(outgoing.read())  # the ClientHello, then silence
            await _closed_by_server(reader, timeout=5.0)
        assert open_fds() == before
        assert node.stats.connections == 0


async def test_json_user_helper_cannot_reach_a_tls_port(
        fake_server: fakeredis.FakeServer, certs: Certs) -> None:
    async with tls_node(fake_server, certs) as node:
        with pytest.raises((EOFError, ConnectionError)):
            await json_user(node.port or 0, "plain")


async def test_hubbub_say_with_ca_and_tls_flags(fake_server: fakeredis.FakeServer,
                                                certs: Certs) -> None:
    """The command line: ``--ca FILE`` trusts that CA; ``--tls`` alone trusts the system's
    CAs, which do not know this test CA, so the node is refused."""
    from typer.testing import CliRunner

    from cli.main import app

    runner = CliRunner()
    async with tls_node(fake_server, certs) as node:
        listener = await tls_user(node.port or 0, "listener", certs)
        where = f"127.0.0.1:{node.port}"
        ok = await asyncio.to_thread(runner.invoke, app, [
            "say", "--node", where, "--ca", certs.ca, "--nick", "dave", "via the cli"])
        assert ok.exit_code == 0, ok.output
        assert (await listener.event("msg", text="via the cli"))["from"] == "dave"
        refused = await asyncio.to_thread(runner.invoke, app, [
            "say", "--node", where, "--tls", "--nick", "erin", "never"])
        assert refused.exit_code == 1
        assert "tls-unverified" in refused.output


def test_a_node_refuses_to_start_on_files_it_cannot_load(tmp_path: Path, certs: Certs) -> None:
    from typer.testing import CliRunner

    from cli.main import app

    missing = str(tmp_path / "missing.pem")
    result = CliRunner().invoke(app, ["node", "--tls-cert", missing, "--tls-key", missing])
    assert result.exit_code == 2
    assert "cannot load the TLS certificate or key" in result.output
    assert "(--tls-cert / HUBBUB_TLS_CERT, --tls-key / HUBBUB_TLS_KEY)" in result.output
    # a certificate with another key
    other = trustme.CA().issue_cert("localhost")
    other_key = tmp_path / "other-key.pem"
    other.private_key_pem.write_to_path(str(other_key))
    result = CliRunner().invoke(app, ["node", "--tls-cert", certs.cert,
                                      "--tls-key", str(other_key)])
    assert result.exit_code == 2 and "cannot load" in result.output
