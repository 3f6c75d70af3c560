"""IRC sessions over real TCP against in-process nodes on fakeredis: registration, the
core commands across nodes, and what text and JSON users of the same rooms see."""

from __future__ import annotations

import base64

import fakeredis

from node.irccodec import MAX_BODY_BYTES

from .helpers import json_user, text_user
from .irchelpers import IrcClient, irc_node, irc_port, irc_user


async def test_registration_burst_and_no_room(fake_server: fakeredis.FakeServer) -> None:
    async with irc_node(fake_server) as node:
        c = await IrcClient.connect(irc_port(node))
        await c.send("CAP LS 302")
        ls = await c.expect_msg("CAP", "*", "LS")
        assert "echo-message" in ls.params[-1].split()
        await c.send("NICK alice")
        await c.send("USER al 0 * :Alice Liddell")
        await c.send("CAP REQ :server-time")
        await c.expect_msg("CAP", "*", "ACK", "server-time")
        # nothing more until CAP END: registration is held
        assert [m.command for m in await c.sync("held")] == []
        await c.send("CAP END")
        burst = []
        while (msg := await c.msg()).command != "422":
            burst.append(msg)
        codes = [m.command for m in burst]
        assert codes[:5] == ["001", "002", "003", "004", "005"]
        assert burst[0].source == "hubbub" and burst[0].params[0] == "alice"
        assert burst[0].params[-1].endswith("alice!~al@n1.hubbub")
        assert "n1" in burst[1].params[-1]  # the node id, in text only
        isupport = burst[4].params
        for token in ("CASEMAPPING=ascii", "UTF8ONLY", "CHANTYPES=#", "NICKLEN=32"):
            assert token in isupport
        assert {"251", "255", "265", "266"} <= set(codes)
        assert "1 servers" in burst[codes.index("251")].params[-1]
        assert not any(m.command == "JOIN" for m in await c.sync())


async def test_commands_before_registration(fake_server: fakeredis.FakeServer) -> None:
    async with irc_node(fake_server) as node:
        c = await IrcClient.connect(irc_port(node))
        await c.send("JOIN #dev")
        assert (await c.msg()).command == "451"
        await c.send("PING :early")
        assert (await c.msg()).params == ("hubbub", "early")
        await c.send("NICK bad nick!")  # the second word is ignored: 'bad' is fine
        await c.send("NICK ***")
        assert (await c.msg()).command == "432"


async def test_nick_collision_across_nodes(fake_server: fakeredis.FakeServer) -> None:
    async with irc_node(fake_server, "n1") as n1, irc_node(fake_server, "n2") as n2:
        await irc_user(irc_port(n1), "alice")
        c = await IrcClient.connect(irc_port(n2))
        await c.send("NICK ALICE")
        await c.send("USER a 0 * :x")
        err = await c.expect_msg("433")
        assert err.params[:2] == ("*", "ALICE")
        await c.send("NICK alice2")
        await c.expect_msg("001", "alice2")


async def test_access_token(fake_server: fakeredis.FakeServer) -> None:
    async with irc_node(fake_server, auth="token", auth_token="sekrit") as node:
        await irc_user(irc_port(node), "good", password="sekrit")
        c = await IrcClient.connect(irc_port(node))
        await c.send("PASS wrong")
        await c.send("NICK bad")
        await c.send("USER b 0 * :b")
        await c.expect_msg("464")
        await c.expect_msg("ERROR")
        await c.closed()


