"""Authentication, accounts and operators.

Theory of operation
-------------------
* **Modes** (``--auth``).  ``open``: anyone may choose any free name.  ``token``: a
  session must first present the cluster's shared access token (``/auth TOKEN`` in text
  mode, ``secret`` in the JSON ``hello``), compared in constant time.  ``accounts``: a
  name protected with ``/register PASSWORD`` can only be used after a login with its
  password (``/login NAME PASSWORD``, or ``password`` in the JSON ``hello``); guests use
  any unregistered name.  A successful resume (its token, compared exactly, proves the
  previous session was admitted) needs no password again, so a failover storm costs no
  hashing; it restores the login and operator status the previous session had recorded
  with its name, and nothing else.  A resume with a token that is not the name's
  holder's is charged like a failed login.
* **Passwords** are hashed with argon2id (argon2-cffi's defaults) on a small dedicated
  thread pool (:class:`Hasher`): at most ``hash_concurrency`` hashes run at once and at
  most ``hash_queue`` wait; more are refused at once (``auth-busy``), so a login flood
  never grows a queue and never blocks the event loop.
* **Throttles.**  Failed logins are counted in Redis per name and per address (an IPv4
  address or an IPv6 /64), in fixed windows of ``login_fail_window`` seconds, so the
  count is cluster-wide.  An attempt is charged *before* its password is checked (the
  ATTEMPT script refuses it unchecked once a count is at its cap) and refunded when it
  succeeds, so concurrent guesses cannot slip past the cap.  Wrong access tokens and
  operator secrets count against the address; wrong resume tokens against the name and
  the address (charged once found wrong: the holder's own token is never refused).
* **Operators** are sessions that gave the operator secret (``/oper``) or logged in to an
  account that is flagged (``hubbub account oper NAME``) or listed in
  ``--oper-accounts``.  Bans and mutes are Redis keys whose TTL is their duration, plus
  an index hash for listing; each node checks them at connect (address bans) and at
  registration (name and address bans, mutes).  A kick, a ban or a mute reaches the
  node(s) holding its target as a :class:`~node.envelope.Sanction` envelope: through the
  holding node's channel for a nickname, through the events channel (every node) for an
  address.  Every operator action is logged as ``event="audit"``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import argon2
import structlog
from redis.asyncio import Redis

from . import envelope as env
from .durations import format_duration
from .errors import (
    AccountExists,
    AuthBusy,
    AuthFailed,
    AuthRequired,
    BadArguments,
    Banned,
    LoginRequired,
    Muted,
    NickTaken,
    NoSuchAccount,
    NoSuchNick,
    NotEnabled,
    NotOperator,
    NotRegistered,
    RelayUnavailable,
)
from .keys import Keys
from .limits import ip_key
from .model import (
    Ack,
    AskNick,
    Auth,
    Ban,
    Bans,
    BansReply,
    Bye,
    Command,
    Error,
    Hello,
    Kick,
    Login,
    Mute,
    Notice,
    Oper,
    Password,
    Register,
    Unban,
    Unmute,
)
from .names import check_nick, clean_reason, fold_nick
from .stores import Account, AccountStore, Sanctions, Throttle

if TYPE_CHECKING:
    from .relay import NameInfo
    from .server import ChatNode
    from .session import Session

__all__ = ["SECURITY_COMMANDS", "Account", "AccountStore", "Admission", "Hasher", "Security",
           "Throttle", "audit"]

log = structlog.get_logger("hubbub.security")
audit_log = structlog.get_logger("hubbub.audit")

SECURITY_COMMANDS = (Auth, Login, Register, Password, Oper, Kick, Ban, Unban, Mute, Unmute,
                     Bans)
"""The commands :meth:`Security.handle` carries out."""

_T = TypeVar("_T")


def audit(actor: str, action: str, target: str, *, duration: float | None = None,
          reason: str | None = None, **extra: Any) -> None:
    """One structured audit event per operator action (``event="audit"``)."""
    audit_log.info("audit", actor=actor, action=action, target=target, duration=duration,
                   reason=reason, **extra)


# --------------------------------------------------------------------------- hashing


class Hasher:
    """argon2id hashing off the event loop, bounded (see the module docstring)."""

    def __init__(self, concurrency: int, queue: int,
                 hasher: argon2.PasswordHasher | None = None) -> None:
        self._hasher = hasher or argon2.PasswordHasher()  # argon2id, library defaults
        self._pool = ThreadPoolExecutor(max_workers=concurrency,
                                        thread_name_prefix="hubbub-argon2",
                                        initializer=_lower_priority)
        self._limit = concurrency + queue
        self.inflight = 0
        self.refused = 0

    async def _run(self, fn: Callable[[], _T]) -> _T:
        if self.inflight >= self._limit:
            self.refused += 1
            raise AuthBusy()
        self.inflight += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, fn)
        finally:
            self.inflight -= 1

    async def hash(self, password: str) -> str:
        return await self._run(lambda: self._hasher.hash(password))

    async def verify(self, encoded: str, password: str) -> bool:
        def check() -> bool:
            try:
                return self._hasher.verify(encoded, password)
            except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError):
                return False

        return await self._run(check)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


HASH_NICE = 10
"""Hashing threads (and the lane threads argon2 starts from them) run this much nicer
than the node, so a flood of logins takes CPU the event loop does not need (Linux)."""


def _lower_priority() -> None:
    # not Linux, or not allowed: the threads run at the node's priority
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(),
                       min(19, os.getpriority(os.PRIO_PROCESS, 0) + HASH_NICE))


@dataclass(frozen=True, slots=True)
class Admission:
    """What registration learned: the name's account (accounts mode) and its mute."""

    account: Account | None
    muted_for: float = 0.0
    mute_reason: str | None = None


