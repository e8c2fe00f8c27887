"""Who may write: the API token when set, else loopback clients that name a loopback Host."""

from __future__ import annotations

import pytest

from service.server.http.guard import Forbidden, Unauthorized, check_write


@pytest.mark.parametrize("host", ["localhost:3000", "127.0.0.1:3000", "[::1]:3000", "localhost", "127.0.0.2"])
@pytest.mark.parametrize("client", ["127.0.0.1", "::1"])
def test_loopback_writes_need_no_token(host: str, client: str) -> None:
    check_write(token=None, authorization="", client_host=client, host_header=host)


@pytest.mark.parametrize("client", ["10.0.0.7", "192.168.1.20", "2001:db8::1", None, "not-an-ip"])
def test_without_a_token_the_network_may_not_write(client: str | None) -> None:
    with pytest.raises(Forbidden, match="MANYLABEL_API_TOKEN") as err:
        check_write(token=None, authorization="", client_host=client, host_header="localhost:3000")
    assert err.value.status == 403 and err.value.field == "authorization"


@pytest.mark.parametrize("host", ["evil.example:3000", "rebind.attacker.test", "[2001:db8::1]:80", ""])
def test_dns_rebinding_is_refused_by_the_host_check(host: str) -> None:
    with pytest.raises(Forbidden, match="Host"):
        check_write(token=None, authorization="", client_host="127.0.0.1", host_header=host)


def test_with_a_token_only_the_token_counts() -> None:
    ok = {"token": "s3cret", "client_host": "10.1.2.3", "host_header": "manylabel.internal"}
    check_write(authorization="Bearer s3cret", **ok)
    check_write(authorization="bearer  s3cret ", **ok)
    for wrong in ("", "Bearer nope", "Basic s3cret", "s3cret", "Bearer s3cret2"):
        with pytest.raises(Unauthorized) as err:
            check_write(authorization=wrong, **ok)
        assert err.value.status == 401
    with pytest.raises(Unauthorized):  # loopback does not replace the token once one is set
        check_write(token="s3cret", authorization="", client_host="127.0.0.1", host_header="localhost")
