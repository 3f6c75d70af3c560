"""The chat node's composition root: builds the parts, listens, serves, shuts down.

Theory of operation
-------------------
* :class:`ChatNode` builds, bottom up: the :class:`~node.relay.Relay` (reporting to the
  :class:`~node.hub.Hub`), the :class:`~node.identity.Identity` of names, the
  :class:`~node.security.Security` policy, the command :class:`~node.commands.Services`,
  the :class:`~node.gate.Gate` and the HTTP endpoint.  Nothing in ``node/`` imports it.
* Each listener makes a :class:`~node.connection.Connection` per socket; once the client's
  address is known the connection calls :meth:`ChatNode._admit`, which passes the gate and
  starts the connection's :class:`~node.session.Session` task.
* ``sessions`` holds every admitted connection's session (Python 3.11's
  ``Server.wait_closed()`` does not wait for them); ``roster`` who they are.
* Shutdown reads top to bottom in :meth:`ChatNode._shutdown`.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable

import structlog
from redis.asyncio import Redis

from . import startup
from .commands import Services
from .config import NodeConfig
from .connection import Connection, ConnectionContext, Flusher
from .errors import RedisMisconfigured, RelayUnavailable, StartupError
from .gate import Gate
from .http import HttpEndpoint
from .hub import BusHooks, Hub
from .identity import Identity
from .ircsession import IrcContext, IrcSession
from .moderation import Moderation
from .redis_errors import OomEpisodes, describe, watching_oom
from .redis_watch import RedisWatch
from .relay import Relay
from .security import Security
from .session import Session
from .stats import NodeState, NodeStats
from .tls import server_context
from .topology import Topology, as_topology
from .user import Roster

__all__ = ["ChatNode", "NodeStats"]

log = structlog.get_logger("hubbub.node")


class ChatNode:
    """One chat node.  ``await node.run()`` serves until :meth:`stop` is called."""

    def __init__(self, config: NodeConfig, redis: Redis | Topology) -> None:
        """``redis``: a client of a standalone Redis, or the shards of a Redis Cluster."""
        self.config = config
        self.topology = topology = as_topology(redis)
        redis = topology.seed
        self.stats = NodeStats()
        self.roster = Roster()
        self.hub = Hub(config, self.stats, self.roster,
                       lambda sink: Relay(topology, config, sink))
        self.relay = self.hub.relay
        self.identity = Identity(config, self.relay, self.hub, self.roster)
        self.security = Security(config, topology, self.relay, self.identity, self.roster)
        self.moderation = Moderation(self.security, self.relay, self.identity, self.roster)
        self.hub.hooks = BusHooks(self.moderation.on_sanction, self.identity.on_lease_lost,
                                  self.identity.reassert_all)
        self.services = Services(config, self.relay, self.hub, self.identity, self.security,
                                 self.moderation)
        self.sessions: set[Session] = set()
        self.awaiting_header: set[Connection] = set()
        """Connections from a trusted load balancer whose PROXY header has not come yet
        (not admitted, no task: closed at shutdown)."""
        self.gate = Gate(config, self.stats)
        self._flusher = Flusher()
        self.oom = OomEpisodes()
        """Redis refusing writes for want of memory: logged once per episode."""
        self.redis_watch = RedisWatch(
            topology, self.relay.keys, config.redis_sample_interval, config.redis_timeout,
            oom=self.oom, heartbeat=(self.relay.keys.alive(config.node_id),
                                     int(config.lease_ttl * 1000)))
        self.state = NodeState(config, self.stats, self.relay, self.roster, self.security,
                               lambda: len(self.hub.rooms), lambda: self.stopping,
                               self.redis_watch, self.oom)
        self.http = HttpEndpoint(self.state)
        self.port: int | None = None
        self.tls_port: int | None = None
        """The port serving TLS: ``port`` itself, an extra one, or None (no TLS)."""
        self._conn_tasks: set[asyncio.Task[None]] = set()
        self._stopping = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._tls_server: asyncio.Server | None = None
        self._irc_servers: list[asyncio.Server] = []
        self.irc_port: int | None = None
        """The port serving IRC (None: no IRC)."""
        self.irc_tls_port: int | None = None
        self._irc: IrcContext | None = None
        self._redis = redis
        self._start_failed: StartupError | None = None
        """Set when Redis never answered (or refused the node) after the start."""

    # ------------------------------------------------------------------ lifecycle

    async def run(self, started: Callable[[int], None] | None = None) -> None:
        """Open the listeners, start the relay, serve until :meth:`stop`, then shut down.

        Raises:
            StartupError: the node cannot start as configured (see :mod:`node.startup`):
                raised before serving, or after the drain when Redis never answered.
        """
        structlog.contextvars.bind_contextvars(node=self.config.node_id)
        with watching_oom(self.oom):  # every task and callback started below inherits it
            await self._run(started)

    async def _run(self, started: Callable[[int], None] | None) -> None:
        since = asyncio.get_running_loop().time()
        try:
            unreachable = await self._start()
        except BaseException:
            await self._abandon_start()
            raise
        relay_task = asyncio.create_task(self.relay.run(), name="relay")
        relay_task.add_done_callback(lambda _: self._stopping.set())  # it only ends on error
        watch_task = asyncio.create_task(self.redis_watch.run(), name="redis-watch")
        watch = None if unreachable is None else asyncio.create_task(
            self._await_redis(unreachable, since), name="await-redis")
        try:
            if started is not None:
                assert self.port is not None
                started(self.port)
            await self._stopping.wait()
        finally:
            if watch is not None:
                watch.cancel()
                await asyncio.gather(watch, return_exceptions=True)
            await self._shutdown(relay_task, watch_task)
        if self._start_failed is not None:
            raise self._start_failed

    async def _start(self) -> Exception | None:
        """Open every listener, then ask Redis once.  Returns None when Redis answered,
        the error when it could not be reached yet."""
        cfg = self.config
        tls = server_context(cfg.tls_cert, cfg.tls_key) if cfg.tls_cert else None
        self._server = await self._listen(cfg.port, None if cfg.tls_port else tls, "port")
        self.port = self._server.sockets[0].getsockname()[1]
        if tls is not None and cfg.tls_port:
            self._tls_server = await self._listen(cfg.tls_port, tls, "tls_port")
            self.tls_port = self._tls_server.sockets[0].getsockname()[1]
        elif tls is not None:
            self.tls_port = self.port
        if cfg.irc_port or cfg.irc_tls_port:
            self._irc = IrcContext(cfg.irc_server_name, cfg.node_id, self._read_motd())
        if cfg.irc_port:
            irc = await self._listen(cfg.irc_port, None, "irc_port", self._admit_irc)
            self._irc_servers.append(irc)
            self.irc_port = irc.sockets[0].getsockname()[1]
        if cfg.irc_tls_port and tls is not None:
            irc = await self._listen(cfg.irc_tls_port, tls, "irc_tls_port", self._admit_irc)
            self._irc_servers.append(irc)
            self.irc_tls_port = irc.sockets[0].getsockname()[1]
        self.gate.start(*(s for s in (self._server, self._tls_server, *self._irc_servers)
                          if s is not None))
        if cfg.http_port:
            try:
                await self.http.start(cfg.http_host, cfg.http_port)
            except OSError as exc:
                raise startup.listen_error(exc, cfg.http_host, cfg.http_port, "http_port",
                                           "http_host") from None
        unreachable = await startup.check_redis(self._redis, cfg.redis_url, cfg.redis_timeout,
                                                cluster=cfg.redis_cluster)
        log.info("node listening", host=cfg.host, port=self.port, tls_port=self.tls_port,
                 plaintext=tls is None or bool(cfg.tls_port))
        return unreachable

    async def _abandon_start(self) -> None:
        """Close what a failed start opened (a client that connected meanwhile had no
        name yet: its connection is just closed)."""
        self._stopping.set()
        for server in (self._server, self._tls_server, *self._irc_servers):
            if server is not None:
                server.close()
        self.gate.stop()
        for task in list(self._conn_tasks):
            task.cancel()
        if self._conn_tasks:
            await asyncio.wait(self._conn_tasks, timeout=1.0)
        await self.http.stop()
        self.security.close()

    async def _await_redis(self, first: Exception, since: float) -> None:
        """Redis could not be reached at start: serve meanwhile (clients are told the relay
        is unavailable), and stop the node if it stays away past ``redis_start_timeout``
        or turns out to refuse it."""
        cfg = self.config
        log.warning("waiting for redis", redis=startup.redis_address(cfg.redis_url),
                    error=describe(first), gives_up_after=cfg.redis_start_timeout or None)
        try:
            await startup.wait_for_redis(self._redis, cfg.redis_url,
                                         redis_timeout=cfg.redis_timeout,
                                         give_up_after=cfg.redis_start_timeout, since=since,
                                         cluster=cfg.redis_cluster)
        except StartupError as exc:
            self._start_failed = exc
            self.stop()

    def _read_motd(self) -> tuple[str, ...] | None:
        """The IRC message of the day's lines (None: no file given)."""
        path = self.config.irc_motd_file
        if not path:
            return None
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise StartupError(f"cannot read the IRC message of the day {path}: {exc}",
                               settings=("irc_motd_file",)) from None
        return tuple(line.rstrip("\r") for line in text.split("\n")) if text.strip() else ()

    async def _listen(self, port: int, tls: ssl.SSLContext | None, setting: str,
                      admit: Callable[[Connection], None] | None = None) -> asyncio.Server:
        """A listener on ``port``: plaintext, or TLS with a bounded handshake (a client that
        stalls in it, or speaks plaintext, is dropped and never becomes a session).
        ``admit``: what starts a session (default: a text/JSON one)."""
        cfg = self.config
        # PROXY headers: on the plaintext ports (chat and IRC) only
        proxied = bool(cfg.proxy_from) and tls is None
        try:
            ctx = ConnectionContext(cfg, self.stats, self._flusher, self.gate,
                                    self.awaiting_header, admit or self._admit, proxied)
            return await asyncio.get_running_loop().create_server(
                lambda: Connection(ctx), cfg.host, port, backlog=cfg.backlog,
                reuse_address=True, ssl=tls,
                ssl_handshake_timeout=cfg.tls_handshake_timeout if tls else None)
        except OSError as exc:
            raise startup.listen_error(exc, cfg.host, port, setting, "host") from None

    def stop(self) -> None:
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    async def _shutdown(self, relay_task: asyncio.Task[None],
                        watch_task: asyncio.Task[None]) -> None:
        log.info("node shutting down", sessions=len(self.sessions))
        # 1. stop accepting
        if self._server is not None:
            self._server.close()
            self.gate.stop()
        if self._tls_server is not None:
            self._tls_server.close()
        for irc in self._irc_servers:
            irc.close()
        for waiting in list(self.awaiting_header):  # a load balancer's, never admitted
            waiting.abandon()
        # 2. tell every client, stop reading; each session's cleanup releases its name
        for session in list(self.sessions):
            session.shutdown("node shutting down")
        # 3. wait a bounded grace period for sessions to finish, then cancel the rest
        if self._conn_tasks:
            _, pending = await asyncio.wait(self._conn_tasks, timeout=self.config.shutdown_grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1.0)
        # 4. stop reading Redis for /metrics, drop our heartbeat (if Redis ever answered),
        #    then stop listening to the bus
        watch_task.cancel()
        await asyncio.gather(watch_task, return_exceptions=True)
        try:
            if self._start_failed is None:
                async with asyncio.timeout(self.config.redis_timeout):
                    await self.relay.close()
        except (RelayUnavailable, TimeoutError):
            log.warning("could not remove heartbeat; it will expire")
        relay_task.cancel()
        failure = (await asyncio.gather(relay_task, return_exceptions=True))[0]
        # 5. the HTTP endpoint last: /readyz said "shutting down" all along the drain
        await self.http.stop()
        self.security.close()
        log.info("node stopped")
        if isinstance(failure, BaseExceptionGroup):
            fatal = failure.subgroup(RedisMisconfigured)
            if fatal is not None:
                raise fatal.exceptions[0]

    # ------------------------------------------------------------------ connections

    def _admit_irc(self, connection: Connection) -> None:
        self._admit(connection, irc=True)

    def _admit(self, connection: Connection, irc: bool = False) -> None:
        """A client connected and its address is known: admit it and start its session."""
        transport = connection.transport
        assert transport is not None
        if self._stopping.is_set() or transport.is_closing():
            # (over TLS a client can finish the handshake and be gone before this runs:
            # its transport is closed already and knows no peer any more)
            transport.close()
            return
        if not self.gate.admit(transport, connection.host):
            return
        connection.admitted = True
        session = (IrcSession(connection, self.services, self.stats, self._irc)
                   if irc and self._irc is not None
                   else Session(connection, self.services, self.stats))
        self._conn_tasks.add(asyncio.create_task(self._serve(session)))

    async def _serve(self, session: Session) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.sessions.add(session)
        self.roster.members.add(session)
        self.stats.connections += 1
        try:
            await session.run()
        except asyncio.CancelledError:
            # Shutdown cancelled this connection after its grace period; the session has
            # cleaned up, and this task ends normally.
            pass
        finally:
            self.sessions.discard(session)
            self.roster.members.discard(session)
            self._conn_tasks.discard(task)
            self.gate.release(session.user.host)
