"""The interactive terminal client: a prompt line at the bottom, the chat scrolling above it.

Theory of operation
-------------------
* The UI is not a full-screen application: :func:`run_tui` runs ``PromptSession.
  prompt_async()`` in a loop (one prompt per line the user enters) next to
  ``ChatClient.run()`` as a task.  A line entered is handed to ``client.submit()``; the
  typed line is erased (``erase_when_done``) because what was said comes back from the
  cluster as the user's own message, confirmed.
* :class:`Screen` is the client's ``show`` / ``on_status`` callback.  ``show()`` only
  queues the item; one *flusher* task prints the queue in order inside prompt_toolkit's
  ``in_terminal()``, which erases the prompt, lets us print, then redraws the prompt with
  the half-typed input exactly as it was.  Between two prompts (no application running)
  ``in_terminal()`` does nothing and the lines are printed directly.  Items count as
  *shown* (``Screen.shown``, :meth:`Screen.wait_shown`) once they are written.
* Every line is a list of ``(style, text)`` fragments.  Styles are our own constants;
  text from the wire only ever goes into the text half, after :func:`safe`, so nothing a
  peer sends can be read as markup or escape sequences.
* The bottom toolbar and the prompt are callables read at every redraw; ``status()``
  asks for a redraw when the connection changes.
* The session ends when the user quits (``/quit`` and its aliases, Ctrl+D on an empty
  line, Ctrl+C) or when ``client.run()`` ends; a :class:`ClientError` from it is raised
  again once the prompt is gone, for the CLI to print.
"""

from __future__ import annotations

import asyncio
import contextvars
import ssl
import sys
import time
import unicodedata
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Sequence

from prompt_toolkit import PromptSession
from prompt_toolkit.application import Application, create_app_session, in_terminal
from prompt_toolkit.completion import CompleteEvent, Completer, Completion
from prompt_toolkit.document import Document
from prompt_toolkit.formatted_text import StyleAndTextTuples
from prompt_toolkit.input import Input
from prompt_toolkit.output import Output
from prompt_toolkit.styles import Style

from .connection import ChatClient, ClientError
from .shown import Shown, safe
from .state import COMMANDS, Address, ClientState

__all__ = ["STYLE", "ChatCompleter", "Screen", "format_item", "nick_style", "run_interactive",
           "run_tui"]

SHOWN_KEPT = 1000
"""How many shown items :class:`Screen` remembers (for :meth:`Screen.wait_shown`)."""

QUIT_GRACE = 3.0
"""How long to wait, after the user quits, for the node's goodbye before giving up."""

NICK_COLOURS = ("ansigreen", "ansiyellow", "ansiblue", "ansimagenta", "ansicyan",
                "ansibrightgreen", "ansibrightyellow", "ansibrightblue", "ansibrightmagenta",
                "ansibrightcyan", "ansibrightred")
"""Readable on dark and light backgrounds; plain red is kept for errors."""

STYLE = Style.from_dict({
    "time": "ansibrightblack",
    "room": "ansibrightblack",
    "text": "",
    "error": "ansired bold",
    "status": "ansibrightblack italic",
    "event": "ansibrightblack",
    "notice": "",
    "pm": "ansimagenta bold",
    "history": "dim",
    "prompt": "bold",
    "bottom-toolbar": "noreverse bg:ansiblue fg:ansiwhite",
    "bottom-toolbar.off": "bg:ansired fg:ansiwhite",
})

_ROOM_COMMANDS = {"/join", "/part", "/who"}


def nick_style(nick: str, own: bool = False) -> str:
    """The style of ``nick``: a colour that is the same for every spelling of the same name
    (NFKC + casefold, as the node compares names) and across runs; bold for one's own."""
    key = unicodedata.normalize("NFKC", nick).casefold().encode("utf-8", "replace")
    colour = NICK_COLOURS[zlib.crc32(key) % len(NICK_COLOURS)]
    return f"fg:{colour}" + (" bold" if own else "")


def _clock(ts: float) -> str:
    return time.strftime("%H:%M", time.localtime(ts if ts > 0 else time.time()))


