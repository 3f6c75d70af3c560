"""Throwaway servers for a benchmark, and readings of them.

:class:`LocalCluster` starts a real ``redis-server`` on a free loopback port (or, with
``redis_shards``, a local Redis Cluster of that many masters, :mod:`cli.redis_cluster`,
the nodes then running with ``--redis-cluster``) and N ``hubbub node`` processes with
every per-client limit off (``--rate 0 --max-per-ip 0 --conn-rate-per-ip 0
--max-connections 0 --list-rate 0 --room-create-rate 0``), after
raising the open-file limit so the nodes inherit it; :class:`BaselineServer` starts one
of ``benchmarks/*_server.py``.  Both are async context managers that stop everything
they started, whatever happens (Ctrl+C included: the processes are in their own session,
so only we signal them).

:class:`Probe` reads what the bench reports besides its own figures: each node's resident
memory and CPU time (``/proc``, spawned nodes only), its subscribed room channels and
``process_resident_memory_bytes`` (``/metrics``, when an HTTP address is known), and Redis's
CPU time: ``INFO cpu`` of the one Redis, or on a spawned Redis Cluster each master's
process CPU time (``/proc``), per shard and in total.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from ..cluster import free_port, node_command
from ..redis_cluster import start_redis_cluster
from .sysinfo import cpu_seconds, raise_open_files, rss_bytes

__all__ = ["BaselineServer", "LocalCluster", "NodeInfo", "Probe", "RedisShard",
           "scrape_metrics"]

START_TIMEOUT = 30.0
PORT_ATTEMPTS = 3
"""How many times a node whose port was taken before it could bind is started again."""
_ROOT = str(Path(__file__).resolve().parents[2])
NODE_LIMITS_OFF = {"rate": 0, "max_per_ip": 0, "conn_rate_per_ip": 0, "max_connections": 0,
                   "list_rate": 0, "room_create_rate": 0}


@dataclass(slots=True)
class NodeInfo:
    host: str
    port: int
    http: tuple[str, int] | None = None
    pid: int | None = None


@dataclass(frozen=True, slots=True)
class RedisShard:
    """One master of a spawned Redis Cluster: where it is, what it serves, its process."""

    address: str
    slots: str
    """Its slot ranges as ``first-last``, comma-separated."""
    pid: int


@dataclass(slots=True)
class Probe:
    """Where to read server-side figures from."""

    nodes: list[NodeInfo] = field(default_factory=list)
    redis_url: str | None = None
    redis_shards: list[RedisShard] = field(default_factory=list)
    """The masters of a spawned Redis Cluster: Redis CPU is then read per master process
    (and ``redis_cpu`` is their sum) instead of from ``INFO cpu``."""

    async def sample(self) -> dict[str, Any]:
        """One reading: per node rss/cpu/channels (None when not available), Redis CPU."""
        out: dict[str, Any] = {"t": time.monotonic(), "nodes": []}
        for node in self.nodes:
            reading: dict[str, Any] = {"rss": None, "cpu": None, "channels": None}
            if node.pid is not None:
                reading["rss"] = rss_bytes(node.pid)
                reading["cpu"] = cpu_seconds(node.pid)
            if node.http is not None:
                metrics = await scrape_metrics(*node.http)
                if reading["rss"] is None:
                    reading["rss"] = metrics.get("process_resident_memory_bytes")
                reading["channels"] = metrics.get("hubbub_subscribed_room_channels")
            out["nodes"].append(reading)
        if self.redis_shards:
            shards = [cpu_seconds(shard.pid) for shard in self.redis_shards]
            out["redis_shards_cpu"] = shards
            out["redis_cpu"] = (None if any(c is None for c in shards)
                                else sum(c for c in shards if c is not None))
        else:
            out["redis_cpu"] = await redis_cpu(self.redis_url) if self.redis_url else None
        return out


async def scrape_metrics(host: str, port: int, within: float = 5.0) -> dict[str, float]:
    """Unlabelled samples of a Prometheus ``/metrics`` page (empty when unreachable)."""
    try:
        async with asyncio.timeout(within):
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(f"GET /metrics HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
            body = await reader.read()
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
    except (OSError, TimeoutError):
        return {}
    values: dict[str, float] = {}
    for line in body.decode(errors="replace").split("\n"):
        if line and not line.startswith("#") and "{" not in line:
            name, _, value = line.partition(" ")
            with contextlib.suppress(ValueError):
                values[name] = float(value.split(" ")[0])
    return values


async def redis_cpu(url: str) -> float | None:
    """Redis's own CPU seconds (user + system) from ``INFO cpu``."""
    from redis.asyncio import Redis
    from redis.exceptions import RedisError

    client = Redis.from_url(url, socket_timeout=5)
    try:
        info = await client.info("cpu")
        return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])
    except (RedisError, OSError, KeyError):
        return None
    finally:
        await client.aclose()


