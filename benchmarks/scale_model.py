"""A scale-out model of hubbub: deliveries/s and a p99-safe rate for N nodes on C cores.

    .venv/bin/python benchmarks/scale_model.py --validate          # calibrate, then 1-3 nodes
    .venv/bin/python benchmarks/scale_model.py --calibrate --json costs.json
    .venv/bin/python benchmarks/scale_model.py --costs costs.json --cores 8 32 128
    .venv/bin/python benchmarks/scale_model.py --validate --write   # tables into PERFORMANCE.md

Theory of operation
-------------------
Every process's work grows with the message rate, so a process's CPU per chat message is
a constant of the code, and a core saturates when the processes on it need a whole
second of CPU per second.  Per chat message of a room whose members are spread over
``span`` nodes, with ``d`` deliveries (members - 1):

* the node its sender uses pays ``origin`` (read the line, parse, admit, publish);
* each of the ``span`` nodes subscribed to the room pays ``bus`` (receive it from Redis,
  decode, dispatch to the room);
* each delivery costs its recipient's node ``delivery`` (render and write);
* Redis pays ``redis_msg`` (the room script: stream append, publish) plus ``redis_sub``
  per subscribed node (the pub/sub fan-out to that node's connection).

The costs are **measured, never assumed**: :func:`calibrate` runs ``hubbub bench
--flat-out`` style steps (everyone sends as fast as TCP allows, so the costs are those of
a saturated node, with whatever batching the code does under load) at several room
sizes and node counts, reads each process's CPU seconds over the step (``/proc`` for the
nodes, ``INFO cpu`` for Redis, the load generator's own rusage) and solves
``node CPU/msg = origin + nodes x bus + d x delivery``, ``Redis CPU/msg = redis_msg +
nodes x redis_sub`` and ``generator CPU/msg = gen_msg + d x gen_delivery`` by least
squares.  Re-running it after a change of the node code picks the change up.  External
CPU readings cannot split a term further (intake from publish, render from write, a bus
round from a bus message): that takes a profiler.

A prediction (:func:`capacity`) places processes on cores: each core carries at most one
second of CPU per second, shared by the processes pinned to it, and a process is one
thread of Python (or Redis's one main thread), so it never gets more than one core.
The highest message rate is the least, over cores, of 1e6 / (sum of the CPU-µs per
message of the processes on that core).  The **p99-safe** rate is that times
``safe_util``, measured by a ramp (p99 <= 50 ms) against the predicted saturation.

``--validate`` pins processes with ``taskset``/``sched_setaffinity``: on a 2-core
machine the nodes share core 1 and the load generator shares core 0 with Redis (there
is no third core to give the generator its own), and the model is told exactly that.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import itertools
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

__all__ = ["Costs", "Sample", "Workload", "capacity", "fit", "predict_cluster",
           "scale_table", "solve_least_squares"]


# ---------------------------------------------------------------------------------------
# The model: pure arithmetic


@dataclass(frozen=True, slots=True)
class Costs:
    """CPU microseconds per chat message, by component (see the module docstring)."""

    origin: float
    bus: float
    delivery: float
    redis_msg: float
    redis_sub: float
    gen_msg: float = 0.0
    gen_delivery: float = 0.0
    safe_util: float | None = None
    """Share of the saturated rate at which p99 stayed within 50 ms (measured; None when
    no ramp step passed)."""

    def node_us(self, span: int, deliveries: float) -> float:
        """All nodes' CPU for one message of a room over ``span`` nodes."""
        return self.origin + span * self.bus + deliveries * self.delivery

    def redis_us(self, span: int) -> float:
        return self.redis_msg + span * self.redis_sub

    def gen_us(self, deliveries: float) -> float:
        return self.gen_msg + deliveries * self.gen_delivery


@dataclass(frozen=True, slots=True)
class Workload:
    """``rooms`` rooms of ``members`` each, every member sending at the same rate; a room's
    members are spread evenly over ``span`` nodes (``span`` = nodes: the bench layout,
    every room crosses every node; 1: clients routed to their room's node)."""

    nodes: int
    members: int
    span: int
    rooms: int = 1

    def __post_init__(self) -> None:
        if self.nodes < 1 or self.members < 2 or self.rooms < 1:
            raise ValueError("at least one node, one room, two members")
        if not 1 <= self.span <= min(self.nodes, self.members):
            raise ValueError("span between 1 and min(nodes, members)")

    @property
    def deliveries(self) -> int:
        return self.members - 1


