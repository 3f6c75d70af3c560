"""The node's configuration: one frozen object, built at the edge (the CLI) and handed down."""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from dataclasses import dataclass, field
from urllib.parse import urlsplit

__all__ = ["ConfigError", "NodeConfig", "Problem", "default_node_id"]

_NODE_ID = re.compile(r"[A-Za-z0-9._-]{1,64}", re.ASCII)
_SERVER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}", re.ASCII)


Problem = tuple[str, str]
"""A setting's name (a :class:`NodeConfig` field) and what is wrong with its value."""


class ConfigError(ValueError):
    """Settings that cannot work; ``problems`` names the field of each (so the CLI can
    name the option to change)."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = tuple(problems)
        super().__init__("; ".join(text for _, text in problems))


def default_node_id() -> str:
    """``hostname-pid``: unique per process on one host."""
    host = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname())[:48] or "node"
    return f"{host}-{os.getpid()}"


@dataclass(frozen=True, slots=True)
class NodeConfig:
    """Every tunable of a chat node, with its documented default.

    Nothing in ``node/`` reads the environment: ``cli/`` builds this from options that
    also read ``HUBBUB_*`` variables.
    """

    node_id: str = field(default_factory=default_node_id)
    host: str = "0.0.0.0"
    port: int = 5051
    redis_url: str = field(default="redis://localhost:6379/0", repr=False)
    """May carry a user and password (never shown in a repr)."""
    redis_cluster: bool = False
    """``redis_url`` names a node of a Redis Cluster: the node reads the slot map from it
    and talks to every master (a standalone URL with it, or a cluster node's without it,
    is refused at start)."""
    prefix: str = "hubbub:"
    lease_ttl: float = 15.0
    """Seconds a nickname lease lives without renewal; names of a dead node are freed
    by the other nodes within 2 x this."""
    log_json: bool = False

    max_line: int = 4096
    """Bytes per line (without the newline); longer lines are discarded whole."""
    max_buffer: int = 16384
    """Bytes without any newline after which the connection is closed."""
    register_timeout: float = 15.0
    """Seconds from connect to a registered nickname."""
    send_queue_bytes: int = 1024 * 1024
    """Bytes queued for one client before it is disconnected as a slow reader."""
    send_queue_lines: int = 1000
    """Lines queued for one client before it is disconnected as a slow reader."""
    history_max: int = 1000
    """Approximate number of messages kept per room (the stream's MAXLEN ~)."""
    history_default: int = 20
    """Messages returned by /history without a count."""
    history_limit: int = 200
    """Largest count /history accepts."""
    history_age: float = 604800.0
    """Seconds a room message is kept and shown (7 days; 0: no age limit, only
    ``history_max``)."""
    room_idle_ttl: float = 86400.0
    """Seconds an emptied room's keys (its stream, its topic) live before Redis removes
    them; a join before then revives the room as it was."""
    max_rooms: int = 10000
    """Rooms the cluster holds at once, with members or emptied and not yet expired; a
    join that would create one more is refused (``rooms-full``) (0: no cap)."""
    rooms_page: int = 100
    """Rooms per page of the room listing."""
    backlog: int = 1024
    """Listen backlog (the asyncio default of 100 is too small for reconnect storms)."""
    rate: float = 5.0
    """Publishing commands (say, me, msg, nick, join, part) per second one session may
    sustain; excess is delayed (0: unlimited)."""
    burst: int = 20
    """Publishing commands one session may send at once before the rate applies."""
    max_inflight: int = 64
    """Messages of one session submitted for publishing and not yet answered; past it the
    session stops reading its socket until the oldest is answered (TCP slows the sender)."""
    flood_disconnect: int = 100
    """A session is disconnected (``rate-limited``) when more than this many publishing
    commands had to wait for the rate with no pause long enough to refill the burst."""
    list_rate: float = 1.0
    """Listing commands (rooms, who, history) per second one session may sustain, before
    registration too; excess waits, never refused (0: unlimited)."""
    list_burst: int = 5
    """Listing commands one session may send at once before ``list_rate`` applies."""
    max_rooms_per_user: int = 50
    """Rooms one session may be in at once (0: no cap); one more is refused with
    ``too-many-rooms``.  Operators are exempt."""
    room_create_rate: int = 10
    """New rooms one client address may create per minute, cluster-wide (0: no cap); one
    more is refused with ``room-create-throttled``.  Operators are exempt; joining a room
    that exists is never counted."""
    max_connections: int = 10000
    """Open client connections per node (0: no cap of its own); never more than the
    open-file limit minus 64."""
    max_per_ip: int = 50
    """Open client connections from one IPv4 address or IPv6 /64 (0: no cap)."""
    conn_rate_per_ip: float = 20.0
    """New connections per second from one address (0: no cap)."""
    conn_burst_per_ip: int = 40
    """New connections from one address at once before ``conn_rate_per_ip`` applies."""
    proxy_from: tuple[str, ...] = ()
    """Addresses or networks of load balancers whose connections to the plaintext chat
    port start with a PROXY protocol header (v1 or v2) giving the client's address; from
    them the header is required (empty: no PROXY protocol)."""
    proxy_timeout: float = 5.0
    """Seconds a trusted proxy's connection has to deliver its PROXY header."""
    keepalive_idle: int = 30
    """Seconds of silence before TCP keepalive probes a client (0: no keepalive)."""
    keepalive_interval: int = 10
    """Seconds between keepalive probes."""
    keepalive_count: int = 3
    """Unanswered probes after which the connection is dropped: a dead peer is detected
    within idle + interval x count seconds (60 by default)."""
    redis_timeout: float = 2.0
    """Seconds a Redis command may take before it fails (a hung Redis never hangs us)."""
    redis_pool: int = 64
    """Connections to Redis a node opens at most (its pub/sub connection aside)."""
    redis_pool_wait: float = 5.0
    """Seconds a command waits for a free pooled connection when all are busy (a
    reconnect storm queues up instead of failing); then it fails as relay-unavailable."""
    redis_start_timeout: float = 30.0
    """Seconds a starting node waits for an unreachable Redis before it gives up (exit 2);
    0: wait for ever.  A Redis that answers but refuses the node (credentials, database,
    TLS, not Redis at all) ends the start at once; one that goes away later is waited
    for, however long."""
    shutdown_grace: float = 10.0
    """Seconds a shutting-down node waits for sessions to finish before cancelling them."""
    reconnect_min: float = 0.1
    """First wait before reconnecting to Redis (doubling, jittered, up to reconnect_max)."""
    reconnect_max: float = 5.0
    """Longest wait between Redis reconnect attempts (capped, jittered backoff)."""
    outbox_seconds: float = 5.0
    """How long a message said while Redis is unreachable waits to be published."""
    outbox_max: int = 1000
    """How many such messages a node holds; past either bound the sender is told."""
    publish_batch: int = 256
    """Most room messages sent to Redis in one round trip (one pipeline)."""
    bus_format: int = 2
    """How room messages travel on the bus: 2, one batch per room per publishing round;
    1, one bus message each (what nodes of the previous release read: a rolling upgrade
    from it runs 1 until no such node is left).  Both are always read."""
    allow_eviction: bool = False
    """Run even if Redis may evict keys (an evicted lease grants a name twice)."""
    http_host: str = "0.0.0.0"
    http_port: int = 0
    """Port of /healthz, /readyz and /metrics (0: no HTTP endpoint, the default, so that
    several nodes run side by side on one host with only their chat ports set)."""
    canary_interval: float = 1.0
    """Seconds between the node's probes of its own bus subscription."""
    ready_window: float = 3.0
    """A node is ready only if Redis answered and a canary came back within this many
    seconds."""
    topology_refresh: float = 10.0
    """Seconds between readings of a Redis Cluster's slot map by the bus (it is also read
    at once after a link error or a channel pushed away by Redis)."""
    redis_sample_interval: float = 5.0
    """Seconds between the node's readings of Redis for /metrics (memory, rooms, names);
    0: none."""

    # -- TLS on the chat port, and the Redis connection's trust (docs/SECURITY.md)
    tls_cert: str = ""
    """PEM certificate chain for TLS on the chat port ("": no TLS)."""
    tls_key: str = ""
    """PEM private key of ``tls_cert``."""
    tls_port: int = 0
    """With a certificate: serve TLS on this extra port and keep ``port`` plaintext
    (0: ``port`` itself serves TLS only)."""
    tls_handshake_timeout: float = 10.0
    """Seconds a client has to finish the TLS handshake before it is dropped."""
    redis_ca: str = ""
    """PEM CA certificates that verify a ``rediss://`` Redis ("": the system's CAs)."""

    # -- authentication, accounts and operators (docs/SECURITY.md)
    auth: str = "open"
    """``open`` (anyone), ``token`` (a shared access token first) or ``accounts``
    (registered names need their password)."""
    auth_token: str = field(default="", repr=False)
    """The shared access token of ``--auth token``."""
    oper_secret: str = field(default="", repr=False)
    """``/oper SECRET`` makes a session an operator ("": no operator secret)."""
    oper_accounts: tuple[str, ...] = ()
    """Account names whose logins are operators (besides accounts flagged in Redis)."""
    hash_concurrency: int = 2
    """Password hashes (argon2id) computed at once, off the event loop."""
    hash_queue: int = 64
    """Password hashes that may wait for a hashing slot; more are refused (auth-busy)."""
    min_password: int = 8
    """Shortest account password, in characters."""
    login_fails_per_name: int = 3
    """Failed logins (and operator secrets) for one name per window; more are refused
    unchecked until the window ends (0: no cap)."""
    login_fails_per_ip: int = 10
    """Failed logins, access tokens and operator secrets from one address per window
    (0: no cap)."""
    login_fail_window: float = 60.0
    """Seconds over which failed logins are counted (a fixed window, cluster-wide)."""
    takeover_wait: float = 5.0
    """Seconds a login with the password of a name held by another session waits for
    that session to end (it is told it logged in elsewhere) before giving up."""
    ban_duration: float = 3600.0
    """Seconds a /ban lasts when no duration is given."""
    mute_duration: float = 600.0
    """Seconds a /mute lasts when no duration is given."""

    # -- the IRC front end (docs/IRC.md)
    irc_port: int = 0
    """Port serving IRC clients (0: none; 6667 is conventional)."""
    irc_tls_port: int = 0
    """Port serving IRC over TLS with ``tls_cert`` (0: none; 6697 is conventional)."""
    irc_server_name: str = "hubbub"
    """The one server name the whole cluster shows IRC clients."""
    irc_motd_file: str = ""
    """A text file shown as the IRC message of the day ("": none, numeric 422)."""
    irc_oper_name: str = ""
    """The name IRC ``OPER <name> <secret>`` must give with the operator secret ("": any)."""

    def __post_init__(self) -> None:
        problems: list[Problem] = []
        add = problems.append
        if not _NODE_ID.fullmatch(self.node_id):
            add(("node_id", "node id must be 1-64 of A-Z a-z 0-9 . _ -"))
        if not 0 <= self.port <= 65535:
            add(("port", "port must be 0-65535"))
        if self.lease_ttl < 1:
            add(("lease_ttl", "lease ttl must be at least 1 second"))
        if self.max_line < 64:
            add(("max_line", "max line must be at least 64 bytes"))
        if self.max_buffer < self.max_line:
            add(("max_buffer", "max buffer must be at least max line"))
        if self.redis_sample_interval < 0:
            add(("redis_sample_interval", "redis sample interval must not be negative"))
        for name in ("irc_port", "irc_tls_port"):
            if not 0 <= getattr(self, name) <= 65535:
                add((name, f"{name.replace('_', ' ')} must be 0-65535"))
        if self.irc_tls_port and not self.tls_cert:
            add(("irc_tls_port", "irc tls port needs a certificate (tls cert and key)"))
        if not _SERVER_NAME.fullmatch(self.irc_server_name):
            add(("irc_server_name", "irc server name must be 1-63 of A-Z a-z 0-9 . _ - "
                                    "starting with a letter or digit"))
        if not 0 <= self.http_port <= 65535:
            add(("http_port", "http port must be 0-65535"))
        if self.bus_format not in (1, 2):
            add(("bus_format", "bus format must be 1 or 2"))
        if self.ready_window <= self.canary_interval:
            add(("ready_window", "ready window must be longer than the canary interval"))
        for name in ("register_timeout", "redis_timeout", "shutdown_grace", "reconnect_min",
                     "reconnect_max", "canary_interval", "room_idle_ttl", "topology_refresh"):
            if getattr(self, name) <= 0:
                add((name, f"{name.replace('_', ' ')} must be positive"))
        for name in ("outbox_seconds", "redis_pool_wait", "redis_start_timeout", "history_age",
                     "max_rooms"):
            if getattr(self, name) < 0:
                add((name, f"{name.replace('_', ' ')} must not be negative"))
        for name in ("send_queue_bytes", "send_queue_lines", "history_max", "history_default",
                     "history_limit", "backlog", "publish_batch", "redis_pool", "rooms_page"):
            if getattr(self, name) < 1:
                add((name, f"{name.replace('_', ' ')} must be at least 1"))
        for name in ("rate", "flood_disconnect", "max_connections", "max_per_ip",
                     "conn_rate_per_ip", "keepalive_idle", "list_rate", "max_rooms_per_user",
                     "room_create_rate"):
            if getattr(self, name) < 0:
                add((name, f"{name.replace('_', ' ')} must not be negative"))
        for name in ("burst", "conn_burst_per_ip", "keepalive_interval", "keepalive_count",
                     "list_burst", "max_inflight"):
            if getattr(self, name) < 1:
                add((name, f"{name.replace('_', ' ')} must be at least 1"))
        problems.extend(_redis_url_problems(self.redis_url))
        problems.extend(self._proxy_problems())
        problems.extend(self._auth_problems())
        problems.extend(self._tls_problems())
        if problems:
            raise ConfigError(problems)

    def _auth_problems(self) -> list[Problem]:
        problems: list[Problem] = []
        if self.auth not in ("open", "token", "accounts"):
            problems.append(("auth", "auth must be open, token or accounts"))
        if self.auth == "token" and not self.auth_token:
            problems.append(("auth_token", "auth token mode needs an access token "
                             "(--auth-token or --auth-token-file)"))
        for name in ("hash_concurrency", "min_password"):
            if getattr(self, name) < 1:
                problems.append((name, f"{name.replace('_', ' ')} must be at least 1"))
        for name in ("hash_queue", "login_fails_per_name", "login_fails_per_ip"):
            if getattr(self, name) < 0:
                problems.append((name, f"{name.replace('_', ' ')} must not be negative"))
        if self.takeover_wait < 0:
            problems.append(("takeover_wait", "takeover wait must not be negative"))
        for name in ("login_fail_window", "ban_duration", "mute_duration"):
            if getattr(self, name) < 1:
                problems.append((name, f"{name.replace('_', ' ')} must be at least 1 second"))
        return problems

    def _proxy_problems(self) -> list[Problem]:
        problems: list[Problem] = []
        for net in self.proxy_from:
            try:
                ipaddress.ip_network(net, strict=False)
            except ValueError:
                problems.append(("proxy_from",
                                 f"proxy from: {net!r} is not an address or network"))
        if self.proxy_timeout <= 0:
            problems.append(("proxy_timeout", "proxy timeout must be positive"))
        if self.proxy_from and self.tls_cert and not self.tls_port:
            problems.append(("proxy_from", "proxy from needs a plaintext chat port: with TLS "
                             "on --port, set --tls-port for TLS and keep --port plaintext"))
        return problems

    def _tls_problems(self) -> list[Problem]:
        problems: list[Problem] = []
        if bool(self.tls_cert) != bool(self.tls_key):
            problems.append(("tls_key" if self.tls_cert else "tls_cert",
                             "TLS needs both a certificate and a key (--tls-cert, --tls-key)"))
        if self.tls_port and not self.tls_cert:
            problems.append(("tls_cert", "a TLS port needs a certificate and key (--tls-cert, "
                             "--tls-key)"))
        if not 0 <= self.tls_port <= 65535:
            problems.append(("tls_port", "tls port must be 0-65535"))
        if self.tls_port and self.tls_port == self.port:
            problems.append(("tls_port", "tls port must differ from the plaintext port"))
        if self.tls_handshake_timeout <= 0:
            problems.append(("tls_handshake_timeout", "tls handshake timeout must be positive"))
        return problems


def _redis_url_problems(url: str) -> list[Problem]:
    """What makes ``url`` unusable; the URL itself is never quoted (it may hold a
    password)."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss", "unix"):
        return [("redis_url", "the Redis URL must start with redis://, rediss:// or unix:// "
                 "(e.g. redis://localhost:6379/0)")]
    try:
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        return [("redis_url", "the Redis URL's port is not a number 0-65535")]
    db = parts.path.strip("/")
    if parts.scheme != "unix" and db and not db.isdigit():
        return [("redis_url", "the Redis URL's path must be a database number "
                 "(e.g. redis://localhost:6379/0)")]
    return []
