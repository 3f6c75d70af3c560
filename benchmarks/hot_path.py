"""Hot-path check for one room spread over two nodes (the full benchmark is ``hubbub bench``).

Starts its own ``redis-server`` on a free port and two ``hubbub node`` processes (no rate
limits), connects CLIENTS JSON clients to the lobby (half on each node), then for DURATION
seconds has SENDERS of them say lines — each keeping at most WINDOW unacknowledged, or
paced to RATE messages/s in all — and reports deliveries/s (``msg`` events received by all
clients, each sender's own echo included) and the latency from ``say`` to delivery
(p50/p99, from the send time carried in the text, on every delivery to the first SAMPLE
clients; the others only count, to keep the load generator cheap).  The sampled clients
also check that they saw each sender's messages in order.

    python benchmarks/hot_path.py --clients 100 --senders 10 --window 32 --duration 5
    python benchmarks/hot_path.py --clients 100 --senders 100 --rate 2000 --duration 5

Everything it starts is stopped before it exits.  Run it on an otherwise quiet machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

try:
    import uvloop
except ImportError:  # pragma: no cover - optional
    uvloop = None  # type: ignore[assignment]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def processes(nodes: int, extra: list[str]) -> Iterator[list[int]]:
    """redis-server and ``nodes`` hubbub nodes; yields the nodes' chat ports."""
    procs: list[subprocess.Popen[bytes]] = []
    tmp = tempfile.mkdtemp(prefix="hubbub-bench-")
    try:
        rport = free_port()
        procs.append(subprocess.Popen(
            [shutil.which("redis-server") or "redis-server", "--port", str(rport), "--save", "",
             "--appendonly", "no", "--dir", tmp], stdout=subprocess.DEVNULL))
        ports = []
        for i in range(nodes):
            port = free_port()
            ports.append(port)
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "cli", "node", "--node-id", f"bench{i}",
                 "--host", "127.0.0.1", "--port", str(port), "--http-port", "0",
                 "--redis-url", f"redis://127.0.0.1:{rport}/0", "--rate", "0",
                 "--max-per-ip", "0", "--conn-rate-per-ip", "0", "--max-connections", "0",
                 "--list-rate", "0", "--room-create-rate", "0",
                 "--log-level", "warning", *extra],
                stdout=subprocess.DEVNULL))
        deadline = time.monotonic() + 20
        for port in ports:
            while True:
                with socket.socket() as s:
                    if s.connect_ex(("127.0.0.1", port)) == 0:
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError("nodes did not start")
                time.sleep(0.1)
        yield ports
    finally:
        for p in reversed(procs):  # the nodes first (they drain through Redis), then Redis
            p.terminate()
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        shutil.rmtree(tmp, ignore_errors=True)


class Client(asyncio.Protocol):
    """A JSON client that records deliveries, their latency and per-sender order."""

    def __init__(self, nick: str, counting_only: bool = False) -> None:
        self.nick = nick
        self.counting_only = counting_only
        """Only count deliveries and acks (latency and order are sampled elsewhere)."""
        self.buf = b""
        self.joined = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None
        self.delivered = 0
        self.latencies: list[int] = []
        self.last_seq: dict[str, int] = {}
        self.reordered = 0
        self.acked = 0
        self.ack_wait: asyncio.Event = asyncio.Event()
        self.measuring = False
        self.last_at = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass
        transport.write(json.dumps({"op": "hello", "nick": self.nick}).encode() + b"\n")

    def data_received(self, data: bytes) -> None:
        now = time.monotonic_ns()
        if self.counting_only and self.joined.done():  # keep the load generator cheap
            if self.measuring:
                n = data.count(b'"ev":"msg"')
                self.delivered += n
                if n:
                    self.last_at = now
            self.acked += data.count(b'"ev":"ack"')
            if b'"ev":"ack"' in data:
                self.ack_wait.set()
            return
        lines = (self.buf + data).split(b"\n")
        self.buf = lines.pop()
        for line in lines:
            if line.startswith(b'{"ev":"msg"'):
                ev = json.loads(line)
                sender, seq, sent = ev["text"].split(" ")
                last = self.last_seq.get(sender, -1)
                if int(seq) <= last:
                    self.reordered += 1
                self.last_seq[sender] = int(seq)
                if self.measuring:
                    self.delivered += 1
                    self.latencies.append(now - int(sent))
                    self.last_at = now
            elif line.startswith(b'{"ev":"ack"'):
                self.acked += 1
                self.ack_wait.set()
            elif line.startswith(b'{"ev":"join"') and not self.joined.done() \
                    and json.loads(line).get("nick") == self.nick:
                self.joined.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.joined.done():
            self.joined.set_exception(ConnectionError("closed before joining"))
        self.ack_wait.set()

    def say(self, seq: int) -> None:
        assert self.transport is not None
        text = f"{self.nick} {seq} {time.monotonic_ns()}"
        self.transport.write(b'{"op":"say","text":"' + text.encode() + b'","ref":'
                             + str(seq).encode() + b"}\n")


