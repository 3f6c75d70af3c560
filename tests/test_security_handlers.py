"""Accounts, access tokens, operators and sanctions: the security handlers with fake
members on fakeredis (no socket, no node)."""

from __future__ import annotations

import asyncio

import pytest

from node.errors import (
    AccountExists,
    AuthFailed,
    BadArguments,
    Banned,
    LoginRequired,
    Muted,
    NoSuchAccount,
    NoSuchNick,
    NotEnabled,
    NotRegistered,
)
from node.model import (
    Ack,
    AskNick,
    Auth,
    Ban,
    Bans,
    BansReply,
    Bye,
    Error,
    Hello,
    Kick,
    Login,
    Mute,
    Notice,
    Oper,
    Password,
    Register,
    Say,
    Unban,
    Unmute,
    Welcome,
)

from .fakes import FakeMember, World, world
from .helpers import wait_until

PASSWORD = "sesame-open"


async def account(w: World, nick: str) -> None:
    """``nick`` has an account with :data:`PASSWORD` (registered and left)."""
    m = await w.named(nick)
    await w.do(m, Register(password=PASSWORD))
    await w.identity.unregister(m, "done")


async def operator(w: World, nick: str = "op") -> FakeMember:
    m = await w.named(nick)
    await w.do(m, Oper(secret="op-secret"))
    m.take()
    return m


async def test_register_protects_the_name_and_logs_in() -> None:
    async with world(auth="accounts") as w:
        m = await w.named("alice")
        await w.do(m, Register(password=PASSWORD, ref=1))
        assert m.user.account == "alice"
        assert m.sent == [Notice("alice is now registered: from now on it needs /login "
                                 "alice PASSWORD"), Ack(1)]
        stored = await w.security.accounts.get("alice")
        assert stored is not None and await w.security.hasher.verify(stored.hash, PASSWORD)
        with pytest.raises(AccountExists):
            await w.do(m, Register(password=PASSWORD))


async def test_register_needs_accounts_a_name_and_a_long_password() -> None:
    async with world() as w:
        with pytest.raises(NotEnabled):  # open mode says so before anything else
            await w.do(w.member(), Register(password=PASSWORD))
    async with world(auth="accounts", min_password=8) as w:
        with pytest.raises(NotRegistered):
            await w.do(w.member(), Register(password=PASSWORD))
        with pytest.raises(BadArguments, match="at least 8"):
            await w.do(await w.named("bob"), Register(password="short"))


async def test_a_registered_name_needs_its_password() -> None:
    async with world(auth="accounts") as w:
        await account(w, "alice")
        with pytest.raises(LoginRequired):
            await w.do(w.member(), Hello(nick="alice"))
        with pytest.raises(AuthFailed, match="wrong password for alice"):
            await w.do(w.member(), Hello(nick="alice", password="not-it-at-all"))
        assert w.security.login_failures == 1
        m = w.member()
        await w.do(m, Hello(nick="alice", password=PASSWORD))
        assert m.of(Welcome) and m.user.account == "alice"


async def test_a_password_for_an_unregistered_name_is_refused() -> None:
    async with world(auth="accounts") as w:
        with pytest.raises(NoSuchAccount):
            await w.do(w.member(), Hello(nick="nobody", password=PASSWORD))
    async with world() as w:
        with pytest.raises(NotEnabled):
            await w.do(w.member(), Hello(nick="nobody", password=PASSWORD))


async def test_login_before_a_name_is_a_hello_with_a_password() -> None:
    async with world(auth="accounts") as w:
        await account(w, "alice")
        m = w.member(mode="text")
        await w.do(m, Login(nick="alice", password=PASSWORD, ref=7))
        (welcome,) = m.of(Welcome)
        assert welcome.nick == "alice" and m.user.account == "alice"
        assert Ack(7) in m.sent


