"""The ``hubbub`` command line."""

from __future__ import annotations

import os
import sys
from typing import Annotated, Any

import typer

from node.config import NodeConfig, default_node_id
from node.logs import configure_logging

app = typer.Typer(
    help="hubbub: a horizontally scaled TCP chat cluster relaying through Redis.",
    no_args_is_help=True,
    add_completion=False,
)

_DEFAULTS = NodeConfig(node_id="defaults")


def _opt(env: str, help: str, *flags: str, **kw: Any) -> Any:
    return typer.Option(*flags, envvar=f"HUBBUB_{env}", help=help, **kw)


@app.command()
def node(
    host: Annotated[str, _opt("HOST", "Address to listen on.")] = _DEFAULTS.host,
    port: Annotated[int, _opt("PORT", "Chat port (text and JSON clients).")] = _DEFAULTS.port,
    redis_url: Annotated[str, _opt("REDIS_URL", "Redis URL shared by the cluster.")
                         ] = _DEFAULTS.redis_url,
    node_id: Annotated[str | None, _opt(
        "NODE_ID", "Unique id of this node in the cluster (default: hostname-pid).",
        show_default=False)] = None,
    prefix: Annotated[str, _opt("PREFIX", "Prefix of every Redis key and channel.")
                      ] = _DEFAULTS.prefix,
    lease_ttl: Annotated[float, _opt(
        "LEASE_TTL", "Seconds a nickname lease lives unrenewed; a dead node's names are "
        "freed within 2x this.")] = _DEFAULTS.lease_ttl,
    log_json: Annotated[bool, _opt("LOG_JSON", "Log JSON lines instead of pretty text.",
                                   "--log-json")] = _DEFAULTS.log_json,
    log_level: Annotated[str, _opt("LOG_LEVEL", "debug, info, warning or error.")] = "info",
    max_line: Annotated[int, _opt(
        "MAX_LINE", "Longest line in bytes; a longer line is discarded whole "
        "(line-too-long).")] = _DEFAULTS.max_line,
    max_buffer: Annotated[int, _opt(
        "MAX_BUFFER", "Bytes without any newline after which the connection is closed.")
                          ] = _DEFAULTS.max_buffer,
    register_timeout: Annotated[float, _opt(
        "REGISTER_TIMEOUT", "Seconds from connect to a registered nickname.")
                                ] = _DEFAULTS.register_timeout,
    send_queue_bytes: Annotated[int, _opt(
        "SEND_QUEUE_BYTES", "Bytes queued for one client before it is disconnected as too "
        "slow.")] = _DEFAULTS.send_queue_bytes,
    send_queue_lines: Annotated[int, _opt(
        "SEND_QUEUE_LINES", "Lines queued for one client before it is disconnected as too "
        "slow.")] = _DEFAULTS.send_queue_lines,
    history_max: Annotated[int, _opt("HISTORY_MAX", "Messages kept per room (approximate).")
                           ] = _DEFAULTS.history_max,
    history_limit: Annotated[int, _opt("HISTORY_LIMIT", "Most messages one /history returns.")
                             ] = _DEFAULTS.history_limit,
    backlog: Annotated[int, _opt("BACKLOG", "Listen backlog.")] = _DEFAULTS.backlog,
    redis_timeout: Annotated[float, _opt("REDIS_TIMEOUT", "Seconds any Redis command may take.")
                             ] = _DEFAULTS.redis_timeout,
    shutdown_grace: Annotated[float, _opt(
        "SHUTDOWN_GRACE", "Seconds sessions get to finish when the node stops.")
                              ] = _DEFAULTS.shutdown_grace,
    http_host: Annotated[str, _opt("HTTP_HOST", "Address of /healthz, /readyz, /metrics.")
                         ] = _DEFAULTS.http_host,
    http_port: Annotated[int, _opt("HTTP_PORT", "Port of /healthz, /readyz, /metrics "
                                   "(0: none).")] = _DEFAULTS.http_port,
    ready_window: Annotated[float, _opt(
        "READY_WINDOW", "Seconds within which Redis must have answered and the bus canary "
        "come back for /readyz to say ready.")] = _DEFAULTS.ready_window,
) -> None:
    """Run one chat node.  Every option also reads its HUBBUB_* environment variable."""
    from .run_node import run_node

    try:
        config = NodeConfig(
            node_id=node_id or default_node_id(), host=host, port=port, redis_url=redis_url,
            prefix=prefix, lease_ttl=lease_ttl, log_json=log_json, max_line=max_line,
            max_buffer=max_buffer, register_timeout=register_timeout,
            send_queue_bytes=send_queue_bytes, send_queue_lines=send_queue_lines,
            history_max=history_max, history_limit=history_limit, backlog=backlog,
            redis_timeout=redis_timeout, shutdown_grace=shutdown_grace, http_host=http_host,
            http_port=http_port, ready_window=ready_window)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    if log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise typer.BadParameter("log level must be debug, info, warning or error")
    configure_logging(json=log_json, level=log_level)
    run_node(config)


