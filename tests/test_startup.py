"""node.startup and ChatNode's start: a mistake in the settings is one StartupError naming
the settings to change; an unreachable Redis is waited for, within a bound."""

from __future__ import annotations

import asyncio
import errno
import socket
import ssl
from typing import Any

import fakeredis
import pytest
from redis.exceptions import AuthenticationError, InvalidResponse, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from cli.redis_client import connect_redis
from node.config import ConfigError, NodeConfig
from node.errors import RedisMisconfigured, StartupError
from node.server import ChatNode
from node.startup import check_redis, listen_error, redis_address, wait_for_redis

from .helpers import TIMEOUT, LineClient, node_config, running_node


class Answers:
    """A stand-in for the Redis client whose PING raises the given errors in turn (then
    answers), and whose HELLO answers ``hello`` (or raises it)."""

    def __init__(self, *errors: BaseException, hello: Any = None) -> None:
        self.errors = list(errors)
        self.pings = 0
        self.hello = hello if hello is not None else {b"server": b"redis",
                                                      b"version": b"7.0.15",
                                                      b"mode": b"standalone"}

    async def ping(self) -> bool:
        self.pings += 1
        if self.errors:
            raise self.errors.pop(0)
        return True

    async def execute_command(self, *args: str) -> Any:
        assert args == ("HELLO",)
        if isinstance(self.hello, BaseException):
            raise self.hello
        return self.hello


async def check(*errors: BaseException, url: str = "redis://:pw@db.example:6380/2"
                ) -> Exception | None:
    fake: Any = Answers(*errors)
    return await check_redis(fake, url, 1.0)


def test_redis_address_never_shows_the_credentials() -> None:
    assert redis_address("redis://user:s3cret@db.example:6380/2") == "redis://db.example:6380/2"
    assert redis_address("rediss://:s3cret@[::1]/") == "rediss://[::1]:6379/0"
    assert redis_address("unix:///run/redis.sock") == "unix:///run/redis.sock"


@pytest.mark.parametrize(("error", "says"), [
    (AuthenticationError("invalid username-password pair"), "refused the URL's user or "
                                                             "password"),
    (ResponseError("DB index is out of range"), "DB index is out of range"),
    (InvalidResponse('Protocol error, got "H" as reply type byte'), "does not answer like a "
                                                                    "Redis server"),
])
async def test_a_redis_that_refuses_the_node_ends_the_start(error: BaseException,
                                                             says: str) -> None:
    with pytest.raises(StartupError) as info:
        await check(error)
    assert says in info.value.text
    assert info.value.settings == ("redis_url",)
    assert "s3cret" not in info.value.text and "pw@" not in info.value.text


@pytest.mark.parametrize(("hello", "says"), [
    ({b"server": b"redis", b"version": b"6.2.14", b"mode": b"standalone"},
     "is redis 6.2.14: hubbub needs Redis 7.0 or later (sharded pub/sub)"),
    (ResponseError("unknown command 'HELLO', with args beginning with: "),
     "is redis 6: hubbub needs Redis 7.0 or later"),
])
async def test_an_old_redis_is_refused(hello: Any, says: str) -> None:
    fake: Any = Answers(hello=hello)
    with pytest.raises(StartupError) as info:
        await check_redis(fake, "redis://:pw@db.example:6380/2", 1.0)
    assert info.value.text.startswith("Redis at redis://db.example:6380/2 ")
    assert says in info.value.text
    assert info.value.settings == ("redis_url",)


@pytest.mark.parametrize("hello", [
    {b"server": b"redis", b"version": b"7.0.15", b"proto": 3, b"mode": b"standalone"},
    [b"server", b"redis", b"version", b"7.2.4", b"proto", 2, b"mode", b"standalone"],
    {"server": "valkey", "version": "8.0.1", "mode": "standalone"},
    [b"server", b"fakeredis", b"version", b"2.41.0", b"mode", b"standalone"],
])
async def test_redis_7_or_later_and_the_embedded_server_are_accepted(hello: Any) -> None:
    fake: Any = Answers(hello=hello)
    assert await check_redis(fake, "redis://db.example:6380/2", 1.0) is None


async def test_a_redis_lost_between_ping_and_hello_is_waited_for() -> None:
    lost = RedisConnectionError("reset")
    fake: Any = Answers(hello=lost)
    assert await check_redis(fake, "redis://db.example:6380/2", 1.0) is lost


