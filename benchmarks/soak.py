"""Soak: does anything users do make Redis or the nodes grow for ever?

Starts its own ``redis-server`` (``noeviction``) on a free port and NODES ``hubbub node``
processes (``hubbub bench --spawn``'s :class:`~cli.bench.spawn.LocalCluster`: no rate limits,
no per-address caps), then for MINUTES keeps USERS JSON users connected.  Each user lives a
random while: it connects to a random node, joins and leaves random rooms among ROOMS
names, talks, sometimes renames itself, then quits (or, now and then, just drops its
connection), and a new user takes its place.

Every SAMPLE seconds it reads Redis's ``used_memory`` and key count (``DBSIZE``: the Redis
is its own) and each node's resident memory (VmRSS), and prints a row.  At the end it
prints the growth after warm-up: from the first reading after WARMUP (a fraction of the
run: rooms fill up to their history caps meanwhile) to the last, and the fitted slope per
minute over that stretch.

    python benchmarks/soak.py --minutes 2
    python benchmarks/soak.py --minutes 30 --idle-ttl 60 --history-age 300 --json

Nodes that have ``--room-idle-ttl`` / ``--history-age`` get IDLE_TTL / HISTORY_AGE
(short, so expiry happens during the run); ``--node-args "..."`` passes anything else
(e.g. ``--node-args="--history-max 200"``).  It runs the nodes of the checkout it sits in.
SIGINT or SIGTERM ends the run early, with the report so far; everything it starts is
stopped before it exits.  Exit status 1 when the users met errors other than the expected
refusals, or the nodes went away.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import random
import shlex
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

# this checkout's nodes and options, whatever hubbub the interpreter has installed
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cli.bench.spawn import LocalCluster
from cli.bench.sysinfo import rss_bytes
from cli.options import NODE_OPTIONS

MiB = 1024 * 1024
EXPECTED_REFUSALS = frozenset({"not-in-room", "nick-taken", "too-many-rooms",
                               "room-create-throttled", "rooms-full", "rate-limited"})
"""Error codes a random user can earn by its own choices (or a quota): counted, not a
failure of the run."""


@dataclass
class Tally:
    """What the users did and met, all together."""

    ops: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    sessions: int = 0
    online: int = 0
    dropped: int = 0
    """Connections the node ended without being asked (not a quit of ours)."""
    failed_connects: int = 0


@dataclass
class Soak:
    targets: list[tuple[str, int]]
    rooms: list[str]
    think: float
    life: tuple[float, float]
    until: float
    tally: Tally = field(default_factory=Tally)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)


class User:
    """One connection's life (see the module docstring)."""

    def __init__(self, soak: Soak, uid: int, generation: int) -> None:
        self.soak = soak
        self.nick = f"u{uid}g{generation}"
        self.renames = 0
        self.joined: list[str] = []
        self.ref = 0
        self.welcome = asyncio.Event()
        self.quitting = False

    def send(self, writer: asyncio.StreamWriter, op: str, **fields: Any) -> None:
        self.ref += 1
        self.soak.tally.ops[op] += 1
        writer.write(json.dumps({"op": op, "ref": self.ref, **fields}).encode() + b"\n")

    async def read(self, reader: asyncio.StreamReader) -> None:
        tally = self.soak.tally
        while line := await reader.readline():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            ev = event.get("ev")
            if ev == "welcome":
                self.welcome.set()
            elif ev == "error":
                tally.errors[str(event.get("code"))] += 1
        if not self.quitting:
            tally.dropped += 1

    async def live(self) -> None:
        soak, tally = self.soak, self.soak.tally
        host, port = random.choice(soak.targets)
        try:
            reader, writer = await asyncio.open_connection(host, port, limit=1 << 20)
        except OSError:
            tally.failed_connects += 1
            return
        reading = asyncio.create_task(self.read(reader))
        tally.sessions += 1
        tally.online += 1
        try:
            first = random.choice(soak.rooms)
            self.send(writer, "hello", nick=self.nick, rooms=[first])
            self.joined.append(first)
            async with asyncio.timeout(10):
                await self.welcome.wait()
            end = min(time.monotonic() + random.uniform(*soak.life), soak.until)
            while time.monotonic() < end and not soak.stopping.is_set() and not reading.done():
                await asyncio.sleep(random.expovariate(1 / soak.think))  # the user's pace
                self.act(writer)
                await writer.drain()
            self.quitting = True
            if random.random() < 0.8:
                self.send(writer, "quit", reason="soak")
                await writer.drain()
                async with asyncio.timeout(10):
                    await reading
        except (OSError, TimeoutError):
            pass
        finally:
            self.quitting = True
            tally.online -= 1
            reading.cancel()
            writer.close()
            with contextlib.suppress(OSError, asyncio.CancelledError):
                await writer.wait_closed()

    def act(self, writer: asyncio.StreamWriter) -> None:
        """One action: say 55 %, join 16 %, part 16 % (join while in one room, part
        while in five), rename 6 %, who 7 %."""
        roll = random.random()
        rooms = self.soak.rooms
        join = 0.55 <= roll < 0.71 or (0.71 <= roll < 0.87 and len(self.joined) <= 1)
        if roll < 0.55 and self.joined:
            room = random.choice(self.joined)
            self.send(writer, "say", room=room, text=f"{self.nick} says {random.random():.6f}")
        elif join and len(self.joined) < 5:
            room = random.choice(rooms)
            if room not in self.joined:
                self.joined.append(room)
            self.send(writer, "join", room=room)
        elif roll < 0.87 and len(self.joined) > 1:
            room = self.joined.pop(random.randrange(len(self.joined)))
            self.send(writer, "part", room=room)
        elif roll < 0.93:
            self.renames += 1
            self.nick = f"{self.nick.split('n')[0]}n{self.renames}"
            self.send(writer, "nick", nick=self.nick)
        else:
            self.send(writer, "who", room=random.choice(self.joined or rooms))


