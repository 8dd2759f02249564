"""uvicorn's httptools protocol with the two limits it lacks: a header deadline and a header size cap.

uvicorn times out idle kept-alive connections (timeout_keep_alive) but not a client that opens a
connection and sends its request line and headers a byte at a time (slowloris); llhttp keeps
headers of any length. Each connection here gets `header_timeout` seconds from its first byte
(or from connecting) to finish its headers, and at most MAX_HEADER_BYTES of them, else it is
answered 408 / 431 and closed. llhttp itself refuses duplicate Content-Length headers and raw
control characters in the request target (400).
"""
from __future__ import annotations

import asyncio

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

MAX_HEADER_BYTES = 32 << 10    # request line + headers; browsers send about 1 KiB
DEFAULT_HEADER_TIMEOUT = 10.0  # seconds


def closing_response(status: int, reason: str, message: str) -> bytes:
    body = f'{{"error": "{message}", "status": {status}}}'.encode()
    return (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n").encode() + body


class DeadlineProtocol(HttpToolsProtocol):
    """HttpToolsProtocol + a deadline and a size cap on each request's headers.

    The limits come from attributes set on uvicorn's Config (`header_timeout`), which travels to
    worker processes with it.
    """

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.deadline: asyncio.TimerHandle | None = None
        self.expect_headers()
        self.start_deadline()

    def expect_headers(self) -> None:
        """The next bytes are a request line and headers: count them from zero."""
        self.in_headers = True
        self.header_bytes = 0            # of the request being read, request line included
        self.tail = b""                   # its last 3 bytes, to find a CRLFCRLF split across reads

    def start_deadline(self) -> None:
        timeout = getattr(self.config, "header_timeout", DEFAULT_HEADER_TIMEOUT)
        self.deadline = self.loop.call_later(timeout, self.headers_too_slow)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self.deadline is None:        # the next request on a kept-alive connection
            self.start_deadline()

    def on_headers_complete(self) -> None:
        self.in_headers = False
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self.expect_headers()

    def data_received(self, data: bytes) -> None:
        """Feed the parser up to each end of a header block, so a request's header bytes are
        counted on their own, not with the requests pipelined after it in the same read."""
        start = 0
        while start < len(data) and not self.transport.is_closing():
            stop = self.header_end(data, start)
            piece = data[start:stop]
            if self.in_headers:
                self.header_bytes += len(piece)
                if self.header_bytes > MAX_HEADER_BYTES:
                    return self.refuse(431, "Request Header Fields Too Large",
                                       f"request headers longer than {MAX_HEADER_BYTES} bytes")
                self.tail = (self.tail + piece)[-3:]
            super().data_received(piece)
            start = stop

    def header_end(self, data: bytes, start: int) -> int:
        """Where the piece starting at `start` ends: just after the next CRLFCRLF (one that began in
        the previous read included), or the end of `data`.

        A request that begins after a body in the same read is counted from the next read, so
        the parser holds at most the limit plus one read (uvicorn reads 64-256 KiB at a time)."""
        if start == 0 and self.in_headers and self.tail:
            found = (self.tail + data[:3]).find(b"\r\n\r\n")
            if found >= 0:
                return found + 4 - len(self.tail)
        found = data.find(b"\r\n\r\n", start)
        return len(data) if found < 0 else found + 4

    def headers_too_slow(self) -> None:
        self.deadline = None
        if self.in_headers:
            timeout = getattr(self.config, "header_timeout", DEFAULT_HEADER_TIMEOUT)
            self.refuse(408, "Request Timeout", f"request headers not received within {timeout:g} s")

    def refuse(self, status: int, reason: str, message: str) -> None:
        if not self.transport.is_closing():
            self.transport.write(closing_response(status, reason, message))
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None
        super().connection_lost(exc)