async def test_fakeredis_answers_hello_as_an_acceptable_server() -> None:
    redis = fakeredis.FakeAsyncRedis()
    assert await check_redis(redis, "redis://localhost:6379/0", 1.0) is None


async def test_no_password_in_the_url_says_how_to_give_one() -> None:
    with pytest.raises(StartupError) as info:
        await check(AuthenticationError("HELLO must be called …"),
                    url="redis://db.example:6379/0")
    assert "wants a password and the URL gives none" in info.value.text


async def test_tls_that_fails_verification_names_the_ca_option_too() -> None:
    failure = RedisConnectionError("Error 1 connecting")
    failure.__context__ = ssl.SSLCertVerificationError(1, "certificate verify failed")
    with pytest.raises(StartupError) as info:
        await check(failure, url="rediss://db.example:6380/0")
    assert "certificate verify failed" in info.value.text
    assert info.value.settings == ("redis_url", "redis_ca")


@pytest.mark.parametrize("error", [RedisConnectionError("refused"), RedisTimeoutError("slow"),
                                   ConnectionRefusedError(111, "refused"), TimeoutError()])
async def test_an_unreachable_redis_is_worth_waiting_for(error: BaseException) -> None:
    assert await check(error) is error
    assert await check() is None


async def test_waiting_ends_when_redis_answers() -> None:
    fake: Any = Answers(*[RedisConnectionError("refused")] * 3)
    loop = asyncio.get_running_loop()
    await wait_for_redis(fake, "redis://x:1/0", redis_timeout=1.0, give_up_after=10.0,
                         since=loop.time())
    assert fake.pings == 4


async def test_waiting_gives_up_after_the_start_timeout() -> None:
    refused = RedisConnectionError("Error 111 connecting")
    refused.__context__ = ConnectionRefusedError(errno.ECONNREFUSED, "Connect call failed")
    fake: Any = Answers(*[refused] * 1000)
    loop = asyncio.get_running_loop()
    began = loop.time()
    with pytest.raises(StartupError) as info:
        await wait_for_redis(fake, "redis://:pw@x:1/0", redis_timeout=1.0, give_up_after=0.3,
                             since=began)
    assert 0.3 <= loop.time() - began < 0.3 + 1.0
    assert info.value.text == ("cannot reach Redis at redis://x:1/0 within 0.3 s "
                               "(Connection refused)")
    assert info.value.settings == ("redis_url", "redis_start_timeout")


async def test_waiting_stops_at_once_when_redis_turns_out_to_refuse_the_node() -> None:
    fake: Any = Answers(RedisConnectionError("refused"), AuthenticationError("WRONGPASS"))
    loop = asyncio.get_running_loop()
    with pytest.raises(StartupError):
        await wait_for_redis(fake, "redis://:pw@x:1/0", redis_timeout=1.0, give_up_after=0,
                             since=loop.time())
    assert fake.pings == 2


@pytest.mark.parametrize(("error", "settings", "says"), [
    (OSError(errno.EADDRINUSE, "address already in use"), ("port",),
     "port 5051 is already in use"),
    (OSError(errno.EACCES, "permission denied"), ("port",), "not allowed to listen"),
    (OSError(errno.EADDRNOTAVAIL, "cannot assign"), ("host",), "not an address of this host"),
    (socket.gaierror(-2, "Name or service not known"), ("host",), "Name or service not known"),
    (OSError(errno.EINVAL, "invalid argument"), ("port", "host"), "invalid argument"),
])
def test_listen_errors_name_the_setting(error: OSError, settings: tuple[str, ...],
                                        says: str) -> None:
    found = listen_error(error, "0.0.0.0", 5051, "port", "host")
    assert found.settings == settings
    assert says in found.text


def test_config_problems_name_their_settings() -> None:
    with pytest.raises(ConfigError) as info:
        NodeConfig(node_id="a b", max_line=3, redis_url="http://user:pw@x/0",
                   redis_start_timeout=-1, tls_port=6000)
    fields = [setting for setting, _ in info.value.problems]
    assert fields == ["node_id", "max_line", "redis_start_timeout", "redis_url", "tls_cert"]
    assert "pw" not in str(info.value)
    assert isinstance(info.value, ValueError)  # what callers have always caught


@pytest.mark.parametrize(("url", "ok"), [
    ("redis://localhost:6379/0", True), ("rediss://:pw@h/", True), ("redis://h", True),
    ("unix:///run/redis.sock", True), ("http://h/0", False), ("redis://h:port/0", False),
    ("redis://h/zero", False), ("localhost:6379", False),
])
def test_redis_urls_are_checked_before_anything_runs(url: str, ok: bool) -> None:
    if ok:
        NodeConfig(node_id="n", redis_url=url)
    else:
        with pytest.raises(ConfigError) as info:
            NodeConfig(node_id="n", redis_url=url)
        assert info.value.problems[0][0] == "redis_url"


