"""The ``hubbub`` command line."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import Annotated, Any, NoReturn

import structlog
import typer

from node.config import ConfigError, NodeConfig
from node.errors import StartupError
from node.logs import configure_logging, escape_text

from .accounts import account_app
from .options import node_config, node_options, option_label
from .redis_cluster import DEFAULT_NODE_TIMEOUT_MS

app = typer.Typer(
    help="hubbub: a horizontally scaled TCP chat cluster relaying through Redis.",
    no_args_is_help=True,
    add_completion=False,
)
app.add_typer(account_app, name="account")

_DEFAULTS = NodeConfig(node_id="defaults")


@app.command()
@node_options
def node(**values: Any) -> None:
    """Run one chat node.  Every option also reads its HUBBUB_* environment variable.

    A setting that cannot work (a bad value, a port in use, a Redis that refuses the node
    or stays unreachable, an unreadable file) ends it with one line naming the option to
    change, and exit status 2."""
    from .run_node import run_node

    log_json, log_level = values["log_json"], values["log_level"]
    if log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        _cannot_run([("log level must be debug, info, warning or error", ("log_level",))],
                    log_json)
    try:
        config = node_config(values)
    except ConfigError as exc:
        _cannot_run([(text, (setting,)) for setting, text in exc.problems], log_json)
    _check_files(config)
    configure_logging(json=log_json, level=log_level)
    try:
        run_node(config)
    except StartupError as exc:
        _cannot_run([(exc.text, exc.settings)], log_json)


def _cannot_run(problems: Iterable[tuple[str, tuple[str, ...]]], log_json: bool) -> NoReturn:
    """Say what is wrong, one line each with the options that fix it, and exit 2: a plain
    line on stderr, or with --log-json one ``node cannot run`` event."""
    if log_json and not structlog.is_configured():
        configure_logging(json=True)
    for text, settings in problems:
        options = ", ".join(option_label(s) for s in settings)
        if log_json:
            structlog.get_logger("hubbub.cli").error("node cannot run", error=text,
                                                     option=options)
        else:
            line = f"{text} ({options})" if options else text
            typer.echo(f"hubbub node: error: {escape_text(line)}", err=True)
    raise typer.Exit(2)


def _check_files(config: NodeConfig) -> None:
    """Refuse to start with a certificate, key or CA file that cannot be loaded (before
    listening)."""
    import ssl

    from node.tls import server_context

    if config.tls_cert:
        try:
            server_context(config.tls_cert, config.tls_key)
        except (OSError, ssl.SSLError) as exc:
            _cannot_run([(f"cannot load the TLS certificate or key: {exc}",
                          ("tls_cert", "tls_key"))], config.log_json)
    if config.redis_ca:
        try:
            ssl.create_default_context(cafile=config.redis_ca)
        except (OSError, ssl.SSLError) as exc:
            _cannot_run([(f"cannot load the Redis CA file: {exc}", ("redis_ca",))],
                        config.log_json)


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
    redis_shards: Annotated[int, typer.Option(
        help="Start a local Redis Cluster of N masters (from the redis-server binary, on "
        "free ports) instead of one Redis, and the nodes with --redis-cluster on it "
        "(0: one standalone Redis).")] = 0,
    redis_replicas: Annotated[int, typer.Option(
        help="With --redis-shards: replicas of each master (a replica takes over when its "
        "master dies).")] = 0,
    redis_node_timeout: Annotated[int, typer.Option(
        help="With --redis-shards: the cluster's cluster-node-timeout in ms, how long a "
        "silent master has before its replica takes over (Redis's own default, 15000, "
        "outlasts a node's outbox).")] = DEFAULT_NODE_TIMEOUT_MS,
) -> None:
    """Start a local cluster: a Redis (or a Redis Cluster), then N nodes on consecutive
    ports (Ctrl+C stops all)."""
    from .cluster import run_cluster

    raise typer.Exit(run_cluster(nodes=nodes, base_port=base_port, redis_url=redis_url,
                                 lease_ttl=lease_ttl, redis_shards=redis_shards,
                                 redis_replicas=redis_replicas,
                                 redis_node_timeout=redis_node_timeout))




@app.command()
def bench(
    nodes: Annotated[str | None, typer.Option(
        help="Drive a running cluster: host:port,host:port (clients are spread over them).",
        show_default=False)] = None,
    spawn: Annotated[int, typer.Option(
        min=0, max=16, help="Start a throwaway local cluster of N nodes (and a redis-server "
        "on a free port) with every per-client limit off; all stopped at the end.")] = 0,
    baseline: Annotated[str | None, typer.Option(
        help="Start benchmarks/NAME_server.py (ceiling or tutorial) instead and measure it "
        "(implies --plain).", show_default=False)] = None,
    metrics: Annotated[str | None, typer.Option(
        help="With --nodes: their HTTP endpoints, host:port,… in the same order (for "
        "subscribed channels and, when exposed, process_resident_memory_bytes).",
        show_default=False)] = None,
    redis_url: Annotated[str | None, typer.Option(
        "--redis-url", help="With --nodes: the cluster's Redis, to report its CPU (INFO cpu).",
        show_default=False)] = None,
    redis_shards: Annotated[int, typer.Option(
        min=0, max=16, help="With --spawn: a local Redis Cluster of N masters instead of one "
        "redis-server, the nodes running with --redis-cluster; Redis CPU is reported per "
        "master. 1 is a one-master cluster (the cluster code path, to compare with 2 and "
        "3); 0, one standalone redis-server.")] = 0,
    clients: Annotated[int, typer.Option(min=0, help="Measured clients (each sends and "
                                         "receives).")] = 100,
    rooms: Annotated[int, typer.Option(min=1, help="Rooms the clients are spread over "
                                       "(1: they stay in the lobby).")] = 1,
    rate: Annotated[float, typer.Option(
        min=0, help="Messages per second sent by all clients together (each sends an equal "
        "share); with --ramp, the first step's rate.")] = 100.0,
    per_client_rate: Annotated[float | None, typer.Option(
        min=0, help="Messages per second per client instead (total = this x --clients).",
        show_default=False)] = None,
    duration: Annotated[float, typer.Option(min=0.1, help="Seconds of load (fixed rate); "
                                            "with --flat-out, its time limit.")] = 10.0,
    flat_out: Annotated[int, typer.Option(
        min=0, help="Instead of a rate: every client sends this many lines as fast as TCP "
        "allows (one step); reports deliveries/s, lines refused and latency.")] = 0,
    ramp: Annotated[bool, typer.Option(
        "--ramp", help="Raise the rate step by step until a step fails twice (p99 over the "
        "bound, anything lost, duplicated, out of order, corrupted or disconnected), then "
        "bisect; reports the highest rate that passed.")] = False,
    p99_bound_ms: Annotated[float, typer.Option(help="--ramp: the p99 latency bound.")
                            ] = 50.0,
    step_seconds: Annotated[float, typer.Option(min=0.1, help="--ramp: seconds per step.")
                            ] = 3.0,
    ramp_factor: Annotated[float, typer.Option(min=1.01, help="--ramp: rate multiplier "
                                               "between steps.")] = 1.5,
    ramp_refine: Annotated[int, typer.Option(
        min=0, help="--ramp: after the first failing step, bisect between it and the last "
        "passing rate this many times.")] = 2,
    warmup: Annotated[float, typer.Option(min=0, help="Seconds at the first rate before "
                                          "measuring (not reported).")] = 1.0,
    size: Annotated[int, typer.Option(help="Bytes of text per message (48, or 50 and up).")
                    ] = 60,
    idle: Annotated[int, typer.Option(
        min=0, help="Also open N idle connections (registered, in no room) and report the "
        "node's memory per connection.")] = 0,
    hog: Annotated[bool, typer.Option(
        "--hog", help="Add one client in the first room that never reads (isolation).")
                   ] = False,
    workers: Annotated[int, typer.Option(min=1, max=32, help="Load generator processes.")
                       ] = 1,
    plain: Annotated[bool, typer.Option(
        "--plain", help="Baseline servers: register with the nickname line only, one "
        "room, no /join or /ping.")] = False,
    drain_within: Annotated[float, typer.Option(
        min=0.1, help="Seconds to wait after a step for messages still in flight.")] = 5.0,
    json_out: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")
                        ] = False,
) -> None:
    """Measure a cluster: end-to-end latency across nodes, deliveries/s, losses, set-up rate
    and memory per connection (docs/PERFORMANCE.md)."""
    from .bench.command import bench as run
    from .bench.command import parse_addresses
    from .bench.driver import BenchConfig

    chosen = sum([bool(nodes), bool(spawn), bool(baseline)])
    if chosen != 1:
        raise typer.BadParameter("give exactly one of --nodes, --spawn or --baseline")
    if baseline and baseline not in ("ceiling", "tutorial"):
        raise typer.BadParameter("--baseline is ceiling or tutorial")
    if redis_shards and not spawn:
        raise typer.BadParameter("--redis-shards goes with --spawn (the Redis Cluster it "
                                 "starts for the spawned nodes)")
    try:
        targets = parse_addresses(nodes) if nodes else [("127.0.0.1", 0)]
        http = parse_addresses(metrics) if metrics else []
        config = BenchConfig(
            targets=tuple(targets), clients=clients, rooms=rooms,
            rate=per_client_rate * clients if per_client_rate is not None else rate,
            duration=duration, ramp=ramp, p99_bound_ms=p99_bound_ms,
            step_seconds=step_seconds, ramp_factor=ramp_factor, ramp_refine=ramp_refine,
            warmup=warmup, size=size,
            idle=idle, hog=hog, workers=workers,
            profile="plain" if plain or baseline else "hubbub", drain_within=drain_within,
            flat_out=flat_out)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    raise typer.Exit(run(config, spawn=spawn, baseline=baseline, metrics=http,
                         redis_url=redis_url, json_out=json_out, redis_shards=redis_shards))


# --------------------------------------------------------------------------- client commands

_NodeOpt = Annotated[list[str] | None, typer.Option(
    "--node", help="A node to use, host:port (repeatable; also HUBBUB_NODES=h:p,h:p) "
    "[default: localhost:5051].", show_default=False)]


_TlsOpt = Annotated[bool, typer.Option(
    "--tls", envvar="HUBBUB_TLS", help="Speak TLS, verifying the node's certificate (system "
    "CAs unless --ca).")]
_CaOpt = Annotated[str | None, typer.Option(
    "--ca", envvar="HUBBUB_TLS_CA", help="PEM CA certificates to verify nodes with (implies "
    "--tls).", show_default=False)]


def _tls(tls: bool, ca: str | None) -> Any:
    """The client's TLS context, or None for plaintext."""
    if not tls and not ca:
        return None
    from node.tls import client_context

    try:
        return client_context(ca or None)
    except OSError as exc:
        raise typer.BadParameter(f"cannot read --ca: {exc}") from exc


