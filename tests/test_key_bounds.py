"""Every key the node writes is bounded: a TTL, a cap, or an owner whose departure removes
it (node.keys.BOUNDS).  A new key without a row fails here; so does a script that names a
key of its own, or a key a real Redis holds after users came and went that no row
explains (or that should carry a TTL and does not)."""

from __future__ import annotations

import dataclasses
import inspect
import re
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from node import scripts
from node.config import NodeConfig
from node.keys import BOUNDS, Keys

from .helpers import text_user, wait_until
from .integration.procs import redis_server, start_node

NODE = Path(__file__).resolve().parent.parent / "node"
NOT_KEYS = {"prefix", "room_of_channel"}
"""Members of Keys that name no key: the prefix itself, and a parser of channel names."""
KINDS = ("ttl", "idle-ttl", "fixed", "channel")
SETTINGS = {f.name for f in dataclasses.fields(NodeConfig)}


def key_members() -> set[str]:
    """Every attribute and public method of Keys: each one names a key or a channel."""
    attributes = set(Keys.__slots__)
    methods = {name for name, _ in inspect.getmembers(Keys, inspect.isfunction)
               if not name.startswith("_")}
    return (attributes | methods) - NOT_KEYS


def test_every_key_has_a_bound() -> None:
    members = key_members()
    missing = sorted(members - set(BOUNDS))
    assert not missing, f"give these keys a row in node.keys.BOUNDS: {missing}"
    assert not set(BOUNDS) - members, "BOUNDS rows for keys that no longer exist"


@pytest.mark.parametrize("name", sorted(BOUNDS))
def test_each_bound_is_one_of_the_known_kinds(name: str) -> None:
    bounds = BOUNDS[name]
    assert bounds, name
    for bound in bounds:
        kind, _, detail = bound.partition(":")
        if kind == "cap":
            assert detail in SETTINGS, f"{name}: {detail} is not a NodeConfig setting"
        elif kind == "owner":
            assert detail, f"{name}: say who removes it"
        else:
            assert bound in KINDS, f"{name}: unknown bound {bound!r}"
    assert "channel" not in bounds or bounds == ("channel",), name


def test_scripts_and_modules_name_no_key_of_their_own() -> None:
    """Scripts get every key in KEYS (from Keys); no module outside keys.py spells one."""
    tags = r"(nicks|rooms|room:|node:|events|accounts|auth|mod|quota)"
    in_lua = re.compile(r"\{" + tags + r"[^}]*\}")
    for name in scripts.__all__:
        assert not in_lua.search(getattr(scripts, name)), name
    # a key spelled in Python: an f-string's escaped hash tag, or the default prefix
    in_python = re.compile(r"\{\{" + tags + r"|[\"']hubbub:")
    for path in sorted(NODE.glob("*.py")):
        if path.name in ("keys.py", "config.py"):  # config: the default prefix itself
            continue
        assert not in_python.search(path.read_text()), f"{path.name} builds a key itself"


def patterns(keys: Keys) -> dict[str, re.Pattern[str]]:
    """A regular expression for each key of BOUNDS (channels left out)."""
    out: dict[str, re.Pattern[str]] = {}
    for name, bounds in BOUNDS.items():
        if bounds == ("channel",):
            continue
        member = getattr(keys, name)
        if isinstance(member, str):
            out[name] = re.compile(re.escape(member))
            continue
        arity = len(inspect.signature(member).parameters)
        out[name] = re.compile(re.escape(member(*["\0"] * arity)).replace("\0", ".+"))
    return out


def bound_of(key: str, shapes: dict[str, re.Pattern[str]]) -> str | None:
    found = [name for name, shape in shapes.items() if shape.fullmatch(key)]
    assert len(found) <= 1, f"{key} matches several rows: {found}"
    return found[0] if found else None


def test_the_patterns_tell_the_keys_apart() -> None:
    k = Keys()
    shapes = patterns(k)
    assert bound_of(k.lease("ann"), shapes) == "lease"
    assert bound_of(k.history("dev"), shapes) == "history"
    assert bound_of(k.once("dev", "n1:ab:1"), shapes) == "once"
    assert bound_of(k.rooms_idle, shapes) == "rooms_idle"
    assert bound_of("hubbub:{rooms}", shapes) is None  # the old room set: no row


@pytest.mark.redis_server
async def test_after_users_came_and_went_every_key_in_redis_is_bounded() -> None:
    """Users on two nodes join rooms, talk, rename, fail an operator secret and quit; then
    every key under the prefix matches a row, each ``ttl`` and (every room being empty)
    each ``idle-ttl`` key has a TTL, nothing of the users is left but bounded traces, and
    once the idle TTL ran out the rooms are gone."""
    args = ("--room-idle-ttl", "2", "--history-max", "20", "--oper-secret", "right-secret")
    async with redis_server() as (url, _):
        a, pa = await start_node(url, "kb-a", *args)
        b, pb = await start_node(url, "kb-b", *args)
        r = aioredis.Redis.from_url(url, decode_responses=True)
        try:
            ann, bo = await text_user(pa, "ann"), await text_user(pb, "bo")
            for c, nick in ((ann, "ann"), (bo, "bo")):
                for room in ("dev", "ops"):
                    await c.send(f"/join {room}")
                    await c.expect(f"* {nick} joined {room}")
            for i in range(30):
                await ann.send(f"line {i}")
            await bo.expect("[ops] ann: line 29")
            await bo.send("/nick bob")
            await ann.expect("* bo is now bob")
            await ann.send("/oper wrong-secret")
            await ann.expect(lambda s: s.startswith("! auth-failed"))
            await ann.send("/part dev")
            await ann.expect("* ann left dev")
            for c in (ann, bo):
                await c.send("/quit")
                await c.closed()

            async def settled() -> bool:  # both sessions' departures done
                return not await r.exists(Keys().members("lobby"), Keys().members("ops"))
            await wait_until(settled)

            k = Keys()
            shapes = patterns(k)
            keys = sorted([key async for key in r.scan_iter(match="hubbub:*")])
            unexplained = [key for key in keys if bound_of(key, shapes) is None]
            assert not unexplained, f"keys no row of node.keys.BOUNDS explains: {unexplained}"
            for key in keys:
                bounds = BOUNDS[bound_of(key, shapes) or ""]
                if "ttl" in bounds or "idle-ttl" in bounds:
                    assert await r.pttl(key) > 0, f"{key} should expire"
            # what the users owned went with them
            assert not await r.exists(k.rooms_live, k.rooms_count)
            assert not [key for key in keys if bound_of(key, shapes) in ("members", "lease")]
            assert await r.scard(k.nicks) == 0 and await r.hlen(k.info) == 0
            assert set(await r.zrange(k.rooms_idle, 0, -1)) == {"lobby", "dev", "ops"}
            assert await r.xlen(k.history("ops")) <= 20 + 100  # MAXLEN ~: whole nodes
            assert not await r.exists("hubbub:{rooms}")  # the old set is never written

            async def rooms_gone() -> bool:
                return not await r.exists(*(k.history(room) for room in ("lobby", "dev", "ops")))
            await wait_until(rooms_gone)
            watcher = await text_user(pa, "watcher")
            await watcher.send("/rooms")
            assert await watcher.expect("* 1 room") == "* 1 room: lobby (1)"
        finally:
            await r.aclose()
            assert await a.stop() == 0
            assert await b.stop() == 0
