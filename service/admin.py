"""The admin port's app: ``/metrics`` and ``/readyz``, for operators, apart from the public API.

The public port answers both with 404, so a client can neither read the service's figures nor probe its
dependencies. Bound to loopback unless ``admin.host`` says otherwise (docs/service.md: Kubernetes). Requests here
are logged and counted like the public ones (``log_function``: the public app's, one access log a process).
"""

from __future__ import annotations

from collections.abc import Callable

import tornado.web

from .negotiation import GzipWhenAccepted
from .routes import MetricsHandler, NotFoundHandler, ReadyHandler
from .services import Services

__all__ = ["make_admin_app"]


def make_admin_app(
    services: Services, log_function: Callable[[tornado.web.RequestHandler], None]
) -> tornado.web.Application:
    gzip = services.settings.server.gzip  # a scrape of many workers is ~100 KB of text; Prometheus accepts gzip
    args = {"services": services}
    return tornado.web.Application(
        [
            tornado.web.url(r"/metrics", MetricsHandler, {**args, "route": "metrics"}, name="metrics"),
            tornado.web.url(r"/readyz", ReadyHandler, {**args, "route": "readyz"}, name="readyz"),
        ],
        default_handler_class=NotFoundHandler,
        default_handler_args={**args, "route": "not_found"},
        transforms=[GzipWhenAccepted] if gzip else [],
        gzip_transform=gzip,
        log_function=log_function,
        serve_traceback=False,
    )
