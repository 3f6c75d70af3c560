"""IRC as production runs it: ``hubbub node`` subprocesses on a real redis-server, scripted
IRC clients on two nodes, a text user and a JSON user on a third, and IRC over TLS."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import pytest
import trustme

from cli.cluster import free_port
from node.irccodec import parse
from node.tls import client_context

from ..helpers import json_user, text_user
from ..irchelpers import IrcClient, irc_user
from .procs import redis_server, start_node

pytestmark = pytest.mark.redis_server


async def test_irc_text_and_json_users_across_three_nodes(tmp_path: Path) -> None:
    motd = tmp_path / "motd.txt"
    motd.write_text("hello from the cluster\nsecond line\n")
    async with redis_server() as (url, _):
        irc_a, irc_b = free_port(), free_port()
        a, _port_a = await start_node(url, "na", "--irc-port", str(irc_a),
                                      "--irc-server-name", "irc.test", "--irc-motd-file",
                                      str(motd), "--oper-secret", "op-pass",
                                      "--irc-oper-name", "root")
        b, port_b = await start_node(url, "nb", "--irc-port", str(irc_b),
                                     "--irc-server-name", "irc.test")
        c, port_c = await start_node(url, "nc")
        try:
            # the welcome names one server; the MOTD comes from the file
            ann = await IrcClient.connect(irc_a)
            await ann.send("NICK ann")
            await ann.send("USER ann 0 * :Ann A")
            welcome = await ann.expect_msg("001", "ann")
            assert welcome.source == "irc.test"
            assert "on 1 servers" in (await ann.expect_msg("251")).params[-1]
            assert (await ann.expect_msg("372")).params[-1] == "- hello from the cluster"
            await ann.expect_msg("376")
            ann.nick = "ann"
            bob = await IrcClient.connect(irc_b)
            await bob.send("CAP LS 302")
            await bob.send("NICK bob")
            await bob.send("USER bob 0 * :Bob B")
            await bob.send("CAP REQ :echo-message server-time message-tags")
            await bob.send("CAP END")
            await bob.expect_msg("001", "bob")
            ted = await text_user(port_b, "ted")
            jay = await json_user(port_c, "jay")

            for irc in (ann, bob):
                await irc.send("JOIN #dev")
                await irc.expect_msg("366", irc.nick if irc is ann else "bob", "#dev")
            await ted.send("/join dev")
            await ted.expect("* ted joined dev")
            await jay.op("join", room="dev")
            await jay.event("join", nick="jay", room="dev")

            await ann.send("PRIVMSG #dev :from node a")
            heard = await bob.expect_msg("PRIVMSG", "#dev")
            assert heard.params[1] == "from node a" and heard.tag("msgid")
            assert heard.tag("time") is not None
            await ted.expect(lambda s: s.endswith("ann: from node a"))
            await jay.event("msg", text="from node a")
            await ted.send("/me waves")
            act = await ann.expect_msg("PRIVMSG", "#dev")
            assert act.params[1] == "\x01ACTION waves\x01"
            await jay.op("say", room="dev", text="json says hi")
            said = await bob.expect_msg("PRIVMSG", "#dev", "json says hi")
            assert (said.source or "").startswith("jay!")
            await bob.send("PRIVMSG #dev :echoed to me")
            echo = await bob.expect_msg("PRIVMSG", "#dev", "echoed to me")
            assert (echo.source or "").startswith("bob!")
            # a private message from node b to node a
            await bob.send("PRIVMSG ann :psst")
            pm = await ann.expect_msg("PRIVMSG", "ann")
            assert pm.params[1] == "psst"
            # the topic, nick change and quit travel too
            await ann.send("TOPIC #dev :ship it")
            await bob.expect_msg("TOPIC", "#dev", "ship it")
            await ted.expect("* ann set the topic of dev: ship it")
            await jay.event("topic", text="ship it")
            await bob.send("NICK Bobby")
            await ann.expect_msg("NICK", "Bobby")
            await jay.event("nick")
            # WHOIS of a user on the other node: one server, the node in the host
            await ann.send("WHOIS bobby")
            who = await ann.expect_msg("311")
            assert who.params[2:] == ("~bob", "nb.hubbub", "*", "Bob B")
            assert (await ann.expect_msg("312")).params[2] == "irc.test"
            # OPER and KILL across nodes
            await ann.send("OPER root op-pass")
            await ann.expect_msg("381")
            await ann.send("KILL Bobby :enough")
            await bob.expect_msg("ERROR")
            await bob.closed()
            await ann.expect_msg("QUIT", check=lambda m: (m.source or "").startswith("Bobby!"))
            await ted.send("/quit off home")
            quit_ = await ann.expect_msg("QUIT")
            assert (quit_.source or "").startswith("ted!") and "off home" in quit_.params[0]
        finally:
            for proc in (a, b, c):
                await proc.stop()


async def test_irc_over_tls(tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert_file, key_file, ca_file = tmp_path / "c.pem", tmp_path / "k.pem", tmp_path / "ca.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    ca.cert_pem.write_to_path(str(ca_file))
    async with redis_server() as (url, _):
        tls_port, plain_port = free_port(), free_port()
        node, _ = await start_node(url, "tls", "--tls-cert", str(cert_file), "--tls-key",
                                   str(key_file), "--tls-port", str(free_port()),
                                   "--irc-tls-port", str(tls_port), "--irc-port",
                                   str(plain_port))
        try:
            ctx: ssl.SSLContext = client_context(str(ca_file))
            reader, writer = await asyncio.open_connection("127.0.0.1", tls_port, ssl=ctx,
                                                           server_hostname="127.0.0.1")
            writer.write(b"NICK sec\r\nUSER s 0 * :Secure\r\n")
            await writer.drain()
            async with asyncio.timeout(10):
                while True:
                    line = (await reader.readline()).decode()
                    assert line, "closed"
                    if parse(line.rstrip("\r\n")).command == "001":
                        break
            writer.close()
            plain = await irc_user(plain_port, "plain")
            await plain.send("WHOIS sec")
            await plain.expect_msg("318")
        finally:
            await node.stop()
