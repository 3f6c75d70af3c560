"""The terminal UI in a real pseudo-terminal, against a real node and a real redis-server.

The child's output is raw terminal bytes (escape sequences between styled fragments), so
the checks look for plain fragments of text; the real proof that a half-typed line
survived an incoming message is what the other user receives.  A thread reads the pty
all the time and answers the cursor-position requests prompt_toolkit sends, as a real
terminal does (without answers it never learns the height it may use and hides the
status toolbar).  pexpect is blocking, so waiting runs in ``asyncio.to_thread`` while
the event loop keeps serving the other user.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from typing import Any

import pexpect
import pytest

from ..helpers import json_user
from .procs import redis_server, start_node

pytestmark = pytest.mark.redis_server

WAIT = 15.0
FROM_ALICE: dict[str, Any] = {"from": "alice"}
CPR_REQUEST = "\x1b[6n"


class Terminal:
    """A child in a pty whose output is collected continuously."""

    def __init__(self, child: Any) -> None:
        self.child = child
        self.text = ""
        self.ended = False
        self._answered = 0
        self._changed = threading.Condition()
        self._pump = threading.Thread(target=self._read, name="pty-reader", daemon=True)
        self._pump.start()

    def _read(self) -> None:
        while True:
            try:
                chunk = self.child.read_nonblocking(4096, timeout=None)
            except (pexpect.EOF, OSError, ValueError):  # ended, or closed under us
                break
            with self._changed:
                self.text += chunk
                asked = self.text.count(CPR_REQUEST)
                unanswered, self._answered = asked - self._answered, asked
                self._changed.notify_all()
            for _ in range(unanswered):  # "the cursor is at row 1, column 1"
                self.child.send("\x1b[1;1R")
        with self._changed:
            self.ended = True
            self._changed.notify_all()

    def _wait(self, text: str | None, start: int) -> int:
        with self._changed:
            ok = self._changed.wait_for(
                lambda: (text is not None and text in self.text[start:]) or self.ended,
                timeout=WAIT)
            if text is None and self.ended:
                return len(self.text)
            if not ok or text is None or text not in self.text[start:]:
                raise AssertionError(f"{text!r} not seen; output ends:\n"
                                     f"{self.text[-1500:]!r}")
            return self.text.index(text, start) + len(text)

    async def expect(self, text: str, start: int = 0) -> int:
        """Wait until ``text`` appears after ``start``; the offset just past it."""
        return await asyncio.to_thread(self._wait, text, start)

    async def eof(self) -> None:
        await asyncio.to_thread(self._wait, None, 0)

    def join(self) -> None:
        self._pump.join(WAIT)


async def test_interactive_client_in_a_terminal() -> None:
    async with asyncio.timeout(50), redis_server() as (url, _):
        node, port = await start_node(url, "n1")
        try:
            bob = await json_user(port, "bob")
            child = pexpect.spawn(
                sys.executable, ["-m", "cli", "connect", f"127.0.0.1:{port}",
                                 "--nick", "alice"],
                env={**os.environ, "TERM": "xterm-256color", "PYTHONUNBUFFERED": "1"},
                encoding="utf-8", codec_errors="replace", dimensions=(30, 120))
            child.delaybeforesend = None
            term = Terminal(child)
            try:
                at = await term.expect(f"connected to n1 (127.0.0.1:{port}) as alice")
                await term.expect("alice · #lobby · connected")  # the status toolbar
                await bob.event("join", nick="alice", room="lobby")

                await bob.op("say", text="hello from bob ☕")
                at = await term.expect("hello from bob ☕", at)

                child.send("hi bob\r")
                ev = await bob.event("msg", **FROM_ALICE)
                assert ev["text"] == "hi bob"

                child.send("hal")
                at = await term.expect("hal", at)  # echoed on the prompt line
                await bob.op("say", text="while you type")
                at = await term.expect("while you type", at)
                await term.expect("hal", at)  # the prompt drawn again, the text still there
                child.send("f done\r")
                ev = await bob.event("msg", **FROM_ALICE)
                assert ev["text"] == "half done"

                child.send("/quit\r")
                await bob.event("quit", nick="alice")
                await term.eof()
                await asyncio.to_thread(child.wait)
                assert child.exitstatus == 0, term.text[-1500:]
            finally:
                if child.isalive():
                    child.terminate(force=True)
                child.close()
                await asyncio.to_thread(term.join)
        finally:
            await node.stop()
