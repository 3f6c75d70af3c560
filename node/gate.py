"""The node's door: who may connect, keepalive on who did, and accept under fd exhaustion.

Theory of operation
-------------------
* Every accepted connection passes :meth:`Gate.admit` before a session is made for it.
  The :class:`~node.limits.ConnectionLimiter` decides; a refused connection is sent one
  text-mode line (``! too-many-connections: ...``; its mode is not chosen yet), closed
  and counted in ``NodeStats.refused`` by reason.  Refusals are logged at most once per
  reason every :data:`LOG_EVERY` seconds, with the count since: a connection flood must
  not become a log flood.
* A connection from a trusted load balancer (``--proxy-from``) is admitted only once its
  PROXY protocol header (:mod:`node.proxyproto`) has told the client's address: every
  limit, ban and log line then applies to the client, not to the balancer.  A missing,
  malformed or late header closes the connection without a word (the peer is the
  balancer) and counts as refused, reason ``proxy-header``.
* An admitted TCP socket gets keepalive (:func:`~node.limits.set_keepalive`) so a client
  whose connection silently died is dropped, and its name freed, within
  ``keepalive_idle + keepalive_interval x keepalive_count`` seconds.
* The total cap never exceeds the open-file limit minus :data:`~node.limits.FD_RESERVE`,
  so a full node refuses with a reason instead of running out of descriptors.
* If descriptors run out anyway (something else took them, or the limit was lowered),
  the standard asyncio loop stops accepting for a second and retries, reporting each
  failed ``accept()`` to the loop's exception handler — up to ``backlog`` times per
  attempt.  :meth:`Gate.start` chains a handler that turns those reports for our own
  listening socket into one ``accept paused`` event per episode (and ``accept resumed``
  once a connection is accepted again).  Pending clients wait in the listen backlog
  meanwhile.  uvloop (libuv) instead accepts and closes the excess connections at once,
  reporting nothing.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from .errors import TooManyConnections
from .limits import ConnectionLimiter, connection_ceiling, set_keepalive
from .model import Error
from .protocol import TEXT

if TYPE_CHECKING:
    from .config import NodeConfig
    from .stats import NodeStats

__all__ = ["ACCEPT_ERROR", "LOG_EVERY", "RESUMED_AFTER", "Gate", "open_file_limit", "peer_host"]

log = structlog.get_logger("hubbub.gate")

ACCEPT_ERROR = "socket.accept() out of system resource"
"""The message asyncio's selector loop reports an ``accept()`` EMFILE/ENFILE with."""

LOG_EVERY = 10.0
"""Seconds between two log events about refused connections of one reason."""

RESUMED_AFTER = 0.5
"""A connection accepted this long after the last failed ``accept()`` ends a pause.  (One
accepted in the same batch as a failure does not: at the limit, ``accept()`` fails with
EMFILE even when no connection is waiting, and asyncio retries only after 1 s.)"""


def open_file_limit() -> int:
    """The process's soft open-file limit (-1: unlimited or unknown)."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not on Unix
        return -1
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return -1 if soft == resource.RLIM_INFINITY else soft


class Connection(Protocol):
    """What the gate needs of a new connection (an asyncio transport or stream writer)."""

    def get_extra_info(self, name: str, default: Any = None) -> Any: ...

    def write(self, data: bytes) -> None: ...

    def close(self) -> None: ...


def peer_host(writer: Connection) -> str:
    """The connection's peer address ("" if it has none)."""
    peer = writer.get_extra_info("peername")
    return str(peer[0]) if isinstance(peer, tuple) and peer else ""