def format_item(item: Shown) -> StyleAndTextTuples:
    """The fragments of one item, ending in a newline.  A multi-line text (``/help``) is
    continued on indented lines."""
    nick = safe(item.nick or "")
    room = safe(item.room or "")
    first, *more = item.text.split("\n")
    text = safe(first)
    who = ("class:nick " + nick_style(nick, item.own), nick)
    out: StyleAndTextTuples = [("class:time", _clock(item.ts) + " ")]
    match item.kind:
        case "msg":
            out += [("class:room", f"[{room}] "), who, ("", ": "), ("class:text", text)]
        case "action":
            out += [("class:room", f"[{room}] "), ("", "* "), who, ("", " "),
                    ("class:text", text)]
        case "pm":
            if item.own:
                out += [("class:pm", "[pm → "),
                        ("class:nick " + nick_style(safe(item.to or "")), safe(item.to or "")),
                        ("class:pm", "] "), ("class:text", text)]
            else:
                out += [("class:pm", "[pm] "), who, ("", ": "), ("class:text", text)]
        case "join" | "part":
            verb = "joined" if item.kind == "join" else "left"
            out += [("class:event", "* "), who, ("class:event", f" {verb} {room}")]
        case "quit":
            out += [("class:event", "* "), who, ("class:event", " quit")]
            if text:
                out.append(("class:event", f" ({text})"))
        case "nick":
            out += [("class:event", "* "), who, ("class:event", " is now "),
                    ("class:nick " + nick_style(text, item.own), text)]
        case "error":
            out.append(("class:error", f"! {safe(item.code or 'error')}: {text}"))
        case "status":
            out.append(("class:status", f"* {text}"))
        case _:
            out.append(("class:notice", f"* {text}"))
    style = "class:error" if item.kind == "error" else "class:notice"
    indent = " " * 6
    for line in more:
        out += [("", "\n" + indent), (style, safe(line))]
    out.append(("", "\n"))
    if item.history:
        out = [("class:history " + s, t) for s, t, *_ in out]
    return out


class ChatCompleter(Completer):
    """Tab completion: ``/commands`` first on the line; room names after ``/join``,
    ``/part`` and ``/who``; nicks of the current room after ``/msg`` and for any other
    word being typed."""

    def __init__(self, state: ClientState) -> None:
        self.state = state

    def get_completions(self, document: Document,
                        complete_event: CompleteEvent) -> Iterable[Completion]:
        words = document.text_before_cursor.split(" ")
        word = words[-1]
        first = words[0].lower()
        if len(words) == 1 and word.startswith("/") and not word.startswith("//"):
            yield from _matching(COMMANDS, word.lower(), len(word))
        elif len(words) == 2 and first in _ROOM_COMMANDS:
            yield from _matching(self._rooms(), word.lstrip("#").lower(), len(word))
        elif (len(words) == 2 and first == "/msg") or not first.startswith("/") \
                or first.startswith("//"):  # "//text" is said, like any plain line
            yield from _matching(self._nicks(), word.casefold(), len(word), fold=True)

    def _rooms(self) -> list[str]:
        rooms = {*self.state.rooms, *self.state.members}
        return sorted(safe(r) for r in rooms if r)

    def _nicks(self) -> list[str]:
        members = self.state.members.get(self.state.room or "", set())
        me = self.state.nick.casefold()
        return sorted((safe(n) for n in members if n.casefold() != me), key=str.casefold)


def _matching(candidates: Iterable[str], prefix: str, replace: int,
              fold: bool = False) -> Iterable[Completion]:
    for cand in candidates:
        if (cand.casefold() if fold else cand).startswith(prefix):
            yield Completion(cand, start_position=-replace)


class Screen:
    """What the user sees: items printed above the prompt, a status toolbar below it.

    Give :meth:`show` and :meth:`status` to :class:`ChatClient`, then pass both to
    :func:`run_tui`.
    """

    def __init__(self, state: ClientState) -> None:
        self.state = state
        self.shown: deque[Shown] = deque(maxlen=SHOWN_KEPT)
        """The items written to the terminal most recently, oldest first."""
        self.session: PromptSession[str] | None = None
        self._client: ChatClient | None = None
        self._context: contextvars.Context | None = None
        self._queue: list[Shown] = []
        self._flusher: asyncio.Task[None] | None = None
        self._changed = asyncio.Condition()

    # ------------------------------------------------------------------ callbacks

    def show(self, item: Shown) -> None:
        """Queue ``item``; it is printed above the prompt as soon as the loop runs."""
        self._queue.append(item)
        self._kick()

    def status(self) -> None:
        """The connection changed: redraw the toolbar."""
        if self.session is not None:
            self.session.app.invalidate()

    # ------------------------------------------------------------------ prompt parts

    def toolbar(self) -> StyleAndTextTuples:
        s = self.state
        if self._client is not None and self._client.connected:
            conn, style = "connected", "class:bottom-toolbar"
        elif s.registered:
            conn, style = "reconnecting…", "class:bottom-toolbar.off"
        else:
            conn, style = "connecting…", "class:bottom-toolbar.off"
        node = safe(s.node or "?")
        where = safe(str(s.address)) if s.address else "…"
        room = f"#{safe(s.room)}" if s.room else "no room"
        return [(style, f" node {node} ({where}) · {safe(s.nick)} · {room} · {conn} ")]

    def prompt(self) -> StyleAndTextTuples:
        room = self.state.room
        return [("class:prompt", f"#{safe(room)}> " if room else "> ")]

    # ------------------------------------------------------------------ waiting

    async def wait_shown(self, test: Callable[[Shown], bool]) -> Shown:
        """The first item of :attr:`shown` that passes ``test``, once it is shown."""
        async with self._changed:
            while True:
                for item in self.shown:
                    if test(item):
                        return item
                await self._changed.wait()

    async def drain(self) -> None:
        """Wait until everything queued has been printed."""
        while self._flusher is not None:
            flusher = self._flusher
            await asyncio.wait({flusher})
            flusher.result()  # a failed write (the terminal went away) surfaces here

    # ------------------------------------------------------------------ internals

    def attach(self, client: ChatClient, session: PromptSession[str]) -> None:
        """Bind to the prompt ``session`` (called by :func:`run_tui`, in its app session)."""
        self._client = client
        self.session = session
        self._context = contextvars.copy_context()
        self._kick()

    def _kick(self) -> None:
        if self.session is None or self._flusher is not None or not self._queue:
            return
        loop = asyncio.get_running_loop()
        self._flusher = loop.create_task(self._flush(), context=self._context)

    async def _flush(self) -> None:
        assert self.session is not None
        app: Application[str] = self.session.app
        try:
            while self._queue:
                async with in_terminal():  # erases the prompt, redraws it after
                    batch, self._queue = self._queue, []
                    for item in batch:
                        app.print_text(format_item(item))
                    app.output.flush()
                async with self._changed:
                    self.shown.extend(batch)
                    self._changed.notify_all()
        finally:
            if self._flusher is asyncio.current_task():
                self._flusher = None


