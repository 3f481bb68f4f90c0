"""HTTP below the routes: requests aiohttp refuses before any handler runs, and read deadlines.

aiohttp answers a request it cannot parse (a 10,000-character URL, a header line over 8190
bytes, 129 headers, a request line that is not HTTP, a bad ``Content-Length``) from its
``RequestHandler.handle_error``: a ``text/plain`` body quoting aiohttp's own message, and an
ERROR log line with a traceback for what is only a client's mistake.  Every refusal this server
makes is JSON ``{"error": ...}`` naming what was wrong, so ``JsonRefusalHandler`` answers those
itself and logs one line without a traceback.  Faults of the server (500) keep their traceback.

The same handler closes requests that are never finished.  aiohttp's keep-alive timer, armed when
a connection opens and again after each answer, closes a connection that is still waiting for a
whole request when it fires: that is the header deadline (``--read-timeout``), and also how long
an idle kept-alive connection stays open.  The body deadline is the REST front end's, around its
read of the body; when it passes, ``close_after`` answers 408 and closes the connection at once
rather than lingering for the rest of a body that is not coming.

``RefusingSockSite`` is ``web.SockSite`` with this handler as the protocol; everything else
(the application, its routes and middleware, graceful shutdown) is aiohttp's unchanged.
"""

from __future__ import annotations

import asyncio
import logging
import socket

from aiohttp import http_exceptions, web
from aiohttp.web_request import BaseRequest

from neuron_runtime.serving.rest_codec import JSON_CONTENT_TYPE, error_body

log = logging.getLogger(__name__)

# aiohttp's limits, stated here so the messages can name them (they are its defaults).
MAX_LINE_BYTES = 8190
MAX_HEADERS = 128
_DETAIL_LIMIT = 160


def _first_line(text: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= _DETAIL_LIMIT else line[:_DETAIL_LIMIT] + "..."


def describe_refusal(exc: BaseException | None, status: int) -> str:
    """What a client should read about a request refused before routing (pure, no I/O)."""
    if isinstance(exc, http_exceptions.LineTooLong):
        return (
            f"the request line (method and URL) or a header line is longer than the server's "
            f"limit of {MAX_LINE_BYTES} bytes; shorten the URL or the header"
        )
    if isinstance(exc, http_exceptions.BadHttpMethod):
        return (
            "this is not an HTTP/1.x request: the request line must start with a method such "
            f"as GET or POST ({_first_line(exc.message)}); HTTPS is not served on this port"
        )
    if isinstance(exc, http_exceptions.BadStatusLine):
        return (
            f"the request line is malformed ({_first_line(exc.message)}); send "
            "'METHOD /path HTTP/1.1'"
        )
    if isinstance(exc, http_exceptions.HttpProcessingError):
        detail = _first_line(exc.message) or "malformed"
        if "Too many headers" in detail:
            return f"the request has more than {MAX_HEADERS} headers; send fewer"
        return f"the request is not valid HTTP/1.1: {detail}"
    if status == 504:
        return "the request took too long to handle"
    return f"the request was refused ({status})"


def json_refusal(status: int, message: str) -> web.Response:
    response = web.Response(status=status, body=error_body(message), content_type=JSON_CONTENT_TYPE)
    response.force_close()  # the stream may hold the rest of a broken request: start afresh
    return response


class JsonRefusalHandler(web.RequestHandler):
    """aiohttp's connection handler, answering its own refusals as JSON without a traceback."""

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if status >= 500 and status != 504:
            # A fault of ours: aiohttp logs it with its traceback; the client still gets JSON.
            super().handle_error(request, status, exc, message)
            return json_refusal(status, "internal server error; see the server's log")
        text = describe_refusal(exc, status)
        log.info("refused a request from %s: %s", request.remote, text)
        if request.writer.output_size > 0:
            raise ConnectionError("an answer was already sent on this connection")
        return json_refusal(status, text)


async def close_after(request: web.Request, response: web.StreamResponse) -> web.StreamResponse:
    """Send ``response`` now and close the connection, without waiting for the unread body."""
    response.force_close()
    await response.prepare(request)
    await response.write_eof()
    request.protocol.force_close()
    return response


class RefusingSockSite(web.SockSite):
    """``web.SockSite`` whose connections are ``JsonRefusalHandler`` with a header deadline."""

    def __init__(
        self, runner: web.AppRunner, sock: socket.socket, *, read_timeout_s: float
    ) -> None:
        super().__init__(runner, sock)
        self.read_timeout_s = read_timeout_s

    async def start(self) -> None:
        await web.BaseSite.start(self)
        server = self._runner.server
        assert server is not None
        loop = asyncio.get_running_loop()
        timeout = self.read_timeout_s

        def connection() -> JsonRefusalHandler:
            return JsonRefusalHandler(
                server,
                loop=loop,
                # None means no access log, as AppRunner(access_log=None) passes it; the stubs
                # only name a Logger.
                access_log=None,  # type: ignore[arg-type]
                keepalive_timeout=timeout,
            )

        self._server = await loop.create_server(connection, sock=self._sock, backlog=self._backlog)
