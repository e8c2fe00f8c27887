"""Who may change the server's state (thresholds today; datasets and jobs with the studio).

With an API token configured, a write needs `Authorization: Bearer <token>` (compared in constant
time). Without one, a write must come from a loopback client *and* name a loopback Host: a page on
another site that points its DNS name at 127.0.0.1 (DNS rebinding) sends its own name as Host and
is refused, and so is any client on the network.
"""

from __future__ import annotations

import hmac
import ipaddress

from service.errors import RequestError

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


class Unauthorized(RequestError):
    status = 401
    field = "authorization"


class Forbidden(RequestError):
    status = 403
    field = "authorization"


def _is_loopback_ip(host: str | None) -> bool:
    try:
        return host is not None and ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _host_name(header: str) -> str:
    """The name part of a Host header: `[::1]:3000` -> `::1`, `localhost:3000` -> `localhost`."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def check_write(*, token: str | None, authorization: str, client_host: str | None, host_header: str) -> None:
    """Raise Unauthorized / Forbidden unless this request may write (see the module docstring)."""
    if token:
        scheme, _, given = authorization.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
            raise Unauthorized(
                "this change needs 'Authorization: Bearer <token>' (the server's MANYLABEL_API_TOKEN)"
            )
        return
    if not _is_loopback_ip(client_host):
        raise Forbidden(
            "changes are accepted only from this machine while no MANYLABEL_API_TOKEN is set; set one "
            "on the server and send 'Authorization: Bearer <token>'"
        )
    name = _host_name(host_header)
    if name not in LOOPBACK_NAMES and not _is_loopback_ip(name):
        raise Forbidden(
            f"Host {host_header[:100]!r} is not this machine's loopback name; without MANYLABEL_API_TOKEN "
            "changes must be sent to localhost or 127.0.0.1"
        )
