"""What the room scripts cost Redis per call: PUBLISH_ROUND (a message; PUBLISH_MSG in
revisions before the batched bus) and ROOM_EVENT (a
join, part, quit or rename), as the node calls them, on a redis-server of its own.

Runs each script ``--calls`` times in pipelines of 256 (messages to 200 rooms with members;
membership changes that empty and refill 200 rooms, so rooms go idle and are revived),
``--rounds`` times, and prints Redis's own time per call (``INFO commandstats``
``usec_per_call`` of EVALSHA, which includes the commands the script runs; ROOM_EVENT
twice: in rooms that keep a member, and in rooms each change empties or refills) and,
for the last round, the commands inside.  ``--compare REV`` runs the scripts of another git
revision the same way, alternating rounds, for a before/after figure.

    python benchmarks/room_script_cost.py [--calls 20000] [--rounds 5] [--compare main]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import subprocess
import tempfile
import time
import types
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from cli.cluster import free_port
from node import envelope as env
from node import scripts
from node.keys import Keys

K = Keys()
ROOMS = 200
BATCH = 256
DAY_MS, WEEK_MS = 86_400_000, 604_800_000


@contextlib.asynccontextmanager
async def redis_server() -> AsyncIterator[str]:
    """A throwaway redis-server on a free port (nothing on disk); yields its URL."""
    port = free_port()
    with tempfile.TemporaryDirectory() as workdir:
        proc = await asyncio.create_subprocess_exec(
            "redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", workdir, stdout=asyncio.subprocess.PIPE)
        assert proc.stdout is not None
        while line := await proc.stdout.readline():
            if b"Ready to accept connections" in line:
                break
        try:
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            proc.terminate()
            await proc.wait()


def scripts_of(rev: str) -> Any:
    """The node/scripts.py of a git revision, as a module."""
    root = Path(__file__).resolve().parents[1]
    source = subprocess.run(["git", "show", f"{rev}:node/scripts.py"], cwd=root,
                            check=True, capture_output=True, text=True).stdout
    module = types.ModuleType(f"scripts_{rev}")
    exec(compile(source, f"{rev}:node/scripts.py", "exec"), module.__dict__)
    return module


def takes_bounds(script: str) -> bool:
    """Whether a script is of the room life cycle's shape (more keys and arguments)."""
    return "ZADD" in script or "XTRIM" in script


def publish_script(module: Any) -> str:
    """The message script of a revision (PUBLISH_ROUND, or PUBLISH_MSG before it)."""
    return str(getattr(module, "PUBLISH_ROUND", None) or module.PUBLISH_MSG)


async def publish(r: aioredis.Redis, code: str, calls: int, tag: str) -> None:
    sha = await r.script_load(code)
    bounded = takes_bounds(code)
    per_room_round = "local batch = ARGV[1]" in code
    for n in range(ROOMS):  # rooms with members, as messages go to
        await r.hset(K.members(f"{tag}{n}"), "ann", "ann")
    text = env.RoomMsg("r0", "ann", "n1/x", "x" * 60).serialize()
    deadline = int(time.time() * 1000) + 3_600_000
    for start in range(0, calls, BATCH):
        pipe = r.pipeline(transaction=False)
        for i in range(start, min(calls, start + BATCH)):
            room = f"{tag}{i % ROOMS}"
            keys = [K.history(room), K.room_channel(room), K.once(room, f"{tag}{i}")]
            args: list[Any] = [text, 1000, 10_000, deadline]
            if per_room_round:  # one message per call, as a round of one message
                keys = [K.history(room), K.room_channel(room), K.members(room),
                        K.once(room, f"{tag}{i}")]
                args = [2, 1000, 10_000, WEEK_MS, DAY_MS, text, deadline]
            elif bounded:
                keys.append(K.members(room))
                args += [WEEK_MS, DAY_MS]
            pipe.evalsha(sha, len(keys), *keys, *args)
        await pipe.execute()


async def churn(r: aioredis.Redis, code: str, calls: int, tag: str) -> None:
    """Joins and parts that empty and refill each room: every one creates, revives or
    empties a room (the costly case)."""
    await membership(r, code, calls, tag, resident=False)


async def busy(r: aioredis.Redis, code: str, calls: int, tag: str) -> None:
    """The same joins and parts in rooms that keep a resident member (they stay live)."""
    await membership(r, code, calls, tag, resident=True)


