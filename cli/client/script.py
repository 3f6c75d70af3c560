"""Non-interactive client commands: piped ``connect``, ``say``, ``who`` and ``rooms``."""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import sys
import threading
from typing import Any, TextIO

from .connection import ChatClient, ClientError
from .shown import Shown, plain
from .state import Address, ClientState

__all__ = ["query", "run_script", "say_once"]


def _stdin_lines(loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[str | None],
                 stream: TextIO) -> None:
    """Feed lines of a blocking stream to the loop (one reader thread, not per client)."""
    for line in stream:
        loop.call_soon_threadsafe(queue.put_nowait, line)
    loop.call_soon_threadsafe(queue.put_nowait, None)


async def run_script(addresses: list[Address], nick: str, rooms: list[str], *,
                     json_out: bool, stdin: TextIO | None = None,
                     stdout: TextIO | None = None, drain_timeout: float = 30.0,
                     tls: ssl.SSLContext | None = None, secret: str | None = None,
                     password: str | None = None) -> int:
    """Send each stdin line, print what arrives; at EOF wait for the acks, then quit."""
    out = stdout or sys.stdout
    err = sys.stderr

    def show(item: Shown) -> None:
        if not json_out:
            print(plain(item), file=out, flush=True)
        elif item.kind in ("status", "error"):
            print(plain(item), file=err, flush=True)

    def raw(ev: dict[str, Any]) -> None:
        print(json.dumps(ev, ensure_ascii=False), file=out, flush=True)

    state = ClientState(addresses, nick, rooms or ["lobby"], secret=secret, password=password)
    client = ChatClient(state, show=show, on_event=raw if json_out else None, tls=tls)
    runner = asyncio.create_task(client.run())
    queue: asyncio.Queue[str | None] = asyncio.Queue()
    threading.Thread(target=_stdin_lines, args=(asyncio.get_running_loop(), queue,
                                                 stdin or sys.stdin), daemon=True).start()
    try:
        while True:
            getter = asyncio.ensure_future(queue.get())
            await asyncio.wait({getter, runner}, return_when=asyncio.FIRST_COMPLETED)
            if runner.done():
                getter.cancel()
                break
            line = getter.result()
            if line is None:
                break
            await client.submit(line)
        if not runner.done():
            try:
                async with asyncio.timeout(drain_timeout):
                    await client.settled()
            except TimeoutError:
                print(f"! {len(state.pending)} messages were not acknowledged", file=err)
            client.quit()
        await runner
    except ClientError as exc:
        print(f"! {exc}", file=err)
        return 1
    finally:
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError, ClientError):
            await runner
    return 1 if state.pending else 0


async def say_once(addresses: list[Address], nick: str, room: str, text: str,
                   wait: float = 15.0, tls: ssl.SSLContext | None = None,
                   secret: str | None = None, password: str | None = None) -> int:
    """Say one line; 0 only once the cluster acknowledged it."""
    problems: list[str] = []

    def show(item: Shown) -> None:
        if item.kind == "error":
            problems.append(plain(item))

    state = ClientState(addresses, nick, [room], secret=secret, password=password)
    client = ChatClient(state, show=show, max_attempts=2 * len(addresses), tls=tls)
    await client.submit(text)
    runner = asyncio.create_task(client.run())
    try:
        async with asyncio.timeout(wait):
            settle = asyncio.ensure_future(client.settled())
            await asyncio.wait({settle, runner}, return_when=asyncio.FIRST_COMPLETED)
            if runner.done():
                settle.cancel()
                runner.result()  # raises the ClientError
        if problems:
            print("\n".join(problems), file=sys.stderr)
            return 1
        client.quit()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(3):
                await runner
        return 0
    except ClientError as exc:
        print(f"! {exc}", file=sys.stderr)
        return 1
    except TimeoutError:
        print("! not acknowledged in time", file=sys.stderr)
        return 1
    finally:
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError, ClientError):
            await runner


async def query(addresses: list[Address], op: dict[str, Any],
                wait: float = 5.0, tls: ssl.SSLContext | None = None,
                secret: str | None = None) -> dict[str, Any]:
    """Ask the first node that answers one question (``who``/``rooms``) without joining."""
    last: Exception | None = None
    for address in addresses:
        try:
            async with asyncio.timeout(wait):
                reader, writer = await asyncio.open_connection(
                    address.host, address.port, ssl=tls,
                    server_hostname=address.host if tls is not None else None)
                try:
                    if secret:  # a token-mode cluster answers nothing before the token
                        writer.write(json.dumps({"op": "auth", "secret": secret}).encode()
                                     + b"\n")
                    writer.write(json.dumps({**op, "ref": "q"}).encode() + b"\n")
                    while line := await reader.readline():
                        if line.startswith(b"{"):
                            ev: dict[str, Any] = json.loads(line)
                            if ev.get("ref") == "q":
                                if ev.get("ev") == "error":
                                    raise ClientError(str(ev.get("code")), str(ev.get("text")))
                                return ev
                    raise EOFError("connection closed")
                finally:
                    writer.close()
                    with contextlib.suppress(Exception):
                        async with asyncio.timeout(1.0):
                            await writer.wait_closed()  # over TLS, after close_notify
        except (OSError, EOFError, TimeoutError, ValueError) as exc:
            last = exc
    raise ClientError("unreachable", f"no node answered ({last})")
