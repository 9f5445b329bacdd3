"""What happens before a request reaches a handler: malformed and oversize requests answered in the JSON envelope.

Tornado 6.6 (``tornado.http1connection``) answers any malformed request -- a bad request line, an HTTP/2.0
line, control characters in a header, a bad Host or Content-Length, Transfer-Encoding with Content-Length -- by
writing exactly ``HTTP/1.1 400 Bad Request\\r\\n\\r\\n`` to the stream (``_read_message_inner``) and closing; the
application is never called. And headers longer than ``max_header_size`` make the stream close without any
answer. So:

* :class:`_AnsweringStream` wraps each connection's IOStream (:meth:`EdgeHTTPServer.handle_stream` hands it to
  Tornado in place of the stream): that exact bare 400 write becomes a JSON ``{"code", "msg"}`` answer with
  ``X-Request-Id`` and ``Connection: close``;
* it also checks each request head Tornado reads (``read_until_regex``): a request line over
  ``max_request_line`` is answered 414, a head over ``max_header_bytes`` 431 (both then close). Tornado's own hard
  limit is set 4x higher (at least 64 KiB): past it the connection is still closed without an answer, because
  the IOStream closes itself there;
* :class:`EdgeHTTPServer` uses these for every connection; ``header_timeout`` and ``body_timeout`` bound a
  slow client (past them Tornado closes the connection: it offers no hook to answer 408 there).

Only public names of Tornado are used here: the wrapper goes in where ``HTTPServer.handle_stream`` takes the
stream. ``tests/service/test_http_edges.py`` pins the Tornado behaviour this relies on (the bare 400 bytes, each
head read with ``read_until_regex``); a Tornado upgrade that changes either fails that test, not production.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Final

import orjson
from tornado import httputil, iostream
from tornado.httpserver import HTTPServer

from .request_ids import Process, new_request_id

__all__ = ["BARE_400", "MALFORMED_REQUEST", "EdgeHTTPServer", "answer"]

BARE_400: Final = b"HTTP/1.1 400 Bad Request\r\n\r\n"
MALFORMED_REQUEST: Final = 40004
URI_TOO_LONG: Final = 41401
HEADERS_TOO_LARGE: Final = 43101
_REASONS: Final = {400: "Bad Request", 414: "URI Too Long", 431: "Request Header Fields Too Large"}
_CODES: Final = {400: MALFORMED_REQUEST, 414: URI_TOO_LONG, 431: HEADERS_TOO_LARGE}


def answer(status: int, msg: str) -> bytes:
    """A whole HTTP/1.1 response in the API's error envelope; the connection closes after it."""
    body = orjson.dumps({"code": _CODES[status], "msg": msg})
    head = (
        f"HTTP/1.1 {status} {_REASONS[status]}\r\n"
        "Content-Type: application/json; charset=UTF-8\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n"
        "Cache-Control: no-store\r\n"
        f"X-Request-Id: {new_request_id()}\r\n"
        f"X-Worker-Pid: {Process.pid}\r\n"
        f"Date: {httputil.format_timestamp(time.time())}\r\n\r\n"
    )
    return head.encode("latin-1") + body


class _AnsweringStream:
    """The IOStream of one connection as Tornado's HTTP/1 code sees it: everything passes through except the two
    hooks."""

    def __init__(self, stream: iostream.IOStream, max_request_line: int, max_header_bytes: int) -> None:
        self._stream = stream
        self.io_loop = stream.io_loop
        # The stream's methods Tornado calls on every request, bound here: each would otherwise be a failed lookup
        # (an AttributeError made and caught) before __getattr__.
        self.closed = stream.closed
        self.close = stream.close
        self.set_close_callback = stream.set_close_callback
        self.set_nodelay = stream.set_nodelay
        self.read_bytes = stream.read_bytes
        self.read_until = stream.read_until
        self.max_request_line = max_request_line
        self.max_header_bytes = max_header_bytes
        self.status, self.msg = 400, "malformed HTTP request"

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)

    def write(self, data: bytes | memoryview) -> asyncio.Future[None]:
        if len(data) == len(BARE_400) and bytes(data) == BARE_400:
            data = answer(self.status, self.msg)
        return self._stream.write(data)

    def read_until_regex(self, regex: bytes, max_bytes: int | None = None) -> asyncio.Future[bytes]:
        inner: asyncio.Future[bytes] = self._stream.read_until_regex(regex, max_bytes=max_bytes)  # type: ignore[assignment]
        if inner.done():
            # The head was in the buffer already (a keep-alive client's next request, under load mostly): checked
            # now, without a future of our own and the pass of the loop its callback waits for (the two cost ~8 %
            # of a bench-route request's instructions, valgrind).
            if inner.cancelled() or inner.exception() is not None or self._head_fits(inner.result()):
                return inner
            failed: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
            failed.set_exception(httputil.HTTPInputError(self.msg))
            return failed
        checked: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        inner.add_done_callback(lambda done: self._check_head(done, checked))
        return checked

    def _check_head(self, done: asyncio.Future[bytes], checked: asyncio.Future[bytes]) -> None:
        if checked.done():  # timed out meanwhile (header_timeout)
            return
        if done.cancelled():
            checked.cancel()
            return
        error = done.exception()
        if error is not None:
            checked.set_exception(error)
        elif self._head_fits(head := done.result()):
            checked.set_result(head)
        else:
            checked.set_exception(httputil.HTTPInputError(self.msg))

    def _head_fits(self, head: bytes) -> bool:
        """Whether a request head is within the limits; if not, the answer it gets is set (414 or 431)."""
        line_end = head.find(b"\n")
        if (line_end if line_end >= 0 else len(head)) > self.max_request_line:
            self.status, self.msg = 414, f"request line longer than {self.max_request_line} bytes"
            return False
        if len(head) > self.max_header_bytes:
            self.status, self.msg = 431, f"request headers larger than {self.max_header_bytes} bytes"
            return False
        return True


class EdgeHTTPServer(HTTPServer):
    """Tornado's HTTPServer with the edges above; ``max_request_line`` / ``max_header_bytes`` are the 414/431
    limits (``max_header_size``, Tornado's hard limit, is derived from them)."""

    def initialize(
        self, *args: Any, max_request_line: int = 8192, max_header_bytes: int = 32768, **kwargs: Any
    ) -> None:
        kwargs.setdefault("max_header_size", max(4 * max_header_bytes, 4 * max_request_line, 65536))
        super().initialize(*args, **kwargs)
        self.max_request_line = max_request_line
        self.max_header_bytes = max_header_bytes
        if self.protocol is None and self.ssl_options is not None:
            # Tornado tells https from the stream's class, which the wrapper hides (handle_stream)
            self.protocol = "https"

    def handle_stream(self, stream: iostream.IOStream, address: tuple[Any, ...]) -> None:
        # One wrapper per connection: every request head on it is read through the wrapper, and any answer the
        # wrapper rewrites closes the connection, so its status never carries over to another request.
        wrapped: Any = _AnsweringStream(stream, self.max_request_line, self.max_header_bytes)
        super().handle_stream(wrapped, address)