async def membership(r: aioredis.Redis, code: str, calls: int, tag: str, *,
                     resident: bool) -> None:
    sha = await r.script_load(code)
    bounded = takes_bounds(code)
    split = "idle_until" in code  # the room's own slot only (the index is ROOM_INDEX's)
    formatted = "ARGV[6] == '1'" in code  # takes the bus format (format 2 measured)
    if resident:
        for n in range(ROOMS):
            room = f"{tag}{n}"
            keys = [K.members(room), K.history(room), K.room_channel(room)]
            args: list[Any] = ["", 1000]
            if split:
                keys += [K.topic(room), K.ops(room)]
                args += [WEEK_MS, DAY_MS, "", *([2] if formatted else [])]
            elif bounded:
                keys += [K.topic(room), K.rooms_live, K.rooms_count, K.rooms_idle]
                args += [WEEK_MS, DAY_MS, room, 0, "1"]
            await r.evalsha(sha, len(keys), *keys, *args, "set", "resident", "Resident")
    for start in range(0, calls, BATCH):
        pipe = r.pipeline(transaction=False)
        for i in range(start, min(calls, start + BATCH)):
            room = f"{tag}{i % ROOMS}"
            joining = (i // ROOMS) % 2 == 0  # each room: a join, then that member's part
            who = i if joining else i - ROOMS
            notice = (env.RoomJoin(room, f"U{who}") if joining
                      else env.RoomPart(room, f"U{who}")).serialize()
            change = ["set", f"u{who}", f"U{who}"] if joining else ["del", f"u{who}"]
            keys = [K.members(room), K.history(room), K.room_channel(room)]
            args = [notice, 1000]
            if split:
                keys += [K.topic(room), K.ops(room)]
                args += [WEEK_MS, DAY_MS, "", *([2] if formatted else [])]
            elif bounded:
                keys += [K.topic(room), K.rooms_live, K.rooms_count, K.rooms_idle]
                args += [WEEK_MS, DAY_MS, room, 0, "1"]
            pipe.evalsha(sha, len(keys), *keys, *args, *change)
        await pipe.execute()


async def measure(r: aioredis.Redis, job: Any, code: str, calls: int, tag: str
                  ) -> tuple[float, dict[str, float]]:
    await r.config_resetstat()
    await job(r, code, calls, tag)
    stats = await r.info("commandstats")
    inner = {name.removeprefix("cmdstat_"): float(v["usec_per_call"])
             for name, v in stats.items() if name not in ("cmdstat_evalsha",
                                                          "cmdstat_script|load",
                                                          "cmdstat_config|resetstat")}
    return float(stats["cmdstat_evalsha"]["usec_per_call"]), inner


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--compare", default="", help="a git revision to compare with")
    opts = parser.parse_args()
    versions = {"this tree": scripts}
    if opts.compare:
        versions[opts.compare] = scripts_of(opts.compare)
    async with redis_server() as url:
        r = aioredis.Redis.from_url(url)
        try:
            for name, job, attr in (("a message", publish, "publish"),
                                    ("ROOM_EVENT, rooms stay live", busy, "ROOM_EVENT"),
                                    ("ROOM_EVENT, rooms empty and refill", churn,
                                     "ROOM_EVENT")):
                per_call: dict[str, list[float]] = {v: [] for v in versions}
                inner: dict[str, float] = {}
                for rnd in range(opts.rounds):
                    order = list(versions) if rnd % 2 == 0 else list(reversed(versions))
                    for label in order:
                        tag = f"{label[:1]}{rnd}_"
                        module = versions[label]
                        code = publish_script(module) if attr == "publish" else \
                            getattr(module, attr)
                        us, inner_now = await measure(r, job, code, opts.calls, tag)
                        per_call[label].append(us)
                        if label == "this tree":
                            inner = inner_now
                for label, values in per_call.items():
                    print(f"{name} ({label}): median {statistics.median(values):.2f} us per "
                          f"call in Redis over {opts.rounds} rounds of {opts.calls} "
                          f"(each: {', '.join(f'{v:.2f}' for v in values)})")
                print(f"  inside ({'this tree'}, last round, us per call): "
                      + ", ".join(f"{k} {v:.2f}" for k, v in sorted(inner.items())))
        finally:
            await r.aclose()


if __name__ == "__main__":
    asyncio.run(main())
