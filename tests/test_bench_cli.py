"""``hubbub bench`` as a user runs it: a spawned cluster (real redis-server and node
processes) and a baseline server, through the generator processes; the report; and
compare.py's document update."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from cli.bench.report import print_report

from .integration.procs import require_binary

ROOT = Path(__file__).resolve().parent.parent


def _bench(*args: str) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-m", "cli", "bench", *args, "--json"],
                          capture_output=True, text=True, timeout=90, cwd=ROOT, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def _clean_step(result: dict[str, Any], clients: int) -> dict[str, Any]:
    assert result["setup"]["ready"] == clients
    (step,) = result["steps"]
    assert isinstance(step, dict)
    assert step["sent"] > 0 and step["deliveries"] == step["expected"] > 0
    for key in ("lost", "duplicates", "late", "corrupted", "disconnects"):
        assert step[key] == 0, (key, step)
    assert step["p99_ms"] is not None and step["complete"]
    return step


@pytest.mark.redis_server
@pytest.mark.timeout(120)
def test_spawned_cluster_json_and_table() -> None:
    require_binary("redis-server")
    result = _bench("--spawn", "2", "--clients", "6", "--rooms", "2", "--rate", "60",
                    "--duration", "1", "--warmup", "0")
    step = _clean_step(result, 6)
    assert step["deliveries"] == step["sent"] * 2  # rooms of three
    nodes = step["server"]["nodes"]
    assert len(nodes) == 2 and all(n["cpu_pct"] is not None for n in nodes)
    assert [n["channels"] for n in result["server"]["after"]["nodes"]] == [2, 2]
    console = Console(record=True, width=200)
    print_report(result, console)
    text = console.export_text()
    assert "deliv/s" in text and "p99 ms" in text and "6/6 clients registered" in text


@pytest.mark.redis_server  # bench subprocesses
@pytest.mark.timeout(60)
def test_ceiling_baseline_with_two_generator_processes() -> None:
    result = _bench("--baseline", "ceiling", "--clients", "6", "--rate", "120",
                    "--duration", "1", "--warmup", "0", "--workers", "2")
    assert result["workers"] == 2
    step = _clean_step(result, 6)
    assert step["deliveries"] == step["sent"] * 5


def test_compare_writes_between_markers(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("compare", ROOT / "benchmarks" / "compare.py")
    assert spec is not None and spec.loader is not None
    compare = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(compare)
    doc = tmp_path / "PERF.md"
    doc.write_text(f"# intro\n\n{compare.BEGIN}\nold table\n{compare.END}\n\nmore prose\n")
    compare.write_into(doc, "new table\n")
    assert doc.read_text() == (f"# intro\n\n{compare.BEGIN}\nnew table\n{compare.END}\n\n"
                               "more prose\n")