async def windowed(c: Client, window: int, stop: float) -> None:
    seq = 0
    while time.monotonic() < stop and not c.transport.is_closing():  # type: ignore[union-attr]
        while seq - c.acked < window:
            c.say(seq)
            seq += 1
        c.ack_wait.clear()
        await c.ack_wait.wait()


async def paced(c: Client, rate: float, stop: float) -> None:
    seq = 0
    start = time.monotonic()
    while (now := time.monotonic()) < stop:
        due = int((now - start) * rate) + 1
        while seq < due:
            c.say(seq)
            seq += 1
        await asyncio.sleep(1 / rate)


async def run(args: argparse.Namespace, ports: list[int]) -> None:
    loop = asyncio.get_running_loop()
    tag = os.getpid() % 10000
    clients: list[Client] = []
    for i in range(args.clients):
        port = ports[i % len(ports)]
        _, c = await loop.create_connection(
            lambda i=i: Client(f"c{tag}_{i}", counting_only=i >= args.sample), "127.0.0.1", port)
        clients.append(c)
    await asyncio.wait_for(asyncio.gather(*(c.joined for c in clients)), 30)
    await asyncio.sleep(1.0)  # the join announcements settle
    senders = clients[: args.senders]
    for c in clients:
        c.measuring = True
    start = time.monotonic()
    stop = start + args.duration
    if args.rate:
        tasks = [paced(c, args.rate / len(senders), stop) for c in senders]
    else:
        tasks = [windowed(c, args.window, stop) for c in senders]
    await asyncio.gather(*tasks)
    await asyncio.sleep(0.5)  # late deliveries of the last messages still count
    for c in clients:
        c.measuring = False
        if c.transport is not None:
            c.transport.close()
    delivered = sum(c.delivered for c in clients)
    lat = sorted(x for c in clients for x in c.latencies)
    reordered = sum(c.reordered for c in clients)
    sent = sum(c.acked for c in senders)
    elapsed = max(c.last_at for c in clients) / 1e9 - start

    def pct(p: float) -> float:
        return lat[min(len(lat) - 1, int(len(lat) * p))] / 1e6 if lat else float("nan")

    print(f"clients={args.clients} senders={args.senders} "
          f"{'rate=' + str(args.rate) if args.rate else 'window=' + str(args.window)} "
          f"duration={elapsed:.1f}s: acked {sent / elapsed:,.0f} msgs/s, "
          f"{delivered / elapsed:,.0f} deliveries/s, latency p50 {pct(0.5):.1f} ms "
          f"p99 {pct(0.99):.1f} ms max {pct(1.0):.1f} ms, out of order {reordered}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--senders", type=int, default=10)
    ap.add_argument("--window", type=int, default=32, help="unacknowledged says per sender")
    ap.add_argument("--rate", type=float, default=0,
                    help="total says per second, paced (0: as fast as acks allow)")
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--sample", type=int, default=10,
                    help="clients that parse every line for latency and order (the rest "
                         "count); the first SAMPLE clients, half on each node")
    ap.add_argument("--node-arg", action="append", default=[],
                    help="extra argument for every node (repeatable)")
    args = ap.parse_args()
    with processes(2, args.node_arg) as ports:
        if uvloop is not None:
            uvloop.run(run(args, ports))  # type: ignore[attr-defined]
        else:
            asyncio.run(run(args, ports))


if __name__ == "__main__":
    main()
