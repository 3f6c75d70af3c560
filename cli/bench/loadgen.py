"""The load generator of one process: chat clients as asyncio Protocols and one ticker.

Theory of operation
-------------------
* Every client is an :class:`asyncio.Protocol`; reading is ``data_received`` splitting on
  ``\\n`` and checking each line's stamp inline — no task, no coroutine per line.
* One ticker per process (``loop.call_later`` every :data:`TICK` s) sends what the schedule
  owes: ``rate * elapsed - sent`` messages, round-robin over the live clients, one write
  per client per tick (several lines in it only when a client owes several).  The stamp's
  time is read once per tick, when the lines are written.
* A *flat-out* step (:meth:`LoadGen.begin_flat`) has no schedule: every client writes its
  lines as fast as its transport takes them, pausing when the transport's buffer is full
  (``pause_writing``) — so a server that stops reading slows its senders through TCP.
  Each line's stamp is the time it was handed to the transport.
* A run is a sequence of *steps* (:meth:`LoadGen.begin` … :meth:`LoadGen.end`,
  :meth:`LoadGen.drain`, :meth:`LoadGen.collect`).  Figures are per step; the receivers'
  sequence trackers live for the whole run, so a late or repeated message is recognised
  across steps.
* Wire profiles: ``hubbub`` registers with the nickname line, joins its room with
  ``/join`` (leaving the lobby) when there are several rooms, and is ready when its
  ``/ping`` is answered — so every node has confirmed its subscriptions before the clock
  starts.  ``plain`` (the baseline servers) sends only the nickname line and is ready at
  the first line starting with ``* welcome``.
* A line is a delivery when it is ``[ROOM] NICK: TEXT`` with an intact stamp from another
  member of the client's room; ``* `` lines are notices, ``! CODE: …`` errors; anything
  else, or a message line whose stamp is damaged, is *corrupted*.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, cast

from . import stamp as st
from .histogram import Histogram
from .layout import Layout
from .sysinfo import self_cpu_seconds
from .tracker import DUPLICATE, NEW, SeqTracker

__all__ = ["TICK", "GenSpec", "LoadGen", "StepCounters"]

TICK = 0.005
FLAT_CHUNK = 64
"""Lines per write in a flat-out step."""
PROFILES = ("hubbub", "plain")
_MAX_PENDING = 1 << 20  # bytes without a newline before the rest is dropped as corrupted


@dataclass(frozen=True, slots=True)
class GenSpec:
    """What one load generator process does (the whole run's shape and its share)."""

    targets: tuple[tuple[str, int], ...]
    clients: int
    rooms: int = 1
    first: int = 0
    """This process's clients are ``first`` … ``last - 1`` of the run's ``clients``."""
    last: int = -1
    tag: str = "b0"
    """Prefix of every nickname and room name of the run (keeps runs apart)."""
    profile: str = "hubbub"
    size: int = st.MIN_SIZE
    idle: int = 0
    idle_first: int = 0
    hog: bool = False
    connect_concurrency: int = 100
    setup_timeout: float = 60.0

    def __post_init__(self) -> None:
        if self.profile not in PROFILES:
            raise ValueError(f"profile must be one of {PROFILES}")
        if not st.valid_size(self.size):
            raise ValueError(f"message size must be {st.MIN_SIZE} or "
                             f"{st.MIN_SIZE + 2}..{st.MAX_SIZE}")
        if not self.targets:
            raise ValueError("at least one target")
        if self.profile == "plain" and self.rooms != 1:
            raise ValueError("the plain profile has one room")
        if self.clients >= 1 << 24:
            raise ValueError("at most 2**24 - 1 clients")

    @property
    def stop(self) -> int:
        return self.clients if self.last < 0 else self.last

    @property
    def layout(self) -> Layout:
        return Layout(self.clients, len(self.targets), self.rooms)

    def nick(self, i: int) -> str:
        return f"{self.tag}c{i}"

    def room_name(self, k: int) -> str:
        return "lobby" if self.rooms == 1 else f"{self.tag}-{k}"

    def script(self, nick: str, room: int | None) -> bytes:
        """The lines a client sends to register (and join its room)."""
        if self.profile == "plain":
            return f"{nick}\n".encode()
        lines = [nick]
        if room is None:  # idle: no room at all, so nobody hears of it
            lines.append("/part lobby")
        elif self.rooms > 1:
            lines += [f"/join {self.room_name(room)}", "/part lobby"]
        lines.append("/ping")
        return ("\n".join(lines) + "\n").encode()


@dataclass(slots=True)
class StepCounters:
    """What one process counted during one step."""

    sent: int = 0
    deliveries: int = 0
    late: int = 0
    duplicates: int = 0
    corrupted: int = 0
    misrouted: int = 0
    echoes: int = 0
    disconnects: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    byes: Counter[str] = field(default_factory=Counter)
    hist: Histogram = field(default_factory=Histogram)
    last_delivery: float = 0.0
    max_lag: float = 0.0


class _Client(asyncio.Protocol):
    """One measured chat client (sends on the ticker's behalf, receives and checks)."""

    def __init__(self, gen: LoadGen, index: int, room: int, member: int, senders: int,
                 nick: str, reads: bool = True) -> None:
        self.gen = gen
        self.welcome = b"* welcome " + nick.encode()
        script = gen.spec.script(nick, room)
        self.index = index
        self.room = room
        self.member = member
        self.tracker = SeqTracker(senders)
        self.script = script
        self.reads = reads
        self.transport: asyncio.Transport | None = None
        self.ready: asyncio.Future[None] = gen.loop.create_future()
        self.pending = b""
        self.seq = 0
        self.sent = 0  # this step
        self.got = 0  # this step
        self.closed = False
        self.failure: str | None = None
        self.owed = 0  # lines still to write in a flat-out step
        self.paused = False

    # -- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.transport.write(self.script)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.transport = None
        if not self.ready.done():
            _fail(self.ready, self.failure or "connection closed")
        else:
            self.gen.client_lost(self)

    def data_received(self, data: bytes) -> None:
        if self.pending:
            data = self.pending + data
        lines = data.split(b"\n")
        self.pending = lines.pop()
        if len(self.pending) > _MAX_PENDING:
            self.gen.counters.corrupted += 1
            self.pending = b""
        if not self.ready.done():
            lines = self._setup(lines)
            if not self.reads and self.ready.done() and self.transport is not None:
                self.transport.pause_reading()  # the hog: never reads again
                return
        if lines:
            self._lines(lines)

    # -- receiving
    def _setup(self, lines: list[bytes]) -> list[bytes]:
        """Look for the ready sign; returns the lines after it (the run's)."""
        plain = self.gen.spec.profile == "plain"
        for n, line in enumerate(lines):
            if line.startswith(b"! "):
                self.failure = line[2:].decode(errors="replace")
                self.gen.setup_errors[_code(line)] += 1
                if self.transport is not None:
                    self.transport.close()
                return []
            if line.startswith(self.welcome) if plain else line == b"* pong":
                self.ready.set_result(None)
                return lines[n + 1:]
        return []

    def _lines(self, lines: list[bytes]) -> None:
        gen = self.gen
        c = gen.counters
        fields = st.fields
        room_of = gen.room_of
        member_of = gen.member_of
        clients = len(room_of)
        see = self.tracker.see
        highest = self.tracker.highest
        hist = c.hist
        counts = hist.counts
        top_bucket = len(counts) - 1
        total = 0
        worst = hist.max
        now = time.monotonic_ns() // 1000
        got = 0
        for line in lines:
            if line[:1] == b"[":
                k = line.find(b": ")
                sf = fields(line[k + 2:]) if k > 0 and 0 < line.find(b"] ") < k else None
                if sf is None:
                    c.corrupted += 1
                    continue
                sender = sf[0]
                if sender >= clients or room_of[sender] != self.room:
                    c.misrouted += 1
                    continue
                if sender == self.index:
                    c.echoes += 1
                    continue
                member, seq = member_of[sender], sf[1]
                if seq == highest[member] + 1:  # in order: the common case, inline
                    highest[member] = seq
                else:
                    kind = see(member, seq)
                    if kind == DUPLICATE:
                        c.duplicates += 1
                        continue
                    if kind != NEW:
                        c.late += 1
                got += 1
                lat = now - sf[2]  # Histogram.record, inline
                if lat < 128:
                    counts[lat if lat > 0 else 0] += 1
                else:
                    e = lat.bit_length() - 7
                    counts[min((e << 6) + (lat >> e), top_bucket)] += 1
                total += lat
                if lat > worst:
                    worst = lat
            elif line[:2] == b"* ":
                if line.startswith(b"* bye"):
                    c.byes[line[2:].decode(errors="replace")[:80]] += 1
            elif line[:2] == b"! ":
                c.errors[_code(line)] += 1
            else:
                c.corrupted += 1
        if got:
            hist.count += got
            hist.total += total
            hist.max = worst
            self.got += got
            c.deliveries += got
            c.last_delivery = now / 1e6
            if gen.drain_target is not None and c.deliveries >= gen.drain_target:
                gen.drained()

    def tcp_state(self) -> str:
        """The socket's TCP state (Linux ``TCP_INFO``): how a client that does not read
        learns that the server closed it — it would never read the end of the stream."""
        if self.closed or self.transport is None:
            return "closed"
        sock = self.transport.get_extra_info("socket")
        try:
            state = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0]
        except (OSError, AttributeError, IndexError):
            return "unknown"
        if state != 1:
            return _TCP_STATES.get(state, f"state {state}")
        # Open on our side.  A server that gave up on it closes its end, but the FIN waits
        # behind the data we never read: look at the server's end when it is on this host.
        peer = _server_side_state(sock.getsockname(), sock.getpeername())
        if peer is None or peer == 1:
            return "open"
        return "closed by server (its close waits behind the unread data)"

    # -- sending flat out: as fast as the transport takes it (TCP's flow control)
    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self.pump()

    def pump(self) -> None:
        """Write what this client still owes of a flat-out step, a chunk at a time, until
        the transport's buffer is full (``pause_writing``) or nothing is owed."""
        gen = self.gen
        while self.owed > 0 and not self.paused and self.transport is not None:
            n = min(self.owed, FLAT_CHUNK)
            self.send(n, time.monotonic_ns() // 1000)
            self.owed -= n
            gen.counters.sent += n
        if self.owed <= 0:
            gen.flat_sent(self)

    # -- sending (called by the ticker)
    def send(self, count: int, sent_us: int) -> None:
        transport = self.transport
        if transport is None:
            return
        seq = self.seq
        size = self.gen.spec.size
        encode = st.encode
        index = self.index
        if count == 1:
            transport.write(encode(index, seq, sent_us, size) + b"\n")
        else:
            transport.write(b"".join(encode(index, seq + j, sent_us, size) + b"\n"
                                     for j in range(count)))
        self.seq = seq + count
        self.sent += count


_TCP_STATES = {1: "open", 7: "closed by server (reset)", 8: "closed by server",
               4: "closing", 5: "closing", 6: "closing", 9: "closing", 11: "closing"}


def _server_side_state(ours: tuple[Any, ...], theirs: tuple[Any, ...]) -> int | None:
    """The TCP state of the other end of our IPv4 connection ``ours`` → ``theirs`` from
    /proc/net/tcp, when that end is on this host (else None)."""
    def enc(addr: tuple[Any, ...]) -> str:
        ip = socket.inet_aton(addr[0])[::-1].hex().upper()
        return f"{ip}:{addr[1]:04X}"

    try:
        local, remote = enc(theirs), enc(ours)
        with open("/proc/net/tcp", encoding="ascii") as f:
            for line in f:
                cols = line.split()
                if len(cols) > 3 and cols[1] == local and cols[2] == remote:
                    return int(cols[3], 16)
    except (OSError, ValueError, IndexError):
        return None
    return None


class _Idle(asyncio.Protocol):
    """A connection that registers, leaves every room and then only reads (and drops)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, spec: GenSpec, nick: str) -> None:
        self.plain = spec.profile == "plain"
        self.script = spec.script(nick, 0 if self.plain else None)
        self.welcome = b"* welcome " + nick.encode()
        self.ready: asyncio.Future[None] = loop.create_future()
        self.pending = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.transport.write(self.script)

    def data_received(self, data: bytes) -> None:
        if self.ready.done():
            return
        data = self.pending + data
        lines = data.split(b"\n")
        self.pending = lines.pop()[-4096:]
        for line in lines:
            if line.startswith(b"! "):
                _fail(self.ready, line[2:].decode(errors="replace"))
                return
            if line.startswith(self.welcome) if self.plain else line == b"* pong":
                self.ready.set_result(None)
                self.pending = b""
                return

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if not self.ready.done():
            _fail(self.ready, "connection closed")


def _fail(ready: asyncio.Future[None], why: str) -> None:
    ready.set_exception(ConnectionError(why))
    ready.exception()  # retrieved: whoever awaits it still gets it, nobody else warns


def _ok(ready: asyncio.Future[None]) -> bool:
    return ready.done() and not ready.cancelled() and ready.exception() is None


def _code(line: bytes) -> str:
    """``! CODE: text`` → CODE."""
    return line[2:].split(b":", 1)[0].decode(errors="replace")[:40]


class LoadGen:
    """Clients ``spec.first`` … ``spec.stop - 1`` of a run (plus idle ones and the hog)."""

    def __init__(self, spec: GenSpec) -> None:
        self.spec = spec
        self.loop = asyncio.get_running_loop()
        layout = spec.layout
        self.room_of = [layout.room_of(i) for i in range(spec.clients)]
        self.member_of = [layout.member_index(i) for i in range(spec.clients)]
        self.room_sizes = layout.room_sizes()
        self.clients: list[_Client] = []
        self.idle: list[_Idle] = []
        self.hog: _Client | None = None
        self.counters = StepCounters()
        self.setup_errors: Counter[str] = Counter()
        self.drain_target: int | None = None
        self._owed: dict[int, int] = {}
        self._drained: asyncio.Future[None] | None = None
        self._live: list[_Client] = []
        self._cursor = 0
        self._rate = 0.0
        self._t0 = 0.0
        self._next = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._cpu0 = 0.0
        self._wall0 = 0.0
        self._sending = False
        self._flat_done: asyncio.Future[None] | None = None
        self._flat_waiting: set[_Client] = set()

    # ---------------------------------------------------------------- set-up
    async def setup(self) -> dict[str, Any]:
        """Connect and register every client, then the hog."""
        spec = self.spec
        layout = spec.layout
        for i in range(spec.first, spec.stop):
            room = layout.room_of(i)
            self.clients.append(_Client(self, i, room, layout.member_index(i),
                                        self.room_sizes[room], spec.nick(i)))
        t0 = time.perf_counter()
        failures = await self._connect_all(
            [(c, spec.targets[layout.node_of(c.index)]) for c in self.clients])
        seconds = time.perf_counter() - t0
        wanted = len(self.clients)
        self.clients = [c for c in self.clients if _ok(c.ready) and not c.closed]
        if spec.hog and spec.clients:
            self.hog = _Client(self, -1, 0, 0, 1, f"{spec.tag}hog", reads=False)
            failures += await self._connect_all([(self.hog, spec.targets[0])])
        self._live = list(self.clients)
        return {"clients": wanted, "ready": len(self.clients), "setup_seconds": seconds,
                "hog": self.hog is not None and _ok(self.hog.ready),
                "failures": dict(failures), "errors": dict(self.setup_errors)}

    async def open_idle(self) -> dict[str, Any]:
        """Open ``spec.idle`` connections that register, leave every room and stay."""
        spec = self.spec
        t0 = time.perf_counter()
        idle = [_Idle(self.loop, spec, f"{spec.tag}i{spec.idle_first + j}")
                for j in range(spec.idle)]
        self.idle += idle
        failures = await self._connect_all(
            [(p, spec.targets[(spec.idle_first + j) % len(spec.targets)])
             for j, p in enumerate(idle)])
        return {"idle": len(idle), "ready": sum(1 for p in idle if _ok(p.ready)),
                "seconds": time.perf_counter() - t0, "failures": dict(failures)}

    async def _connect_all(self, todo: list[tuple[_Client, tuple[str, int]]]
                           | list[tuple[_Idle, tuple[str, int]]]) -> Counter[str]:
        failures: Counter[str] = Counter()
        gate = asyncio.Semaphore(self.spec.connect_concurrency)
        resolved: dict[tuple[str, int], tuple[socket.AddressFamily, Any]] = {}
        for addr in {a for _, a in todo}:
            info = await self.loop.getaddrinfo(addr[0], addr[1], type=socket.SOCK_STREAM)
            resolved[addr] = (info[0][0], info[0][4])

        async def one(proto: _Client | _Idle, addr: tuple[str, int]) -> None:
            async with gate:
                try:
                    async with asyncio.timeout(self.spec.setup_timeout):
                        family, sockaddr = resolved[addr]
                        sock = socket.socket(family, socket.SOCK_STREAM)
                        if isinstance(proto, _Client) and not proto.reads:
                            # the hog: a small window, so the server's buffers fill sooner
                            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                        sock.setblocking(False)
                        try:
                            await self.loop.sock_connect(sock, sockaddr)
                        except BaseException:
                            sock.close()
                            raise
                        await self.loop.create_connection(lambda: proto, sock=sock)
                        await proto.ready
                except (OSError, TimeoutError) as exc:
                    failures[type(exc).__name__ if not str(exc) else str(exc)[:60]] += 1
                    if proto.transport is not None:
                        proto.transport.abort()

        async with asyncio.TaskGroup() as tg:
            for proto, addr in todo:
                tg.create_task(one(proto, addr))
        return failures

    # ---------------------------------------------------------------- steps
    def begin(self, rate: float) -> None:
        """Start a step: send ``rate`` messages/s (this process's share) from now."""
        self._start(rate)
        if rate > 0 and self._live:
            self._timer = self.loop.call_later(TICK, self._tick)

    def begin_flat(self, count: int) -> asyncio.Future[None]:
        """Start a flat-out step: every live client writes ``count`` lines as fast as its
        transport takes them.  The future is done once every live client has written all
        of them."""
        self._start(0.0)
        self._flat_done = done = self.loop.create_future()
        self._flat_waiting = set(self._live)
        for client in self._live:
            client.owed = count
        for client in list(self._live):
            client.pump()
        if not self._flat_waiting and not done.done():
            done.set_result(None)  # no live client
        return done

    def flat_sent(self, client: _Client) -> None:
        """``client`` has written all it owed (or is gone)."""
        self._flat_waiting.discard(client)
        done = self._flat_done
        if not self._flat_waiting and done is not None and not done.done():
            done.set_result(None)

    def _start(self, rate: float) -> None:
        self.counters = StepCounters()
        for client in self.clients:
            client.sent = client.got = client.owed = 0
        self._live = [c for c in self.clients if not c.closed]
        self._rate = rate
        self._cpu0 = self_cpu_seconds()
        self._t0 = self._wall0 = time.monotonic()
        self._next = self._t0 + TICK
        self._sending = True

    def _tick(self) -> None:
        if not self._sending:
            return
        now = time.monotonic()
        c = self.counters
        due = int((now - self._t0) * self._rate) - c.sent
        if due > 0:
            lag = now - (self._t0 + c.sent / self._rate)
            if lag > c.max_lag:
                c.max_lag = lag
            live = self._live
            n = len(live)
            if n:
                t_us = time.monotonic_ns() // 1000
                cursor = self._cursor
                if due <= n:
                    for k in range(due):
                        live[(cursor + k) % n].send(1, t_us)
                else:
                    each, extra = divmod(due, n)
                    for k in range(n):
                        live[(cursor + k) % n].send(each + (k < extra), t_us)
                self._cursor = (cursor + due) % n
                c.sent += due
        self._next += TICK
        if self._next < now:  # fell behind by more than a tick: no burst of catch-up ticks
            self._next = now + TICK
        self._timer = self.loop.call_later(self._next - now, self._tick)

    def end(self) -> dict[str, Any]:
        """Stop sending; returns what this process sent by room (``{room: count}``)."""
        self._sending = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for client in self.clients:
            client.owed = 0  # a flat-out step cut short by its time limit
        send_seconds = time.monotonic() - self._t0
        by_room: Counter[int] = Counter()
        for client in self.clients:
            if client.sent:
                by_room[client.room] += client.sent
        return {"sent": self.counters.sent, "send_seconds": send_seconds,
                "by_room": {str(k): n for k, n in by_room.items()}}

    def client_lost(self, client: _Client) -> None:
        if client.reads:
            self.counters.disconnects += 1
        if client in self._live:
            self._live.remove(client)
        self.flat_sent(client)
        if self.drain_target is not None:
            self.drain_target -= max(0, self._owed.get(client.index, 0) - client.got)
            if self.counters.deliveries >= self.drain_target:
                self.drained()

    async def drain(self, room_sent: dict[int, int], within: float) -> bool:
        """Wait until every live client got what its room's other members sent this step
        (``room_sent``: every process's senders, by room), or ``within`` s; True if all
        arrived."""
        self._owed = {c.index: room_sent.get(c.room, 0) - c.sent for c in self.clients}
        outstanding = sum(max(0, self._owed[c.index] - c.got) for c in self.clients
                          if not c.closed)
        if outstanding <= 0:
            return True
        self._drained = self.loop.create_future()
        self.drain_target = self.counters.deliveries + outstanding
        try:
            async with asyncio.timeout(within):
                await self._drained
            return True
        except TimeoutError:
            return False
        finally:
            self.drain_target = None
            self._drained = None

    def drained(self) -> None:
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    def collect(self) -> dict[str, Any]:
        """This step's figures (JSON-ready); the next :meth:`begin` starts afresh."""
        c = self.counters
        wall = time.monotonic() - self._wall0
        expected = sum(self._owed.get(cl.index, 0) for cl in self.clients)
        got = sum(cl.got for cl in self.clients)
        return {
            "sent": c.sent, "deliveries": c.deliveries, "expected": expected,
            "lost": max(0, expected - got), "late": c.late, "duplicates": c.duplicates,
            "corrupted": c.corrupted, "misrouted": c.misrouted, "echoes": c.echoes,
            "disconnects": c.disconnects, "errors": dict(c.errors), "byes": dict(c.byes),
            "hist": c.hist.to_sparse(), "hist_total": c.hist.total, "hist_max": c.hist.max,
            "last_delivery": c.last_delivery - self._t0 if c.last_delivery else 0.0,
            "max_lag": c.max_lag, "cpu": self_cpu_seconds() - self._cpu0, "wall": wall,
            "live": sum(1 for cl in self.clients if not cl.closed),
            "hog_state": None if self.hog is None else self.hog.tcp_state(),
        }

    def progress(self) -> dict[str, Any]:
        c = self.counters
        return {"sent": c.sent, "deliveries": c.deliveries, "p99": c.hist.percentile(99)}

    # ---------------------------------------------------------------- teardown
    async def close(self) -> None:
        self._sending = False
        if self._timer is not None:
            self._timer.cancel()
        protos: list[_Client | _Idle] = [*self.clients, *self.idle]
        if self.hog is not None:
            protos.append(self.hog)
        for proto in protos:
            if proto.transport is not None:
                with contextlib.suppress(Exception):
                    proto.transport.abort()
        await asyncio.sleep(0)  # let connection_lost run before the loop goes away


