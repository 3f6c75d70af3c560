"""The terminal UI: a pipe for the keyboard, a dummy terminal, an in-process node."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import fakeredis
import pytest
from prompt_toolkit.completion import CompleteEvent
from prompt_toolkit.document import Document
from prompt_toolkit.input import PipeInput, create_pipe_input
from prompt_toolkit.output import DummyOutput

from cli.client.connection import ChatClient, ClientError
from cli.client.shown import Shown
from cli.client.state import Address, ClientState
from cli.client.tui import (
    NICK_COLOURS,
    ChatCompleter,
    Screen,
    format_item,
    nick_style,
    run_tui,
)

from .helpers import TIMEOUT, json_user, running_node, text_user

FROM_ALICE: dict[str, Any] = {"from": "alice"}


@dataclass
class Tui:
    client: ChatClient
    screen: Screen
    keys: PipeInput
    task: asyncio.Task[None]

    async def until(self, **fields: object) -> Shown:
        """Wait until an item with these field values has been shown."""
        async with asyncio.timeout(TIMEOUT):
            return await self.screen.wait_shown(
                lambda item: all(getattr(item, k) == v for k, v in fields.items()))

    async def buffer_is(self, text: str) -> None:
        """Wait until the prompt's input buffer holds ``text`` (an event, not a sleep)."""
        assert self.screen.session is not None
        buf = self.screen.session.default_buffer
        changed = asyncio.Event()
        buf.on_text_changed += lambda _: changed.set()
        async with asyncio.timeout(TIMEOUT):
            while buf.text != text:
                changed.clear()
                await changed.wait()

    async def ended(self) -> None:
        async with asyncio.timeout(TIMEOUT):
            await self.task


@pytest.fixture
def keys() -> Iterator[PipeInput]:
    with create_pipe_input() as pipe:
        yield pipe


@contextlib.asynccontextmanager
async def tui(port: int, keys: PipeInput, nick: str = "alice") -> AsyncIterator[Tui]:
    state = ClientState([Address("127.0.0.1", port)], nick)
    screen = Screen(state)
    client = ChatClient(state, show=screen.show, on_status=screen.status)
    task = asyncio.create_task(run_tui(client, screen, input=keys, output=DummyOutput()))
    try:
        yield Tui(client, screen, keys, task)
    finally:
        if not task.done():
            keys.send_text("\x03")  # Ctrl+C quits, whatever is typed
        async with asyncio.timeout(TIMEOUT):
            await asyncio.wait({task})
        if not task.cancelled():
            task.exception()  # retrieved: the test asserts on it when it matters


async def connected(t: Tui) -> None:
    await t.until(kind="status")
    async with asyncio.timeout(TIMEOUT):
        await t.client.welcomed.wait()


# --------------------------------------------------------------------------- end to end


async def test_enter_sends_the_line(fake_server: fakeredis.FakeServer,
                                    keys: PipeInput) -> None:
    async with asyncio.timeout(30), running_node(fake_server) as node:
        assert node.port is not None
        bob = await text_user(node.port, "bob")
        async with tui(node.port, keys) as t:
            await connected(t)
            keys.send_text("hello bob ☕\r")
            await bob.expect("[lobby] alice: hello bob ☕")
            own = await t.until(kind="msg", text="hello bob ☕")
            assert own.own and own.nick == "alice"  # shown once the cluster confirmed it


async def test_incoming_line_leaves_the_half_typed_line_alone(
        fake_server: fakeredis.FakeServer, keys: PipeInput) -> None:
    async with asyncio.timeout(30), running_node(fake_server) as node:
        assert node.port is not None
        bob = await json_user(node.port, "bob")
        async with tui(node.port, keys) as t:
            await connected(t)
            keys.send_text("hal")
            await t.buffer_is("hal")
            await bob.op("say", text="interrupting you")
            await t.until(kind="msg", nick="bob", text="interrupting you")
            assert t.screen.session is not None
            assert t.screen.session.default_buffer.text == "hal"
            keys.send_text("f done\r")
            ev = await bob.event("msg", **FROM_ALICE)
            assert ev["text"] == "half done"


async def test_quit_ends_the_ui(fake_server: fakeredis.FakeServer, keys: PipeInput) -> None:
    async with asyncio.timeout(30), running_node(fake_server) as node:
        assert node.port is not None
        bob = await text_user(node.port, "bob")
        async with tui(node.port, keys) as t:
            await connected(t)
            keys.send_text("/quit lunch\r")
            await t.ended()
            assert t.client.state.quitting
            await bob.expect("* alice quit (lunch)")


async def test_ctrl_d_quits(fake_server: fakeredis.FakeServer, keys: PipeInput) -> None:
    async with asyncio.timeout(30), running_node(fake_server) as node:
        assert node.port is not None
        bob = await text_user(node.port, "bob")
        async with tui(node.port, keys) as t:
            await connected(t)
            keys.send_text("\x04")
            await t.ended()
            await bob.expect("* alice quit")


async def test_ctrl_c_quits_with_text_typed(fake_server: fakeredis.FakeServer,
                                            keys: PipeInput) -> None:
    async with asyncio.timeout(30), running_node(fake_server) as node:
        assert node.port is not None
        bob = await text_user(node.port, "bob")
        async with tui(node.port, keys) as t:
            await connected(t)
            keys.send_text("never sent")
            await t.buffer_is("never sent")
            keys.send_text("\x03")
            await t.ended()
            await bob.expect("* alice quit")
            assert not any(line.endswith("never sent") for line in bob.seen)