async def test_rooms_messages_and_interop(fake_server: fakeredis.FakeServer) -> None:
    """An IRC user on n1, a text user on n2 and a JSON user on n3 in one room."""
    async with irc_node(fake_server, "n1") as n1, irc_node(fake_server, "n2") as n2, \
            irc_node(fake_server, "n3") as n3:
        irc = await irc_user(irc_port(n1), "ivy")
        assert n2.port is not None and n3.port is not None
        text = await text_user(n2.port, "tom")
        js = await json_user(n3.port, "jay")
        await irc.send("JOIN #Dev")
        await irc.expect_msg("JOIN", "#dev", check=lambda m: (m.source or "").startswith("ivy!"))
        names = await irc.expect_msg("353")
        assert names.params[1:3] == ("=", "#dev") and names.params[-1] == "@ivy"
        await irc.expect_msg("366", "ivy", "#dev")
        await text.send("/join dev")
        await text.expect("* tom joined dev")
        await js.op("join", room="dev")
        await js.event("join", nick="jay", room="dev")
        await irc.expect_msg("JOIN", "#dev", check=lambda m: (m.source or "").startswith("tom!"))
        await irc.expect_msg("JOIN", "#dev", check=lambda m: (m.source or "").startswith("jay!"))

        await irc.send("PRIVMSG #dev :hello from irc")
        await text.expect(lambda s: "ivy" in s and "hello from irc" in s)
        assert (await js.event("msg", text="hello from irc"))["from"] == "ivy"
        await irc.send("PRIVMSG #dev :\x01ACTION waves\x01")
        await js.event("msg", text="waves", action=True)
        await irc.send("PRIVMSG #dev :\x01VERSION\x01")  # other CTCPs are not relayed
        await text.send("/me nods")
        got = await irc.expect_msg("PRIVMSG", "#dev")
        assert got.source is not None and got.source.startswith("tom!")
        assert got.params[1] == "\x01ACTION nods\x01"
        await js.op("say", room="dev", text="json here")
        got = await irc.expect_msg("PRIVMSG", "#dev")
        assert got.params[1] == "json here" and (got.source or "").startswith("jay!")
        # private messages both ways
        await irc.send("PRIVMSG jay :psst")
        await js.event("pm", text="psst")
        await text.send("/msg ivy hi ivy")
        pm = await irc.expect_msg("PRIVMSG", "ivy")
        assert pm.params[1] == "hi ivy"
        # a nick change, a part with its reason, a quit with its reason
        await irc.send("NICK Ivy")
        await irc.expect_msg("NICK", "Ivy")
        await text.expect(lambda s: "ivy" in s and "Ivy" in s)
        await js.send('{"op":"nick","nick":"jay2"}')
        await irc.expect_msg("NICK", "jay2")
        await text.send("/part dev")
        part = await irc.expect_msg("PART", "#dev")
        assert (part.source or "").startswith("tom!")
        await irc.send("PART #dev :see you")
        part = await irc.expect_msg("PART", "#dev")
        assert part.params[-1] == "see you"
        await js.event("part", nick="Ivy")
        await irc.send("JOIN #dev")
        await irc.expect_msg("366")
        await js.op("quit", reason="gone home")
        quit_ = await irc.expect_msg("QUIT")
        assert (quit_.source or "").startswith("jay2!") and "gone home" in quit_.params[0]


async def test_errors_and_notice_silence(fake_server: fakeredis.FakeServer) -> None:
    async with irc_node(fake_server) as node:
        c = await irc_user(irc_port(node), "eve")
        await c.send("PRIVMSG nobody :x")
        assert (await c.msg()).params[:2] == ("eve", "nobody")
        await c.send("PRIVMSG #nowhere :x")
        err = await c.msg()
        assert err.command == "404" and err.params[1] == "#nowhere"
        await c.send("PRIVMSG #dev")
        assert (await c.msg()).command == "412"
        await c.send("NOTICE nobody :x")
        await c.send("NOTICE #nowhere :x")
        assert await c.sync() == []  # a NOTICE is never answered with an error
        await c.send("JOIN dev")
        assert (await c.msg()).command == "403"
        await c.send("JOIN #bad!name")
        assert (await c.msg()).command == "476"
        await c.send("PART #dev")
        assert (await c.msg()).command in ("403", "442")
        await c.send("FROB x")
        assert (await c.msg()).params[:2] == ("eve", "FROB")


