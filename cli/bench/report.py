"""The results: rich tables for people, the JSON document for programs.

Columns of the steps table (docs/PERFORMANCE.md says the same):

* ``msg/s`` target total send rate; ``sent/s`` what the senders managed;
* ``deliv/s`` messages received intact by other members, per second (from the step's
  start to its last delivery);
* ``p50 / p99 / p99.9 / max`` end-to-end latency in ms, send to receipt, across nodes;
* ``lost`` expected deliveries that never came (after the drain); ``dup`` repeated;
  ``ooo`` arrived after a later message of the same sender; ``corrupt`` lines that do
  not parse (or whose stamp is damaged); ``disc`` measured clients the server dropped;
* ``gen CPU`` the load generator processes' CPU, in % of one core (near 100 % per worker:
  the generator, not the server, is the limit); ``node CPU`` each server process, ``redis``
  Redis's CPU (on a spawned Redis Cluster, each master's, in slot order);
* ``node µs/msg``, ``node µs/deliv``: CPU microseconds of all the nodes together per chat
  message sent and per delivery, over the step (from ``/proc``, spawned nodes only);
  ``redis µs/msg``, ``redis µs/deliv``: the same for Redis (``INFO cpu``; on a spawned
  Redis Cluster, all its masters together).
"""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console
from rich.table import Table

__all__ = ["print_report", "render_json", "steps_table"]


def _num(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "—"
    return f"{value:,.{digits}f}"


def _ms(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:.2f}" if value < 10 else f"{value:,.0f}"


def _us(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:.2f}" if value < 100 else f"{value:,.0f}"


def _pcts(values: list[float | None]) -> str:
    return " ".join(_num(v) for v in values) if values else "—"


def _redis_pct(server: dict[str, Any]) -> str:
    """Redis's CPU %: each master's on a Redis Cluster, else the one Redis's."""
    shards = server.get("redis_shards")
    if shards:
        return _pcts([s["cpu_pct"] for s in shards])
    return _num(server.get("redis_cpu_pct"))


def shards_lines(result: dict[str, Any]) -> list[str]:
    """One line per master of a spawned Redis Cluster: its slots and its CPU in each
    step (none without a cluster)."""
    shards = result.get("redis_shards") or []
    steps = result.get("steps") or []
    lines = []
    for i, shard in enumerate(shards):
        pcts = []
        for s in steps:
            readings = s.get("server", {}).get("redis_shards") or []
            pcts.append(readings[i]["cpu_pct"] if i < len(readings) else None)
        lines.append(f"  shard {i + 1}: master {shard['address']}, slots {shard['slots']}: "
                     f"Redis CPU {' / '.join(_num(p, 1) for p in pcts) or '—'} %")
    return lines


def steps_table(result: dict[str, Any], title: str = "steps") -> Table:
    table = Table(title=title, title_justify="left")
    cols = ["msg/s", "sent/s", "deliv/s", "p50 ms", "p99 ms", "p99.9 ms", "max ms", "lost",
            "dup", "ooo", "corrupt", "disc", "gen CPU %", "node CPU %", "redis CPU %",
            "node µs/msg", "node µs/deliv", "redis µs/msg", "redis µs/deliv"]
    ramp = bool(result["config"].get("ramp"))
    if ramp:
        cols.append("ok")
    for col in cols:
        table.add_column(col, justify="right")
    for s in result.get("steps", []):
        server = s.get("server", {})
        row = [_num(s["rate"]), _num(s["sent_per_s"]), _num(s["deliveries_per_s"]),
               _ms(s["p50_ms"]), _ms(s["p99_ms"]), _ms(s["p999_ms"]), _ms(s["max_ms"]),
               _num(s["lost"]), _num(s["duplicates"]), _num(s["late"]), _num(s["corrupted"]),
               _num(s["disconnects"]), _num(s["gen_cpu_pct"]),
               _pcts([n["cpu_pct"] for n in server.get("nodes", [])]),
               _redis_pct(server), _us(server.get("node_us_per_msg")),
               _us(server.get("node_us_per_delivery")), _us(server.get("redis_us_per_msg")),
               _us(server.get("redis_us_per_delivery"))]
        if ramp:
            row.append("yes" if s["passed"] else "no: " + "; ".join(s["failed_because"]))
        table.add_row(*row)
    return table


def print_report(result: dict[str, Any], console: Console | None = None) -> None:
    console = console or Console()
    cfg = result["config"]
    setup = result["setup"]
    console.print(
        f"[bold]hubbub bench[/] {cfg['clients']} clients in {cfg['rooms']} room(s) on "
        f"{', '.join(cfg['targets'])} ({cfg['profile']} profile, {result['workers']} "
        f"generator process(es), {cfg['size']}-byte messages)")
    if cfg["clients"]:
        console.print(
            f"set-up: {setup['ready']}/{setup['clients']} clients registered in "
            f"{setup['seconds']:.2f} s = {_num(setup['per_second'])} connections/s"
            + (f"; failures {setup['failures']}" if setup["failures"] else "")
            + (f"; errors {setup['errors']}" if setup["errors"] else ""))
    idle = result.get("idle")
    if idle:
        per = idle["rss_per_connection"]
        console.print(
            f"idle: {idle['ready']}/{idle['requested']} connections registered in "
            f"{idle['seconds']:.1f} s ({_num(idle['per_second'])}/s); node RSS per "
            f"connection: " + (f"{per / 1024:.1f} KiB" if per is not None else "not available")
            + (f" (growth {idle['rss_growth'] / 2**20:.1f} MiB)" if per is not None else "")
            + (f"; failures {idle['failures']}" if idle["failures"] else ""))
    shards = shards_lines(result)
    if shards:
        console.print(f"Redis Cluster of {len(shards)} master(s), Redis CPU per shard "
                      "(per step):")
        for line in shards:
            console.print(line, highlight=False)
    if result.get("aborted"):
        console.print(f"[red]aborted:[/] {result['aborted']}")
    if result.get("steps"):
        console.print(steps_table(result))
        for s in result["steps"]:
            if s.get("flat_out"):
                console.print(
                    f"flat out: {s['flat_out']:,} lines per client, {_num(s['sent'])} sent; "
                    f"{_num(s['deliveries_per_s'])} deliveries/s, {s['refused']:,} refused "
                    f"(relay-unavailable), p50 {_ms(s['p50_ms'])} ms, p99 {_ms(s['p99_ms'])} ms"
                    + ("" if s["schedule_kept"] else "; NOT all lines were sent in the limit"))
            extra = {k: s[k] for k in ("errors", "byes") if s[k]}
            if s.get("hog_state") is not None:
                extra["never-reading client"] = s["hog_state"]
            if not s["complete"]:
                extra["drain"] = "timed out"
            if extra:
                console.print(f"  at {_num(s['rate'])} msg/s: {extra}")
    if cfg.get("ramp"):
        best = result.get("sustained")
        if best:
            console.print(
                f"[bold]highest sustained rate[/] (p99 ≤ {cfg['p99_bound_ms']:g} ms, nothing "
                f"lost): {_num(best['rate'])} msg/s = {_num(best['deliveries_per_s'])} "
                f"deliveries/s, p99 {_ms(best['p99_ms'])} ms")
        else:
            console.print("[bold]no step passed[/] (see the ok column)")
    channels = [n.get("channels") for n in result["server"]["after"]["nodes"]]
    if any(c is not None for c in channels):
        console.print(f"subscribed room channels per node: {channels}")


def render_json(result: dict[str, Any]) -> str:
    return json.dumps(result, indent=2, sort_keys=False, default=str)
