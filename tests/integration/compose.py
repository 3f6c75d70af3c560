"""docker-compose.yml run as local processes: the harness of the compose-parity test.

There is no Docker engine on the machines that test hubbub, so this runs what the compose
file describes the way each container would run it, on loopback:

* the compose file is read with PyYAML and ``${VAR:-default}`` interpolated as compose
  does; the image's ``ENTRYPOINT``/``CMD`` are read from ``deploy/Dockerfile``;
* a file a service mounts (``./deploy/redis.conf:/usr/local/etc/redis/redis.conf``) is
  used from the repository wherever its container path appears in the service's
  command; a named volume is a temporary directory (Redis's working directory, ``/data``
  in its image);
* every port a service listens on (Redis's ``port`` directive, a node's ``HUBBUB_PORT``,
  ``HUBBUB_HTTP_PORT`` and ``HUBBUB_IRC_PORT``, HAProxy's ``bind`` lines) is remapped to a
  free loopback port, and every ``service:port`` reference (``HUBBUB_REDIS_URL``, HAProxy
  ``server`` lines, ``HUBBUB_NODES``) is rewritten to ``127.0.0.1:<that port>``; listen-everywhere
  addresses (``0.0.0.0``) become ``127.0.0.1``;
* Redis runs as ``redis-server <deploy/redis.conf> <the compose command's arguments>
  --port <free> --bind 127.0.0.1`` in that temporary directory, and its compose
  healthcheck is run the same way before any node starts (``depends_on: service_healthy``);
* a node runs as ``python -m cli <CMD>`` (the image's ``ENTRYPOINT ["hubbub"]``) with the
  image's ``ENV`` and its compose environment, and none of the caller's ``HUBBUB_*``
  variables; the image's ``HEALTHCHECK`` command can be run the same way;
* a fixed container address (a service's ``ipv4_address``, which the nodes trust for
  PROXY headers) becomes a loopback alias of its own, ``127.0.0.10`` and up, wherever it
  appears in an environment; HAProxy's connections to the nodes leave from its alias
  (``source`` added to its ``server`` lines), as they leave from its container address;
* HAProxy runs Debian's ``haproxy -f <rewritten copy of deploy/haproxy.cfg> -db``.

Everything that differs from the containers is in this list: addresses and ports.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cli.cluster import free_port

from .procs import START_TIMEOUT, Proc, is_event, require_binary

__all__ = ["COMPOSE_FILE", "DOCKERFILE", "REPO", "ComposeCluster", "compose_cluster", "http_get",
           "image_command", "image_env", "image_healthcheck", "interpolate", "load_compose"]

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "deploy" / "Dockerfile"
LOOPBACK = "127.0.0.1"
ANYWHERE = {"", "*", "0.0.0.0", "::", "[::]"}

_VAR = re.compile(r"\$(?:(\$)|\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}|"
                  r"([A-Za-z_][A-Za-z0-9_]*))")


# ------------------------------------------------------------------ reading the files

def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Compose's variable substitution: ``$$``, ``$VAR``, ``${VAR}``, ``${VAR:-default}``,
    ``${VAR-default}``, ``${VAR:?error}`` and ``${VAR?error}``."""
    def sub(m: re.Match[str]) -> str:
        if m.group(1):
            return "$"
        name = m.group(2) or m.group(5)
        op, arg = m.group(3), m.group(4) or ""
        value = env.get(name)
        if op in (":-", ":?") and not value:
            value = None
        if value is not None:
            return value
        if op and op.endswith("?"):
            raise ValueError(f"required variable {name} is not set: {arg}")
        return arg if op else ""
    return _VAR.sub(sub, text)


def _interpolate_all(value: Any, env: Mapping[str, str]) -> Any:
    if isinstance(value, str):
        return interpolate(value, env)
    if isinstance(value, list):
        return [_interpolate_all(v, env) for v in value]
    if isinstance(value, dict):
        return {k: _interpolate_all(v, env) for k, v in value.items()}
    return value


