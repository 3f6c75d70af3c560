"""The options of ``hubbub node``, each written once.

:data:`NODE_OPTIONS` is the table.  From it come the command's parameters (``--flag``, its
``HUBBUB_*`` variable, help and default), the :class:`~node.config.NodeConfig` they build,
the option an operator's mistake names, the arguments ``hubbub cluster`` and
``hubbub bench --spawn`` pass to their nodes, and the rows docs/OPERATIONS.md must have.

A row is a parameter name and its help; the flag (``--lease-ttl``) and the variable
(``HUBBUB_LEASE_TTL``) are spelled from the name.  A default is NodeConfig's own, so it
lives in one place, except for the command's own options (``--log-level``, the files of
secrets) and ``--node-id`` (NodeConfig computes it when none is given).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeVar, get_type_hints

import typer

from node.config import ConfigError, NodeConfig

__all__ = ["NODE_OPTIONS", "NodeOption", "node_args", "node_config", "node_options",
           "option_label", "split_names"]

Kind = Literal["setting", "names", "secret", "command"]
"""How an option's value reaches NodeConfig: ``setting``, as given, into the field of its
name; ``names``, a comma-separated list into a tuple field; ``secret``, given directly or
read from the file that option ``NAME_file`` names; ``command``, not at all (the command
uses it itself)."""

_DEFAULTS: Final = NodeConfig(node_id="defaults")
_FIELD_TYPES: Final = get_type_hints(NodeConfig)
_FROM_CONFIG: Final[Any] = ...


@dataclass(frozen=True, slots=True)
class NodeOption:
    """One option of ``hubbub node``."""

    name: str
    """The parameter's name, and (unless ``kind`` is ``command``) the NodeConfig field."""
    help: str
    kind: Kind = "setting"
    default: Any = _FROM_CONFIG
    """NodeConfig's default unless given; None: computed by NodeConfig when not given."""

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def envvar(self) -> str:
        return "HUBBUB_" + self.name.upper()

    @property
    def label(self) -> str:
        """How an error names the option: ``--port / HUBBUB_PORT``."""
        return f"{self.flag} / {self.envvar}"

    @property
    def value_type(self) -> type:
        """What the command line takes: the field's type, or text to be parsed."""
        return _FIELD_TYPES[self.name] if self.kind == "setting" else str

    @property
    def value_default(self) -> Any:
        """The value the option has when neither the flag nor the variable is given."""
        if self.default is not _FROM_CONFIG:
            return self.default
        value = getattr(_DEFAULTS, self.name)
        return ",".join(value) if self.kind == "names" else value

    def parameter(self) -> inspect.Parameter:
        """The command function's parameter, for typer."""
        return inspect.Parameter(
            self.name, inspect.Parameter.KEYWORD_ONLY, annotation=self.value_type,
            default=typer.Option(self.value_default, self.flag, envvar=self.envvar,
                                 help=self.help))


