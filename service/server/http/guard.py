"""Who may change the server's state (thresholds today; datasets and jobs with the studio).

With an API token configured, a write needs `Authorization: Bearer <token>` (compared in constant
time). Without one, a write must come from a loopback client *and* name a loopback Host: a page on
another site that points its DNS name at 127.0.0.1 (DNS rebinding) sends its own name as Host and
is refused, and so is any client on the network.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
from typing import Any
from urllib.parse import urlsplit

from starlette.requests import Request

from service.errors import RequestError
from service.server.settings import get_settings

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


def check_writer(request: Request) -> None:
    """`check_write` for a Starlette request, with the server's token; also refuses a write that a page
    on another site sends (a cross-site `Origin` or `Sec-Fetch-Site`): any web page may post a form
    to 127.0.0.1."""
    token = get_settings().api_token
    check_write(
        token=token.get_secret_value() if token else None,
        authorization=request.headers.get("authorization", ""),
        client_host=request.client.host if request.client else None,
        host_header=request.headers.get("host", ""),
    )
    origin = request.headers.get("origin")
    host = request.headers.get("host", "").lower()
    cross = request.headers.get("sec-fetch-site", "").lower() == "cross-site"
    if cross or (origin is not None and urlsplit(origin.lower()).netloc != host):
        raise Forbidden(f"a page from {str(origin)[:100]!r} may not change this server; use its own page")


async def read_json(request: Request, max_bytes: int) -> Any:
    """A JSON request body: Content-Type application/json (which a cross-site form cannot send without
    asking first), at most `max_bytes`, valid JSON (not nested past the parser's depth)."""
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type != "application/json":
        raise RequestError(
            f"body: send JSON with Content-Type: application/json (got {media_type or 'none'!r})",
            field="body",
            status=415,
        )
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise RequestError(f"body: larger than {max_bytes:,} bytes", field="body", status=413)
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise RequestError(f"body: not valid JSON ({exc})", field="body") from None