def load_compose(path: Path = COMPOSE_FILE, env: Mapping[str, str] | None = None
                 ) -> dict[str, Any]:
    """The compose file as compose reads it: YAML (anchors and ``<<`` merges included)
    with variables substituted from ``env`` (default: this process's environment)."""
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path} is not a mapping")
    out: dict[str, Any] = _interpolate_all(data, os.environ if env is None else env)
    return out


def image_command(path: Path = DOCKERFILE) -> tuple[list[str], list[str]]:
    """``(ENTRYPOINT, CMD)`` of the Dockerfile's last stage (JSON form only)."""
    entrypoint: list[str] = []
    cmd: list[str] = []
    text = re.sub(r"\\\n", " ", path.read_text())
    for line in text.splitlines():
        word, _, rest = line.strip().partition(" ")
        if word.upper() == "FROM":
            entrypoint, cmd = [], []
        elif word.upper() in ("ENTRYPOINT", "CMD"):
            value = json.loads(rest)
            if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
                raise ValueError(f"{word} must be a JSON array of strings: {rest}")
            if word.upper() == "ENTRYPOINT":
                entrypoint = value
            else:
                cmd = value
    return entrypoint, cmd


def image_healthcheck(path: Path = DOCKERFILE) -> list[str]:
    """The ``HEALTHCHECK ... CMD [...]`` command of the Dockerfile (JSON form)."""
    text = re.sub(r"\\\n", " ", path.read_text())
    for line in text.splitlines():
        words = line.split()
        if words[:1] == ["HEALTHCHECK"] and "CMD" in words:
            value = json.loads(line[line.index(" CMD ") + 5:])
            assert isinstance(value, list) and all(isinstance(v, str) for v in value)
            return value
    raise LookupError(f"{path} has no HEALTHCHECK CMD")


def image_env(path: Path = DOCKERFILE) -> dict[str, str]:
    """The ``ENV`` settings of the Dockerfile's last stage (``KEY=value`` form)."""
    env: dict[str, str] = {}
    text = re.sub(r"\\\n", " ", path.read_text())
    for line in text.splitlines():
        word, _, rest = line.strip().partition(" ")
        if word.upper() == "FROM":
            env = {}
        elif word.upper() == "ENV":
            for item in rest.split():
                key, _, value = item.partition("=")
                env[key] = value
    return env


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def _mounts(service: dict[str, Any], workdir: Path, root: Path) -> dict[str, Path]:
    """Container path → host path of each mount (short syntax; relative to ``root``,
    the compose file's directory)."""
    out = {}
    for spec in service.get("volumes") or []:
        source, target = str(spec).split(":")[:2]
        if source.startswith((".", "/")):
            out[target] = (root / source).resolve()
        else:  # a named volume: a fresh directory, as on a first `docker compose up`
            out[target] = workdir / f"volume-{source}"
            out[target].mkdir(exist_ok=True)
    return out


# ------------------------------------------------------------------ HTTP

async def http_get(port: int, path: str, timeout: float = 5.0) -> tuple[int, str]:
    """``GET http://127.0.0.1:port/path``: (status, body).  A bare HTTP/1.0 request, so
    the test needs no HTTP client session to clean up."""
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(LOOPBACK, port)
        try:
            writer.write(f"GET {path} HTTP/1.0\r\nHost: {LOOPBACK}:{port}\r\n"
                         "Connection: close\r\n\r\n".encode())
            await writer.drain()
            raw = await reader.read()
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    if b"transfer-encoding: chunked" in head.lower():  # HAProxy's status page, even to 1.0
        body = _dechunk(body)
    return status, body.decode()


def _dechunk(data: bytes) -> bytes:
    out = bytearray()
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out += data[:size]
        data = data[size + 2:]
    return bytes(out)


# ------------------------------------------------------------------ the cluster

