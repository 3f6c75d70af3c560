"""The ``hubbub`` command line."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import Annotated, Any, NoReturn

import structlog
import typer
import typer.main

from node.config import ConfigError, NodeConfig, default_node_id
from node.errors import StartupError
from node.logs import configure_logging, escape_text

from .accounts import account_app, read_secret

app = typer.Typer(
    help="hubbub: a horizontally scaled TCP chat cluster relaying through Redis.",
    no_args_is_help=True,
    add_completion=False,
)
app.add_typer(account_app, name="account")

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
    history_max: Annotated[int, _opt("HISTORY_MAX", "Events (messages and notices) kept "
                                     "per room (approximate).")
                           ] = _DEFAULTS.history_max,
    history_limit: Annotated[int, _opt("HISTORY_LIMIT", "Most messages one /history returns.")
                             ] = _DEFAULTS.history_limit,
    backlog: Annotated[int, _opt(
        "BACKLOG", "Listen backlog: connections the kernel holds until the node accepts "
        "them (a reconnect storm; capped by net.core.somaxconn).")] = _DEFAULTS.backlog,
    rate: Annotated[float, _opt(
        "RATE", "Messages (say, me, msg, nick, join, part) per second one client may "
        "sustain; excess is delayed (0: unlimited).")] = _DEFAULTS.rate,
    burst: Annotated[int, _opt("BURST", "Messages one client may send at once before "
                               "--rate applies.")] = _DEFAULTS.burst,
    flood_disconnect: Annotated[int, _opt(
        "FLOOD_DISCONNECT", "Disconnect a client (rate-limited) when more than this many "
        "messages had to be delayed with no pause that refilled its burst.")
                              ] = _DEFAULTS.flood_disconnect,
    max_connections: Annotated[int, _opt(
        "MAX_CONNECTIONS", "Open client connections per node (0: only the open-file limit "
        "minus 64).")] = _DEFAULTS.max_connections,
    max_per_ip: Annotated[int, _opt(
        "MAX_PER_IP", "Open connections from one IPv4 address or IPv6 /64 (0: no cap; "
        "behind a load balancer, see --proxy-from).")] = _DEFAULTS.max_per_ip,
    conn_rate_per_ip: Annotated[float, _opt(
        "CONN_RATE_PER_IP", "New connections per second from one address (0: no cap).")
                                ] = _DEFAULTS.conn_rate_per_ip,
    conn_burst_per_ip: Annotated[int, _opt(
        "CONN_BURST_PER_IP", "New connections from one address at once before "
        "--conn-rate-per-ip applies.")] = _DEFAULTS.conn_burst_per_ip,
    proxy_from: Annotated[str, _opt(
        "PROXY_FROM", "Comma-separated addresses or networks of load balancers that send a "
        "PROXY protocol header (v1 or v2) with the client's address; required from them, "
        "ignored from others (default: none).", show_default=False)] = "",
    proxy_timeout: Annotated[float, _opt(
        "PROXY_TIMEOUT", "Seconds a load balancer's connection has to send its PROXY "
        "header.")] = _DEFAULTS.proxy_timeout,
    keepalive_idle: Annotated[int, _opt(
        "KEEPALIVE_IDLE", "Seconds of silence before TCP keepalive probes a client (0: "
        "off); a dead client is dropped after idle + interval x count.")
                              ] = _DEFAULTS.keepalive_idle,
    keepalive_interval: Annotated[int, _opt(
        "KEEPALIVE_INTERVAL", "Seconds between keepalive probes.")
                                  ] = _DEFAULTS.keepalive_interval,
    keepalive_count: Annotated[int, _opt(
        "KEEPALIVE_COUNT", "Unanswered keepalive probes before a client is dropped.")
                               ] = _DEFAULTS.keepalive_count,
    redis_timeout: Annotated[float, _opt("REDIS_TIMEOUT", "Seconds any Redis command may take.")
                             ] = _DEFAULTS.redis_timeout,
    redis_pool: Annotated[int, _opt("REDIS_POOL", "Connections to Redis at most.")
                          ] = _DEFAULTS.redis_pool,
    redis_pool_wait: Annotated[float, _opt(
        "REDIS_POOL_WAIT", "Seconds a command waits for a free connection when all are busy.")
        ] = _DEFAULTS.redis_pool_wait,
    redis_start_timeout: Annotated[float, _opt(
        "REDIS_START_TIMEOUT", "Seconds a starting node waits for an unreachable Redis "
        "before it exits (status 2); 0: for ever.  Later outages are always waited out.")
        ] = _DEFAULTS.redis_start_timeout,
    shutdown_grace: Annotated[float, _opt(
        "SHUTDOWN_GRACE", "Seconds sessions get to finish when the node stops.")
                              ] = _DEFAULTS.shutdown_grace,
    http_host: Annotated[str, _opt("HTTP_HOST", "Address of /healthz, /readyz, /metrics.")
                         ] = _DEFAULTS.http_host,
    http_port: Annotated[int, _opt("HTTP_PORT", "Port of /healthz, /readyz, /metrics "
                                   "(0: no HTTP endpoint).")] = _DEFAULTS.http_port,
    outbox_seconds: Annotated[float, _opt(
        "OUTBOX_SECONDS", "How long a message said while Redis is unreachable waits to be "
        "published, and how long a name claim keeps trying (0: fail at once).")
        ] = _DEFAULTS.outbox_seconds,
    outbox_max: Annotated[int, _opt(
        "OUTBOX_MAX", "How many such messages the node holds at most.")] = _DEFAULTS.outbox_max,
    publish_batch: Annotated[int, _opt(
        "PUBLISH_BATCH", "Most room messages sent to Redis in one round trip (messages said "
        "meanwhile share it).")] = _DEFAULTS.publish_batch,
    allow_eviction: Annotated[bool, _opt(
        "ALLOW_EVICTION", "Run even if Redis may evict keys (a lost lease can grant a name "
        "twice).", "--allow-eviction")] = _DEFAULTS.allow_eviction,
    ready_window: Annotated[float, _opt(
        "READY_WINDOW", "Seconds within which Redis must have answered and the bus canary "
        "come back for /readyz to say ready.")] = _DEFAULTS.ready_window,
    tls_cert: Annotated[str, _opt(
        "TLS_CERT", "PEM certificate chain: serve TLS (1.2 or later) on the chat port, or "
        "on --tls-port.")] = _DEFAULTS.tls_cert,
    tls_key: Annotated[str, _opt("TLS_KEY", "PEM private key of --tls-cert.")
                       ] = _DEFAULTS.tls_key,
    tls_port: Annotated[int, _opt(
        "TLS_PORT", "Serve TLS on this extra port and keep --port plaintext (0: --port "
        "itself serves TLS only).")] = _DEFAULTS.tls_port,
    tls_handshake_timeout: Annotated[float, _opt(
        "TLS_HANDSHAKE_TIMEOUT", "Seconds a client has to finish the TLS handshake.")
                                     ] = _DEFAULTS.tls_handshake_timeout,
    redis_ca: Annotated[str, _opt(
        "REDIS_CA", "PEM CA certificates that verify a rediss:// Redis (default: the "
        "system's).")] = _DEFAULTS.redis_ca,
    auth: Annotated[str, _opt(
        "AUTH", "open (anyone), token (the shared --auth-token first) or accounts "
        "(registered names need their password).")] = _DEFAULTS.auth,
    auth_token: Annotated[str, _opt(
        "AUTH_TOKEN", "The shared access token of --auth token.", show_default=False)] = "",
    auth_token_file: Annotated[str, _opt(
        "AUTH_TOKEN_FILE", "A file holding the access token (instead of --auth-token).",
        show_default=False)] = "",
    oper_secret: Annotated[str, _opt(
        "OPER_SECRET", "/oper SECRET makes a user an operator (default: none).",
        show_default=False)] = "",
    oper_secret_file: Annotated[str, _opt(
        "OPER_SECRET_FILE", "A file holding the operator secret (instead of "
        "--oper-secret).", show_default=False)] = "",
    oper_accounts: Annotated[str, _opt(
        "OPER_ACCOUNTS", "Comma-separated account names whose logins are operators "
        "(besides accounts flagged with hubbub account oper).", show_default=False)] = "",
    hash_concurrency: Annotated[int, _opt(
        "HASH_CONCURRENCY", "Password hashes (argon2id) computed at once, off the event "
        "loop.")] = _DEFAULTS.hash_concurrency,
    hash_queue: Annotated[int, _opt(
        "HASH_QUEUE", "Password hashes that may wait for a slot; more are refused "
        "(auth-busy).")] = _DEFAULTS.hash_queue,
    min_password: Annotated[int, _opt("MIN_PASSWORD", "Shortest account password.")
                            ] = _DEFAULTS.min_password,
    login_fails_per_name: Annotated[int, _opt(
        "LOGIN_FAILS_PER_NAME", "Failed logins for one name per --login-fail-window, "
        "cluster-wide; more are refused unchecked (0: no cap).")
                                    ] = _DEFAULTS.login_fails_per_name,
    login_fails_per_ip: Annotated[int, _opt(
        "LOGIN_FAILS_PER_IP", "Failed logins, access tokens and operator secrets from one "
        "address per window (0: no cap).")] = _DEFAULTS.login_fails_per_ip,
    login_fail_window: Annotated[float, _opt(
        "LOGIN_FAIL_WINDOW", "Seconds over which failed logins are counted.")
                                 ] = _DEFAULTS.login_fail_window,
    takeover_wait: Annotated[float, _opt(
        "TAKEOVER_WAIT", "Seconds a login to a registered name that another session holds "
        "waits for that session to end (it is told it logged in elsewhere).")
                             ] = _DEFAULTS.takeover_wait,
    ban_duration: Annotated[float, _opt(
        "BAN_DURATION", "Seconds a /ban lasts when no duration is given.")
                            ] = _DEFAULTS.ban_duration,
    mute_duration: Annotated[float, _opt(
        "MUTE_DURATION", "Seconds a /mute lasts when no duration is given.")
                             ] = _DEFAULTS.mute_duration,
) -> None:
    """Run one chat node.  Every option also reads its HUBBUB_* environment variable.

    A setting that cannot work (a bad value, a port in use, a Redis that refuses the node
    or stays unreachable, an unreadable file) ends it with one line naming the option to
    change, and exit status 2."""
    from .run_node import run_node

    if log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        _cannot_run([("log level must be debug, info, warning or error", ("log_level",))],
                    log_json)
    try:
        config = NodeConfig(
            node_id=node_id or default_node_id(), host=host, port=port, redis_url=redis_url,
            prefix=prefix, lease_ttl=lease_ttl, log_json=log_json, max_line=max_line,
            max_buffer=max_buffer, register_timeout=register_timeout,
            send_queue_bytes=send_queue_bytes, send_queue_lines=send_queue_lines,
            history_max=history_max, history_limit=history_limit, backlog=backlog,
            rate=rate, burst=burst, flood_disconnect=flood_disconnect,
            max_connections=max_connections, max_per_ip=max_per_ip,
            conn_rate_per_ip=conn_rate_per_ip, conn_burst_per_ip=conn_burst_per_ip,
            proxy_from=tuple(n.strip() for n in proxy_from.split(",") if n.strip()),
            proxy_timeout=proxy_timeout, keepalive_idle=keepalive_idle,
            keepalive_interval=keepalive_interval, keepalive_count=keepalive_count,
            redis_timeout=redis_timeout, redis_pool=redis_pool,
            redis_pool_wait=redis_pool_wait, redis_start_timeout=redis_start_timeout,
            shutdown_grace=shutdown_grace, http_host=http_host,
            http_port=http_port, ready_window=ready_window, allow_eviction=allow_eviction,
            outbox_seconds=outbox_seconds, outbox_max=outbox_max, publish_batch=publish_batch,
            tls_cert=tls_cert, tls_key=tls_key, tls_port=tls_port,
            tls_handshake_timeout=tls_handshake_timeout, redis_ca=redis_ca,
            auth=auth, auth_token=_node_secret(auth_token, auth_token_file, "auth_token",
                                               log_json),
            oper_secret=_node_secret(oper_secret, oper_secret_file, "oper_secret", log_json),
            oper_accounts=tuple(n.strip() for n in oper_accounts.split(",") if n.strip()),
            hash_concurrency=hash_concurrency, hash_queue=hash_queue,
            min_password=min_password, login_fails_per_name=login_fails_per_name,
            login_fails_per_ip=login_fails_per_ip, login_fail_window=login_fail_window,
            takeover_wait=takeover_wait, ban_duration=ban_duration,
            mute_duration=mute_duration)
    except ConfigError as exc:
        _cannot_run([(text, (setting,)) for setting, text in exc.problems], log_json)
    _check_files(config)
    configure_logging(json=log_json, level=log_level)
    try:
        run_node(config)
    except StartupError as exc:
        _cannot_run([(exc.text, exc.settings)], log_json)


def _option(setting: str) -> str:
    """How ``hubbub node`` spells a setting (a NodeConfig field, which is also the
    option's parameter name): ``--port / HUBBUB_PORT``."""
    command: Any = typer.main.get_command(app)
    for param in command.commands["node"].params:
        if param.name == setting:
            env = param.envvar if isinstance(param.envvar, str) else None
            return f"{param.opts[0]} / {env}" if env else str(param.opts[0])
    return setting


def _cannot_run(problems: Iterable[tuple[str, tuple[str, ...]]], log_json: bool) -> NoReturn:
    """Say what is wrong, one line each with the options that fix it, and exit 2: a plain
    line on stderr, or with --log-json one ``node cannot run`` event."""
    if log_json and not structlog.is_configured():
        configure_logging(json=True)
    for text, settings in problems:
        options = ", ".join(_option(s) for s in settings)
        if log_json:
            structlog.get_logger("hubbub.cli").error("node cannot run", error=text,
                                                     option=options)
        else:
            line = f"{text} ({options})" if options else text
            typer.echo(f"hubbub node: error: {escape_text(line)}", err=True)
    raise typer.Exit(2)


def _node_secret(value: str, path: str, setting: str, log_json: bool) -> str:
    try:
        return read_secret(value, path, "--" + setting.replace("_", "-"))
    except typer.BadParameter as exc:
        _cannot_run([(exc.message, (setting + "_file" if path else setting,))], log_json)


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
) -> None:
    """Start a local cluster: a Redis, then N nodes on consecutive ports (Ctrl+C stops all)."""
    from .cluster import run_cluster

    raise typer.Exit(run_cluster(nodes=nodes, base_port=base_port, redis_url=redis_url,
                                 lease_ttl=lease_ttl))




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
    duration: Annotated[float, typer.Option(min=0.1, help="Seconds of load (fixed rate).")
                        ] = 10.0,
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
            profile="plain" if plain or baseline else "hubbub", drain_within=drain_within)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    raise typer.Exit(run(config, spawn=spawn, baseline=baseline, metrics=http,
                         redis_url=redis_url, json_out=json_out))


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
          secret: _SecretOpt = None) -> None:
    """The cluster's rooms with their member counts (a table)."""
    from rich.console import Console
    from rich.table import Table

    ev = _ask(_addresses(node), {"op": "rooms"}, _tls(tls, ca), secret)
    table = Table(title="rooms")
    table.add_column("room")
    table.add_column("members", justify="right")
    for entry in ev.get("rooms", []):
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
