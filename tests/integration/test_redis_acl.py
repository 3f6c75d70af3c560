"""The Redis ACL rule set of docs/SECURITY.md is enough for a node, and nothing less works.

A throwaway redis-server gets the ``hubbub`` user exactly as the document gives it; two
``hubbub node`` subprocesses log in as that user and go through every feature, one of
them is killed so the other reaps its names, and Redis's ``ACL LOG`` must then show no
refused command but ``CLIENT SETINFO``: a node reads ``maxmemory-policy`` from the
``INFO memory`` the rules grant, never from ``CONFIG GET``.
"""

from __future__ import annotations

import re
import secrets
import signal
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from cli.cluster import free_port

from ..helpers import JsonClient, LineClient, json_user, registered_user, text_user
from .procs import account_cli, hubbub_exit, is_event, log_events, redis_server, start_node

pytestmark = pytest.mark.redis_server

DOC = Path(__file__).resolve().parents[2] / "docs" / "SECURITY.md"
TTL = 2.0
TOLERATED = {"client|setinfo"}


def documented_rules() -> list[str]:
    """The ``ACL SETUSER hubbub ...`` line of docs/SECURITY.md, as arguments."""
    found = re.search(r"^ACL SETUSER hubbub .*$", DOC.read_text(), re.M)
    assert found, "docs/SECURITY.md lost its ACL SETUSER line"
    return found.group(0).split()


def with_user(url: str, user: str, password: str) -> str:
    return url.replace("redis://", f"redis://{user}:{password}@", 1)


async def test_a_node_runs_on_the_documented_acl_and_a_lesser_user_is_refused() -> None:
    password = secrets.token_hex(12)
    async with redis_server() as (url, _):
        admin = aioredis.Redis.from_url(url, decode_responses=True)
        try:
            rules = [r if r != ">CHANGE-ME" else f">{password}" for r in documented_rules()]
            assert f">{password}" in rules
            await admin.execute_command(*rules)  # type: ignore[no-untyped-call]
            await admin.execute_command(  # type: ignore[no-untyped-call]
                "ACL", "SETUSER", "weak", "reset", "on", ">weakpw", "~other:*", "&other:*",
                "+@all")
            await admin.acl_log_reset()
            hubbub_url = with_user(url, "hubbub", password)
            a, pa = await start_node(hubbub_url, "acl-a", "--lease-ttl", str(TTL))
            b, pb = await start_node(hubbub_url, "acl-b", "--lease-ttl", str(TTL))
            try:
                alice = await text_user(pa, "alice")
                odd = await json_user(pa, "[x]")  # glob characters in a name: just a name
                carol = await text_user(pb, "carol")
                await alice.expect("* carol joined lobby")
                await alice.send("hello under acl")
                assert await carol.expect("[lobby]") == "[lobby] alice: hello under acl"
                await carol.send("/me waves")
                await alice.expect("[lobby] * carol waves")
                await odd.op("msg", to="carol", text="private", ref=1)
                await odd.event("ack", ref=1)
                assert await carol.expect("[pm]") == "[pm] [x]: private"
                await odd.op("history", room="lobby", after="0-0", ref="h")  # XINFO too
                assert (await odd.event("history", ref="h"))["messages"]
                await alice.send("/history 5")
                await alice.expect(lambda s: "hello under acl" in s)
                await alice.send("/join side")
                await alice.expect("* alice joined side")
                await alice.send("/who lobby")
                await alice.expect("* lobby:")
                await alice.send("/rooms")
                await alice.expect(lambda s: "lobby (" in s)
                await alice.send("/part side")
                await alice.expect("* alice left side")
                await alice.send("/nick alicia")
                await alice.expect("* alice is now alicia")
                await odd.op("join", room="a:*", ref=2)
                assert (await odd.event("error", ref=2))["code"] == "bad-room"
                # a node dies: the other reaps its names under the same ACL
                b.signal(signal.SIGKILL)
                await alice.expect("* carol quit", timeout=3 * TTL + 2)
            finally:
                assert await a.stop() == 0
                await b.stop()
            warned = [e for e in log_events(a) if e.get("event") == "cannot check redis "
                      "maxmemory-policy"]
            assert not warned, warned  # checked through INFO memory
            refused = [(e["username"], e["object"]) for e in await admin.acl_log()]
            assert {obj for user, obj in refused if user == "hubbub"} <= TOLERATED, refused
            assert all(str(key).startswith("hubbub:") for key in await admin.keys("*"))

            # a user without the rights: its node never gets ready and says why
            weak, _ = await start_node(with_user(url, "weak", "weakpw"), "acl-weak",
                                       wait_ready=False)
            try:
                line = await weak.wait_line(is_event("relay subscription lost"))
                assert "no permissions" in line
                assert not any(is_event("relay subscribed")(s) for s in weak.lines)
            finally:
                await weak.stop()
            # and a wrong password is refused outright: the node does not start
            code, out = await hubbub_exit(
                "node", "--host", "127.0.0.1", "--port", str(free_port()), "--node-id",
                "acl-wrong", "--redis-url", with_user(url, "hubbub", "not-the-password"))
            assert code == 2, out
            assert "invalid username-password" in out and "(--redis-url" in out, out
            assert "not-the-password" not in out and "Traceback" not in out, out
        finally:
            await admin.aclose()