@dataclass
class ComposeCluster:
    """The compose file's services as local processes (see the module docstring)."""

    compose: dict[str, Any]
    workdir: Path
    root: Path = REPO
    """The compose file's directory: relative mounts are relative to it."""
    ports: dict[tuple[str, int], int] = field(default_factory=dict)
    """(service, port inside its container) → local port."""
    procs: dict[str, Proc] = field(default_factory=dict)
    haproxy_cfg: Path | None = None
    lb_binds: dict[str, int] = field(default_factory=dict)
    """HAProxy frontend name → its local port."""

    @property
    def services(self) -> dict[str, Any]:
        services: dict[str, Any] = self.compose["services"]
        return services

    @property
    def node_names(self) -> list[str]:
        """Services built from deploy/Dockerfile that run ``hubbub node``."""
        return sorted(name for name, svc in self.services.items()
                      if "build" in svc and not svc.get("profiles")
                      and self.argv(name)[3:4] == ["node"])

    def local_port(self, service: str, port: int) -> int:
        key = (service, port)
        if key not in self.ports:
            self.ports[key] = free_port()
        return self.ports[key]

    def rewrite_addresses(self, text: str) -> str:
        """``service:port`` → ``127.0.0.1:<local port>`` for every service name, and a
        fixed container address → its loopback alias."""
        names = "|".join(re.escape(n) for n in sorted(self.services, key=len, reverse=True))
        text = re.sub(rf"(?<![\w.-])({names}):(\d+)\b",
                      lambda m: f"{LOOPBACK}:{self.local_port(m[1], int(m[2]))}", text)
        for fixed, alias in self.aliases.values():
            text = re.sub(rf"(?<![\w.]){re.escape(fixed)}(?![\w.])", alias, text)
        return text

    @property
    def aliases(self) -> dict[str, tuple[str, str]]:
        """service → (its fixed container address, the loopback alias standing for it)."""
        fixed = {}
        for name in sorted(self.services):
            for net in (self.services[name].get("networks") or {}).values():
                if isinstance(net, dict) and net.get("ipv4_address"):
                    fixed[name] = str(net["ipv4_address"])
        return {name: (addr, f"127.0.0.{10 + i}") for i, (name, addr) in enumerate(fixed.items())}

    # --- redis

    def redis_argv(self) -> tuple[list[str], Path]:
        """redis-server's command line and working directory."""
        svc = self.services["redis"]
        mounts = _mounts(svc, self.workdir, self.root)
        command = [str(mounts.get(arg, arg)) for arg in svc["command"]]
        assert command[0] == "redis-server", command
        conf = Path(command[1])
        port = 6379
        for line in conf.read_text().splitlines():
            words = line.split()
            if words[:1] == ["port"]:
                port = int(words[1])
        local = self.local_port("redis", port)
        workdir = mounts.get("/data", self.workdir)  # the image's WORKDIR is /data
        binary = require_binary("redis-server")
        return [binary, *command[1:], "--port", str(local), "--bind", LOOPBACK], workdir

    async def start_redis(self) -> Proc:
        argv, cwd = self.redis_argv()
        child = await asyncio.create_subprocess_exec(
            *argv, cwd=cwd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        assert child.stdout is not None
        proc = self.procs["redis"] = Proc(child, child.stdout)
        await proc.wait_line(lambda s: "Ready to accept connections" in s)
        await self.redis_healthcheck()
        return proc

    async def redis_healthcheck(self, env_override: Mapping[str, str] | None = None) -> int:
        """Run the compose healthcheck of ``redis`` here; its exit status."""
        svc = self.services["redis"]
        test = svc["healthcheck"]["test"]
        assert test[0] == "CMD-SHELL", test
        require_binary("redis-cli")
        script = re.sub(r"-p (\d+)", lambda m: f"-p {self.local_port('redis', int(m[1]))}",
                        test[1])
        env = {**os.environ, **_environment(svc), **(env_override or {})}
        child = await asyncio.create_subprocess_exec(
            "/bin/sh", "-c", script, env=env, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL)
        async with asyncio.timeout(10):
            return await child.wait()

    # --- nodes

    def argv(self, name: str) -> list[str]:
        """The service's container command as a local one: ``hubbub`` → ``python -m cli``."""
        svc = self.services[name]
        entrypoint, cmd = image_command()
        entrypoint = list(svc.get("entrypoint") or entrypoint)
        cmd = list(svc.get("command") or cmd)
        assert entrypoint[:1] == ["hubbub"], entrypoint
        return [sys.executable, "-m", "cli", *entrypoint[1:], *cmd]

    def node_env(self, name: str) -> dict[str, str]:
        """The node's compose environment with its addresses made local."""
        env = _environment(self.services[name])
        for key in ("HUBBUB_PORT", "HUBBUB_HTTP_PORT"):
            assert key in env, f"{name}: set {key} in docker-compose.yml (ports are remapped)"
            env[key] = str(self.local_port(name, int(env[key])))
        if env.get("HUBBUB_IRC_PORT", "0") != "0":
            env["HUBBUB_IRC_PORT"] = str(self.local_port(name, int(env["HUBBUB_IRC_PORT"])))
        for key, value in env.items():
            if key.endswith("HOST") and value in ANYWHERE:
                env[key] = LOOPBACK
            else:
                env[key] = self.rewrite_addresses(value)
        return env

    def chat_port(self, name: str) -> int:
        return int(self.node_env(name)["HUBBUB_PORT"])

    def http_port(self, name: str) -> int:
        return int(self.node_env(name)["HUBBUB_HTTP_PORT"])

    async def start_node(self, name: str) -> Proc:
        """Start (or start again) a node; returns once it is subscribed and ready."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("HUBBUB_")}
        env.update(image_env())
        env.update(self.node_env(name))
        child = await asyncio.create_subprocess_exec(
            *self.argv(name), cwd=self.workdir, env=env, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        assert child.stdout is not None
        proc = self.procs[name] = Proc(child, child.stdout)
        await proc.wait_line(is_event("relay subscribed"))
        await self.wait_ready(name, True)
        return proc

    async def readyz(self, name: str) -> tuple[int, dict[str, Any]]:
        status, body = await http_get(self.http_port(name), "/readyz")
        return status, json.loads(body)

    async def wait_ready(self, name: str, ready: bool, timeout: float = START_TIMEOUT
                         ) -> float:
        """Poll ``/readyz`` until it says ``ready`` (200) or not (503); returns the time it
        took.  Readiness changes with time (the canary's age) and announces itself
        nowhere, so this is a bounded poll."""
        start = time.monotonic()
        async with asyncio.timeout(timeout):
            while True:
                with contextlib.suppress(OSError):
                    status, _ = await self.readyz(name)
                    if status == (200 if ready else 503):
                        return time.monotonic() - start
                await asyncio.sleep(0.05)

    async def image_healthcheck(self, name: str) -> int:
        """Run the image's ``HEALTHCHECK`` command for a node here; its exit status."""
        argv = image_healthcheck()
        assert argv[0] == "python", argv
        env = {k: v for k, v in os.environ.items() if not k.startswith("HUBBUB_")}
        env.update(image_env())
        env.update(self.node_env(name))
        child = await asyncio.create_subprocess_exec(
            sys.executable, *argv[1:], env=env, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL)
        async with asyncio.timeout(10):
            return await child.wait()

    # --- the load balancer

    def write_haproxy_cfg(self) -> Path:
        svc = self.services["lb"]
        mounts = _mounts(svc, self.workdir, self.root)
        source = mounts["/usr/local/etc/haproxy/haproxy.cfg"]
        lines = []
        section = ""
        for line in source.read_text().splitlines():
            words = line.split()
            if words[:1] == ["frontend"]:
                section = words[1]
            elif words[:1] == ["bind"]:
                host, _, port = words[1].rpartition(":")
                assert host in ANYWHERE, line
                self.lb_binds[section] = self.local_port("lb", int(port))
                words[1] = f"{LOOPBACK}:{self.lb_binds[section]}"
                line = "    " + " ".join(words)
            elif words[:1] == ["server"]:
                service, port = words[2].rsplit(":", 1)
                assert service in self.services, line
                words[2] = f"{LOOPBACK}:{self.local_port(service, int(port))}"
                for i, word in enumerate(words[:-1]):
                    if word == "port":
                        words[i + 1] = str(self.local_port(service, int(words[i + 1])))
                if "lb" in self.aliases:
                    words += ["source", self.aliases["lb"][1]]
                line = "    " + " ".join(words)
            lines.append(line)
        path = self.workdir / "haproxy.cfg"
        path.write_text("\n".join(lines) + "\n")
        self.haproxy_cfg = path
        return path

    @property
    def lb_port(self) -> int:
        """The load balancer's client port (the first one it publishes)."""
        published = str(self.services["lb"]["ports"][0]).rsplit(":", 1)[-1]
        return self.local_port("lb", int(published.split("/")[0]))

    async def start_lb(self) -> Proc:
        binary = require_binary("haproxy")
        cfg = self.write_haproxy_cfg()
        check = await asyncio.create_subprocess_exec(
            binary, "-c", "-q", "-f", str(cfg), stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT)
        out, _ = await check.communicate()
        assert check.returncode == 0, out.decode()
        child = await asyncio.create_subprocess_exec(
            binary, "-f", str(cfg), "-db", cwd=self.workdir, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT)
        assert child.stdout is not None
        proc = self.procs["lb"] = Proc(child, child.stdout)
        await self.wait_lb({n: "UP" for n in self.node_names})
        return proc

    @property
    def lb_stats_port(self) -> int:
        """HAProxy's status page (the ``frontend stats`` bind)."""
        return self.lb_binds["stats"]

    async def lb_servers(self) -> dict[str, str]:
        """Each backend server's state as HAProxy's status page tells it (``UP``,
        ``DOWN``, ``UP 1/2`` going down, ...)."""
        status, body = await http_get(self.lb_stats_port, "/;csv")
        assert status == 200, body
        header, *rows = body.splitlines()
        columns = header.lstrip("# ").split(",")
        out = {}
        for row in rows:
            cells = dict(zip(columns, row.split(","), strict=False))
            if cells.get("pxname") == "nodes" and cells["svname"] != "BACKEND":
                out[cells["svname"]] = cells["status"]
        return out

    async def wait_lb(self, want: dict[str, str], timeout: float = START_TIMEOUT) -> float:
        """Poll HAProxy's status page until each named server has the wanted state (it
        prints nothing when it starts, and the first checks of healthy servers change
        nothing that it would log); returns the time it took."""
        start = time.monotonic()
        async with asyncio.timeout(timeout):
            while True:
                with contextlib.suppress(OSError):
                    servers = await self.lb_servers()
                    if all(servers.get(n) == state for n, state in want.items()):
                        return time.monotonic() - start
                await asyncio.sleep(0.05)

    def dump(self, lines: int = 60) -> None:
        """Print the last lines of every process's output (a failed test's evidence)."""
        for name, proc in self.procs.items():
            print(f"--- {name} (last {lines} lines)")
            print("\n".join(proc.lines[-lines:]))

    async def stop(self) -> None:
        """Stop everything: the load balancer, the nodes (SIGTERM, drained), then Redis."""
        redis = self.procs.get("redis")
        if redis is not None:
            redis.signal(signal.SIGCONT)  # a frozen Redis must be able to stop
        lb = self.procs.pop("lb", None)
        if lb is not None:
            await lb.stop()
        nodes = [self.procs.pop(n) for n in list(self.procs) if n != "redis"]
        await asyncio.gather(*(p.stop() for p in nodes))
        if redis is not None:
            await self.procs.pop("redis").stop()


@contextlib.asynccontextmanager
async def compose_cluster(env: Mapping[str, str] | None = None, path: Path = COMPOSE_FILE
                          ) -> AsyncIterator[ComposeCluster]:
    """The compose file's redis, nodes and lb running locally, every node ready."""
    require_binary("redis-server")
    require_binary("haproxy")
    compose = load_compose(path, env=env)
    with tempfile.TemporaryDirectory(prefix="hubbub-compose-") as tmp:
        cluster = ComposeCluster(compose, Path(tmp), path.parent)
        try:
            await cluster.start_redis()
            await asyncio.gather(*(cluster.start_node(n) for n in cluster.node_names))
            await cluster.start_lb()
            yield cluster
        except BaseException:
            cluster.dump()
            raise
        finally:
            await cluster.stop()
