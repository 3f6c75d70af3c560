"""``hubbub bench --spawn N --redis-shards M``: its options, Redis CPU read per master, and
the per-shard lines of the report (the spawned run itself: tests/integration/
test_bench_spawn.py)."""

from __future__ import annotations

import os
from typing import Any

import pytest
from rich.console import Console
from typer.testing import CliRunner

from cli.bench.driver import _server_delta
from cli.bench.report import print_report, shards_lines, steps_table
from cli.bench.spawn import LocalCluster, Probe, RedisShard
from cli.main import app


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["bench", *args])
    return result.exit_code, result.output


def test_redis_shards_goes_with_spawn() -> None:
    code, out = run("--nodes", "127.0.0.1:5051", "--redis-shards", "2")
    assert code == 2 and "--redis-shards goes with --spawn" in out


@pytest.mark.parametrize("value", ["-1", "17"])
def test_redis_shards_out_of_range_is_refused(value: str) -> None:
    code, out = run("--spawn", "2", "--redis-shards", value)
    assert code == 2 and "--redis-shards" in out


def test_the_help_says_what_one_shard_is() -> None:
    code, out = run("--help")
    assert code == 0
    text = " ".join(out.replace("│", " ").split())
    assert "--redis-shards" in text and "1 is a one-master cluster" in text


def test_a_local_cluster_refuses_a_negative_shard_count() -> None:
    with pytest.raises(ValueError, match="redis_shards"):
        LocalCluster(2, redis_shards=-1)


async def test_redis_cpu_is_read_per_master_process_and_summed() -> None:
    me = os.getpid()
    probe = Probe(redis_url="redis://127.0.0.1:1/0",  # never asked: the pids are
                  redis_shards=[RedisShard("127.0.0.1:1", "0-8191", me),
                                RedisShard("127.0.0.1:2", "8192-16383", me)])
    reading = await probe.sample()
    a, b = reading["redis_shards_cpu"]
    assert a is not None and b is not None and a > 0
    assert reading["redis_cpu"] == pytest.approx(a + b, abs=0.05)
    gone = Probe(redis_shards=[RedisShard("127.0.0.1:1", "0-16383", 2**22 + 1)])
    assert (await gone.sample())["redis_cpu"] is None  # no such process: unknown, not 0


def test_a_steps_server_figures_have_each_shards_cpu() -> None:
    before = {"t": 10.0, "nodes": [], "redis_cpu": 1.0, "redis_shards_cpu": [0.5, 0.5]}
    after = {"t": 12.0, "nodes": [], "redis_cpu": 2.0, "redis_shards_cpu": [1.3, 0.7]}
    server = _server_delta(before, after)
    assert server["redis_cpu_pct"] == pytest.approx(50.0)
    assert [s["cpu_pct"] for s in server["redis_shards"]] == [pytest.approx(40.0),
                                                              pytest.approx(10.0)]
    standalone = _server_delta({"t": 0.0, "nodes": [], "redis_cpu": 1.0},
                               {"t": 1.0, "nodes": [], "redis_cpu": 1.5})
    assert standalone["redis_shards"] == []


def result_with_shards(shards: list[float | None] | None) -> dict[str, Any]:
    server: dict[str, Any] = {"nodes": [{"cpu_pct": 70.0}, {"cpu_pct": 65.0}],
                              "redis_cpu_pct": 24.0, "redis_cpu_s": 0.24,
                              "node_us_per_msg": 100.0, "node_us_per_delivery": 10.0,
                              "redis_us_per_msg": 20.0, "redis_us_per_delivery": 2.0,
                              "redis_shards": [{"cpu_pct": p, "cpu_s": None}
                                               for p in shards or []]}
    step = {"rate": 1000.0, "sent_per_s": 1000.0, "deliveries_per_s": 9000.0, "p50_ms": 1.0,
            "p99_ms": 4.0, "p999_ms": 6.0, "max_ms": 9.0, "lost": 0, "duplicates": 0,
            "late": 0, "corrupted": 0, "disconnects": 0, "gen_cpu_pct": 50.0,
            "server": server, "errors": {}, "byes": {}, "complete": True, "flat_out": 0,
            "hog_state": None, "passed": True, "failed_because": []}
    result: dict[str, Any] = {
        "config": {"clients": 100, "rooms": 30, "targets": ["127.0.0.1:1", "127.0.0.1:2"],
                   "profile": "hubbub", "size": 60, "ramp": False},
        "workers": 1,
        "setup": {"ready": 100, "clients": 100, "seconds": 1.0, "per_second": 100.0,
                  "failures": 0, "errors": 0},
        "steps": [step], "server": {"after": {"nodes": []}}}
    if shards is not None:
        result["redis_shards"] = [
            {"address": f"127.0.0.1:{20000 + i}", "slots": f"{i * 5461}-{i * 5461 + 5460}"}
            for i in range(len(shards))]
    return result


def test_the_report_gives_redis_cpu_per_shard() -> None:
    result = result_with_shards([12.0, 8.5, None])
    assert shards_lines(result) == [
        "  shard 1: master 127.0.0.1:20000, slots 0-5460: Redis CPU 12.0 %",
        "  shard 2: master 127.0.0.1:20001, slots 5461-10921: Redis CPU 8.5 %",
        "  shard 3: master 127.0.0.1:20002, slots 10922-16382: Redis CPU — %"]
    console = Console(record=True, width=300)
    print_report(result, console)
    text = console.export_text()
    assert "Redis Cluster of 3 master(s), Redis CPU per shard" in text
    assert "slots 5461-10921: Redis CPU 8.5 %" in text
    table = Console(record=True, width=300)
    table.print(steps_table(result))
    assert "12 8 —" in table.export_text()  # the redis CPU % column, shard by shard


def test_a_standalone_report_has_no_shard_lines() -> None:
    result = result_with_shards(None)
    assert shards_lines(result) == []
    console = Console(record=True, width=300)
    print_report(result, console)
    assert "Redis Cluster" not in console.export_text()
    table = Console(record=True, width=300)
    table.print(steps_table(result))
    assert " 24 " in table.export_text()
