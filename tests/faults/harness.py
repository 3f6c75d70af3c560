"""Shared pieces of the fault suite: real processes, recording clients, loss arithmetic.

Every case runs real ``redis-server`` and ``hubbub node`` processes (``procs``); clients
are JSON or text connections driven from the test.  A :class:`Member` reads its socket in
a background task and records everything (room messages with their ids, acks and errors
by ``ref``, other events), so a test can let traffic flow and then count: a message is
*lost* for a member when it was acknowledged to its sender but never reached the member,
*duplicated* when its id reached the member twice, and *out of order* when the ids a
member saw do not increase.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import math
import os
import resource
import signal
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
import typer.main

from ..helpers import OPEN_CLIENTS, JsonClient, LineClient
from ..integration.procs import Proc, is_event, start_node

TIMEOUT = 10.0
TTL = 2.0
"""``--lease-ttl`` of every node in the suite (seconds)."""


# --------------------------------------------------------------------------- node options

def node_flags() -> frozenset[str]:
    """The options ``hubbub node --help`` lists (read from the CLI's own definition)."""
    from cli.main import app

    group: Any = typer.main.get_command(app)
    return frozenset(opt for p in group.commands["node"].params for opt in p.opts)


def node_options(**options: object) -> list[str]:
    """``--flag value`` pairs for node options given by name (``max_per_ip`` ->
    ``--max-per-ip``).  A name ``hubbub node`` does not know is an error: a renamed
    option must fail the case, not let it run on the default."""
    flags = node_flags()
    out: list[str] = []
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        if flag not in flags:
            raise ValueError(f"hubbub node has no option {flag}")
        out += [flag, str(value)]
    return out


def unthrottled(**overrides: object) -> list[str]:
    """No flood control, no listing pace, no rooms cap and no per-address caps (the suite
    connects hundreds of clients from 127.0.0.1, sends bursts and keeps a speaker in every
    room it opens), unless a case sets them."""
    return node_options(**{"rate": 0, "max_per_ip": 0, "conn_rate_per_ip": 0, "list_rate": 0,
                           "room_create_rate": 0, "max_rooms_per_user": 0, **overrides})


def base_args(*extra: str, **limits: object) -> tuple[str, ...]:
    """The suite's node options: ``--lease-ttl 2``, ``--redis-timeout 1``, no HTTP
    endpoint unless ``extra`` names an ``--http-port`` (a port picked in advance can be
    taken by one of the thousands of client sockets by the time the node binds it),
    :func:`unthrottled` limits (overridden by ``limits``), then ``extra``."""
    http = () if "--http-port" in extra else ("--http-port", "0")
    return ("--lease-ttl", str(TTL), "--redis-timeout", "1", "--shutdown-grace", "3",
            *http, *unthrottled(**limits), *extra)


async def start_nodes(url: str, ids: Sequence[str], *args: str,
                      urls: Sequence[str] | None = None) -> list[tuple[Proc, int]]:
    """Start nodes concurrently (each costs ~1 s of interpreter start-up)."""
    return list(await asyncio.gather(*(
        start_node(urls[i] if urls else url, node_id, *args)
        for i, node_id in enumerate(ids))))


async def stop_all(procs: Iterable[Proc]) -> None:
    """Stop nodes (concurrently).  With ``HUBBUB_FAULTS_LOGS=1`` in the environment, print
    every line of theirs that is not an info/debug log event (``=all``: every line), to
    see what went wrong."""
    procs = list(procs)
    for p in procs:
        p.signal(signal.SIGCONT)  # a frozen node must be able to stop
    await asyncio.gather(*(p.stop() for p in procs), return_exceptions=True)
    show = os.environ.get("HUBBUB_FAULTS_LOGS")
    if show:
        for p in procs:
            for line, t in zip(p.lines, p.times, strict=False):
                if show == "all" or ('"level": "info"' not in line
                                     and '"level": "debug"' not in line):
                    print(f"[{p.proc.pid} {t:.3f}] {line}")


async def wait_event(proc: Proc, name: str, after: float, timeout: float = TIMEOUT) -> float:
    """Wait for log event ``name`` logged at or after ``after``; return when it was."""
    test = is_event(name)
    start = next((i for i, t in enumerate(proc.times) if t >= after), len(proc.times))
    line = await proc.wait_line(test, timeout=timeout, start=start)
    return proc.times[proc.lines.index(line, start)]


@contextlib.asynccontextmanager
async def redis_client(url: str) -> AsyncIterator[Any]:
    """The test's own Redis client, for looking at keys (replies decoded to ``str``; typed
    ``Any`` because redis-py's annotations cannot say so)."""
    r = aioredis.Redis.from_url(url, decode_responses=True, socket_timeout=5)
    try:
        yield r
    finally:
        await r.aclose()


def rss_kib(pid: int) -> int:
    """Resident set size of a process, from /proc/<pid>/status (VmRSS, KiB)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def raise_nofile() -> tuple[int, int]:
    """Raise this process's soft open-file limit to the hard one; returns (soft, hard)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (``p`` in 0-100)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def id_key(msg_id: str) -> tuple[int, int]:
    ms, _, seq = msg_id.partition("-")
    return int(ms), int(seq)


# --------------------------------------------------------------------------- clients

async def connect(port: int, src: str | None = None, rcvbuf: int | None = None,
                  cls: type[LineClient] = JsonClient) -> Any:
    """A client socket to 127.0.0.1:``port``, optionally bound to source address ``src``
    (127.0.0.2, ... are all loopback) and with a small receive buffer."""
    sock = socket.socket()
    try:
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        if src is not None:
            sock.bind((src, 0))
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    except BaseException:
        sock.close()
        raise
    reader, writer = await asyncio.open_connection(sock=sock, limit=1 << 20)
    return cls(reader, writer)


@dataclass(slots=True)
class Got:
    """A room message as one member received it."""

    id: str
    sender: str
    text: str
    at: float
    """``time.monotonic()`` when it arrived."""


@dataclass(eq=False)
class Member:
    """A JSON client whose every incoming line is recorded by a background reader."""

    client: JsonClient
    nick: str = ""
    msgs: dict[str, list[Got]] = field(default_factory=dict)
    acks: dict[Any, tuple[str | None, float]] = field(default_factory=dict)
    errors: dict[Any, tuple[str, float]] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    closed_at: float | None = None
    reset: bool = False
    _changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    _task: asyncio.Task[None] | None = None

    def start(self) -> Member:
        self._task = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        reader = self.client.reader
        buf = b""
        try:
            while data := await reader.read(1 << 16):
                buf += data
                *lines, buf = buf.split(b"\n")
                now = time.monotonic()
                for line in lines:
                    self._record(line, now)
                async with self._changed:
                    self._changed.notify_all()
        except ConnectionError:
            self.reset = True
        finally:
            self.closed_at = time.monotonic()
            async with self._changed:
                self._changed.notify_all()

    def _record(self, line: bytes, now: float) -> None:
        if not line.startswith(b"{"):
            self.events.append({"ev": "text", "text": line.decode(errors="replace")})
            return
        obj = json.loads(line)
        ev = obj.get("ev")
        if ev == "msg":
            self.msgs.setdefault(obj["room"], []).append(
                Got(obj["id"], obj["from"], obj["text"], now))
        elif ev == "ack":
            self.acks[obj.get("ref")] = (obj.get("id"), now)
        elif ev == "error" and "ref" in obj:
            self.errors[obj["ref"]] = (obj["code"], now)
            self.events.append(obj)
        else:
            self.events.append(obj)

    async def until(self, test: Callable[..., object], timeout: float = TIMEOUT) -> None:
        """Wait (bounded) until ``test()`` holds for what has been received."""
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(lambda: test() or self._over(test))
        if not test():
            raise AssertionError(f"{self.nick}: connection ended before the condition held")

    def _over(self, test: Callable[..., object]) -> bool:
        return self.closed_at is not None and not test()

    async def event(self, ev: str, timeout: float = TIMEOUT, **match: Any) -> dict[str, Any]:
        """The first recorded event ``ev`` with the given field values (waiting for it)."""
        found: list[dict[str, Any]] = []

        def seen() -> bool:
            found[:] = [e for e in self.events if e.get("ev") == ev and all(
                e.get(k) == v for k, v in match.items())]
            return bool(found)

        await self.until(seen, timeout)
        return found[0]

    def has(self, ev: str, **match: Any) -> bool:
        return any(e.get("ev") == ev and all(e.get(k) == v for k, v in match.items())
                   for e in self.events)

    def send(self, op: str, **fields: Any) -> None:
        """Write one command without waiting for anything."""
        self.client.writer.write(json.dumps({"op": op, **fields}).encode() + b"\n")

    async def drain(self) -> None:
        await self.client.writer.drain()

    def ids(self, room: str) -> list[str]:
        return [g.id for g in self.msgs.get(room, [])]

    async def closed(self, timeout: float = TIMEOUT) -> None:
        await self.until(lambda: self.closed_at is not None, timeout)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        await self.client.close()


async def member(port: int, nick: str, rooms: Sequence[str] | None = None,
                 src: str | None = None, see_join: bool = True) -> Member:
    """A registered JSON user (in ``rooms``, default the lobby) that records everything;
    unless ``see_join`` is False, returns once its own joins came back over the bus."""
    c = await connect(port, src)
    m = Member(c, nick).start()
    hello: dict[str, Any] = {"nick": nick}
    if rooms is not None:
        hello["rooms"] = list(rooms)
    m.send("hello", **hello)
    await m.drain()
    await m.event("welcome")
    for room in (rooms or ["lobby"]) if see_join else ():
        await m.event("join", room=room, nick=nick)
    return m


async def members(port: int, nicks: Sequence[str], rooms: Sequence[str] | None = None,
                  src: str | None = None, batch: int = 50) -> list[Member]:
    out: list[Member] = []
    for i in range(0, len(nicks), batch):
        out += await asyncio.gather(*(member(port, n, rooms, src) for n in nicks[i:i + batch]))
    return out


async def close_all(ms: Iterable[Member]) -> None:
    for m in ms:
        if m._task is not None:
            m._task.cancel()
        with contextlib.suppress(ValueError):
            OPEN_CLIENTS.remove(m.client)
        m.client.writer.close()


# --------------------------------------------------------------------------- counting

@dataclass(slots=True)
class Delivery:
    """What one member received of a room, against what was acknowledged there."""

    expected: int
    received: int
    lost: int
    duplicated: int
    out_of_order: int


def delivery(acked: Iterable[str], got: Sequence[str]) -> Delivery:
    want = set(acked)
    seen: set[str] = set()
    dups = 0
    for i in got:
        if i in seen:
            dups += 1
        seen.add(i)
    return Delivery(len(want), len(got), len(want - seen), dups,
                    out_of_order([id_key(i) for i in got]))


def out_of_order(values: Sequence[Any]) -> int:
    """How many values are not greater than the one before them."""
    return sum(1 for a, b in itertools.pairwise(values) if b <= a)


def port_of(url: str) -> int:
    """The port of a ``redis://host:port/db`` URL."""
    return int(url.rsplit(":", 1)[1].split("/")[0])


class Talker:
    """Says a numbered, time-stamped line every ``interval`` seconds until stopped,
    without waiting for outcomes (the :class:`Member` records acks and errors by ``ref``,
    which is the line's number).  The interval is the load's shape, not a wait for
    anything."""

    def __init__(self, m: Member, room: str | None = None, interval: float = 0.05) -> None:
        self.m = m
        self.room = room
        self.interval = interval
        self.sent: dict[int, float] = {}
        self._said = asyncio.Event()
        """Set after each line said (cleared by :meth:`saying`)."""
        self._task: asyncio.Task[None] | None = None

    def start(self) -> Talker:
        self._task = asyncio.create_task(self._run())
        return self

    async def _run(self) -> None:
        seq = 0
        room = {"room": self.room} if self.room else {}
        while self.m.closed_at is None:
            now = time.monotonic()
            self.m.send("say", text=f"{self.m.nick} {seq} {now:.6f}", ref=seq, **room)
            self.sent[seq] = now
            self._said.set()
            seq += 1
            try:
                await self.m.drain()
            except (ConnectionError, OSError):
                return  # the node closed the connection: the test sees it on the Member
            await asyncio.sleep(self.interval)

    async def saying(self, lines: int, timeout: float = 15.0) -> None:
        """Until ``lines`` more lines are said, whatever becomes of them (a room whose
        lines are held gets no acks to wait for)."""
        goal = len(self.sent) + lines
        async with asyncio.timeout(timeout):
            while len(self.sent) < goal:
                self._said.clear()
                await self._said.wait()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def settled(self, *_: object) -> bool:
        """Every line said so far has an outcome (ack or error)."""
        return all(s in self.m.acks or s in self.m.errors for s in self.sent)

    def acked(self) -> dict[int, str]:
        """seq -> message id, for the lines that were acknowledged."""
        return {s: i for s, (i, _) in self.m.acks.items()
                if isinstance(s, int) and s in self.sent and i}

    def refused(self) -> dict[int, str]:
        """seq -> error code, for the lines that were refused."""
        return {s: c for s, (c, _) in self.m.errors.items()
                if isinstance(s, int) and s in self.sent}


async def heard_last(talkers: Iterable[Talker], receivers: Sequence[Member], room: str,
                     timeout: float = TIMEOUT) -> None:
    """Until every receiver (but the talker itself) has each talker's last acknowledged
    line: an ack and the line's delivery come back on different connections, so the
    last lines may still be on their way when every line has its ack."""
    for t in talkers:
        acked = t.acked()
        if not acked:
            continue
        last = acked[max(acked)]
        for r in receivers:
            if r is not t.m:
                await r.until(lambda r=r, last=last: last in r.ids(room), timeout)


def seqs_from(m: Member, room: str, sender: str) -> list[int]:
    """The line numbers of ``sender``'s Talker lines as ``m`` received them, in order."""
    return [int(g.text.split()[1]) for g in m.msgs.get(room, []) if g.sender == sender]


async def claim(port: int, nicks: Sequence[str], src: str | None = None,
                timeout: float = TIMEOUT, batch: int = 0
                ) -> tuple[list[Member], dict[str, str]]:
    """Try to register every nick on one node, ``batch`` at a time (0: all at once);
    returns the clients and each nick's outcome (``welcome`` or the error code)."""
    out: list[Member] = []
    step = batch or len(nicks) or 1
    for i in range(0, len(nicks), step):
        ms = [Member(await connect(port, src), n).start() for n in nicks[i:i + step]]
        out += ms
        for m in ms:
            m.send("hello", nick=m.nick, ref="hello")
        for m in ms:
            await m.drain()
        for m in ms:
            await m.until(lambda m=m: hello_outcome(m) is not None, timeout)
    return out, {m.nick: hello_outcome(m) or "none" for m in out}


def hello_outcome(m: Member) -> str | None:
    """``welcome``, the error code the hello got, or None while there is no answer."""
    if m.has("welcome"):
        return "welcome"
    if "hello" in m.errors:
        return m.errors["hello"][0]
    return None
