"""Accounts and operators on a real redis-server with ``hubbub node`` subprocesses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ..helpers import JsonClient, LineClient, register_account, text_user
from .procs import account_cli, is_event, log_events, redis_server, start_node

pytestmark = [pytest.mark.redis_server, pytest.mark.timeout(60)]




async def test_accounts_and_an_operator_account_across_two_real_nodes(tmp_path: Path) -> None:
    secret = tmp_path / "oper"
    secret.write_text("oper-secret-file\n")
    async with redis_server() as (url, _):
        args = ("--auth", "accounts", "--oper-secret-file", str(secret))
        a, pa = await start_node(url, "ra", *args)
        b, pb = await start_node(url, "rb", *args)
        try:
            await register_account(pa, "alice", "alice-password")
            # a registered name is refused without its login on the other node
            guest = await JsonClient.connect(pb)
            await guest.op("hello", nick="Alice", ref=1)
            assert (await guest.event("error", ref=1))["code"] == "login-required"
            await guest.op("hello", nick="alice", password="alice-password", ref=2)
            assert (await guest.event("welcome"))["nick"] == "alice"
            code, out = await account_cli("oper", "alice", url=url)
            assert code == 0, out
            code, out = await account_cli("list", url=url)
            assert code == 0 and out.split("\t")[0] == "alice" and "oper" in out
            # the administrator sets a new password (read from standard input)
            code, out = await account_cli("password", "Alice", url=url,
                                           stdin=b"alice-new-password\n")
            assert (code, out.strip()) == (0, "the password of Alice is changed"), out
            code, out = await account_cli("password", "nobody", url=url, stdin=b"long-enough\n")
            assert code == 1 and "no account named nobody" in out
            code, out = await account_cli("password", "alice", url=url, stdin=b"short\n")
            assert code == 2 and "at least 8 characters" in out
            await guest.op("quit")
            await guest.closed()
            # her next login is an operator's; she kicks bob off the other node
            op = await LineClient.connect(pa)
            await op.expect("* GET_NAME")
            await op.send("/login alice alice-password")
            assert await op.expect("!") == "! auth-failed: wrong password for alice"
            await op.send("/login alice alice-new-password")
            await op.expect("* welcome alice")
            bob = await text_user(pb, "bob")
            await op.send("/kick bob bye")
            await op.expect("* kicked bob")
            assert await bob.expect("!") == "! kicked: you were kicked by alice: bye"
            await bob.closed()
            # the operator secret from a file works too
            carol = await text_user(pb, "carol")
            await carol.send("/oper oper-secret-file")
            await carol.expect("* you are now an operator")
            line = await a.wait_line(is_event("audit"))
            assert json.loads(line)["action"] == "oper"
            await b.wait_line(lambda s: is_event("audit")(s) and '"via": "secret"' in s)
            # deleting the account frees the name for guests again
            await op.send("/quit")
            await op.closed()
            code, out = await account_cli("delete", "ALICE", url=url)
            assert code == 0, out
            code, out = await account_cli("delete", "alice", url=url)
            assert code == 1 and "no account named alice" in out
            await text_user(pb, "alice")
        finally:
            assert await a.stop() == 0
            assert await b.stop() == 0
        audits = [e for e in log_events(a) if e.get("event") == "audit"]
        assert {"actor": "alice", "action": "kick", "target": "bob", "reason": "bye"}.items() \
            <= audits[-1].items()


async def test_token_mode_on_a_real_node(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("real-token\n")
    async with redis_server() as (url, _):
        n, port = await start_node(url, "rt", "--auth", "token", "--auth-token-file",
                                   str(token))
        try:
            c = await LineClient.connect(port)
            await c.expect("* GET_NAME")
            await c.send("/auth real-token")
            await c.expect("* access token accepted")
            await c.send("dave")
            await c.expect("* welcome dave")
        finally:
            assert await n.stop() == 0
