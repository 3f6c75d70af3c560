"""Resume tokens: only a name's holder's exact token resumes or releases it, wrong tokens
are charged like failed logins, malformed ones are refused at the edge, and a resume
restores exactly the login and operator status the previous session had."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import fakeredis
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node import envelope as env
from node import scripts
from node.config import NodeConfig
from node.errors import BadArguments
from node.keys import Keys
from node.names import check_token
from node.relay import NameInfo, Relay
from node.server import ChatNode
from node.stores import Account

from .helpers import JsonClient, json_user, running_node

pytestmark = pytest.mark.timeout(60)

OPER = "oper-secret-for-tests"
KEYS = Keys()
REAL = "n9/0123456789abcdef0123456789abcdef"
"""The token of the name's holder, a session on node n9."""
ENTRY = NameInfo("alice", REAL, "n9", ("lobby", "dev"), oper=True, account="alice")
"""What n9 recorded of its session: an operator logged in to its account."""
INFO_JSON = ENTRY.serialize()

_any_text = st.text(st.characters(exclude_categories=["Cs"]), max_size=60)


def _slices(whole: str) -> st.SearchStrategy[str]:
    bounds = st.integers(0, len(whole))
    return st.tuples(bounds, bounds).map(lambda ij: whole[ij[0]:ij[1]])


FORGED = st.one_of(
    _any_text,
    st.sampled_from(["", "{", "}", '"', '"token":"', "n9/", "n9", "/", "n9/0", REAL.upper(),
                     REAL[:-1], REAL + "0", f" {REAL}", f"{REAL} ", INFO_JSON]),
    _slices(REAL),
    _slices(INFO_JSON),
    st.tuples(_any_text, _any_text).map(lambda ab: ab[0] + REAL + ab[1]),
).filter(lambda token: token != REAL)
"""Every string that is not the holder's token: arbitrary text, substrings of the token
and of the info JSON it is recorded in, the token with something around it."""


class _Sink:
    def on_envelope(self, envelope: env.Envelope) -> None: ...

    def on_lease_lost(self, folded: str) -> None: ...

    def on_resubscribed(self, rooms: frozenset[str] | None = None) -> None: ...

    def on_redis_reset(self) -> None: ...


def _relay(redis: fakeredis.FakeAsyncRedis, node_id: str) -> Relay:
    return Relay(redis, NodeConfig(node_id=node_id, lease_ttl=15.0, redis_timeout=1.0),
                 _Sink())


def _on_redis(expired: bool,
              scenario: Callable[[Relay, fakeredis.FakeAsyncRedis], Awaitable[None]]) -> None:
    """Run ``scenario`` with n9's session holding alice (``expired``: its lease ran out
    and nobody reaped the name yet) and a relay of node n2."""
    async def run() -> None:
        redis = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())
        try:
            assert (await _relay(redis, "n9").claim("alice", ENTRY)).ok
            if expired:
                await redis.delete(KEYS.lease("alice"))
            await scenario(_relay(redis, "n2"), redis)
        finally:
            await redis.aclose()

    asyncio.run(run())


async def _name_state(redis: fakeredis.FakeAsyncRedis) -> tuple[Any, ...]:
    return (await redis.get(KEYS.lease("alice")), await redis.hget(KEYS.info, "alice"),
            await redis.sismember(KEYS.nicks, "alice"))


WINDOWS = pytest.mark.parametrize("expired", [False, True],
                                  ids=["lease live", "lease expired, not reaped"])


# --------------------------------------------------------------------------- the scripts


@WINDOWS
@settings(max_examples=300, deadline=None)
@given(token=FORGED)
def test_only_the_exact_token_resumes_a_name(expired: bool, token: str) -> None:
    async def scenario(relay: Relay, redis: fakeredis.FakeAsyncRedis) -> None:
        before = await _name_state(redis)
        new = NameInfo("alice", relay.new_token(), "n2", ())
        forged = await relay.resume("alice", token, new)
        assert not forged.ok and forged.wrong_token
        assert await _name_state(redis) == before  # nothing moved
        real = await relay.resume("alice", REAL, new)
        assert real.ok and real.stale == ENTRY
        assert await redis.get(KEYS.lease("alice")) == new.token.encode()

    _on_redis(expired, scenario)


