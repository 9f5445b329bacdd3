"""The service's two listening addresses: the public port (the API, ``/healthz``) and the admin port
(``/metrics``, ``/readyz``), how each is bound, and whether another server already holds one."""

from __future__ import annotations

import socket
from dataclasses import dataclass

import tornado.netutil

from .config import Settings

__all__ = ["Address", "Sockets", "addresses", "bind", "port_taken"]

_ADMIN_BACKLOG = 128  # scrapes and probes: a few a second at most


@dataclass(frozen=True)
class Address:
    section: str  # the settings section naming it: "server" (public) or "admin"
    host: str
    port: int
    backlog: int


@dataclass(frozen=True)
class Sockets:
    public: list[socket.socket]
    admin: list[socket.socket]


def addresses(settings: Settings) -> tuple[Address, Address]:
    """(public, admin)."""
    s, a = settings.server, settings.admin
    return Address("server", s.host, s.port, s.backlog), Address("admin", a.host, a.port, _ADMIN_BACKLOG)


def bind(address: Address, *, reuse_port: bool) -> list[socket.socket]:
    return tornado.netutil.bind_sockets(
        address.port, address.host, family=socket.AF_INET, backlog=address.backlog, reuse_port=reuse_port
    )


def port_taken(settings: Settings) -> str | None:
    """Why the service cannot have one of its ports, or None. With ``reuse_port`` a second service would bind the
    same port beside the first (SO_REUSEPORT) and the kernel would split the connections between them (scrapes
    too: half would read the other service's figures): a probe bound without SO_REUSEPORT fails while any socket
    listens there."""
    for address in addresses(settings):
        if address.port == 0:
            continue
        probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # connections in TIME_WAIT are no owner
            probe.bind((address.host, address.port))
        except OSError as exc:
            how = "--port or " if address.section == "server" else ""
            return (
                f"port {address.port} on {address.host} is not free ({exc.strerror}): another server holds it; stop "
                f"it or choose another port ({address.section}.port: {how}WALLPAPER_{address.section.upper()}__PORT)"
            )
        finally:
            probe.close()
    return None