@dataclass(frozen=True, slots=True)
class Process:
    """One process of a placement: its CPU-µs per chat message and the cores it may use."""

    name: str
    us_per_msg: float
    cores: frozenset[int]


def capacity(processes: Sequence[Process]) -> tuple[float, str]:
    """Highest message rate (msg/s) the placement carries, and what limits it.

    Checked: each process alone (one thread: one core at most), each set of cores some
    process is pinned to (shared by every process pinned within it), and all the cores
    together.  That is exact when pinned core sets are disjoint or nested, as every
    placement here is."""
    best = float("inf")
    limit = "nothing"
    for p in processes:
        if p.us_per_msg > 0 and 1e6 / p.us_per_msg < best:
            best = 1e6 / p.us_per_msg
            limit = f"a {p.name.rstrip('0123456789')} process (one thread)"
    sets = {p.cores for p in processes}
    sets.add(frozenset().union(*sets) if sets else frozenset())
    for cores in sorted(sets, key=sorted):
        inside = [p for p in processes if p.cores <= cores]
        load = sum(p.us_per_msg for p in inside)
        if load > 0 and 1e6 * len(cores) / load < best:
            names = list(dict.fromkeys(p.name.rstrip("0123456789") for p in inside))
            best = 1e6 * len(cores) / load
            where = (f"core {min(cores)}" if len(cores) == 1
                     else f"{len(cores)} cores")
            limit = f"{where} ({' + '.join(names)})"
    return best, limit


def node_processes(costs: Costs, w: Workload, cores: Sequence[frozenset[int]]
                   ) -> list[Process]:
    """The nodes of a balanced workload: each carries 1/nodes of the rooms' senders and
    recipients, and receives over the bus every message of the rooms it has members in
    (span/nodes of all messages)."""
    per_node = (costs.origin + w.span * costs.bus + w.deliveries * costs.delivery) / w.nodes
    return [Process(f"node{i + 1}", per_node, cores[i % len(cores)]) for i in range(w.nodes)]


@dataclass(frozen=True, slots=True)
class Prediction:
    msg_per_s: float
    deliveries_per_s: float
    safe_deliveries_per_s: float | None
    limit: str


def predict(costs: Costs, w: Workload, processes: Sequence[Process]) -> Prediction:
    rate, limit = capacity(processes)
    safe = None if costs.safe_util is None else rate * w.deliveries * costs.safe_util
    return Prediction(rate, rate * w.deliveries, safe, limit)


def predict_bench(costs: Costs, w: Workload, node_cores: Sequence[frozenset[int]],
                  side_cores: frozenset[int]) -> Prediction:
    """A validation run: nodes on ``node_cores`` (round-robin), Redis and the load generator
    on ``side_cores``."""
    procs = [*node_processes(costs, w, node_cores),
             Process("redis", costs.redis_us(w.span), side_cores),
             Process("generator", costs.gen_us(w.deliveries), side_cores)]
    return predict(costs, w, procs)


def predict_cluster(costs: Costs, w: Workload, cores: int, shards: int = 1) -> Prediction:
    """``cores`` cores, ``shards`` of them for Redis (one each, rooms spread evenly over the
    shards), one node per remaining core; clients elsewhere."""
    if cores - shards < w.nodes:
        raise ValueError("one core per node and per Redis shard")
    procs = [*node_processes(costs, w, [frozenset({shards + i}) for i in range(w.nodes)]),
             *(Process(f"redis{s + 1}", costs.redis_us(w.span) / shards, frozenset({s}))
               for s in range(shards))]
    return predict(costs, w, procs)


def redis_bound_nodes(costs: Costs, members: int, span_of: Any) -> int | None:
    """The smallest node count at which one Redis, not the nodes, limits the rate
    (``span_of(nodes)`` gives the span at that count); None if not below 100,000."""
    for n in itertools.chain(range(1, 1000), range(1000, 100_001, 100)):
        w = Workload(n, members, span_of(n))
        nodes = 1e6 * n / costs.node_us(w.span, w.deliveries)
        if nodes >= 1e6 / costs.redis_us(w.span):
            return n
    return None