@WINDOWS
@settings(max_examples=300, deadline=None)
@given(token=FORGED)
def test_only_the_exact_token_releases_a_name(expired: bool, token: str) -> None:
    async def scenario(relay: Relay, redis: fakeredis.FakeAsyncRedis) -> None:
        before = await _name_state(redis)
        await relay.release("alice", token)
        assert await _name_state(redis) == before
        await relay.release("alice", REAL)
        assert await _name_state(redis) == (None, None, False)

    _on_redis(expired, scenario)


def test_a_free_name_is_not_a_wrong_token() -> None:
    async def scenario(relay: Relay, redis: fakeredis.FakeAsyncRedis) -> None:
        await relay.release("alice", REAL)
        result = await relay.resume("alice", REAL, NameInfo("alice", relay.new_token(), "n2",
                                                           ()))
        assert not result.ok and not result.wrong_token

    _on_redis(True, scenario)


@pytest.mark.parametrize("unreadable", ["{", "[]", '"token"', '{"token":5}', REAL,
                                        '{"nick":"alice"}'])
def test_an_unreadable_entry_is_nobodys(unreadable: str) -> None:
    async def scenario(relay: Relay, redis: fakeredis.FakeAsyncRedis) -> None:
        await redis.hset(KEYS.info, "alice", unreadable)
        for token in (REAL, "", unreadable):
            result = await relay.resume("alice", token, NameInfo("alice", relay.new_token(),
                                                                 "n2", ()))
            assert not result.ok and result.wrong_token
            await relay.release("alice", token)
        assert await redis.hget(KEYS.info, "alice") == unreadable.encode()

    _on_redis(True, scenario)


def test_the_reaper_takes_only_entries_recorded_under_the_dead_nodes_token() -> None:
    async def scenario(relay: Relay, redis: fakeredis.FakeAsyncRedis) -> None:
        # bob is listed as n9's but recorded under node n99's token (n9/ is its prefix
        # only as text), carol's entry is unreadable: neither is n9's to release
        bob = NameInfo("bob", "n99/" + "1" * 32, "n99", ())
        await redis.hset(KEYS.info, mapping={"bob": bob.serialize(), "carol": "{"})
        await redis.sadd(KEYS.owned("n9"), "bob", "carol")
        await redis.sadd(KEYS.nicks, "bob", "carol")
        await redis.delete(KEYS.alive("n9"))
        assert await relay.reap() == 1
        assert await redis.hget(KEYS.info, "alice") is None
        assert await redis.hget(KEYS.info, "bob") == bob.serialize().encode()
        assert await redis.hget(KEYS.info, "carol") == b"{"

    _on_redis(True, scenario)


def test_every_script_that_decides_ownership_reads_the_token_the_same_way() -> None:
    def token_of(script: str) -> str:
        start = script.index("local function token_of(info)")
        return script[start:script.index("\nend\n", start)]

    copies = {token_of(s) for s in (scripts.RESUME, scripts.RELEASE, scripts.RENAME,
                                    scripts.REAP)}
    assert len(copies) == 1
    assert "string.find" not in scripts.RESUME + scripts.RELEASE + scripts.RENAME + \
        scripts.REAP


# --------------------------------------------------------------------------- the edge


def _token_shaped(token: str) -> bool:
    node, slash, digits = token.partition("/")
    return bool(slash) and 1 <= len(node) <= 64 and all(
        c.isascii() and (c.isalnum() or c in "._-") for c in node) and len(digits) == 32 \
        and all(c in "0123456789abcdef" for c in digits)


@given(token=st.one_of(FORGED, st.just(REAL), st.builds(
    lambda node, digits: f"{node}/{digits}",
    st.text(st.sampled_from("Aa0._-/é"), max_size=66),
    st.text(st.sampled_from("0123456789abcdefABG/"), min_size=30, max_size=34))))
def test_check_token_takes_exactly_the_shape_of_a_token(token: str) -> None:
    if _token_shaped(token):
        assert check_token(token) == token
    else:
        with pytest.raises(BadArguments):
            check_token(token)


def test_check_token_takes_what_a_relay_hands_out() -> None:
    relay = _relay(fakeredis.FakeAsyncRedis(), "node-1.eu_west")
    token = relay.new_token()
    assert check_token(token) == token
    assert check_token(REAL) == REAL


