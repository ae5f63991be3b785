"""The plain-HTTP listener: redirects to HTTPS for configured hosts only, ACME challenge files, never HSTS."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import StartProxy, Upstream, raw_request, site_toml

REDIRECT_ONLY = """
[listen]
https = []
http = ["127.0.0.1:0"]
plain = []
{extra}
[log]
format = "text"
"""


async def start_redirect(start_proxy: StartProxy, upstream: Upstream, extra: str = "", site_extra: str = "") -> int:
    proxy = await start_proxy({"crm": site_toml(upstream, site_extra)}, REDIRECT_ONLY.format(extra=extra))
    return proxy.service.ports("http")[0]


@pytest.mark.parametrize(
    ("listen", "status", "origin"),
    [
        ("", 308, "https://crm.example.com"),
        ("public_port = 443\nredirect_status = 301", 301, "https://crm.example.com"),
        ("public_port = 8443\nredirect_status = 302", 302, "https://crm.example.com:8443"),
        ("redirect_status = 307", 307, "https://crm.example.com"),
    ],
)
async def test_redirect_status_port_path_and_query_exactly(
    start_proxy: StartProxy, upstream: Upstream, listen: str, status: int, origin: str
) -> None:
    proxy = await start_proxy(
        {"crm": site_toml(upstream)}, REDIRECT_ONLY.replace("plain = []\n", f"plain = []\n{listen}\n").format(extra="")
    )
    port = proxy.service.ports("http")[0]
    target = "/crm/eware.dll/Do?SID=12345&Act=520&Mode=1&Key0=1%2F2&x=a+b%20c&&y=%7E;z"
    answer = await raw_request(port, f"GET {target} HTTP/1.1\r\nHost: CRM.Example.com:80\r\n\r\n".encode())
    assert answer.status == status
    assert answer.get_all("Location") == [origin + target]
    assert answer.get_all("Strict-Transport-Security") == []
    assert answer.get_all("X-Frame-Options") == ["SAMEORIGIN"]
    assert answer.get_all("X-Content-Type-Options") == ["nosniff"]
    assert answer.get_all("Server") == []
    assert upstream.recorded == []  # nothing is proxied over plain HTTP


async def test_post_is_redirected_too_and_the_body_not_read(start_proxy: StartProxy, upstream: Upstream) -> None:
    port = await start_redirect(start_proxy, upstream)
    answer = await raw_request(
        port, b"POST /crm/eware.dll/go HTTP/1.1\r\nHost: crm.example.com\r\nContent-Length: 5\r\n\r\nhello"
    )
    assert answer.status == 308
    assert answer.get_all("Location") == ["https://crm.example.com/crm/eware.dll/go"]


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET / HTTP/1.1\r\nHost: evil.example.net\r\n\r\n", 421),
        (b"GET http://evil.example.net/ HTTP/1.1\r\nHost: crm.example.com\r\n\r\n", 421),
        (b"GET / HTTP/1.1\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: crm.example.com.evil.net\r\n\r\n", 421),
        (b"CONNECT crm.example.com:443 HTTP/1.1\r\nHost: crm.example.com:443\r\n\r\n", 405),
        (b"GET / HTTP/1.1\r\nHost: crm.example.com\r\nContent-Length: x\r\n\r\n", 400),  # parser error
    ],
)
async def test_unknown_hosts_get_421_never_a_redirect(
    start_proxy: StartProxy, upstream: Upstream, request_bytes: bytes, status: int
) -> None:
    port = await start_redirect(start_proxy, upstream)
    answer = await raw_request(port, request_bytes)
    assert answer.status == status
    assert answer.get_all("Location") == []
    assert answer.get_all("X-Frame-Options") == ["DENY"]
    assert answer.get_all("X-Content-Type-Options") == ["nosniff"]
    assert answer.get_all("Strict-Transport-Security") == []
    assert answer.get_all("Server") == []


async def test_acme_challenge_served_from_its_folder_without_traversal(
    start_proxy: StartProxy, upstream: Upstream, tmp_path: Path
) -> None:
    challenges = tmp_path / "acme"
    challenges.mkdir()
    (challenges / "tok-EN_123").write_bytes(b"tok-EN_123.thumbprint")
    (tmp_path / "secret").write_bytes(b"do not serve")
    port = await start_redirect(start_proxy, upstream, f'[acme]\nchallenge_dir = "{challenges}"\n')

    answer = await raw_request(
        port, b"GET /.well-known/acme-challenge/tok-EN_123 HTTP/1.1\r\nHost: crm.example.com\r\n\r\n"
    )
    assert answer.status == 200
    assert answer.body == b"tok-EN_123.thumbprint"
    assert answer.get_all("X-Content-Type-Options") == ["nosniff"]
    assert answer.get_all("Strict-Transport-Security") == []

    for path in (
        "/.well-known/acme-challenge/../secret",
        "/.well-known/acme-challenge/..%2Fsecret",
        "/.well-known/acme-challenge/%2e%2e/secret",
        "/.well-known/acme-challenge/",
        "/.well-known/acme-challenge/missing",
        "/.well-known/acme-challenge/tok-EN_123/",
    ):
        answer = await raw_request(port, f"GET {path} HTTP/1.1\r\nHost: crm.example.com\r\n\r\n".encode())
        assert answer.status == 404, path
        assert b"do not serve" not in answer.raw

    # other hosts get no challenge (and no redirect) either
    answer = await raw_request(port, b"GET /.well-known/acme-challenge/tok-EN_123 HTTP/1.1\r\nHost: other.test\r\n\r\n")
    assert answer.status == 421


async def test_without_challenge_dir_acme_paths_redirect_like_any_other(
    start_proxy: StartProxy, upstream: Upstream
) -> None:
    port = await start_redirect(start_proxy, upstream)
    answer = await raw_request(port, b"GET /.well-known/acme-challenge/abc HTTP/1.1\r\nHost: crm.example.com\r\n\r\n")
    assert answer.status == 308
    assert answer.get_all("Location") == ["https://crm.example.com/.well-known/acme-challenge/abc"]


async def test_hsts_never_over_plain_http_even_with_force(start_proxy: StartProxy, upstream: Upstream) -> None:
    """The plain listener (behind a balancer) and the redirect listener both leave it out, upstream's too."""
    proxy = await start_proxy(
        {"crm": site_toml(upstream, "[hsts]\nforce = true\n")},
        REDIRECT_ONLY.replace("plain = []", 'plain = ["127.0.0.1:0"]').format(extra=""),
    )
    plain = await raw_request(
        proxy.service.ports("plain")[0],
        b"GET /headers?h=Strict-Transport-Security:max-age%3D5 HTTP/1.1\r\nHost: crm.example.com\r\n\r\n",
    )
    assert plain.status == 200 and plain.get_all("Strict-Transport-Security") == []
    redirect = await raw_request(proxy.service.ports("http")[0], b"GET / HTTP/1.1\r\nHost: crm.example.com\r\n\r\n")
    assert redirect.status == 308 and redirect.get_all("Strict-Transport-Security") == []
