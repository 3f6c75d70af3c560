"""A node's services without a socket or a node: a fake member and a world on fakeredis.

:class:`FakeMember` implements :class:`node.user.Member` by recording what it is sent;
:func:`world` builds the relay (its listener running on fakeredis), hub, identity,
security and command services exactly as the server wires them.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import argon2
import fakeredis

from node.commands import Services, check, spec_of
from node.config import NodeConfig
from node.envelope import RoomMsg
from node.hub import BusHooks, Hub
from node.identity import Identity
from node.model import Event
from node.moderation import Moderation
from node.protocol import JSON, TEXT, Codec
from node.relay import Relay
from node.security import Hasher, Security
from node.stats import NodeStats
from node.user import Roster, User

from .helpers import TIMEOUT, node_config

E = TypeVar("E", bound=Event)

_sids = itertools.count(1)


class FakeMember:
    """A member that records what it is sent (``sent``: events, ``raw``: fan-out bytes)."""

    def __init__(self, mode: str = "json", ip: str = "192.0.2.1", node: str = "n1",
                 authed: bool = True) -> None:
        self.user = User(f"{node}/{next(_sids)}", authed=authed)
        self.user.set_peer((ip, 40000))
        self._mode = mode
        self.sent: list[Event] = []
        self.raw: list[bytes] = []
        self.ended: str | None = None

    @property
    def mode(self) -> str:
        return self._mode

    @property
    def codec(self) -> Codec:
        return JSON if self._mode == "json" else TEXT

    def send(self, event: Event) -> None:
        self.sent.append(event)

    def send_bytes(self, data: bytes, lines: int | None) -> None:
        self.raw.append(data)

    def end(self, reason: str, *farewell: Event) -> None:
        self.ended = reason
        self.sent.extend(farewell)

    def of(self, kind: type[E]) -> list[E]:
        """The events of type ``kind`` sent so far."""
        return [e for e in self.sent if isinstance(e, kind)]

    def take(self) -> list[Event]:
        sent, self.sent = self.sent, []
        return sent


@dataclass
class World:
    config: NodeConfig
    redis: fakeredis.FakeAsyncRedis
    roster: Roster
    hub: Hub
    relay: Relay
    identity: Identity
    security: Security
    services: Services
    members: list[FakeMember] = field(default_factory=list)

    def member(self, **kwargs: Any) -> FakeMember:
        m = FakeMember(node=self.config.node_id, **kwargs)
        self.roster.members.add(m)
        self.members.append(m)
        return m

    async def do(self, m: FakeMember, cmd: Any) -> RoomMsg | None:
        """Carry out ``cmd`` for ``m`` as a session does (its policy, then its handler;
        the flood guard is the session's and is not applied)."""
        spec = spec_of(cmd)
        check(self.services, m, spec)
        return await spec.handler(self.services, m, cmd)

    async def named(self, nick: str, **kwargs: Any) -> FakeMember:
        """A member registered as ``nick`` (in the lobby)."""
        from node.model import Hello

        m = self.member(**kwargs)
        await self.do(m, Hello(nick=nick))
        m.take()
        return m


FAST_HASHER = argon2.PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)


@contextlib.asynccontextmanager
async def world(server: fakeredis.FakeServer | None = None, node_id: str = "n1",
                **overrides: Any) -> AsyncIterator[World]:
    """The services of one node on fakeredis, its relay listening; no socket."""
    config = node_config(node_id, **overrides)
    redis = fakeredis.FakeAsyncRedis(server=server or fakeredis.FakeServer())
    roster = Roster()
    hub = Hub(config, NodeStats(), roster, lambda sink: Relay(redis, config, sink))
    identity = Identity(config, hub.relay, hub, roster)
    security = Security(config, redis, hub.relay, identity, roster)
    security.hasher.close()
    security.hasher = Hasher(2, 8, FAST_HASHER)
    moderation = Moderation(security, hub.relay, identity, roster)
    hub.hooks = BusHooks(moderation.on_sanction, identity.on_lease_lost,
                         identity.reassert_all)
    services = Services(config, hub.relay, hub, identity, security, moderation)
    task = asyncio.create_task(hub.relay.run())
    try:
        async with asyncio.timeout(TIMEOUT):
            await hub.relay.wait_ready()
        yield World(config, redis, roster, hub, hub.relay, identity, security, services)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        security.close()
        await redis.aclose()