# --------------------------------------------------------------------------- sessions


def port(node: ChatNode) -> int:
    assert node.port is not None
    return node.port


def forged_token(i: int) -> str:
    return f"n1/{i:032x}"


async def hello(c: JsonClient, ref: int, **fields: Any) -> dict[str, Any]:
    """Send a hello and return what answered it: its error, or the welcome."""
    await c.op("hello", ref=ref, **fields)
    while True:
        ev = await c.event()
        if ev["ev"] == "welcome" or (ev["ev"] == "error" and ev.get("ref") == ref):
            return ev


async def test_wrong_tokens_are_charged_like_failed_logins(
        fake_server: fakeredis.FakeServer) -> None:
    async with running_node(fake_server, "n1") as a, running_node(fake_server, "n2") as b:
        holder = await JsonClient.connect(port(a))
        await holder.op("hello", nick="alice")
        token = (await holder.event("welcome"))["token"]
        attacker_a = await JsonClient.connect(port(a))  # the holder's own node
        attacker_b = await JsonClient.connect(port(b))
        codes = [(await hello(attacker_a, 1, nick="alice", token=forged_token(1)))["code"]]
        for i in range(2, 6):
            codes.append((await hello(attacker_b, i, nick="alice",
                                      token=forged_token(i)))["code"])
        cap = a.config.login_fails_per_name
        assert codes == ["nick-taken"] * cap + ["auth-throttled"] * (5 - cap)
        assert await fake_server_get(fake_server, KEYS.fail_name("alice")) == str(cap)
        assert await fake_server_get(fake_server, KEYS.fail_ip("127.0.0.1")) == str(cap)
        assert a.security.login_failures + b.security.login_failures == cap
        # hammering the name never keeps its holder out: the exact token still resumes
        moved = await JsonClient.connect(port(b))
        welcome = await hello(moved, 9, nick="alice", token=token)
        assert welcome["ev"] == "welcome" and welcome["resumed"] is True


async def fake_server_get(server: fakeredis.FakeServer, key: str) -> str | None:
    redis = fakeredis.FakeAsyncRedis(server=server)
    try:
        value = await redis.get(key)
    finally:
        await redis.aclose()
    return value.decode() if isinstance(value, bytes) else value


@pytest.mark.parametrize("token", ["", "{", '"token":"', "a", "n1/", "n1/" + "0" * 31,
                                   "n1/" + "A" * 32, " n1/" + "0" * 32, "n1/" + "0" * 32 + "\n",
                                   "n1//" + "0" * 32, "n1/" + "0" * 33])
async def test_a_malformed_token_is_bad_args_and_costs_nothing(
        fake_server: fakeredis.FakeServer, token: str) -> None:
    async with running_node(fake_server, "n1") as n:
        await json_user(port(n), "alice")
        c = await JsonClient.connect(port(n))
        assert (await hello(c, 1, nick="alice", token=token))["code"] == "bad-args"
        assert await fake_server_get(fake_server, KEYS.fail_name("alice")) is None
        assert await fake_server_get(fake_server, KEYS.fail_ip("127.0.0.1")) is None
        assert (await hello(c, 2, nick="carol"))["ev"] == "welcome"  # still usable
        await c.event("join", nick="carol")


async def _can(c: JsonClient, ref: int, op: str, **fields: Any) -> str:
    """Send ``op``; "ok" if acknowledged (or answered), else the error code."""
    await c.op(op, ref=ref, **fields)
    while True:
        ev = await c.event()
        if ev.get("ref") == ref:
            return "ok" if ev["ev"] != "error" else str(ev["code"])


