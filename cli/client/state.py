"""The client's state as a plain object: no sockets, no event loop, tested on its own.

Theory of operation
-------------------
* ``handle(event)`` takes one server event (a decoded JSON object) and returns what to
  show and which ops to send; ``command(line)`` does the same for a line the user typed.
* Room messages are shown in id order, each once: ``last_id[room]`` is the newest id shown
  and anything at or below it is a duplicate.
* After every (re)connect each room is *caught up*: the client asks for the messages after
  the last id it showed (or the recent history on a first join) and, until the answer is
  in, holds back live messages for that room; then it shows the history and the held-back
  messages merged in id order.  A full page asks for the next one.  When the node says
  the room no longer holds everything after that id (``complete: false``: trimmed by count
  or age, or lost with the store), the client says so once, before what is still held;
  a ``gap`` the node reports after repairing its own subscription is said the same way.
* Messages the user said that the cluster has not acknowledged stay ``pending``.  The
  node's ``ack`` and the message's own echo (a ``msg`` from the user) arrive in either
  order, both with the message id: an echo whose ack has not come is kept (``_echoed``)
  until it does, an ack whose echo has not come is remembered (``_acked``) so that echo is
  not taken for another message's.  After a failover a pending message got through if an
  unexplained echo of the same room and text came, live before the failure or in the
  room's catch-up; the others are sent again, so nothing is lost and nothing said twice.
* A typed ``/command`` is parsed by the node's own text-mode parser and goes out as the
  op the node's JSON codec encodes for that command, so it means what the line would mean
  to a node in text mode.  The client fills in its current room where the line names none
  (``/me``, ``/part``, ``/who``, ``/history``), and a ``/join`` of a room it is in already
  only makes that room current.  A password the cluster accepted (``/register``,
  ``/password``, ``/login``) becomes the one the client logs in with after a failover that
  cannot resume.
* ``next_address()`` walks the node addresses round-robin.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, assert_never

from node.errors import EmptyText, ProtocolError
from node.jsoncodec import JSON
from node.model import (
    Auth,
    Ban,
    Bans,
    BlankLine,
    Command,
    Hello,
    Help,
    History,
    Join,
    Kick,
    Login,
    Me,
    Msg,
    Mute,
    Nick,
    Oper,
    Part,
    Password,
    Ping,
    Quit,
    Register,
    Rooms,
    Say,
    Unban,
    Unmute,
    Who,
)
from node.names import clean_text
from node.textcodec import TEXT, USAGE, command_word

from .shown import Shown, safe

__all__ = ["COMMANDS", "HELP", "Address", "ClientState", "Op", "id_key"]

Op = dict[str, Any]

COMMANDS = ("/join", "/part", "/msg", "/me", "/nick", "/who", "/rooms", "/history", "/help",
            "/quit", "/exit", "/q", "/close", "/disconnect", "/register", "/password",
            "/login", "/oper", "/kick", "/ban", "/unban", "/mute", "/unmute", "/bans")
"""The /commands the client offers (the node's text mode also has /auth and /ping)."""

HELP = """/join ROOM  /part [ROOM]  /msg NICK TEXT  /me TEXT  /nick NEW  /who [ROOM]
/rooms  /history [N]  /quit [REASON]  (//text says a line starting with /)
accounts: /register PASSWORD  /password NEW  /login NICK PASSWORD
operators: /oper SECRET  /kick NICK [WHY]  /ban NICK|ADDRESS [DUR] [WHY]  /unban X
           /mute NICK [DUR] [WHY]  /unmute NICK  /bans"""

CATCHUP_PAGE = 200
RECENT = 20
ACKED_KEEP = 1000
"""Ids acknowledged before their echo came that are remembered (the oldest are dropped)."""


def id_key(msg_id: str) -> tuple[int, int]:
    """Order of room message ids (``<ms>-<seq>``); unreadable ids sort first."""
    ms, _, seq = msg_id.partition("-")
    try:
        return int(ms), int(seq)
    except ValueError:
        return (0, 0)


@dataclass(frozen=True, slots=True)
class Address:
    host: str
    port: int

    @classmethod
    def parse(cls, text: str, default_port: int = 5051) -> Address:
        """``host:port``, ``host``, ``:port`` or ``[v6]:port``; ValueError if malformed."""
        text = text.strip()
        if not text:
            raise ValueError("empty node address")
        host, port = text, str(default_port)
        if text.startswith("["):
            end = text.find("]")
            if end < 0:
                raise ValueError(f"bad node address {text!r}")
            host, rest = text[1:end], text[end + 1:]
            if rest:
                if not rest.startswith(":"):
                    raise ValueError(f"bad node address {text!r}")
                port = rest[1:]
        elif text.count(":") == 1:
            host, port = text.split(":")
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"bad port in node address {text!r}")
        return cls(host or "localhost", int(port))

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(slots=True)
class _Pending:
    room: str
    text: str
    action: bool


