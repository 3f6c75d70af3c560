"""Where everything lives in Redis.

Every key and channel starts with the configured prefix (default ``hubbub:``) and carries a
Redis Cluster hash tag, so every multi-key step stays inside one slot:

==============================================  ======  ==========================================
key                                             type    meaning
==============================================  ======  ==========================================
``{nicks}``                                     SET     folded nicknames online, cluster-wide
``{nicks}:lease:<folded>``                      STRING  owner token of a name, with a TTL
``{nicks}:info``                                HASH    folded -> JSON {nick, token, node, rooms}
``{nicks}:nodes``                               SET     node ids that own names
``{nicks}:alive:<node>``                        STRING  a node's heartbeat, with the lease TTL
``{nicks}:owned:<node>``                        SET     folded names a node owns
``{nicks}:epoch``                               STRING  random, set once: gone/new = data lost
``{epoch:<k>}``                                 STRING  the same, on a cluster shard not serving
                                                        ``{nicks}`` (the first ``k`` it serves)
``{rooms}:live``                                ZSET    rooms with members, all scored 0 (by name)
``{rooms}:count``                               HASH    room -> members, for the rooms in live
``{rooms}:idle``                                ZSET    emptied rooms -> when their keys expire (ms)
``{room:<room>}:members``                       HASH    folded -> nickname as shown
``{room:<room>}:sessions``                      HASH    folded -> which session the entry is
``{room:<room>}:hist``                          STREAM  the room's messages; ids are message ids
``{room:<room>}:topic``                         STRING  the room's topic, when it has one
``{room:<room>}:once:<key>``                    STRING  a published message's id, briefly
``{room:<room>}:ch``                            chan    the room's pub/sub channel
``{node:<node>}:ch``                            chan    private messages for users on a node
``{events}``                                    chan    quits and nick changes, every node listens
``{node:<node>:c<k>}``                          chan    a node's canary on one shard (sharded)
``{accounts}``                                  HASH    folded -> JSON {name, hash, created}
``{accounts}:opers``                            SET     folded account names flagged operators
``{auth}:fail:name:<folded>``                   STRING  failed logins for a name, window TTL
``{auth}:fail:ip:<address>``                    STRING  failed logins from an address, window TTL
``{mod}:ban:nick:<folded>``                     STRING  a nickname ban (JSON), TTL = its duration
``{mod}:ban:ip:<address>``                      STRING  an address ban (JSON), TTL = its duration
``{mod}:mute:<folded>``                         STRING  a mute (JSON), TTL = its duration
``{mod}:index``                                 HASH    ``<kind>:<target>`` -> JSON, for listing
``{quota}:create:<address>``                    STRING  rooms an address created lately, 60 s TTL
==============================================  ======  ==========================================

(each shown without the prefix).  Room names are ``[a-z0-9][a-z0-9_-]*`` and node ids
``[A-Za-z0-9._-]+``, so neither can carry a hash tag or a glob pattern of its own.

Every key is bounded (:data:`BOUNDS`): Redis runs ``noeviction``, so a key that could grow
or pile up for ever would one day stop the whole cluster.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

__all__ = ["BOUNDS", "Keys"]

BOUNDS: Final[Mapping[str, tuple[str, ...]]] = {
    # names: an entry lives as long as its lease, or its node's heartbeat
    "nicks": ("owner:the name's release, or the reaping of its node",),
    "lease": ("ttl",),
    "info": ("owner:the name's release, or the reaping of its node",),
    "nodes": ("owner:the reaping of a node once it owns no name",),
    "alive": ("ttl",),
    "owned": ("owner:its node's releases, or the reaping of the node",),
    "epoch": ("fixed",),
    "shard_epoch": ("fixed",),
    # rooms
    "rooms_live": ("cap:max_rooms", "owner:the room's last member leaving"),
    "rooms_count": ("cap:max_rooms", "owner:the room's last member leaving"),
    "rooms_idle": ("cap:max_rooms", "owner:expired entries (emptied rooms, and creating "
                                    "joins' reservations), dropped when a room empties or "
                                    "a join reserves one"),
    "members": ("owner:each member's part, quit or reaping",),
    "sessions": ("ttl",),
    "history": ("cap:history_max", "cap:history_age", "idle-ttl"),
    "topic": ("idle-ttl",),
    "ops": ("idle-ttl", "owner:each operator's part, quit or reaping"),
    "once": ("ttl",),
    "room_channel": ("channel",),
    "node_channel": ("channel",),
    "events": ("channel",),
    "canary_channel": ("channel",),
    # the security side
    "accounts": ("owner:an operator (hubbub account delete); one entry per registered name",),
    "opers": ("owner:an operator (hubbub account oper); one entry per account",),
    "fail_name": ("ttl",),
    "fail_ip": ("ttl",),
    "ban_nick": ("ttl",),
    "ban_ip": ("ttl",),
    "mute": ("ttl",),
    "sanctions": ("owner:operators set and lift sanctions; expired entries dropped by /bans",),
    "room_creates": ("ttl",),
}
"""How each key of :class:`Keys` (attribute or method name) is bounded, so that nothing a
user does grows Redis for ever:

