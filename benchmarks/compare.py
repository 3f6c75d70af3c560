"""hubbub against its two baselines, and hubbub's scale figures, in one command.

    .venv/bin/python benchmarks/compare.py            # writes the tables into docs/PERFORMANCE.md
    .venv/bin/python benchmarks/compare.py --no-write --json /tmp/compare.json

Everything is spawned here and stopped afterwards (redis-server on a free port, nodes,
the baseline servers, the load generator processes).  Measurements, each short:

1. **Throughput** — C = 10, 100, 1000 clients in one room, for hubbub (2 nodes), the
   ceiling server and the tutorial server: a ramp (rate doubled per step) to the highest
   rate whose step had p99 ≤ 50 ms and nothing lost, duplicated, out of order or corrupted.
2. **Isolation** — 20 clients, 1000-byte messages at 1000 msg/s, without and with one
   client that never reads: the others' deliveries/s and p99.
3. **Flat out** — 100 clients in one room each send 200 lines as fast as TCP allows, for
   the three servers: deliveries/s, lines refused, p50/p99.
4. **Scale** (hubbub) — 20,000 idle connections on one node (RSS per connection); 2,000
   rooms x 5 members over 3 nodes (subscribed channels per node, Redis CPU); the highest
   sustained rate with 1, 2 and 3 nodes (100 clients, one room).

The tables go into docs/PERFORMANCE.md between ``<!-- compare:begin -->`` and
``<!-- compare:end -->``; the prose around them stays.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cli.bench.driver import BenchConfig, Observer, run_bench  # noqa: E402
from cli.bench.spawn import BaselineServer, LocalCluster, Probe  # noqa: E402

BEGIN, END = "<!-- compare:begin -->", "<!-- compare:end -->"
SERVERS = ("hubbub", "ceiling", "tutorial")


class _Log(Observer):
    def __init__(self, label: str) -> None:
        self.label = label

    def phase(self, text: str) -> None:
        print(f"  [{self.label}] {text}", file=sys.stderr, flush=True)


@contextlib.asynccontextmanager
async def _server(kind: str, nodes: int = 2) -> AsyncIterator[tuple[list[tuple[str, int]],
                                                                    Probe]]:
    if kind == "hubbub":
        async with LocalCluster(nodes) as cluster:
            yield cluster.targets, cluster.probe
    else:
        async with BaselineServer(kind) as server:
            yield server.targets, server.probe


async def _bench(kind: str, config: BenchConfig, label: str, nodes: int = 2
                 ) -> dict[str, Any]:
    print(f"== {label}", file=sys.stderr, flush=True)
    t0 = time.monotonic()
    async with _server(kind, nodes) as (targets, probe):
        config = replace(config, targets=tuple(targets),
                         profile="hubbub" if kind == "hubbub" else "plain")
        result = await run_bench(config, probe, _Log(label))
    result["elapsed"] = time.monotonic() - t0
    return result


def _ramp(clients: int, quick: bool) -> BenchConfig:
    start = max(1.0, 5000 / max(1, clients - 1))  # about 5,000 deliveries/s
    return BenchConfig(targets=(("127.0.0.1", 0),), clients=clients, rate=start, ramp=True,
                       ramp_factor=2.0, step_seconds=1.0 if quick else 2.0,
                       warmup=0.5, drain_within=3.0, max_steps=14,
                       workers=1, connect_concurrency=200)


async def measure(quick: bool, only: set[str]) -> dict[str, Any]:
    out: dict[str, Any] = {"machine": machine(), "started": _now()}
    sizes = (10, 100) if quick else (10, 100, 1000)
    if "throughput" in only:
        out["throughput"] = {}
        for c in sizes:
            for kind in SERVERS:
                out["throughput"][f"{kind}/{c}"] = await _bench(
                    kind, _ramp(c, quick), f"throughput {kind} C={c}")
    if "latency" in only:
        # a fixed 50,000 deliveries/s: 100 clients in one room, 99 receivers per message
        out["latency"] = {}
        fixed = BenchConfig(targets=(("127.0.0.1", 0),), clients=100, rate=50_000 / 99,
                            duration=4.0 if quick else 8.0, warmup=0.5, drain_within=3.0)
        for kind in SERVERS:
            out["latency"][kind] = await _bench(kind, fixed, f"latency {kind} at 50k/s")
    if "flatout" in only:
        out["flatout"] = {}
        flat = BenchConfig(targets=(("127.0.0.1", 0),), clients=100, rate=0,
                           flat_out=50 if quick else 200, duration=60.0, warmup=0.0,
                           drain_within=30.0, connect_concurrency=200)
        for kind in SERVERS:
            out["flatout"][kind] = await _bench(kind, flat, f"flat out {kind}")
    if "isolation" in only:
        out["isolation"] = {}
        base = BenchConfig(targets=(("127.0.0.1", 0),), clients=20, rate=1000, size=1000,
                           duration=4.0 if quick else 8.0, warmup=0.5, drain_within=3.0)
        for kind in SERVERS:
            for hog in (False, True):
                out["isolation"][f"{kind}/{'hog' if hog else 'none'}"] = await _bench(
                    kind, replace(base, hog=hog), f"isolation {kind} hog={hog}")
    if "idle" in only:
        idle = 2000 if quick else 20000
        out["idle"] = await _bench("hubbub", BenchConfig(
            targets=(("127.0.0.1", 0),), clients=0, idle=idle, rate=0, workers=2,
            connect_concurrency=200, setup_timeout=120.0), f"idle {idle} on one node", 1)
    if "rooms" in only:
        rooms = 200 if quick else 2000
        out["rooms"] = await _bench("hubbub", BenchConfig(
            targets=(("127.0.0.1", 0),), clients=rooms * 5, rooms=rooms, rate=rooms,
            duration=3.0 if quick else 5.0, warmup=0.5, drain_within=5.0, workers=2,
            connect_concurrency=200, setup_timeout=120.0),
            f"{rooms} rooms x 5 over 3 nodes", 3)
    if "nodes" in only:
        out["nodes"] = {}
        for n in (1, 2, 3):
            out["nodes"][str(n)] = await _bench("hubbub", _ramp(100, quick),
                                                f"scale-out {n} node(s)", n)
    out["finished"] = _now()
    return out


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    redis = ""
    if binary := shutil.which("redis-server"):
        redis = subprocess.run([binary, "--version"], capture_output=True, text=True,
                               check=False).stdout.split(" v=")[-1].split(" ")[0]
    try:
        loop = f"uvloop {importlib.metadata.version('uvloop')}"
    except importlib.metadata.PackageNotFoundError:
        loop = "asyncio (no uvloop)"
    return {"cores": os.cpu_count(), "cpu": model, "python": platform.python_version(),
            "redis": redis, "loop": loop, "load_at_start": os.getloadavg(), **_code()}


def _code() -> dict[str, Any]:
    """The commit measured, and whether node/ or cli/ differed from it."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True, cwd=ROOT,
                              check=False).stdout.strip()
    return {"commit": git("rev-parse", "--short", "HEAD"),
            "dirty": bool(git("status", "--porcelain", "--", "node", "cli"))}


