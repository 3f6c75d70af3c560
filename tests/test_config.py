"""NodeConfig: documented defaults, and validation that refuses nonsense up front."""

from __future__ import annotations

from dataclasses import FrozenInstanceError, replace
from typing import Any

import pytest

from node.config import NodeConfig, default_node_id


def test_defaults_match_the_documented_ones() -> None:
    cfg = NodeConfig(node_id="n1")
    assert cfg.port == 5051
    assert cfg.lease_ttl == 15
    assert cfg.max_line == 4096
    assert cfg.max_buffer == 16384
    assert cfg.register_timeout == 15
    assert cfg.send_queue_bytes == 1024 * 1024
    assert cfg.send_queue_lines == 1000
    assert cfg.prefix == "hubbub:"
    assert cfg.redis_url == "redis://localhost:6379/0"


def test_default_node_id_is_valid() -> None:
    node_id = default_node_id()
    assert NodeConfig().node_id  # the default factory builds a valid config
    assert NodeConfig(node_id=node_id).node_id == node_id


def test_config_is_frozen() -> None:
    cfg = NodeConfig(node_id="n1")
    with pytest.raises(FrozenInstanceError):
        cfg.port = 1  # type: ignore[misc]


@pytest.mark.parametrize("overrides", [
    {"node_id": "a b"},
    {"node_id": "x{y}"},
    {"node_id": ""},
    {"node_id": "n" * 65},
    {"node_id": "a*b"},
    {"port": -1},
    {"port": 65536},
    {"redis_sample_interval": -1.0},
    {"lease_ttl": 0.5},
    {"lease_ttl": 0},
    {"max_buffer": 4095},
    {"max_line": 100, "max_buffer": 99},
    {"max_line": 10},
    {"send_queue_bytes": 0},
    {"send_queue_lines": 0},
    {"history_max": 0},
    {"backlog": 0},
    {"publish_batch": 0},
    {"register_timeout": 0},
    {"redis_timeout": -1.0},
])
def test_invalid_values_raise_value_error(overrides: dict[str, Any]) -> None:
    base: dict[str, Any] = {"node_id": "n1"}
    with pytest.raises(ValueError):
        NodeConfig(**{**base, **overrides})


def test_replace_validates_too() -> None:
    with pytest.raises(ValueError):
        replace(NodeConfig(node_id="n1"), port=70000)


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(ValueError) as info:
        NodeConfig(node_id="a b", port=-1, lease_ttl=0)
    text = str(info.value)
    assert "node id" in text and "port" in text and "lease ttl" in text


@pytest.mark.parametrize("overrides", [
    {"node_id": "a.b_c-D9"},
    {"node_id": "n" * 64},
    {"port": 0},
    {"port": 65535},
    {"redis_sample_interval": 0},
    {"lease_ttl": 1},
    {"max_line": 64, "max_buffer": 64},
])
def test_edge_values_are_accepted(overrides: dict[str, Any]) -> None:
    NodeConfig(**{"node_id": "n1", **overrides})


def test_abuse_limits_defaults_zero_means_off_and_nonsense_is_refused() -> None:
    cfg = NodeConfig(node_id="n1")
    assert (cfg.rate, cfg.burst, cfg.flood_disconnect) == (5.0, 20, 100)
    assert (cfg.max_connections, cfg.max_per_ip) == (10000, 50)
    assert (cfg.conn_rate_per_ip, cfg.conn_burst_per_ip) == (20.0, 40)
    assert (cfg.keepalive_idle, cfg.keepalive_interval, cfg.keepalive_count) == (30, 10, 3)
    assert cfg.backlog == 1024
    NodeConfig(node_id="n1", rate=0, max_connections=0, max_per_ip=0, conn_rate_per_ip=0,
               keepalive_idle=0, flood_disconnect=0)
    for bad in ({"rate": -1}, {"burst": 0}, {"flood_disconnect": -1}, {"max_per_ip": -1},
                {"max_connections": -1}, {"conn_rate_per_ip": -0.5},
                {"conn_burst_per_ip": 0}, {"keepalive_idle": -1},
                {"keepalive_interval": 0}, {"keepalive_count": 0}):
        with pytest.raises(ValueError):
            NodeConfig(node_id="n1", **bad)


def test_cli_reads_the_abuse_limits_from_hubbub_variables(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    import cli.main
    import cli.run_node

    got: list[NodeConfig] = []
    monkeypatch.setattr(cli.run_node, "run_node", got.append)
    monkeypatch.setattr(cli.main, "configure_logging", lambda **_: None)
    env = {"HUBBUB_RATE": "2.5", "HUBBUB_BURST": "7", "HUBBUB_FLOOD_DISCONNECT": "9",
           "HUBBUB_MAX_CONNECTIONS": "300", "HUBBUB_MAX_PER_IP": "0",
           "HUBBUB_CONN_RATE_PER_IP": "1.5", "HUBBUB_CONN_BURST_PER_IP": "3",
           "HUBBUB_KEEPALIVE_IDLE": "20", "HUBBUB_KEEPALIVE_INTERVAL": "5",
           "HUBBUB_KEEPALIVE_COUNT": "4"}
    result = CliRunner().invoke(cli.main.app, ["node", "--node-id", "n1", "--burst", "8"],
                                env=env)
    assert result.exit_code == 0, result.output
    (cfg,) = got
    assert (cfg.rate, cfg.burst, cfg.flood_disconnect) == (2.5, 8, 9)
    assert (cfg.max_connections, cfg.max_per_ip) == (300, 0)
    assert (cfg.conn_rate_per_ip, cfg.conn_burst_per_ip) == (1.5, 3)
    assert (cfg.keepalive_idle, cfg.keepalive_interval, cfg.keepalive_count) == (20, 5, 4)