async def run_tui(client: ChatClient, screen: Screen, *, input: Input | None = None,
                  output: Output | None = None) -> None:
    """Run the interactive UI until the user quits or ``client.run()`` ends.

    ``screen`` must be the :class:`Screen` whose ``show``/``status`` the client calls.
    ``input``/``output`` default to the terminal (tests pass a pipe and a dummy).
    Raises what ``client.run()`` raised (:class:`ClientError`) after the prompt is gone.
    """
    with create_app_session(input=input, output=output):
        session: PromptSession[str] = PromptSession(
            message=screen.prompt, bottom_toolbar=screen.toolbar,
            completer=ChatCompleter(client.state), complete_while_typing=False,
            style=STYLE, include_default_pygments_style=False, erase_when_done=True,
            input=input, output=output)
        screen.attach(client, session)
        runner = asyncio.create_task(client.run(), name="hubbub-client")
        try:
            await _prompt_loop(client, session, runner)
            if not runner.done():  # the user quit: give the node a moment to say goodbye
                try:
                    async with asyncio.timeout(QUIT_GRACE):
                        await asyncio.wait({runner})
                except TimeoutError:
                    pass
        finally:
            if not runner.done():
                client.quit()
                runner.cancel()
                await asyncio.wait({runner})
            await screen.drain()
        if not runner.cancelled():
            runner.result()  # ClientError and anything unexpected, now the UI is closed


async def _prompt_loop(client: ChatClient, session: PromptSession[str],
                       runner: asyncio.Task[None]) -> None:
    while not client.state.quitting and not runner.done():
        asker = asyncio.create_task(_ask(session), name="hubbub-prompt")
        await asyncio.wait({asker, runner}, return_when=asyncio.FIRST_COMPLETED)
        if not asker.done():  # the client ended under the prompt
            await _close_prompt(session, asker)
            return
        line = asker.result()
        if line is None:
            client.quit()
            return
        await client.submit(line)


async def _ask(session: PromptSession[str]) -> str | None:
    """One line, or None for Ctrl+D on an empty line and Ctrl+C.  (A task must not end in
    KeyboardInterrupt: asyncio would raise it out of the event loop.)"""
    try:
        return await session.prompt_async()
    except (EOFError, KeyboardInterrupt):
        return None


async def _close_prompt(session: PromptSession[str], asker: asyncio.Task[str | None]) -> None:
    app = session.app
    if app.is_running and app.future is not None and not app.future.done():
        app.exit(exception=EOFError())
    else:
        asker.cancel()
    await asyncio.wait({asker})


def run_interactive(addresses: Sequence[Address | str], nick: str,
                    rooms: Sequence[str] = (), tls: ssl.SSLContext | None = None,
                    secret: str | None = None, password: str | None = None) -> int:
    """The interactive client in this terminal until the user quits; the exit status.

    ``addresses`` are node addresses (``host:port`` strings or :class:`Address`), tried
    in turn; ``rooms`` to join (default: the lobby).  When the cluster refuses the user
    (:class:`ClientError`, e.g. ``nick-taken``) it prints ``! CODE: TEXT`` to stderr and
    returns 1.  Raises ``ValueError`` for a malformed address.
    """
    parsed = [a if isinstance(a, Address) else Address.parse(a) for a in addresses]

    async def main() -> None:
        state = ClientState(parsed, nick, list(rooms), secret=secret, password=password)
        screen = Screen(state)
        client = ChatClient(state, show=screen.show, on_status=screen.status, tls=tls)
        await run_tui(client, screen)

    try:
        asyncio.run(main())
    except ClientError as exc:
        print(f"! {safe(str(exc))}", file=sys.stderr)
        return 1
    return 0
