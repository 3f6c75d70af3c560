"""The node's HTTP endpoint: /healthz, /readyz (with the bus canary) and /metrics."""

from __future__ import annotations

import sys
from typing import Any

import aiohttp
import fakeredis

from cli.cluster import free_port

from .helpers import running_node, text_user, wait_until

FAST: dict[str, Any] = {"canary_interval": 0.1, "ready_window": 0.5}


async def get(port: int, path: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as http, \
            http.get(f"http://127.0.0.1:{port}{path}") as resp:
        return resp.status, await resp.text()


async def test_health_ready_and_metrics(fake_server: fakeredis.FakeServer) -> None:
    http_port = free_port()
    async with running_node(fake_server, http_port=http_port, **FAST) as node:
        assert await get(http_port, "/healthz") == (200, "ok\n")
        status, body = await wait_until(
            lambda: _ready(http_port), timeout=5)
        assert '"ready": true' in body
        assert node.port is not None
        alice = await text_user(node.port, "alice")
        await alice.send("hello")
        await alice.send("/ping")
        await alice.expect("* pong")
        status, text = await get(http_port, "/metrics")
        assert status == 200
        assert 'hubbub_connections{mode="text"} 1.0' in text
        assert "hubbub_messages_in_total 1.0" in text
        assert "hubbub_users 1.0" in text
        assert "hubbub_publish_seconds_count 1.0" in text
        assert "hubbub_canary_rtt_seconds_count" in text
        assert "hubbub_ready 1.0" in text
        assert 'hubbub_bus_shard_ready{shard="standalone"} 1.0' in text
        assert "hubbub_bus_channel_moves_total 0.0" in text
        if sys.platform == "linux":  # the process collector reads /proc
            assert "process_resident_memory_bytes" in text


async def _ready(port: int) -> tuple[int, str] | None:
    status, body = await get(port, "/readyz")
    return (status, body) if status == 200 else None


async def test_a_deaf_node_is_not_ready(fake_server: fakeredis.FakeServer) -> None:
    """The subscription silently stops delivering (Redis up, commands fine): not ready."""
    http_port = free_port()
    async with running_node(fake_server, http_port=http_port, **FAST) as node:
        await wait_until(lambda: _ready(http_port), timeout=5)
        pubsub = node.relay._pubsub
        assert pubsub is not None
        await pubsub.sunsubscribe(node.relay.bus.links[0].canary_channel)

        async def deaf() -> tuple[int, str] | None:
            status, body = await get(http_port, "/readyz")
            return (status, body) if status == 503 else None

        _, body = await wait_until(deaf, timeout=5)
        assert "canary" in body
        # ... and it heals itself: the subscription is rebuilt, canaries come back
        await wait_until(lambda: _ready(http_port), timeout=5)
        _, text = await get(http_port, "/metrics")
        assert "hubbub_deaf_subscription_rebuilds_total 1.0" in text
        assert "hubbub_relay_reconnects_total 1.0" in text


async def test_no_http_endpoint_when_port_is_zero(fake_server: fakeredis.FakeServer) -> None:
    async with running_node(fake_server, http_port=0) as node:
        assert node.http.port is None
