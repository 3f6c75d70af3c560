"""An operator's mistake stops ``hubbub node`` (and ``hubbub cluster``) with one line naming
what is wrong and the option that fixes it, exit status 2, and no traceback.  Each
mistake is made for real: the console script runs as a subprocess."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import trustme

from cli.cluster import free_port
from cli.redis_cluster import start_redis_cluster

from .procs import hubbub_exit, redis_server, require_binary

pytestmark = pytest.mark.redis_server


@contextlib.contextmanager
def taken_port() -> Iterator[int]:
    """A loopback port some other program listens on."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


@contextlib.asynccontextmanager
async def not_redis() -> AsyncIterator[int]:
    """A port where an HTTP server answers instead of Redis."""
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        with contextlib.suppress(ConnectionError):
            await writer.drain()
            await reader.read(100)
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


async def refused(*args: str, option: str, env: dict[str, str] | None = None,
                  alone: bool = True) -> str:
    """Run ``hubbub node ARGS`` (on loopback, a free chat port unless ARGS give one):
    it must exit 2 with no traceback, its last line naming ``option``; ``alone``: and
    print nothing else.  Returns that line."""
    port = () if "--port" in args or (env and "HUBBUB_PORT" in env) else (
        "--port", str(free_port()))
    code, out = await hubbub_exit("node", "--host", "127.0.0.1", "--node-id", "mistake",
                                  *port, *args, env=env)
    lines = out.strip().splitlines()
    assert code == 2, out
    assert "Traceback" not in out, out
    assert lines and lines[-1].startswith("hubbub node: error: "), out
    assert lines[-1].endswith(f"({option})") or f"({option}," in lines[-1], out
    if alone:
        assert len(lines) == 1, out
    return lines[-1]


async def test_chat_port_in_use() -> None:
    with taken_port() as port:
        line = await refused("--port", str(port), option="--port / HUBBUB_PORT")
    assert line == (f"hubbub node: error: port {port} on 127.0.0.1 is already in use "
                    "(--port / HUBBUB_PORT)")


async def test_chat_port_in_use_given_by_its_variable() -> None:
    with taken_port() as port:
        await refused(option="--port / HUBBUB_PORT", env={"HUBBUB_PORT": str(port)})


async def test_http_port_in_use() -> None:
    with taken_port() as port:
        line = await refused("--http-host", "127.0.0.1", "--http-port", str(port),
                             option="--http-port / HUBBUB_HTTP_PORT")
    assert f"port {port} on 127.0.0.1 is already in use" in line


async def test_tls_port_in_use(tmp_path: Path) -> None:
    cert = trustme.CA().issue_cert("localhost")
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    with taken_port() as port:
        await refused("--tls-cert", str(cert_file), "--tls-key", str(key_file),
                      "--tls-port", str(port), option="--tls-port / HUBBUB_TLS_PORT")


async def test_an_address_the_host_does_not_have() -> None:
    code, out = await hubbub_exit("node", "--host", "192.0.2.1", "--port", str(free_port()))
    assert code == 2 and "Traceback" not in out, out
    assert out.strip() == ("hubbub node: error: cannot listen on 192.0.2.1: not an address "
                           "of this host (--host / HUBBUB_HOST)")


async def test_a_redis_that_cannot_be_reached_in_time() -> None:
    nobody = free_port()
    line = await refused("--redis-url", f"redis://127.0.0.1:{nobody}/0",
                         "--redis-start-timeout", "0.5", option="--redis-url / HUBBUB_REDIS_URL",
                         alone=False)  # it served, and logged, while it waited
    assert f"cannot reach Redis at redis://127.0.0.1:{nobody}/0 within 0.5 s" in line
    assert "--redis-start-timeout / HUBBUB_REDIS_START_TIMEOUT" in line


async def test_a_redis_that_wants_a_password() -> None:
    async with redis_server(None, "--requirepass", "right-password") as (url, _):
        await refused("--redis-url", url, option="--redis-url / HUBBUB_REDIS_URL")
        wrong = url.replace("redis://", "redis://:wrong-password@")
        line = await refused("--redis-url", wrong, option="--redis-url / HUBBUB_REDIS_URL")
    assert "refused the URL's user or password" in line
    assert "wrong-password" not in line


async def test_a_database_redis_does_not_have() -> None:
    async with redis_server() as (url, _):
        line = await refused("--redis-url", url.rsplit("/", 1)[0] + "/99",
                             option="--redis-url / HUBBUB_REDIS_URL")
    assert "DB index is out of range" in line


