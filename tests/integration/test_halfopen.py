"""A client whose connection silently died (half-open) is dropped within the keepalive
bound and its name freed — measured for real, with nftables dropping the client's packets
inside a private network namespace (tests/integration/halfopen_probe.py).

Skipped (with the reason) where ``unshare``/``nft`` are missing or network namespaces
are not permitted: that is a property of the machine, not of hubbub.
"""

from __future__ import annotations

import asyncio
import json
import shlex
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BOUND = 1 + 1 * 2
"""idle + interval x count of the probe's node (seconds)."""

pytestmark = pytest.mark.redis_server


async def run_probe(mode: str) -> dict[str, object]:
    for tool in ("unshare", "nft", "ip"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not on PATH (apt-get install util-linux nftables iproute2)")
    probe = f"{shlex.quote(sys.executable)} -m tests.integration.halfopen_probe {mode}"
    proc = await asyncio.create_subprocess_exec(
        "unshare", "-n", "sh", "-c", f"ip link set lo up && exec {probe}", cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    async with asyncio.timeout(60):
        out, err = await proc.communicate()
    if proc.returncode != 0 and b"unshare" in err and b"Operation not permitted" in err:
        pytest.skip("network namespaces are not permitted here: " + err.decode().strip())
    assert proc.returncode == 0, (out + err).decode()[-3000:]
    lines = [s for s in out.decode().splitlines() if s.startswith("{")]
    result: dict[str, object] = json.loads(lines[-1])
    return result


@pytest.mark.parametrize("mode", ["silent", "busy"])
async def test_half_open_client_is_dropped_and_its_name_freed_within_the_bound(
        mode: str) -> None:
    result = await run_probe(mode)
    print(f"{mode}: half-open client dropped after {result['seconds']} s (bound {BOUND} s)")
    assert result["line"] == "* victim quit (connection lost)"
    assert isinstance(result["seconds"], float)
    assert result["seconds"] < BOUND + 1.5
    assert result["reclaimed"] is True
