"""node.redis_errors: which Redis failures mean "unavailable" and which "refused"."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from redis._parsers.base import BaseParser
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from structlog.testing import capture_logs

from node.errors import RelayRefused, RelayUnavailable
from node.redis_errors import OomEpisodes, refused, transient, translated, watching_oom

# Error replies as Redis sends them, turned into exceptions by redis-py's own parser.
REFUSALS = [
    "ERR Invalid stream ID specified as stream command argument",
    "ERR invalid start ID for the interval",
    "WRONGTYPE Operation against a key holding the wrong kind of value",
    "ERR user_script:1: Script attempted to access nonexistent global variable 'x'",
    "ERR wrong number of arguments for 'xrange' command",
    "EXECABORT Transaction discarded because of previous errors.",
]
STATES = [
    "BUSY Redis is busy running a script. You can only call SCRIPT KILL or SHUTDOWN NOSAVE.",
    "LOADING Redis is loading the dataset in memory",
    "OOM command not allowed when used memory > 'maxmemory'.",
    "READONLY You can't write against a read only replica.",
    "NOSCRIPT No matching script. Please use EVAL.",
    "NOPERM User hubbub has no permissions to run the 'xadd' command",
    "MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.",
    "CLUSTERDOWN The cluster is down",
    "TRYAGAIN Multiple keys request during rehashing of slot",
    "MOVED 3999 127.0.0.1:6381",
    "ASK 3999 127.0.0.1:6381",
    "MISCONF Redis is configured to save RDB snapshots, but it's currently unable to persist",
    "NOREPLICAS Not enough good replicas to write.",
]


def reply(text: str) -> Exception:
    exc = BaseParser.parse_error(text)  # type: ignore[no-untyped-call]
    assert isinstance(exc, Exception)
    return exc


@pytest.mark.parametrize("text", REFUSALS)
def test_a_refusal_of_the_command_itself(text: str) -> None:
    assert refused(reply(text))


@pytest.mark.parametrize("text", STATES)
def test_an_error_about_redis_own_state_is_no_refusal(text: str) -> None:
    assert not refused(reply(text))


@pytest.mark.parametrize("exc", [RedisConnectionError("reset"), RedisTimeoutError("slow"),
                                 OSError("unreachable"), RuntimeError("transport closed")])
def test_transport_failures_are_no_refusal(exc: Exception) -> None:
    assert not refused(exc)


async def test_a_refused_command_is_logged_and_is_not_relay_unavailable() -> None:
    with capture_logs() as logs, pytest.raises(RelayRefused) as info:
        async with translated("history"):
            raise reply(REFUSALS[0])
    assert info.value.code == "internal"
    assert isinstance(info.value, RelayUnavailable)  # still "not done" to relay-failure code
    assert not transient(info.value)
    (entry,) = [e for e in logs if e["event"] == "redis refused a command"]
    assert entry["log_level"] == "warning" and entry["command"] == "history"
    assert "Invalid stream ID" in entry["error"]


@pytest.mark.parametrize("exc", [reply(STATES[0]), reply(STATES[2]),
                                 RedisConnectionError("reset"), OSError("unreachable")])
async def test_redis_down_or_busy_is_relay_unavailable(exc: Exception) -> None:
    with capture_logs() as logs, pytest.raises(RelayUnavailable) as info:
        async with translated("who"):
            raise exc
    assert type(info.value) is RelayUnavailable and info.value.code == "relay-unavailable"
    assert not [e for e in logs if e["event"] == "redis refused a command"]


OOM = "OOM command not allowed when used memory > 'maxmemory'."


async def test_out_of_memory_is_told_once_per_episode() -> None:
    """The first OOM reply logs one warning; more OOM replies, and commands that succeed
    meanwhile (a read, a deletion: Redis lets them through), log nothing; the next
    accepted write (node.redis_watch tries one) logs one info and ends the episode."""
    episodes = OomEpisodes()
    with capture_logs() as logs, watching_oom(episodes):
        for what in ("publish", "join", "claim", "publish"):
            with pytest.raises(RelayUnavailable) as info:
                async with translated(what):
                    raise reply(OOM)
            assert info.value.code == "relay-unavailable"
        for what in ("who", "part", "renew"):
            async with translated(what):
                pass
        assert episodes.open and episodes.refusals == 4
        episodes.wrote("heartbeat")
        episodes.wrote("heartbeat")
        with pytest.raises(RelayUnavailable):
            async with translated("publish"):
                raise reply(OOM + " script: 1234, on @user_script:7.")
    assert [(e["event"], e["log_level"]) for e in logs] == [
        ("redis out of memory", "warning"), ("redis accepts writes again", "info"),
        ("redis out of memory", "warning")]
    assert logs[0]["command"] == "publish" and logs[1]["refused"] == 4
    assert episodes.episodes == 2 and episodes.open and episodes.refusals == 5


async def test_oom_outside_a_watch_is_still_relay_unavailable() -> None:
    """Without a node's watch (a tool, a test) nothing is counted and nothing breaks."""
    with capture_logs() as logs, pytest.raises(RelayUnavailable) as info:
        async with translated("join"):
            raise reply(OOM)
    assert type(info.value) is RelayUnavailable and logs == []


async def test_each_node_keeps_its_own_episodes() -> None:
    """Two nodes in one process: each watch sees only what its own tasks translated."""
    mine, theirs = OomEpisodes(), OomEpisodes()

    async def fail(episodes: OomEpisodes) -> None:
        with watching_oom(episodes):
            await asyncio.create_task(_refused())

    await fail(mine)
    assert (mine.refusals, theirs.refusals) == (1, 0)


async def _refused() -> None:
    with contextlib.suppress(RelayUnavailable):
        async with translated("publish"):
            raise reply(OOM)