NODE_OPTIONS: Final = (
    NodeOption("host", "Address to listen on."),
    NodeOption("port", "Chat port (text and JSON clients)."),
    NodeOption("redis_url", "Redis URL shared by the cluster."),
    NodeOption("redis_cluster", "--redis-url names a node of a Redis Cluster (7.0 or later): "
                                "the node reads the slot map and talks to every master."),
    NodeOption("node_id", "Unique id of this node in the cluster (default: hostname-pid).",
               default=None),
    NodeOption("prefix", "Prefix of every Redis key and channel."),
    NodeOption("lease_ttl", "Seconds a nickname lease lives unrenewed; a dead node's names are "
                            "freed within 2x this."),
    NodeOption("log_json", "Log JSON lines instead of pretty text."),
    NodeOption("log_level", "debug, info, warning or error.", kind="command", default="info"),
    NodeOption("max_line", "Longest line in bytes; a longer line is discarded whole "
                           "(line-too-long)."),
    NodeOption("max_buffer", "Bytes without any newline after which the connection is closed."),
    NodeOption("register_timeout", "Seconds from connect to a registered nickname."),
    NodeOption("send_queue_bytes", "Bytes queued for one client before it is disconnected as too "
                                   "slow."),
    NodeOption("send_queue_lines", "Lines queued for one client before it is disconnected as too "
                                   "slow."),
    NodeOption("history_max", "Events (messages and notices) kept per room (approximate)."),
    NodeOption("history_limit", "Most messages one /history returns."),
    NodeOption("history_age", "Seconds room messages are kept and shown (0: no age limit, "
                              "only --history-max)."),
    NodeOption("room_idle_ttl", "Seconds an emptied room's history is kept; a join before "
                                "then revives it, after it the room is gone."),
    NodeOption("max_rooms", "Rooms in the cluster, with members or emptied and not yet "
                            "expired; creating one more is refused (rooms-full) (0: no cap)."),
    NodeOption("rooms_page", "Rooms per page of the room listing."),
    NodeOption("backlog", "Listen backlog: connections the kernel holds until the node accepts "
                          "them (a reconnect storm; capped by net.core.somaxconn)."),
    NodeOption("rate", "Messages (say, me, msg, nick, join, part) per second one client may "
                       "sustain; excess is delayed (0: unlimited)."),
    NodeOption("burst", "Messages one client may send at once before --rate applies."),
    NodeOption("max_inflight", "Messages of one client on their way to Redis and not yet "
                               "acknowledged; past it the node stops reading that client "
                               "until acks come back (TCP slows the sender)."),
    NodeOption("flood_disconnect", "Disconnect a client (rate-limited) when more than this many "
                                   "messages had to be delayed with no pause that refilled its "
                                   "burst."),
    NodeOption("list_rate", "Listing commands (rooms, who, history) per second one client may "
                            "sustain, before registration too; excess waits (0: unlimited)."),
    NodeOption("list_burst", "Listing commands one client may send at once before --list-rate "
                             "applies."),
    NodeOption("max_rooms_per_user", "Rooms one client may be in at once; one more is refused "
                                     "(too-many-rooms).  Operators are exempt (0: no cap)."),
    NodeOption("room_create_rate", "New rooms one address may create per minute, cluster-wide; "
                                   "one more is refused (room-create-throttled).  Operators are "
                                   "exempt (0: no cap)."),
    NodeOption("max_connections", "Open client connections per node (0: only the open-file limit "
                                  "minus 64)."),
    NodeOption("max_per_ip", "Open connections from one IPv4 address or IPv6 /64 (0: no cap; "
                             "behind a load balancer, see --proxy-from)."),
    NodeOption("conn_rate_per_ip", "New connections per second from one address (0: no cap)."),
    NodeOption("conn_burst_per_ip", "New connections from one address at once before "
                                    "--conn-rate-per-ip applies."),
    NodeOption("proxy_from", "Comma-separated addresses or networks of load balancers that send a "
                             "PROXY protocol header (v1 or v2) with the client's address; "
                             "required from them, ignored from others (default: none).",
               kind="names"),
    NodeOption("proxy_timeout", "Seconds a load balancer's connection has to send its PROXY "
                                "header."),
    NodeOption("keepalive_idle", "Seconds of silence before TCP keepalive probes a client (0: "
                                 "off); a dead client is dropped after idle + interval x count."),
    NodeOption("keepalive_interval", "Seconds between keepalive probes."),
    NodeOption("keepalive_count", "Unanswered keepalive probes before a client is dropped."),
    NodeOption("redis_timeout", "Seconds any Redis command may take."),
    NodeOption("redis_pool", "Connections to Redis at most."),
    NodeOption("redis_pool_wait", "Seconds a command waits for a free connection when all are "
                                  "busy."),
    NodeOption("redis_start_timeout", "Seconds a starting node waits for an unreachable Redis "
                                      "before it exits (status 2); 0: for ever.  Later outages "
                                      "are always waited out."),
    NodeOption("shutdown_grace", "Seconds sessions get to finish when the node stops."),
    NodeOption("http_host", "Address of /healthz, /readyz, /metrics."),
    NodeOption("http_port", "Port of /healthz, /readyz, /metrics (0: no HTTP endpoint)."),
    NodeOption("outbox_seconds", "How long a message said while Redis is unreachable waits to be "
                                 "published, and how long a name claim keeps trying (0: fail at "
                                 "once)."),
    NodeOption("outbox_max", "How many such messages the node holds at most."),
    NodeOption("publish_batch", "Most room messages sent to Redis in one round trip (messages "
                                "said meanwhile share it)."),
    NodeOption("bus_format", "How room events travel on the bus: 2, one batch per room per "
                             "round, sharded pub/sub only; 1, the upgrade mode: one envelope "
                             "each, published and subscribed both classic and sharded, so "
                             "nodes of the previous release and of this one hear each other. "
                             "Both formats are always read."),
    NodeOption("allow_eviction", "Run even if Redis may evict keys (a lost lease can grant a name "
                                 "twice)."),
    NodeOption("ready_window", "Seconds within which Redis must have answered and the bus canary "
                               "come back for /readyz to say ready."),
    NodeOption("topology_refresh", "Seconds between readings of a Redis Cluster's slot map "
                                   "(also read at once after a link error or a moved channel)."),
    NodeOption("redis_sample_interval", "Seconds between the node's readings of Redis's memory "
                                        "and its room and name counts for /metrics (0: none)."),
    NodeOption("tls_cert", "PEM certificate chain: serve TLS (1.2 or later) on the chat port, or "
                           "on --tls-port."),
    NodeOption("tls_key", "PEM private key of --tls-cert."),
    NodeOption("tls_port", "Serve TLS on this extra port and keep --port plaintext (0: --port "
                           "itself serves TLS only)."),
    NodeOption("tls_handshake_timeout", "Seconds a client has to finish the TLS handshake."),
    NodeOption("redis_ca", "PEM CA certificates that verify a rediss:// Redis (default: the "
                           "system's)."),
    NodeOption("auth", "open (anyone), token (the shared --auth-token first) or accounts "
                       "(registered names need their password)."),
    NodeOption("auth_token", "The shared access token of --auth token.", kind="secret"),
    NodeOption("auth_token_file", "A file holding the access token (instead of "
                                  "--auth-token).", kind="command", default=""),
    NodeOption("oper_secret", "/oper SECRET makes a user an operator (default: none).",
               kind="secret"),
    NodeOption("oper_secret_file", "A file holding the operator secret (instead of "
                                   "--oper-secret).", kind="command", default=""),
    NodeOption("oper_accounts", "Comma-separated account names whose logins are operators "
                                "(besides accounts flagged with hubbub account oper).",
               kind="names"),
    NodeOption("hash_concurrency", "Password hashes (argon2id) computed at once, off the event "
                                   "loop."),
    NodeOption("hash_queue", "Password hashes that may wait for a slot; more are refused "
                             "(auth-busy)."),
    NodeOption("min_password", "Shortest account password."),
    NodeOption("login_fails_per_name", "Failed logins for one name per --login-fail-window, "
                                       "cluster-wide; more are refused unchecked (0: no cap)."),
    NodeOption("login_fails_per_ip", "Failed logins, access tokens and operator secrets from one "
                                     "address per window (0: no cap)."),
    NodeOption("login_fail_window", "Seconds over which failed logins are counted."),
    NodeOption("takeover_wait", "Seconds a login to a registered name that another session holds "
                                "waits for that session to end (it is told it logged in "
                                "elsewhere)."),
    NodeOption("ban_duration", "Seconds a /ban lasts when no duration is given."),
    NodeOption("mute_duration", "Seconds a /mute lasts when no duration is given."),
    NodeOption("irc_port", "Serve IRC clients on this port (0: off; 6667 is conventional)."),
    NodeOption("irc_tls_port", "Serve IRC over TLS (with --tls-cert) on this port (0: off; 6697 "
                               "is conventional)."),
    NodeOption("irc_server_name", "The one server name the cluster shows IRC clients."),
    NodeOption("irc_motd_file", "A text file shown to IRC clients as the message of the day "
                                "(default: none, numeric 422)."),
    NodeOption("irc_oper_name", "The name IRC OPER must give with the operator secret "
                                "(default: any name)."),
)
"""Every option of ``hubbub node``, in the order ``--help`` lists them."""

