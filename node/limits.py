"""Limits against abusive or broken clients: flood control, connection caps, keepalive.

Theory of operation
-------------------
Everything here is pure and clock-injected: each method that depends on time takes
``now`` (the node passes ``loop.time()``), so the arithmetic is tested without sockets
and without sleeping.

* :class:`TokenBucket` holds up to ``burst`` tokens and gains ``rate`` tokens per second.
  :meth:`~TokenBucket.try_take` is all-or-nothing (connection rate: refuse when empty);
  :meth:`~TokenBucket.reserve` always takes one, borrowing against the future, and says
  how long the caller must wait for the loan to be covered (flood control: delay).
* :class:`FloodGuard` is one session's flood control.  A publishing command that finds a
  token goes at once; one that finds none is delayed until a token is due, and counts as
  *over budget*.  The count starts again once the client has paused long enough for its
  bucket to fill up (a command that merely found a token does not reset it: a slow node
  must not forgive a flood); when more than ``disconnect_after`` commands have been over
  budget, :meth:`~FloodGuard.admit` says "disconnect".  The session reads nothing more
  while it waits, so the client's further lines wait in its socket: natural backpressure.
* :class:`ConnectionLimiter` is one node's admission control: a cap on open connections
  in total, a cap per client address, and a token bucket of new connections per
  address.  Addresses are IPv4 addresses or IPv6 /64 networks (one host usually owns a
  whole /64).  A bucket is forgotten once it has filled up again — a full bucket and no
  bucket behave alike — so memory holds only the addresses seen lately.
"""

from __future__ import annotations

import ipaddress
import socket
from collections import OrderedDict
from typing import Protocol

__all__ = [
    "FD_RESERVE",
    "REFUSALS",
    "ConnectionLimiter",
    "FloodGuard",
    "Pacer",
    "TokenBucket",
    "connection_ceiling",
    "dead_peer_bound",
    "ip_key",
    "keepalive_options",
    "set_keepalive",
]

REFUSALS = ("node-full", "per-ip", "ip-rate", "proxy-header")
"""Why :meth:`ConnectionLimiter.admit` refuses: the node's total cap, the per-address
cap of open connections, the per-address rate of new connections."""

FD_RESERVE = 64
"""File descriptors kept free for Redis, the HTTP endpoint and refusing connections."""

_EPS = 1e-9  # a token due "now" must not be missed by float rounding (0.2 * 5 < 1)


