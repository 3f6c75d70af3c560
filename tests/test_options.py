"""cli/options.py: the table of ``hubbub node``'s options is what the command takes, what
its help lists, what builds the NodeConfig, and what errors and other commands name."""

from __future__ import annotations

import re
import sys
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import pytest
import typer.core
import typer.main
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

import cli.main
import cli.run_node
from cli.cluster import node_command
from cli.main import app
from cli.options import (
    NODE_OPTIONS,
    NodeOption,
    node_args,
    node_config,
    option_label,
    split_names,
)
from node.config import ConfigError, NodeConfig

DEFAULTS = {option.name: option.value_default for option in NODE_OPTIONS}


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> list[NodeConfig]:
    """The configs ``hubbub node`` would run (nothing runs, no logging is set up)."""
    got: list[NodeConfig] = []
    monkeypatch.setattr(cli.run_node, "run_node", got.append)
    monkeypatch.setattr(cli.main, "configure_logging", lambda **_: None)
    return got


def _command_options() -> list[Any]:
    group: Any = typer.main.get_command(app)
    return [p for p in group.commands["node"].params
            if isinstance(p, typer.core.TyperOption) and p.name != "help"]


def test_the_command_takes_exactly_the_tables_options_in_its_order() -> None:
    taken = [(p.name, p.opts, p.secondary_opts, p.envvar, p.default, p.help)
             for p in _command_options()]
    assert taken == [(o.name, [o.flag], [], o.envvar, o.value_default, o.help)
                     for o in NODE_OPTIONS]
    flags = {p.name: p.is_flag for p in _command_options()}
    assert flags["log_json"] and flags["allow_eviction"]  # --log-json alone, no --no-log-json
    assert len({o.name for o in NODE_OPTIONS}) == len(NODE_OPTIONS)


def test_help_lists_every_option_with_its_variable_and_default() -> None:
    result = CliRunner().invoke(app, ["node", "--help"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.replace("│", " ").split())  # rows rejoined, wraps undone
    for option in NODE_OPTIONS:
        shown = re.escape(f" {option.flag} ") + r"<\w+> " + re.escape(" ".join(option.help.split()))
        shown += re.escape(f" [env var: {option.envvar}]")
        if option.value_default not in ("", None, False):
            shown += re.escape(f" [default: {option.value_default}]")
        assert re.search(shown, text), option.flag


def test_the_defaults_are_node_configs() -> None:
    built = node_config(DEFAULTS)  # --node-id not given: NodeConfig computes it
    assert built.node_id
    assert replace(built, node_id="n1") == NodeConfig(node_id="n1")


def test_every_option_but_the_commands_own_names_a_node_config_field() -> None:
    settings = {f.name for f in fields(NodeConfig)}
    own = [o.name for o in NODE_OPTIONS if o.kind == "command"]
    assert own == ["log_level", "auth_token_file", "oper_secret_file"]
    assert all(o.name in settings for o in NODE_OPTIONS if o.kind != "command")
    for option in NODE_OPTIONS:
        if option.kind == "secret":
            assert option.name + "_file" in own


def _other_value(option: NodeOption) -> Any:
    """A value unlike the default that NodeConfig takes, whatever the others are."""
    special = {"node_id": "n-1", "redis_url": "redis://db:6380/1", "auth": "accounts",
               "log_level": "debug", "proxy_from": "10.0.0.0/8, fd00::/8",
               "oper_accounts": "alice,bob", "auth_token_file": "", "oper_secret_file": "",
               "bus_format": 1}
    if option.name in special:
        return special[option.name]
    default = option.value_default
    if isinstance(default, bool):
        return not default
    if isinstance(default, int | float):
        return default + (1 if isinstance(default, int) else 1.5)
    return f"{option.name}-value"


def test_every_option_reads_its_variable_into_its_field(
        started: list[NodeConfig], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli.main, "_check_files", lambda config: None)  # tls_cert-value…
    values = {o.name: _other_value(o) for o in NODE_OPTIONS}
    env = {o.envvar: str(values[o.name]) for o in NODE_OPTIONS}
    result = CliRunner().invoke(app, ["node"], env=env)
    assert result.exit_code == 0, result.output
    (config,) = started
    for option in NODE_OPTIONS:
        if option.kind != "command":
            want = values[option.name]
            want = split_names(want) if option.kind == "names" else want
            assert getattr(config, option.name) == want, option.name
            assert want != getattr(NodeConfig(node_id="n1"), option.name), option.name


def test_a_secret_comes_from_its_file_and_never_from_both(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("from-the-file\n")
    config = node_config({**DEFAULTS, "auth": "token", "auth_token_file": str(path),
                          "oper_secret": "direct"})
    assert (config.auth_token, config.oper_secret) == ("from-the-file", "direct")
    with pytest.raises(ConfigError) as info:
        node_config({**DEFAULTS, "oper_secret": "direct", "oper_secret_file": str(path)})
    assert info.value.problems == (
        ("oper_secret_file", "give --oper-secret or --oper-secret-file, not both"),)


def test_a_secret_given_twice_names_the_file_option_and_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("t\n")
    result = CliRunner().invoke(app, ["node", "--auth-token", "x", "--auth-token-file",
                                      str(path)])
    assert result.exit_code == 2
    assert result.output == ("hubbub node: error: give --auth-token or --auth-token-file, "
                             "not both (--auth-token-file / HUBBUB_AUTH_TOKEN_FILE)\n")


@given(st.lists(st.text(alphabet=" \tab.:/0", max_size=8), max_size=6))
def test_split_names_keeps_every_entry_trimmed(parts: list[str]) -> None:
    names = split_names(",".join(parts))
    assert names == tuple(p.strip() for p in parts if p.strip())
    assert split_names(",".join(names)) == names


def test_option_labels_name_the_flag_and_its_variable() -> None:
    assert option_label("port") == "--port / HUBBUB_PORT"
    assert option_label("auth_token_file") == "--auth-token-file / HUBBUB_AUTH_TOKEN_FILE"
    assert option_label("canary_interval") == "canary_interval"  # no option sets it


def test_node_args_spell_options_by_name() -> None:
    assert node_args(max_per_ip=0, lease_ttl=2.0, log_json=True, allow_eviction=False) == [
        "--max-per-ip", "0", "--lease-ttl", "2.0", "--log-json"]
    with pytest.raises(KeyError):
        node_args(max_per_address=0)


def test_a_local_node_command_is_what_the_node_takes(started: list[NodeConfig]) -> None:
    argv = node_command(5061, 8091, "redis://127.0.0.1:7000/0", "node1", lease_ttl=2.0,
                        rate=0)
    assert argv[:4] == [sys.executable, "-m", "cli", "node"]
    result = CliRunner().invoke(app, argv[3:], env={})
    assert result.exit_code == 0, result.output
    (config,) = started
    assert (config.host, config.port, config.http_host, config.http_port) == (
        "127.0.0.1", 5061, "127.0.0.1", 8091)
    assert (config.redis_url, config.node_id, config.lease_ttl, config.rate) == (
        "redis://127.0.0.1:7000/0", "node1", 2.0, 0)
