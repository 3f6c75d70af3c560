"""Operator commands (kick, ban, unban, mute, unmute, bans) and the sanctions that reach
this node through the bus.

Bans and mutes are Redis keys whose TTL is their duration, plus an index for listing
(:class:`~node.security.Sanctions`).  A kick, a ban or a mute reaches the node(s) holding
its target as a :class:`~node.envelope.Sanction` envelope: through the holding node's
channel for a nickname, through the events channel (every node) for an address.  Every
operator action is logged as ``event="audit"``.  Who may use these commands is the
command table's policy (``operator``).
"""

from __future__ import annotations

import ipaddress

import structlog

from . import envelope as env
from .durations import format_duration
from .errors import NoSuchNick
from .identity import Identity
from .limits import ip_key
from .model import Ack, Ban, Bans, BansReply, Bye, Error, Kick, Mute, Notice, Unban, Unmute
from .names import check_nick, clean_reason, fold_nick
from .relay import Relay
from .security import Security, audit
from .user import Member, Roster

__all__ = ["Moderation"]

log = structlog.get_logger("hubbub.security")


class Moderation:
    """What operators do to other users, and what this node does when told of it."""

    def __init__(self, security: Security, relay: Relay, identity: Identity,
                 roster: Roster) -> None:
        self.security = security
        self.relay = relay
        self.identity = identity
        self.roster = roster

    # ------------------------------------------------------------------ operators

    def _target(self, raw: str) -> tuple[str, str, str]:
        """(kind, key target, shown) of a ban target: an address or a nickname."""
        try:
            ipaddress.ip_address(raw.strip())
        except ValueError:
            nick = check_nick(raw)
            return "nick-ban", fold_nick(nick), nick
        address = ip_key(raw.strip())
        return "ip-ban", address, address

    async def _tell_holder(self, folded: str, sanction: env.Sanction) -> bool:
        """Send ``sanction`` to the node holding ``folded``; False when it is offline."""
        info = await self.relay.lookup(folded)
        if info is None:
            return False
        return await self.relay.sanction(sanction, info.node)

    def _done(self, m: Member, ref: str | int | None, notice: str) -> None:
        self.security.operator_actions += 1
        m.send(Notice(notice))
        m.send(Ack(ref))

    async def kick(self, m: Member, cmd: Kick) -> None:
        me = m.user.nick
        nick = check_nick(cmd.nick)
        reason = clean_reason(cmd.reason)
        sent = await self._tell_holder(
            fold_nick(nick), env.Sanction("kick", fold_nick(nick), "", me, reason))
        if not sent:
            raise NoSuchNick(f"{nick} is not online")
        audit(me, "kick", nick, reason=reason)
        self._done(m, cmd.ref, f"kicked {nick}")

    async def ban(self, m: Member, cmd: Ban) -> None:
        me = m.user.nick
        kind, target, shown = self._target(cmd.target)
        seconds = float(cmd.duration or self.security.config.ban_duration)
        reason = clean_reason(cmd.reason)
        await self.security.sanctions.put(kind, target, shown, me, reason, seconds)
        sanction = env.Sanction("ban", target if kind == "nick-ban" else "",
                                target if kind == "ip-ban" else "", me, reason, seconds)
        if kind == "ip-ban":
            await self.relay.broadcast(sanction)
        else:
            await self._tell_holder(target, sanction)
        audit(me, "ban", shown, duration=seconds, reason=reason, kind=kind)
        self._done(m, cmd.ref, f"banned {shown} for {format_duration(seconds)}")

    async def unban(self, m: Member, cmd: Unban) -> None:
        kind, target, shown = self._target(cmd.target)
        removed = await self.security.sanctions.remove(kind, target)
        audit(m.user.nick, "unban", shown, found=removed)
        self._done(m, cmd.ref, f"unbanned {shown}" if removed else f"{shown} was not banned")

    async def mute(self, m: Member, cmd: Mute) -> None:
        me = m.user.nick
        nick = check_nick(cmd.nick)
        folded = fold_nick(nick)
        seconds = float(cmd.duration or self.security.config.mute_duration)
        reason = clean_reason(cmd.reason)
        await self.security.sanctions.put("mute", folded, nick, me, reason, seconds)
        await self._tell_holder(folded, env.Sanction("mute", folded, "", me, reason, seconds))
        audit(me, "mute", nick, duration=seconds, reason=reason)
        self._done(m, cmd.ref, f"muted {nick} for {format_duration(seconds)}")

    async def unmute(self, m: Member, cmd: Unmute) -> None:
        me = m.user.nick
        nick = check_nick(cmd.nick)
        folded = fold_nick(nick)
        removed = await self.security.sanctions.remove("mute", folded)
        await self._tell_holder(folded, env.Sanction("unmute", folded, "", me))
        audit(me, "unmute", nick, found=removed)
        self._done(m, cmd.ref, f"unmuted {nick}" if removed else f"{nick} was not muted")

    async def bans(self, m: Member, cmd: Bans) -> None:
        m.send(BansReply(tuple(await self.security.sanctions.listing()), cmd.ref))

    # ------------------------------------------------------------------ from the bus

    def on_sanction(self, e: env.Sanction) -> None:
        """A kick, ban or mute for users of this node (see :class:`env.Sanction`)."""
        if e.ip:
            targets = [m for m in list(self.roster.members) if m.user.ip == e.ip]
        else:
            target = self.roster.named.get(e.folded)
            targets = [target] if target is not None else []
        for m in targets:
            if e.action in ("kick", "ban"):
                self._remove(m, e)
            elif e.action == "mute":
                self.security.mute_member(m, e.seconds, e.by, e.reason)
            elif e.action == "unmute":
                m.user.muted_until = 0.0
                m.send(Notice(f"you may speak again (unmuted by {e.by})"))
            elif e.action == "ghost":
                self.identity.ghost(m)

    def _remove(self, m: Member, e: env.Sanction) -> None:
        verb = "kicked" if e.action == "kick" else "banned"
        why = f"{verb} by {e.by}" + (f": {e.reason}" if e.reason else "")
        text = f"you were {why}"
        if e.action == "ban":
            text += f" (for {format_duration(e.seconds)})"
        log.info("session removed by an operator", action=e.action, by=e.by)
        m.end(why, Error("kicked", text), Bye(why))

