"""What a login costs, and whether a password brute force slows anybody else.

Starts a throwaway redis-server and one ``hubbub node --auth accounts`` subprocess per
phase (on free ports; nothing else is touched), then measures:

1. ``argon2id`` (argon2-cffi defaults) verify, in this process: the median of N runs;
2. one login end to end: a JSON ``hello`` with the right password until its ``welcome``
   (a fresh connection each time), median of N;
3. the latency of other users' room messages (say -> the other users receive it; p50,
   p99, max) with no attack, then while ATTACK wrong passwords per second are tried
   against one account from ATTACKERS connections (100) — once with the default throttles
   (almost every guess is refused unchecked), once with the throttles off (every guess
   reaches the hash pool; past --hash-concurrency + --hash-queue they are refused with
   auth-busy).

    python benchmarks/login_cost.py                 # ~45 s
    python benchmarks/login_cost.py --seconds 5 --attack 100
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import argon2

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cli.cluster import free_port

PASSWORD = "the-right-password"


@asynccontextmanager
async def redis_server() -> AsyncIterator[str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not on PATH")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="hubbub-bench-") as workdir:
        proc = await asyncio.create_subprocess_exec(
            binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", workdir, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT)
        assert proc.stdout is not None
        while b"Ready to accept connections" not in await proc.stdout.readline():
            pass
        try:
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            proc.terminate()
            await proc.wait()


@asynccontextmanager
async def node(url: str, *args: str) -> AsyncIterator[int]:
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cli", "node", "--host", "127.0.0.1", "--port", str(port),
        "--http-port", "0", "--redis-url", url, "--log-json", "--log-level", "warning",
        "--auth", "accounts", "--max-per-ip", "0", "--conn-rate-per-ip", "0", *args,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        for _ in range(200):
            try:
                _, w = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                await asyncio.sleep(0.05)
                continue
            w.close()
            break
        await asyncio.sleep(0.3)  # the relay subscribes right after the listener opens
        yield port
    finally:
        proc.terminate()
        await proc.wait()


class Client:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> Client:
        r, w = await asyncio.open_connection("127.0.0.1", port, limit=1 << 22)
        return cls(r, w)

    def op(self, **obj: object) -> None:
        self.writer.write(json.dumps(obj).encode() + b"\n")

    async def event(self, *kinds: str) -> dict[str, object]:
        while True:
            line = await self.reader.readline()
            if not line:
                raise EOFError
            if line.startswith(b"{"):
                ev: dict[str, object] = json.loads(line)
                if ev.get("ev") in kinds:
                    return ev

    async def hello(self, nick: str, password: str | None = None) -> dict[str, object]:
        self.op(op="hello", nick=nick, password=password, ref="h")
        return await self.event("welcome", "error")

    def close(self) -> None:
        self.writer.close()


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def create_account(port: int, nick: str) -> None:
    c = await Client.open(port)
    await c.hello(nick)
    c.op(op="register", password=PASSWORD, ref="r")
    while (ev := await c.event("ack", "error")).get("ref") != "r":
        pass
    assert ev["ev"] == "ack", ev
    c.op(op="quit")
    c.close()


async def login_cost(port: int, rounds: int) -> list[float]:
    await create_account(port, "someone")
    out = []
    for _ in range(rounds):
        c = await Client.open(port)
        started = time.perf_counter()
        ev = await c.hello("someone", PASSWORD)
        out.append((time.perf_counter() - started) * 1000)
        assert ev["ev"] == "welcome", ev
        c.op(op="quit")
        await c.event("bye")
        c.close()
    return out


async def chat_latency(port: int, seconds: float) -> list[float]:
    """Latency of room messages among 10 users: 5 say 2 lines/s each, 5 listen."""
    users = [await Client.open(port) for _ in range(10)]
    for i, u in enumerate(users):
        await u.hello(f"user{i}")
        await u.event("join")
    latencies: list[float] = []
    stop = time.perf_counter() + seconds

    async def listen(u: Client) -> None:
        while True:
            ev = await u.event("msg")
            text = str(ev["text"])
            if text.startswith("t="):
                latencies.append((time.perf_counter() - float(text[2:].split()[0])) * 1000)

    async def talk(u: Client) -> None:
        while time.perf_counter() < stop:
            u.op(op="say", text=f"t={time.perf_counter()!r} hello")
            await asyncio.sleep(0.5)

    listeners = [asyncio.create_task(listen(u)) for u in users[5:]]
    await asyncio.gather(*(talk(u) for u in users[:5]))
    await asyncio.sleep(0.5)
    for t in listeners:
        t.cancel()
    await asyncio.gather(*listeners, return_exceptions=True)
    for u in users:
        u.op(op="quit")
        u.close()
    return latencies


async def attack_outcomes(port: int, seconds: float, attack: int, attackers: int,
                          victim: str) -> tuple[list[float], Counter[str]]:
    """The chat measurement, with the attackers' answers counted as they come."""
    outcomes: Counter[str] = Counter()
    conns = [await Client.open(port) for _ in range(attackers)]
    stop = time.perf_counter() + seconds

    async def guess(c: Client, n: int) -> None:
        interval = attackers / attack
        nxt = time.perf_counter()
        k = 0
        while time.perf_counter() < stop:
            c.op(op="hello", nick=victim, password=f"wrong-{n}-{k}", ref=k)
            k += 1
            nxt += interval
            await asyncio.sleep(max(0.0, nxt - time.perf_counter()))

    async def tally(c: Client) -> None:
        while True:
            ev = await c.event("error", "welcome")
            outcomes[str(ev.get("code", ev["ev"]))] += 1

    tallies = [asyncio.create_task(tally(c)) for c in conns]
    guesses = [asyncio.create_task(guess(c, n)) for n, c in enumerate(conns)]
    latencies = await chat_latency(port, seconds)
    await asyncio.gather(*guesses)
    await asyncio.sleep(1.0)  # answers still in flight
    for t in tallies:
        t.cancel()
    await asyncio.gather(*tallies, return_exceptions=True)
    for c in conns:
        c.close()
    return latencies, outcomes


