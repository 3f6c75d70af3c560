"""A node reaches a TLS-only redis-server through ``rediss://``, verifying it with
``--redis-ca``; without that CA (or against the wrong host name) it refuses Redis."""

from __future__ import annotations

from pathlib import Path

import pytest
import trustme

from cli.cluster import free_port

from ..helpers import text_user
from .procs import hubbub_exit, redis_server, start_node

pytestmark = pytest.mark.redis_server


async def test_rediss_with_the_redis_ca_and_refused_without(tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("localhost")
    cert_file, key_file, ca_file = tmp_path / "c.pem", tmp_path / "k.pem", tmp_path / "ca.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    ca.cert_pem.write_to_path(str(ca_file))
    tls_port = free_port()
    async with redis_server(None, "--port", "0", "--tls-port", str(tls_port),
                            "--tls-cert-file", str(cert_file), "--tls-key-file", str(key_file),
                            "--tls-ca-cert-file", str(ca_file), "--tls-auth-clients", "no"):
        url = f"rediss://localhost:{tls_port}/0"
        node, port = await start_node(url, "tls-ok", "--redis-ca", str(ca_file))
        try:
            alice = await text_user(port, "alice")
            bob = await text_user(port, "bob")
            await alice.send("over rediss")
            assert await bob.expect("[lobby]") == "[lobby] alice: over rediss"
        finally:
            assert await node.stop() == 0
        # the system's CAs do not know this one: the node does not start, and says why
        code, out = await refused(url)
        assert code == 2 and "certificate verify failed" in out, out
        # the right CA but another host name than the certificate's: refused too
        code, out = await refused(f"rediss://127.0.0.1:{tls_port}/0", "--redis-ca",
                                  str(ca_file))
        assert code == 2, out
        assert "certificate verify failed" in out or "match" in out, out


async def refused(url: str, *args: str) -> tuple[int, str]:
    """A node on ``url`` that must refuse to start: its status and output (one line
    naming the options to change, no traceback)."""
    code, out = await hubbub_exit("node", "--host", "127.0.0.1", "--port", str(free_port()),
                                  "--redis-url", url, *args)
    assert "(--redis-url / HUBBUB_REDIS_URL, --redis-ca / HUBBUB_REDIS_CA)" in out, out
    assert "Traceback" not in out and len(out.strip().splitlines()) == 1, out
    return code, out