async def test_something_that_is_not_redis() -> None:
    async with not_redis() as port:
        line = await refused("--redis-url", f"redis://127.0.0.1:{port}/0",
                             option="--redis-url / HUBBUB_REDIS_URL")
    assert "does not answer like a Redis server" in line


async def test_a_url_that_is_not_a_redis_url() -> None:
    await refused("--redis-url", "http://user:pw@localhost:6379/0",
                  option="--redis-url / HUBBUB_REDIS_URL")


async def test_an_unreadable_certificate(tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.pem")
    await refused("--tls-cert", missing, "--tls-key", missing,
                  option="--tls-cert / HUBBUB_TLS_CERT")


async def test_an_unreadable_password_file(tmp_path: Path) -> None:
    await refused("--auth", "token", "--auth-token-file", str(tmp_path),  # a directory
                  option="--auth-token-file / HUBBUB_AUTH_TOKEN_FILE")
    await refused("--oper-secret-file", str(tmp_path / "none"),
                  option="--oper-secret-file / HUBBUB_OPER_SECRET_FILE")


@pytest.mark.parametrize(("args", "option"), [
    (("--max-line", "3"), "--max-line / HUBBUB_MAX_LINE"),
    (("--log-level", "loud"), "--log-level / HUBBUB_LOG_LEVEL"),
    (("--auth", "maybe"), "--auth / HUBBUB_AUTH"),
    (("--redis-start-timeout", "-1"), "--redis-start-timeout / HUBBUB_REDIS_START_TIMEOUT"),
    (("--proxy-from", "not-a-network"), "--proxy-from / HUBBUB_PROXY_FROM"),
])
async def test_a_value_the_node_refuses(args: tuple[str, ...], option: str) -> None:
    await refused(*args, option=option)


async def test_a_value_the_command_line_refuses() -> None:
    code, out = await hubbub_exit("node", "--port", "abc")
    assert code == 2 and "Traceback" not in out, out
    assert "'--port'" in out and "HUBBUB_PORT" in out  # typer's own usage error


async def test_with_json_logs_the_mistake_is_one_event() -> None:
    with taken_port() as port:
        code, out = await hubbub_exit("node", "--host", "127.0.0.1", "--port", str(port),
                                      "--log-json")
    assert code == 2, out
    (line,) = out.strip().splitlines()
    event = json.loads(line)
    assert (event["event"], event["level"], event["option"]) == (
        "node cannot run", "error", "--port / HUBBUB_PORT")
    assert event["error"] == f"port {port} on 127.0.0.1 is already in use"


async def test_cluster_base_port_in_use() -> None:
    with taken_port() as port:
        code, out = await hubbub_exit("cluster", "--nodes", "1", "--base-port", str(port))
    assert code == 2 and "Traceback" not in out, out
    assert out.strip() == (f"hubbub cluster: error: port {port} is already in use; stop "
                           "what holds it or choose other ports (--base-port)")


async def test_cluster_with_a_redis_that_refuses_it() -> None:
    async with redis_server(None, "--requirepass", "right-password") as (url, _):
        code, out = await hubbub_exit("cluster", "--nodes", "1", "--base-port",
                                      str(free_port()), "--redis-url", url)
    assert code == 2 and "Traceback" not in out, out
    assert out.strip().startswith("hubbub cluster: error: Redis at ")
    assert out.strip().endswith("(--redis-url / HUBBUB_CLUSTER_REDIS_URL)")


async def test_a_standalone_redis_named_as_a_cluster_node_is_refused() -> None:
    async with redis_server() as (url, _):
        line = await refused("--redis-url", url, "--redis-cluster",
                             option="--redis-cluster / HUBBUB_REDIS_CLUSTER")
        env_line = await refused("--redis-url", url, env={"HUBBUB_REDIS_CLUSTER": "1"},
                                 option="--redis-cluster / HUBBUB_REDIS_CLUSTER")
    assert line == env_line
    assert "is not a Redis Cluster node: leave --redis-cluster off" in line


async def test_an_unreachable_cluster_node_names_the_url() -> None:
    line = await refused("--redis-url", f"redis://127.0.0.1:{free_port()}/0", "--redis-cluster",
                         "--redis-timeout", "0.5", option="--redis-url / HUBBUB_REDIS_URL")
    assert "cannot reach the Redis Cluster node at redis://127.0.0.1:" in line


async def test_a_redis_cluster_node_without_the_option_is_refused_without_waiting() -> None:
    require_binary("redis-server")
    async with start_redis_cluster(1) as cluster:
        line = await refused("--redis-url", cluster.url,
                             option="--redis-cluster / HUBBUB_REDIS_CLUSTER")
    assert f"Redis at {cluster.url} is a Redis Cluster node: start the node with " \
        "--redis-cluster" in line
