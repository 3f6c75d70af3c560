"""benchmarks/soak.py runs end to end for a few seconds (its figures are a benchmark's,
not checked here): two nodes, users coming and going, a table and the growth report."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest

from .procs import require_binary

pytestmark = pytest.mark.redis_server

SOAK = Path(__file__).resolve().parents[2] / "benchmarks" / "soak.py"


@pytest.mark.timeout(90)
async def test_a_short_soak_runs_clean_and_reports_growth() -> None:
    require_binary("redis-server")
    child = await asyncio.create_subprocess_exec(
        sys.executable, str(SOAK), "--minutes", "0.1", "--sample", "2", "--users", "6",
        "--rooms", "10", "--think", "0.2", "--life-min", "1", "--life-max", "3",
        "--seed", "7", "--json", "--node-args", "--history-max 50",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    async with asyncio.timeout(80):
        out, err = await child.communicate()
    assert child.returncode == 0, err.decode()[-3000:]
    result = json.loads(out)
    assert "--history-max" in result["node_args"]
    assert result["sessions"] >= 6 and result["ops"].get("say", 0) > 0
    assert result["unexpected_errors"] == {} and result["dropped"] == 0
    assert all(result["nodes_alive"]) and len(result["readings"]) >= 3
    assert set(result["growth"]) == {"redis_used_memory", "redis_keys", "node1_rss",
                                     "node2_rss"}
    assert result["left_behind"]["online"] == 0
    table = err.decode()  # with --json the table goes to stderr
    assert "redis (MiB)" in table and "(all users gone)" in table