async def test_line_limits_and_utf8(fake_server: fakeredis.FakeServer) -> None:
    async with irc_node(fake_server) as node:
        c = await irc_user(irc_port(node), "lim")
        await c.send("JOIN #lim")
        await c.expect_msg("366")
        await c.send("PRIVMSG #lim :" + "x" * MAX_BODY_BYTES)
        assert (await c.msg()).command == "417"
        await c.send(b"PRIVMSG #lim :caf\xe9\r\n")
        fail = await c.msg()
        assert fail.command == "FAIL" and fail.params[1] == "INVALID_UTF8"
        await c.send("PRIVMSG #lim :still here")
        assert await c.sync() == []


async def test_long_messages_are_split_not_cut(fake_server: fakeredis.FakeServer) -> None:
    async with irc_node(fake_server) as node:
        assert node.port is not None
        c = await irc_user(irc_port(node), "reader")
        await c.send("JOIN #lobby")
        await c.expect_msg("366")
        t = await text_user(node.port, "writer")
        words = " ".join(f"w{i}" for i in range(400))
        await t.send(words)
        got: list[str] = []
        while " ".join(got) != words:
            msg = await c.expect_msg("PRIVMSG", "#lobby")
            got.append(msg.params[1])
        assert len(got) > 1


async def test_echo_message_and_tags(fake_server: fakeredis.FakeServer) -> None:
    async with irc_node(fake_server) as node:
        a = await irc_user(irc_port(node), "echoer", caps="echo-message server-time message-tags")
        b = await irc_user(irc_port(node), "plain")
        for c in (a, b):
            await c.send("JOIN #e")
            await c.expect_msg("366")
        await a.send("PRIVMSG #e :mine")
        echoed = await a.expect_msg("PRIVMSG", "#e")
        assert echoed.tag("time") is not None and echoed.tag("msgid")
        heard = await b.expect_msg("PRIVMSG", "#e")
        assert heard.tags == () and heard.params[1] == "mine"
        await b.send("PRIVMSG #e :not echoed")
        await a.expect_msg("PRIVMSG", "#e", "not echoed")
        assert not any(m.command == "PRIVMSG" for m in await b.sync())
        await a.send("NOTICE plain :a notice")
        assert (await a.expect_msg("NOTICE", "plain")).params[1] == "a notice"
        assert (await b.expect_msg("NOTICE", "plain")).params[1] == "a notice"


async def test_queries(fake_server: fakeredis.FakeServer) -> None:
    async with irc_node(fake_server, "n1") as n1, irc_node(fake_server, "n2") as n2:
        a = await irc_user(irc_port(n1), "ann")
        b = await irc_user(irc_port(n2), "ben")
        await a.send("JOIN #q")
        await a.expect_msg("366")
        await b.send("WHOIS ann")
        assert (await b.expect_msg("311", "ben", "ann")).params[3] == "n1.hubbub"
        await b.expect_msg("318", "ben", "ann")
        await b.send("WHOIS nobody")
        await b.expect_msg("401", "ben", "nobody")
        await b.expect_msg("318")
        await b.send("LIST")
        row = await b.expect_msg("322")
        assert row.params[1:3] == ("#q", "1")
        await b.expect_msg("323")
        await b.send("NAMES #q")
        assert (await b.expect_msg("353")).params[-1] == "@ann"
        await b.send("WHO #q")
        assert (await b.expect_msg("352")).params[5] == "ann"
        await b.expect_msg("315", "ben", "#q")
        await b.send("LUSERS")
        assert "2 users" in (await b.expect_msg("251")).params[-1]
        await b.send("NICK BEN")  # a change of case only
        await b.expect_msg("NICK", "BEN")


async def test_oper_and_kill(fake_server: fakeredis.FakeServer) -> None:
    async with irc_node(fake_server, oper_secret="opsecret") as node:
        op = await irc_user(irc_port(node), "op")
        victim = await irc_user(irc_port(node), "victim")
        await op.send("KILL victim :bye")
        assert (await op.msg()).command == "481"
        await op.send("OPER op wrong")
        assert (await op.msg()).command == "464"
        await op.send("OPER op opsecret")
        await op.expect_msg("381")
        await op.send("KILL victim :spamming")
        await victim.expect_msg("ERROR")
        await victim.closed()


