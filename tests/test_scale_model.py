"""The arithmetic of benchmarks/scale_model.py: fitting costs, placing processes on cores,
predicting a cluster (no process is started here)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("scale_model",
                                                  ROOT / "benchmarks" / "scale_model.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["scale_model"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


sm = _load()
COSTS = sm.Costs(origin=50.0, bus=20.0, delivery=1.0, redis_msg=10.0, redis_sub=2.0,
                 gen_msg=5.0, gen_delivery=3.0, safe_util=0.5)


def test_least_squares_recovers_exact_coefficients() -> None:
    rows = [[1.0, 1, 9], [1.0, 1, 49], [1.0, 2, 9], [1.0, 2, 49], [1.0, 3, 19]]
    ys = [50 + 20 * n + 1.5 * d for _, n, d in rows]
    assert sm.solve_least_squares(rows, ys) == pytest.approx([50, 20, 1.5])


def test_least_squares_refuses_columns_it_cannot_tell_apart() -> None:
    with pytest.raises(ValueError, match="tell these costs apart"):
        sm.solve_least_squares([[1.0, 2.0], [2.0, 4.0]], [1.0, 2.0])


def test_a_cost_measured_below_zero_is_set_to_zero_and_the_rest_refitted() -> None:
    rows = [[1.0, 1.0], [1.0, 2.0], [1.0, 3.0]]
    ys = [10.0, 9.0, 8.0]  # a falling line: the slope would be negative
    x = sm.fit_nonnegative(rows, ys)
    assert x[1] == 0
    assert x[0] == pytest.approx(9.0)


def _sample(nodes: int, clients: int, sent: int = 10_000) -> object:
    d = clients - 1
    return sm.Sample(nodes=nodes, clients=clients, sent=sent, deliveries=sent * d,
                     node_cpu_s=sent * COSTS.node_us(nodes, d) / 1e6,
                     redis_cpu_s=sent * COSTS.redis_us(nodes) / 1e6,
                     gen_cpu_s=sent * COSTS.gen_us(d) / 1e6)


def test_fit_recovers_the_costs_the_samples_were_made_from() -> None:
    samples = [_sample(n, c) for n, c in sm.CALIBRATION]
    got = sm.fit(samples, safe_util=0.5)
    for name in ("origin", "bus", "delivery", "redis_msg", "redis_sub", "gen_msg",
                 "gen_delivery", "safe_util"):
        assert getattr(got, name) == pytest.approx(getattr(COSTS, name)), name


def test_one_process_never_gets_more_than_one_core() -> None:
    proc = sm.Process("node1", 100.0, frozenset({0, 1, 2, 3}))
    rate, limit = sm.capacity([proc])
    assert rate == pytest.approx(10_000)
    assert "one thread" in limit


def test_processes_pinned_to_one_core_share_it() -> None:
    one = frozenset({1})
    rate, limit = sm.capacity([sm.Process("node1", 100.0, one),
                               sm.Process("node2", 100.0, one),
                               sm.Process("redis", 10.0, frozenset({0}))])
    assert rate == pytest.approx(5_000)
    assert limit == "core 1 (node)"


def test_bench_validation_two_cores_names_the_busier_core() -> None:
    # 100 clients: the generator's 5 + 99 x 3 µs and Redis's 10 + 2n µs share core 0;
    # nodes share core 1 with 50 + 20n + 99 µs per message in all
    w = sm.Workload(nodes=2, members=100, span=2)
    pred = sm.predict_bench(COSTS, w, [frozenset({1})], frozenset({0}))
    core0 = 5 + 99 * 3 + 10 + 2 * 2
    core1 = 50 + 20 * 2 + 99
    assert core0 > core1
    assert pred.msg_per_s == pytest.approx(1e6 / core0)
    assert pred.deliveries_per_s == pytest.approx(99e6 / core0)
    assert pred.safe_deliveries_per_s == pytest.approx(0.5 * 99e6 / core0)
    assert pred.limit == "core 0 (redis + generator)"


def test_nodes_on_their_own_cores_share_the_work_of_a_balanced_room() -> None:
    w = sm.Workload(nodes=4, members=100, span=4)
    pred = sm.predict_cluster(COSTS, w, cores=5)
    per_node = (50 + 4 * 20 + 99) / 4
    assert pred.msg_per_s == pytest.approx(1e6 / max(per_node, COSTS.redis_us(4)))
    assert "node" in pred.limit


def test_redis_limits_once_the_nodes_outgrow_it() -> None:
    def span_of(n: int) -> int:
        return 1

    n = sm.redis_bound_nodes(COSTS, 10, span_of)
    # per node 1e6 n / (50 + 20 + 9) msg/s against Redis's 1e6 / 12
    assert n == 7
    w = sm.Workload(nodes=n, members=10, span=1)
    assert sm.predict_cluster(COSTS, w, cores=n + 1).limit.startswith("a redis")
    # two shards double what Redis takes
    w2 = sm.Workload(nodes=10, members=10, span=1)
    assert (sm.predict_cluster(COSTS, w2, cores=12, shards=2).msg_per_s
            > sm.predict_cluster(COSTS, w2, cores=11).msg_per_s)


def test_workload_rejects_a_span_it_cannot_have() -> None:
    with pytest.raises(ValueError, match="span"):
        sm.Workload(nodes=2, members=10, span=3)
    with pytest.raises(ValueError, match="two members"):
        sm.Workload(nodes=2, members=1, span=1)


def test_scale_table_has_a_row_per_scenario_and_core_count() -> None:
    rows = sm.scale_table(COSTS, [8, 32], sm.SCENARIOS)
    assert len(rows) == 2 * len(sm.SCENARIOS)
    assert all(r["nodes"] == r["cores"] - 1 for r in rows)
    text = sm.prediction_table(rows)
    assert text.count("\n") == len(rows) + 1


def test_flat_out_steps_stay_short() -> None:
    assert sm._lines_per_client(10, 600_000) * 10 <= sm.MAX_STEP_MESSAGES
    assert sm._lines_per_client(100, 600_000) == 60
    assert sm._lines_per_client(10, 600_000) == sm.MAX_STEP_MESSAGES // 10


def test_tables_go_between_the_markers_and_the_prose_stays(tmp_path: Path) -> None:
    doc = tmp_path / "PERFORMANCE.md"
    doc.write_text(f"before\n{sm.BEGIN}\nold table\n{sm.END}\nafter\n")
    sm.write_into(doc, "new table\n")
    assert doc.read_text() == f"before\n{sm.BEGIN}\nnew table\n{sm.END}\nafter\n"
    doc.write_text("no markers\n")
    with pytest.raises(SystemExit, match="markers"):
        sm.write_into(doc, "x")


def test_no_p99_safe_figure_without_a_measured_share() -> None:
    from dataclasses import replace

    w = sm.Workload(nodes=2, members=10, span=2)
    pred = sm.predict_cluster(replace(COSTS, safe_util=None), w, cores=3)
    assert pred.safe_deliveries_per_s is None
    assert "not measured" in sm.costs_table(replace(COSTS, safe_util=None))
