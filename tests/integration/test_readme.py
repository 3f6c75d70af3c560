"""The README's "Running nodes yourself" recipe, run line by line as written there (its
fixed ports included), then a chat across the two nodes it started."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from ..helpers import text_user
from .procs import Proc, require_binary

pytestmark = pytest.mark.redis_server

ROOT = Path(__file__).resolve().parents[2]


def recipe(heading: str) -> list[str]:
    """The lines of the first ``sh`` block under the README's ``## heading``."""
    text = (ROOT / "README.md").read_text()
    section = text.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    found = re.search(r"^```sh\n(.*?)^```", section, re.S | re.M)
    assert found, f"README.md: no sh block under '## {heading}'"
    return [line for line in found.group(1).splitlines() if line.strip()]


def cannot_run(reason: str) -> None:
    """Skip (with the reason) on a developer's machine; fail under CI=true."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true but {reason}")
    pytest.skip(reason)


def listening(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
        return True
    return False


def subscribed(node_id: str) -> Callable[[str], bool]:
    """A node's ``relay subscribed`` log line (the pretty format: ``node=ID``)."""
    return lambda line: "relay subscribed" in line and f"node={node_id}" in line


async def stop_group(pgid: int) -> None:
    """SIGTERM every process the recipe started (they share the shell's process group),
    then SIGKILL what is left after the nodes' drain."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    for _ in range(150):
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        await asyncio.sleep(0.1)  # polling for processes to be gone: no event to wait on
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


async def test_running_nodes_yourself_works_as_written() -> None:
    require_binary("redis-server")
    lines = recipe("Running nodes yourself")
    assert any(line.startswith("hubbub node") for line in lines), lines
    ports = sorted({int(p) for line in lines for p in re.findall(r"--port (\d+)", line)})
    assert len(ports) == 3, ports  # Redis and two nodes
    if busy := [p for p in ports if listening(p)]:
        cannot_run(f"the README's ports {busy} are in use on this machine")
    if not (ROOT / ".venv" / "bin" / "activate").is_file():
        cannot_run("no .venv in the repository (make test creates it)")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("HUBBUB_", "VIRTUAL_ENV"))}
    child = await asyncio.create_subprocess_exec(
        "bash", "-c", "\n".join(lines), cwd=ROOT, env=env, start_new_session=True,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT)
    assert child.stdout is not None
    out = Proc(child, child.stdout)  # the shell's, Redis's and both nodes' output
    try:
        for node_id in re.findall(r"--node-id (\S+)", "\n".join(lines)):
            await out.wait_line(subscribed(node_id), timeout=30)
        alice = await text_user(ports[0], "alice")  # 5051
        bob = await text_user(ports[1], "bob")      # 5052
        await alice.expect("* bob joined lobby")
        await alice.send("hi bob, I'm on node 1")
        assert await bob.expect("[lobby]") == "[lobby] alice: hi bob, I'm on node 1"
        await bob.send("hi alice, node 2 here")
        assert await alice.expect("[lobby]") == "[lobby] bob: hi alice, node 2 here"
        assert not any("Traceback" in line or "error" in line.lower() for line in out.lines)
    except BaseException:
        print("\n".join(out.lines))
        raise
    finally:
        await stop_group(child.pid)
        await out.stop()
    assert not any(listening(p) for p in ports)