async def test_sasl_plain(fake_server: fakeredis.FakeServer) -> None:
    async with irc_node(fake_server, auth="accounts", min_password=6) as node:
        c = await irc_user(irc_port(node), "acct", caps="draft/account-registration")
        await c.send("REGISTER * * sesame")
        await c.expect_msg("REGISTER", "SUCCESS", "acct")
        await c.send("QUIT")
        await c.closed()
        again = await irc_user(irc_port(node), "acct", sasl=("acct", "sesame"))
        await again.send("WHOIS acct")
        await again.expect_msg("330")
        bad = await IrcClient.connect(irc_port(node))
        await bad.send("CAP REQ :sasl")
        await bad.send("AUTHENTICATE PLAIN")
        await bad.expect_msg("AUTHENTICATE")
        await bad.send("AUTHENTICATE " + "YWNjdABhY2N0AHdyb25n")  # acct / wrong
        await bad.expect_msg("904")
        # without SASL the registered name is refused
        nosasl = await IrcClient.connect(irc_port(node))
        await nosasl.send("NICK acct")
        await nosasl.send("USER a 0 * :a")
        assert (await nosasl.msg()).command == "433"


async def test_quit_reason_reaches_irc(fake_server: fakeredis.FakeServer) -> None:
    async with irc_node(fake_server) as node:
        a = await irc_user(irc_port(node), "stay")
        b = await irc_user(irc_port(node), "leave")
        for c in (a, b):
            await c.send("JOIN #x")
            await c.expect_msg("366")
        await b.send("QUIT :off to bed")
        err = await b.expect_msg("ERROR")
        assert "off to bed" in err.params[0]
        quit_ = await a.expect_msg("QUIT")
        assert quit_.params[0] == "Quit: off to bed"


async def test_topic_is_cluster_wide(fake_server: fakeredis.FakeServer) -> None:
    async with irc_node(fake_server, "n1") as n1, irc_node(fake_server, "n2") as n2:
        assert n2.port is not None
        a = await irc_user(irc_port(n1), "setter")
        await a.send("TOPIC #t")
        assert (await a.msg()).command == "403"  # nobody is in it
        await a.send("JOIN #t")
        await a.expect_msg("366")
        await a.send("TOPIC #t")
        await a.expect_msg("331", "setter", "#t")
        js = await json_user(n2.port, "watcher")
        await js.op("join", room="t")
        await js.event("join", nick="watcher", room="t")
        text = await text_user(n2.port, "reader")
        await text.send("/join t")
        await text.expect("* reader joined t")
        await a.send("TOPIC #t :release on friday")
        got = await a.expect_msg("TOPIC", "#t")
        assert got.params[1] == "release on friday" and (got.source or "").startswith("setter!")
        await js.event("topic", room="t", nick="setter", text="release on friday")
        await text.expect("* setter set the topic of t: release on friday")
        late = await irc_user(irc_port(n2), "late")
        await late.send("JOIN #t")
        assert (await late.expect_msg("332", "late", "#t")).params[2] == "release on friday"
        assert (await late.expect_msg("333", "late", "#t")).params[2].startswith("setter!")
        await late.send("TOPIC #t :")
        await a.expect_msg("TOPIC", "#t", "")
        await late.send("TOPIC #t")
        await late.expect_msg("331")