async def test_refused_nick_is_raised_after_the_ui_closes(
        fake_server: fakeredis.FakeServer, keys: PipeInput) -> None:
    async with asyncio.timeout(30), running_node(fake_server) as node:
        assert node.port is not None
        await text_user(node.port, "alice")
        async with tui(node.port, keys) as t:
            with pytest.raises(ClientError) as info:
                await t.ended()
            assert info.value.code == "nick-taken"


async def test_errors_and_commands_are_shown(fake_server: fakeredis.FakeServer,
                                            keys: PipeInput) -> None:
    async with asyncio.timeout(30), running_node(fake_server) as node:
        assert node.port is not None
        async with tui(node.port, keys) as t:
            await connected(t)
            keys.send_text("/frobnicate\r")
            err = await t.until(kind="error", code="unknown-command")
            assert format_item(err)[-2] == ("class:error",
                                            "! unknown-command: unknown command /frobnicate; "
                                            "/help lists them")
            keys.send_text("/jo\t")  # Tab completes the one matching command
            await t.buffer_is("/join")
            keys.send_text(" dev\r")
            await t.until(kind="join", room="dev", nick="alice")
            assert t.client.state.room == "dev"
            assert "#dev" in "".join(text for _, text, *_ in t.screen.toolbar())


# --------------------------------------------------------------------------- rendering


def texts(item: Shown) -> str:
    return "".join(text for _, text, *_ in format_item(item))


def test_lines_have_a_time_and_keep_wire_text_as_text() -> None:
    item = Shown("msg", "<b>x</b> \x1b[31mred ☃", room="lobby", nick="bob", ts=0.0)
    line = texts(item)
    assert line.endswith("[lobby] bob: <b>x</b> \ufffd[31mred ☃\n")
    assert line[2] == ":" and line[5] == " "  # HH:MM
    styles = [style for style, *_ in format_item(item)]
    assert not any("<b>" in s or "31m" in s for s in styles)  # never markup, never a style


def test_nick_colours_are_stable_and_own_nick_is_bold() -> None:
    assert nick_style("Alice") == nick_style("alice") == nick_style("ＡＬＩＣＥ")
    assert nick_style("alice").removeprefix("fg:") in NICK_COLOURS
    assert "bold" in nick_style("alice", own=True)
    assert len({nick_style(n) for n in ("alice", "bob", "carol", "dave", "eve", "mallory")}) > 1


def test_kinds_are_told_apart() -> None:
    assert texts(Shown("error", "in use", code="nick-taken")).endswith("! nick-taken: in use\n")
    assert texts(Shown("action", "waves", room="dev", nick="bob")).endswith("[dev] * bob waves\n")
    assert texts(Shown("pm", "psst", nick="alice", to="bob", own=True)).endswith(
        "[pm → bob] psst\n")
    assert texts(Shown("quit", "lunch", nick="bob")).endswith("* bob quit (lunch)\n")
    history = format_item(Shown("msg", "old", room="lobby", nick="bob", history=True))
    assert all(style.startswith("class:history") for style, *_ in history)
    status = format_item(Shown("status", "connected"))
    assert ("class:status", "* connected") in status
    help_lines = texts(Shown("notice", "one\ntwo")).split("\n")
    assert help_lines[0].endswith("* one") and help_lines[1].strip() == "two"


# --------------------------------------------------------------------------- completion


def complete(state: ClientState, text: str) -> list[str]:
    completer = ChatCompleter(state)
    return [c.text for c in completer.get_completions(Document(text, len(text)),
                                                      CompleteEvent(completion_requested=True))]


@pytest.fixture
def state() -> ClientState:
    s = ClientState([Address("127.0.0.1", 1)], "alice", ["lobby", "dev"])
    s.members = {"dev": {"alice", "Bob", "bert", "carol"}, "lobby": {"alice", "zed"}}
    return s


def test_completes_commands(state: ClientState) -> None:
    assert complete(state, "/j") == ["/join"]
    assert complete(state, "/QU") == ["/quit"]
    assert set(complete(state, "/")) >= {"/join", "/msg", "/quit", "/who"}
    assert complete(state, "//j") == []


def test_completes_rooms_after_room_commands(state: ClientState) -> None:
    assert complete(state, "/join d") == ["dev"]
    assert complete(state, "/part #l") == ["lobby"]
    assert complete(state, "/who ") == ["dev", "lobby"]


def test_completes_nicks_of_the_current_room(state: ClientState) -> None:
    assert state.room == "dev"
    assert complete(state, "b") == ["bert", "Bob"]
    assert complete(state, "thanks B") == ["bert", "Bob"]
    assert complete(state, "/msg c") == ["carol"]
    assert complete(state, "/msg ") == ["bert", "Bob", "carol"]  # never oneself
    assert complete(state, "z") == []  # zed is in the lobby, not here
    assert complete(state, "/msg carol hi b") == []
    completion = next(iter(ChatCompleter(state).get_completions(
        Document("hi bo", 5), CompleteEvent(completion_requested=True))))
    assert completion.start_position == -2