class TokenBucket:
    """``burst`` tokens at most, refilled at ``rate`` per second; starts full."""

    __slots__ = ("_stamp", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("a token bucket needs rate > 0 and burst >= 1")
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._stamp = now

    def _refill(self, now: float) -> None:
        if now > self._stamp:
            self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now

    def tokens(self, now: float) -> float:
        """Tokens available at ``now`` (negative while a reservation is being paid off)."""
        self._refill(now)
        return self._tokens

    def try_take(self, now: float) -> bool:
        """Take a token if one is there; False (and nothing taken) otherwise."""
        self._refill(now)
        if self._tokens < 1 - _EPS:
            return False
        self._tokens -= 1
        return True

    def reserve(self, now: float, count: float = 1) -> float:
        """Take ``count`` tokens, borrowing what is not there; seconds to wait before
        using them."""
        self._refill(now)
        self._tokens -= count
        return 0.0 if self._tokens >= -_EPS else -self._tokens / self.rate

    def full_at(self) -> float:
        """When the bucket will be full again (if nothing more is taken)."""
        return self._stamp + max(0.0, self.burst - self._tokens) / self.rate


class FloodGuard:
    """One session's flood control (``rate`` 0: unlimited)."""

    __slots__ = ("_bucket", "disconnect_after", "over")

    def __init__(self, rate: float, burst: int, disconnect_after: int, now: float) -> None:
        self._bucket = TokenBucket(rate, burst, now) if rate > 0 else None
        self.disconnect_after = disconnect_after
        self.over = 0
        """Commands that found no token since the bucket was last full."""

    def admit(self, now: float, cost: int = 1) -> float | None:
        """Seconds to wait before carrying out the next command (0: at once), or None:
        the client is flooding and must be disconnected.  ``cost``: the tokens the
        command takes (a command that does the work of several)."""
        bucket = self._bucket
        if bucket is None:
            return 0.0
        cost = max(1, cost)
        tokens = bucket.tokens(now)
        if tokens >= bucket.burst - _EPS:  # the client paused: whatever came before is over
            self.over = 0
        if tokens < cost - _EPS:
            if self.over >= self.disconnect_after:
                return None
            self.over += 1
        return bucket.reserve(now, cost)


class Pacer:
    """A session's bucket for one kind of command that is delayed, never refused
    (``rate`` 0: unlimited).  See the module docstring."""

    __slots__ = ("_bucket", "waited")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self._bucket = TokenBucket(rate, burst, now) if rate > 0 else None
        self.waited = 0
        """Commands that had to wait for a token."""

    def admit(self, now: float) -> float:
        """Take a token; seconds to wait before carrying out the command (0: at once)."""
        if self._bucket is None:
            return 0.0
        delay = self._bucket.reserve(now)
        if delay:
            self.waited += 1
        return delay


def ip_key(host: str) -> str:
    """The unit a per-address limit counts: an IPv4 address or an IPv6 /64 network
    (an IPv4-mapped IPv6 address counts as its IPv4 address)."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((int(ip) >> 64 << 64, 64)))
    return str(ip)


class ConnectionLimiter:
    """Admission of new connections for one node; a limit of 0 means no limit."""

    def __init__(self, max_total: int, max_per_ip: int, rate_per_ip: float,
                 burst_per_ip: int) -> None:
        self.max_total = max_total
        self.max_per_ip = max_per_ip
        self.rate_per_ip = rate_per_ip
        self.burst_per_ip = burst_per_ip
        self.total = 0
        """Connections admitted and not yet released."""
        self._open: dict[str, int] = {}
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()  # least recent first

    def open_from(self, host: str) -> int:
        """Connections open from ``host``'s address (its /64 for IPv6)."""
        return self._open.get(ip_key(host), 0)

    @property
    def tracked(self) -> int:
        """Addresses with a connection-rate bucket in memory."""
        return len(self._buckets)

    def admit(self, host: str, now: float) -> str | None:
        """Count a new connection from ``host`` and return None, or return why it is
        refused (one of :data:`REFUSALS`; nothing is counted then)."""
        if self.max_total and self.total >= self.max_total:
            return "node-full"
        key = ip_key(host)
        if self.max_per_ip and self._open.get(key, 0) >= self.max_per_ip:
            return "per-ip"
        if self.rate_per_ip > 0:
            self._forget_full(now)
            bucket = self._buckets.get(key)
            if bucket is None:
                bucket = self._buckets[key] = TokenBucket(self.rate_per_ip,
                                                          self.burst_per_ip, now)
            else:
                self._buckets.move_to_end(key)
            if not bucket.try_take(now):
                return "ip-rate"
        self.total += 1
        self._open[key] = self._open.get(key, 0) + 1
        return None

    def release(self, host: str) -> None:
        """A connection :meth:`admit` let in has closed."""
        key = ip_key(host)
        left = self._open.get(key, 0) - 1
        if left > 0:
            self._open[key] = left
        else:
            self._open.pop(key, None)
        self.total = max(0, self.total - 1)

    def _forget_full(self, now: float) -> None:
        # Buckets are ordered by last use; one used at t is full by t + burst/rate, so
        # dropping full ones from the front keeps only the addresses seen lately.
        while self._buckets:
            key, bucket = next(iter(self._buckets.items()))
            if bucket.full_at() > now:
                return
            del self._buckets[key]


def connection_ceiling(max_connections: int, fd_limit: int, reserve: int = FD_RESERVE
                       ) -> int:
    """The connection cap that fits an open-file limit (``fd_limit`` < 0: unlimited;
    ``max_connections`` 0: no cap of its own)."""
    if fd_limit < 0:
        return max_connections
    fits = max(1, fd_limit - reserve)
    return min(max_connections, fits) if max_connections else fits


# --------------------------------------------------------------------------- keepalive


class _SockOpts(Protocol):
    def setsockopt(self, level: int, option: int, value: int, /) -> None: ...


def dead_peer_bound(idle: int, interval: int, count: int) -> int:
    """Seconds after which a peer that went silent is declared dead."""
    return idle + interval * count


def keepalive_options(idle: int, interval: int, count: int) -> list[tuple[int, int, int]]:
    """``(level, option, value)`` for TCP keepalive on this platform (idle 0: none).

    Keepalive probes go out only while nothing is waiting to be acknowledged; when the
    node has data in flight to a dead peer, retransmissions would go on for ~15 minutes.
    ``TCP_USER_TIMEOUT`` (Linux) gives that case the same bound.
    """
    if idle <= 0:
        return []
    tcp = socket.IPPROTO_TCP
    opts = [(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)]
    idle_opt = getattr(socket, "TCP_KEEPIDLE", None) or getattr(socket, "TCP_KEEPALIVE", None)
    for option, value in ((idle_opt, idle),
                          (getattr(socket, "TCP_KEEPINTVL", None), interval),
                          (getattr(socket, "TCP_KEEPCNT", None), count),
                          (getattr(socket, "TCP_USER_TIMEOUT", None),
                           dead_peer_bound(idle, interval, count) * 1000)):
        if option is not None:
            opts.append((tcp, option, value))
    return opts


def set_keepalive(sock: _SockOpts, idle: int, interval: int, count: int) -> None:
    """Turn keepalive on for an accepted TCP socket (raises OSError if refused)."""
    for level, option, value in keepalive_options(idle, interval, count):
        sock.setsockopt(level, option, value)
