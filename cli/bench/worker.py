"""A load generator process: ``python -m cli.bench.worker``, driven over JSON lines.

The driver writes one command per line on stdin and reads one reply per line on stdout:

==============================================  ===============================================
``{"op":"setup","spec":{…}}``                   ``{"ev":"setup",…}`` once the clients are in
``{"op":"idle","count":N,"first":J}``           ``{"ev":"idle",…}`` once N idle ones registered
``{"op":"run","rate":R,"seconds":S}``           ``{"ev":"progress",…}`` every 0.5 s, then
                                                ``{"ev":"ended","by_room":{…},…}``
``{"op":"run",…,"flat":M}``                     the same, every client writing M lines flat
                                                out (S is the time limit)
``{"op":"drain","room_sent":{…},"within":T}``   ``{"ev":"step",…}`` (the step's figures)
``{"op":"close"}``                              ``{"ev":"closed"}``, then the process exits
==============================================  ===============================================

End of stdin closes everything too, so a driver that dies leaves no worker behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from dataclasses import replace
from typing import Any

from .loadgen import GenSpec, LoadGen
from .sysinfo import raise_open_files

__all__ = ["PROGRESS_EVERY", "main", "spec_from_json", "spec_to_json"]

PROGRESS_EVERY = 0.5


def spec_to_json(spec: GenSpec) -> dict[str, Any]:
    return {"targets": [list(t) for t in spec.targets], "clients": spec.clients,
            "rooms": spec.rooms, "first": spec.first, "last": spec.last, "tag": spec.tag,
            "profile": spec.profile, "size": spec.size, "hog": spec.hog,
            "connect_concurrency": spec.connect_concurrency,
            "setup_timeout": spec.setup_timeout}


def spec_from_json(raw: dict[str, Any]) -> GenSpec:
    return GenSpec(targets=tuple((str(h), int(p)) for h, p in raw["targets"]),
                   clients=int(raw["clients"]), rooms=int(raw["rooms"]),
                   first=int(raw["first"]), last=int(raw["last"]), tag=str(raw["tag"]),
                   profile=str(raw["profile"]), size=int(raw["size"]), hog=bool(raw["hog"]),
                   connect_concurrency=int(raw["connect_concurrency"]),
                   setup_timeout=float(raw["setup_timeout"]))


def _say(ev: str, **fields: Any) -> None:
    sys.stdout.write(json.dumps({"ev": ev, **fields}) + "\n")
    sys.stdout.flush()


async def _serve() -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 24)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    gen: LoadGen | None = None
    try:
        while raw := await reader.readline():
            cmd = json.loads(raw)
            op = cmd["op"]
            if op == "setup":
                gen = LoadGen(spec_from_json(cmd["spec"]))
                _say("setup", **await gen.setup())
            elif op == "idle":
                assert gen is not None
                gen.spec = replace(gen.spec, idle=int(cmd["count"]),
                                   idle_first=int(cmd["first"]))
                _say("idle", **await gen.open_idle())
            elif op == "run":
                assert gen is not None
                await _run(gen, float(cmd["rate"]), float(cmd["seconds"]),
                           int(cmd.get("flat", 0)))
            elif op == "drain":
                assert gen is not None
                room_sent = {int(k): int(v) for k, v in cmd["room_sent"].items()}
                complete = await gen.drain(room_sent, float(cmd["within"]))
                _say("step", complete=complete, **gen.collect())
            elif op == "close":
                break
    finally:
        if gen is not None:
            await gen.close()
        _say("closed")


async def _run(gen: LoadGen, rate: float, seconds: float, flat: int = 0) -> None:
    """A step: ``seconds`` at ``rate``, or (``flat``) until every client has written
    ``flat`` lines as fast as TCP takes them, ``seconds`` at most."""
    done = gen.begin_flat(flat) if flat else None
    if done is None:
        gen.begin(rate)
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    while (left := end - loop.time()) > 0:
        if done is None:
            await asyncio.sleep(min(PROGRESS_EVERY, left))
        else:
            await asyncio.wait([done], timeout=min(PROGRESS_EVERY, left))
        _say("progress", **gen.progress())
        if done is not None and done.done():
            break
    _say("ended", **gen.end())


def main() -> None:
    raise_open_files()
    try:
        import uvloop
    except ImportError:  # optional: plain asyncio works, a little slower
        asyncio.run(_serve())
    else:
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        asyncio.run(_serve())


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