async def _wait_port(host: str, port: int, proc: asyncio.subprocess.Process,
                     within: float) -> None:
    deadline = time.monotonic() + within
    while True:
        if proc.returncode is not None:
            raise RuntimeError(f"exited with status {proc.returncode} before listening")
        try:
            _, writer = await asyncio.open_connection(host, port)
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"nothing listening on {host}:{port} after {within} s"
                                   ) from None
            await asyncio.sleep(0.05)  # polling a port another process opens
            continue
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return


async def _wait_ready(host: str, port: int, proc: asyncio.subprocess.Process,
                      within: float) -> None:
    """Poll a node's ``/readyz`` until it says 200 (Redis answered, bus canary back)."""
    deadline = time.monotonic() + within
    while True:
        if proc.returncode is not None:
            raise RuntimeError(f"node exited with status {proc.returncode}")
        with contextlib.suppress(OSError, TimeoutError):
            async with asyncio.timeout(2):
                reader, writer = await asyncio.open_connection(host, port)
                writer.write(b"GET /readyz HTTP/1.0\r\n\r\n")
                status = await reader.readline()
                writer.close()
            if b" 200 " in status:
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"node not ready after {within} s")
        await asyncio.sleep(0.1)  # polling another process's readiness


async def _stop(proc: asyncio.subprocess.Process, grace: float) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
    try:
        async with asyncio.timeout(grace):
            await proc.wait()
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()


def _open_log(path: Path) -> IO[bytes]:
    return open(path, "wb")  # closed in _Processes.stop_all