_BY_NAME: Final = {option.name: option for option in NODE_OPTIONS}

F = TypeVar("F", bound=Callable[..., Any])


def node_options(command: F) -> F:
    """Give ``command`` (taking ``**values``) the parameters of every node option, in the
    table's order: typer reads them from its signature."""
    command.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [option.parameter() for option in NODE_OPTIONS])
    return command


def split_names(text: str) -> tuple[str, ...]:
    """``"a, b,,c"`` -> ``("a", "b", "c")``: the entries of a comma-separated list."""
    return tuple(name.strip() for name in text.split(",") if name.strip())


def node_config(values: Mapping[str, Any]) -> NodeConfig:
    """The NodeConfig that the options' values (by name) give.  Raises ConfigError
    naming the settings to change, for values NodeConfig refuses and for a secret given
    twice or in a file that cannot be read."""
    settings: dict[str, Any] = {}
    for option in NODE_OPTIONS:
        value = values[option.name]
        if option.kind == "command" or (option.default is None and not value):
            continue  # the command's own, or for NodeConfig to compute
        if option.kind == "names":
            value = split_names(value)
        elif option.kind == "secret":
            value = _read_secret(option, value, values[option.name + "_file"])
        settings[option.name] = value
    return NodeConfig(**settings)


def _read_secret(option: NodeOption, value: str, path: str) -> str:
    from .accounts import read_secret  # with the account commands (not needed to spell flags)

    try:
        return read_secret(value, path, option.flag)
    except typer.BadParameter as exc:
        raise ConfigError([(option.name + "_file" if path else option.name, exc.message)]
                          ) from None


def option_label(setting: str) -> str:
    """How an error names what sets ``setting`` (an option's name, which is also the
    NodeConfig field): ``--port / HUBBUB_PORT``; a setting no option sets is named as is."""
    option = _BY_NAME.get(setting)
    return option.label if option else setting


def node_args(**values: object) -> list[str]:
    """The ``hubbub node`` arguments that give these options, by name (``http_port=0`` ->
    ``--http-port 0``; a true flag is given alone, a false one not at all).  A name that
    is no option is an error (KeyError), never an argument the node would refuse."""
    args: list[str] = []
    for name, value in values.items():
        flag = _BY_NAME[name].flag
        if isinstance(value, bool):
            args += [flag] if value else []
        else:
            args += [flag, str(value)]
    return args
