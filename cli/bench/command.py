"""``hubbub bench`` behind the typer options: spawn or address a cluster, show progress,
print the report (or JSON)."""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from .driver import BenchConfig, Observer, run_bench
from .report import print_report, render_json
from .spawn import BaselineServer, LocalCluster, NodeInfo, Probe

__all__ = ["RichObserver", "bench", "parse_addresses"]


def parse_addresses(raw: str) -> list[tuple[str, int]]:
    out = []
    for part in raw.split(","):
        part = part.strip()
        if not part:
            continue
        host, sep, port = part.rpartition(":")
        if not sep or not port.isdigit():
            raise ValueError(f"expected host:port, got {part!r}")
        out.append((host.strip("[]") or "127.0.0.1", int(port)))
    return out


class RichObserver(Observer):
    """A progress bar on stderr: the current phase, and in a step its time, sent messages,
    deliveries per second and the worst worker's p99 so far."""

    def __init__(self, console: Console) -> None:
        self.bar = Progress(
            TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
            TextColumn("{task.fields[info]}"), console=console, transient=True)
        self.task = self.bar.add_task("starting", total=None, info="")
        self.started = time.monotonic()
        self.last = (0.0, 0)

    def __enter__(self) -> RichObserver:
        self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.stop()

    def phase(self, text: str) -> None:
        self.bar.update(self.task, description=text, info="")

    def step(self, rate: float, seconds: float) -> None:
        self.bar.reset(self.task, total=seconds, info="")
        self.started = time.monotonic()
        self.last = (self.started, 0)

    def progress(self, sent: int, deliveries: int, p99_ms: float | None) -> None:
        now = time.monotonic()
        t0, d0 = self.last
        rate = (deliveries - d0) / (now - t0) if now > t0 else 0.0
        self.last = (now, deliveries)
        p99 = "—" if p99_ms is None else f"{p99_ms:.1f} ms"
        self.bar.update(self.task, completed=now - self.started,
                             info=f"sent {sent:,} · {rate:,.0f} deliveries/s · p99 {p99}")


async def _run(config: BenchConfig, spawn: int, baseline: str | None, metrics: list[Any],
               redis_url: str | None, observer: Observer, redis_shards: int = 0
               ) -> dict[str, Any]:
    if spawn:
        observer.phase(f"starting a Redis Cluster of {redis_shards} master(s) and {spawn} "
                       "node(s)" if redis_shards else
                       f"starting redis-server and {spawn} node(s)")
        async with LocalCluster(spawn, redis_shards=redis_shards) as cluster:
            config = _with_targets(config, cluster.targets)
            result = await run_bench(config, cluster.probe, observer)
            result["redis_shards"] = [{"address": s.address, "slots": s.slots}
                                      for s in cluster.probe.redis_shards]
            return result
    if baseline:
        observer.phase(f"starting the {baseline} server")
        async with BaselineServer(baseline) as server:
            config = _with_targets(config, server.targets)
            return await run_bench(config, server.probe, observer)
    probe = Probe([NodeInfo(h, p, metrics[i] if i < len(metrics) else None)
                   for i, (h, p) in enumerate(config.targets)], redis_url)
    return await run_bench(config, probe, observer)


def _with_targets(config: BenchConfig, targets: list[tuple[str, int]]) -> BenchConfig:
    from dataclasses import replace

    return replace(config, targets=tuple(targets))


async def _main(config: BenchConfig, spawn: int, baseline: str | None, metrics: list[Any],
                redis_url: str | None, observer: Observer, redis_shards: int = 0
                ) -> dict[str, Any]:
    """Run, cancelling cleanly on SIGTERM as asyncio.run already does on Ctrl+C."""
    task = asyncio.ensure_future(_run(config, spawn, baseline, metrics, redis_url, observer,
                                      redis_shards))
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        return await task
    finally:
        loop.remove_signal_handler(signal.SIGTERM)


def bench(config: BenchConfig, *, spawn: int, baseline: str | None, metrics: list[Any],
          redis_url: str | None = None, json_out: bool = False, redis_shards: int = 0) -> int:
    err = Console(stderr=True)
    try:
        with RichObserver(err) as observer:
            result = asyncio.run(_main(config, spawn, baseline, metrics, redis_url,
                                       observer, redis_shards))
    except KeyboardInterrupt:
        err.print("interrupted; everything started was stopped")
        return 130
    except asyncio.CancelledError:  # SIGTERM
        err.print("terminated; everything started was stopped")
        return 143
    except (RuntimeError, OSError, ValueError) as exc:
        err.print(f"[red]bench failed:[/] {exc}")
        return 1
    if json_out:
        sys.stdout.write(render_json(result) + "\n")
    else:
        print_report(result, Console() if sys.stdout.isatty() else Console(width=200))
    return 0