class _Processes:
    """Children started in their own session; all stopped on exit (shielded from a
    cancellation, so Ctrl+C still cleans up)."""

    def __init__(self) -> None:
        self.procs: list[asyncio.subprocess.Process] = []
        self.dir = tempfile.TemporaryDirectory(prefix="hubbub-bench-")
        self.logs: list[IO[bytes]] = []
        self.redis_is_separate = False
        """True when Redis is not the first process (a cluster, stopped by ``last``)."""
        self.last: contextlib.AsyncExitStack = contextlib.AsyncExitStack()
        """What stops after every process (a Redis Cluster: nodes drain into it)."""

    @property
    def path(self) -> Path:
        return Path(self.dir.name)

    async def start(self, name: str, *argv: str) -> asyncio.subprocess.Process:
        log = _open_log(self.path / f"{name}.log")
        self.logs.append(log)
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log,
            start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
            cwd=_ROOT)
        self.procs.append(proc)
        return proc

    def log_tail(self, name: str, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            text = (self.path / f"{name}.log").read_text(errors="replace")
            return "\n".join(text.splitlines()[-lines:])
        return ""

    async def stop_all(self) -> None:
        async def all_stopped() -> None:
            nodes, rest = self.procs[1:], self.procs[:1]  # Redis last: nodes drain into it
            if self.redis_is_separate:
                nodes, rest = self.procs, []
            await asyncio.gather(*(_stop(p, 15) for p in nodes))
            await asyncio.gather(*(_stop(p, 5) for p in rest))
            await self.last.aclose()

        task = asyncio.ensure_future(all_stopped())
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            await task
            raise
        finally:
            for log in self.logs:
                log.close()
            self.dir.cleanup()


class LocalCluster:
    """``async with LocalCluster(2) as cluster:`` → ``cluster.probe.nodes`` are up."""

    def __init__(self, nodes: int, *, node_args: tuple[str, ...] = (),
                 redis_shards: int = 0) -> None:
        """``redis_shards``: 0, one standalone redis-server; N >= 1, a local Redis Cluster
        of N masters (no replicas; 1 is a one-master cluster) with the nodes on it."""
        if nodes < 1:
            raise ValueError("at least one node")
        if redis_shards < 0:
            raise ValueError("redis_shards is 0 (one redis-server) or more (masters)")
        self.count = nodes
        self.node_args = node_args
        self.redis_shards = redis_shards
        self.probe = Probe()
        self._procs = _Processes()

    @property
    def targets(self) -> list[tuple[str, int]]:
        return [(n.host, n.port) for n in self.probe.nodes]

    async def __aenter__(self) -> LocalCluster:
        try:
            await self._start()
        except BaseException:
            await self._procs.stop_all()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._procs.stop_all()

    async def _start(self) -> None:
        raise_open_files()  # the nodes inherit it: --idle needs thousands of descriptors
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not on PATH (apt-get install redis-server)")
        if self.redis_shards:
            await self._start_redis_cluster(binary)
        else:
            await self._start_redis(binary)
        url = self.probe.redis_url
        assert url is not None
        self.probe.nodes.extend(await asyncio.gather(*(self._start_node(i, url)
                                                       for i in range(self.count))))

    async def _start_redis_cluster(self, binary: str) -> None:
        self._procs.redis_is_separate = True
        try:
            cluster = await self._procs.last.enter_async_context(
                start_redis_cluster(self.redis_shards, 0, binary=binary))
            owners = await cluster.slot_owners()
        except (OSError, TimeoutError) as exc:
            raise RuntimeError(f"the Redis Cluster did not start: {exc}") from None
        self.probe.redis_url = cluster.url
        self.probe.redis_shards = [
            RedisShard(master.address, ", ".join(f"{a}-{b}" for (a, b), port
                                                 in sorted(owners.items())
                                                 if port == master.port),
                       master.proc.pid)
            for master in cluster.masters]

    async def _start_redis(self, binary: str) -> None:
        rport = free_port()
        redis = await self._procs.start(
            "redis", binary, "--port", str(rport), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", str(self._procs.path),
            "--maxmemory-policy", "noeviction", "--maxclients", "10000")
        try:
            await _wait_port("127.0.0.1", rport, redis, START_TIMEOUT)
        except RuntimeError as exc:
            raise RuntimeError(f"redis-server: {exc}\n{self._procs.log_tail('redis')}"
                               ) from None
        self.probe.redis_url = f"redis://127.0.0.1:{rport}/0"

    async def _start_node(self, i: int, redis_url: str) -> NodeInfo:
        """Start node ``i + 1`` and wait until it is ready.  A port picked free can still
        be taken before the node binds it (another program, a connection's local port):
        the node then exits saying so, and is started again on other ports."""
        name = f"node{i + 1}"
        for attempt in range(PORT_ATTEMPTS):
            port, http = free_port(), free_port()
            proc = await self._procs.start(
                name, *node_command(port, http, redis_url, f"bench{i + 1}",
                                    log_json=True, redis_cluster=bool(self.redis_shards),
                                    **NODE_LIMITS_OFF),
                *self.node_args)
            try:
                await _wait_ready("127.0.0.1", http, proc, START_TIMEOUT)
            except RuntimeError as exc:
                tail = self._procs.log_tail(name)
                if "already in use" in tail and attempt + 1 < PORT_ATTEMPTS:
                    await _stop(proc, 5)
                    continue
                raise RuntimeError(f"{name}: {exc}\n{tail}") from None
            return NodeInfo("127.0.0.1", port, ("127.0.0.1", http), proc.pid)
        raise AssertionError("unreachable")  # the last attempt returns or raises


class BaselineServer:
    """``async with BaselineServer("ceiling") as server:`` → ``server.probe.nodes[0]``."""

    def __init__(self, name: str, *args: str) -> None:
        script = Path(__file__).resolve().parents[2] / "benchmarks" / f"{name}_server.py"
        if not script.exists():
            raise RuntimeError(f"{script} not found (run from a hubbub checkout)")
        self.name = name
        self.argv = (sys.executable, str(script), *args)
        self.probe = Probe()
        self._procs = _Processes()

    @property
    def targets(self) -> list[tuple[str, int]]:
        return [(n.host, n.port) for n in self.probe.nodes]

    async def __aenter__(self) -> BaselineServer:
        raise_open_files()
        try:
            for attempt in range(PORT_ATTEMPTS):  # a port taken meanwhile: try another
                port = free_port()
                proc = await self._procs.start(self.name, *self.argv, "--port", str(port))
                try:
                    await _wait_port("127.0.0.1", port, proc, START_TIMEOUT)
                    break
                except RuntimeError:
                    if proc.returncode is None or attempt + 1 == PORT_ATTEMPTS:
                        raise
        except BaseException:
            await self._procs.stop_all()
            raise
        self.probe.nodes.append(NodeInfo("127.0.0.1", port, None, proc.pid))
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._procs.stop_all()
