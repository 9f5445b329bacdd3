"""No 5xx from client input, and an answer in the JSON envelope wherever the server can shape one: malformed and
oversize requests (service/http_edges.py), 405 with Allow, HEAD, Accept-Encoding q=0, X-Request-Id everywhere, the
body timeout, and the client address (trusted proxies only; what the column holds)."""

from __future__ import annotations

import asyncio
import inspect
import socket

import orjson
import pytest
import redis.asyncio
import tornado.web
from tornado.http1connection import HTTP1Connection
from tornado.httpserver import HTTPServer
from tornado.httputil import HTTPHeaders, HTTPServerRequest, RequestStartLine

from service.addresses import TrustedProxies, canonical_ip
from service.config import Settings
from service.http_edges import BARE_400
from tests.service._support import API, Running, mysql_rows, run_service, stop_service, with_sections


async def raw(port: int, request: bytes) -> bytes:
    """Send ``request`` on a new connection and read until the server closes it (bounded: 5 s)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        chunks = []
        async with asyncio.timeout(5.0):
            while chunk := await reader.read(65536):
                chunks.append(chunk)
        return b"".join(chunks)
    except ConnectionResetError:
        return b""
    finally:
        writer.close()


def parse(response: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = response.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers, body


# -- the Tornado behaviour http_edges relies on ----------------------------------------------------------------


async def test_tornado_still_answers_malformed_requests_with_the_bare_400() -> None:
    """If this fails after a Tornado upgrade, revisit service/http_edges.py (it rewrites exactly these bytes)."""
    assert repr(BARE_400).replace("'", '"') in inspect.getsource(HTTP1Connection._read_message_inner)

    class Hello(tornado.web.RequestHandler):
        def get(self) -> None:
            self.write("hi")

    sock, port = _listening_socket()
    server = HTTPServer(tornado.web.Application([("/", Hello)]))
    server.add_sockets([sock])
    try:
        assert await raw(port, b"GET / HTTP/2.0\r\nHost: x\r\n\r\n") == BARE_400
    finally:
        server.stop()


def test_tornado_reads_each_request_head_with_read_until_regex() -> None:
    """The 414/431 checks sit in _AnsweringStream.read_until_regex: Tornado must still read heads with it."""
    assert "self.stream.read_until_regex(" in inspect.getsource(HTTP1Connection._read_message_inner)


def _listening_socket() -> tuple[socket.socket, int]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    sock.setblocking(False)
    return sock, int(sock.getsockname()[1])


# -- malformed and oversize requests --------------------------------------------------------------------------

MALFORMED = [
    b"GET / HTTP/2.0\r\nHost: x\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: a b\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Bad: a\x01b\r\n\r\n",
    b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
    b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
    b"POST /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n",
    b"GARBAGE\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nno colon here\r\n\r\n",
]


@pytest.mark.parametrize("request_bytes", MALFORMED)
async def test_malformed_requests_get_the_json_envelope(service: Running, request_bytes: bytes) -> None:
    status, headers, body = parse(await raw(service.port, request_bytes))
    assert status == 400
    assert headers["content-type"].startswith("application/json")
    assert headers["connection"] == "close"
    assert headers["x-request-id"]
    assert orjson.loads(body)["code"] == 40004


async def test_oversize_request_line_is_414_and_headers_431(service: Running) -> None:
    server = service.services.settings.server
    long_url = b"/healthz?x=" + b"a" * (server.max_request_line + 100)
    status, headers, body = parse(await raw(service.port, b"GET " + long_url + b" HTTP/1.1\r\nHost: x\r\n\r\n"))
    assert status == 414
    assert orjson.loads(body)["code"] == 41401
    assert headers["x-request-id"]
    big = b"X-Big: " + b"b" * (server.max_header_bytes + 100) + b"\r\n"
    status, _, body = parse(await raw(service.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + big + b"\r\n"))
    assert status == 431
    assert orjson.loads(body)["code"] == 43101
    # within the limits: served as usual
    status, _, _ = parse(await raw(service.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"))
    assert status == 200


async def test_each_head_on_a_kept_alive_connection_is_checked(service: Running) -> None:
    # One _AnsweringStream per connection: the second request's head goes through it as the first did.
    long_url = b"/healthz?x=" + b"a" * (service.services.settings.server.max_request_line + 100)
    pipelined = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET " + long_url + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    status, headers, rest = parse(await raw(service.port, pipelined))
    assert status == 200
    status, headers, body = parse(rest[int(headers["content-length"]) :])
    assert status == 414
    assert headers["connection"] == "close"
    assert orjson.loads(body)["code"] == 41401


async def test_a_trickled_body_is_cut_off(seeded: Settings, redis_client: redis.asyncio.Redis) -> None:
    running = await run_service(with_sections(seeded, server={"body_timeout": 0.5}))
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", running.port)
        head = b"/wallpaper/1/download HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\n"
        writer.write(b"POST " + API.encode() + head)
        closed = False
        async with asyncio.timeout(10):  # bounded: the server must close long before this
            for _ in range(50):
                writer.write(b"x")
                try:
                    await writer.drain()
                except ConnectionError:
                    closed = True
                    break
                try:
                    if await asyncio.wait_for(reader.read(1024), 0.2) == b"":
                        closed = True
                        break
                except TimeoutError:
                    continue
        writer.close()
        assert closed
    finally:
        await stop_service(running)


# -- methods, HEAD, encodings, request ids ----------------------------------------------------------------------


async def test_405_carries_allow_and_request_id(service: Running) -> None:
    response = await service.fetch(f"{API}/wallpaper/1.json", "DELETE")
    assert response.code == 405
    assert response.headers["Allow"] == "GET, HEAD"
    assert response.headers["X-Request-Id"]
    response = await service.fetch(f"{API}/wallpaper/1/download", "GET")
    assert response.headers["Allow"] == "POST"
    # A method Tornado does not know is refused before prepare(): still an id and Allow.
    foo = b"FOO /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    status, headers, body = parse(await raw(service.port, foo))
    assert status == 405
    assert headers["allow"] == "GET, HEAD"
    assert headers["x-request-id"]
    assert orjson.loads(body)["code"] == 40501


async def test_request_id_on_400_and_404(service: Running) -> None:
    for path in (f"{API}/wallpaperList.json?pageSize=0", f"{API}/nope", f"{API}/wallpaper/99999999.json"):
        response = await service.fetch(path, headers={"X-Request-Id": "given-id-1"})
        assert response.code in (400, 404)
        assert response.headers["X-Request-Id"] == "given-id-1"


async def test_head_on_get_routes(service: Running) -> None:
    for path, admin in ((f"{API}/wallpaperList.json", False), (f"{API}/wallpaper/5.json", False),
                        (f"{API}/categories.json", False), ("/healthz", False), ("/openapi.json", False),
                        ("/readyz", True), ("/metrics", True)):  # fmt: skip
        get = await service.fetch(path, headers={"Accept-Encoding": "identity"}, admin=admin)
        head = await service.fetch(path, "HEAD", headers={"Accept-Encoding": "identity"}, admin=admin)
        assert head.code == 200, path
        assert head.body == b""
        assert head.headers["Content-Type"] == get.headers["Content-Type"]


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        ("gzip;q=0", None),
        ("gzip; q=0.0, identity", None),
        ("*;q=0", None),
        ("gzip;q=0, zstd;q=0", None),
        ("gzip", "gzip"),
        ("*", "gzip"),
        ("zstd;q=0, gzip;q=0.5", "gzip"),
        # Stored with the shipped dictionary: no zstd passthrough (a zstd client without the dictionary could not
        # decode the frame) and no gzip asked for: the body (test_dictionary_transport.py; without a dictionary
        # test_api.py's test_zstd_passthrough_and_gzip).
        ("zstd", None),
    ],
)
async def test_accept_encoding_q0_is_a_refusal(service: Running, accept: str, expected: str | None) -> None:
    response = await service.fetch(f"{API}/wallpaperList.json?pageSize=20", headers={"Accept-Encoding": accept})
    assert response.code == 200
    assert response.headers.get("Content-Encoding") == expected


# -- the client address -------------------------------------------------------------------------------------------


def request_from(peer: str, **headers: str) -> HTTPServerRequest:
    request = HTTPServerRequest(
        start_line=RequestStartLine("POST", "/", "HTTP/1.1"), headers=HTTPHeaders({"Host": "x", **headers})
    )
    request.remote_ip = peer
    return request


def test_addresses_are_what_the_column_holds() -> None:
    assert canonical_ip("fe80:0000:0000:0000:0000:0000:0000:0001%1234567890") is None
    assert canonical_ip("fe80::1%eth0") is None
    assert canonical_ip("2001:0db8:0000:0000:0000:0000:0000:0001") == "2001:db8::1"
    assert canonical_ip("::ffff:192.0.2.7") == "192.0.2.7"
    assert canonical_ip("1.2.3.4 ") == "1.2.3.4"
    assert canonical_ip("999.1.1.1") is None
    assert canonical_ip("x" * 100) is None
    assert canonical_ip("") is None
    longest = "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255"
    assert canonical_ip(longest) is not None
    assert len(canonical_ip(longest) or "") <= 45


def test_forwarded_headers_only_from_trusted_proxies() -> None:
    nobody = TrustedProxies([])
    assert nobody.client_ip(request_from("10.0.0.5", **{"X-Forwarded-For": "203.0.113.9"})) == "10.0.0.5"
    assert nobody.client_ip(request_from("10.0.0.5", **{"X-Real-Ip": "203.0.113.9"})) == "10.0.0.5"
    proxies = TrustedProxies(["10.0.0.0/8", "::1/128"])
    assert proxies.client_ip(request_from("10.0.0.5", **{"X-Real-Ip": "203.0.113.9"})) == "203.0.113.9"
    chain = {"X-Forwarded-For": "198.51.100.1, 203.0.113.9, 10.0.0.7"}
    assert proxies.client_ip(request_from("10.0.0.5", **chain)) == "203.0.113.9"  # the right-most untrusted hop
    bad = {"X-Forwarded-For": "fe80::1%1234567890"}
    assert proxies.client_ip(request_from("10.0.0.5", **bad)) is None
    assert proxies.client_ip(request_from("192.0.2.1", **chain)) == "192.0.2.1"  # untrusted peer: headers ignored
    assert proxies.client_ip(request_from("10.0.0.5")) == "10.0.0.5"


async def test_a_zone_id_in_x_forwarded_for_is_not_a_500(seeded: Settings, redis_client: redis.asyncio.Redis) -> None:
    zone = "fe80:0000:0000:0000:0000:0000:0000:0001%1234567890"
    for trusted, stored in (([], "127.0.0.1"), (["127.0.0.0/8"], None)):
        running = await run_service(with_sections(seeded, server={"trusted_proxies": trusted}))
        try:
            key = f"zone-{len(trusted)}-{id(running):x}"
            response = await running.fetch(
                f"{API}/wallpaper/31/download", "POST", headers={"X-Forwarded-For": zone, "Idempotency-Key": key}
            )
            assert response.code == 200
            rows = mysql_rows(seeded, "SELECT client_ip FROM download_events WHERE idempotency_key = %s", (key,))
            assert rows == [(stored,)]
        finally:
            await stop_service(running)