def _addresses(given: list[str] | None) -> list[Any]:
    from .client.state import Address

    raw = list(given or [])
    if not raw:
        raw = [a for a in os.environ.get("HUBBUB_NODES", "").split(",") if a.strip()]
    try:
        return [Address.parse(a) for a in raw] or [Address("localhost", 5051)]
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc


_SecretOpt = Annotated[str | None, typer.Option(
    "--secret", envvar="HUBBUB_SECRET", help="The cluster's access token (--auth token "
    "clusters); prefer the variable.", show_default=False)]
_PasswordOpt = Annotated[str | None, typer.Option(
    "--password", envvar="HUBBUB_PASSWORD", help="Your nickname's account password "
    "(--auth accounts clusters); prefer the variable.", show_default=False)]


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
    tls: _TlsOpt = False,
    ca: _CaOpt = None,
    secret: _SecretOpt = None,
    password: _PasswordOpt = None,
) -> None:
    """Chat: a terminal UI, or (stdin not a terminal) send each stdin line and print events."""
    import asyncio

    if not nick:
        raise typer.BadParameter("--nick is required (or HUBBUB_NICK)")
    addresses = _addresses([*(addrs or []), *(node or [])])
    rooms = list(room or ["lobby"])
    context = _tls(tls, ca)
    if sys.stdin.isatty() and sys.stdout.isatty() and not json_out:
        from .client.tui import run_interactive

        raise typer.Exit(run_interactive(addresses, nick, rooms, tls=context,
                                         secret=secret, password=password))
    from .client.script import run_script

    raise typer.Exit(asyncio.run(run_script(addresses, nick, rooms, json_out=json_out,
                                            tls=context, secret=secret, password=password)))