async def seat(soak: Soak, uid: int) -> None:
    """One place in the soak: a user after another until the end."""
    generation = 0
    while time.monotonic() < soak.until and not soak.stopping.is_set():
        generation += 1
        await User(soak, uid, generation).live()


@dataclass
class Reading:
    t: float
    used_memory: int
    keys: int
    rss: list[int | None]
    online: int
    ops: int


async def read_once(redis: Redis, pids: list[int | None], soak: Soak, started: float
                    ) -> Reading:
    info = await redis.info("memory")
    keys = await redis.dbsize()
    rss = [rss_bytes(pid) if pid is not None else None for pid in pids]
    return Reading(time.monotonic() - started, int(info["used_memory"]), int(keys), rss,
                   soak.tally.online, sum(soak.tally.ops.values()))


def mib(value: float | None) -> str:
    return "-" if value is None else f"{value / MiB:.2f}"


def row(r: Reading) -> str:
    nodes = "  ".join(f"{mib(v):>9}" for v in r.rss)
    return (f"{r.t:7.0f}  {mib(r.used_memory):>11}  {r.keys:>7}  {nodes}  {r.online:>6}  "
            f"{r.ops:>8}")


def header(nodes: int) -> str:
    names = "  ".join(f"{f'rss n{i + 1}':>9}" for i in range(nodes))
    return f"{'t (s)':>7}  {'redis (MiB)':>11}  {'keys':>7}  {names}  {'online':>6}  {'ops':>8}"


