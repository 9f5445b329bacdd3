"""The cache lane: a GET of a list page or a wallpaper is answered from the cache before Tornado builds a request
handler for it.

Why: at one process, Tornado's routing and ``RequestHandler`` (building the handler, its default headers, the
coroutine around ``get``, ``finish``, ``flush``, the transforms, ``on_finish``) cost about as much as all else a
request does. A bare ``HTTPMessageDelegate`` writing the same bytes served 11,000-11,700 req/s where a bare
``RequestHandler`` served 5,600-6,100 (docs/performance.md, "The local-tier lane"). For an answer that is a
dictionary lookup or one Redis read away, that machinery is most of the cost.

How: :class:`CacheLane` is the server's request callback (a Tornado ``HTTPServerConnectionDelegate``, a public
interface) in front of the application. A request it can plan from its start line and headers alone (GET, no
body, no ``If-None-Match``, tracing off; the list route with a query the list handler already validated and no
category, or the detail route with an id the catalog knows may exist without a read) is looked up in the cache's
local tier first (``CachedFunction.local_entry``: no store read, no await) and answered at once from a fresh
entry there. Otherwise the lane fetches it as its handler would (``CachedFunction.entry`` in a task, under the
request's ``time_budget``, counted in flight for the drain) and answers when the entry comes. Answers carry the
headers ``answers.py`` writes for the handlers too, go out through the connection's public ``write_headers`` and
``finish``, and are counted and logged by the application's own ``record_request``.

Everything else goes to the application unchanged: a request the lane does not plan (one that Tornado's gzip
transform will most likely compress among them), and what it fetched but does not answer itself: a cached "not
found", an answer the gzip transform would compress, a fetch that raised (those with the entry or the exception
and the time the lane received the request, ``answers.hand_over``, so that the fetch is made, and counted, once
and the access line's duration counts from the start; the handler answers the 404, the gzip or the error
envelope, and counts the request in flight before the lane stops counting it). ``tests/service/test_lane.py``
compares the lane's answers with the handlers' for the same requests, byte for byte but the date and the request
id.

What the lane leaves out, on purpose: everything a planned request cannot need (cookies, XSRF, streaming bodies,
HEAD, 304s).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, Final

import tornado.web
from tornado import httputil

from cachelayer import CacheEntry, time_budget

from .answers import SERVER, gzip_applies, hand_over, http_date, put_cached, put_defaults, request_id_of
from .negotiation import accepts_cached, header
from .openapi import PREFIX
from .representations import available_dictionary
from .routes import known_list_query, list_args
from .services import Services
from .validation import ApiError, parse_wallpaper_id

__all__ = ["CacheLane", "cache_lane"]

log = logging.getLogger("wallpaper.lane")

LIST_PATH: Final = f"{PREFIX}/wallpaperList.json"
DETAIL_PREFIX: Final = f"{PREFIX}/wallpaper/"
_OK: Final = httputil.ResponseStartLine("", 200, "OK")
# A request with any of these is not the lane's: a body to read, a validator to answer (304), a method not GET.
_NOT_PLANNED: Final = ("If-None-Match", "Content-Length", "Transfer-Encoding")

# (the cached function, its arguments, the ETag memo's key, the route's name, the path)
Plan = tuple[Any, tuple[Any, ...], Any, str, str]


class CacheLane(httputil.HTTPServerConnectionDelegate):
    """The server's request callback: planned GETs answered here from the cache, everything else by ``app``."""

    def __init__(self, app: tornado.web.Application, services: Services) -> None:
        self.app = app
        self.services = services
        self.gzip = bool(app.settings.get("gzip_transform"))
        self.record: Callable[..., None] = app.settings["record_request"]
        self.local = services.cache.local is not None
        self.budget = services.settings.server.request_budget

    def start_request(self, server_conn: object, request_conn: httputil.HTTPConnection) -> httputil.HTTPMessageDelegate:
        return _LaneRequest(self, server_conn, request_conn)

    def plan(self, start_line: httputil.RequestStartLine, headers: httputil.HTTPHeaders) -> Plan | None:
        """What to look up for this request, or None: not the lane's."""
        if start_line.method != "GET" or self.services.tracing is not None:
            return None
        for name in _NOT_PLANNED:
            if name in headers:
                return None
        if self.gzip and self._gzipped(headers):
            return None
        path, _, query = start_line.path.partition("?")
        catalog = self.services.catalog
        if path == LIST_PATH:
            parsed = known_list_query(query)
            if parsed is None or parsed.category is not None:  # unseen (validated by the handler first) or scoped
                return None
            args = list_args(parsed)
            return catalog.list_page, args, ("list", args), "list", path
        if path.startswith(DETAIL_PREFIX) and path.endswith(".json"):
            raw = path[len(DETAIL_PREFIX) : -len(".json")]
            if not 0 < len(raw) <= 64 or "/" in raw:
                return None
            try:
                wallpaper_id = parse_wallpaper_id(raw)
            except ApiError:
                return None  # the handler answers the 400
            if catalog.may_exist_now(wallpaper_id) is not True:
                return None
            return catalog.detail, (wallpaper_id,), ("detail", wallpaper_id), "detail", path
        return None

    def _gzipped(self, headers: httputil.HTTPHeaders) -> bool:
        """Whether Tornado's gzip transform will most likely compress the answer: the client accepts gzip, and
        none of the codings a stored frame goes out as (dcz with the dictionary it holds; zstd, when the cache
        stores without a dictionary). Such a request goes to its handler at once; a wrong guess either way costs
        a little time, never a different answer (:meth:`answer` hands over what the transform compresses)."""
        encoding = header(headers, "Accept-Encoding")
        if encoding is None or not accepts_cached(encoding, "gzip"):
            return False
        dictionary = self.services.dictionary
        if dictionary is None:
            return not accepts_cached(encoding, "zstd")
        held = available_dictionary(header(headers, "Available-Dictionary"))
        return not (held == dictionary.sha256 and accepts_cached(encoding, "dcz"))

    def answer(self, request: _LaneRequest, plan: Plan, entry: CacheEntry[Any]) -> bool:
        """Answer ``request`` with ``entry``; False: its handler answers it (with the entry, handed over)."""
        _, _, key, route, path = plan
        request_headers = request.headers
        try:
            body = entry.body()
            if body == b"null":  # a cached "not found": its handler raises the 404 in the API's envelope
                hand_over(request.request_conn, entry, request.started)
                return False
            headers = httputil.HTTPHeaders({"Server": SERVER, "Date": http_date()})
            request_id = request_id_of(request_headers)
            put_defaults(headers, request_id, self.gzip)
            dictionary = self.services.dictionary
            coding, payload, _ = put_cached(
                headers, entry, body, request_headers, dictionary, self.gzip, key, time.time()
            )
            if self.gzip and gzip_applies(request_headers, coding, payload):
                hand_over(request.request_conn, entry, request.started)  # Tornado's transform compresses it there
                return False
            # What RequestHandler.finish and the gzip transform add, in their order.
            headers["Content-Length"] = str(len(payload))
            if self.gzip:
                if "Vary" in headers:
                    headers["Vary"] += ", Accept-Encoding"
                else:
                    headers["Vary"] = "Accept-Encoding"
        except Exception:
            log.exception("the cache lane failed to answer; the request's handler answers it")
            return False
        request.request_conn.write_headers(_OK, headers, payload)
        request.request_conn.finish()
        self.record(route, "GET", path, 200, time.time() - request.started, entry.outcome.value, request_id)
        return True


