"""The driver: load generator processes, a fixed rate or a ramp, and merged figures.

Theory of operation
-------------------
* The clients are split evenly over ``workers`` processes (:mod:`.worker`), each talking
  JSON lines over its stdin/stdout.  All commands go to every worker at once and the driver
  waits for every reply, so steps start and end together.
* A *step* is: run at a rate for some seconds → add up what each worker's senders sent,
  by room → tell every worker to drain (wait until its receivers got what their rooms'
  other members sent, or a timeout) → merge the workers' figures with the server-side
  readings taken before and after.
* ``--rate`` is the total of messages per second over all clients; every client sends an
  equal share.  A ramp multiplies the rate by ``ramp_factor`` after every step that
  *passed* — p99 within the bound, nothing lost, duplicated, out of order, corrupted or
  disconnected, and the senders kept to the schedule.  A failed step is run once more
  at the same rate (``ramp_retries``).  After the first failure the ramp bisects between
  the last rate that passed and the one that failed (``ramp_refine`` more steps).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import math
import os
import secrets
import sys
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any

from .histogram import Histogram
from .loadgen import GenSpec
from .spawn import Probe
from .worker import spec_to_json

__all__ = ["BenchConfig", "Observer", "StepResult", "run_bench"]

_ROOT = str(Path(__file__).resolve().parents[2])
SCHEDULE_KEPT = 0.95
"""A step whose senders sent less than this share of the schedule did not keep it."""


@dataclass(frozen=True, slots=True)
class BenchConfig:
    targets: tuple[tuple[str, int], ...]
    clients: int = 100
    rooms: int = 1
    rate: float = 100.0
    """Total messages per second over all clients (the first rate of a ramp)."""
    duration: float = 10.0
    ramp: bool = False
    p99_bound_ms: float = 50.0
    step_seconds: float = 3.0
    ramp_factor: float = 1.5
    max_steps: int = 20
    ramp_refine: int = 2
    """After the first failure, bisect between it and the last pass this many times."""
    ramp_retries: int = 1
    """A failed ramp step runs again at the same rate this many times (a hiccup of a shared
    machine is not a limit)."""
    warmup: float = 1.0
    drain_within: float = 5.0
    size: int = 60
    idle: int = 0
    hog: bool = False
    workers: int = 1
    profile: str = "hubbub"
    connect_concurrency: int = 100
    setup_timeout: float = 60.0
    flat_out: int = 0
    """Instead of a rate: every client writes this many lines as fast as TCP allows (one
    step; ``duration`` is its time limit)."""

    def __post_init__(self) -> None:
        if self.clients < 2 and (self.clients or not self.idle):
            raise ValueError("at least 2 clients (or 0 clients with --idle)")
        if self.workers < 1:
            raise ValueError("at least one worker")
        if self.rooms < 1 or (self.clients and self.rooms > self.clients // 2):
            raise ValueError("rooms must be between 1 and clients / 2 (two members each)")
        if self.profile == "plain" and self.rooms != 1:
            raise ValueError("the baseline servers (--plain) have one room")
        if self.rate < 0 or self.duration <= 0 or self.ramp_factor <= 1:
            raise ValueError("rate >= 0, duration > 0, ramp factor > 1")
        if self.flat_out < 0 or (self.flat_out and self.ramp):
            raise ValueError("--flat-out takes a line count and no --ramp")


class Observer:
    """What the driver reports while it runs (the CLI draws a progress bar from it)."""

    def phase(self, text: str) -> None:
        """A new phase began (``"connecting 100 clients"``, ``"step 3 at 450 msg/s"``)."""

    def step(self, rate: float, seconds: float) -> None:
        """A timed step began."""

    def progress(self, sent: int, deliveries: int, p99_ms: float | None) -> None:
        """Running totals of the current step."""


@dataclass(slots=True)
class StepResult:
    rate: float
    seconds: float
    figures: dict[str, Any]

    @property
    def passed(self) -> bool:
        return bool(self.figures.get("passed"))


class _Worker:
    def __init__(self, proc: asyncio.subprocess.Process, log: IO[bytes], name: str) -> None:
        self.proc = proc
        self.log = log
        self.name = name

    async def send(self, **cmd: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd).encode() + b"\n")
        await self.proc.stdin.drain()

    async def reply(self, ev: str, on_progress: Callable[[dict[str, Any]], None] | None = None
                    ) -> dict[str, Any]:
        assert self.proc.stdout is not None
        while True:
            raw = await self.proc.stdout.readline()
            if not raw:
                await self.proc.wait()
                raise RuntimeError(f"load generator {self.name} exited "
                                   f"(status {self.proc.returncode}):\n{self.tail()}")
            msg: dict[str, Any] = json.loads(raw)
            if msg["ev"] == ev:
                return msg
            if msg["ev"] == "progress" and on_progress is not None:
                on_progress(msg)

    def tail(self) -> str:
        self.log.flush()
        with contextlib.suppress(OSError):
            return "\n".join(Path(self.log.name).read_text(errors="replace"
                                                           ).splitlines()[-20:])
        return ""

    async def close(self) -> None:
        if self.proc.returncode is None and self.proc.stdin is not None:
            with contextlib.suppress(ConnectionError, RuntimeError):
                self.proc.stdin.write(b'{"op":"close"}\n')
                self.proc.stdin.close()
        try:
            async with asyncio.timeout(5):
                await self.proc.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            await self.proc.wait()
        self.log.close()


def _open_log(path: Path) -> IO[bytes]:
    return open(path, "wb")  # closed by _Worker.close


async def _start_workers(n: int, logdir: Path) -> list[_Worker]:
    workers = []
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (_ROOT, os.environ.get("PYTHONPATH")) if p)}
    for i in range(n):
        log = _open_log(logdir / f"worker{i}.log")
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "cli.bench.worker", stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=log, start_new_session=True, env=env,
            limit=1 << 24)
        workers.append(_Worker(proc, log, f"worker{i}"))
    return workers


def _split(total: int, parts: int) -> list[tuple[int, int]]:
    """``parts`` contiguous ranges covering ``range(total)``, sizes differing by one."""
    return list(itertools.pairwise([total * k // parts for k in range(parts + 1)]))


def _ms(us: int | None) -> float | None:
    return None if us is None else us / 1000


async def run_bench(config: BenchConfig, probe: Probe | None = None,
                    observer: Observer | None = None) -> dict[str, Any]:
    """Run the whole benchmark; returns the result document (see :mod:`.report`)."""
    observer = observer or Observer()
    probe = probe or Probe()
    tag = "b" + secrets.token_hex(2)
    with tempfile.TemporaryDirectory(prefix="hubbub-bench-gen-") as logdir:
        nworkers = max(1, min(config.workers, config.clients or config.workers))
        workers = await _start_workers(nworkers, Path(logdir))
        try:
            return await _run(config, probe, observer, workers, tag)
        finally:
            await asyncio.shield(asyncio.gather(*(w.close() for w in workers)))


async def _all(workers: list[_Worker], ev: str, cmds: list[dict[str, Any]],
               on_progress: Callable[[dict[str, Any]], None] | None = None
               ) -> list[dict[str, Any]]:
    for w, cmd in zip(workers, cmds, strict=True):
        await w.send(**cmd)
    return list(await asyncio.gather(*(w.reply(ev, on_progress) for w in workers)))


async def _run(config: BenchConfig, probe: Probe, observer: Observer,
               workers: list[_Worker], tag: str) -> dict[str, Any]:
    spec = GenSpec(targets=config.targets, clients=config.clients, rooms=config.rooms,
                   tag=tag, profile=config.profile, size=config.size, hog=False,
                   connect_concurrency=config.connect_concurrency,
                   setup_timeout=config.setup_timeout)
    result: dict[str, Any] = {"config": _config_json(config), "tag": tag,
                              "workers": len(workers)}
    before = await probe.sample()
    observer.phase(f"connecting {config.clients} clients")
    ranges = _split(config.clients, len(workers))
    setups = await _all(workers, "setup", [
        {"op": "setup", "spec": spec_to_json(replace(spec, first=a, last=b,
                                                     hog=config.hog and k == 0))}
        for k, (a, b) in enumerate(ranges)])
    setup_seconds = max(s["setup_seconds"] for s in setups)
    ready = sum(s["ready"] for s in setups)
    result["setup"] = {
        "clients": config.clients, "ready": ready, "seconds": setup_seconds,
        "per_second": ready / setup_seconds if setup_seconds > 0 else None,
        "failures": _sum_counts(s["failures"] for s in setups),
        "errors": _sum_counts(s["errors"] for s in setups),
        "hog": any(s["hog"] for s in setups) if config.hog else None}
    if config.idle:
        result["idle"] = await _idle(config, probe, observer, workers, before)
    steps: list[StepResult] = []
    if config.clients and ready == config.clients and (config.rate > 0 or config.ramp
                                                        or config.flat_out):
        if config.warmup > 0 and config.rate > 0:
            observer.phase("warming up")
            await _step(config, probe, observer, workers, config.rate, config.warmup)
        if config.flat_out:
            steps.append(await _step(config, probe, observer, workers, 0.0, config.duration,
                                     flat=config.flat_out))
        elif config.ramp:
            await _ramp(config, probe, observer, workers, ready, steps)
        else:
            steps.append(await _step(config, probe, observer, workers, config.rate,
                                     config.duration))
    elif config.clients and ready < config.clients:
        result["aborted"] = f"only {ready} of {config.clients} clients registered"
    result["steps"] = [s.figures for s in steps]
    passed = [s for s in steps if s.passed]
    best = max(passed, key=lambda s: s.rate) if passed else None
    result["sustained"] = best.figures if config.ramp and best else None
    after = await probe.sample()
    result["server"] = {"before": before, "after": after}
    return result


async def _ramp(config: BenchConfig, probe: Probe, observer: Observer,
                workers: list[_Worker], ready: int, steps: list[StepResult]) -> None:
    """Multiply the rate until a step fails twice, then bisect (geometrically) between the
    last rate that passed and the first that failed ``ramp_refine`` times — as long as no
    client was lost and the failed step's messages all drained (else the next step would
    measure the leftovers)."""
    rate = config.rate
    retries = config.ramp_retries
    passed: float | None = None
    failed: float | None = None
    refine = config.ramp_refine
    for _ in range(config.max_steps):
        step = await _step(config, probe, observer, workers, rate, config.step_seconds)
        steps.append(step)
        if step.figures["live"] < ready or not step.figures["complete"]:
            return
        if not step.passed and retries > 0:
            retries -= 1  # a shared machine has hiccups: the same rate once more
            step.figures["retried"] = True
            continue
        retries = config.ramp_retries
        if step.passed:
            passed = rate
        else:
            failed = rate
        if failed is None:
            rate *= config.ramp_factor
            continue
        if passed is None or refine <= 0:
            return
        refine -= 1
        rate = math.sqrt(passed * failed)


async def _idle(config: BenchConfig, probe: Probe, observer: Observer,
                workers: list[_Worker], start: dict[str, Any]) -> dict[str, Any]:
    before = await probe.sample()
    observer.phase(f"opening {config.idle} idle connections")
    ranges = _split(config.idle, len(workers))
    got = await _all(workers, "idle", [{"op": "idle", "count": b - a, "first": a}
                                        for a, b in ranges])
    after = await probe.sample()
    ready = sum(g["ready"] for g in got)
    seconds = max(g["seconds"] for g in got)
    per_node = [{"rss_before": b0["rss"], "rss_after": b1["rss"]}
                for b0, b1 in zip(before["nodes"], after["nodes"], strict=True)]
    growth: int | None = None
    if per_node and all(n["rss_before"] is not None and n["rss_after"] is not None
                        for n in per_node):
        growth = sum(n["rss_after"] - n["rss_before"] for n in per_node)
    return {"requested": config.idle, "ready": ready, "seconds": seconds,
            "per_second": ready / seconds if seconds > 0 else None,
            "failures": _sum_counts(g["failures"] for g in got),
            "nodes": per_node, "rss_growth": growth,
            "rss_per_connection": growth / ready if growth is not None and ready else None,
            "rss_at_start": [n["rss"] for n in start["nodes"]]}


async def _step(config: BenchConfig, probe: Probe, observer: Observer,
                workers: list[_Worker], rate: float, seconds: float, *, flat: int = 0
                ) -> StepResult:
    observer.phase(f"{flat:,} lines per client flat out (at most {seconds:g} s)" if flat
                   else f"{rate:,.0f} msg/s for {seconds:g} s")
    observer.step(rate, seconds)
    shares = _split(config.clients, len(workers))
    progress: dict[int, dict[str, Any]] = {}

    def on_progress(k: int) -> Callable[[dict[str, Any]], None]:
        def got(msg: dict[str, Any]) -> None:
            progress[k] = msg
            p99s = [p["p99"] for p in progress.values() if p.get("p99") is not None]
            observer.progress(sum(p["sent"] for p in progress.values()),
                              sum(p["deliveries"] for p in progress.values()),
                              max(p99s) / 1000 if p99s else None)
        return got

    before = await probe.sample()
    for w, (a, b) in zip(workers, shares, strict=True):
        await w.send(op="run", rate=rate * (b - a) / config.clients, seconds=seconds,
                     flat=flat)
    ended = await asyncio.gather(*(w.reply("ended", on_progress(k))
                                   for k, w in enumerate(workers)))
    room_sent: Counter[str] = Counter()
    for e in ended:
        room_sent.update({k: int(v) for k, v in e["by_room"].items()})
    observer.phase(f"draining ({rate:,.0f} msg/s step)")
    figures = await _all(workers, "step", [
        {"op": "drain", "room_sent": dict(room_sent),
         "within": max(config.drain_within, seconds) if flat else config.drain_within}
        for _ in workers])
    after = await probe.sample()
    merged = _merge(config, rate, seconds, ended, figures, flat)
    merged["server"] = server = _server_delta(before, after)
    server.update(cpu_costs(server, merged["sent"], merged["deliveries"]))
    return StepResult(rate, seconds, merged)


def _merge(config: BenchConfig, rate: float, seconds: float, ended: list[dict[str, Any]],
           figures: list[dict[str, Any]], flat: int = 0) -> dict[str, Any]:
    hist = Histogram()
    for f in figures:
        hist.merge(Histogram.from_sparse(f["hist"], f["hist_total"], f["hist_max"]))
    total = {k: sum(f[k] for f in figures)
             for k in ("sent", "deliveries", "expected", "lost", "late", "duplicates",
                       "corrupted", "misrouted", "echoes", "disconnects", "live")}
    hog_state = [f["hog_state"] for f in figures if f["hog_state"] is not None]
    send_seconds = max(e["send_seconds"] for e in ended)
    span = max([send_seconds, *(f["last_delivery"] for f in figures)])
    out: dict[str, Any] = {
        "rate": rate, "seconds": seconds, **total,
        "sent_per_s": total["sent"] / send_seconds if send_seconds else 0.0,
        "deliveries_per_s": total["deliveries"] / span if span else 0.0,
        "p50_ms": _ms(hist.percentile(50)), "p90_ms": _ms(hist.percentile(90)),
        "p99_ms": _ms(hist.percentile(99)), "p999_ms": _ms(hist.percentile(99.9)),
        "max_ms": _ms(hist.max) if hist.count else None,
        "mean_ms": None if hist.mean() is None else hist.total / hist.count / 1000,
        "errors": _sum_counts(f["errors"] for f in figures),
        "byes": _sum_counts(f["byes"] for f in figures),
        "complete": all(f["complete"] for f in figures),
        "gen_cpu_pct": 100 * sum(f["cpu"] for f in figures) / max(f["wall"] for f in figures),
        "gen_max_lag_ms": 1000 * max(f["max_lag"] for f in figures),
        # the schedule owes int(rate * t) messages at t: allow for the one not yet due;
        # flat out, every client must have written all its lines within the time limit
        "schedule_kept": (total["sent"] >= flat * config.clients if flat else
                          total["sent"] >= SCHEDULE_KEPT * rate * seconds - len(figures)),
        "flat_out": flat,
        "refused": sum(f["errors"].get("relay-unavailable", 0) for f in figures),
        "hog_state": hog_state[0] if hog_state else None,
    }
    reasons = []
    p99 = out["p99_ms"]
    if p99 is None or p99 > config.p99_bound_ms:
        reasons.append(f"p99 {p99 if p99 is None else round(p99, 1)} ms > "
                       f"{config.p99_bound_ms:g}")
    for key in ("lost", "duplicates", "late", "corrupted", "misrouted", "disconnects"):
        if out[key]:
            reasons.append(f"{out[key]} {key}")
    if not out["schedule_kept"]:
        reasons.append("senders behind schedule")
    out["passed"] = not reasons
    out["failed_because"] = reasons
    return out


def _server_delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    wall = after["t"] - before["t"]
    nodes = []
    for b, a in zip(before["nodes"], after["nodes"], strict=True):
        used = a["cpu"] - b["cpu"] if a["cpu"] is not None and b["cpu"] is not None else None
        nodes.append({"cpu_pct": 100 * used / wall if used is not None and wall > 0 else None,
                      "cpu_s": used, "rss": a["rss"], "channels": a["channels"]})
    redis_s = (after["redis_cpu"] - before["redis_cpu"]
               if after["redis_cpu"] is not None and before["redis_cpu"] is not None else None)
    redis = 100 * redis_s / wall if redis_s is not None and wall > 0 else None
    shards = []
    for b, a in zip(before.get("redis_shards_cpu") or [], after.get("redis_shards_cpu") or [],
                    strict=True):
        used = a - b if a is not None and b is not None else None
        shards.append({"cpu_pct": 100 * used / wall if used is not None and wall > 0 else None,
                       "cpu_s": used})
    return {"nodes": nodes, "redis_cpu_pct": redis, "redis_cpu_s": redis_s,
            "redis_shards": shards, "seconds": wall}


def cpu_costs(server: dict[str, Any], sent: int, deliveries: int) -> dict[str, float | None]:
    """CPU microseconds per chat message and per delivery, for the nodes together and for
    Redis, over the step's window (None where a reading or a count is missing)."""
    node_s: float | None = None
    used = [n["cpu_s"] for n in server["nodes"]]
    if used and all(u is not None for u in used):
        node_s = sum(used)

    def per(seconds: float | None, count: int) -> float | None:
        return 1e6 * seconds / count if seconds is not None and count else None

    redis_s = server["redis_cpu_s"]
    return {"node_us_per_msg": per(node_s, sent), "node_us_per_delivery": per(node_s, deliveries),
            "redis_us_per_msg": per(redis_s, sent),
            "redis_us_per_delivery": per(redis_s, deliveries)}


def _sum_counts(maps: Any) -> dict[str, int]:
    total: Counter[str] = Counter()
    for m in maps:
        total.update(m)
    return dict(total)


def _config_json(config: BenchConfig) -> dict[str, Any]:
    out = {k: getattr(config, k) for k in config.__dataclass_fields__}
    out["targets"] = [f"{h}:{p}" for h, p in config.targets]
    for k, v in list(out.items()):
        if isinstance(v, float) and not math.isfinite(v):
            out[k] = None
    return out