async def test_accounts_operators_and_sanctions_run_on_the_documented_acl(
        tmp_path: Path) -> None:
    password = secrets.token_hex(12)
    secret = tmp_path / "oper"
    secret.write_text("oper-secret\n")
    async with redis_server() as (url, _):
        admin = aioredis.Redis.from_url(url, decode_responses=True)
        try:
            rules = [r if r != ">CHANGE-ME" else f">{password}" for r in documented_rules()]
            await admin.execute_command(*rules)  # type: ignore[no-untyped-call]
            await admin.acl_log_reset()
            hubbub_url = with_user(url, "hubbub", password)
            args = ("--auth", "accounts", "--oper-secret-file", str(secret))
            a, pa = await start_node(hubbub_url, "acc-a", *args)
            b, pb = await start_node(hubbub_url, "acc-b", *args)
            try:
                alice = await registered_user(pa, "alice", "alice-password-0")
                await alice.send("/password alice-password-1")
                await alice.expect("* the password of alice is changed")
                await alice.send("/quit")
                await alice.closed()
                guest = await JsonClient.connect(pb)
                await guest.op("hello", nick="alice", password="wrong-password", ref=1)
                assert (await guest.event("error", ref=1))["code"] != "relay-unavailable"
                await guest.op("hello", nick="alice", password="alice-password-1", ref=2)
                await guest.event("welcome")
                code, out = await account_cli("oper", "alice", url=hubbub_url)
                assert code == 0, out
                code, out = await account_cli("list", url=hubbub_url)
                assert code == 0 and "alice" in out, out
                code, out = await account_cli("password", "alice", url=hubbub_url,
                                              stdin=b"alice-password\n")
                assert code == 0, out
                await guest.op("quit")
                await guest.closed()
                op = await LineClient.connect(pa)
                await op.expect("* GET_NAME")
                await op.send("/login alice alice-password")
                await op.expect("* welcome alice")
                bob = await text_user(pb, "bob")
                answered = len(op.seen)
                for command in ("/mute bob 1m spam", "/bans", "/unmute bob", "/ban bob 1m",
                                "/bans", "/unban bob", "/kick nobody"):
                    await op.send(command)
                await op.send("/who lobby")  # commands run in order: every reply is in
                await op.expect("* lobby:")
                await bob.closed()  # banned
                carol = await text_user(pb, "carol")
                await carol.send("/oper oper-secret")
                await carol.expect("* you are now an operator")
                replies = op.seen[answered:]
                assert not [r for r in replies if r.startswith("! relay-unavailable")], replies
            finally:
                assert await a.stop() == 0
                assert await b.stop() == 0
            refused = [(e["username"], e["object"]) for e in await admin.acl_log()]
            assert {obj for user, obj in refused if user == "hubbub"} <= TOLERATED, refused
        finally:
            await admin.aclose()
