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
``{rooms}``                                     SET     room names that have (had) members
``{room:<room>}:members``                       HASH    folded -> nickname as shown
``{room:<room>}:hist``                          STREAM  the room's messages; ids are message ids
``{room:<room>}:once:<key>``                    STRING  a published message's id, briefly
``{room:<room>}:ch``                            chan    the room's pub/sub channel
``{node:<node>}:ch``                            chan    private messages for users on a node
``{events}``                                    chan    quits and nick changes, every node listens
``{accounts}``                                  HASH    folded -> JSON {name, hash, created}
``{accounts}:opers``                            SET     folded account names flagged operators
``{auth}:fail:name:<folded>``                   STRING  failed logins for a name, window TTL
``{auth}:fail:ip:<address>``                    STRING  failed logins from an address, window TTL
``{mod}:ban:nick:<folded>``                     STRING  a nickname ban (JSON), TTL = its duration
``{mod}:ban:ip:<address>``                      STRING  an address ban (JSON), TTL = its duration
``{mod}:mute:<folded>``                         STRING  a mute (JSON), TTL = its duration
``{mod}:index``                                 HASH    ``<kind>:<target>`` -> JSON, for listing
==============================================  ======  ==========================================

(each shown without the prefix).  Room names are ``[a-z0-9][a-z0-9_-]*`` and node ids
``[A-Za-z0-9._-]+``, so neither can carry a hash tag or a glob pattern of its own.
"""

from __future__ import annotations

__all__ = ["Keys"]


class Keys:
    """Builds key and channel names for one prefix."""

    __slots__ = ("accounts", "epoch", "events", "info", "nicks", "nodes", "opers", "prefix",
                 "rooms", "sanctions")

    def __init__(self, prefix: str = "hubbub:") -> None:
        self.prefix = prefix
        self.nicks = f"{prefix}{{nicks}}"
        self.info = f"{prefix}{{nicks}}:info"
        self.nodes = f"{prefix}{{nicks}}:nodes"
        self.epoch = f"{prefix}{{nicks}}:epoch"
        self.rooms = f"{prefix}{{rooms}}"
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

    def history(self, room: str) -> str:
        return f"{self.prefix}{{room:{room}}}:hist"

    def once(self, room: str, msg_key: str) -> str:
        """Marks one message as published (a retry returns its id instead of repeating)."""
        return f"{self.prefix}{{room:{room}}}:once:{msg_key}"

    def room_channel(self, room: str) -> str:
        return f"{self.prefix}{{room:{room}}}:ch"

    def node_channel(self, node: str) -> str:
        return f"{self.prefix}{{node:{node}}}:ch"

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

    def room_of_channel(self, channel: str) -> str | None:
        """The room a room channel belongs to, or None for any other channel."""
        head = f"{self.prefix}{{room:"
        if channel.startswith(head) and channel.endswith("}:ch"):
            return channel[len(head) : -len("}:ch")]
        return None