class _LaneRequest(httputil.HTTPMessageDelegate):
    """One request: planned and answered by the lane, or passed to the application's own delegate."""

    __slots__ = ("fetching", "headers", "inner", "lane", "plan", "request_conn", "server_conn", "start_line", "started")

    def __init__(self, lane: CacheLane, server_conn: object, request_conn: httputil.HTTPConnection) -> None:
        self.lane = lane
        self.server_conn = server_conn
        self.request_conn = request_conn
        self.inner: httputil.HTTPMessageDelegate | None = None
        self.plan: Plan | None = None
        # The fetch's task: asyncio's loop holds tasks weakly (its docs: keep a reference while it runs).
        self.fetching: asyncio.Task[None] | None = None

    def headers_received(
        self, start_line: httputil.RequestStartLine | httputil.ResponseStartLine, headers: httputil.HTTPHeaders
    ) -> Any:
        self.start_line, self.headers = start_line, headers
        if isinstance(start_line, httputil.RequestStartLine):
            self.plan = self.lane.plan(start_line, headers)
        if self.plan is None:
            return self._to_app()
        self.started = time.time()
        return None

    def data_received(self, chunk: bytes) -> Any:
        if self.inner is not None:
            return self.inner.data_received(chunk)
        return None  # a planned request has no body (no Content-Length, no Transfer-Encoding)

    def finish(self) -> None:
        if self.inner is None:
            plan = self.plan
            assert plan is not None
            lane = self.lane
            try:
                entry = plan[0].local_entry(*plan[1]) if lane.local else None
            except Exception:
                log.exception("the cache lane's local-tier lookup failed; the request's handler answers it")
                self._to_app()
                assert self.inner is not None
                self.inner.finish()
                return
            if entry is None:
                lane.services.request_started()  # now, not when the task starts: a drain must see it in flight
                self.fetching = asyncio.ensure_future(self._fetch_and_answer(plan))
                return
            if lane.answer(self, plan, entry):
                return
            self._to_app()
        assert self.inner is not None
        self.inner.finish()

    async def _fetch_and_answer(self, plan: Plan) -> None:
        """The handler's fetch (under the request's budget), then the answer: here, or by the handler with what
        the fetch gave (an entry or an exception). Counted in flight by :meth:`finish`, until the answer or until
        the handler has counted it itself."""
        lane = self.lane
        handler_counts = False
        try:
            try:
                with time_budget(lane.budget):
                    entry = await plan[0].entry(*plan[1])
            except Exception as exc:  # the handler maps it to its answer (errors.py) and logs it
                hand_over(self.request_conn, exc, self.started)
            else:
                if lane.answer(self, plan, entry):
                    return
            self._to_app()
            assert self.inner is not None
            self.inner.finish()  # schedules the handler's task, whose first step (prepare) counts the request
            handler_counts = True
        except Exception:
            log.exception("the cache lane failed to answer or to pass on a request; its connection is closed")
            close = getattr(self.request_conn, "close", None)  # HTTP1Connection's (not on HTTPConnection)
            if callable(close):
                close()
        finally:
            if handler_counts:
                # After that first step (the loop runs callbacks in the order they were scheduled): the count
                # never reaches 0 in between, where a drain at SIGTERM would stop waiting for this request.
                asyncio.get_running_loop().call_soon(lane.services.request_finished)
            else:
                lane.services.request_finished()

    def on_connection_close(self) -> None:
        if self.inner is not None:
            self.inner.on_connection_close()

    def _to_app(self) -> Any:
        self.inner = self.lane.app.start_request(self.server_conn, self.request_conn)
        return self.inner.headers_received(self.start_line, self.headers)


def cache_lane(app: tornado.web.Application, services: Services) -> CacheLane | None:
    """The lane in front of ``app``, unless ``[server] lane`` is off."""
    if not services.settings.server.lane:
        return None
    return CacheLane(app, services)
