"""The Tornado internals the service relies on, pinned against the installed Tornado.

``PRIVATES`` lists every private name of Tornado's that service/ reads or writes, with where and why; what is
left is on the hot path, where the public way costs a validation or a timestamp per response. Each is pinned by
what the service relies on: the attribute is there, Tornado's own code uses it the same way, and the behaviour
built on it holds. :func:`test_every_private_the_service_touches_is_listed` scans service/, so a new one cannot
go in unlisted (and one no longer used cannot stay listed). pyproject bounds Tornado to the minor series these
were checked against; an upgrade that moves one fails here, with a message that names it and what to re-check.
(service/http_edges.py uses none: the behaviour it relies on is pinned in tests/service/test_http_edges.py.)
"""

from __future__ import annotations

import ast
import gzip
import importlib
import inspect
import re
import socket
import textwrap
import tomllib
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import tornado
import tornado.web
from tornado.httpclient import AsyncHTTPClient
from tornado.httpserver import HTTPServer
from tornado.httputil import HTTPHeaders, HTTPServerRequest, RequestStartLine

import service
from service.base_handler import JSON_TYPE, BaseHandler
from service.negotiation import GzipWhenAccepted

#: the minor series the pins below were checked against (and pyproject's bound)
CHECKED: tuple[int, int] = (6, 6)
PACKAGE = Path(service.__file__).parent


@dataclass(frozen=True)
class Private:
    owner: str  # "module:Class", the Tornado class whose private it is
    name: str
    use: str


PRIVATES = (
    Private("tornado.web:RequestHandler", "_headers",
            "base_handler.BaseHandler: clear() builds the header map itself (Date formatted once a second); "
            "set_default_headers() and send_entry() put trusted values straight into it (no set_header "
            "validation per value)"),
    Private("tornado.web:RequestHandler", "_write_buffer",
            "base_handler.BaseHandler.clear: empties the body written so far, as Tornado's clear() does"),
    Private("tornado.web:GZipContentEncoding", "_gzipping",
            "negotiation.GzipWhenAccepted: whether to gzip, decided from Accept-Encoding with its q-values"),
)  # fmt: skip


def _version() -> str:
    return f"Tornado {tornado.version}"


def test_the_installed_tornado_is_the_one_these_pins_were_checked_for() -> None:
    assert tornado.version_info[:2] == CHECKED, (
        f"{_version()}: the privates in PRIVATES (tests/service/test_tornado_privates.py) were checked against "
        f"{CHECKED[0]}.{CHECKED[1]}; re-check each against the new tornado/web.py, then move CHECKED and the bound "
        "in pyproject.toml"
    )


def test_pyproject_bounds_tornado_to_the_checked_series() -> None:
    project = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())["project"]
    (spec,) = [s for s in project["optional-dependencies"]["service"] if s.startswith("tornado")]
    major, minor = CHECKED
    assert spec == f"tornado>={major}.{minor},<{major}.{minor + 1}", spec


# -- no private unlisted ---------------------------------------------------------------------------------------


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _tornado_names(cls: type) -> set[str]:
    """The private names a Tornado class defines or sets on its instances (``self._x``)."""
    names = {name for name in vars(cls) if _private(name)}
    names.update(re.findall(r"self\.(_[A-Za-z]\w*)", inspect.getsource(cls)))
    return names


def _service_modules() -> list[Any]:
    names = [".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts) for p in sorted(PACKAGE.rglob("*.py"))]
    return [importlib.import_module(name.removesuffix(".__init__")) for name in names]


def _privates_in_use() -> set[tuple[str, str, str]]:
    """(owner, name, where) of every Tornado private that service/ touches: on its subclasses of Tornado's
    classes (an attribute, or a method it overrides), imported from Tornado, or read off a Tornado name."""
    found: set[tuple[str, str, str]] = set()
    for module in _service_modules():
        for cls in vars(module).values():
            if not isinstance(cls, type) or cls.__module__ != module.__name__:
                continue
            theirs = [(base, _tornado_names(base)) for base in cls.__mro__ if base.__module__.startswith("tornado.")]
            if not theirs:
                continue
            tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
            ours = {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute) and _private(node.attr)}
            ours |= {node.name for node in ast.walk(tree)
                     if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and _private(node.name)}  # fmt: skip
            for name in ours:
                owner = next((base for base, names in theirs if name in names), None)
                if owner is not None:
                    found.add((f"{owner.__module__}:{owner.__qualname__}", name, f"{module.__name__}.{cls.__name__}"))
        source = ast.parse(Path(module.__file__).read_text())
        from_tornado = {"tornado"}
        for node in ast.walk(source):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tornado"):
                for alias in node.names:
                    from_tornado.add(alias.asname or alias.name)
                    if _private(alias.name):
                        found.add((f"{node.module}", alias.name, module.__name__))
        for node in ast.walk(source):
            if isinstance(node, ast.Attribute) and _private(node.attr):
                root = node.value
                while isinstance(root, ast.Attribute):
                    root = root.value
                if isinstance(root, ast.Name) and root.id in from_tornado:
                    found.add((ast.unparse(node.value), node.attr, module.__name__))
    return found


def test_every_private_the_service_touches_is_listed() -> None:
    in_use = {(owner, name) for owner, name, _ in _privates_in_use()}
    listed = {(p.owner, p.name) for p in PRIVATES}
    where = {(owner, name): place for owner, name, place in _privates_in_use()}
    unlisted = {f"{owner}.{name} (in {where[owner, name]})" for owner, name in in_use - listed}
    assert not unlisted, f"Tornado privates used by service/ but not in PRIVATES: {sorted(unlisted)}"
    assert not listed - in_use, f"in PRIVATES but no longer used by service/: {sorted(listed - in_use)}"