async def test_who_masks_and_user_names(fake_server: fakeredis.FakeServer) -> None:
    async with irc_node(fake_server, "n1") as n1, irc_node(fake_server, "n2") as n2:
        a = await IrcClient.connect(irc_port(n1))
        await a.send("NICK coolNick")
        await a.send("USER myuser 0 * :My Real Name")
        await a.expect_msg("422")
        b = await irc_user(irc_port(n2), "other")
        for c in (a, b):
            await c.send("JOIN #w")
            await c.expect_msg("366")
        for mask in ("coolNick", "COOLNICK", "cool*"):
            await b.send(f"WHO {mask}")
            reply = await b.expect_msg("352")
            assert reply.params[1:8] == ("*", "~myuser", "n1.hubbub", "hubbub", "coolNick",
                                         "H", "0 My Real Name")
            await b.expect_msg("315", "other", mask)
        await b.send("WHOIS coolnick")
        assert (await b.expect_msg("311")).params[2:] == ("~myuser", "n1.hubbub", "*",
                                                           "My Real Name")
        await b.send("WHO *")
        replies = [m for m in await b.sync() if m.command == "352"]
        assert sorted(r.params[5] for r in replies) == ["coolNick", "other"]


async def test_first_joiner_is_operator_and_away(fake_server: fakeredis.FakeServer) -> None:
    async with irc_node(fake_server, "n1") as n1, irc_node(fake_server, "n2") as n2:
        a = await irc_user(irc_port(n1), "first")
        b = await irc_user(irc_port(n2), "second")
        await a.send("JOIN #ops")
        assert (await a.expect_msg("353")).params[-1] == "@first"
        await b.send("JOIN #ops")
        assert (await b.expect_msg("353")).params[-1] == "@first second"
        await a.send("AWAY :lunch")
        await a.expect_msg("306")
        await b.send("WHO #ops")
        flags = {m.params[5]: m.params[6] for m in await b.sync() if m.command == "352"}
        assert flags == {"first": "G@", "second": "H"}
        await b.send("WHOIS first")
        assert (await b.expect_msg("319")).params[-1] == "@#ops"
        assert (await b.expect_msg("301")).params[-1] == "lunch"
        await a.send("NICK First2")
        await a.expect_msg("NICK", "First2")
        await a.sync()  # its operator status moved with it
        await b.send("NAMES #ops")
        assert (await b.expect_msg("353")).params[-1] == "@First2 second"
        await a.send("PART #ops")
        await a.expect_msg("PART")
        await b.send("NAMES #ops")
        assert (await b.expect_msg("353")).params[-1] == "second"


async def test_irc_port_takes_proxy_headers_from_the_load_balancer(
        fake_server: fakeredis.FakeServer) -> None:
    async with irc_node(fake_server, proxy_from=("127.0.0.1",)) as node:
        c = await IrcClient.connect(irc_port(node))
        await c.send(b"PROXY TCP4 203.0.113.7 127.0.0.1 40000 6667\r\n")
        await c.send("NICK proxied")
        await c.send("USER p 0 * :P")
        await c.expect_msg("001", "proxied")
        [session] = [s for s in node.sessions if s.user.nick == "proxied"]
        assert session.user.host == "203.0.113.7"


async def test_client_only_tags_ride_the_bus(fake_server: fakeredis.FakeServer) -> None:
    async with irc_node(fake_server, "n1") as n1, irc_node(fake_server, "n2") as n2:
        alice = await irc_user(irc_port(n1), "alice", caps="message-tags")
        bob = await irc_user(irc_port(n2), "bob", caps="message-tags")
        carol = await irc_user(irc_port(n2), "carol")
        for c in (alice, bob, carol):
            await c.send("JOIN #tags")
            await c.expect_msg("366")
        await alice.send("@+baz=bat;fizz=buzz PRIVMSG #tags :hi")
        got = await bob.expect_msg("PRIVMSG", "#tags", "hi")
        assert got.tag("+baz") == "bat" and got.tag("fizz") is None and got.tag("msgid")
        assert (await carol.expect_msg("PRIVMSG", "#tags", "hi")).tags == ()
        await alice.send("@+secret=1 PRIVMSG bob :direct")
        assert (await bob.expect_msg("PRIVMSG", "bob", "direct")).tag("+secret") == "1"


