"""A client's bounded, coalescing send queue.

Fan-out never waits on a slow reader: the node *puts* bytes here synchronously and only
the session's writer task *takes* them — everything pending, joined into one write — and
waits for the socket to drain.  When a client falls so far behind that the queue would
hold more than ``max_bytes`` or ``max_lines``, :meth:`put` refuses and the session is
disconnected (policy: ``send queue exceeded``); nobody else is slowed.
"""

from __future__ import annotations

import asyncio

__all__ = ["SendQueue"]


class SendQueue:
    __slots__ = ("_chunks", "_closed", "_wakeup", "lines", "max_bytes", "max_lines", "size")

    def __init__(self, max_bytes: int, max_lines: int) -> None:
        self.max_bytes = max_bytes
        self.max_lines = max_lines
        self.size = 0
        self.lines = 0
        self._chunks: list[bytes] = []
        self._closed = False
        self._wakeup = asyncio.Event()

    def put(self, data: bytes) -> bool:
        """Queue ``data``; False (and nothing queued) if that would pass a bound."""
        if self._closed or not data:
            return not self._closed
        lines = data.count(b"\n")
        if self.size + len(data) > self.max_bytes or self.lines + lines > self.max_lines:
            return False
        self._chunks.append(data)
        self.size += len(data)
        self.lines += lines
        self._wakeup.set()
        return True

    def close(self) -> None:
        """No more puts; the writer sends what is queued, then stops."""
        self._closed = True
        self._wakeup.set()

    @property
    def closed(self) -> bool:
        return self._closed

    async def take(self) -> bytes | None:
        """Everything queued as one chunk, waiting for some; None once closed and empty."""
        while not self._chunks:
            if self._closed:
                return None
            self._wakeup.clear()
            await self._wakeup.wait()
        data = self._chunks[0] if len(self._chunks) == 1 else b"".join(self._chunks)
        self._chunks.clear()
        self.size = 0
        self.lines = 0
        return data