def test_the_scan_sees_a_private() -> None:
    # What the scan must catch, so that the test above cannot pass by seeing nothing.
    assert ("tornado.web:RequestHandler", "_headers", "service.base_handler.BaseHandler") in _privates_in_use()


# -- RequestHandler: _headers, _write_buffer (BaseHandler.clear) ------------------------------------------------


def _self_assignments(function: Any) -> set[str]:
    tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
    targets = [t for node in ast.walk(tree) if isinstance(node, ast.Assign | ast.AnnAssign)
               for t in (node.targets if isinstance(node, ast.Assign) else [node.target])]  # fmt: skip
    return {t.attr for t in targets if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name)
            and t.value.id == "self"}  # fmt: skip


def test_tornados_clear_resets_what_ours_resets() -> None:
    # BaseHandler.clear replaces RequestHandler.clear: _headers and _write_buffer itself, the status (_status_code,
    # _reason) through set_status(200). Anything else Tornado's clear() starts to reset, ours would not.
    theirs = _self_assignments(tornado.web.RequestHandler.clear)
    assert theirs == {"_headers", "_write_buffer", "_status_code", "_reason"}, (
        f"{_version()}: RequestHandler.clear() now sets {sorted(theirs)}; BaseHandler.clear "
        "(service/base_handler.py) replaces it and must reset the same"
    )
    assert "self.set_default_headers()" in inspect.getsource(tornado.web.RequestHandler.clear)
    status = _self_assignments(tornado.web.RequestHandler.set_status)
    assert {"_status_code", "_reason"} <= status, f"{_version()}: set_status() no longer sets {status}"


def _listening_socket() -> tuple[socket.socket, int]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    sock.setblocking(False)
    return sock, int(sock.getsockname()[1])


async def test_tornado_sends_the_header_map_and_buffer_that_clear_builds() -> None:
    seen: dict[str, Any] = {}

    class Probe(BaseHandler):
        def get(self) -> None:
            seen["map"] = type(self._headers)
            self.set_header("X-Probe", "1")  # Tornado's own setter: into the map clear() built
            seen["set_header"] = self._headers.get("X-Probe")
            self.write(b"discarded")
            seen["write"] = list(self._write_buffer)
            self.set_status(418)
            self.clear()
            seen["cleared"] = (list(self._write_buffer), self.get_status(), "X-Probe" in self._headers)
            self.write(b"kept")

    stub = SimpleNamespace(request_started=lambda: None, request_finished=lambda: None, dictionary=None, tracing=None)
    sock, port = _listening_socket()
    server = HTTPServer(tornado.web.Application([("/", Probe, {"services": stub})]))
    server.add_sockets([sock])
    client = AsyncHTTPClient(force_instance=True)
    try:
        response = await client.fetch(f"http://127.0.0.1:{port}/", headers={"X-Request-Id": "probe-1"})
    finally:
        client.close()
        server.stop()
        await server.close_all_connections()
    assert seen == {
        "map": HTTPHeaders,
        "set_header": "1",
        "write": [b"discarded"],
        "cleared": ([], 200, False),
    }, f"{_version()}: RequestHandler's _headers / _write_buffer no longer work as BaseHandler.clear relies on"
    assert response.code == 200
    assert response.body == b"kept"
    assert response.headers["Content-Type"] == JSON_TYPE
    assert response.headers["X-Request-Id"] == "probe-1"
    assert response.headers["Server"] == f"TornadoServer/{tornado.version}"
    assert response.headers["Date"].endswith(" GMT")


# -- GZipContentEncoding: _gzipping (GzipWhenAccepted) ----------------------------------------------------------


def test_tornados_gzip_transform_decides_by_gzipping_alone() -> None:
    init = _self_assignments(tornado.web.GZipContentEncoding.__init__)
    assert init == {"_gzipping"}, (
        f"{_version()}: GZipContentEncoding.__init__ now sets {sorted(init)}; GzipWhenAccepted "
        "(service/negotiation.py) overrides its _gzipping and must still mean the same"
    )
    first_chunk = inspect.getsource(tornado.web.GZipContentEncoding.transform_first_chunk)
    assert "if self._gzipping:" in first_chunk, f"{_version()}: transform_first_chunk no longer reads _gzipping"


BODY = b'{"code":0,"msg":"ok","data":[' + b",".join(b'{"id":%d}' % i for i in range(300)) + b"]}"


@pytest.mark.parametrize(
    ("accept", "gzipped"),
    [("gzip", True), ("*", True), ("GZIP", True), ("br, gzip;q=0.5", True), ("gzip;q=0", False),
     ("*;q=0", False), ("br", False), ("", False)],
)  # fmt: skip
def test_gzip_when_accepted_gzips_exactly_what_the_q_values_accept(accept: str, gzipped: bool) -> None:
    start_line = RequestStartLine("GET", "/", "HTTP/1.1")
    request_headers = HTTPHeaders({"Host": "x", "Accept-Encoding": accept})
    request = HTTPServerRequest(start_line=start_line, headers=request_headers)
    transform = GzipWhenAccepted(request)
    headers = HTTPHeaders({"Content-Type": JSON_TYPE, "Content-Length": str(len(BODY))})
    status, headers, chunk = transform.transform_first_chunk(200, headers, BODY, True)
    assert status == 200
    assert headers["Vary"] == "Accept-Encoding"
    assert (headers.get("Content-Encoding") == "gzip") is gzipped, f"{_version()}: Accept-Encoding {accept!r}"
    assert (gzip.decompress(chunk) if gzipped else chunk) == BODY
    assert int(headers["Content-Length"]) == len(chunk)