class Gate:
    """Admission control of one node (see the module docstring)."""

    def __init__(self, config: NodeConfig, stats: NodeStats) -> None:
        self.config = config
        self.stats = stats
        self.limiter = ConnectionLimiter(config.max_connections, config.max_per_ip,
                                         config.conn_rate_per_ip, config.conn_burst_per_ip)
        self.proxies = tuple(ipaddress.ip_network(n, strict=False) for n in config.proxy_from)
        self.paused_since: float | None = None
        """Loop time at which accepting failed for want of descriptors; None: accepting."""
        self._accept_failed_at = 0.0
        self._servers: tuple[asyncio.Server, ...] = ()
        self._handler: Any = None
        self._previous: Any = None
        self._logged: dict[str, tuple[float, int]] = {}  # reason -> (when, count then)
        self._keepalive_failed = False

    # ------------------------------------------------------------------ lifecycle

    def start(self, *servers: asyncio.Server) -> None:
        """Fit the total cap to the open-file limit and watch the ``servers``' accepts
        (the chat port, and the TLS port if there is one: one cap covers both)."""
        self._servers = servers
        limit = open_file_limit()
        cap = connection_ceiling(self.config.max_connections, limit)
        if cap != self.config.max_connections:
            log.warning("connection cap lowered to fit the open-file limit",
                        max_connections=cap, configured=self.config.max_connections,
                        open_file_limit=limit)
        self.limiter.max_total = cap
        loop = asyncio.get_running_loop()
        self._previous = loop.get_exception_handler()
        self._handler = self._on_loop_error
        loop.set_exception_handler(self._handler)

    def stop(self) -> None:
        loop = asyncio.get_running_loop()
        if self._handler is not None and loop.get_exception_handler() == self._handler:
            loop.set_exception_handler(self._previous)
        self._handler = None

    # ------------------------------------------------------------------ connections

    def trusted(self, host: str) -> bool:
        """Is ``host`` a load balancer whose connections start with a PROXY header?"""
        if not self.proxies:
            return False
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in net for net in self.proxies)

    def refuse_proxied(self, writer: Connection, why: str) -> None:
        """A trusted proxy's connection sent no valid PROXY header in time: close it."""
        writer.close()
        self._count_refusal("proxy-header", peer_host(writer), why)

    def admit(self, writer: Connection, host: str) -> bool:
        """Let a new connection from ``host`` (the client's address: the peer's, or the one
        its load balancer's PROXY header gave) in (True), or refuse it with a reason and
        close it."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self.paused_since is not None and now - self._accept_failed_at >= RESUMED_AFTER:
            log.warning("accept resumed", paused_for=round(now - self.paused_since, 3))
            self.paused_since = None
        reason = self.limiter.admit(host, now)
        if reason is not None:
            self._refuse(writer, reason, host)
            return False
        if self.config.keepalive_idle:
            self._keepalive(writer)
        return True

    def release(self, host: str) -> None:
        """A connection admitted from ``host`` has closed."""
        self.limiter.release(host)

    def _refuse(self, writer: Connection, reason: str, host: str) -> None:
        cfg = self.config
        text = {
            "node-full": f"this node is full ({self.limiter.max_total} connections); "
                         "try another node or later",
            "per-ip": f"too many connections from your address (at most {cfg.max_per_ip} "
                      "at once)",
            "ip-rate": f"too many new connections from your address (at most "
                       f"{cfg.conn_rate_per_ip:g} per second)",
        }[reason]
        writer.write(TEXT.render(Error(TooManyConnections.code, text)))
        writer.close()  # the line is flushed first; nothing is awaited
        self._count_refusal(reason, host)

    def _count_refusal(self, reason: str, host: str, why: str = "") -> None:
        self.stats.refused[reason] += 1
        now = asyncio.get_running_loop().time()
        when, count = self._logged.get(reason, (None, 0))
        if when is None or now - when >= LOG_EVERY:
            total = self.stats.refused[reason]
            log.warning("connections refused", reason=reason, count=total - count,
                        peer=host, **({"why": why} if why else {}))
            self._logged[reason] = (now, total)

    def _keepalive(self, writer: Connection) -> None:
        sock = writer.get_extra_info("socket")
        if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
            return
        cfg = self.config
        try:
            set_keepalive(sock, cfg.keepalive_idle, cfg.keepalive_interval,
                          cfg.keepalive_count)
        except OSError as exc:
            if not self._keepalive_failed:
                self._keepalive_failed = True
                log.warning("could not set keepalive", error=str(exc))

    # ------------------------------------------------------------------ fd exhaustion

    def _ours(self, sock: Any) -> bool:
        if sock is None:
            return False
        try:
            return sock.fileno() in {s.fileno() for srv in self._servers for s in srv.sockets}
        except (OSError, ValueError):
            return False

    def _on_loop_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]
                       ) -> None:
        if context.get("message") == ACCEPT_ERROR and self._ours(context.get("socket")):
            self._accept_failed_at = loop.time()
            if self.paused_since is None:
                self.paused_since = self._accept_failed_at
                self.stats.accept_pauses += 1
                log.error("accept paused", reason="out of file descriptors",
                          error=str(context.get("exception")),
                          connections=self.limiter.total, retry_in=1.0)
            return
        if self._previous is not None:
            self._previous(loop, context)
        else:
            loop.default_exception_handler(context)

