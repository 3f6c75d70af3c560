"""Median failover time over N runs of the failover scenario (real redis-server, two
``hubbub node`` processes, a ``hubbub connect`` client, its node SIGKILLed while another
user keeps talking; every run also checks nothing was missed or shown twice).

    python benchmarks/failover.py --runs 10
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.integration.test_failover import failover_once


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=10)
    args = ap.parse_args()
    times = []
    for i in range(args.runs):
        took = await failover_once()
        times.append(took)
        print(f"run {i + 1}: {took * 1000:.0f} ms", flush=True)
    print(f"failover over {args.runs} runs: median {statistics.median(times) * 1000:.0f} ms, "
          f"min {min(times) * 1000:.0f} ms, max {max(times) * 1000:.0f} ms")


if __name__ == "__main__":
    asyncio.run(main())