class ClientState:
    """Rooms, last seen ids, pending messages and which address is next."""

    def __init__(self, addresses: list[Address], nick: str,
                 rooms: tuple[str, ...] | list[str] = ("lobby",), *,
                 secret: str | None = None, password: str | None = None) -> None:
        if not addresses:
            raise ValueError("at least one node address is needed")
        self.addresses = list(addresses)
        self.address: Address | None = None
        self._next = 0
        self.nick = nick
        self.secret = secret
        """The cluster's access token (``--auth token`` clusters)."""
        self.password = password
        """The nickname's account password (``--auth accounts`` clusters)."""
        self.token: str | None = None
        self.node: str | None = None
        self.rooms: list[str] = [r.lstrip("#").lower() for r in rooms] or ["lobby"]
        self.last_id: dict[str, str] = {}
        self.members: dict[str, set[str]] = {}
        self.pending: dict[str, _Pending] = {}
        self.registered = False
        self.quitting = False
        self._refs = itertools.count(1)
        self._catchup: dict[str, list[dict[str, Any]]] = {}
        self._catchup_refs: dict[str, str] = {}
        self._matching: set[str] = set()  # rooms whose catch-up may hold messages we said
        self._echoed: dict[str, tuple[str, str, bool]] = {}  # id -> (room, text, action)
        self._acked: dict[str, None] = {}  # ids acknowledged whose echo has not come (in order)
        self._asked: set[str] = set()
        self._synced: set[str] = set()
        self._gap_told: set[str] = set()  # rooms told of a gap in their current catch-up
        self._passwords: dict[str, str] = {}  # ref -> a password the cluster may accept

    # ------------------------------------------------------------------ addresses

    def next_address(self) -> Address:
        self.address = self.addresses[self._next % len(self.addresses)]
        self._next += 1
        return self.address

    @property
    def room(self) -> str | None:
        """The current room (the one joined or chosen last)."""
        return self.rooms[-1] if self.rooms else None

    def _ref(self, kind: str) -> str:
        return f"{kind}{next(self._refs)}"

    def _is_me(self, nick: object) -> bool:
        return isinstance(nick, str) and nick.casefold() == self.nick.casefold()

    # ------------------------------------------------------------------ connection

    def hello(self) -> Op:
        """The first op on every connection: a resume when a token is known."""
        op: Op = {"op": "hello", "nick": self.nick, "rooms": list(self.rooms)}
        if self.token:
            op["token"] = self.token
        if self.secret:
            op["secret"] = self.secret
        if self.password:  # ignored by the node when the resume succeeds
            op["password"] = self.password
        return op

    def disconnected(self) -> None:
        """Forget per-connection state; pending messages stay pending."""
        self._catchup.clear()
        self._catchup_refs.clear()
        self._asked.clear()

    def unsent(self) -> list[Op]:
        """Say ops for pending messages of rooms not catching up (sent while offline);
        one whose echo came already got through and is dropped instead."""
        ops = []
        for ref, p in list(self.pending.items()):
            if p.room not in self._catchup:
                if self._echo_of(p):
                    del self.pending[ref]
                else:
                    ops.append(self._say_op(ref, p))
        return ops

    # ------------------------------------------------------------------ events

    def handle(self, ev: dict[str, Any]) -> tuple[list[Shown], list[Op]]:
        """Take one server event; return what to show and what to send."""
        kind = ev.get("ev")
        handler = getattr(self, f"_on_{kind}", None)
        if handler is None:
            return [], []
        shown, ops = handler(ev)
        return shown, ops

    def _on_welcome(self, ev: dict[str, Any]) -> tuple[list[Shown], list[Op]]:
        self.nick = str(ev.get("nick", self.nick))
        self.node = safe(str(ev.get("node", "?")))
        self.token = ev.get("token") or self.token
        self.registered = True
        rooms = [r for r in ev.get("rooms", []) if isinstance(r, str)]
        self.rooms = rooms or self.rooms
        ops: list[Op] = []
        for room in self.rooms:
            ops.extend(self._start_catchup(room))
        how = "resumed on" if ev.get("resumed") else "connected to"
        return [Shown("status", f"{how} {self.node} ({self.address}) as {self.nick}")], ops

    def _start_catchup(self, room: str, after: str | None = None) -> list[Op]:
        ref = self._ref("c")
        self._catchup[room] = []
        self._gap_told.discard(room)
        self._catchup_refs[ref] = room
        # a room caught up before is resumed from the last id shown ("0-0": it had none)
        after = after or self.last_id.get(room) or ("0-0" if room in self._synced else None)
        if after:  # resuming: own messages in the catch-up prove earlier sends got through
            self._matching.add(room)
        else:  # a first look: our own lines in it are older than anything pending
            self._matching.discard(room)
        op: Op = {"op": "history", "room": room, "ref": ref}
        if after:
            op.update(after=after, limit=CATCHUP_PAGE)
        else:
            op["limit"] = RECENT
        who_ref = self._ref("w")
        return [op, {"op": "who", "room": room, "ref": who_ref}]

    def _on_msg(self, ev: dict[str, Any]) -> tuple[list[Shown], list[Op]]:
        room = str(ev.get("room", ""))
        held = self._catchup.get(room)
        if held is not None:
            held.append(ev)
            return [], []
        return self._show_messages(room, [ev], history=False), []

    def _show_messages(self, room: str, events: list[dict[str, Any]],
                       history: bool) -> list[Shown]:
        out = []
        for ev in sorted(events, key=lambda e: id_key(str(e.get("id", "")))):
            msg_id = str(ev.get("id", ""))
            last = self.last_id.get(room)
            if last is not None and id_key(msg_id) <= id_key(last):
                continue  # seen already
            self.last_id[room] = msg_id
            own = self._is_me(ev.get("from"))
            if own and (not history or room in self._matching):
                self._own_echo(room, msg_id, ev)
            out.append(Shown("action" if ev.get("action") else "msg", safe(str(ev.get("text"))),
                             room=room, nick=safe(str(ev.get("from"))), id=msg_id,
                             ts=float(ev.get("ts") or 0), own=own, history=history))
        return out

    def _on_history(self, ev: dict[str, Any]) -> tuple[list[Shown], list[Op]]:
        ref = str(ev.get("ref"))
        room = str(ev.get("room", ""))
        messages = [{**m, "room": room} for m in ev.get("messages", []) if isinstance(m, dict)]
        if ref in self._asked:  # the user's own /history: shown, not tracked
            self._asked.discard(ref)
            head = Shown("notice", f"history of {room}: {len(messages)} messages")
            return [head, *(Shown("action" if m.get("action") else "msg",
                                  safe(str(m.get("text"))), room=room,
                                  nick=safe(str(m.get("from"))), id=str(m.get("id")),
                                  ts=float(m.get("ts") or 0), history=True,
                                  own=self._is_me(m.get("from")))
                            for m in messages)], []
        room = self._catchup_refs.pop(ref, room)
        held = self._catchup.get(room)
        if held is None:
            return [], []
        shown = self._gap(room) if ev.get("complete") is False else []
        if len(messages) >= CATCHUP_PAGE:  # more to come: show this page, ask for the next
            shown += self._show_messages(room, messages, history=True)
            return shown, self._start_catchup_page(room)
        del self._catchup[room]
        self._synced.add(room)
        shown += self._show_messages(room, messages, history=True)
        shown += self._show_messages(room, held, history=False)
        return shown, self._settle_pending(room)

    def _on_gap(self, ev: dict[str, Any]) -> tuple[list[Shown], list[Op]]:
        """The node found events of a room gone when it repaired its subscription."""
        return self._gap(str(ev.get("room", ""))), []

    def _gap(self, room: str) -> list[Shown]:
        """The notice that some of a room's messages are gone: once per catch-up (every
        page of it may say so), and once for each gap the node reports otherwise."""
        if room in self._gap_told:
            return []
        if room in self._catchup:
            self._gap_told.add(room)
        return [Shown("notice", f"some messages in #{safe(room)} are no longer in history",
                      room=room)]

    def _start_catchup_page(self, room: str) -> list[Op]:
        ref = self._ref("c")
        self._catchup_refs[ref] = room
        return [{"op": "history", "room": room, "ref": ref, "after": self.last_id.get(room),
                 "limit": CATCHUP_PAGE}]

    def _settle_pending(self, room: str) -> list[Op]:
        """After a catch-up: drop pending messages that got through, resend the others."""
        self._matching.discard(room)
        ops = []
        for ref, p in list(self.pending.items()):
            if p.room != room:
                continue
            if self._echo_of(p):
                del self.pending[ref]
            else:
                ops.append(self._say_op(ref, p))
        for msg_id in [i for i, (r, _, _) in self._echoed.items() if r == room]:
            del self._echoed[msg_id]  # explained by nothing pending: nothing to keep it for
        return ops

    def _own_echo(self, room: str, msg_id: str, ev: dict[str, Any]) -> None:
        """A message of ours came back: its ack came first, or it is kept until it does
        (or, after a failover, until it tells that a pending message got through)."""
        if msg_id in self._acked:
            del self._acked[msg_id]
        else:
            self._echoed[msg_id] = (room, str(ev.get("text", "")), bool(ev.get("action")))

    def _echo_of(self, p: _Pending) -> bool:
        """Whether an unexplained echo shows ``p`` got through (it is used up)."""
        relayed = _as_relayed(p.text)
        for msg_id, echo in self._echoed.items():
            if echo == (p.room, relayed, p.action):
                del self._echoed[msg_id]
                return True
        return False

    def _on_ack(self, ev: dict[str, Any]) -> tuple[list[Shown], list[Op]]:
        ref = str(ev.get("ref"))
        msg_id = ev.get("id")
        if self.pending.pop(ref, None) is not None and isinstance(msg_id, str):
            if msg_id in self._echoed:  # its echo came first
                del self._echoed[msg_id]
            else:
                self._acked[msg_id] = None
                while len(self._acked) > ACKED_KEEP:
                    del self._acked[next(iter(self._acked))]
        if ref in self._passwords:  # accepted: log in with it from now on
            self.password = self._passwords.pop(ref)
        return [], []

    def _on_bans(self, ev: dict[str, Any]) -> tuple[list[Shown], list[Op]]:
        entries = [e for e in ev.get("bans", []) if isinstance(e, dict)]
        shown = [Shown("notice", f"{len(entries)} bans or mutes in force")]
        for e in entries:
            line = (f"{safe(str(e.get('kind')))} {safe(str(e.get('target')))}: "
                    f"{e.get('expires_in')} s left, by {safe(str(e.get('by')))}")
            if e.get("reason"):
                line += f": {safe(str(e['reason']))}"
            shown.append(Shown("notice", line))
        return shown, []

    def _on_error(self, ev: dict[str, Any]) -> tuple[list[Shown], list[Op]]:
        ref = str(ev.get("ref"))
        code = str(ev.get("code", "error"))
        text = safe(str(ev.get("text", "")))
        shown = []
        p = self.pending.pop(ref, None)
        if p is not None:
            text = f"not sent ({text}): {safe(p.text)}"
        room = self._catchup_refs.pop(ref, None)
        ops: list[Op] = []
        if room is not None:  # catch-up refused (e.g. no longer in the room): stop holding
            held = self._catchup.pop(room, [])
            shown += self._show_messages(room, held, history=False)
            ops = self._settle_pending(room)
        self._asked.discard(ref)
        self._passwords.pop(ref, None)
        return [Shown("error", text, code=code), *shown], ops

    def _on_pm(self, ev: dict[str, Any]) -> tuple[list[Shown], list[Op]]:
        sender = str(ev.get("from", ""))
        return [Shown("pm", safe(str(ev.get("text", ""))), nick=safe(sender),
                      to=safe(str(ev.get("to", ""))), id=str(ev.get("id")),
                      ts=float(ev.get("ts") or 0), own=self._is_me(sender))], []

    def _on_join(self, ev: dict[str, Any]) -> tuple[list[Shown], list[Op]]:
        room, nick = str(ev.get("room", "")), str(ev.get("nick", ""))
        self.members.setdefault(room, set()).add(nick)
        ops: list[Op] = []
        if self._is_me(nick) and room not in self.rooms:
            self.rooms.append(room)
            ops = self._start_catchup(room)
        return [Shown("join", room=room, nick=safe(nick), own=self._is_me(nick))], ops

    def _on_part(self, ev: dict[str, Any]) -> tuple[list[Shown], list[Op]]:
        room, nick = str(ev.get("room", "")), str(ev.get("nick", ""))
        self.members.get(room, set()).discard(nick)
        if self._is_me(nick) and room in self.rooms:
            self.rooms.remove(room)
            self.members.pop(room, None)
            self.last_id.pop(room, None)
            self._synced.discard(room)
            self._matching.discard(room)
        return [Shown("part", room=room, nick=safe(nick), own=self._is_me(nick))], []

    def _on_quit(self, ev: dict[str, Any]) -> tuple[list[Shown], list[Op]]:
        nick = str(ev.get("nick", ""))
        for members in self.members.values():
            members.discard(nick)
        return [Shown("quit", safe(str(ev.get("reason") or "")), nick=safe(nick))], []

    def _on_topic(self, ev: dict[str, Any]) -> tuple[list[Shown], list[Op]]:
        room, nick = str(ev.get("room", "")), str(ev.get("nick", ""))
        text = str(ev.get("text", ""))
        said = f"{nick} set the topic of {room}: {text}" if text else \
            f"{nick} cleared the topic of {room}"
        return [Shown("notice", safe(said), room=room)], []

    def _on_nick(self, ev: dict[str, Any]) -> tuple[list[Shown], list[Op]]:
        old, new = str(ev.get("old", "")), str(ev.get("new", ""))
        for members in self.members.values():
            if old in members:
                members.discard(old)
                members.add(new)
        own = self._is_me(old)
        if own:
            self.nick = new
        return [Shown("nick", safe(new), nick=safe(old), own=own)], []

    def _on_who(self, ev: dict[str, Any]) -> tuple[list[Shown], list[Op]]:
        room = str(ev.get("room", ""))
        nicks = [n for n in ev.get("nicks", []) if isinstance(n, str)]
        self.members[room] = set(nicks)
        ref = str(ev.get("ref"))
        if ref not in self._asked:
            return [], []
        self._asked.discard(ref)
        return [Shown("notice", f"{room}: {len(nicks)} users: " + ", ".join(map(safe, nicks)),
                      room=room)], []

    def _on_rooms(self, ev: dict[str, Any]) -> tuple[list[Shown], list[Op]]:
        self._asked.discard(str(ev.get("ref")))
        rooms = [r for r in ev.get("rooms", []) if isinstance(r, dict)]
        listing = ", ".join(f"{safe(str(r.get('room')))} ({r.get('members')})" for r in rooms)
        shown = [Shown("notice", f"{len(rooms)} rooms: {listing}")]
        if ev.get("more") is True and rooms:
            shown.append(Shown("notice", "more rooms follow: /rooms "
                                         f"{safe(str(rooms[-1].get('room')))}"))
        return shown, []

    def _on_notice(self, ev: dict[str, Any]) -> tuple[list[Shown], list[Op]]:
        lines = str(ev.get("text", "")).split("\n")  # one item a line: \n is not content
        return [Shown("notice", safe(line)) for line in lines], []

    # ------------------------------------------------------------------ user input

    def _say_op(self, ref: str, p: _Pending) -> Op:
        said = Me if p.action else Say
        return JSON.encode_command(said(text=p.text, room=p.room, ref=ref))

    def command(self, line: str) -> tuple[list[Shown], list[Op]]:
        """A line the user typed: text to say, or a /command (see the module docstring)."""
        line = line.rstrip("\r\n")
        if not line.strip():
            return [], []
        word = command_word(line)
        if word is None:
            return self._say(line[1:] if line.startswith("//") else line, action=False)
        if f"/{word}" not in COMMANDS:
            return _unknown(line)
        try:
            cmd = TEXT.parse(line, True)
        except ProtocolError as exc:
            return [Shown("error", safe(exc.text), code=exc.code)], []
        if cmd is None:
            return [], []
        return self._run(cmd, line)

    def _run(self, cmd: Command, line: str) -> tuple[list[Shown], list[Op]]:
        """What to show and send for a /command the node's parser read from ``line``."""
        match cmd:
            case Me(text=text):
                return self._say(text, action=True)
            case Join(room=raw):
                room = raw.lstrip("#").lower()
                if room in self.rooms:  # already in it: make it the current room
                    self.rooms.remove(room)
                    self.rooms.append(room)
                    return [Shown("notice", f"current room is now {room}")], []
                return [], [self._op(Join(room=room), "j")]
            case Part(room=named):
                if (target := named or self.room) is None:
                    return _usage(USAGE["part"])
                return [], [self._op(Part(room=target), "p")]
            case Msg():
                return [], [self._op(cmd, "m")]
            case Nick():
                return [], [self._op(cmd, "n")]
            case Who(room=named):
                return self._ask(Who(room=named or self.room))
            case Rooms():
                return self._ask(cmd)
            case History(limit=limit):
                return self._ask(History(room=self.room, limit=limit))
            case Help():
                return [Shown("notice", HELP)], []
            case Quit():
                self.quitting = True
                return [], [JSON.encode_command(cmd)]
            case Register(password=password) | Password(password=password) | \
                    Login(password=password):
                op = self._op(cmd, "c")
                self._passwords[op["ref"]] = password  # ours once the cluster acks it
                return [], [op]
            case Oper() | Kick() | Ban() | Unban() | Mute() | Unmute() | Bans():
                return [], [self._op(cmd, "c")]
            case Hello() | Say() | BlankLine() | Auth() | Ping():
                return _unknown(line)  # not offered here (COMMANDS keeps these out)
            case _:
                assert_never(cmd)

    def _op(self, cmd: Command, kind: str) -> Op:
        """``cmd`` as the op the node's JSON codec writes for it, under a new ref."""
        return {**JSON.encode_command(cmd), "ref": self._ref(kind)}

    def _ask(self, cmd: Who | Rooms | History) -> tuple[list[Shown], list[Op]]:
        """A question whose answer is shown to the user (not only tracked)."""
        op = self._op(cmd, "a")
        self._asked.add(op["ref"])
        return [], [op]

    def _say(self, text: str, action: bool) -> tuple[list[Shown], list[Op]]:
        room = self.room
        if room is None:
            return [Shown("error", "you are in no room; /join one", code="not-in-room")], []
        ref = self._ref("s")
        p = _Pending(room, text, action)
        self.pending[ref] = p
        if room in self._catchup:  # sent once the room is caught up
            return [], []
        return [], [self._say_op(ref, p)]


def _as_relayed(text: str) -> str | None:
    """``text`` as the node relays it (cleaned, blanks collapsed); None if it would not be."""
    try:
        return clean_text(text)
    except EmptyText:
        return None


def _usage(text: str) -> tuple[list[Shown], list[Op]]:
    return [Shown("error", text, code="bad-args")], []


def _unknown(line: str) -> tuple[list[Shown], list[Op]]:
    word = line.partition(" ")[0].lower()
    return [Shown("error", f"unknown command {safe(word)}; /help lists them",
                  code="unknown-command")], []