* ``ttl``: the key always carries a TTL;
* ``idle-ttl``: it carries ``room_idle_ttl`` from the moment its room has no member;
* ``cap:<setting>``: its size is capped by that :class:`~node.config.NodeConfig` setting;
* ``owner:<who>``: it is removed (or shrinks) when its owner goes;
* ``fixed``: one small key of fixed size;
* ``channel``: a pub/sub channel, not a key (nothing is stored).

``tests/test_key_bounds.py`` checks that every key has a row, and walks the keys a real
Redis holds after users came and went."""


class Keys:
    """Builds key and channel names for one prefix."""

    __slots__ = ("accounts", "epoch", "events", "info", "nicks", "nodes", "opers", "prefix",
                 "rooms_count", "rooms_idle", "rooms_live", "sanctions")

    def __init__(self, prefix: str = "hubbub:") -> None:
        self.prefix = prefix
        self.nicks = f"{prefix}{{nicks}}"
        self.info = f"{prefix}{{nicks}}:info"
        self.nodes = f"{prefix}{{nicks}}:nodes"
        self.epoch = f"{prefix}{{nicks}}:epoch"
        self.rooms_live = f"{prefix}{{rooms}}:live"
        self.rooms_count = f"{prefix}{{rooms}}:count"
        self.rooms_idle = f"{prefix}{{rooms}}:idle"
        self.events = f"{prefix}{{events}}"
        self.accounts = f"{prefix}{{accounts}}"
        self.opers = f"{prefix}{{accounts}}:opers"
        self.sanctions = f"{prefix}{{mod}}:index"

    def lease(self, folded: str) -> str:
        return f"{self.prefix}{{nicks}}:lease:{folded}"

    def alive(self, node: str) -> str:
        return f"{self.prefix}{{nicks}}:alive:{node}"

    def owned(self, node: str) -> str:
        return f"{self.prefix}{{nicks}}:owned:{node}"

    def members(self, room: str) -> str:
        return f"{self.prefix}{{room:{room}}}:members"

    def ops(self, room: str) -> str:
        return f"{self.prefix}{{room:{room}}}:ops"

    def sessions(self, room: str) -> str:
        return f"{self.prefix}{{room:{room}}}:sessions"

    def topic(self, room: str) -> str:
        return f"{self.prefix}{{room:{room}}}:topic"

    def history(self, room: str) -> str:
        return f"{self.prefix}{{room:{room}}}:hist"

    def once(self, room: str, msg_key: str) -> str:
        """Marks one message as published (a retry returns its id instead of repeating)."""
        return f"{self.prefix}{{room:{room}}}:once:{msg_key}"

    def room_channel(self, room: str) -> str:
        return f"{self.prefix}{{room:{room}}}:ch"

    def node_channel(self, node: str) -> str:
        return f"{self.prefix}{{node:{node}}}:ch"

    def canary_channel(self, node: str, k: int) -> str:
        """A node's ``k``-th canary channel (the bus takes, for each shard, the first one
        whose slot the shard serves)."""
        return f"{self.prefix}{{node:{node}:c{k}}}"

    def shard_epoch(self, k: int) -> str:
        """The ``k``-th spare epoch key (for a cluster shard not serving :attr:`epoch`)."""
        return f"{self.prefix}{{epoch:{k}}}"

    def fail_name(self, folded: str) -> str:
        """Failed logins for one name (the ``{auth}`` tag comes first, so braces in a
        folded name never change the slot)."""
        return f"{self.prefix}{{auth}}:fail:name:{folded}"

    def fail_ip(self, address: str) -> str:
        return f"{self.prefix}{{auth}}:fail:ip:{address}"

    def ban_nick(self, folded: str) -> str:
        return f"{self.prefix}{{mod}}:ban:nick:{folded}"

    def ban_ip(self, address: str) -> str:
        return f"{self.prefix}{{mod}}:ban:ip:{address}"

    def mute(self, folded: str) -> str:
        return f"{self.prefix}{{mod}}:mute:{folded}"

    def room_creates(self, address: str) -> str:
        """New rooms created from one address in the current minute (a counter)."""
        return f"{self.prefix}{{quota}}:create:{address}"

    def room_of_channel(self, channel: str) -> str | None:
        """The room a room channel belongs to, or None for any other channel."""
        head = f"{self.prefix}{{room:"
        if channel.startswith(head) and channel.endswith("}:ch"):
            return channel[len(head) : -len("}:ch")]
        return None
