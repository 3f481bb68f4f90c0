"""Below the routes: requests aiohttp refuses while parsing, and requests that are never finished.

Each case is sent over a raw socket, because a well-behaved client library cannot send them.
"""

from __future__ import annotations

import gzip
import http.client
import json
import logging
import re
import socket
import time
from typing import Any

import pytest
from aiohttp import http_exceptions

from neuron_runtime.serving.http_connection import describe_refusal

GOOD_BODY = json.dumps(
    {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
).encode()
INFER = b"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: t\r\n"


def _post(headers: bytes, body: bytes) -> bytes:
    return INFER + headers + b"\r\n" + body


Reply = tuple[int, str, bytes]


def send_raw(port: int, data: bytes, timeout: float = 10.0) -> Reply:
    """(status, content type, body) of the answer to ``data`` sent as it is."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        response = http.client.HTTPResponse(sock)
        response.begin()
        return response.status, response.getheader("Content-Type") or "", response.read()


def error_of(body: bytes) -> str:
    document = json.loads(body)
    assert isinstance(document, dict) and isinstance(document["error"], str)
    error: str = document["error"]
    assert len(error) < 400, "the message quotes too much of the request"
    return error


def _chunked_garbage() -> bytes:
    return _post(b"Transfer-Encoding: chunked\r\n", b"zz\r\nabc\r\n0\r\n\r\n")


def _bad_gzip() -> bytes:
    body = b"this is not gzip"
    return _post(b"Content-Encoding: gzip\r\nContent-Length: %d\r\n" % len(body), body)


def _gzip_ok() -> bytes:
    body = gzip.compress(GOOD_BODY)
    return _post(b"Content-Encoding: gzip\r\nContent-Length: %d\r\n" % len(body), body)


MALFORMED = [
    ("long-url", b"GET /v2/" + b"a" * 10_000 + b" HTTP/1.1\r\nHost: t\r\n\r\n", 400, "8190 bytes"),
    ("long-header", b"GET /v2 HTTP/1.1\r\nHost: t\r\nX-A: " + b"a" * 10_000 + b"\r\n\r\n", 400,
     "shorten the URL or the header"),
    ("many-headers", b"GET /v2 HTTP/1.1\r\n" + b"".join(b"X-%d: a\r\n" % i for i in range(200))
     + b"\r\n", 400, "more than 128 headers"),
    ("not-http", b"HELLO\r\n\r\n", 400, "method such as GET or POST"),
    ("tls-hello", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40 + b"\r\n\r\n",
     400, "HTTPS"),
    ("bad-version", b"GET /v2 HTTP/9.9\r\nHost: t\r\n\r\n", 400, "request line is malformed"),
    ("bad-content-length", _post(b"Content-Length: abc\r\n", b""), 400, "not valid HTTP/1.1"),
    ("bad-header-name", b"GET /v2 HTTP/1.1\r\nHost: t\r\nBad Name: x\r\n\r\n", 400,
     "not valid HTTP/1.1"),
    ("bad-chunking", _chunked_garbage(), 400, "not valid HTTP/1.1|body is malformed"),
    ("bad-gzip", _bad_gzip(), 400, "body is malformed"),
    ("long-path-under-limit", b"GET /" + b"b" * 8000 + b" HTTP/1.1\r\nHost: t\r\n\r\n", 404,
     r"no route GET /b+\.\.\. \(8001 characters\)"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("data", "status", "words"),
    [case[1:] for case in MALFORMED],
    ids=[case[0] for case in MALFORMED],
)
def test_every_refusal_is_json_without_a_traceback(
    *,
    start_server: Any,
    fake_runtime: Any,
    caplog: pytest.LogCaptureFixture,
    data: bytes,
    status: int,
    words: str,
) -> None:
    server = start_server(fake_runtime)
    port = server.server.http_port
    with caplog.at_level(logging.DEBUG):
        got, content_type, body = send_raw(port, data)
    assert got == status
    assert content_type.startswith("application/json")
    assert re.search(words, error_of(body)), error_of(body)
    assert not [r for r in caplog.records if r.exc_info], "a refusal logged a traceback"
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    good = _post(b"Content-Length: %d\r\n" % len(GOOD_BODY), GOOD_BODY)
    assert send_raw(port, good)[0] == 200


def test_a_body_that_cannot_be_decoded_is_answered_and_the_connection_closed(
    start_server: Any, fake_runtime: Any
) -> None:
    """Not kept alive to linger over the rest of a body that failed to decode: aiohttp's
    lingering read raised the decoding error again and logged it with a traceback."""
    server = start_server(fake_runtime)
    with socket.create_connection(("127.0.0.1", server.server.http_port), timeout=10) as sock:
        sock.sendall(_bad_gzip())
        response = http.client.HTTPResponse(sock)
        response.begin()
        assert response.status == 400
        assert (response.getheader("Connection") or "").lower() == "close"
        response.read()
        assert sock.recv(1) == b""  # closed by the server


def test_gzip_body_is_still_decoded(start_server: Any, fake_runtime: Any) -> None:
    server = start_server(fake_runtime)
    assert send_raw(server.server.http_port, _gzip_ok())[0] == 200


def _until_closed(sock: socket.socket, limit_s: float) -> tuple[float, bytes]:
    """Read until the server closes; (seconds it took, what it sent). Bounded by ``limit_s``."""
    started = time.monotonic()
    sock.settimeout(limit_s)
    received = b""
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
    except TimeoutError:
        pytest.fail(f"the connection was still open after {limit_s} s; got {received[:200]!r}")
    except ConnectionResetError:
        pass
    return time.monotonic() - started, received


READ_TIMEOUT_S = 1.0


@pytest.mark.parametrize(
    "sent",
    [b"", b"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: t\r\n", b"GET /v2 HT"],
    ids=["nothing", "half-the-headers", "half-the-request-line"],
)
def test_unfinished_headers_are_closed_at_the_read_timeout(
    start_server: Any, fake_runtime: Any, sent: bytes
) -> None:
    server = start_server(fake_runtime, read_timeout_s=READ_TIMEOUT_S)
    with socket.create_connection(("127.0.0.1", server.server.http_port)) as sock:
        sock.sendall(sent)
        elapsed, received = _until_closed(sock, limit_s=READ_TIMEOUT_S + 4)
    assert received == b""
    assert READ_TIMEOUT_S * 0.8 <= elapsed <= READ_TIMEOUT_S + 2


def test_unfinished_body_gets_408_and_is_closed(start_server: Any, fake_runtime: Any) -> None:
    server = start_server(fake_runtime, read_timeout_s=READ_TIMEOUT_S)
    with socket.create_connection(("127.0.0.1", server.server.http_port)) as sock:
        sock.sendall(_post(b"Content-Length: %d\r\n" % len(GOOD_BODY), GOOD_BODY[:10]))
        elapsed, received = _until_closed(sock, limit_s=READ_TIMEOUT_S + 4)
    assert READ_TIMEOUT_S * 0.8 <= elapsed <= READ_TIMEOUT_S + 2
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 ")
    assert b"application/json" in head
    assert "did not arrive within 1 s" in json.loads(body)["error"]


def test_kept_alive_connection_is_closed_after_the_read_timeout(
    start_server: Any, fake_runtime: Any
) -> None:
    server = start_server(fake_runtime, read_timeout_s=READ_TIMEOUT_S)
    with socket.create_connection(("127.0.0.1", server.server.http_port)) as sock:
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: t\r\n\r\n")
        elapsed, received = _until_closed(sock, limit_s=READ_TIMEOUT_S + 4)
    assert received.startswith(b"HTTP/1.1 200 ")
    assert elapsed <= READ_TIMEOUT_S + 2


def test_slow_but_steady_requests_are_served(start_server: Any, fake_runtime: Any) -> None:
    """The deadline is per request: a connection used again and again stays useful."""
    server = start_server(fake_runtime, read_timeout_s=READ_TIMEOUT_S)
    conn = http.client.HTTPConnection("127.0.0.1", server.server.http_port, timeout=10)
    for _ in range(3):
        conn.request("POST", "/v2/models/mlp/infer", body=GOOD_BODY)
        response = conn.getresponse()
        assert response.status == 200
        assert json.loads(response.read())["outputs"]
        time.sleep(READ_TIMEOUT_S * 0.5)
    conn.close()


@pytest.mark.parametrize(
    ("exc", "status", "words"),
    [
        (http_exceptions.LineTooLong(b"/aaa", 8190), 400, "longer than the server's limit"),
        (http_exceptions.BadHttpMethod("HELLO"), 400, "method such as GET"),
        (http_exceptions.BadStatusLine("GET / HTTP/9", "Invalid HTTP version"), 400,
         "request line is malformed (Invalid HTTP version)"),
        (http_exceptions.BadHttpMessage("Too many headers received"), 400, "more than 128"),
        (http_exceptions.InvalidHeader(b"Bad Name"), 400, "not valid HTTP/1.1"),
        (http_exceptions.BadHttpMessage("x" * 5000), 400, "x..."),
        (None, 504, "too long"),
    ],
    ids=["line-too-long", "method", "status-line", "many-headers", "header", "long-detail",
         "handler-timeout"],
)  # fmt: skip
def test_describe_refusal(exc: BaseException | None, status: int, words: str) -> None:
    text = describe_refusal(exc, status)
    assert words in text
    assert len(text) < 400