# ----------------------------------------------------------------------------- tables

def _n(v: float | None, digits: int = 0) -> str:
    return "—" if v is None else f"{v:,.{digits}f}"


def _ms(v: float | None) -> str:
    if v is None:
        return "—"
    return f"{v:.2f}" if v < 10 else f"{v:,.0f}"


def _fail(result: dict[str, Any]) -> str:
    """The lowest failing rate above the sustained one, and why (retried hiccups at or
    below the sustained rate are mentioned apart)."""
    steps = result.get("steps", [])
    best = result.get("sustained")
    floor = best["rate"] if best else -1.0
    above = [s for s in steps if not s["passed"] and s["rate"] > floor]
    hiccups = sum(1 for s in steps if not s["passed"] and s["rate"] <= floor)
    note = f" ({hiccups} failed step(s) at or below it passed when retried)" if hiccups else ""
    if not above:
        return ("did not fail (max steps)" if steps else result.get("aborted", "no steps")
                ) + note
    f = min(above, key=lambda s: s["rate"])
    return f"at {_n(f['rate'])} msg/s: " + "; ".join(f["failed_because"]) + note


def cpu_per_delivery(step: dict[str, Any] | None) -> float | None:
    """Server CPU microseconds per delivery over a step: the nodes (or the baseline
    server) plus Redis when there is one."""
    if not step:
        return None
    server = step.get("server", {})
    node = server.get("node_us_per_delivery")
    if node is None:
        return None
    return float(node + (server.get("redis_us_per_delivery") or 0.0))


def _ratio(a: float | None, b: float | None) -> str:
    return "—" if a is None or not b else f"{a / b:.2f}x"


