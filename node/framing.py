"""Framing: a byte stream cut into UTF-8 lines, with the line and buffer limits.

Pure (no I/O, no event loop): :class:`LineFramer` is the bottom layer of
:class:`~node.protocol.ServerConnection`.
"""

from __future__ import annotations

from node.errors import BadEncoding, BufferOverflow, LineTooLong, ProtocolError

__all__ = ["LineFramer"]

_CR = 0x0D


class LineFramer:
    """Split a byte stream into UTF-8 lines, enforcing the line and buffer limits.

    ``feed`` returns decoded lines (without ``\\n`` and one trailing ``\\r``) and errors,
    in order: :class:`LineTooLong` once per line longer than ``max_line`` bytes (the whole
    line is discarded), :class:`BadEncoding` for a line that is not UTF-8, and
    :class:`BufferOverflow` when more than ``max_buffer`` bytes arrive without a newline
    (after which all input is ignored).  The output does not depend on how the input is
    chunked.
    """

    def __init__(self, max_line: int = 4096, max_buffer: int = 16384) -> None:
        if max_line < 1 or max_buffer < 1:
            raise ValueError("max_line and max_buffer must be positive")
        self.max_line = max_line
        self.max_buffer = max_buffer
        self._buf = bytearray()
        self._searched = 0  # no newline in self._buf[:self._searched]
        self._discarding = False  # inside an over-long line (already reported)
        self._discarded = 0  # bytes of the current line already thrown away
        self._closed = False  # after BufferOverflow or EOF

    @property
    def closed(self) -> bool:
        """True once the framer ignores input (after a buffer overflow or EOF)."""
        return self._closed

    def feed(self, data: bytes) -> list[str | ProtocolError]:
        """Add received bytes; return the complete lines and errors they finish."""
        out: list[str | ProtocolError] = []
        if self._closed or not data:
            return out
        buf = self._buf
        buf += data
        while True:
            newline = buf.find(b"\n", self._searched)
            if newline == -1:
                self._searched = len(buf)
                self._check_partial(out)
                return out
            if self._discarded + newline > self.max_buffer:
                # The stream went on too long without a newline, even though this chunk
                # brought one: report exactly what trickled input would have reported.
                if not self._discarding and self._too_long_prefix(self.max_buffer + 1):
                    out.append(LineTooLong())
                self._overflow(out)
                return out
            if not self._discarding:
                self._emit_line(bytes(buf[:newline]), out)
            del buf[: newline + 1]
            self._searched = 0
            self._discarding = False
            self._discarded = 0

    def feed_eof(self) -> list[str | ProtocolError]:
        """End of stream: deliver an unterminated last line as if it had a newline."""
        if self._closed:
            return []
        out = self.feed(b"\n") if self._buf or self._discarding else []
        self._closed = True
        self._buf.clear()
        return out

    # -- internals

    def _emit_line(self, line: bytes, out: list[str | ProtocolError]) -> None:
        if line.endswith(b"\r"):
            line = line[:-1]
        if len(line) > self.max_line:
            out.append(LineTooLong())
            return
        try:
            out.append(line.decode("utf-8"))
        except UnicodeDecodeError:
            out.append(BadEncoding())

    def _too_long_prefix(self, length: int) -> bool:
        """Is a line whose first ``length`` buffered bytes are known too long already?

        One byte past ``max_line`` may still be the ``\\r`` of a CRLF, so it only counts
        when it is not ``\\r``.
        """
        if length > self.max_line + 1:
            return True
        return length == self.max_line + 1 and self._buf[length - 1] != _CR

    def _check_partial(self, out: list[str | ProtocolError]) -> None:
        """Limits on the unterminated line at the end of the buffer."""
        buf = self._buf
        if not self._discarding and self._too_long_prefix(min(len(buf), self.max_buffer + 1)):
            out.append(LineTooLong())
            self._discarding = True
        if self._discarding:
            self._discarded += len(buf)
            buf.clear()
            self._searched = 0
        if self._discarded + len(buf) > self.max_buffer:
            self._overflow(out)

    def _overflow(self, out: list[str | ProtocolError]) -> None:
        out.append(BufferOverflow())
        self._closed = True
        self._buf.clear()
        self._searched = 0