@app.command()
def cluster(
    nodes: Annotated[int, typer.Option(min=1, max=16, help="How many chat nodes to start.")
                     ] = 3,
    base_port: Annotated[int, typer.Option(help="Port of the first node; the others follow.")
                         ] = _DEFAULTS.port,
    redis_url: Annotated[str | None, typer.Option(
        envvar="HUBBUB_CLUSTER_REDIS_URL", help="Use this Redis instead of starting one.",
        show_default=False)] = None,
    lease_ttl: Annotated[float, typer.Option(help="Lease TTL given to every node.")
                         ] = _DEFAULTS.lease_ttl,
) -> None:
    """Start a local cluster: a Redis, then N nodes on consecutive ports (Ctrl+C stops all)."""
    from .cluster import run_cluster

    raise typer.Exit(run_cluster(nodes=nodes, base_port=base_port, redis_url=redis_url,
                                 lease_ttl=lease_ttl))




# --------------------------------------------------------------------------- client commands

_NodeOpt = Annotated[list[str] | None, typer.Option(
    "--node", help="A node to use, host:port (repeatable; also HUBBUB_NODES=h:p,h:p) "
    "[default: localhost:5051].", show_default=False)]


def _addresses(given: list[str] | None) -> list[Any]:
    from .client.state import Address

    raw = list(given or [])
    if not raw:
        raw = [a for a in os.environ.get("HUBBUB_NODES", "").split(",") if a.strip()]
    try:
        return [Address.parse(a) for a in raw] or [Address("localhost", 5051)]
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc


@app.command()
def connect(
    addrs: Annotated[list[str] | None, typer.Argument(
        help="Nodes to use, host:port; the client fails over between them.",
        show_default=False)] = None,
    nick: Annotated[str, typer.Option(envvar="HUBBUB_NICK", help="Your nickname.")] = "",
    room: Annotated[list[str] | None, typer.Option(
        "--room", help="Room to join (repeatable) [default: lobby].", show_default=False)
                    ] = None,
    node: _NodeOpt = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print raw JSON events.")] = False,
) -> None:
    """Chat: a terminal UI, or (stdin not a terminal) send each stdin line and print events."""
    import asyncio

    if not nick:
        raise typer.BadParameter("--nick is required (or HUBBUB_NICK)")
    addresses = _addresses([*(addrs or []), *(node or [])])
    rooms = list(room or ["lobby"])
    if sys.stdin.isatty() and sys.stdout.isatty() and not json_out:
        from .client.tui import run_interactive

        raise typer.Exit(run_interactive(addresses, nick, rooms))
    from .client.script import run_script

    raise typer.Exit(asyncio.run(run_script(addresses, nick, rooms, json_out=json_out)))


@app.command()
def say(
    text: Annotated[str, typer.Argument(help="The line to say.")],
    nick: Annotated[str, typer.Option(envvar="HUBBUB_NICK", help="Nickname to say it as.")
                    ] = "",
    room: Annotated[str, typer.Option(help="Room to say it in.")] = "lobby",
    node: _NodeOpt = None,
) -> None:
    """Say one line and exit: status 0 only once the cluster acknowledged it."""
    import asyncio

    from .client.script import say_once

    if not nick:
        raise typer.BadParameter("--nick is required (or HUBBUB_NICK)")
    raise typer.Exit(asyncio.run(say_once(_addresses(node), nick, room, text)))


@app.command()
def who(
    room: Annotated[str, typer.Argument(help="Room to list.")] = "lobby",
    node: _NodeOpt = None,
) -> None:
    """Who is in a room, cluster-wide (a table)."""
    from rich.console import Console
    from rich.table import Table

    ev = _ask(_addresses(node), {"op": "who", "room": room})
    table = Table(title=f"#{ev.get('room', room)}")
    table.add_column("nick")
    for nick in ev.get("nicks", []):
        table.add_row(_plain_cell(nick))
    Console().print(table)


@app.command()
def rooms(node: _NodeOpt = None) -> None:
    """The cluster's rooms with their member counts (a table)."""
    from rich.console import Console
    from rich.table import Table

    ev = _ask(_addresses(node), {"op": "rooms"})
    table = Table(title="rooms")
    table.add_column("room")
    table.add_column("members", justify="right")
    for entry in ev.get("rooms", []):
        table.add_row(_plain_cell(entry.get("room")), str(entry.get("members")))
    Console().print(table)


def _ask(addresses: list[Any], op: dict[str, Any]) -> dict[str, Any]:
    import asyncio

    from .client.connection import ClientError
    from .client.script import query

    try:
        return asyncio.run(query(addresses, op))
    except ClientError as exc:
        typer.echo(f"! {exc}", err=True)
        raise typer.Exit(1) from None


def _plain_cell(value: object) -> Any:
    from rich.text import Text

    from .client.shown import safe

    return Text(safe(str(value)))  # Text, not markup: wire text never becomes styling


if __name__ == "__main__":  # pragma: no cover
    app()
