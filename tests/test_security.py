"""Authentication, accounts and operators: nodes on one fakeredis, real TCP clients."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator
from typing import Any

import fakeredis
import pytest
from structlog.testing import capture_logs

from node.errors import AuthBusy, AuthThrottled
from node.keys import Keys
from node.security import Hasher
from node.server import ChatNode
from node.stores import Throttle

from .helpers import (
    JsonClient,
    LineClient,
    json_user,
    node_config,
    register_account,
    registered_user,
    running_node,
    text_user,
    wait_until,
)

pytestmark = pytest.mark.timeout(30)

TOKEN = "s3cret-token-for-tests"
OPER = "oper-secret-for-tests"


@contextlib.asynccontextmanager
async def two_nodes(server: fakeredis.FakeServer, **overrides: Any
                    ) -> AsyncIterator[tuple[ChatNode, ChatNode]]:
    async with running_node(server, "n1", **overrides) as a, \
            running_node(server, "n2", **overrides) as b:
        yield a, b


def port(node: ChatNode) -> int:
    assert node.port is not None
    return node.port


async def connect_from(source: str, to_port: int) -> LineClient:
    """A client whose address is ``source`` (any 127.x.y.z works on Linux loopback)."""
    return await LineClient.connect(to_port, source=source)


async def text_oper(to_port: int, nick: str, source: str = "127.0.0.2") -> LineClient:
    c = await connect_from(source, to_port)
    await c.expect("* GET_NAME")
    await c.send(nick)
    await c.expect(f"* {nick} joined lobby")
    await c.send(f"/oper {OPER}")
    await c.expect("* you are now an operator")
    return c


# --------------------------------------------------------------------------- token mode


async def test_token_mode_text_needs_the_token_first(fake_server: fakeredis.FakeServer) -> None:
    async with running_node(fake_server, auth="token", auth_token=TOKEN) as n:
        c = await LineClient.connect(port(n))
        await c.expect("* GET_NAME")
        await c.send("alice")
        assert (await c.expect("!")).startswith("! auth-required:")
        await c.send("/auth wrong-token")
        assert await c.expect("!") == "! auth-failed: wrong access token"
        await c.send(f"/auth {TOKEN}")
        await c.expect("* access token accepted")
        await c.expect("* GET_NAME")
        await c.send("alice")
        await c.expect("* welcome alice")


async def test_token_mode_json_hello_secret(fake_server: fakeredis.FakeServer) -> None:
    async with running_node(fake_server, auth="token", auth_token=TOKEN) as n:
        c = await JsonClient.connect(port(n))
        await c.op("who", room="lobby", ref=1)
        assert (await c.event("error", ref=1))["code"] == "auth-required"
        await c.op("hello", nick="alice", secret="nope", ref=2)
        assert (await c.event("error", ref=2))["code"] == "auth-failed"
        await c.op("hello", nick="alice", ref=3)
        assert (await c.event("error", ref=3))["code"] == "auth-required"
        await c.op("hello", nick="alice", secret=TOKEN, ref=4)
        assert (await c.event("welcome"))["nick"] == "alice"
        await c.event("ack", ref=4)


async def test_wrong_tokens_are_throttled_per_address(fake_server: fakeredis.FakeServer
                                                      ) -> None:
    async with running_node(fake_server, auth="token", auth_token=TOKEN,
                            login_fails_per_ip=2) as n:
        c = await JsonClient.connect(port(n))
        for ref in (1, 2):
            await c.op("auth", secret="bad", ref=ref)
            assert (await c.event("error", ref=ref))["code"] == "auth-failed"
        await c.op("auth", secret=TOKEN, ref=3)  # even the right one: refused unchecked
        error = await c.event("error", ref=3)
        assert error["code"] == "auth-throttled" and "try again in" in error["text"]
        other = await connect_from("127.0.0.3", port(n))  # another address is not slowed
        await other.send(f"/auth {TOKEN}")
        await other.expect("* access token accepted")


# --------------------------------------------------------------------------- accounts


async def test_register_then_name_needs_login_on_another_node(
        fake_server: fakeredis.FakeServer) -> None:
    async with two_nodes(fake_server, auth="accounts") as (a, b):
        alice = await text_user(port(a), "alice")
        await alice.send("/register short")
        assert (await alice.expect("!")).startswith("! bad-args: a password needs at least 8")
        await alice.send("/register correct horse")
        await alice.expect("* alice is now registered")
        await alice.send("/quit")
        await alice.closed()

        guest = await LineClient.connect(port(b))
        await guest.expect("* GET_NAME")
        await guest.send("ALICE")  # the same name, folded
        assert (await guest.expect("!")).startswith("! login-required: alice is a registered")
        await guest.expect("* GET_NAME")  # nothing lost: the connection asks again
        await guest.send("/login alice wrong password")
        assert await guest.expect("!") == "! auth-failed: wrong password for alice"
        await guest.send("/login alice correct horse")
        await guest.expect("* welcome alice")

        # she is online on b; a login with her password elsewhere takes the name over
        j = await JsonClient.connect(port(a))
        await j.op("hello", nick="alice", password="wrong password", ref=1)
        assert (await j.event("error", ref=1))["code"] == "auth-failed"
        await j.op("hello", nick="alice", password="correct horse", ref=2)
        assert (await j.event("welcome"))["nick"] == "alice"
        assert await guest.expect("!") == ("! nick-lost: alice logged in from another "
                                           "connection with its password; this one is closed")
        await guest.closed()


async def test_a_logged_in_user_changes_the_password(fake_server: fakeredis.FakeServer
                                                      ) -> None:
    async with running_node(fake_server, auth="accounts") as n:
        guest = await text_user(port(n), "guest")
        await guest.send("/password whatever-it-is")  # no account: nothing to change
        assert (await guest.expect("!")).startswith("! login-required: you are not logged in")
        alice = await registered_user(port(n), "alice", "first-password")
        await alice.send("/password short")
        assert (await alice.expect("!")).startswith("! bad-args: a password needs at least 8")
        await alice.send("/password second password")
        await alice.expect("* the password of alice is changed")
        await alice.send("/quit")
        await alice.closed()
        back = await LineClient.connect(port(n))
        await back.expect("* GET_NAME")
        await back.send("/login alice first-password")
        assert await back.expect("!") == "! auth-failed: wrong password for alice"
        await back.send("/login alice second password")
        await back.expect("* welcome alice")
        j = await json_user(port(n), "bob")
        await j.op("register", password="bobs-first", ref=1)
        await j.event("ack", ref=1)
        await j.op("password", password="bobs-second", ref=2)
        await j.event("ack", ref=2)
        stored = await n.security.accounts.get("bob")
        assert stored is not None and stored.name == "bob"
        assert await n.security.hasher.verify(stored.hash, "bobs-second")


async def test_password_is_refused_without_accounts(fake_server: fakeredis.FakeServer) -> None:
    async with running_node(fake_server) as n:
        alice = await text_user(port(n), "alice")
        await alice.send("/password something-long")
        assert (await alice.expect("!")).startswith("! not-enabled:")


async def test_json_login_and_guest_names(fake_server: fakeredis.FakeServer) -> None:
    async with running_node(fake_server, auth="accounts") as n:
        bob = await json_user(port(n), "bob")  # guests keep unregistered names
        await bob.op("register", password="pa55word!", ref="r")
        await bob.event("ack", ref="r")
        await bob.op("quit")
        await bob.closed()
        c = await JsonClient.connect(port(n))
        await c.op("hello", nick="bob", ref=1)
        assert (await c.event("error", ref=1))["code"] == "login-required"
        await c.op("hello", nick="nobody", password="whatever", ref=2)
        assert (await c.event("error", ref=2))["code"] == "no-such-account"
        await c.op("hello", nick="bob", password="pa55word!", ref=3)
        welcome = await c.event("welcome")
        assert welcome["nick"] == "bob"


async def test_nick_to_a_registered_name_needs_its_login(fake_server: fakeredis.FakeServer
                                                         ) -> None:
    async with running_node(fake_server, auth="accounts") as n:
        alice = await registered_user(port(n), "alice", "alice-password")
        await alice.send("/nick alice2")
        await alice.expect("* alice is now alice2")
        mallory = await text_user(port(n), "mallory")
        await alice.send("/nick alice")  # her own account: no password needed again
        await alice.expect("* alice2 is now alice")
        await alice.send("/nick alice3")
        await alice.expect("* alice is now alice3")
        await mallory.send("/nick alice")
        assert (await mallory.expect("!")).startswith("! login-required:")
        await mallory.send("/login alice alice-password")  # renames to it
        await mallory.expect("* mallory is now alice")
        await mallory.expect("* you are logged in as alice")


async def test_failed_logins_are_throttled_per_name_cluster_wide(
        fake_server: fakeredis.FakeServer) -> None:
    async with two_nodes(fake_server, auth="accounts", login_fails_per_name=2,
                         login_fails_per_ip=100) as (a, b):
        owner = await json_user(port(a), "carol")
        await owner.op("register", password="carols-password", ref=1)
        await owner.event("ack", ref=1)
        await owner.op("quit")
        await owner.closed()
        c1 = await JsonClient.connect(port(a))
        c2 = await JsonClient.connect(port(b))
        await c1.op("hello", nick="carol", password="guess-1", ref=1)
        assert (await c1.event("error", ref=1))["code"] == "auth-failed"
        await c2.op("hello", nick="carol", password="guess-2", ref=2)
        assert (await c2.event("error", ref=2))["code"] == "auth-failed"
        # the cap is cluster-wide: the third try, right or wrong, on either node, waits
        await c1.op("hello", nick="carol", password="carols-password", ref=3)
        assert (await c1.event("error", ref=3))["code"] == "auth-throttled"
        # a brute force on one name slows nobody else
        dave = await json_user(port(b), "dave")
        await dave.op("say", text="still here", ref="s")
        await dave.event("ack", ref="s")
        metrics = b.http._metrics.render().decode()
        assert 'hubbub_auth_refusals_total{reason="failed"} 1.0' in metrics
        assert 'hubbub_auth_refusals_total{reason="throttled"} 0.0' in metrics
        assert 'hubbub_auth_refusals_total{reason="throttled"} 1.0' in \
            a.http._metrics.render().decode()


async def test_concurrent_guesses_cannot_slip_past_the_cap(fake_server: fakeredis.FakeServer
                                                           ) -> None:
    redis = fakeredis.FakeAsyncRedis(server=fake_server)
    throttle = Throttle(redis, Keys(), node_config("t", login_fails_per_name=3,
                                                   login_fails_per_ip=0))
    results = await asyncio.gather(*(throttle.charge("eve", "10.0.0.1") for _ in range(10)),
                                   return_exceptions=True)
    assert sum(r is None for r in results) == 3
    assert all(isinstance(r, AuthThrottled) for r in results if r is not None)
    await throttle.refund("eve", "10.0.0.1")  # a success gives its attempt back
    await throttle.charge("eve", "10.0.0.1")
    await redis.aclose()


async def test_hashing_is_bounded_and_refuses_beyond_its_queue() -> None:
    hasher = Hasher(concurrency=1, queue=1)
    gate = threading.Event()
    try:
        first = asyncio.ensure_future(hasher._run(gate.wait))
        second = asyncio.ensure_future(hasher._run(gate.wait))
        await asyncio.sleep(0)
        with pytest.raises(AuthBusy):
            await hasher.hash("third")
        gate.set()
        await asyncio.gather(first, second)
        encoded = await hasher.hash("correct")
        assert encoded.startswith("$argon2id$")
        assert await hasher.verify(encoded, "correct")
        assert not await hasher.verify(encoded, "wrong")
        assert not await hasher.verify("not a hash", "x")
    finally:
        gate.set()
        hasher.close()


# --------------------------------------------------------------------------- operators


async def test_only_operators_operate(fake_server: fakeredis.FakeServer) -> None:
    async with running_node(fake_server, oper_secret=OPER) as n:
        bob = await text_user(port(n), "bob")
        await bob.send("/kick alice")
        assert (await bob.expect("!")).startswith("! not-operator:")
        await bob.send("/oper not-it")
        assert await bob.expect("!") == "! auth-failed: wrong operator secret"
        await bob.send("/bans")
        assert (await bob.expect("!")).startswith("! not-operator:")
    async with running_node(fake_server, "n9") as n:  # no operator secret configured
        c = await text_user(port(n), "zed")
        await c.send(f"/oper {OPER}")
        assert (await c.expect("!")).startswith("! not-enabled:")


async def test_kick_reaches_the_user_on_another_node_and_is_audited(
        fake_server: fakeredis.FakeServer) -> None:
    async with two_nodes(fake_server, oper_secret=OPER) as (a, b):
        with capture_logs() as logs:
            op = await text_oper(port(a), "op")
            bob = await text_user(port(b), "bob")
            await op.expect("* bob joined lobby")
            await op.send("/kick bob spamming    the\t\tlobby")  # blanks: one space
            await op.expect("* kicked bob")
            assert await bob.expect("!") == "! kicked: you were kicked by op: spamming the lobby"
            await bob.expect("* bye: kicked by op")
            await bob.closed()
            await op.expect("* bob quit (kicked by op: spamming the lobby)")
            await op.send("/kick bob")
            assert await op.expect("!") == "! no-such-nick: bob is not online"
        audits = [e for e in logs if e["event"] == "audit"]
        assert {"actor": "op", "action": "kick", "target": "bob",
                "reason": "spamming the lobby", "duration": None}.items() <= audits[-1].items()
        assert any(e["action"] == "oper" and e["actor"] == "op" for e in audits)


async def test_nick_ban_across_nodes_and_expiry(fake_server: fakeredis.FakeServer) -> None:
    async with two_nodes(fake_server, oper_secret=OPER) as (a, b):
        op = await text_oper(port(a), "op")
        bob = await text_user(port(b), "bob")
        await op.send("/ban bob 1s flooding")
        await op.expect("* banned bob for 1s")
        assert (await bob.expect("!")).startswith("! kicked: you were banned by op: flooding")
        await bob.closed()
        again = await LineClient.connect(port(a))
        await again.expect("* GET_NAME")
        await again.send("Bob")
        assert (await again.expect("!")).startswith("! banned: that nickname is banned")
        # expiry is the passing of time (a Redis TTL): wait until the name is free again
        async def registers() -> bool:
            await again.send("bob")
            line = await again.expect(lambda s: s.startswith(("!", "* welcome")))
            return line.startswith("* welcome bob")
        assert await wait_until(registers, timeout=5, step=0.2)


async def test_address_ban_disconnects_and_refuses_everywhere(
        fake_server: fakeredis.FakeServer) -> None:
    async with two_nodes(fake_server, oper_secret=OPER) as (a, b):
        op = await text_oper(port(a), "op", source="127.0.0.2")
        bob = await text_user(port(b), "bob")  # from 127.0.0.1
        pending = await LineClient.connect(port(a))  # not even registered yet
        await pending.expect("* GET_NAME")
        await op.send("/ban 127.0.0.1 10m")
        await op.expect("* banned 127.0.0.1 for 10m")
        assert (await bob.expect("!")).startswith("! kicked: you were banned by op")
        await bob.closed()
        await pending.expect("! kicked:")
        await pending.closed()
        refused = await LineClient.connect(port(b))
        assert (await refused.expect("!")).startswith(
            "! banned: your address is banned for another ")
        await refused.closed()
        await op.send("/bans")
        await op.expect("* 1 ban or mute in force")
        entry = await op.line()
        assert entry.startswith("* ip-ban 127.0.0.1 — ") and entry.endswith(" left, by op")
        await op.expect("* end of bans")
        await op.send("/unban 127.0.0.1")
        await op.expect("* unbanned 127.0.0.1")
        back = await text_user(port(b), "bob")
        await back.send("/quit")


async def test_mute_across_nodes_until_it_expires(fake_server: fakeredis.FakeServer) -> None:
    async with two_nodes(fake_server, oper_secret=OPER) as (a, b):
        op = await text_oper(port(a), "op")
        bob = await text_user(port(b), "bob")
        await op.send("/mute bob 1s calm down")
        await op.expect("* muted bob for 1s")
        await bob.expect("* you are muted for 1s by op: calm down")
        await bob.send("can I talk?")
        assert (await bob.expect("!")).startswith("! muted: you are muted for another")
        await bob.send("/msg op psst")
        assert (await bob.expect("!")).startswith("! muted:")

        async def unmuted() -> bool:
            # the mute ends with the passing of time: try a line, then a /ping round trip
            # (every earlier line was handled once its pong is back)
            await bob.send("free again")
            await bob.send("/ping")
            line = await bob.expect(lambda s: s.startswith(("! muted", "* pong")))
            if line.startswith("! muted"):
                await bob.expect("* pong")
                return False
            return True

        assert await wait_until(unmuted, timeout=5, step=0.2)
        assert await op.expect("[lobby] bob:") == "[lobby] bob: free again"


async def test_a_mute_follows_the_name_to_a_new_connection_and_unmute(
        fake_server: fakeredis.FakeServer) -> None:
    async with two_nodes(fake_server, oper_secret=OPER) as (a, b):
        op = await text_oper(port(a), "op")
        bob = await text_user(port(b), "bob")
        await op.send("/mute bob 10m")
        await bob.expect("* you are muted for 10m by op")
        await bob.send("/quit")
        await bob.closed()
        bob = await text_user(port(a), "bob")  # right after its welcome:
        assert any(line.startswith("* you are muted for ") for line in bob.seen)
        await bob.send("hi")
        assert (await bob.expect("!")).startswith("! muted:")
        await op.send("/unmute bob")
        await op.expect("* unmuted bob")
        await bob.expect("* you may speak again (unmuted by op)")
        await bob.send("hi")
        assert await op.expect("[lobby] bob:") == "[lobby] bob: hi"


async def test_json_operator_ops(fake_server: fakeredis.FakeServer) -> None:
    async with two_nodes(fake_server, oper_secret=OPER) as (a, b):
        op = await json_user(port(a), "op")
        await op.op("oper", secret=OPER, ref=1)
        await op.event("ack", ref=1)
        bob = await json_user(port(b), "bob")
        carol = await json_user(port(b), "carol")
        await op.op("mute", nick="bob", duration="2h", reason="noise", ref=2)
        await op.event("ack", ref=2)
        await bob.event("notice", text="you are muted for 2h by op: noise")
        await op.op("ban", target="carol", duration=90, ref=3)
        await op.event("ack", ref=3)
        assert (await carol.event("error"))["code"] == "kicked"
        await carol.event("bye")
        await op.op("bans", ref=4)
        listing = (await op.event("bans", ref=4))["bans"]
        assert [(e["kind"], e["target"], e["by"]) for e in listing] == [
            ("mute", "bob", "op"), ("nick-ban", "carol", "op")]
        assert listing[0]["reason"] == "noise" and 7190 < listing[0]["expires_in"] <= 7200
        await op.op("ban", target="carol", duration="forever", ref=5)
        assert (await op.event("error", ref=5))["code"] == "bad-args"
        await op.op("unban", target="carol", ref=6)
        await op.event("ack", ref=6)
        await op.op("unmute", nick="bob", ref=7)
        await op.event("ack", ref=7)
        await op.op("kick", nick="bob", ref=8)
        await op.event("ack", ref=8)
        assert (await bob.event("error"))["code"] == "kicked"


async def test_operator_accounts(fake_server: fakeredis.FakeServer) -> None:
    async with running_node(fake_server, auth="accounts", oper_accounts=("Root",)) as n:
        root = await registered_user(port(n), "root", "root-password")
        await root.send("/bans")
        await root.expect("* 0 bans or mutes in force")
        other = await registered_user(port(n), "other", "other-password")
        await other.send("/bans")
        assert (await other.expect("!")).startswith("! not-operator:")
        await n.security.accounts.set_oper("other", True)  # `hubbub account oper other`
        await other.send("/quit")
        await other.closed()
        other = await LineClient.connect(port(n))
        await other.expect("* GET_NAME")
        await other.send("/login other other-password")
        await other.expect("* welcome other")
        await other.send("/bans")
        await other.expect("* 0 bans or mutes in force")


# --------------------------------------------------------------------------- the client


async def test_the_client_sends_secret_and_password(fake_server: fakeredis.FakeServer
                                                    ) -> None:
    from cli.client.script import query, say_once
    from cli.client.state import Address, ClientState

    hello = ClientState([Address("h", 1)], "a", secret="t", password="p").hello()
    assert hello["secret"] == "t" and hello["password"] == "p"
    async with running_node(fake_server, auth="token", auth_token=TOKEN) as n:
        here = [Address("127.0.0.1", port(n))]
        assert await say_once(here, "cli", "lobby", "hi", secret=TOKEN) == 0
        assert await say_once(here, "cli", "lobby", "hi", secret="wrong", wait=5) == 1
        rooms = await query(here, {"op": "rooms"}, secret=TOKEN)
        assert rooms["ev"] == "rooms"
    async with running_node(fake_server, "n2", auth="accounts") as n:
        await register_account(port(n), "owner", "owner-password")
        here = [Address("127.0.0.1", port(n))]
        assert await say_once(here, "owner", "lobby", "hi", password="owner-password") == 0
        assert await say_once(here, "owner", "lobby", "hi", wait=5) == 1  # login-required


async def test_a_kicked_client_does_not_come_back(fake_server: fakeredis.FakeServer) -> None:
    from cli.client.connection import ChatClient, ClientError
    from cli.client.state import Address, ClientState

    async with running_node(fake_server, oper_secret=OPER) as n:
        op = await text_oper(port(n), "op")
        state = ClientState([Address("127.0.0.1", port(n))], "victim")
        client = ChatClient(state, show=lambda _: None)
        runner = asyncio.create_task(client.run())
        await op.expect("* victim joined lobby")
        await op.send("/kick victim")
        with pytest.raises(ClientError) as info:
            async with asyncio.timeout(5):
                await runner
        assert info.value.code == "kicked"
        await op.expect("* victim quit (kicked by op)")


# --------------------------------------------------------------------------- taking a name over


async def test_a_login_takes_its_name_over_from_a_session_on_another_node(
        fake_server: fakeredis.FakeServer) -> None:
    async with two_nodes(fake_server, auth="accounts") as (a, b):
        stuck = await registered_user(port(a), "alice", "alice-password")
        await stuck.send("/join dev")
        await stuck.expect("* alice joined dev")
        bob = await text_user(port(a), "bob")
        await bob.send("/join dev")
        await bob.expect("* bob joined dev")
        # the same user from another connection, on the other node
        again = await LineClient.connect(port(b))
        await again.expect("* GET_NAME")
        await again.send("/login alice alice-password")
        await again.expect("* welcome alice")
        assert (await stuck.expect("!")).startswith("! nick-lost: alice logged in from")
        await stuck.expect("* bye")
        await stuck.closed()
        # the old session quit like any other (its rooms left, the quit announced), then
        # the new one joined: nothing of the old one is left behind
        assert await bob.expect("* alice quit") == "* alice quit (logged in elsewhere)"
        await bob.expect("* alice joined lobby")
        await bob.send("/who dev")
        assert await bob.expect("* dev:") == "* dev: 1 user: bob"
        await again.send("hello again")
        assert await bob.expect("[lobby] alice") == "[lobby] alice: hello again"


async def test_a_login_takes_its_name_over_on_the_same_node_and_by_rename(
        fake_server: fakeredis.FakeServer) -> None:
    async with running_node(fake_server, auth="accounts") as n:
        first = await registered_user(port(n), "carol", "carols-password")
        second = await json_user(port(n), "guest")  # registered under another name
        await second.op("login", nick="carol", password="carols-password", ref=7)
        await second.event("nick", old="guest", new="carol")
        await second.event("ack", ref=7)
        assert (await first.expect("!")).startswith("! nick-lost: carol logged in from")
        await first.closed()
        assert n.roster.named["carol"].mode == "json"  # the second session holds it now
        third = await LineClient.connect(port(n))
        await third.expect("* GET_NAME")
        await third.send("/login carol carols-password")
        await third.expect("* welcome carol")
        await second.event("error", code="nick-lost")
        await second.closed()


async def test_a_wrong_password_never_disturbs_the_holder(fake_server: fakeredis.FakeServer
                                                          ) -> None:
    async with running_node(fake_server, auth="accounts") as n:
        owner = await registered_user(port(n), "dana", "danas-password")
        other = await LineClient.connect(port(n))
        await other.expect("* GET_NAME")
        await other.send("/login dana not-her-password")
        assert await other.expect("!") == "! auth-failed: wrong password for dana"
        await owner.send("/ping")
        await owner.expect("* pong")
        assert n.roster.named["dana"].mode == "text" and len(n.roster.named) == 1


async def test_a_name_held_on_a_node_that_stopped_answering_is_not_taken_over(
        fake_server: fakeredis.FakeServer) -> None:
    from node.relay import NameInfo

    async with running_node(fake_server, auth="accounts", lease_ttl=30.0) as n:
        await register_account(port(n), "erin", "erins-password")
        await wait_until(lambda: not n.sessions)
        # a node that died holding her name: its lease lives on until it is reaped
        held = await n.relay.claim("erin", NameInfo("erin", "dead-token", "gone", ()))
        assert held.ok
        c = await LineClient.connect(port(n))
        await c.expect("* GET_NAME")
        await c.send("/login erin erins-password")
        assert await c.expect("!") == ("! nick-taken: erin is held by a session on a node "
                                       "that stopped answering; it is freed within 60 s")


async def test_a_client_whose_name_was_taken_over_does_not_come_back(
        fake_server: fakeredis.FakeServer) -> None:
    from cli.client.connection import ChatClient, ClientError
    from cli.client.state import Address, ClientState

    async with running_node(fake_server, auth="accounts") as n:
        await register_account(port(n), "fay", "fays-password")
        state = ClientState([Address("127.0.0.1", port(n))], "fay", password="fays-password")
        client = ChatClient(state, show=lambda _: None)
        runner = asyncio.create_task(client.run())
        watcher = await text_user(port(n), "watcher")
        await wait_until(lambda: "fay" in n.roster.named)
        newer = await LineClient.connect(port(n))
        await newer.expect("* GET_NAME")
        await newer.send("/login fay fays-password")
        await newer.expect("* welcome fay")
        with pytest.raises(ClientError) as info:
            async with asyncio.timeout(5):
                await runner
        assert info.value.code == "nick-lost"  # it stopped: no tug of war over the name
        await watcher.expect("* fay quit (logged in elsewhere)")
        assert n.roster.named["fay"].mode == "text"  # the newer login keeps it


async def test_the_hubbub_client_registers_and_operates(fake_server: fakeredis.FakeServer
                                                        ) -> None:
    from cli.client.connection import ChatClient
    from cli.client.shown import Shown
    from cli.client.state import Address, ClientState

    async with running_node(fake_server, auth="accounts", oper_secret=OPER) as n:
        seen: list[Shown] = []
        state = ClientState([Address("127.0.0.1", port(n))], "gwen")
        client = ChatClient(state, show=seen.append)
        runner = asyncio.create_task(client.run())
        try:
            await wait_until(lambda: "gwen" in n.roster.named)
            await client.submit("/register gwens-password")
            await client.submit("/oper " + OPER)
            bob = await text_user(port(n), "bob")
            await client.submit("/mute bob 1m too loud")
            await bob.expect("* you are muted for 1m by gwen: too loud")
            await client.submit("/bans")
            await wait_until(lambda: any("bans or mutes in force" in s.text for s in seen))
            assert state.password == "gwens-password"
            stored = await n.security.accounts.get("gwen")
            assert stored is not None and stored.name == "gwen"
        finally:
            client.quit()
            async with asyncio.timeout(5):
                await runner


async def test_an_operator_stays_one_after_resuming_on_another_node(
        fake_server: fakeredis.FakeServer) -> None:
    async with two_nodes(fake_server, oper_secret=OPER) as (a, b):
        op = await JsonClient.connect(port(a))
        await op.op("hello", nick="opal")
        token = (await op.event("welcome"))["token"]
        await op.op("oper", secret=OPER, ref=1)
        await op.event("ack", ref=1)
        plain = await JsonClient.connect(port(a))
        await plain.op("hello", nick="pat")
        plain_token = (await plain.event("welcome"))["token"]
        bob = await text_user(port(b), "bob")
        # both move to node b with their resume tokens (as after a failover)
        moved = await JsonClient.connect(port(b))
        await moved.op("hello", nick="opal", token=token)
        assert (await moved.event("welcome"))["resumed"] is True
        await moved.op("kick", nick="bob", ref=2)
        await moved.event("ack", ref=2)
        assert (await bob.expect("!")).startswith("! kicked: you were kicked by opal")
        moved_plain = await JsonClient.connect(port(b))
        await moved_plain.op("hello", nick="pat", token=plain_token)
        assert (await moved_plain.event("welcome"))["resumed"] is True
        await moved_plain.op("kick", nick="opal", ref=3)
        assert (await moved_plain.event("error", ref=3))["code"] == "not-operator"
