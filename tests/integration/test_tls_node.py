"""TLS as production runs it: a ``hubbub node`` subprocess (uvloop when installed) on a
real redis-server, with its descriptors counted in /proc/<pid>/fd."""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path

import pytest
import trustme

from node.tls import client_context

from ..helpers import JsonClient, wait_until
from .procs import redis_server, start_node

pytestmark = [pytest.mark.redis_server,
              pytest.mark.skipif(not Path("/proc/net/tcp").is_file(),
                                 reason="needs /proc to count descriptors")]


def chat_sockets(pid: int, port: int) -> int:
    """Open descriptors of process ``pid`` that are connections on its chat ``port`` (the
    listener excluded; other descriptors, e.g. a Redis pool that grows, do not count)."""
    inodes = set()
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError), open(name) as table:
            for row in list(table)[1:]:
                fields = row.split()
                local_port, state, inode = int(fields[1].rsplit(":", 1)[1], 16), fields[3], \
                    fields[9]
                if local_port == port and state != "0A":  # 0A: LISTEN
                    inodes.add(f"socket:[{inode}]")
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                count += 1
    return count


async def _until_closed(reader: asyncio.StreamReader, timeout: float) -> None:
    async with asyncio.timeout(timeout):
        while await reader.read(65536):
            pass


async def test_tls_node_process_chats_and_drops_bad_handshakes(tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert_file, key_file, ca_file = tmp_path / "c.pem", tmp_path / "k.pem", tmp_path / "ca.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    ca.cert_pem.write_to_path(str(ca_file))
    async with redis_server() as (url, _):
        node, port = await start_node(url, "tls-node", "--tls-cert", str(cert_file),
                                      "--tls-key", str(key_file),
                                      "--tls-handshake-timeout", "0.5")
        try:
            users = []
            for nick in ("alice", "bob"):
                reader, writer = await asyncio.open_connection(
                    "127.0.0.1", port, ssl=client_context(str(ca_file)),
                    server_hostname="127.0.0.1")
                c = JsonClient(reader, writer)
                await c.op("hello", nick=nick)
                await c.event("welcome")
                users.append(c)
            await users[0].op("say", text="tls in a node process", ref=1)
            assert (await users[1].event("msg"))["text"] == "tls in a node process"

            assert chat_sockets(node.proc.pid, port) == 2  # alice's and bob's
            loop = asyncio.get_running_loop()
            for payload in (b"", b"alice\n"):  # a silent client; a plaintext one
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                try:
                    if not payload:  # the node holds it while the handshake is pending
                        await wait_until(lambda: chat_sockets(node.proc.pid, port) == 3)
                    writer.write(payload)
                    start = loop.time()
                    await _until_closed(reader, timeout=5.0)
                    assert loop.time() - start < 3.0
                finally:
                    writer.close()
                    with contextlib.suppress(ConnectionError, OSError):
                        await writer.wait_closed()
            assert chat_sockets(node.proc.pid, port) == 2
        finally:
            assert await node.stop() == 0
