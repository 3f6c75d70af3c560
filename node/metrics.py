"""Prometheus metrics of one node, read from its state at scrape time.

Counters live as plain integers in the node's and relay's stats (no metrics call on the hot
path); this collector turns them into metric families when /metrics is scraped.  Each node
has its own registry, so several nodes can run in one process (tests).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .stats import NodeState

__all__ = ["NodeMetrics"]


class _NodeCollector(Collector):
    def __init__(self, state: NodeState) -> None:
        self._state = state

    def collect(self) -> Iterator[Metric]:
        node, relay = self._state, self._state.relay
        modes = Counter(node.modes())
        conns = GaugeMetricFamily("hubbub_connections", "Open client connections by wire "
                                  "mode (pending: not chosen yet).", labels=["mode"])
        for mode in ("pending", "text", "json"):
            conns.add_metric([mode], modes.get(mode, 0))
        yield conns
        yield GaugeMetricFamily("hubbub_users", "Registered users on this node.",
                                value=len(node.roster.named))
        yield GaugeMetricFamily("hubbub_local_rooms", "Rooms with members on this node.",
                                value=node.local_rooms())
        yield GaugeMetricFamily("hubbub_subscribed_room_channels",
                                "Room channels this node is subscribed to.",
                                value=len(relay.subscribed_rooms()))
        ready, _ = relay.is_ready()
        yield GaugeMetricFamily("hubbub_ready", "1 when the node is ready (see /readyz).",
                                value=1 if ready and not node.stopping() else 0)
        yield GaugeMetricFamily("hubbub_redis_clock_offset_seconds",
                                "Redis's clock minus this node's (message deadlines use "
                                "Redis's clock).", value=relay.publisher.clock_offset)
        yield from self._bus_shards()
        if relay.canary_at is not None:
            age = asyncio.get_running_loop().time() - relay.canary_at
            yield GaugeMetricFamily("hubbub_canary_age_seconds",
                                    "Seconds since a bus canary last came back.", value=age)
        for name, doc, value in (
            ("connections_accepted", "Client connections accepted.", node.stats.connections),
            ("messages_in", "Room messages from this node's users, stored and published.",
             relay.publisher.stats.published),
            ("messages_out", "Events queued to this node's clients.", node.stats.delivered),
            ("bus_received", "Envelopes received from the bus.", relay.stats.received),
            ("bad_envelopes", "Unreadable bus envelopes dropped.", relay.stats.bad_envelopes),
            ("slow_consumer_disconnects", "Clients disconnected for not reading.",
             node.stats.slow_consumers),
            ("relay_reconnects", "Times the bus subscription was rebuilt.",
             relay.stats.reconnects),
            ("lease_renewals", "Successful lease renewal rounds.", relay.stats.renewals),
            ("lease_renewal_failures", "Failed lease renewal rounds.",
             relay.stats.renewal_failures),
            ("leases_lost", "Names whose lease was found not ours any more.",
             relay.stats.leases_lost),
            ("names_reaped", "Names of dead nodes released by this node.", relay.stats.reaped),
            ("outbox_held", "Messages that waited in the outbox for Redis.",
             relay.publisher.stats.outboxed),
            ("outbox_expired", "Messages not relayed: Redis stayed away too long.",
             relay.publisher.stats.outbox_expired),
            ("outbox_refused", "Messages not relayed: the outbox was full.",
             relay.publisher.stats.outbox_refused),
            ("redis_data_resets", "Times Redis was found to have lost its data.",
             relay.stats.data_resets),
            ("name_claim_retries", "Name claims tried again because Redis was away or "
             "all its connections were busy.", relay.stats.claim_retries),
            ("departures_deferred", "Departures (leave rooms, announce the quit, release "
             "the name) Redis could not take at once, retried in the background.",
             relay.stats.departures_deferred),
            ("publish_too_late", "Messages Redis got to only after the sender had been "
             "told they were not relayed (a frozen Redis thawing): published nothing.",
             relay.publisher.stats.publish_too_late),
            ("publish_admission_waits", "Messages whose sender waited for room in the "
             "publishing queue (backpressure, not refusal).",
             relay.publisher.stats.admission_waits),
            ("relay_loop_restarts", "Relay loops (listen, renew, reap, canary) restarted "
             "after an unexpected error.", relay.stats.loop_restarts),
            ("deaf_subscription_rebuilds", "Subscriptions rebuilt because canaries stopped "
             "coming back while Redis answered.", relay.stats.deaf_rebuilds),
            ("bus_channel_moves", "Channels moved to another bus link because their slot "
             "moved.", relay.bus.stats.moves),
        ):
            yield CounterMetricFamily(f"hubbub_{name}", doc, value=value)
        refused = CounterMetricFamily("hubbub_connections_refused", "Connections refused at "
                                      "connect, by reason (node-full, per-ip, ip-rate).",
                                      labels=["reason"])
        for reason, count in node.stats.refused.items():
            refused.add_metric([reason], count)
        yield refused
        yield CounterMetricFamily("hubbub_flood_disconnects", "Clients disconnected for "
                                  "flooding (rate-limited).", value=node.stats.flood_disconnects)
        yield CounterMetricFamily("hubbub_inflight_waits", "Times a client was not read "
                                  "because --max-inflight of its messages were unanswered.",
                                  value=node.stats.inflight_waits)
        yield CounterMetricFamily("hubbub_accept_pauses", "Times accepting paused for want "
                                  "of file descriptors.", value=node.stats.accept_pauses)
        security = node.auth
        throttled, busy, inflight = security.refusals()
        auth = CounterMetricFamily(
            "hubbub_auth_refusals", "Authentication attempts refused, by reason (failed: a "
            "wrong password, token, operator secret or resume token; throttled: over a "
            "failed-attempt cap; busy: the password hash queue was full).", labels=["reason"])
        for reason, count in (("failed", security.login_failures),
                              ("throttled", throttled),
                              ("busy", busy)):
            auth.add_metric([reason], count)
        yield auth
        yield GaugeMetricFamily("hubbub_password_hashes_inflight", "Password hashes running "
                                "or waiting for a hashing thread.",
                                value=inflight)
        yield CounterMetricFamily("hubbub_operator_actions", "Operator actions carried out "
                                  "(each also logged as an audit event).",
                                  value=security.operator_actions)
        yield from relay.publisher.publish_seconds.collect()
        yield from relay.canary_seconds.collect()
        yield from self._redis()

    def _bus_shards(self) -> Iterator[Metric]:
        """Each bus link (one per shard) as /readyz sees it."""
        states = self._state.relay.bus.link_states()
        families = {
            "ready": GaugeMetricFamily("hubbub_bus_shard_ready", "1 while the shard's bus "
                                       "link is ready (see /readyz).", labels=["shard"]),
            "answering": GaugeMetricFamily("hubbub_bus_shard_answering", "1 while the shard "
                                           "answered the link's canary within the ready "
                                           "window.", labels=["shard"]),
            "rtt": GaugeMetricFamily("hubbub_bus_shard_canary_rtt_seconds", "The link's "
                                     "latest canary round trip.", labels=["shard"]),
            "channels": GaugeMetricFamily("hubbub_bus_shard_channels", "Channels subscribed "
                                          "on the shard's link.", labels=["shard"]),
        }
        for link in states:
            families["ready"].add_metric([link.shard], 1 if link.ready else 0)
            families["answering"].add_metric([link.shard], 1 if link.answering else 0)
            if link.canary_rtt is not None:
                families["rtt"].add_metric([link.shard], link.canary_rtt)
            families["channels"].add_metric([link.shard], link.channels)
        yield from families.values()

    def _redis(self) -> Iterator[Metric]:
        """Redis as the node last read it (see :mod:`node.redis_watch`): absent until the
        first reading, then the latest one and its age; and the out-of-memory episodes
        this node has seen."""
        oom = self._state.oom
        if oom is not None:
            yield GaugeMetricFamily("hubbub_redis_oom", "1 while Redis refuses writes for "
                                    "want of memory (from the first OOM reply until a write "
                                    "succeeds again).", value=1 if oom.open else 0)
            yield CounterMetricFamily("hubbub_redis_oom_episodes", "Episodes of Redis "
                                      "refusing writes for want of memory.", value=oom.episodes)
            yield CounterMetricFamily("hubbub_redis_oom_refusals", "Commands Redis refused "
                                      "with OOM.", value=oom.refusals)
        watch = self._state.redis_watch
        reading = None if watch is None else watch.last
        if watch is None or reading is None:
            return
        yield CounterMetricFamily("hubbub_redis_sample_failures", "Readings of Redis that "
                                  "failed (the gauges keep the last good one).",
                                  value=watch.failures)
        yield GaugeMetricFamily("hubbub_redis_sample_age_seconds", "Seconds since the "
                                "Redis gauges were read.",
                                value=time.monotonic() - reading.at)
        if reading.used_memory is not None:
            yield GaugeMetricFamily("hubbub_redis_used_memory_bytes", "Bytes Redis has "
                                    "allocated (INFO memory used_memory).",
                                    value=reading.used_memory)
        if reading.maxmemory:
            yield GaugeMetricFamily("hubbub_redis_maxmemory_bytes", "Redis's maxmemory "
                                    "(absent when Redis has no limit).",
                                    value=reading.maxmemory)
        rooms = GaugeMetricFamily("hubbub_rooms", "Rooms cluster-wide: live (with "
                                  "members) and idle (empty, keys not expired yet).",
                                  labels=["state"])
        rooms.add_metric(["live"], reading.rooms_live)
        rooms.add_metric(["idle"], reading.rooms_idle)
        yield rooms
        yield GaugeMetricFamily("hubbub_names_online", "Names online cluster-wide.",
                                value=reading.names)


class NodeMetrics:
    """The registry of one node."""

    def __init__(self, state: NodeState) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_NodeCollector(state))
        # the node process's own memory, CPU and descriptors (process_*; Linux /proc)
        ProcessCollector(registry=self.registry)

    def render(self) -> bytes:
        return generate_latest(self.registry)
