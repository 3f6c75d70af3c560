"""What keeping notices in the rooms' streams costs Redis, at the 2,000-room scale case.

Starts a redis-server on a free port and three ``hubbub node`` processes on it, runs
``hubbub bench --nodes … --clients 10000 --rooms 2000 --rate 2000`` against them (every
client joins its room, which now appends a join notice to the room's stream, then they
talk, then they leave, which appends a quit notice), and reads Redis afterwards: XADD
calls and how many were notices, XADDs per second during set-up and during the load, and
stream memory per room (``MEMORY USAGE`` of every room's stream, split by entry kind).

    python benchmarks/notice_cost.py [--rooms 2000] [--members 5] [--rate 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from typing import Any

import redis.asyncio as aioredis

from cli.cluster import free_port


async def wait_for(stream: asyncio.StreamReader, text: str) -> None:
    while line := await stream.readline():
        if text in line.decode(errors="replace"):
            return
    raise RuntimeError(f"process ended before {text!r}")


async def xadds(r: Any) -> int:
    stats = await r.info("commandstats")
    return int(stats.get("cmdstat_xadd", {}).get("calls", 0))


async def main(rooms: int, members: int, rate: float) -> None:
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    with tempfile.TemporaryDirectory() as workdir:
        redis_proc = await asyncio.create_subprocess_exec(
            "redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", workdir, stdout=asyncio.subprocess.PIPE)
        assert redis_proc.stdout is not None
        await wait_for(redis_proc.stdout, "Ready to accept connections")
        nodes, ports = [], []
        for i in range(3):
            ports.append(free_port())
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "cli", "node", "--host", "127.0.0.1", "--port",
                str(ports[-1]), "--redis-url", url, "--node-id", f"n{i + 1}", "--rate", "0",
                "--max-per-ip", "0", "--conn-rate-per-ip", "0", "--max-connections", "20000",
                "--list-rate", "0", "--room-create-rate", "0", "--http-port", "0", "--log-json",
                "--log-level", "warning",
                stderr=asyncio.subprocess.DEVNULL, env={**os.environ, "PYTHONUNBUFFERED": "1"})
            nodes.append(proc)
        r = aioredis.Redis.from_url(url, decode_responses=True)
        try:
            # the nodes' heartbeats appear in Redis once they are up (nothing to await)
            while len(await r.smembers("hubbub:{nicks}:nodes")) < 3:  # noqa: ASYNC110
                await asyncio.sleep(0.2)
            before = await xadds(r)
            started = time.monotonic()
            bench = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "cli", "bench", "--nodes",
                ",".join(f"127.0.0.1:{p}" for p in ports), "--redis-url", url,
                "--clients", str(rooms * members), "--rooms", str(rooms), "--rate", str(rate),
                "--duration", "5", "--warmup", "0.5", "--workers", "2", "--json",
                stdout=asyncio.subprocess.PIPE)
            out, _ = await bench.communicate()
            took = time.monotonic() - started
            report = json.loads(out.decode()[out.decode().index("{"):])
            total = await xadds(r) - before
            streams = [k async for k in r.scan_iter("hubbub:{room:*}:hist", count=1000)
                       if k != "hubbub:{room:lobby}:hist"]  # every client passes the lobby
            kinds: dict[str, int] = {}
            size = 0
            for key in streams:
                size += int(await r.memory_usage(key, samples=0) or 0)
                for _, fields in await r.xrange(key):
                    kind = json.loads(fields["e"])["t"]
                    kinds[kind] = kinds.get(kind, 0) + 1
            entries = sum(kinds.values())
            notices = entries - kinds.get("msg", 0)
            memory = (await r.info("memory"))["used_memory"]
        finally:
            await r.aclose()
            for proc in nodes:
                proc.terminate()
            for proc in nodes:
                await proc.wait()
            redis_proc.terminate()
            await redis_proc.wait()
    setup = report.get("setup_seconds") or report.get("setup", {}).get("seconds")
    print(f"{rooms} rooms x {members} members over 3 nodes, {rate:g} msg/s for 5 s "
          f"({took:.0f} s in all)")
    print(f"XADD calls: {total:,} ({kinds.get('msg', 0):,} messages, {notices:,} notices: "
          f"{json.dumps({k: v for k, v in kinds.items() if k != 'msg'})})")
    if setup:
        print(f"set-up: {rooms * members:,} joins in {setup:.1f} s = "
              f"{rooms * members / setup:,.0f} notice XADDs/s (one per join)")
    print(f"room streams (the lobby aside): {len(streams):,}, {entries:,} entries, "
          f"{size / 1024:,.0f} KiB "
          f"= {size / max(1, len(streams)):,.0f} B per room; "
          f"{size / max(1, entries):,.0f} B per entry on average, so notices take about "
          f"{size * notices / max(1, entries) / max(1, len(streams)):,.0f} B per room")
    print(f"Redis used_memory at the end: {memory / 2**20:,.1f} MiB")
    print("bench report:", json.dumps({k: report[k] for k in list(report)[:12]}))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rooms", type=int, default=2000)
    parser.add_argument("--members", type=int, default=5)
    parser.add_argument("--rate", type=float, default=2000.0)
    args = parser.parse_args()
    asyncio.run(main(args.rooms, args.members, args.rate))