def scale_table(costs: Costs, cores: Sequence[int], scenarios: Sequence[tuple[str, int, Any]]
                ) -> list[dict[str, Any]]:
    """Rows for each scenario (name, members, span as a function of nodes) and core count:
    one Redis core, a node on each other core."""
    rows = []
    for name, members, span_of in scenarios:
        bound = redis_bound_nodes(costs, members, span_of)
        for c in cores:
            n = c - 1
            w = Workload(n, members, span_of(n))
            p = predict_cluster(costs, w, c)
            rows.append({"scenario": name, "cores": c, "nodes": n, "span": w.span,
                         "msg_per_s": p.msg_per_s, "deliveries_per_s": p.deliveries_per_s,
                         "safe_deliveries_per_s": p.safe_deliveries_per_s, "limit": p.limit,
                         "redis_bound_at_nodes": bound})
    return rows


SCENARIOS: tuple[tuple[str, int, Any], ...] = (
    ("one room of 100, members on every node", 100, lambda n: min(n, 100)),
    ("rooms of 10, members on up to 10 nodes", 10, lambda n: min(n, 10)),
    ("rooms of 10, each room's members on one node", 10, lambda n: 1),
)


# ---------------------------------------------------------------------------------------
# Fitting the costs to measurements


@dataclass(frozen=True, slots=True)
class Sample:
    """One calibration step: the counts and each side's CPU seconds over it."""

    nodes: int
    clients: int
    sent: int
    deliveries: int
    node_cpu_s: float
    redis_cpu_s: float
    gen_cpu_s: float

    @property
    def per_msg(self) -> float:
        return self.deliveries / self.sent


def solve_least_squares(rows: Sequence[Sequence[float]], ys: Sequence[float]
                        ) -> list[float]:
    """x minimising |A x - y|², from the normal equations (Gauss-Jordan, partial pivoting).
    Raises ValueError when the columns are not independent."""
    k = len(rows[0])
    m = [[sum(r[i] * r[j] for r in rows) for j in range(k)]
         + [sum(r[i] * y for r, y in zip(rows, ys, strict=True))] for i in range(k)]
    for col in range(k):
        piv = max(range(col, k), key=lambda r: abs(m[r][col]))
        if abs(m[piv][col]) < 1e-12 * max(1.0, max(abs(v) for row in m for v in row[:k])):
            raise ValueError("the measurements do not tell these costs apart")
        m[col], m[piv] = m[piv], m[col]
        for r in range(k):
            if r != col:
                f = m[r][col] / m[col][col]
                m[r] = [a - f * b for a, b in zip(m[r], m[col], strict=True)]
    return [m[i][k] / m[i][i] for i in range(k)]


def fit_nonnegative(rows: Sequence[Sequence[float]], ys: Sequence[float]) -> list[float]:
    """Least squares with every coefficient >= 0: the best fit over subsets of the columns
    (a cost measured below zero is noise; it is set to 0 and the others refitted)."""
    k = len(rows[0])
    best: tuple[float, list[float]] | None = None
    for size in range(k, 0, -1):
        for cols in itertools.combinations(range(k), size):
            try:
                sub = solve_least_squares([[r[c] for c in cols] for r in rows], ys)
            except ValueError:
                continue
            if any(v < 0 for v in sub):
                continue
            x = [0.0] * k
            for c, v in zip(cols, sub, strict=True):
                x[c] = v
            err = sum((sum(a * b for a, b in zip(r, x, strict=True)) - y) ** 2
                      for r, y in zip(rows, ys, strict=True))
            if best is None or err < best[0]:
                best = (err, x)
    if best is None:
        raise ValueError("no non-negative fit")
    return best[1]


def _relative(rows: list[list[float]], ys: list[float]) -> list[float]:
    """Least squares of the relative error (each row divided by its measurement), so a
    small room's few microseconds weigh as much as a large room's hundreds."""
    keep = [(r, y) for r, y in zip(rows, ys, strict=True) if y > 0]
    return fit_nonnegative([[v / y for v in r] for r, y in keep], [1.0] * len(keep))