async def test_a_resume_restores_exactly_what_the_previous_session_had(
        fake_server: fakeredis.FakeServer) -> None:
    async with running_node(fake_server, "n1", auth="accounts", oper_secret=OPER) as a, \
            running_node(fake_server, "n2", auth="accounts", oper_secret=OPER) as b:
        tokens: dict[str, str] = {}
        for nick in ("alice", "bob", "zed"):
            c = await JsonClient.connect(port(a))
            await c.op("hello", nick=nick)
            tokens[nick] = (await c.event("welcome"))["token"]
            if nick != "zed":  # zed stays a guest
                assert await _can(c, 1, "register", password=f"{nick}-password") == "ok"
            if nick == "alice":
                assert await _can(c, 2, "oper", secret=OPER) == "ok"
        # what each session recorded with its name
        alice, bob, zed = [await a.relay.lookup(n) for n in ("alice", "bob", "zed")]
        assert alice is not None and (alice.account, alice.oper) == ("alice", True)
        assert bob is not None and (bob.account, bob.oper) == ("bob", False)
        assert zed is not None and (zed.account, zed.oper) == (None, False)
        # zed's name gets an account meanwhile (as `hubbub account` or another login would)
        encoded = await a.security.hasher.hash("zed-password")
        assert await a.security.accounts.create("zed", Account("zed", encoded, 0.0))

        expected = {"alice": ("ok", "ok"), "bob": ("ok", "not-operator"),
                    "zed": ("login-required", "not-operator")}
        for nick, (password, bans) in expected.items():
            moved = await JsonClient.connect(port(b))
            welcome = await hello(moved, 1, nick=nick, token=tokens[nick])
            assert welcome["ev"] == "welcome" and welcome["resumed"] is True
            assert await _can(moved, 2, "password", password=f"{nick}-new-pass") == password
            assert await _can(moved, 3, "bans") == bans
            s = b.roster.named[nick].user
            assert (s.account, s.oper) == ((None if nick == "zed" else nick), nick == "alice")
            info = await b.relay.lookup(nick)  # carried on to the next resume
            assert info is not None and (info.account, info.oper) == (s.account, s.oper)


async def _dead_holder(server: fakeredis.FakeServer, entry: NameInfo) -> None:
    """A session of node n9 holds ``entry``'s name; n9 died and the name's lease ran out,
    but n9's heartbeat is still there, so nobody has reaped the name yet."""
    redis = fakeredis.FakeAsyncRedis(server=server)
    try:
        assert (await _relay(redis, "n9").claim(fold(entry.nick), entry)).ok
        await redis.delete(KEYS.lease(fold(entry.nick)))
        await redis.persist(KEYS.alive("n9"))
    finally:
        await redis.aclose()


def fold(nick: str) -> str:
    return nick.lower()


async def test_forged_tokens_in_the_expired_lease_window_get_nothing(
        fake_server: fakeredis.FakeServer) -> None:
    async with running_node(fake_server, "n1", auth="accounts", oper_secret=OPER) as n:
        encoded = await n.security.hasher.hash("alice-password")
        assert await n.security.accounts.create("alice", Account("alice", encoded, 0.0))
        await _dead_holder(fake_server, ENTRY)
        attacker = await JsonClient.connect(port(n))
        forged = ["{", "a", "n9/", '"token":"', REAL[:-1], REAL.upper(), *(
            f"n9/{i:032x}" for i in range(6))]
        answers = [await hello(attacker, i, nick="alice", token=t)
                   for i, t in enumerate(forged)]
        assert all(a["ev"] == "error" for a in answers)
        codes = [a["code"] for a in answers]
        assert set(codes) == {"bad-args", "login-required", "auth-throttled"}
        assert codes[-1] == "auth-throttled"
        # the holder's own token is what this window is for: it gets back what it had
        moved = await JsonClient.connect(port(n))
        welcome = await hello(moved, 1, nick="alice", token=REAL)
        assert welcome["ev"] == "welcome" and welcome["resumed"] is True
        alice = n.roster.named["alice"].user
        assert (alice.account, alice.oper) == ("alice", True)


async def test_open_mode_a_forged_token_is_at_most_a_fresh_claim(
        fake_server: fakeredis.FakeServer) -> None:
    async with running_node(fake_server, "n1", oper_secret=OPER) as n:
        await _dead_holder(fake_server, NameInfo("opal", "n9/" + "2" * 32, "n9", ("lobby",),
                                                 oper=True))
        c = await JsonClient.connect(port(n))
        # the name's lease ran out: anyone may take it fresh, as without a token
        welcome = await hello(c, 1, nick="opal", token="n9/" + "3" * 32)
        assert welcome["ev"] == "welcome" and "resumed" not in welcome
        assert await _can(c, 2, "bans") == "not-operator"