async def test_away_answers_private_messages_and_bans_close(
        fake_server: fakeredis.FakeServer) -> None:
    async with irc_node(fake_server, oper_secret="s3cret") as node:
        a = await irc_user(irc_port(node), "idle")
        b = await irc_user(irc_port(node), "talker")
        await a.send("AWAY :gone fishing")
        await a.expect_msg("306")
        await b.send("PRIVMSG idle :you there?")
        assert (await b.expect_msg("301", "talker", "idle")).params[-1] == "gone fishing"
        await a.send("AWAY")
        await a.expect_msg("305")
        assert node.port is not None
        op = await text_user(node.port, "op")
        await op.send("/oper s3cret")
        await op.expect("* you are now an operator")
        await op.send("/ban 127.0.0.1 10m spam")
        await a.expect_msg("ERROR")
        again = await IrcClient.connect(irc_port(node))
        assert (await again.msg()).command == "465"
        await again.expect_msg("ERROR")
        await again.closed()


async def test_small_queries_and_long_sasl(fake_server: fakeredis.FakeServer) -> None:
    async with irc_node(fake_server, auth="accounts", min_password=6) as node:
        a = await irc_user(irc_port(node), "longpw", caps="draft/account-registration")
        await a.send("REGISTER * * " + "bar" * 150)
        await a.expect_msg("REGISTER", "SUCCESS")
        await a.send("USERHOST longpw nobody")
        assert (await a.expect_msg("302")).params[-1] == "longpw=+~longpw@n1.hubbub"
        await a.send("TIME")
        assert (await a.msg()).command == "391"
        await a.send("INFO")
        await a.expect_msg("374")
        await a.send("QUIT")
        await a.closed()
        # a SASL payload over 400 bytes comes in pieces
        blob = base64.b64encode(b"longpw\0longpw\0" + b"bar" * 150).decode()
        assert len(blob) > 400
        c = await IrcClient.connect(irc_port(node))
        await c.send("CAP REQ :sasl")
        await c.send("AUTHENTICATE PLAIN")
        await c.expect_msg("AUTHENTICATE", "+")
        for i in range(0, len(blob), 400):
            await c.send(f"AUTHENTICATE {blob[i:i + 400]}")
        if len(blob) % 400 == 0:
            await c.send("AUTHENTICATE +")
        await c.expect_msg("903")


async def test_sasl_login_registers_the_account_name(fake_server: fakeredis.FakeServer) -> None:
    """The account is the nick: NICK asks for another name, 001 gives the account's."""
    async with irc_node(fake_server, auth="accounts", min_password=6) as node:
        a = await irc_user(irc_port(node), "val", caps="draft/account-registration")
        await a.send("REGISTER * * sesame")
        await a.expect_msg("REGISTER", "SUCCESS")
        await a.send("QUIT")
        await a.closed()
        c = await IrcClient.connect(irc_port(node))
        await c.send("CAP REQ :sasl")
        await c.send("AUTHENTICATE PLAIN")
        await c.expect_msg("AUTHENTICATE", "+")
        await c.send("AUTHENTICATE " + base64.b64encode(b"val\0val\0sesame").decode())
        await c.expect_msg("903")
        await c.send("NICK other")
        await c.send("USER u 0 * :U")
        await c.send("CAP END")
        await c.expect_msg("001", "val")


async def test_channel_mode_lists_are_empty_and_setting_modes_is_refused(
        fake_server: fakeredis.FakeServer) -> None:
    """irssi asks for a channel's ban list on every join: the list is empty (bans are
    cluster-wide), not a 'not channel operator' error."""
    async with irc_node(fake_server) as node:
        a = await irc_user(irc_port(node), "ann")
        await a.send("JOIN #dev")
        await a.expect_msg("366")
        for query, end in (("b", "368"), ("+b", "368"), ("e", "349"), ("I", "347")):
            await a.send(f"MODE #dev {query}")
            assert (await a.msg()).command == end
        await a.send("MODE #dev")
        assert (await a.msg()).params[1:] == ("#dev", "+")
        await a.send("MODE #dev +t")
        assert (await a.msg()).command == "482"
        await a.send("MODE #dev +b someone")
        assert (await a.msg()).command == "482"
