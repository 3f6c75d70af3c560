"""Compose parity: docker-compose.yml's services run as local processes (see compose.py).

The same commands, environment and config files as the containers — redis-server with
deploy/redis.conf and the password, the nodes' ``hubbub node`` with their ``HUBBUB_*``
environment, HAProxy with deploy/haproxy.cfg — on loopback with remapped ports.  Through
it: chat across nodes and through the load balancer, the load balancer's per-address
limits, the HTTP endpoints and healthchecks, a frozen Redis taking every node out of the
load balancer and back, a rolling restart that loses nothing, and the scaling recipe of
docs/OPERATIONS.md.  Each prints what it measured (``pytest -s`` shows it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from cli.client.connection import ChatClient
from cli.client.shown import Shown
from cli.client.state import Address, ClientState

from ..helpers import JsonClient, LineClient, json_user, text_user, wait_until
from ..irchelpers import irc_user
from .compose import (
    COMPOSE_FILE,
    REPO,
    ComposeCluster,
    compose_cluster,
    http_get,
    image_env,
    load_compose,
)
from .procs import is_event, require_binary

pytestmark = pytest.mark.redis_server


@pytest.fixture(autouse=True)
def _binaries() -> None:
    """Skip without them (fail under CI=true), before anything starts."""
    for binary in ("redis-server", "redis-cli", "haproxy"):
        require_binary(binary)


PASSWORD = "parity-test-secret"
ENV = {"REDIS_PASSWORD": PASSWORD}
"""What the operator would export before ``docker compose up``."""

OPERATIONS = REPO / "docs" / "OPERATIONS.md"

GREETING = re.compile(r"^\* welcome to hubbub \(node ([\w.-]+)\)")


async def greeting_node(client: LineClient) -> str:
    m = GREETING.match(await client.expect(lambda s: GREETING.match(s) is not None))
    assert m is not None
    return m.group(1)


def lb_log(server: str, state: str) -> Callable[[str], bool]:
    """HAProxy's log line for a server changing state (``UP``/``DOWN``)."""
    return lambda line: f"Server nodes/{server} is {state}" in line


async def register(client: LineClient, nick: str) -> None:
    await client.expect("* GET_NAME")
    await client.send(nick)
    await client.expect(f"* welcome {nick}")
    await client.expect(f"* {nick} joined lobby")


# ------------------------------------------------------------------ the files themselves

def test_compose_file_reads_as_docker_compose_reads_it() -> None:
    """The harness's reading of docker-compose.yml (YAML anchors, merges, ``${VAR:-x}``)
    is docker-compose's own: environment, commands and entrypoints agree service by
    service, with and without REDIS_PASSWORD set."""
    binary = require_binary("docker-compose")
    for env in ({}, ENV):
        out = subprocess.run(
            [binary, "-f", str(COMPOSE_FILE), "--profile", "client", "--profile",
             "redis-cluster", "config"],
            capture_output=True, text=True, check=True, timeout=60,
            env={"PATH": "/usr/bin:/bin", **env})
        # docker-compose prints a literal $ escaped as $$, ready to be read again
        theirs = _unescape(yaml.safe_load(out.stdout)["services"])
        ours = load_compose(env=env)["services"]
        assert sorted(theirs) == sorted(ours)
        for name, svc in ours.items():
            for key in ("environment", "command", "entrypoint", "profiles"):
                mine = svc.get(key)
                if key == "environment" and mine is not None:
                    mine = {k: str(v) for k, v in mine.items()}
                assert theirs[name].get(key) == mine, (name, key)
        password = env.get("REDIS_PASSWORD", "change-me")
        assert ours["redis"]["command"][-2:] == ["--requirepass", password]
        assert ours["node1"]["environment"]["HUBBUB_REDIS_URL"] == \
            f"redis://:{password}@redis:6379/0"
    # the runtime stage's ENV is what the harness gives the nodes besides compose's
    assert image_env()["PYTHONUNBUFFERED"] == "1"


