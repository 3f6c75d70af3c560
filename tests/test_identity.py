"""Names: claim, races, resume, rename, release, lease loss — fake members on fakeredis."""

from __future__ import annotations

import asyncio

import fakeredis
import pytest

from node.errors import NickTaken
from node.model import Bye, Error, Hello, Joined, Nick, NickChanged, Notice, Welcome
from node.relay import NameInfo

from .fakes import world
from .helpers import wait_until


async def test_a_name_held_on_this_node_is_taken() -> None:
    async with world() as w:
        await w.named("alice")
        with pytest.raises(NickTaken, match="Alice is in use"):
            await w.do(w.member(), Hello(nick="Alice"))


async def test_two_claims_at_once_one_wins() -> None:
    async with world() as w:
        a, b = w.member(), w.member()
        results = await asyncio.gather(w.identity.register(a, "alice", "alice"),
                                       w.identity.register(b, "alice", "alice"),
                                       return_exceptions=True)
        assert sorted(type(r).__name__ for r in results) == ["NickTaken", "NoneType"]
        winner = a if results[0] is None else b
        assert w.roster.named == {"alice": winner}
        info = await w.relay.lookup("alice")
        assert info is not None and info.token == winner.user.token


async def test_a_name_held_on_another_node_is_taken() -> None:
    server = fakeredis.FakeServer()
    async with world(server, "n1") as a, world(server, "n2") as b:
        await a.named("alice")
        with pytest.raises(NickTaken):
            await b.do(b.member(), Hello(nick="alice"))
        assert not b.roster.named


async def test_resume_with_the_right_token_takes_the_name_over_silently() -> None:
    server = fakeredis.FakeServer()
    async with world(server, "n1") as a, world(server, "n2") as b:
        old = await a.named("alice")
        moved = b.member()
        await b.do(moved, Hello(nick="alice", token=old.user.token, rooms=("lobby",)))
        (welcome,) = moved.of(Welcome)
        assert welcome.resumed and welcome.rooms == ("lobby",)
        assert moved.of(Joined) == []  # a resume is not announced
        assert moved.user.resumed_from == old.user.token
        info = await b.relay.lookup("alice")
        assert info is not None and info.node == "n2" and info.prev == old.user.token


async def test_resume_with_a_wrong_token_is_charged_and_refused() -> None:
    server = fakeredis.FakeServer()
    async with world(server, "n1") as a, world(server, "n2") as b:
        await a.named("alice")
        forged = b.member()
        with pytest.raises(NickTaken):
            await b.do(forged, Hello(nick="alice", token="n1/" + "0" * 32))
        assert b.security.login_failures == 1
        assert forged.user.resumed_from is None and not forged.user.registered


async def test_resume_of_a_name_held_here_with_another_token_is_charged() -> None:
    async with world() as w:
        await w.named("alice")
        with pytest.raises(NickTaken):
            await w.do(w.member(), Hello(nick="alice", token="n1/" + "1" * 32))
        assert w.security.login_failures == 1


async def test_rename_tells_the_member_and_moves_the_name() -> None:
    async with world() as w:
        m = await w.named("alice")
        await w.do(m, Nick(nick="Alicia", ref=3))
        assert m.sent[:1] == [NickChanged("alice", "Alicia")]
        assert w.roster.named == {"alicia": m} and m.user.nick == "Alicia"
        assert await w.relay.lookup("alice") is None
        assert await w.relay.who("lobby") == ["Alicia"]


async def test_rename_to_a_name_in_use_is_refused() -> None:
    async with world() as w:
        m = await w.named("alice")
        await w.named("bob")
        with pytest.raises(NickTaken, match="bob is in use"):
            await w.do(m, Nick(nick="bob"))
        assert m.user.nick == "alice"


async def test_unregister_leaves_rooms_and_releases_the_name() -> None:
    async with world() as w:
        m = await w.named("alice")
        await w.identity.unregister(m, "bye")
        assert not w.roster.named and not w.hub.rooms and not m.user.registered
        assert await w.relay.lookup("alice") is None
        assert await w.relay.who("lobby") == []


async def test_a_lost_lease_claimed_by_someone_else_renames_away() -> None:
    server = fakeredis.FakeServer()
    async with world(server, "n1") as a, world(server, "n2") as b:
        m = await a.named("alice")
        await a.redis.delete(*await a.redis.keys("*nicks*"))  # the lease ran out
        await b.named("alice")  # the first claimant keeps it
        await a.identity.reassert(m, "alice")
        assert m.user.nick == "alice_2" and a.roster.named == {"alice_2": m}
        assert isinstance(m.sent[0], Notice) and "you are now alice_2" in m.sent[0].text
        assert m.sent[1] == NickChanged("alice", "alice_2")
        assert m.ended is None


async def test_a_lost_lease_resumed_elsewhere_ends_the_stale_copy() -> None:
    server = fakeredis.FakeServer()
    async with world(server, "n1") as a, world(server, "n2") as b:
        old = await a.named("alice")
        await b.do(b.member(), Hello(nick="alice", token=old.user.token))
        await a.identity.reassert(old, "alice")
        assert old.ended == "nickname lost"
        assert old.sent[-2:] == [Error("nick-lost", "your nickname was taken over by your "
                                       "session on another node"), Bye("nickname lost")]
        assert not a.roster.named and not a.hub.rooms and not old.user.registered


async def test_a_lease_still_ours_is_reasserted_quietly() -> None:
    async with world() as w:
        m = await w.named("alice")
        await w.identity.reassert(m, "alice")
        assert m.sent == [] and w.roster.named == {"alice": m}


async def test_take_over_of_a_name_on_a_silent_node_is_refused() -> None:
    async with world() as w:
        token = w.relay.new_token().replace("n1/", "n9/")
        assert (await w.relay.claim("zed", NameInfo("zed", token, "n9", ()))).ok

        async def claim() -> None:
            await w.identity.register(w.member(), "zed", "zed")

        with pytest.raises(NickTaken, match="stopped answering"):
            await w.identity.take_over("zed", "zed", claim)


async def test_take_over_ghosts_a_local_holder_and_claims_when_it_is_gone() -> None:
    async with world(takeover_wait=2.0) as w:
        holder = await w.named("alice")
        newcomer = w.member()
        claim = asyncio.create_task(w.identity.take_over(
            "alice", "alice", lambda: w.identity.register(newcomer, "alice", "alice")))
        await wait_until(lambda: holder.ended is not None)
        assert holder.ended == "logged in elsewhere"
        await w.identity.unregister(holder, "logged in elsewhere")  # its session's cleanup
        await claim
        assert w.roster.named == {"alice": newcomer}