async def test_login_when_registered_renames_to_the_account() -> None:
    async with world(auth="accounts") as w:
        await account(w, "alice")
        m = await w.named("guest")
        await w.do(m, Login(nick="Alice", password=PASSWORD, ref=2))
        assert m.user.nick == "Alice" and m.user.account == "alice"
        assert m.sent[-2:] == [Notice("you are logged in as alice"), Ack(2)]
        with pytest.raises(NoSuchAccount):
            await w.do(m, Login(nick="nobody", password=PASSWORD))


async def test_login_is_not_enabled_in_open_mode() -> None:
    async with world() as w:
        with pytest.raises(NotEnabled):
            await w.do(w.member(), Login(nick="alice", password=PASSWORD))


async def test_password_change_needs_the_login() -> None:
    async with world(auth="accounts") as w:
        await account(w, "alice")
        guest = await w.named("bob")
        with pytest.raises(LoginRequired):
            await w.do(guest, Password(password="another-one"))
        m = w.member()
        await w.do(m, Hello(nick="alice", password=PASSWORD))
        await w.do(m, Password(password="another-one", ref=3))
        assert m.sent[-2:] == [Notice("the password of alice is changed"), Ack(3)]
        stored = await w.security.accounts.get("alice")
        assert stored is not None
        assert await w.security.hasher.verify(stored.hash, "another-one")


async def test_a_nick_change_to_someone_elses_account_is_refused() -> None:
    async with world(auth="accounts") as w:
        await account(w, "alice")
        from node.model import Nick

        with pytest.raises(LoginRequired):
            await w.do(await w.named("bob"), Nick(nick="alice"))


async def test_access_token_mode() -> None:
    async with world(auth="token", auth_token="the-token") as w:
        m = w.member(mode="text", authed=False)
        with pytest.raises(AuthFailed):
            await w.do(m, Auth(secret="wrong"))
        await w.do(m, Auth(secret="the-token", ref=1))
        assert m.user.authed
        assert m.sent == [Notice("access token accepted"), Ack(1), AskNick()]
        with pytest.raises(BadArguments, match="already authenticated"):
            await w.do(m, Auth(secret="the-token"))
    async with world() as w:
        with pytest.raises(NotEnabled):
            await w.do(w.member(), Auth(secret="x"))


async def test_oper_with_the_secret_and_without() -> None:
    async with world() as w:
        with pytest.raises(NotEnabled):
            await w.do(await w.named("alice"), Oper(secret="anything"))
    async with world(oper_secret="op-secret") as w:
        m = await w.named("alice")
        with pytest.raises(AuthFailed, match="wrong operator secret"):
            await w.do(m, Oper(secret="guess"))
        await w.do(m, Oper(secret="op-secret", ref=4))
        assert m.user.oper and m.sent == [Notice("you are now an operator"), Ack(4)]
        info = await w.relay.lookup("alice")
        assert info is not None and info.oper  # recorded for a resume


async def test_an_operator_account_is_an_operator_on_login() -> None:
    async with world(auth="accounts", oper_accounts=("boss",)) as w:
        await account(w, "boss")
        m = w.member()
        await w.do(m, Hello(nick="boss", password=PASSWORD))
        assert m.user.oper and m.user.account == "boss"


async def test_kick_ends_the_target_through_the_bus() -> None:
    async with world(oper_secret="op-secret") as w:
        op = await operator(w)
        bob = await w.named("bob")
        await w.do(op, Kick(nick="bob", reason="enough", ref=1))
        assert op.sent == [Notice("kicked bob"), Ack(1)]
        await wait_until(lambda: bob.ended is not None)
        assert bob.ended == "kicked by op: enough"
        assert bob.sent == [Error("kicked", "you were kicked by op: enough"),
                            Bye("kicked by op: enough")]
        with pytest.raises(NoSuchNick):
            await w.do(op, Kick(nick="ghost"))


