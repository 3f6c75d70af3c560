"""Nicknames on this node: claim, resume, take-over, rename, release, and what happens
when the cluster stops vouching for a name.

Theory of operation
-------------------
A name is held through its lease in Redis (see :mod:`node.relay`); ``roster.named`` maps
the names this node's members hold.  A claim checks the local map first (a local holder
never races Redis), then Redis; a name won in Redis while a local member took it meanwhile
is given back.  When a lease is found lost (Redis was away or lost its data) the name is
re-asserted; if the member resumed on another node this copy is stale and ends; if someone
else claimed the name meanwhile, the first claimant keeps it and this member is renamed to
the first free ``NICK_2``...  After a Redis data loss every name and membership is
recorded again.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog

from . import envelope as env
from .backoff import backoff
from .config import NodeConfig
from .errors import NickTaken, RelayUnavailable
from .hub import Hub
from .model import Bye, Error, NickChanged, Notice
from .names import MAX_NICK, fold_nick
from .pause import pause
from .relay import NameInfo, Relay
from .user import Member, Roster

__all__ = ["Identity", "Resumed"]

log = structlog.get_logger("hubbub.node")


@dataclass(frozen=True, slots=True)
class Resumed:
    """What a resume attempt came to."""

    ok: bool
    wrong_token: bool = False
    """The token is not the name's holder's: charge it like a failed login."""
    previous: NameInfo | None = None
    """What the resumed session had recorded (its login and operator status come back)."""


class Identity:
    """The names of this node's members (see the module docstring)."""

    def __init__(self, config: NodeConfig, relay: Relay, hub: Hub, roster: Roster) -> None:
        self.config = config
        self.relay = relay
        self.hub = hub
        self.roster = roster

    def info(self, m: Member, nick: str | None = None) -> NameInfo:
        """What the cluster records of ``m``'s name (``{nicks}:info``)."""
        return m.user.info(self.config.node_id, nick)

    def holder(self, folded: str) -> Member | None:
        """The local member holding ``folded``, if any."""
        return self.roster.named.get(folded)

    async def register(self, m: Member, nick: str, folded: str) -> None:
        local = self.roster.named
        if folded in local:
            raise NickTaken(f"{nick} is in use")
        user = m.user
        token = self.relay.new_token()
        user.token = token
        result = await self.relay.claim(folded, NameInfo(nick, token, self.config.node_id, (),
                                                         ident=user.ident, real=user.realname))
        if not result.ok:
            raise NickTaken(f"{nick} is in use")
        if folded in local:  # a local member won the same name while we waited
            await self.relay.release(folded, token)
            raise NickTaken(f"{nick} is in use")
        user.nick, user.folded = nick, folded
        local[folded] = m
        if result.stale is not None:
            await self._bury(folded, result.stale)

    async def take_over(self, nick: str, folded: str,
                        claim: Callable[[], Awaitable[None]]) -> None:
        """A login with the password of a name another session holds (a connection that
        died without the node noticing yet, or the same user elsewhere): that session is
        ended — it quits, ``logged in elsewhere`` — and ``claim`` (a registration or a
        rename) retried until the name is free, for up to ``takeover_wait`` seconds."""
        holder = self.roster.named.get(folded)
        if holder is not None:
            self.ghost(holder)
        else:
            info = await self.relay.lookup(folded)
            if info is not None and not await self.relay.sanction(
                    env.Sanction("ghost", folded, "", by=nick), info.node):
                raise NickTaken(f"{nick} is held by a session on a node that stopped "
                                f"answering; it is freed within "
                                f"{2 * self.config.lease_ttl:g} s")
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self.config.takeover_wait
        delays = backoff(initial=0.02, maximum=0.25)
        while True:
            try:
                await claim()
                return
            except NickTaken:
                delay = next(delays)
                if loop.time() + delay > give_up:
                    raise NickTaken(f"{nick} is in use: its other session did not end "
                                    f"within {self.config.takeover_wait:g} s") from None
                await pause(delay)

    def ghost(self, m: Member) -> None:
        """Someone logged in to this member's name with its password: end this one."""
        nick = m.user.nick
        log.info("session replaced by a login elsewhere", nick=nick)
        m.end("logged in elsewhere",
              Error("nick-lost", f"{nick} logged in from another connection with its "
                                 "password; this one is closed"),
              Bye("logged in elsewhere"))

    async def resume(self, m: Member, nick: str, folded: str, token: str) -> Resumed:
        """Take over a name with its previous session's credential."""
        holder = self.roster.named.get(folded)
        if holder is not None:
            return Resumed(False, wrong_token=holder.user.token != token)
        user = m.user
        user.token = self.relay.new_token()
        user.resumed_from = token
        result = await self.relay.resume(folded, token, self.info(m, nick))
        if not result.ok:
            user.resumed_from = None
            return Resumed(False, wrong_token=result.wrong_token)
        user.nick, user.folded = nick, folded
        self.roster.named[folded] = m
        stale = result.stale
        return Resumed(True, previous=stale if stale is not None and stale.token == token
                       else None)

    async def _bury(self, folded: str, stale: NameInfo) -> None:
        """Announce the quit of a holder whose lease ran out before anyone reaped it."""
        await self.relay.leave_all(folded, stale.token, stale.nick, stale.rooms,
                                   "connection lost")

    async def rename(self, m: Member, new: str) -> None:
        new_folded = fold_nick(new)
        local = self.roster.named
        holder = local.get(new_folded)
        if holder is not None and holder is not m:
            raise NickTaken(f"{new} is in use")
        user = m.user
        result = await self.relay.rename(user.folded, new_folded, self.info(m, new))
        if not result.ok:
            raise NickTaken(f"{new} is in use")
        old, old_folded = user.nick, user.folded
        del local[old_folded]
        local[new_folded] = m
        user.nick, user.folded = new, new_folded
        structlog.contextvars.bind_contextvars(nick=new)
        m.send(NickChanged(old, new))  # the rooms tell everyone else
        if result.stale is not None:
            await self._bury(new_folded, result.stale)
        await self.relay.rename_in_rooms(old_folded, new_folded, old, new, user.rooms,
                                         user.sid, user.token)

    async def unregister(self, m: Member, reason: str | None) -> None:
        """Leave every room, announce the quit (``reason``) and release the name."""
        user = m.user
        folded, token = user.folded, user.token
        rooms = await self.hub.leave_all_local(m)
        if self.roster.named.get(folded) is m:
            del self.roster.named[folded]
        user.folded = ""
        await self.relay.depart(folded, token, user.nick, rooms, reason)

    # ------------------------------------------------------------------ lost leases

    def on_lease_lost(self, folded: str) -> None:
        m = self.roster.named.get(folded)
        if m is not None:
            self.hub.background(self.reassert(m, folded))

    async def reassert(self, m: Member, folded: str) -> None:
        """Our lease ran out (Redis was away or lost its data): take the name back.  If
        the member resumed elsewhere, this one is stale and ends; if someone else claimed
        the name meanwhile, the first claimant keeps it and this member gets a free variant."""
        try:
            result = await self.relay.claim(folded, self.info(m))
            if result.ok:
                log.info("lease re-asserted", nick=m.user.nick)
                return
            holder = await self.relay.lookup(folded)
        except RelayUnavailable:
            return  # still away; the next renewal reports it again
        if self.roster.named.get(folded) is not m:
            return  # the member moved on meanwhile
        if holder is not None and holder.token == m.user.token:
            return  # re-asserted by another path already
        if holder is not None and holder.prev == m.user.token:
            await self._stale(m, folded)
        else:
            await self._rename_away(m, folded)

    async def _stale(self, m: Member, folded: str) -> None:
        """The user resumed this session on another node: end this copy quietly."""
        user = m.user
        log.warning("nickname resumed elsewhere; closing this session", nick=user.nick)
        self.relay.forget(folded)
        del self.roster.named[folded]
        # local only: the new holder keeps its membership
        await self.hub.leave_all_local(m)
        user.folded = ""
        with contextlib.suppress(RelayUnavailable):
            await self.relay.release(folded, user.token)  # compare-and-delete: tidies only
        m.end("nickname lost",
              Error("nick-lost", "your nickname was taken over by your session on "
                                 "another node"),
              Bye("nickname lost"))

    async def _rename_away(self, m: Member, folded: str) -> None:
        """Someone else claimed this user's name while the cluster could not vouch for it:
        they keep it (first claimant wins); this user gets the first free ``NICK_2``..."""
        user = m.user
        local = self.roster.named
        old = user.nick
        self.relay.forget(folded)
        base = old[: MAX_NICK - 3]
        for n in range(2, 100):
            new = f"{base}_{n}"
            new_folded = fold_nick(new)
            if new_folded in local:
                continue
            try:
                result = await self.relay.claim(new_folded, self.info(m, new))
            except RelayUnavailable:
                break
            if result.ok:
                break
        else:
            result = None
        if result is None or not result.ok:
            await self._stale(m, folded)  # no variant to be had: end the session
            return
        if local.get(folded) is m:
            del local[folded]
        local[new_folded] = m
        user.nick, user.folded = new, new_folded
        log.warning("nickname claimed by someone else; renamed", old=old, new=new)
        m.send(Notice(f"your nickname {old} was claimed by someone else while the cluster "
                      f"could not vouch for it; you are now {new}"))
        m.send(NickChanged(old, new))
        with contextlib.suppress(RelayUnavailable):
            for room in user.rooms:
                await self.relay.join(room, new_folded, self.info(m), announce=False,
                                      restore=True)
            await self.relay.rename_in_rooms(folded, new_folded, old, new, user.rooms,
                                             user.sid, user.token, move_members=False)

    async def reassert_all(self) -> None:
        """Redis lost its data: the heartbeat back (every lease is then reported lost and
        re-asserted), and every local membership recorded again."""
        await self.relay.renew()
        for m in list(self.roster.named.values()):
            user = m.user
            for room in user.rooms:
                await self.relay.join(room, user.folded, self.info(m), announce=False,
                                      restore=True)