# --------------------------------------------------------------------------- the facade


class Security:
    """Everything a node does to admit users and carry out operator commands."""

    def __init__(self, node: ChatNode, redis: Redis) -> None:
        cfg = node.config
        self.node = node
        self.config = cfg
        self.keys = Keys(cfg.prefix)
        self.accounts = AccountStore(redis, self.keys)
        self.throttle = Throttle(redis, self.keys, cfg)
        self.sanctions = Sanctions(redis, self.keys)
        self.hasher = Hasher(cfg.hash_concurrency, cfg.hash_queue)
        self._oper_accounts = frozenset(fold_nick(n) for n in cfg.oper_accounts)
        self.login_failures = 0
        self.operator_actions = 0

    def close(self) -> None:
        self.hasher.close()

    # ------------------------------------------------------------------ admission

    async def check_connect(self, s: Session) -> None:
        """Refuse a banned address before the greeting (Redis away: let it in; it cannot
        register until Redis is back, and registration checks again)."""
        try:
            ((left, details),) = await self.sanctions.lookup([("ip-ban", s.ip)])
        except RelayUnavailable:
            return
        if left:
            raise Banned(_ban_text("your address is banned", left, details))

    def require_access(self, s: Session) -> None:
        """Token mode: nothing but the token, help, ping and quit before it."""
        if not s.authed:
            raise AuthRequired("this cluster needs its access token first: send /auth TOKEN "
                               "(JSON: a 'secret' field in hello)")

    async def _check_secret(self, s: Session, given: str, expected: str, *,
                            what: str) -> None:
        await self.throttle.charge(None, s.ip)
        if not hmac.compare_digest(given.encode(), expected.encode()):
            self.login_failures += 1
            log.warning("wrong secret", what=what)
            raise AuthFailed(f"wrong {what}")
        await self.throttle.refund(None, s.ip)

    async def admit(self, s: Session, cmd: Hello, folded: str) -> Admission:
        """Before a name is claimed: the access token, bans, the name's account and mute.
        The password itself is checked by :meth:`login_hello` (not needed on a resume)."""
        if self.config.auth == "token" and not s.authed:
            if cmd.secret is None:
                self.require_access(s)
            await self._check_secret(s, cmd.secret or "", self.config.auth_token,
                                     what="access token")
            s.authed = True
        (ban, ip_ban, (mute_left, mute)) = await self.sanctions.lookup(
            [("nick-ban", folded), ("ip-ban", s.ip), ("mute", folded)])
        if ip_ban[0]:
            raise Banned(_ban_text("your address is banned", *ip_ban))
        if ban[0]:
            raise Banned(_ban_text("that nickname is banned", *ban))
        account = await self.accounts.get(folded) if self.config.auth == "accounts" else None
        reason = mute.get("reason")
        return Admission(account, mute_left, reason if isinstance(reason, str) else None)

    async def login_hello(self, s: Session, cmd: Hello, folded: str,
                          admission: Admission) -> None:
        """A fresh registration: a registered name needs its password."""
        if admission.account is None:
            if cmd.password is not None:
                if self.config.auth != "accounts":
                    raise NotEnabled("accounts are not enabled on this cluster; choose a "
                                     "nickname without a password")
                raise NoSuchAccount(f"{cmd.nick.strip()} is not a registered name; "
                                    "choose it without a password, then /register")
            return
        if cmd.password is None:
            raise LoginRequired(f"{admission.account.name} is a registered name: log in "
                                f"with /login {admission.account.name} PASSWORD (JSON: a "
                                "'password' field in hello), or choose another nickname")
        await self._verify(s, folded, admission.account, cmd.password)

    async def _verify(self, s: Session, folded: str, account: Account, password: str) -> None:
        await self.throttle.charge(folded, s.ip)
        try:
            good = await self.hasher.verify(account.hash, password)
        except AuthBusy:  # never checked: give the attempt back
            await self.throttle.refund(folded, s.ip)
            raise
        if not good:
            self.login_failures += 1
            self.throttle.failed += 1
            log.warning("login failed", account=account.name)
            raise AuthFailed(f"wrong password for {account.name}")
        await self.throttle.refund(folded, s.ip)

    async def registered(self, s: Session, admission: Admission, folded: str) -> None:
        """After the welcome: remember the login, operator status and mute (never raises:
        the name is claimed by now).  A resumed session is logged in only if its previous
        one was (:meth:`restore`), never because its name has an account."""
        if admission.account is not None and s.resumed_from is None:
            await self._logged_in(s, folded)
        if admission.muted_for > 0:
            self._mute(s, admission.muted_for, None, admission.mute_reason)

    async def _logged_in(self, s: Session, folded: str) -> None:
        s.account = folded
        try:
            is_oper = folded in self._oper_accounts or await self.accounts.is_oper(folded)
        except RelayUnavailable:
            log.warning("could not read the account's operator flag", account=folded)
            is_oper = False
        if is_oper and not s.oper:
            s.oper = True
            audit(s.nick, "oper", s.nick, via="account")
        log.info("logged in", account=folded, oper=s.oper)
        if s.registered:  # recorded with the name, for a resume
            with contextlib.suppress(RelayUnavailable):
                await self.node.relay.update_info(s.folded, self.node.name_info(s))

    async def check_rename(self, s: Session, new: str) -> None:
        """``/nick NEW``: NEW must not be banned, nor someone else's account."""
        folded = fold_nick(new)
        ((left, details),) = await self.sanctions.lookup([("nick-ban", folded)])
        if left:
            raise Banned(_ban_text("that nickname is banned", left, details))
        if self.config.auth == "accounts" and s.account != folded:
            account = await self.accounts.get(folded)
            if account is not None:
                raise LoginRequired(f"{account.name} is a registered name: /login "
                                    f"{account.name} PASSWORD to use it")

    def check_muted(self, s: Session) -> None:
        left = s.muted_until - asyncio.get_running_loop().time()
        if left > 0:
            raise Muted(f"you are muted for another {format_duration(left)}; your message "
                        "was not sent")

    # ------------------------------------------------------------------ commands

    async def handle(self, s: Session, cmd: Command) -> None:
        """Carry out one of :data:`SECURITY_COMMANDS` for ``s``."""
        match cmd:
            case Auth(secret=secret):
                if self.config.auth != "token":
                    raise NotEnabled("this cluster needs no access token")
                if s.authed:
                    raise BadArguments("you are already authenticated")
                await self._check_secret(s, secret, self.config.auth_token,
                                         what="access token")
                s.authed = True
                s.send(Notice("access token accepted"))
                s.send(Ack(cmd.ref))
                if not s.registered and s.conn.mode != "json":
                    s.send(AskNick())
            case Login():
                await self._login(s, cmd)
            case Register(password=password):
                await self._register(s, password, cmd.ref)
            case Password(password=password):
                await self._change_password(s, password, cmd.ref)
            case Oper(secret=secret):
                self._need_registered(s)
                if not self.config.oper_secret:
                    raise NotEnabled("this cluster has no operator secret")
                await self._check_secret(s, secret, self.config.oper_secret,
                                         what="operator secret")
                s.oper = True
                audit(s.nick, "oper", s.nick, via="secret")
                with contextlib.suppress(RelayUnavailable):  # only a resume would miss it
                    await self.node.relay.update_info(s.folded, self.node.name_info(s))
                s.send(Notice("you are now an operator"))
                s.send(Ack(cmd.ref))
            case _:
                self._need_registered(s)
                if not s.oper:
                    raise NotOperator("only operators may do that (/oper SECRET)")
                await self._operate(s, cmd)

    def _need_registered(self, s: Session) -> None:
        if not s.registered:
            raise NotRegistered()

    async def _login(self, s: Session, cmd: Login) -> None:
        if self.config.auth != "accounts":
            raise NotEnabled("accounts are not enabled on this cluster")
        if not s.registered:  # choosing a name: a hello with a password
            await s.hello(Hello(nick=cmd.nick, password=cmd.password, ref=cmd.ref))
            return
        nick = check_nick(cmd.nick)
        folded = fold_nick(nick)
        account = await self.accounts.get(folded)
        if account is None:
            raise NoSuchAccount(f"{nick} is not a registered name")
        await self._verify(s, folded, account, cmd.password)
        if folded != s.folded:
            previous, s.account = s.account, folded  # check_rename lets the owner in
            try:
                await self.check_rename(s, nick)
                try:
                    await self.node.rename(s, nick)
                except NickTaken:  # the password was right: the other session gives way
                    await self.node.take_over(nick, folded,
                                              lambda: self.node.rename(s, nick))
            except BaseException:
                s.account = previous
                raise
        await self._logged_in(s, folded)
        s.send(Notice(f"you are logged in as {account.name}" +
                      (" (operator)" if s.oper else "")))
        s.send(Ack(cmd.ref))

    async def _register(self, s: Session, password: str, ref: str | int | None) -> None:
        if self.config.auth != "accounts":
            raise NotEnabled("accounts are not enabled on this cluster")
        self._need_registered(s)
        self._check_length(password)
        folded = s.folded
        if s.account == folded or await self.accounts.get(folded) is not None:
            raise AccountExists(f"{s.nick} is already registered")
        encoded = await self.hasher.hash(password)
        if self.node.local.get(folded) is not s:
            raise NickTaken("your nickname changed while registering; try again")
        if not await self.accounts.create(folded, Account(s.nick, encoded, time.time())):
            raise AccountExists(f"{s.nick} is already registered")
        log.info("account registered", account=folded)
        await self._logged_in(s, folded)
        s.send(Notice(f"{s.nick} is now registered: from now on it needs /login {s.nick} "
                      "PASSWORD"))
        s.send(Ack(ref))

    async def _change_password(self, s: Session, password: str,
                               ref: str | int | None) -> None:
        if self.config.auth != "accounts":
            raise NotEnabled("accounts are not enabled on this cluster")
        self._need_registered(s)
        folded = s.folded
        if s.account != folded:
            raise LoginRequired(f"you are not logged in to an account named {s.nick}: "
                                f"/login {s.nick} PASSWORD first (or /register it)")
        self._check_length(password)
        encoded = await self.hasher.hash(password)
        if not await self.accounts.set_hash(folded, encoded):
            raise NoSuchAccount(f"{s.nick} has no account any more")
        log.info("password changed", account=folded)
        s.send(Notice(f"the password of {s.nick} is changed"))
        s.send(Ack(ref))

    def _check_length(self, password: str) -> None:
        if len(password) < self.config.min_password:
            raise BadArguments(f"a password needs at least {self.config.min_password} "
                               "characters")

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
        info = await self.node.relay.lookup(folded)
        if info is None:
            return False
        return await self.node.relay.sanction(sanction, info.node)

    async def _operate(self, s: Session, cmd: Command) -> None:
        cfg = self.config
        match cmd:
            case Kick(nick=raw, reason=raw_reason):
                nick = check_nick(raw)
                reason = clean_reason(raw_reason)
                sent = await self._tell_holder(
                    fold_nick(nick), env.Sanction("kick", fold_nick(nick), "", s.nick, reason))
                if not sent:
                    raise NoSuchNick(f"{nick} is not online")
                audit(s.nick, "kick", nick, reason=reason)
                s.send(Notice(f"kicked {nick}"))
            case Ban(target=raw, duration=duration, reason=raw_reason):
                kind, target, shown = self._target(raw)
                seconds = float(duration or cfg.ban_duration)
                reason = clean_reason(raw_reason)
                await self.sanctions.put(kind, target, shown, s.nick, reason, seconds)
                sanction = env.Sanction("ban", target if kind == "nick-ban" else "",
                                        target if kind == "ip-ban" else "", s.nick, reason,
                                        seconds)
                if kind == "ip-ban":
                    await self.node.relay.broadcast(sanction)
                else:
                    await self._tell_holder(target, sanction)
                audit(s.nick, "ban", shown, duration=seconds, reason=reason, kind=kind)
                s.send(Notice(f"banned {shown} for {format_duration(seconds)}"))
            case Unban(target=raw):
                kind, target, shown = self._target(raw)
                removed = await self.sanctions.remove(kind, target)
                audit(s.nick, "unban", shown, found=removed)
                s.send(Notice(f"unbanned {shown}" if removed else f"{shown} was not banned"))
            case Mute(nick=raw, duration=duration, reason=raw_reason):
                nick = check_nick(raw)
                folded = fold_nick(nick)
                seconds = float(duration or cfg.mute_duration)
                reason = clean_reason(raw_reason)
                await self.sanctions.put("mute", folded, nick, s.nick, reason, seconds)
                await self._tell_holder(folded, env.Sanction("mute", folded, "", s.nick,
                                                             reason, seconds))
                audit(s.nick, "mute", nick, duration=seconds, reason=reason)
                s.send(Notice(f"muted {nick} for {format_duration(seconds)}"))
            case Unmute(nick=raw):
                nick = check_nick(raw)
                folded = fold_nick(nick)
                removed = await self.sanctions.remove("mute", folded)
                await self._tell_holder(folded, env.Sanction("unmute", folded, "", s.nick))
                audit(s.nick, "unmute", nick, found=removed)
                s.send(Notice(f"unmuted {nick}" if removed else f"{nick} was not muted"))
            case Bans():
                s.send(BansReply(tuple(await self.sanctions.listing()), cmd.ref))
                return
            case _:
                raise BadArguments(f"{type(cmd).__name__.lower()} is not supported here")
        self.operator_actions += 1
        s.send(Ack(cmd.ref))

    # ------------------------------------------------------------------ from the bus

    def on_sanction(self, e: env.Sanction) -> None:
        """A kick, ban or mute for users of this node (see :class:`env.Sanction`)."""
        node = self.node
        if e.ip:
            targets = [s for s in list(node.sessions) if s.ip == e.ip]
        else:
            target = node.local.get(e.folded)
            targets = [target] if target is not None else []
        for s in targets:
            if e.action in ("kick", "ban"):
                self._remove(s, e)
            elif e.action == "mute":
                self._mute(s, e.seconds, e.by, e.reason)
            elif e.action == "unmute":
                s.muted_until = 0.0
                s.send(Notice(f"you may speak again (unmuted by {e.by})"))
            elif e.action == "ghost":
                self.ghost(s)

    async def resume_refused(self, s: Session, folded: str) -> None:
        """A resume with a token that is not the name's holder's: charged against the
        name's and the address's failed-login caps (AuthThrottled once one is reached).
        Only failures are charged, so however much a name is hammered its holder's own
        token still resumes it."""
        await self.throttle.charge(folded, s.ip)
        self.login_failures += 1
        self.throttle.failed += 1
        log.warning("resume refused: not the name's token", name=folded)

    async def restore(self, s: Session, previous: NameInfo) -> None:
        """A resume (whoever holds the resume token holds the session): exactly the
        operator status and account login the previous session had, never more; a login
        to an account deleted meanwhile is not restored."""
        if previous.account is not None and self.config.auth == "accounts":
            try:
                exists = await self.accounts.get(previous.account) is not None
            except RelayUnavailable:
                log.warning("could not read the account of a resumed login",
                            account=previous.account)
                exists = False
            if exists:
                s.account = previous.account
                log.info("login restored", account=previous.account)
        if previous.oper:
            s.oper = True
            audit(s.nick, "oper", s.nick, via="resume")
        if s.oper or s.account is not None:  # recorded for the next resume
            with contextlib.suppress(RelayUnavailable):
                await self.node.relay.update_info(s.folded, self.node.name_info(s))

    def ghost(self, s: Session) -> None:
        """Someone logged in to this session's name with its password: end this one."""
        log.info("session replaced by a login elsewhere", nick=s.nick)
        s.end("logged in elsewhere",
              Error("nick-lost", f"{s.nick} logged in from another connection with its "
                                 "password; this one is closed"),
              Bye("logged in elsewhere"))

    def _remove(self, s: Session, e: env.Sanction) -> None:
        verb = "kicked" if e.action == "kick" else "banned"
        why = f"{verb} by {e.by}" + (f": {e.reason}" if e.reason else "")
        text = f"you were {why}"
        if e.action == "ban":
            text += f" (for {format_duration(e.seconds)})"
        log.info("session removed by an operator", action=e.action, by=e.by)
        s.end(why, Error("kicked", text), Bye(why))

    def _mute(self, s: Session, seconds: float, by: str | None, reason: str | None) -> None:
        s.muted_until = asyncio.get_running_loop().time() + seconds
        text = f"you are muted for {format_duration(seconds)}"
        if by:
            text += f" by {by}"
        if reason:
            text += f": {reason}"
        s.send(Notice(text))


def _ban_text(head: str, left: float, details: dict[str, Any]) -> str:
    text = f"{head} for another {format_duration(left)}"
    reason = details.get("reason")
    if isinstance(reason, str) and reason:
        text += f": {reason}"
    return text
