"""A chat node on an in-process fakeredis, as a subprocess, on a chosen event loop.

``python -m tests.integration.fd_node asyncio|uvloop`` logs JSON to stderr ("node
listening" carries the port) and stops on SIGTERM.  Tests that change the process itself
(its open-file limit) use it so the standard loop and uvloop can both be checked.
"""

from __future__ import annotations

import asyncio
import signal
import sys

import fakeredis

from node.config import NodeConfig
from node.logs import configure_logging
from node.server import ChatNode


async def main() -> None:
    configure_logging(json=True, level="debug")  # "session closed" of every session
    redis = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())
    node = ChatNode(NodeConfig(node_id="fd", host="127.0.0.1", port=0, http_port=0,
                               max_per_ip=0, conn_rate_per_ip=0), redis)
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, node.stop)
    try:
        await node.run()
    finally:
        await redis.aclose()


if __name__ == "__main__":
    if sys.argv[1:] == ["uvloop"]:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    elif sys.argv[1:] != ["asyncio"]:
        sys.exit("usage: python -m tests.integration.fd_node asyncio|uvloop")
    asyncio.run(main())