def tables(out: dict[str, Any]) -> str:
    m = out["machine"]
    lines = [
        f"Measured {out['started']} to {out['finished']} with `python benchmarks/compare.py`"
        f" on {m['cores']} cores ({m['cpu'] or 'unknown CPU'}), Python {m['python']}, "
        f"Redis {m['redis'] or '?'}, {m['loop']}; load average at start "
        f"{', '.join(f'{x:.2f}' for x in m['load_at_start'])}; commit "
        f"{m.get('commit') or '?'}{' with uncommitted changes' if m.get('dirty') else ''}. "
        "The servers, Redis and the load generator all share these cores.", ""]
    if "throughput" in out:
        lines += ["### Highest sustained rate, one room", "",
                  "| server | clients | msg/s | deliveries/s | p50 ms | p99 ms | gen CPU % "
                  "| server CPU % | server CPU µs/delivery | next step failed |",
                  "|---|--:|--:|--:|--:|--:|--:|--:|--:|---|"]
        by: dict[tuple[str, str], dict[str, Any] | None] = {}
        for key, r in out["throughput"].items():
            kind, c = key.split("/")
            s = r.get("sustained")
            by[kind, c] = s
            cpu = " + ".join(_n(n["cpu_pct"]) for n in s["server"]["nodes"]) if s else "—"
            us = cpu_per_delivery(s)
            lines.append(
                f"| {kind} | {c} | {_n(s and s['rate'])} | {_n(s and s['deliveries_per_s'])} "
                f"| {_ms(s and s['p50_ms'])} | {_ms(s and s['p99_ms'])} "
                f"| {_n(s and s['gen_cpu_pct'])} | {cpu} | {_n(us, 2)} | {_fail(r)} |")
        lines += ["", "Ratios in this run (hubbub's server CPU per delivery counts its nodes "
                  "and Redis; sustained rates are deliveries/s):", "",
                  "| clients | CPU/delivery vs ceiling | sustained vs ceiling "
                  "| sustained vs tutorial |", "|--:|--:|--:|--:|"]
        for c in sorted({c for _, c in by}, key=int):
            h, ce, tu = by.get(("hubbub", c)), by.get(("ceiling", c)), by.get(("tutorial", c))
            lines.append(
                f"| {c} | {_ratio(cpu_per_delivery(h), cpu_per_delivery(ce))} "
                f"| {_ratio(h and h['deliveries_per_s'], ce and ce['deliveries_per_s'])} "
                f"| {_ratio(h and h['deliveries_per_s'], tu and tu['deliveries_per_s'])} |")
        lines.append("")
    if "latency" in out:
        lines += ["### Latency at a fixed 50,000 deliveries/s", "",
                  "100 clients in one room (hubbub: over 2 nodes, so most deliveries cross "
                  "nodes), 505 msg/s in total.", "",
                  "| server | deliveries/s | p50 ms | p99 ms | p99.9 ms | max ms | lost "
                  "| corrupted |", "|---|--:|--:|--:|--:|--:|--:|--:|"]
        p99: dict[str, float] = {}
        for kind, r in out["latency"].items():
            s = r["steps"][0] if r.get("steps") else None
            if s and s.get("p99_ms") is not None:
                p99[kind] = s["p99_ms"]
            lines.append(
                f"| {kind} | {_n(s and s['deliveries_per_s'])} | {_ms(s and s['p50_ms'])} "
                f"| {_ms(s and s['p99_ms'])} | {_ms(s and s.get('p999_ms'))} "
                f"| {_ms(s and s['max_ms'])} | {_n(s and s['lost'])} "
                f"| {_n(s and s['corrupted'])} |")
        if "hubbub" in p99 and p99.get("ceiling"):
            lines += ["", f"hubbub's p99 is {p99['hubbub'] / p99['ceiling']:.1f}x the "
                      "ceiling's at the same load."]
        lines.append("")
    if "flatout" in out:
        lines += ["### Flat out: everyone sends at once", "",
                  "100 clients in one room each send their lines as fast as TCP allows "
                  "(hubbub over 2 nodes); latency counts from the moment a line is handed "
                  "to the socket.", "",
                  "| server | lines per client | deliveries/s | refused | p50 ms | p99 ms "
                  "| lost | corrupted |", "|---|--:|--:|--:|--:|--:|--:|--:|"]
        for kind, r in out["flatout"].items():
            s = r["steps"][0] if r.get("steps") else None
            lines.append(
                f"| {kind} | {_n(s and s['flat_out'])} | {_n(s and s['deliveries_per_s'])} "
                f"| {_n(s and s['refused'])} | {_ms(s and s['p50_ms'])} "
                f"| {_ms(s and s['p99_ms'])} | {_n(s and s['lost'])} "
                f"| {_n(s and s['corrupted'])} |")
        lines.append("")
    if "isolation" in out:
        lines += ["### Isolation: one client that never reads", "",
                  "20 clients, 1000-byte messages, 1000 msg/s in total; the never-reading "
                  "client is a 21st member of the room (receive buffer 4 KiB).", "",
                  "| server | never-reading client | deliveries/s | p50 ms | p99 ms | max ms "
                  "| lost | corrupted | never-reading client at the end |",
                  "|---|---|--:|--:|--:|--:|--:|--:|---|"]
        for key, r in out["isolation"].items():
            kind, hog = key.split("/")
            s = r["steps"][0] if r.get("steps") else None
            gone = "—" if not s or s.get("hog_state") is None else s["hog_state"]
            lines.append(
                f"| {kind} | {'yes' if hog == 'hog' else 'no'} "
                f"| {_n(s and s['deliveries_per_s'])} | {_ms(s and s['p50_ms'])} "
                f"| {_ms(s and s['p99_ms'])} | {_ms(s and s['max_ms'])} | {_n(s and s['lost'])} "
                f"| {_n(s and s['corrupted'])} | {gone} |")
        lines.append("")
    if "idle" in out:
        i = out["idle"].get("idle", {})
        per = i.get("rss_per_connection")
        lines += ["### Scale", "",
                  f"* **Idle connections, one node:** {_n(i.get('ready'))} of "
                  f"{_n(i.get('requested'))} registered in {_n(i.get('seconds'), 1)} s "
                  f"({_n(i.get('per_second'))}/s); node RSS grew "
                  f"{_n((i.get('rss_growth') or 0) / 2**20, 1)} MiB = "
                  + (f"**{per / 1024:.1f} KiB per connection**" if per else "not available")
                  + (f" (refused or failed: {i['failures']})" if i.get("failures") else "")
                  + "."]
    if "rooms" in out:
        r = out["rooms"]
        s = r["steps"][0] if r.get("steps") else None
        chans = [n.get("channels") for n in r["server"]["after"]["nodes"]]
        cfg = r["config"]
        setup = r["setup"]
        if s:
            lines.append(
                f"* **{cfg['rooms']:,} rooms x {cfg['clients'] // cfg['rooms']} members over 3 "
                f"nodes:** {setup['ready']:,} clients set up at {_n(setup['per_second'])}/s; "
                f"subscribed room channels per node {', '.join(_n(c) for c in chans)}; at "
                f"{_n(s['rate'])} msg/s: {_n(s['deliveries_per_s'])} deliveries/s, p99 "
                f"{_ms(s['p99_ms'])} ms, lost {s['lost']}; Redis CPU "
                f"{_n(s['server']['redis_cpu_pct'], 1)} % of a core during the step "
                f"(INFO cpu before/after), nodes "
                f"{' + '.join(_n(n['cpu_pct']) for n in s['server']['nodes'])} %.")
        else:
            lines.append(f"* **{cfg['rooms']:,} rooms:** {r.get('aborted', 'no result')}; "
                         f"set-up {setup}")
    if "nodes" in out:
        parts = []
        for n, r in out["nodes"].items():
            s = r.get("sustained")
            parts.append(f"{n} node{'s' if n != '1' else ''}: "
                         + (f"{_n(s['deliveries_per_s'])} deliveries/s ({_n(s['rate'])} "
                            f"msg/s, p99 {_ms(s['p99_ms'])} ms)" if s else "no step passed"))
        lines.append("* **Scale-out, 100 clients in one room, highest sustained rate:** "
                     + "; ".join(parts) + ".")
    return "\n".join(lines).rstrip() + "\n"


