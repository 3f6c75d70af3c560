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
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import argon2
import structlog
from redis.asyncio import Redis

from .config import NodeConfig
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
    NotEnabled,
    NotRegistered,
    RelayUnavailable,
)
from .identity import Identity
from .keys import Keys
from .model import (
    Ack,
    AskNick,
    Auth,
    Hello,
    Login,
    Notice,
    Oper,
    Password,
    Register,
)
from .names import check_nick, fold_nick
from .relay import NameInfo, Relay
from .stores import Account, AccountStore, CreateQuota, Sanctions, Throttle
from .topology import Topology
from .user import Member, Roster

__all__ = ["Account", "AccountStore", "Admission", "Hasher", "Security",
           "Throttle", "audit"]

log = structlog.get_logger("hubbub.security")
audit_log = structlog.get_logger("hubbub.audit")

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
    """Everything a node does to admit users and carry out account and operator commands.
    Handlers take the :class:`~node.user.Member` they act for; they refuse by raising a
    :class:`~node.errors.HubbubError` and answer through the member."""

    def __init__(self, config: NodeConfig, redis: Redis | Topology, relay: Relay,
                 identity: Identity, roster: Roster) -> None:
        """``redis``: the shards (each store sends its commands to its keys' shard; a plain
        client is one standalone shard)."""
        cfg = config
        self.config = cfg
        self.relay = relay
        self.identity = identity
        self.roster = roster
        self.keys = Keys(cfg.prefix)
        self.accounts = AccountStore(redis, self.keys)
        self.throttle = Throttle(redis, self.keys, cfg)
        self.creates = CreateQuota(redis, self.keys, cfg)
        self.sanctions = Sanctions(redis, self.keys)
        self.hasher = Hasher(cfg.hash_concurrency, cfg.hash_queue)
        self._oper_accounts = frozenset(fold_nick(n) for n in cfg.oper_accounts)
        self.login_failures = 0
        self.operator_actions = 0

    def close(self) -> None:
        self.hasher.close()

    def refusals(self) -> tuple[int, int, int]:
        """(throttled, busy, hashes in flight), for /metrics."""
        return self.throttle.refused, self.hasher.refused, self.hasher.inflight

    async def _record(self, m: Member) -> None:
        """Record the login and operator status with the name, for a resume."""
        with contextlib.suppress(RelayUnavailable):
            await self.relay.update_info(m.user.folded, self.identity.info(m))

    # ------------------------------------------------------------------ admission

    async def check_connect(self, m: Member) -> None:
        """Refuse a banned address before the greeting (Redis away: let it in; it cannot
        register until Redis is back, and registration checks again)."""
        try:
            ((left, details),) = await self.sanctions.lookup([("ip-ban", m.user.ip)])
        except RelayUnavailable:
            return
        if left:
            raise Banned(_ban_text("your address is banned", left, details))

    def require_access(self, m: Member) -> None:
        """Token mode: nothing but the token, help, ping and quit before it."""
        if not m.user.authed:
            raise AuthRequired("this cluster needs its access token first: send /auth TOKEN "
                               "(JSON: a 'secret' field in hello)")

    def require_accounts(self) -> None:
        if self.config.auth != "accounts":
            raise NotEnabled("accounts are not enabled on this cluster")

    async def _check_secret(self, m: Member, given: str, expected: str, *,
                            what: str) -> None:
        await self.throttle.charge(None, m.user.ip)
        if not hmac.compare_digest(given.encode(), expected.encode()):
            self.login_failures += 1
            log.warning("wrong secret", what=what)
            raise AuthFailed(f"wrong {what}")
        await self.throttle.refund(None, m.user.ip)

    async def admit(self, m: Member, cmd: Hello, folded: str) -> Admission:
        """Before a name is claimed: the access token, bans, the name's account and mute.
        The password itself is checked by :meth:`login_hello` (not needed on a resume)."""
        user = m.user
        if self.config.auth == "token" and not user.authed:
            if cmd.secret is None:
                self.require_access(m)
            await self._check_secret(m, cmd.secret or "", self.config.auth_token,
                                     what="access token")
            user.authed = True
        (ban, ip_ban, (mute_left, mute)) = await self.sanctions.lookup(
            [("nick-ban", folded), ("ip-ban", user.ip), ("mute", folded)])
        if ip_ban[0]:
            raise Banned(_ban_text("your address is banned", *ip_ban))
        if ban[0]:
            raise Banned(_ban_text("that nickname is banned", *ban))
        account = await self.accounts.get(folded) if self.config.auth == "accounts" else None
        reason = mute.get("reason")
        return Admission(account, mute_left, reason if isinstance(reason, str) else None)

    async def login_hello(self, m: Member, cmd: Hello, folded: str,
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
        await self._verify(m, folded, admission.account, cmd.password)

    async def check_login(self, m: Member, name: str, password: str) -> None:
        """Check the password of account ``name`` without taking the name (an IRC client's
        SASL exchange comes before its registration, which then logs in).

        Raises:
            NotEnabled, BadNick, NoSuchAccount, AuthFailed, AuthThrottled, AuthBusy.
        """
        self.require_accounts()
        folded = fold_nick(check_nick(name))
        account = await self.accounts.get(folded)
        if account is None:
            raise NoSuchAccount(f"{name} is not a registered name")
        await self._verify(m, folded, account, password)

    async def _verify(self, m: Member, folded: str, account: Account, password: str) -> None:
        ip = m.user.ip
        await self.throttle.charge(folded, ip)
        try:
            good = await self.hasher.verify(account.hash, password)
        except AuthBusy:  # never checked: give the attempt back
            await self.throttle.refund(folded, ip)
            raise
        if not good:
            self.login_failures += 1
            self.throttle.failed += 1
            log.warning("login failed", account=account.name)
            raise AuthFailed(f"wrong password for {account.name}")
        await self.throttle.refund(folded, ip)

    async def registered(self, m: Member, admission: Admission, folded: str) -> None:
        """After the welcome: remember the login, operator status and mute (never raises:
        the name is claimed by now).  A resumed session is logged in only if its previous
        one was (:meth:`restore`), never because its name has an account."""
        if admission.account is not None and m.user.resumed_from is None:
            await self._logged_in(m, folded)
        if admission.muted_for > 0:
            self.mute_member(m, admission.muted_for, None, admission.mute_reason)

    async def _logged_in(self, m: Member, folded: str) -> None:
        user = m.user
        user.account = folded
        try:
            is_oper = folded in self._oper_accounts or await self.accounts.is_oper(folded)
        except RelayUnavailable:
            log.warning("could not read the account's operator flag", account=folded)
            is_oper = False
        if is_oper and not user.oper:
            user.oper = True
            audit(user.nick, "oper", user.nick, via="account")
        log.info("logged in", account=folded, oper=user.oper)
        if user.registered:  # recorded with the name, for a resume
            await self._record(m)

    async def check_rename(self, m: Member, new: str) -> None:
        """``/nick NEW``: NEW must not be banned, nor someone else's account."""
        folded = fold_nick(new)
        ((left, details),) = await self.sanctions.lookup([("nick-ban", folded)])
        if left:
            raise Banned(_ban_text("that nickname is banned", left, details))
        if self.config.auth == "accounts" and m.user.account != folded:
            account = await self.accounts.get(folded)
            if account is not None:
                raise LoginRequired(f"{account.name} is a registered name: /login "
                                    f"{account.name} PASSWORD to use it")

    def check_muted(self, m: Member) -> None:
        left = m.user.muted_until - asyncio.get_running_loop().time()
        if left > 0:
            raise Muted(f"you are muted for another {format_duration(left)}; your message "
                        "was not sent")

    async def resume_refused(self, m: Member, folded: str) -> None:
        """A resume with a token that is not the name's holder's: charged against the
        name's and the address's failed-login caps (AuthThrottled once one is reached).
        Only failures are charged, so however much a name is hammered its holder's own
        token still resumes it."""
        await self.throttle.charge(folded, m.user.ip)
        self.login_failures += 1
        self.throttle.failed += 1
        log.warning("resume refused: not the name's token", name=folded)

    async def restore(self, m: Member, previous: NameInfo) -> None:
        """A resume (whoever holds the resume token holds the session): exactly the
        operator status and account login the previous session had, never more; a login
        to an account deleted meanwhile is not restored."""
        user = m.user
        if previous.account is not None and self.config.auth == "accounts":
            try:
                exists = await self.accounts.get(previous.account) is not None
            except RelayUnavailable:
                log.warning("could not read the account of a resumed login",
                            account=previous.account)
                exists = False
            if exists:
                user.account = previous.account
                log.info("login restored", account=previous.account)
        if previous.oper:
            user.oper = True
            audit(user.nick, "oper", user.nick, via="resume")
        if user.oper or user.account is not None:  # recorded for the next resume
            await self._record(m)

    # ------------------------------------------------------------------ commands

    async def auth(self, m: Member, cmd: Auth) -> None:
        if self.config.auth != "token":
            raise NotEnabled("this cluster needs no access token")
        user = m.user
        if user.authed:
            raise BadArguments("you are already authenticated")
        await self._check_secret(m, cmd.secret, self.config.auth_token, what="access token")
        user.authed = True
        m.send(Notice("access token accepted"))
        m.send(Ack(cmd.ref))
        if not user.registered and m.mode != "json":
            m.send(AskNick())

    async def oper(self, m: Member, cmd: Oper) -> None:
        if not self.config.oper_secret:
            raise NotEnabled("this cluster has no operator secret")
        await self._check_secret(m, cmd.secret, self.config.oper_secret,
                                 what="operator secret")
        user = m.user
        user.oper = True
        audit(user.nick, "oper", user.nick, via="secret")
        await self._record(m)  # only a resume would miss it
        m.send(Notice("you are now an operator"))
        m.send(Ack(cmd.ref))

    async def login(self, m: Member, cmd: Login) -> None:
        """``/login`` of a registered user (before registration a login is a hello with
        a password: see :mod:`node.commands`)."""
        self.require_accounts()
        user = m.user
        nick = check_nick(cmd.nick)
        folded = fold_nick(nick)
        account = await self.accounts.get(folded)
        if account is None:
            raise NoSuchAccount(f"{nick} is not a registered name")
        await self._verify(m, folded, account, cmd.password)
        if folded != user.folded:
            previous, user.account = user.account, folded  # check_rename lets the owner in
            identity = self.identity
            try:
                await self.check_rename(m, nick)
                try:
                    await identity.rename(m, nick)
                except NickTaken:  # the password was right: the other session gives way
                    await identity.take_over(nick, folded, lambda: identity.rename(m, nick))
            except BaseException:
                user.account = previous
                raise
        await self._logged_in(m, folded)
        m.send(Notice(f"you are logged in as {account.name}" +
                      (" (operator)" if user.oper else "")))
        m.send(Ack(cmd.ref))

    async def register(self, m: Member, cmd: Register) -> None:
        self.require_accounts()
        user = m.user
        if not user.registered:
            raise NotRegistered()
        self._check_length(cmd.password)
        folded = user.folded
        if user.account == folded or await self.accounts.get(folded) is not None:
            raise AccountExists(f"{user.nick} is already registered")
        encoded = await self.hasher.hash(cmd.password)
        if self.identity.holder(folded) is not m:
            raise NickTaken("your nickname changed while registering; try again")
        if not await self.accounts.create(folded, Account(user.nick, encoded, time.time())):
            raise AccountExists(f"{user.nick} is already registered")
        log.info("account registered", account=folded)
        await self._logged_in(m, folded)
        m.send(Notice(f"{user.nick} is now registered: from now on it needs /login "
                      f"{user.nick} PASSWORD"))
        m.send(Ack(cmd.ref))

    async def password(self, m: Member, cmd: Password) -> None:
        self.require_accounts()
        user = m.user
        if not user.registered:
            raise NotRegistered()
        folded = user.folded
        if user.account != folded:
            raise LoginRequired(f"you are not logged in to an account named {user.nick}: "
                                f"/login {user.nick} PASSWORD first (or /register it)")
        self._check_length(cmd.password)
        encoded = await self.hasher.hash(cmd.password)
        if not await self.accounts.set_hash(folded, encoded):
            raise NoSuchAccount(f"{user.nick} has no account any more")
        log.info("password changed", account=folded)
        m.send(Notice(f"the password of {user.nick} is changed"))
        m.send(Ack(cmd.ref))

    def _check_length(self, password: str) -> None:
        if len(password) < self.config.min_password:
            raise BadArguments(f"a password needs at least {self.config.min_password} "
                               "characters")

    def mute_member(self, m: Member, seconds: float, by: str | None, reason: str | None) -> None:
        m.user.muted_until = asyncio.get_running_loop().time() + seconds
        text = f"you are muted for {format_duration(seconds)}"
        if by:
            text += f" by {by}"
        if reason:
            text += f": {reason}"
        m.send(Notice(text))


def _ban_text(head: str, left: float, details: dict[str, Any]) -> str:
    text = f"{head} for another {format_duration(left)}"
    reason = details.get("reason")
    if isinstance(reason, str) and reason:
        text += f": {reason}"
    return text
