"""Run one chat node in this process until SIGTERM/SIGINT (a second signal forces).

A node that cannot start raises :class:`~node.errors.StartupError` out of
:func:`run_node`; the command turns it into one line and exit status 2."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import structlog

from node.config import NodeConfig
from node.errors import StartupError
from node.server import ChatNode

from .redis_client import connect_redis

__all__ = ["run_node"]

log = structlog.get_logger("hubbub.cli")


async def _main(config: NodeConfig) -> None:
    try:
        redis = connect_redis(config.redis_url, config.redis_timeout, config.redis_pool,
                              ca=config.redis_ca or None, pool_wait=config.redis_pool_wait)
    except ValueError as exc:  # what NodeConfig's own check of the URL let through
        raise StartupError(f"the Redis URL cannot be used: {exc}",
                           settings=("redis_url",)) from None
    node = ChatNode(config, redis)
    loop = asyncio.get_running_loop()
    signals = 0

    def on_signal(signum: int) -> None:
        nonlocal signals
        signals += 1
        if signals == 1:
            log.info("signal received, draining", signal=signal.Signals(signum).name)
            node.stop()
        else:
            log.warning("second signal, exiting now")
            os._exit(1)

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        await node.run()
    finally:
        await redis.aclose()


def run_node(config: NodeConfig) -> None:
    try:
        import uvloop
    except ImportError:  # uvloop is an optional speed-up
        asyncio.run(_main(config))
    else:
        if sys.version_info >= (3, 12):
            uvloop.run(_main(config))
        else:
            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
            asyncio.run(_main(config))
