"""A sleep for background loops that cannot be cancelled by accident.

redis.asyncio can swallow a cancellation that arrives while a command is in flight: the
command returns normally and the task goes on with its cancel request pending but
unraised.  A loop that then just sleeps and goes round again would never stop, and a node
shutting down would wait for it forever.  Every periodic loop sleeps through :func:`pause`,
which raises the pending cancellation first.
"""

from __future__ import annotations

import asyncio


def cancel_pending() -> bool:
    """True when the current task was asked to cancel and has not raised it yet."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


async def pause(seconds: float) -> None:
    """``asyncio.sleep`` that first honours a cancellation someone swallowed."""
    if cancel_pending():
        raise asyncio.CancelledError
    await asyncio.sleep(seconds)
