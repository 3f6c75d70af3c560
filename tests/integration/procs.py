"""Real processes for integration tests: redis-server and ``hubbub node`` subprocesses.

Readiness is read from each process's own output (redis-server's "Ready to accept
connections", the node's "relay subscribed" log event), never guessed with a sleep.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from cli.cluster import free_port

START_TIMEOUT = 15.0


def require_binary(name: str) -> str:
    """The binary's path; skip the test when it is missing (fail under CI=true)."""
    path = shutil.which(name)
    if path is None:
        reason = f"{name} is not on PATH (install it, e.g. apt-get install {name})"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but {reason}")
        pytest.skip(reason)
    return path


class Proc:
    """A child process whose output lines are read continuously and can be waited on."""

    def __init__(self, proc: asyncio.subprocess.Process, stream: asyncio.StreamReader) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self.times: list[float] = []
        """``time.monotonic()`` at which each line arrived."""
        self._changed = asyncio.Condition()
        self._reader = asyncio.create_task(self._read(stream))

    async def _read(self, stream: asyncio.StreamReader) -> None:
        while raw := await stream.readline():
            async with self._changed:
                self.lines.append(raw.decode(errors="replace").rstrip("\n"))
                self.times.append(time.monotonic())
                self._changed.notify_all()
        async with self._changed:
            self._changed.notify_all()

    async def wait_line(self, test: Callable[[str], bool], timeout: float = START_TIMEOUT,
                        start: int = 0) -> str:
        async with asyncio.timeout(timeout), self._changed:
            while True:
                for line in self.lines[start:]:
                    if test(line):
                        return line
                if self._reader.done():
                    raise RuntimeError("process output ended:\n" + "\n".join(self.lines[-30:]))
                await self._changed.wait()

    def signal(self, sig: int) -> None:
        if self.proc.returncode is None:
            self.proc.send_signal(sig)

    async def stop(self, timeout: float = 15.0) -> int:
        self.signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(timeout):
                code = await self.proc.wait()
        except TimeoutError:
            self.proc.kill()
            code = await self.proc.wait()
        await self._reader
        return code


def log_events(proc: Proc) -> list[dict[str, Any]]:
    out = []
    for line in proc.lines:
        with contextlib.suppress(ValueError):
            out.append(json.loads(line))
    return out


def is_event(name: str) -> Callable[[str], bool]:
    def test(line: str) -> bool:
        try:
            return bool(json.loads(line).get("event") == name)
        except ValueError:
            return False
    return test


@contextlib.asynccontextmanager
async def redis_server(port: int | None = None, *extra: str
                       ) -> AsyncIterator[tuple[str, Proc]]:
    """A throwaway redis-server on 127.0.0.1 (nothing on disk); yields its URL.  ``extra``
    are more redis-server arguments (e.g. ``--maxmemory-policy``, ``allkeys-lru``)."""
    binary = require_binary("redis-server")
    port = port or free_port()
    with tempfile.TemporaryDirectory(prefix="hubbub-test-redis-") as workdir:
        child = await asyncio.create_subprocess_exec(
            binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", workdir, "--loglevel", "notice", *extra,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        assert child.stdout is not None
        proc = Proc(child, child.stdout)
        try:
            await proc.wait_line(lambda s: "Ready to accept connections" in s)
            yield f"redis://127.0.0.1:{port}/0", proc
        finally:
            await proc.stop()


async def start_node(redis_url: str, node_id: str, *args: str,
                     port: int | None = None, wait_ready: bool = True,
                     cwd: str | None = None) -> tuple[Proc, int]:
    """``hubbub node`` as a subprocess, started through the CLI; returns (proc, port).
    ``cwd``: a directory holding another revision's ``cli`` and ``node`` packages, run
    instead of these (``python -m`` imports from the working directory first); that
    revision may lack options of this one, so only ``args`` are added to its command."""
    port = port or free_port()
    if "--http-port" not in args:  # never the default 8081: several nodes share this host
        args = ("--http-port", str(free_port()), *args)
    if cwd is None:
        # Tests connect many clients from 127.0.0.1 and send bursts: no flood control and
        # no per-address caps unless the caller passes them (a later flag wins).
        args = ("--rate", "0", "--max-per-ip", "0", "--conn-rate-per-ip", "0",
                "--list-rate", "0", "--room-create-rate", "0", "--max-rooms-per-user", "0",
                *args)
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cli", "node", "--host", "127.0.0.1", "--port", str(port),
        "--redis-url", redis_url, "--node-id", node_id, "--log-json", *args,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"}, cwd=cwd)
    assert child.stderr is not None
    proc = Proc(child, child.stderr)
    await proc.wait_line(is_event("node listening"))
    if wait_ready:
        await proc.wait_line(is_event("relay subscribed"))
    return proc, port


async def hubbub_exit(*args: str, timeout: float = START_TIMEOUT,
                      env: dict[str, str] | None = None) -> tuple[int, str]:
    """Run ``hubbub ARGS`` (the venv's console script) to its end: (exit status, stdout
    and stderr).  A command still running after ``timeout`` is killed and fails the
    test (a mistake it should have refused)."""
    binary = os.path.join(os.path.dirname(sys.executable), "hubbub")
    base = {k: v for k, v in os.environ.items() if not k.startswith("HUBBUB_")}
    child = await asyncio.create_subprocess_exec(
        binary, *args, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT, env={**base, **(env or {}), "PYTHONUNBUFFERED": "1"})
    try:
        async with asyncio.timeout(timeout):
            out, _ = await child.communicate()
    except TimeoutError:
        child.kill()
        out, _ = await child.communicate()
        pytest.fail(f"hubbub {' '.join(args)} still ran after {timeout} s:\n{out.decode()}")
    return child.returncode or 0, out.decode(errors="replace")


async def account_cli(*args: str, url: str, stdin: bytes = b"") -> tuple[int, str]:
    """Run ``hubbub account ARGS --redis-url URL``; its exit status and output."""
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cli", "account", *args, "--redis-url", url,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    out, _ = await child.communicate(stdin)
    return child.returncode or 0, out.decode()