@app.command()
def say(
    text: Annotated[str, typer.Argument(help="The line to say.")],
    nick: Annotated[str, typer.Option(envvar="HUBBUB_NICK", help="Nickname to say it as.")
                    ] = "",
    room: Annotated[str, typer.Option(help="Room to say it in.")] = "lobby",
    node: _NodeOpt = None,
    tls: _TlsOpt = False,
    ca: _CaOpt = None,
    secret: _SecretOpt = None,
    password: _PasswordOpt = None,
) -> None:
    """Say one line and exit: status 0 only once the cluster acknowledged it."""
    import asyncio

    from .client.script import say_once

    if not nick:
        raise typer.BadParameter("--nick is required (or HUBBUB_NICK)")
    raise typer.Exit(asyncio.run(say_once(_addresses(node), nick, room, text,
                                          tls=_tls(tls, ca), secret=secret,
                                          password=password)))


@app.command()
def who(
    room: Annotated[str, typer.Argument(help="Room to list.")] = "lobby",
    node: _NodeOpt = None,
    tls: _TlsOpt = False,
    ca: _CaOpt = None,
    secret: _SecretOpt = None,
) -> None:
    """Who is in a room, cluster-wide (a table)."""
    from rich.console import Console
    from rich.table import Table

    ev = _ask(_addresses(node), {"op": "who", "room": room}, _tls(tls, ca), secret)
    table = Table(title=f"#{ev.get('room', room)}")
    table.add_column("nick")
    for nick in ev.get("nicks", []):
        table.add_row(_plain_cell(nick))
    Console().print(table)