def write_into(doc: Path, text: str) -> None:
    old = doc.read_text() if doc.exists() else f"{BEGIN}\n{END}\n"
    if BEGIN not in old or END not in old:
        old = old.rstrip() + f"\n\n{BEGIN}\n{END}\n"
    head, rest = old.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    doc.write_text(f"{head}{BEGIN}\n{text}{END}{tail}")


def main(argv: list[str] | None = None,
         run: Callable[[bool, set[str]], Any] = measure) -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="smaller and shorter (a smoke test, not figures to publish)")
    ap.add_argument("--only", default="throughput,latency,flatout,isolation,idle,rooms,nodes",
                    help="comma-separated parts to run")
    ap.add_argument("--doc", type=Path, default=ROOT / "docs" / "PERFORMANCE.md")
    ap.add_argument("--no-write", action="store_true", help="print, do not edit the doc")
    ap.add_argument("--json", type=Path, help="also save the raw results here")
    ap.add_argument("--from-json", type=Path,
                    help="do not measure: render results saved earlier with --json")
    args = ap.parse_args(argv)
    only = {p.strip() for p in args.only.split(",") if p.strip()}
    if args.from_json:
        out = json.loads(args.from_json.read_text())
    else:
        out = asyncio.run(run(args.quick, only))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1, default=str))
    text = tables(out)
    print(text)
    if not args.no_write:
        write_into(args.doc, text)
        print(f"written into {args.doc}", file=sys.stderr)


if __name__ == "__main__":
    main()