def fit(samples: Sequence[Sample], safe_util: float | None = None) -> Costs:
    """The costs that best explain the samples (each sample: every node holds members of
    the one room, so span = nodes)."""
    flat = list(samples)
    node = _relative([[1.0, s.nodes, s.per_msg] for s in flat],
                     [1e6 * s.node_cpu_s / s.sent for s in flat])
    redis = _relative([[1.0, s.nodes] for s in flat],
                      [1e6 * s.redis_cpu_s / s.sent for s in flat])
    gen = _relative([[1.0, s.per_msg] for s in flat],
                    [1e6 * s.gen_cpu_s / s.sent for s in flat])
    return Costs(origin=node[0], bus=node[1], delivery=node[2], redis_msg=redis[0],
                 redis_sub=redis[1], gen_msg=gen[0], gen_delivery=gen[1],
                 safe_util=safe_util)


# ---------------------------------------------------------------------------------------
# Measuring


@dataclass(slots=True)
class Pinning:
    """Which cores the nodes get, and which the load generator and Redis share."""

    node_cores: list[frozenset[int]]
    side_cores: frozenset[int]
    notes: list[str] = field(default_factory=list)

    @classmethod
    def for_machine(cls) -> Pinning:
        cores = sorted(os.sched_getaffinity(0))
        if len(cores) < 2:
            return cls([frozenset(cores)], frozenset(cores),
                       ["one core: nothing to pin, every process shares it"])
        if len(cores) == 2:
            return cls([frozenset({cores[1]})], frozenset({cores[0]}),
                       [f"2 cores: all nodes share core {cores[1]}; the load generator and "
                        f"Redis share core {cores[0]}"])
        # generator and Redis share the first two cores, each node gets one of the rest
        return cls([frozenset({c}) for c in cores[2:]], frozenset(cores[:2]),
                   [f"generator and Redis on cores {cores[0]},{cores[1]}; nodes on "
                    f"{','.join(map(str, cores[2:]))}"])


def _taskset(pid: int, cores: frozenset[int]) -> None:
    """Pin every thread of ``pid`` (``taskset -a -p -c``)."""
    spec = ",".join(map(str, sorted(cores)))
    if shutil.which("taskset"):
        subprocess.run(["taskset", "-a", "-p", "-c", spec, str(pid)], check=True,
                       stdout=subprocess.DEVNULL)
    else:
        for tid in os.listdir(f"/proc/{pid}/task"):
            os.sched_setaffinity(int(tid), cores)


MAX_STEP_MESSAGES = 8_000
"""Flat-out steps stay short: a node that reads faster than it relays queues the rest, and
a line queued past its deadline is refused (its intake then counts, its relay not, and
the drain waits for deliveries that never come).  8,000 messages is about one second of
a node's relaying (``hubbub bench --flat-out`` refused lines from ~15,000 on a loaded
machine)."""