def test_the_http_endpoint_is_off_unless_given_a_port() -> None:
    assert NodeConfig(node_id="n").http_port == 0  # two nodes on one host: no clash


def test_redis_misconfigured_is_a_startup_error_naming_allow_eviction() -> None:
    assert RedisMisconfigured("evicting").settings == ("allow_eviction",)


# --------------------------------------------------------------------------- ChatNode


async def run_to_error(config: NodeConfig, redis: Any) -> StartupError:
    node = ChatNode(config, redis)
    with pytest.raises(StartupError) as info:
        async with asyncio.timeout(TIMEOUT):
            await node.run()
    return info.value


@pytest.mark.parametrize("setting", ["port", "http_port"])
async def test_a_port_in_use_ends_the_start(fake_server: fakeredis.FakeServer,
                                            setting: str) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        redis = fakeredis.FakeAsyncRedis(server=fake_server)
        error = await run_to_error(node_config("n1", **{setting: taken}), redis)
        await redis.aclose()
    assert error.settings == (setting,)
    on = " on 127.0.0.1" if setting == "port" else ""  # the endpoint listens on 0.0.0.0
    assert error.text == f"port {taken}{on} is already in use"


async def test_a_redis_never_reached_stops_the_node_after_the_start_timeout() -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        url = f"redis://127.0.0.1:{closed.getsockname()[1]}/0"  # nothing listens there
    redis = connect_redis(url, 0.5)
    node = ChatNode(node_config("n1", redis_url=url, redis_start_timeout=0.5), redis)
    started: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(node.run(started=started.set_result))
    try:
        port = await asyncio.wait_for(started, TIMEOUT)
        c = await LineClient.connect(port)  # it serves while it waits
        await c.expect("* GET_NAME")
        with pytest.raises(StartupError) as info:
            await asyncio.wait_for(task, TIMEOUT)
        assert info.value.settings == ("redis_url", "redis_start_timeout")
        await c.closed()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await redis.aclose()


async def test_a_reachable_redis_starts_as_before(fake_server: fakeredis.FakeServer) -> None:
    async with running_node(fake_server, redis_start_timeout=0.1) as node:
        assert node.relay.ready


async def test_a_start_refused_by_redis_closes_clients_that_connected_meanwhile(
        fake_server: fakeredis.FakeServer) -> None:
    redis = fakeredis.FakeAsyncRedis(server=fake_server)
    asked, answer = asyncio.Event(), asyncio.Event()

    async def refusing_ping() -> bool:
        asked.set()
        await answer.wait()
        raise AuthenticationError("invalid username-password pair")

    redis.ping = refusing_ping  # type: ignore[method-assign, assignment]
    node = ChatNode(node_config("n1"), redis)
    task = asyncio.create_task(node.run())
    try:
        await asyncio.wait_for(asked.wait(), TIMEOUT)
        assert node.port is not None
        c = await LineClient.connect(node.port)  # the listener is open during the check
        await c.expect("* GET_NAME")
        answer.set()
        with pytest.raises(StartupError):
            await asyncio.wait_for(task, TIMEOUT)
        await c.closed()
        assert not node.sessions
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await redis.aclose()


@pytest.mark.parametrize(("mode", "cluster", "says"), [
    (b"cluster", False, "is a Redis Cluster node: start the node with --redis-cluster"),
    (b"standalone", True, "is not a Redis Cluster node: leave --redis-cluster off"),
])
async def test_a_redis_of_the_other_mode_names_the_option(mode: bytes, cluster: bool,
                                                          says: str) -> None:
    fake: Any = Answers(hello={b"server": b"redis", b"version": b"7.0.15", b"mode": mode})
    with pytest.raises(StartupError) as info:
        await check_redis(fake, "redis://db.example:6380/0", 1.0, cluster=cluster)
    assert says in info.value.text
    assert info.value.settings == ("redis_cluster",)


async def test_a_cluster_node_is_accepted_with_the_option() -> None:
    fake: Any = Answers(hello={b"server": b"redis", b"version": b"7.0.15", b"mode": b"cluster"})
    assert await check_redis(fake, "redis://db.example:6380/0", 1.0, cluster=True) is None