@app.command()
def rooms(node: _NodeOpt = None, tls: _TlsOpt = False, ca: _CaOpt = None,
          secret: _SecretOpt = None,
          after: Annotated[str | None, typer.Option(
              help="Start after this room (the next page).")] = None) -> None:
    """The cluster's rooms with their member counts (a table), a page at a time."""
    from rich.console import Console
    from rich.table import Table

    op: dict[str, Any] = {"op": "rooms"} if after is None else {"op": "rooms", "after": after}
    ev = _ask(_addresses(node), op, _tls(tls, ca), secret)
    listed = [e for e in ev.get("rooms", []) if isinstance(e, dict)]
    caption = None
    if ev.get("more") is True and listed:
        caption = f"more rooms follow: hubbub rooms --after {_plain_cell(listed[-1].get('room'))}"
    table = Table(title="rooms", caption=caption)
    table.add_column("room")
    table.add_column("members", justify="right")
    for entry in listed:
        table.add_row(_plain_cell(entry.get("room")), str(entry.get("members")))
    Console().print(table)


def _ask(addresses: list[Any], op: dict[str, Any], tls: Any = None,
         secret: str | None = None) -> dict[str, Any]:
    import asyncio

    from .client.connection import ClientError
    from .client.script import query

    try:
        return asyncio.run(query(addresses, op, tls=tls, secret=secret))
    except ClientError as exc:
        typer.echo(f"! {exc}", err=True)
        raise typer.Exit(1) from None


def _plain_cell(value: object) -> Any:
    from rich.text import Text

    from .client.shown import safe

    return Text(safe(str(value)))  # Text, not markup: wire text never becomes styling


if __name__ == "__main__":  # pragma: no cover
    app()