def _lines_per_client(clients: int, budget: int) -> int:
    """Flat-out lines per client for about ``budget`` deliveries in the step (and at most
    ``MAX_STEP_MESSAGES`` messages)."""
    return max(20, min(budget // (clients * (clients - 1)), MAX_STEP_MESSAGES // clients))


async def flat_step(nodes: int, clients: int, budget: int, pin: Pinning,
                    log: Any) -> dict[str, Any]:
    """Start Redis + ``nodes`` nodes (pinned), run one flat-out step, return its figures."""
    from cli.bench.driver import BenchConfig

    config = BenchConfig(targets=(("127.0.0.1", 0),), clients=clients, rate=0,
                         flat_out=_lines_per_client(clients, budget), duration=30.0,
                         warmup=0.0, drain_within=10.0, connect_concurrency=200)
    return await _one(nodes, config, pin, log)


async def ramp_step(nodes: int, clients: int, start_msg_s: float, pin: Pinning,
                    log: Any) -> dict[str, Any]:
    """The highest rate with p99 <= 50 ms (a ramp from ``start_msg_s``, x1.3 per step)."""
    from cli.bench.driver import BenchConfig

    config = BenchConfig(targets=(("127.0.0.1", 0),), clients=clients, ramp=True,
                         rate=max(1.0, start_msg_s), ramp_factor=1.3, step_seconds=1.5,
                         warmup=0.5, drain_within=3.0, max_steps=8, ramp_refine=1,
                         ramp_retries=1, connect_concurrency=200)
    result = await _one(nodes, config, pin, log)
    if result.get("sustained") is None:  # the first step already failed: start lower once
        result = await _one(nodes, replace(config, rate=max(1.0, start_msg_s / 4)), pin, log)
    return result


def core_times() -> dict[int, tuple[float, float]]:
    """Per core: (busy, total) jiffies from /proc/stat, every process on the machine."""
    out = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/stat").read_text().splitlines():
            name, *vals = line.split()
            if name.startswith("cpu") and name[3:].isdigit():
                v = [float(x) for x in vals]
                idle = v[3] + (v[4] if len(v) > 4 else 0.0)
                out[int(name[3:])] = (sum(v[:8]) - idle, sum(v[:8]))
    return out


def busy_pct(before: dict[int, tuple[float, float]], after: dict[int, tuple[float, float]]
             ) -> dict[int, float]:
    return {c: 100 * (after[c][0] - before[c][0]) / (after[c][1] - before[c][1])
            for c in after if c in before and after[c][1] > before[c][1]}


async def _one(nodes: int, config: Any, pin: Pinning, log: Any) -> dict[str, Any]:
    from cli.bench.driver import run_bench
    from cli.bench.spawn import LocalCluster

    async with LocalCluster(nodes) as cluster:
        for i, node in enumerate(cluster.probe.nodes):
            assert node.pid is not None
            _taskset(node.pid, pin.node_cores[i % len(pin.node_cores)])
        config = replace(config, targets=tuple(cluster.targets))
        before = core_times()
        result = await run_bench(config, cluster.probe, log)
        result["core_busy_pct"] = busy_pct(before, core_times())
        return result


def sample_of(nodes: int, clients: int, step: dict[str, Any]) -> Sample:
    server = step["server"]
    node_s = sum(n["cpu_s"] or 0.0 for n in server["nodes"])
    gen_s = step["gen_cpu_pct"] / 100 * server["seconds"]
    return Sample(nodes, clients, step["sent"], step["deliveries"], node_s,
                  server["redis_cpu_s"] or 0.0, gen_s)


class _Log:
    started = time.monotonic()

    def __init__(self, label: str) -> None:
        self.label = label

    def phase(self, text: str) -> None:
        print(f"{time.monotonic() - self.started:5.0f} s [{self.label}] {text}",
              file=sys.stderr, flush=True)

    def step(self, rate: float, seconds: float) -> None:
        pass

    def progress(self, sent: int, deliveries: int, p99_ms: float | None) -> None:
        pass


CALIBRATION = ((1, 6), (1, 80), (2, 6), (2, 40), (3, 20))
"""(nodes, clients in one room) of the calibration steps: none is a validation case."""
VALIDATION = (10, 100)
"""Clients in one room for the validation cases (each with 1, 2 and 3 nodes)."""
RAMP_CLIENTS = 40


async def calibrate(pin: Pinning, budget: int) -> tuple[Costs, list[dict[str, Any]]]:
    samples: list[Sample] = []
    runs = []
    for nodes, clients in CALIBRATION:
        step = await flat_step(nodes, clients, budget, pin,
                               _Log(f"calibrate {nodes} node(s), {clients} clients"))
        s = _only_step(step)
        samples.append(sample_of(nodes, clients, s))
        runs.append({"nodes": nodes, "clients": clients, **_brief(s)})
    costs = fit(samples)
    # p99-safe share: a ramp on one node against the rate the model says saturates it
    clients = RAMP_CLIENTS
    w = Workload(1, clients, 1)
    sat = predict_bench(costs, w, pin.node_cores, pin.side_cores)
    result = await ramp_step(1, clients, 0.3 * sat.msg_per_s, pin,
                             _Log(f"p99 ramp 1 node, {clients} clients"))
    sustained = result.get("sustained")
    if sustained:
        costs = replace(costs, safe_util=min(1.0, sustained["sent_per_s"] / sat.msg_per_s))
        runs.append({"nodes": 1, "clients": clients, "ramp": True, **_brief(sustained)})
    else:
        print("no ramp step passed (p99 > 50 ms from the lowest rate): no p99-safe share",
              file=sys.stderr)
    return costs, runs


def _only_step(result: dict[str, Any]) -> dict[str, Any]:
    if not result.get("steps"):
        raise RuntimeError(f"no step ran: {result.get('aborted', result.get('setup'))}")
    step: dict[str, Any] = result["steps"][-1]
    return step


def _brief(step: dict[str, Any]) -> dict[str, Any]:
    server = step["server"]
    return {"sent": step["sent"], "deliveries": step["deliveries"],
            "deliveries_per_s": step["deliveries_per_s"], "sent_per_s": step["sent_per_s"],
            "refused": step["refused"], "p99_ms": step["p99_ms"], "lost": step["lost"],
            "node_cpu_pct": [n["cpu_pct"] for n in server["nodes"]],
            "redis_cpu_pct": server["redis_cpu_pct"], "gen_cpu_pct": step["gen_cpu_pct"],
            "node_us_per_msg": server.get("node_us_per_msg"),
            "redis_us_per_msg": server.get("redis_us_per_msg")}


async def validate(costs: Costs, pin: Pinning, budget: int, ramps: bool
                   ) -> list[dict[str, Any]]:
    rows = []
    for clients in VALIDATION:
        for nodes in (1, 2, 3):
            w = Workload(nodes, clients, nodes)
            pred = predict_bench(costs, w, pin.node_cores, pin.side_cores)
            label = f"validate {nodes} node(s), {clients} clients"
            result = await flat_step(nodes, clients, budget, pin, _Log(label))
            step = _only_step(result)
            row: dict[str, Any] = {"nodes": nodes, "clients": clients,
                                   "predicted": pred.deliveries_per_s, "limit": pred.limit,
                                   "measured": step["deliveries_per_s"], **_brief(step),
                                   "predicted_safe": pred.safe_deliveries_per_s,
                                   "measured_safe": None,
                                   "core_busy_pct": result["core_busy_pct"]}
            if ramps:
                res = await ramp_step(nodes, clients,
                                      0.6 * pred.msg_per_s * (costs.safe_util or 0.5), pin,
                                      _Log(f"p99 ramp {nodes} node(s), {clients} clients"))
                if res.get("sustained"):
                    row["measured_safe"] = res["sustained"]["deliveries_per_s"]
            rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------
# Output


def _n(v: float | None) -> str:
    return "—" if v is None else f"{v:,.0f}"


def _err(pred: float | None, meas: float | None) -> str:
    if not pred or not meas:
        return "—"
    return f"{100 * (pred - meas) / meas:+.0f} %"


def costs_table(c: Costs) -> str:
    return "\n".join([
        "| component | CPU-µs |", "| --- | --: |",
        f"| node: intake + publish, per message (origin) | {c.origin:.2f} |",
        f"| node: bus receive + dispatch, per message per subscribed node | {c.bus:.2f} |",
        f"| node: render + write, per delivery | {c.delivery:.3f} |",
        f"| Redis: per message | {c.redis_msg:.2f} |",
        f"| Redis: per message per subscribed node | {c.redis_sub:.2f} |",
        f"| load generator: per message | {c.gen_msg:.2f} |",
        f"| load generator: per delivery | {c.gen_delivery:.3f} |",
        "| p99-safe share of saturation | "
        f"{'not measured' if c.safe_util is None else f'{c.safe_util:.2f}'} |"])


def validation_table(rows: Sequence[dict[str, Any]]) -> str:
    out = ["| clients | nodes | predicted deliveries/s | measured | error | predicted limit "
           "| nodes' CPU % | Redis + generator % | cores busy % (everything) | refused "
           "| p99-safe predicted | measured | error |",
           "| --: | --: | --: | --: | --: | --- | --: | --: | --- | --: | --: | --: | --: |"]
    for r in rows:
        nodes = sum(p or 0.0 for p in r["node_cpu_pct"])
        side = (r["redis_cpu_pct"] or 0.0) + r["gen_cpu_pct"]
        busy = " / ".join(f"{v:.0f}" for _, v in sorted(r.get("core_busy_pct", {}).items()))
        out.append(f"| {r['clients']} | {r['nodes']} | {_n(r['predicted'])} | "
                   f"{_n(r['measured'])} | {_err(r['predicted'], r['measured'])} | "
                   f"{r['limit']} | {nodes:.0f} | {side:.0f} | {busy or '—'} | "
                   f"{r['refused']:,} | "
                   f"{_n(r['predicted_safe'])} | {_n(r['measured_safe'])} | "
                   f"{_err(r['predicted_safe'], r['measured_safe'])} |")
    return "\n".join(out)


def prediction_table(rows: Sequence[dict[str, Any]]) -> str:
    out = ["| workload | cores | nodes | deliveries/s | p99-safe | limit | one Redis limits "
           "from |", "| --- | --: | --: | --: | --: | --- | --- |"]
    for r in rows:
        bound = r["redis_bound_at_nodes"]
        out.append(f"| {r['scenario']} | {r['cores']} | {r['nodes']} | "
                   f"{_n(r['deliveries_per_s'])} | {_n(r['safe_deliveries_per_s'])} | "
                   f"{r['limit']} | {'—' if bound is None else f'{bound} nodes'} |")
    return "\n".join(out)


BEGIN, END = "<!-- scale-model:begin -->", "<!-- scale-model:end -->"
DOC = ROOT / "docs" / "PERFORMANCE.md"


def write_into(doc: Path, text: str) -> None:
    """Replace what is between the markers in ``doc`` (the prose around them stays)."""
    body = doc.read_text()
    head, sep, rest = body.partition(BEGIN)
    _, sep2, tail = rest.partition(END)
    if not sep or not sep2:
        raise SystemExit(f"{doc}: markers {BEGIN} ... {END} not found")
    doc.write_text(f"{head}{BEGIN}\n{text.strip()}\n{END}{tail}")


def _code() -> str:
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                              check=True, capture_output=True, text=True).stdout.strip()
    return "unknown"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calibrate", action="store_true", help="measure the costs")
    ap.add_argument("--validate", action="store_true",
                    help="calibrate, then 1, 2 and 3 nodes pinned: predicted vs measured")
    ap.add_argument("--costs", type=Path, help="costs from an earlier --json (no measuring)")
    ap.add_argument("--cores", type=int, nargs="*", default=[8, 32, 128])
    ap.add_argument("--budget", type=int, default=600_000,
                    help="deliveries per flat-out step (default 600,000; at most "
                         f"{MAX_STEP_MESSAGES:,} messages)")
    ap.add_argument("--no-ramps", action="store_true",
                    help="validation: skip the p99 ramps (measured p99-safe rate)")
    ap.add_argument("--json", type=Path, help="write costs, runs and tables here")
    ap.add_argument("--write", action="store_true",
                    help="put the tables into docs/PERFORMANCE.md between "
                         f"{BEGIN} and {END}")
    args = ap.parse_args(argv)
    t0 = time.monotonic()
    out: dict[str, Any] = {"code": _code(), "started": datetime.datetime.now(
        datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")}
    if args.costs:
        doc = json.loads(args.costs.read_text())
        costs = Costs(**doc["costs"])
        for key in ("started", "code", "pinning", "calibration", "validation"):
            if key in doc:  # the tables of the run that measured these costs
                out[key] = doc[key]
    elif args.calibrate or args.validate:
        pin = Pinning.for_machine()
        os.sched_setaffinity(0, pin.side_cores)  # the generator and Redis inherit it
        out["pinning"] = pin.notes
        print("pinning: " + "; ".join(pin.notes), file=sys.stderr)
        costs, out["calibration"] = asyncio.run(calibrate(pin, args.budget))
        if args.validate:
            out["validation"] = asyncio.run(validate(costs, pin, args.budget,
                                                     not args.no_ramps))
    else:
        ap.error("give --calibrate, --validate or --costs FILE")
    out["costs"] = asdict(costs)
    print(f"costs (code {out['code']}):\n{costs_table(costs)}\n")
    if "validation" in out:
        print("validation (" + "; ".join(out["pinning"]) + "):")
        print(validation_table(out["validation"]) + "\n")
    rows = scale_table(costs, args.cores, SCENARIOS)
    out["prediction"] = rows
    print("prediction (one Redis core, one node per other core, clients elsewhere):")
    print(prediction_table(rows))
    if args.write:
        parts = [f"Run of {out['started']}, code {out['code']}"
                 + (f"; {'; '.join(out['pinning'])}" if out.get("pinning") else "") + ".",
                 "Measured costs:", costs_table(costs)]
        if "validation" in out:
            parts += ["Validation, one room, flat out (predicted vs measured):",
                      validation_table(out["validation"])]
        parts += ["Prediction, one Redis core and one node per other core:",
                  prediction_table(rows)]
        write_into(DOC, "\n\n".join(parts))
    out["elapsed_s"] = time.monotonic() - t0
    print(f"\n({out['elapsed_s']:.0f} s)", file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
