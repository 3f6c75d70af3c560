"""The compose file's redis-cluster profile, run as local processes: its six Redis
commands (with deploy/redis.conf) and its init service's script form a working Redis
Cluster of three masters with a replica each; run again, the script leaves the cluster
as it is.  Only addresses differ from the containers: each ``redis-cN:6379`` becomes a
free loopback port."""

from __future__ import annotations

import asyncio
import contextlib
import re
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from cli.redis_cluster import cluster_ports

from .compose import COMPOSE_FILE, load_compose
from .procs import require_binary

pytestmark = pytest.mark.redis_server

PASSWORD = "cluster-test-password"
NODES = [f"redis-c{i}" for i in range(1, 7)]


def profile() -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = load_compose(env={"REDIS_PASSWORD": PASSWORD})[
        "services"]
    return {name: svc for name, svc in services.items()
            if "redis-cluster" in (svc.get("profiles") or [])}


def test_the_profile_has_six_redis_nodes_an_init_and_nodes_on_the_cluster() -> None:
    services = profile()
    assert set(NODES) | {"redis-cluster-init"} <= set(services)
    for name in NODES:
        command = services[name]["command"]
        assert isinstance(command, list)
        assert command[command.index("--cluster-enabled") + 1] == "yes"
        assert int(command[command.index("--cluster-node-timeout") + 1]) <= 5000
        assert command[command.index("--masterauth") + 1] == PASSWORD
        # one shard without a master must not stop the others serving their rooms
        assert command[command.index("--cluster-require-full-coverage") + 1] == "no"
    hubbubs = [svc for svc in services.values() if "build" in svc]
    assert len(hubbubs) >= 2
    for svc in hubbubs:
        env = svc["environment"]
        assert isinstance(env, dict)
        assert env["HUBBUB_REDIS_CLUSTER"] == "1"
        assert env["HUBBUB_REDIS_URL"] == f"redis://:{PASSWORD}@redis-c1:6379/0"
        assert float(env["HUBBUB_OUTBOX_SECONDS"]) > 5  # longer than a failover
        assert svc.get("restart") == "unless-stopped"  # they run, as the other nodes
    script = services["redis-cluster-init"]["command"]
    assert isinstance(script, list)
    assert all(f"getent hosts {name} " in script[0] for name in NODES)
    assert "--cluster-replicas 1" in script[0]


@contextlib.contextmanager
def redis_nodes(ports: dict[str, int]) -> Iterator[None]:
    """The six redis-cN services' commands, each on its loopback port."""
    binary = require_binary("redis-server")
    conf = COMPOSE_FILE.parent / "deploy" / "redis.conf"
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="hubbub-compose-cluster-") as workdir:
        try:
            for name, port in ports.items():
                command = profile()[name]["command"]
                assert isinstance(command, list) and command[0] == "redis-server"
                args = [str(conf) if a == "/usr/local/etc/redis/redis.conf" else a
                        for a in command[1:]]
                home = Path(workdir, name)
                home.mkdir()
                procs.append(subprocess.Popen(
                    [binary, *args, "--port", str(port), "--bind", "127.0.0.1",
                     "--dir", str(home), "--repl-diskless-sync-delay", "0"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            yield
        finally:
            for proc in procs:
                proc.kill()  # throwaway data; a master would wait for its replicas
            for proc in procs:
                proc.wait(10)


def init_script(ports: dict[str, int]) -> str:
    """The init service's script with each ``redis-cN`` (resolved, or named with -h) on
    its loopback port."""
    script = profile()["redis-cluster-init"]["command"]
    assert isinstance(script, list)
    text = re.sub(r"\$\(getent hosts (redis-c\d) \| cut -d' ' -f1\):6379",
                  lambda m: f"127.0.0.1:{ports[m[1]]}", script[0])
    return re.sub(r"-h (redis-c\d)\b", lambda m: f"-h 127.0.0.1 -p {ports[m[1]]}", text)


async def run_init(ports: dict[str, int]) -> str:
    require_binary("redis-cli")
    init = await asyncio.create_subprocess_exec(
        "sh", "-c", init_script(ports), stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT, env={"PATH": "/usr/bin:/bin",
                                               "REDISCLI_AUTH": PASSWORD})
    out, _ = await asyncio.wait_for(init.communicate(), 60)
    assert init.returncode == 0, out.decode()
    return out.decode()


async def test_the_init_service_forms_the_cluster_once() -> None:
    ports = dict(zip(NODES, cluster_ports(len(NODES)), strict=True))
    with redis_nodes(ports):
        for port in ports.values():  # as its depends_on: service_healthy waits
            probe = await asyncio.create_subprocess_exec(
                "sh", "-c", f"until redis-cli -p {port} ping | grep -q PONG; do sleep 0.1; done",
                env={"PATH": "/usr/bin:/bin", "REDISCLI_AUTH": PASSWORD})
            await asyncio.wait_for(probe.wait(), 20)
        first = await run_init(ports)
        assert "[OK] All 16384 slots covered" in first
        client = RedisCluster(host="127.0.0.1", port=ports["redis-c1"], password=PASSWORD)
        try:
            await client.set("hubbub:{room:lobby}:probe", "1")
            assert await client.get("hubbub:{room:lobby}:probe") == b"1"
            masters = {n.port for n in client.get_primaries()}
            assert masters == {ports[name] for name in NODES[:3]}
            for name in NODES[3:]:
                node = Redis(port=ports[name], password=PASSWORD)
                try:  # a replica of one of the three masters
                    info = await node.info("replication")
                finally:
                    await node.aclose()
                assert info["role"] == "slave" and info["master_port"] in masters
        finally:
            await client.aclose()
        again = await run_init(ports)
        assert "the Redis Cluster exists" in again