def _unescape(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace("$$", "$")
    if isinstance(value, list):
        return [_unescape(v) for v in value]
    if isinstance(value, dict):
        return {k: _unescape(v) for k, v in value.items()}
    return value


def test_config_files_are_valid_as_written() -> None:
    """The files exactly as the containers get them: HAProxy's own check, Redis's
    eviction policy, and no password in the repository."""
    haproxy = require_binary("haproxy")
    conf = COMPOSE_FILE.parent / "deploy"
    check = subprocess.run([haproxy, "-c", "-f", str(conf / "haproxy.cfg")],
                           capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr  # unresolved names warn only
    redis_conf = (conf / "redis.conf").read_text()
    directives = [line.split() for line in redis_conf.splitlines()
                  if line.strip() and not line.lstrip().startswith("#")]
    assert ["maxmemory-policy", "noeviction"] in directives
    assert not [d for d in directives if d[0] in ("requirepass", "masterauth")]
    compose_text = COMPOSE_FILE.read_text()
    assert "change-me" in compose_text and PASSWORD not in compose_text


# ------------------------------------------------------------------ the running cluster

def registered(nick: str) -> Callable[[str], bool]:
    """A node's log line: ``nick`` registered."""
    def test(line: str) -> bool:
        return is_event("registered")(line) and json.loads(line).get("nick") == nick
    return test


async def test_clients_on_different_nodes_and_through_the_load_balancer_chat() -> None:
    async with compose_cluster(ENV) as c:
        names = c.node_names
        assert names == ["node1", "node2", "node3"]
        alice = await text_user(c.chat_port("node1"), "alice")
        bob = await text_user(c.chat_port("node2"), "bob")
        dave = await json_user(c.chat_port("node3"), "dave")
        # Three clients through the load balancer, kept open: leastconn spreads them
        # over all three nodes.
        via: list[LineClient] = []
        landed = []
        for i in range(3):
            client = await LineClient.connect(c.lb_port)
            landed.append(await greeting_node(client))
            await register(client, f"lb{i}")
            via.append(client)
        print(f"\ncompose parity: 3 clients through the load balancer landed on {landed}")
        assert sorted(landed) == names
        # HAProxy's PROXY header told each node the client's own address and port: the
        # node logged the registration under it, not under HAProxy's connection
        for i, client in enumerate(via):
            own = "{}:{}".format(*client.writer.get_extra_info("sockname")[:2])
            line = await c.procs[landed[i]].wait_line(registered(f"lb{i}"))
            assert json.loads(line)["peer"] == own, line

        await alice.send("hello from node1")
        want = "[lobby] alice: hello from node1"
        assert await bob.expect("[lobby]") == want
        for client in via:
            assert await client.expect("[lobby]") == want
        from_alice: dict[str, Any] = {"from": "alice"}
        assert (await dave.event("msg", **from_alice))["text"] == "hello from node1"

        await dave.op("say", text="json from node3", ref=1)
        await dave.event("ack", ref=1)
        for client in (alice, bob, *via):
            assert await client.expect("[lobby] dave") == "[lobby] dave: json from node3"

        await via[0].send("through the load balancer")
        for client in (alice, bob, via[1], via[2]):
            assert await client.expect("[lobby] lb0") == \
                "[lobby] lb0: through the load balancer"


async def test_irc_clients_through_the_load_balancer() -> None:
    """IRC is on in the compose file: through the load balancer's IRC port (its PROXY
    header gives the node the client's address) an IRC user meets a text user."""
    async with compose_cluster(ENV) as c:
        ted = await text_user(c.chat_port("node1"), "ted")
        ivy = await irc_user(c.local_port("lb", 6667), "ivy")
        own = "{}:{}".format(*ivy.writer.get_extra_info("sockname")[:2])
        await ivy.send("JOIN #lobby")
        await ivy.expect_msg("366")
        await ted.send("hello irc")
        heard = await ivy.expect_msg("PRIVMSG", "#lobby")
        assert heard.params[1] == "hello irc" and (heard.source or "").startswith("ted!")
        await ivy.send("PRIVMSG #lobby :hello text")
        assert await ted.expect("[lobby] ivy") == "[lobby] ivy: hello text"
        def logged() -> list[dict[str, Any]]:
            return [json.loads(line) for proc in c.procs.values() for line in proc.lines
                    if registered("ivy")(line)]
        await wait_until(logged)
        assert [entry["peer"] for entry in logged()] == [own]


async def test_load_balancer_limits_each_client_address() -> None:
    """HAProxy's per-address limits refuse a burst of new connections from one address
    beyond about 40 (the nodes, which learn each client's address from the PROXY header,
    apply their own limits per node on top)."""
    async with compose_cluster(ENV) as c:
        assert c.node_env("node1")["HUBBUB_PROXY_FROM"] == c.aliases["lb"][1]
        assert "HUBBUB_MAX_PER_IP" not in c.node_env("node1")  # the default, 50
        opened: list[tuple[asyncio.StreamReader, asyncio.StreamWriter] | None] = []
        for _ in range(60):  # all at once, kept open
            try:
                opened.append(await asyncio.open_connection("127.0.0.1", c.lb_port))
            except OSError:
                opened.append(None)
        greeted = []
        try:
            for pair in opened:
                line = b""
                if pair is not None:
                    with contextlib.suppress(OSError):
                        async with asyncio.timeout(5):
                            line = await pair[0].readline()
                greeted.append(line.startswith(b"* welcome to hubbub"))
        finally:
            for pair in opened:
                if pair is not None:
                    pair[1].close()
                    with contextlib.suppress(OSError):
                        await pair[1].wait_closed()
        print(f"\ncompose parity: 60 connections at once from one address through the "
              f"load balancer: {sum(greeted)} greeted, {greeted.count(False)} refused")
        # HAProxy accepts on several threads, so which of the burst it refuses is not
        # the connect order: count them.
        assert 30 <= sum(greeted) <= 50, greeted


async def test_health_ready_and_metrics_answer_on_every_node() -> None:
    async with compose_cluster(ENV) as c:
        metric_names: set[str] = set()
        for name in c.node_names:
            port = c.http_port(name)
            assert await http_get(port, "/healthz") == (200, "ok\n")
            status, ready = await c.readyz(name)
            assert status == 200 and ready["ready"] is True, ready
            status, text = await http_get(port, "/metrics")
            assert status == 200 and "hubbub_" in text
            metric_names |= {line.split("{")[0].split()[0] for line in text.splitlines()
                             if line.startswith("hubbub_")}
            assert await c.image_healthcheck(name) == 0  # the Dockerfile's HEALTHCHECK
        assert await c.lb_servers() == {n: "UP" for n in c.node_names}
        # compose's Redis healthcheck passes with the password (checked at start) and
        # fails without it: redis-cli alone exits 0 on NOAUTH, the grep catches it
        assert await c.redis_healthcheck() == 0
        assert await c.redis_healthcheck({"REDISCLI_AUTH": "wrong"}) != 0
        assert await c.redis_healthcheck({"REDISCLI_AUTH": ""}) != 0
        print(f"\ncompose parity: /metrics series on every node: {sorted(metric_names)}")
        doc = OPERATIONS.read_text()
        families = {line.split()[2] for line in text.splitlines()
                    if line.startswith("# TYPE hubbub_")}
        undocumented = sorted(f for f in families if not f.endswith("_created")
                              and not re.search(rf"`{f}[`{{]", doc))
        assert not undocumented, f"add these metrics to {OPERATIONS.name}: {undocumented}"


async def test_frozen_redis_takes_every_node_out_of_the_load_balancer_and_back() -> None:
    async with compose_cluster(ENV) as c:
        names = c.node_names
        redis, lb = c.procs["redis"], c.procs["lb"]
        carol = await text_user(c.lb_port, "carol")  # a session through the balancer
        mark = len(lb.lines)
        frozen = time.monotonic()
        redis.signal(signal.SIGSTOP)
        try:
            not_ready = await asyncio.gather(*(c.wait_ready(n, False, timeout=10)
                                               for n in names))
            for name in names:
                _, body = await c.readyz(name)
                assert body["ready"] is False and body["reasons"], body
                assert await c.image_healthcheck(name) != 0  # docker would say unhealthy
            for name in names:
                await lb.wait_line(lb_log(name, "DOWN"), start=mark, timeout=10)
            lb_down = time.monotonic() - frozen
            # on-marked-down shutdown-sessions: carol's session through it is cut ...
            await carol.closed(timeout=5)
            # ... and a new client through the balancer gets no greeting at all
            try:
                probe = await LineClient.connect(c.lb_port)
            except ConnectionRefusedError:
                pass
            else:
                async with asyncio.timeout(5):
                    assert await probe.reader.read() == b""
            assert await c.lb_servers() == {n: "DOWN" for n in names}
        finally:
            redis.signal(signal.SIGCONT)
        thawed = time.monotonic()
        mark = len(lb.lines)
        ready_again = await asyncio.gather(*(c.wait_ready(n, True, timeout=20)
                                             for n in names))
        for name in names:
            await lb.wait_line(lb_log(name, "UP"),
                               start=mark, timeout=20)
        lb_up = time.monotonic() - thawed
        dave = await LineClient.connect(c.lb_port)
        await greeting_node(dave)
        await register(dave, "dave")
        print(f"\ncompose parity: Redis frozen -> every node not ready after "
              f"{max(not_ready):.2f} s (each: {', '.join(f'{t:.2f}' for t in not_ready)}),"
              f" HAProxy had them all DOWN after {lb_down:.2f} s; thawed -> ready after "
              f"{max(ready_again):.2f} s, all UP in HAProxy after {lb_up:.2f} s")


# ------------------------------------------------------------------ rolling restart

async def converse(a: LineClient, b: LineClient, nicks: tuple[str, str],
                   said: dict[str, list[str]], stop: asyncio.Event) -> None:
    """Two text users take turns until ``stop``: each waits to hear the other's line
    before saying its own, then a pause: each says about 4 lines a second, under the
    node's per-session rate limit (5/s sustained), as people in a busy room would."""
    i = 0
    while not stop.is_set():
        for speaker, listener, nick in ((a, b, nicks[0]), (b, a, nicks[1])):
            text = f"{nick}-{i}"
            await speaker.send(text)
            said[nick].append(text)
            try:
                await listener.expect(f"[lobby] {nick}: {text}", timeout=10)
            except TimeoutError:
                raise AssertionError(f"{text!r} did not arrive; the listener heard "
                                     f"{listener.seen[-8:]}, the speaker {speaker.seen[-8:]}"
                                     ) from None
        i += 1
        await asyncio.sleep(0.25)


async def claim_when_free(port: int, nick: str, timeout: float = 10.0
                          ) -> tuple[JsonClient, float]:
    """Claim ``nick`` on a node again and again until the cluster grants it (each try's
    answer is the probe: welcome or nick-taken); returns the client and the time."""
    async with asyncio.timeout(timeout):
        while True:
            client = await JsonClient.connect(port)
            await client.op("hello", nick=nick)
            while (ev := await client.event())["ev"] not in ("welcome", "error"):
                pass
            if ev["ev"] == "welcome":
                return client, time.monotonic()
            assert ev.get("code") == "nick-taken", ev
            await client.close()
            await asyncio.sleep(0.05)  # under the node's new-connections-per-address rate


async def restart(c: ComposeCluster, name: str, victim: LineClient, victim_nick: str,
                  claim_port: int) -> dict[str, float]:
    """SIGTERM ``name`` and wait for it to exit, start it again with the same command
    and environment, wait until it is ready and back in HAProxy.  Meanwhile the name of
    a user it had is claimed from another node.  Returns the timings."""
    proc = c.procs[name]
    start = time.monotonic()
    proc.signal(signal.SIGTERM)
    claim = asyncio.create_task(claim_when_free(claim_port, victim_nick))
    await victim.expect("* node shutting down")
    await victim.closed(timeout=15)
    async with asyncio.timeout(15):
        code = await proc.proc.wait()
    exited = time.monotonic() - start
    assert code == 0, "\n".join(proc.lines[-20:])
    claimer, claimed_at = await claim
    await claimer.close()
    await c.start_node(name)
    ready = time.monotonic() - start
    await c.wait_lb({name: "UP"})
    return {"name free": claimed_at - start, "exit": exited, "ready": ready,
            "back in lb": time.monotonic() - start}


async def test_rolling_restart_loses_no_message() -> None:
    async with compose_cluster(ENV) as c:
        names = c.node_names
        shown: list[Shown] = []
        watcher = ChatClient(
            ClientState([Address("127.0.0.1", c.chat_port(n)) for n in names], "watcher"),
            show=shown.append)
        running = asyncio.create_task(watcher.run())
        said: dict[str, list[str]] = {}
        heard = 0
        try:
            async with asyncio.timeout(10):
                await watcher.welcomed.wait()
            for k, name in enumerate(names):
                others = [n for n in names if n != name]
                nicks = (f"a{k}", f"b{k}")
                said.update({n: [] for n in nicks})
                a = await text_user(c.chat_port(others[0]), nicks[0])
                b = await text_user(c.chat_port(others[1]), nicks[1])
                victim = await text_user(c.chat_port(name), f"victim{k}")
                stop = asyncio.Event()
                talk = asyncio.create_task(converse(a, b, nicks, said, stop))
                try:
                    timings = await restart(c, name, victim, f"victim{k}",
                                            c.chat_port(others[0]))
                finally:
                    stop.set()
                    await talk
                for listener, speaker in ((b, nicks[0]), (a, nicks[1])):
                    got = [line.split(": ", 1)[1] for line in listener.seen
                           if line.startswith(f"[lobby] {speaker}: ")]
                    assert got == said[speaker], f"{speaker}'s lines as heard differ"
                    heard += len(got)
                for client in (a, b):
                    await client.send("/quit")
                    await client.closed()
                print(f"\nrolling restart of {name}: name free on another node "
                      f"{timings['name free']:.2f} s after SIGTERM, exited (0) after "
                      f"{timings['exit']:.2f} s, ready again after {timings['ready']:.2f} s, "
                      f"back in HAProxy after {timings['back in lb']:.2f} s; "
                      f"{len(said[nicks[0]]) + len(said[nicks[1]])} lines said meanwhile")
            last = said[f"b{len(names) - 1}"][-1]
            async with asyncio.timeout(15):
                while not any(s.kind == "msg" and s.text == last for s in shown):
                    watcher.progress.clear()
                    await watcher.progress.wait()
            for talker, lines in said.items():
                seen = [s.text for s in shown if s.kind == "msg" and s.nick == talker]
                assert seen == lines, f"the watcher's view of {talker} differs"
            assert not [s for s in shown if s.kind == "error"], shown
            assert watcher.failovers >= len(names), watcher.failovers
            sent = sum(len(v) for v in said.values())
            shown_msgs = sum(1 for s in shown if s.kind == "msg")
            print(f"rolling restart: {sent} lines said, {heard} heard by the other talker "
                  f"(none lost), the hubbub client showed {shown_msgs} (each once, in "
                  f"order) across {watcher.failovers} failovers")
            assert heard == sent and shown_msgs == sent
        finally:
            watcher.quit()
            async with asyncio.timeout(10):
                await running


# ------------------------------------------------------------------ scaling

def doc_snippet(containing: str) -> str:
    """The fenced block of docs/OPERATIONS.md that contains ``containing``, with the
    indentation of its fence (a list item's) taken off."""
    for m in re.finditer(r"^( *)```\w*\n(.*?)^\1```", OPERATIONS.read_text(), re.M | re.S):
        if containing in m.group(2):
            indent = len(m.group(1))
            return "".join(line[indent:] + "\n" for line in m.group(2).splitlines())
    raise LookupError(f"no block with {containing!r} in {OPERATIONS}")


async def test_documented_scaling_recipe_adds_a_fourth_node(tmp_path: Path) -> None:
    """The edit docs/OPERATIONS.md gives for a fourth node — its compose block and its
    HAProxy server line — applied to copies of the files: compose accepts the result and
    the load balancer spreads clients over four nodes that chat with each other."""
    service = doc_snippet("HUBBUB_NODE_ID: node4")
    server = doc_snippet("server node4 ").strip()
    compose = COMPOSE_FILE.read_text()
    assert "\n  lb:\n" in compose
    (tmp_path / "docker-compose.yml").write_text(
        compose.replace("\n  lb:\n", "\n" + service + "\n  lb:\n", 1))
    shutil.copytree(REPO / "deploy", tmp_path / "deploy")
    cfg = tmp_path / "deploy" / "haproxy.cfg"
    lines = cfg.read_text().splitlines()
    at = max(i for i, line in enumerate(lines) if line.split()[:2] == ["server", "node3"])
    lines.insert(at + 1, "    " + server)
    cfg.write_text("\n".join(lines) + "\n")
    binary = require_binary("docker-compose")
    check = await asyncio.create_subprocess_exec(
        binary, "-f", str(tmp_path / "docker-compose.yml"), "config", "-q",
        env={"PATH": "/usr/bin:/bin"}, stderr=asyncio.subprocess.PIPE)
    async with asyncio.timeout(60):
        _, err = await check.communicate()
    assert check.returncode == 0, err.decode()

    async with compose_cluster(ENV, path=tmp_path / "docker-compose.yml") as c:
        assert c.node_names == ["node1", "node2", "node3", "node4"]
        assert await c.lb_servers() == {f"node{i}": "UP" for i in range(1, 5)}
        via = []
        landed = []
        for i in range(4):
            client = await LineClient.connect(c.lb_port)
            landed.append(await greeting_node(client))
            await register(client, f"lb{i}")
            via.append(client)
        assert sorted(landed) == c.node_names
        direct = await text_user(c.chat_port("node4"), "four")
        await via[0].send("hello node4")
        assert await direct.expect("[lobby] lb0") == "[lobby] lb0: hello node4"
        print(f"\ncompose parity: documented scaling edit: 4 clients through the load "
              f"balancer landed on {landed}")