def slope_per_minute(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, value) points, per minute (0 with < 2 points)."""
    if len(points) < 2:
        return 0.0
    n = len(points)
    mt = sum(t for t, _ in points) / n
    mv = sum(v for _, v in points) / n
    var = sum((t - mt) ** 2 for t, _ in points)
    if var == 0:
        return 0.0
    return 60 * sum((t - mt) * (v - mv) for t, v in points) / var


def growth(readings: list[Reading], warmup_s: float) -> dict[str, dict[str, float]]:
    """For each series: the value at the end of warm-up, the last one, their difference
    (absolute and in %), the largest after warm-up and the slope per minute."""
    after = [r for r in readings if r.t >= warmup_s] or readings[-1:]
    series: dict[str, list[tuple[float, float]]] = {
        "redis_used_memory": [(r.t, r.used_memory) for r in after],
        "redis_keys": [(r.t, r.keys) for r in after],
    }
    for i in range(len(after[0].rss)):
        series[f"node{i + 1}_rss"] = [(r.t, v) for r in after if (v := r.rss[i]) is not None]
    out: dict[str, dict[str, float]] = {}
    for name, points in series.items():
        if not points:
            continue
        first, last = points[0][1], points[-1][1]
        out[name] = {"from_t": points[0][0], "to_t": points[-1][0], "from": first,
                     "to": last, "change": last - first,
                     "change_pct": 100 * (last - first) / first if first else math.nan,
                     "max": max(v for _, v in points),
                     "slope_per_min": slope_per_minute(points)}
    return out


def node_extra(args: argparse.Namespace) -> tuple[str, ...]:
    """The arguments every node gets: the short expiry settings (when this version of
    ``hubbub node`` has them), then ``--node-args``."""
    flags = {option.flag for option in NODE_OPTIONS}
    extra: list[str] = []
    if "--room-idle-ttl" in flags:
        extra += ["--room-idle-ttl", str(args.idle_ttl)]
    if "--history-age" in flags:
        extra += ["--history-age", str(args.history_age)]
    return (*extra, *shlex.split(args.node_args))


async def soak_run(args: argparse.Namespace) -> dict[str, Any]:
    node_args = node_extra(args)
    seconds = args.minutes * 60
    out = sys.stderr if args.json else sys.stdout
    async with LocalCluster(args.nodes, node_args=node_args) as cluster:
        assert cluster.probe.redis_url is not None
        redis = Redis.from_url(cluster.probe.redis_url, socket_timeout=10)
        pids = [n.pid for n in cluster.probe.nodes]
        started = time.monotonic()
        soak = Soak(cluster.targets, [f"r{i}" for i in range(args.rooms)], args.think,
                    (args.life_min, args.life_max), started + seconds)
        print(f"soak: {args.minutes:g} min, {args.users} users on {args.nodes} nodes, "
              f"{args.rooms} room names; node args: {' '.join(node_args) or '(none)'}",
              file=out, flush=True)
        print(header(args.nodes), file=out, flush=True)
        seats = [asyncio.create_task(seat(soak, uid)) for uid in range(args.users)]
        readings: list[Reading] = []
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, soak.stopping.set)
        try:
            while True:
                reading = await read_once(redis, pids, soak, started)
                readings.append(reading)
                print(row(reading), file=out, flush=True)
                left = soak.until - time.monotonic()
                if left <= 0 or soak.stopping.is_set():
                    break
                # the sampling period (cut short by a signal)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(args.sample, left)):
                        await soak.stopping.wait()
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
            soak.stopping.set()
            await asyncio.gather(*seats, return_exceptions=True)
        # once every user is gone: what is left behind
        readings.append(await read_once(redis, pids, soak, started))
        print(row(readings[-1]) + "  (all users gone)", file=out, flush=True)
        await redis.aclose()
        alive = [n.pid is not None and rss_bytes(n.pid) is not None
                 for n in cluster.probe.nodes]
    tally = soak.tally
    unexpected = {c: n for c, n in tally.errors.items() if c not in EXPECTED_REFUSALS}
    ran = readings[-2].t  # the last reading before the users left
    return {"minutes": args.minutes, "ran_minutes": ran / 60, "users": args.users,
            "nodes": args.nodes,
            "rooms": args.rooms, "node_args": list(node_args), "warmup": args.warmup,
            "sessions": tally.sessions, "ops": dict(tally.ops), "errors": dict(tally.errors),
            "unexpected_errors": unexpected, "dropped": tally.dropped,
            "failed_connects": tally.failed_connects, "nodes_alive": alive,
            "readings": [vars(r) for r in readings],
            "growth": growth(readings[:-1], ran * args.warmup),
            "left_behind": vars(readings[-1])}


def report(result: dict[str, Any]) -> str:
    cut = "" if result["ran_minutes"] >= result["minutes"] - 0.1 else (
        f" (stopped early: {result['ran_minutes']:.1f} of {result['minutes']:g} min)")
    lines = [f"\nsessions {result['sessions']}, ops {sum(result['ops'].values())} "
             f"({', '.join(f'{k} {v}' for k, v in sorted(result['ops'].items()))})",
             f"errors: {result['errors'] or 'none'}; dropped connections: "
             f"{result['dropped']}; failed connects: {result['failed_connects']}",
             f"growth after warm-up (first {result['warmup']:.0%} of the run){cut}:"]
    for name, g in result["growth"].items():
        unit, scale, d = ("", 1.0, 0) if name == "redis_keys" else (" MiB", MiB, 2)
        pct = "" if math.isnan(g["change_pct"]) else f" ({g['change_pct']:+.1f} %)"
        lines.append(
            f"  {name:<18} t={g['from_t']:.0f}s {g['from'] / scale:.{d}f}{unit} -> "
            f"t={g['to_t']:.0f}s {g['to'] / scale:.{d}f}{unit}: "
            f"{g['change'] / scale:+.{d}f}{unit}{pct}; max {g['max'] / scale:.{d}f}{unit}; "
            f"slope {g['slope_per_min'] / scale:+.{d + 1}f}{unit}/min")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--minutes", type=float, default=2.0, help="length of the run")
    p.add_argument("--nodes", type=int, default=2, help="hubbub nodes to start")
    p.add_argument("--users", type=int, default=60, help="users connected at any time")
    p.add_argument("--rooms", type=int, default=300, help="room names users pick from")
    p.add_argument("--think", type=float, default=1.0,
                   help="mean seconds between a user's actions")
    p.add_argument("--life-min", type=float, default=10.0, help="shortest user session (s)")
    p.add_argument("--life-max", type=float, default=60.0, help="longest user session (s)")
    p.add_argument("--sample", type=float, default=5.0, help="seconds between readings")
    p.add_argument("--warmup", type=float, default=0.2,
                   help="fraction of the run before growth is measured")
    p.add_argument("--idle-ttl", type=float, default=30.0,
                   help="--room-idle-ttl for nodes that have it (s)")
    p.add_argument("--history-age", type=float, default=120.0,
                   help="--history-age for nodes that have it (s)")
    p.add_argument("--node-args", default="", help="more hubbub node arguments (one string)")
    p.add_argument("--seed", type=int, default=None, help="random seed")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    args = p.parse_args(argv)
    if args.minutes <= 0 or args.users < 1 or args.rooms < 1 or args.sample <= 0:
        p.error("--minutes, --users, --rooms and --sample must be positive")
    if not 0 <= args.warmup < 1:
        p.error("--warmup is a fraction of the run: 0 to under 1")
    if not 0 < args.life_min <= args.life_max or args.think <= 0:
        p.error("need 0 < --life-min <= --life-max and --think > 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    random.seed(args.seed)
    result = asyncio.run(soak_run(args))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(report(result))
    ok = not result["unexpected_errors"] and all(result["nodes_alive"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