async def test_ban_of_a_nick_ends_it_and_refuses_it_afterwards() -> None:
    async with world(oper_secret="op-secret") as w:
        op = await operator(w)
        bob = await w.named("bob")
        await w.do(op, Ban(target="bob", duration=600, reason="spam", ref=2))
        assert op.sent == [Notice("banned bob for 10m"), Ack(2)]
        await wait_until(lambda: bob.ended is not None)
        assert bob.ended == "banned by op: spam"
        await w.identity.unregister(bob, "banned")
        with pytest.raises(Banned, match="that nickname is banned"):
            await w.do(w.member(), Hello(nick="bob"))
        await w.do(op, Bans(ref=3))
        (reply,) = op.of(BansReply)
        assert [(e.kind, e.target, e.by, e.reason) for e in reply.entries] == [
            ("nick-ban", "bob", "op", "spam")]


async def test_an_address_ban_removes_everyone_from_that_address() -> None:
    async with world(oper_secret="op-secret") as w:
        op = await operator(w)
        named = await w.named("bob", ip="198.51.100.7")
        unnamed = w.member(ip="198.51.100.7")
        other = w.member(ip="198.51.100.8")
        await w.do(op, Ban(target="198.51.100.7"))
        await wait_until(lambda: named.ended is not None and unnamed.ended is not None)
        assert other.ended is None
        with pytest.raises(Banned, match="your address is banned"):
            await w.security.check_connect(w.member(ip="198.51.100.7"))


async def test_unban_says_whether_there_was_a_ban() -> None:
    async with world(oper_secret="op-secret") as w:
        op = await operator(w)
        await w.do(op, Unban(target="bob", ref=1))
        assert op.sent == [Notice("bob was not banned"), Ack(1)]
        await w.do(op, Ban(target="bob"))
        op.take()
        await w.do(op, Unban(target="bob"))
        assert op.sent[0] == Notice("unbanned bob")


async def test_mute_refuses_messages_until_unmuted() -> None:
    async with world(oper_secret="op-secret") as w:
        op = await operator(w)
        bob = await w.named("bob")
        await w.do(op, Mute(nick="bob", duration=120, reason="calm down"))
        await wait_until(lambda: bool(bob.sent))
        assert bob.sent == [Notice("you are muted for 2m by op: calm down")]
        with pytest.raises(Muted):
            await w.do(bob, Say(text="hi"))
        await w.do(op, Unmute(nick="bob"))
        await wait_until(lambda: len(bob.sent) == 2)
        assert bob.sent[1] == Notice("you may speak again (unmuted by op)")
        assert await w.do(bob, Say(text="hi")) is not None
        op.take()
        await w.do(op, Unmute(nick="bob"))
        assert op.sent[0] == Notice("bob was not muted")


async def test_a_mute_in_force_applies_at_registration() -> None:
    async with world(oper_secret="op-secret") as w:
        op = await operator(w)
        await w.do(op, Mute(nick="carol", duration=60))
        carol = w.member()
        await w.do(carol, Hello(nick="carol"))
        assert Notice("you are muted for 1m") in carol.sent
        assert carol.user.muted_until > asyncio.get_running_loop().time()


async def test_resume_restores_exactly_the_login_and_operator_status() -> None:
    import fakeredis

    server = fakeredis.FakeServer()
    async with world(server, "n1", auth="accounts", oper_secret="op-secret") as a, \
            world(server, "n2", auth="accounts", oper_secret="op-secret") as b:
        await account(a, "alice")
        old = a.member()
        await a.do(old, Hello(nick="alice", password=PASSWORD))
        await a.do(old, Oper(secret="op-secret"))
        moved = b.member()
        await b.do(moved, Hello(nick="alice", token=old.user.token))
        assert (moved.user.account, moved.user.oper) == ("alice", True)
        guest = await a.named("guest")
        again = b.member()
        await b.do(again, Hello(nick="guest", token=guest.user.token))
        assert (again.user.account, again.user.oper) == (None, False)