def show(label: str, latencies: list[float], outcomes: Counter[str] | None = None) -> None:
    line = (f"{label:<44} messages={len(latencies):4d}  p50={pct(latencies, 0.5):7.2f} ms  "
            f"p99={pct(latencies, 0.99):7.2f} ms  max={max(latencies):7.2f} ms")
    print(line)
    if outcomes:
        total = sum(outcomes.values())
        print(f"{'':<44} guesses answered={total}: " +
              ", ".join(f"{k}={v}" for k, v in sorted(outcomes.items())))


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=30, help="logins to time")
    parser.add_argument("--seconds", type=float, default=10.0, help="per chat phase")
    parser.add_argument("--attack", type=int, default=100, help="wrong passwords per second")
    parser.add_argument("--attackers", type=int, default=100, help="attacking connections")
    opts = parser.parse_args()

    hasher = argon2.PasswordHasher()
    encoded = hasher.hash(PASSWORD)
    runs = []
    for _ in range(opts.rounds):
        started = time.perf_counter()
        hasher.verify(encoded, PASSWORD)
        runs.append((time.perf_counter() - started) * 1000)
    print(f"argon2id verify (t={hasher.time_cost}, m={hasher.memory_cost} KiB, "
          f"p={hasher.parallelism}), in process: median {statistics.median(runs):.1f} ms "
          f"(min {min(runs):.1f}, max {max(runs):.1f}, n={len(runs)})")

    async with redis_server() as url:
        async with node(url) as port:
            logins = await login_cost(port, opts.rounds)
            print(f"login end to end (hello with password -> welcome): median "
                  f"{statistics.median(logins):.1f} ms (min {min(logins):.1f}, "
                  f"max {max(logins):.1f}, n={len(logins)})")
            await create_account(port, "victim")
            lat = await chat_latency(port, opts.seconds)
            show("chat, no attack", lat)
            lat, out = await attack_outcomes(port, opts.seconds, opts.attack, opts.attackers,
                                             "victim")
            show(f"chat, {opts.attack} wrong passwords/s, default throttles", lat, out)
        async with node(url, "--login-fails-per-name", "0", "--login-fails-per-ip", "0",
                        "--prefix", "hubbub-nothrottle:") as port:
            await create_account(port, "victim")
            lat, out = await attack_outcomes(port, opts.seconds, opts.attack, opts.attackers,
                                             "victim")
            show(f"chat, {opts.attack} wrong passwords/s, throttles off", lat, out)


if __name__ == "__main__":
    asyncio.run(main())
