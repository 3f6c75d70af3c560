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

from cli.bench.driver import cpu_costs
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
    server = step["server"]
    node_s = sum(n["cpu_s"] for n in nodes)
    assert node_s > 0 and server["redis_cpu_s"] > 0
    assert server["node_us_per_msg"] == pytest.approx(1e6 * node_s / step["sent"])
    assert server["node_us_per_delivery"] == pytest.approx(1e6 * node_s / step["deliveries"])
    assert server["redis_us_per_delivery"] == pytest.approx(
        1e6 * server["redis_cpu_s"] / step["deliveries"])
    console = Console(record=True, width=260)
    print_report(result, console)
    text = console.export_text()
    assert "deliv/s" in text and "p99 ms" in text and "6/6 clients registered" in text
    assert "node µs/msg" in text and "redis µs/deliv" in text


@pytest.mark.redis_server
@pytest.mark.timeout(120)
def test_flat_out_every_line_delivered() -> None:
    """Flat out, each client writes all its lines at once (as fast as TCP takes them):
    every line reaches every other member, none is refused."""
    require_binary("redis-server")
    result = _bench("--spawn", "2", "--clients", "6", "--flat-out", "300",
                    "--duration", "30", "--warmup", "0")
    step = _clean_step(result, 6)
    assert step["flat_out"] == 300 and step["schedule_kept"]
    assert step["sent"] == 6 * 300 and step["refused"] == 0
    assert step["deliveries"] == step["sent"] * 5
    console = Console(record=True, width=260)
    print_report(result, console)
    assert "flat out: 300 lines per client, 1,800 sent" in console.export_text()


def test_cpu_costs_per_message_and_delivery() -> None:
    server = {"nodes": [{"cpu_s": 0.3}, {"cpu_s": 0.1}], "redis_cpu_s": 0.2}
    assert cpu_costs(server, 1000, 4000) == {
        "node_us_per_msg": pytest.approx(400.0), "node_us_per_delivery": pytest.approx(100.0),
        "redis_us_per_msg": pytest.approx(200.0), "redis_us_per_delivery": pytest.approx(50.0)}
    unknown = {"nodes": [{"cpu_s": None}], "redis_cpu_s": None}
    assert set(cpu_costs(unknown, 10, 10).values()) == {None}
    assert cpu_costs(server, 0, 0)["node_us_per_msg"] is None


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


def _compare_module() -> Any:
    spec = importlib.util.spec_from_file_location("compare", ROOT / "benchmarks" / "compare.py")
    assert spec is not None and spec.loader is not None
    compare = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(compare)
    return compare


def test_compare_ratios_and_flat_out_tables() -> None:
    compare = _compare_module()

    def sustained(deliveries: float, node_us: float, redis_us: float | None) -> dict[str, Any]:
        return {"rate": 100.0, "deliveries_per_s": deliveries, "p50_ms": 1.0, "p99_ms": 9.0,
                "gen_cpu_pct": 50.0, "server": {
                    "nodes": [{"cpu_pct": 40.0}], "node_us_per_delivery": node_us,
                    "redis_us_per_delivery": redis_us}}

    out = {"machine": {"cores": 2, "cpu": "x", "python": "3.11", "redis": "7", "loop": "uvloop",
                       "load_at_start": [0.0, 0.0, 0.0]},
           "started": "s", "finished": "f",
           "throughput": {
               "hubbub/10": {"sustained": sustained(20_000, 6.0, 2.0), "steps": []},
               "ceiling/10": {"sustained": sustained(40_000, 2.0, None), "steps": []},
               "tutorial/10": {"sustained": sustained(10_000, 1.0, None), "steps": []}},
           "flatout": {"hubbub": {"steps": [{
               "flat_out": 200, "deliveries_per_s": 1000.0, "refused": 3, "p50_ms": 5.0,
               "p99_ms": 20.0, "lost": 0, "corrupted": 0}]}}}
    text = compare.tables(out)
    assert "| 10 | 4.00x | 0.50x | 2.00x |" in text  # (6 + 2) / 2; 20k / 40k; 20k / 10k
    assert "| hubbub | 200 | 1,000 | 3 | 5.00 | 20 | 0 | 0 |" in text
