"""What reaches Redis: credentials pass through, and user text is only ever data.

Nothing a user types may become a key pattern (KEYS, SCAN MATCH), a channel pattern
(PSUBSCRIBE) or Lua source: the source of ``node/`` and ``cli/`` is parsed and checked,
and names full of glob characters are shown not to touch each other's keys.
"""

from __future__ import annotations

import ast
import ssl
from pathlib import Path

import fakeredis
import pytest
from redis.asyncio.connection import SSLConnection

from cli.redis_client import connect_redis

from .helpers import JsonClient, json_user, running_node

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted([*ROOT.glob("node/**/*.py"), *ROOT.glob("cli/**/*.py")])

PATTERN_COMMANDS = {"psubscribe", "punsubscribe", "scan", "scan_iter", "hscan", "hscan_iter",
                    "sscan", "sscan_iter", "zscan", "zscan_iter", "eval", "eval_ro",
                    "execute_command", "pubsub_channels"}
"""redis-py methods that take a pattern, or run Lua (or anything) built at run time."""


async def test_redis_url_credentials_and_tls_reach_the_connection() -> None:
    redis = connect_redis("rediss://hubbub:s3cret@redis.example:6380/0", 1.0,
                          ca="/etc/hubbub/redis-ca.pem")
    try:
        pool = redis.connection_pool
        kw = pool.connection_kwargs
        assert pool.connection_class is SSLConnection
        assert (kw["username"], kw["password"]) == ("hubbub", "s3cret")
        assert (kw["host"], kw["port"]) == ("redis.example", 6380)
        assert kw["ssl_ca_certs"] == "/etc/hubbub/redis-ca.pem"
        assert kw["ssl_cert_reqs"] == "required" and kw["ssl_check_hostname"] is True
        assert kw["ssl_min_version"] == ssl.TLSVersion.TLSv1_2
    finally:
        await redis.aclose()
    plain = connect_redis("redis://:pw@localhost:6379/0", 1.0, ca="/ignored.pem")
    try:
        kw = plain.connection_pool.connection_kwargs
        assert kw["password"] == "pw" and "ssl_ca_certs" not in kw
    finally:
        await plain.aclose()


def _calls(tree: ast.AST) -> list[ast.Call]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call)]


def _fixed_command(call: ast.Call) -> bool:
    """``execute_command("NAME", …)``: a command named by a constant that is none of the
    pattern or Lua commands."""
    first = call.args[0] if call.args else None
    return (isinstance(first, ast.Constant) and isinstance(first.value, str)
            and first.value.split()[0].lower() not in PATTERN_COMMANDS | {
                "keys", "psubscribe", "punsubscribe", "script", "function", "fcall"})


def _built(node: ast.expr) -> bool:
    """An expression that builds a string at run time (f-string, +, %, .format, join)."""
    if isinstance(node, ast.JoinedStr | ast.BinOp):
        return True
    return (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and node.func.attr in ("format", "join", "replace"))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_source_uses_no_pattern_command_and_builds_no_lua(path: Path) -> None:
    tree = ast.parse(path.read_text(), str(path))
    problems = []
    for call in _calls(tree):
        func = call.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        if name == "execute_command" and _fixed_command(call):
            pass  # one fixed command (HELLO, CLUSTER …), not a pattern or Lua
        elif name in PATTERN_COMMANDS:
            problems.append(f"line {call.lineno}: {name}()")
        if name == "keys" and (call.args or call.keywords):  # dict.keys() takes nothing
            problems.append(f"line {call.lineno}: keys(pattern)")
        if name in ("subscribe", "unsubscribe") and any(
                isinstance(a, ast.Constant) and isinstance(a.value, str)
                and any(c in a.value for c in "*?[") for a in call.args):
            problems.append(f"line {call.lineno}: a glob in a channel name")
        if name in ("register_script", "script_load") and any(_built(a) for a in call.args):
            problems.append(f"line {call.lineno}: Lua built at run time")
    for node in ast.walk(tree):  # Lua source is a constant, never a built string
        if isinstance(node, ast.expr) and _built(node):
            text = ast.get_source_segment(path.read_text(), node) or ""
            if "redis.call" in text:
                problems.append(f"line {node.lineno}: Lua source built at run time")
    assert not problems, f"{path.name}: {problems}"


async def test_glob_characters_in_names_are_only_names(
        fake_server: fakeredis.FakeServer) -> None:
    async with running_node(fake_server) as node:
        port = node.port or 0
        names = ["[x]", "x", "{x}", "x^", "[ab]", "a", "b"]
        users = {n: await json_user(port, n) for n in names}
        watcher = users["a"]
        await watcher.op("who", room="lobby", ref="w")
        assert sorted((await watcher.event("who", ref="w"))["nicks"]) == sorted(names)
        redis = fakeredis.FakeAsyncRedis(server=fake_server, decode_responses=True)
        try:
            for n in names:
                assert await redis.exists(f"hubbub:{{nicks}}:lease:{n}") == 1, n
            # "[x]" and "[ab]" leaving touches nothing of "x", "a" or "b"
            for n in ("[x]", "[ab]"):
                await users[n].op("quit")
                await users[n].closed()
                await watcher.event("quit", nick=n)
            for n in ("x", "a", "b", "{x}", "x^"):
                assert await redis.exists(f"hubbub:{{nicks}}:lease:{n}") == 1, n
                assert await redis.hexists("hubbub:{room:lobby}:members", n), n
        finally:
            await redis.aclose()


@pytest.mark.parametrize("room", ["a:*", "[x]", "*", "a?", "{x}", "a b", "lobby*",
                                  "\\x", "a]"])
async def test_rooms_with_pattern_or_tag_characters_are_refused(
        fake_server: fakeredis.FakeServer, room: str) -> None:
    async with running_node(fake_server) as node:
        c: JsonClient = await json_user(node.port or 0, "alice")
        await c.op("join", room=room, ref=1)
        assert (await c.event("error", ref=1))["code"] == "bad-room"
        await c.op("who", room=room, ref=2)
        assert (await c.event("error", ref=2))["code"] == "bad-room"


def test_compose_redis_requires_a_password_and_every_node_gives_it() -> None:
    """docker-compose.yml: Redis runs with --requirepass, unpublished, and each node's
    HUBBUB_REDIS_URL carries the same password variable (docs/SECURITY.md § Defaults)."""
    import yaml

    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    command = services["redis"]["command"]
    assert "--requirepass" in command
    password = command[command.index("--requirepass") + 1]
    assert password.startswith("${REDIS_PASSWORD")
    assert "ports" not in services["redis"]
    nodes = [s for name, s in services.items() if name.startswith("node")]
    assert nodes
    for node in nodes:
        url = node["environment"]["HUBBUB_REDIS_URL"]
        assert url.startswith(f"redis://:{password}@redis:"), url


@pytest.mark.parametrize(("source", "fixed"), [
    ('r.execute_command("HELLO")', True),
    ('r.execute_command("CLUSTER", "SLOTS")', True),
    ('r.execute_command("EVAL", script, 0)', False),
    ('r.execute_command("KEYS", pattern)', False),
    ('r.execute_command("SCAN", 0, "MATCH", pattern)', False),
    ("r.execute_command(name, *args)", False),
])
def test_only_a_fixed_command_passes_through_execute_command(source: str, fixed: bool) -> None:
    call = ast.parse(source).body[0]
    assert isinstance(call, ast.Expr) and isinstance(call.value, ast.Call)
    assert _fixed_command(call.value) is fixed
