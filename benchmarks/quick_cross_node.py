"""A quick cross-node throughput check (the full benchmark is ``hubbub bench``).

Connects SENDERS JSON clients to node A and RECEIVERS to node B, all in the lobby, has
each sender say MESSAGES lines as fast as the node acknowledges them, and reports how
long until every receiver had every line:

    python benchmarks/quick_cross_node.py --a 5051 --b 5052 --senders 4 --receivers 4

(start the nodes with `--rate 0`: the default per-session rate limit of 5 messages/s
would otherwise be what this measures)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time


async def client(port: int, nick: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 22)
    writer.write(json.dumps({"op": "hello", "nick": nick}).encode() + b"\n")
    while True:
        line = await reader.readline()
        if line.startswith(b"{") and json.loads(line).get("ev") == "join":
            return reader, writer


async def sender(port: int, nick: str, count: int, ready: asyncio.Event) -> None:
    reader, writer = await client(port, nick)
    await ready.wait()
    acked = 0
    window = 64
    sent = 0
    while acked < count:
        while sent < count and sent - acked < window:
            writer.write(json.dumps({"op": "say", "text": f"{nick} {sent}", "ref": sent}
                                    ).encode() + b"\n")
            sent += 1
        line = await reader.readline()
        if b'"ev":"ack"' in line:
            acked += 1
    writer.close()


async def receiver(port: int, nick: str, expect: int, ready: asyncio.Event,
                   done: list[float]) -> None:
    reader, writer = await client(port, nick)
    await ready.wait()
    got = 0
    while got < expect:
        line = await reader.readline()
        if b'"ev":"msg"' in line:
            got += 1
    done.append(time.perf_counter())
    writer.close()


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--a", type=int, default=5051)
    ap.add_argument("--b", type=int, default=5052)
    ap.add_argument("--senders", type=int, default=4)
    ap.add_argument("--receivers", type=int, default=4)
    ap.add_argument("--messages", type=int, default=2000, help="per sender")
    args = ap.parse_args()
    total = args.senders * args.messages
    ready = asyncio.Event()
    done: list[float] = []
    tag = int(time.time()) % 100000
    recv = [asyncio.create_task(receiver(args.b, f"rx{tag}_{i}", total, ready, done))
            for i in range(args.receivers)]
    send = [asyncio.create_task(sender(args.a, f"tx{tag}_{i}", args.messages, ready))
            for i in range(args.senders)]
    await asyncio.sleep(0.5)  # let every client register before the clock starts
    start = time.perf_counter()
    ready.set()
    await asyncio.gather(*send, *recv)
    elapsed = max(done) - start
    print(f"{total} messages from {args.senders} senders on :{args.a} to {args.receivers} "
          f"receivers on :{args.b} in {elapsed:.2f} s: {total / elapsed:,.0f} messages/s, "
          f"{total * args.receivers / elapsed:,.0f} deliveries/s")


if __name__ == "__main__":
    asyncio.run(main())
