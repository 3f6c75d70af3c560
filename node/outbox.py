"""A client's bounded, coalescing send queue.

Fan-out never waits on a slow reader: the node *puts* bytes here synchronously and the
session *takes* everything pending — joined into one chunk — once per loop iteration (or
as soon as a lot is pending), handing it to the socket's transport while the transport
is not above its high-water mark.  When a client falls so far behind that the queue would
hold more than ``max_bytes`` or ``max_lines``, :meth:`put` refuses and the session is
disconnected (policy: ``send queue exceeded``); nobody else is slowed.
"""

from __future__ import annotations

__all__ = ["SendQueue"]


class SendQueue:
    __slots__ = ("_chunks", "_closed", "lines", "max_bytes", "max_lines", "size")

    def __init__(self, max_bytes: int, max_lines: int) -> None:
        self.max_bytes = max_bytes
        self.max_lines = max_lines
        self.size = 0
        self.lines = 0
        self._chunks: list[bytes] = []
        self._closed = False

    def put(self, data: bytes, lines: int | None = None) -> bool:
        """Queue ``data`` (``lines``: its newlines, if the caller counted them already, as
        fan-out does once for all recipients); False (and nothing queued) if that would
        pass a bound."""
        if self._closed or not data:
            return not self._closed
        if lines is None:
            lines = data.count(b"\n")
        if self.size + len(data) > self.max_bytes or self.lines + lines > self.max_lines:
            return False
        self._chunks.append(data)
        self.size += len(data)
        self.lines += lines
        return True

    def close(self) -> None:
        """No more puts; what is queued can still be taken."""
        self._closed = True

    @property
    def closed(self) -> bool:
        return self._closed

    def take(self) -> bytes:
        """Everything queued, as one chunk (``b""`` when nothing is)."""
        chunks = self._chunks
        if not chunks:
            return b""
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self.size = 0
        self.lines = 0
        return data
