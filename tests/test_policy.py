"""The header policy, operation by operation, through the real proxy in front of the stand-in."""

from __future__ import annotations

from urllib.parse import quote

import aiohttp
import pytest

from tests.conftest import PLAIN_ONLY, PUBLIC_HOST, Proxy, StartProxy, Upstream, raw_request, site_toml

SAGE = {
    "X-Frame-Options": "SAMEORIGIN",
    "X-XSS-Protection": "1; mode=block",
    "X-Content-Type-Options": "nosniff",
}
BANNERS = ("Server", "X-Powered-By", "X-AspNet-Version", "X-AspNetMvc-Version")


def headers_path(*pairs: tuple[str, str], status: int | None = None) -> str:
    query = "&".join("h=" + quote(f"{name}:{value}", safe="") for name, value in pairs)
    return "/headers?" + query + (f"&status={status}" if status else "")


async def fetch(client: aiohttp.ClientSession, proxy: Proxy, path: str, method: str = "GET") -> aiohttp.ClientResponse:
    async with client.request(method, proxy.url + path, allow_redirects=False) as response:
        await response.read()
        return response


def assert_sage_headers(headers: object) -> None:
    for name, value in SAGE.items():
        assert headers.getall(name) == [value], name  # type: ignore[attr-defined]
    for name in BANNERS:
        assert name not in headers, name  # type: ignore[operator]
    assert "Strict-Transport-Security" not in headers  # type: ignore[operator]


@pytest.mark.parametrize(
    ("site_extra", "upstream_pairs", "header", "expected"),
    [
        # set: always exactly the configured value, whatever upstream sent
        ("", [("X-Frame-Options", "SAMEORIGIN"), ("X-Frame-Options", "SAMEORIGIN")], "X-Frame-Options", ["SAMEORIGIN"]),
        ("", [("X-Frame-Options", "DENY"), ("X-Frame-Options", "ALLOWALL")], "X-Frame-Options", ["SAMEORIGIN"]),
        ("", [("x-xss-protection", "0")], "X-XSS-Protection", ["1; mode=block"]),
        ("", [], "X-Content-Type-Options", ["nosniff"]),
        ('[headers.set]\nX-Frame-Options = "DENY"\n', [("X-Frame-Options", "SAMEORIGIN")], "X-Frame-Options", ["DENY"]),
        # default: upstream's one valid value is kept (canonicalised), duplicates collapse, bad ones replaced
        (
            '[headers.default]\nReferrer-Policy = "strict-origin-when-cross-origin"\n',
            [("Referrer-Policy", "no-referrer")],
            "Referrer-Policy",
            ["no-referrer"],
        ),
        (
            '[headers.default]\nReferrer-Policy = "strict-origin-when-cross-origin"\n',
            [("Referrer-Policy", "same-origin"), ("Referrer-Policy", "same-origin")],
            "Referrer-Policy",
            ["same-origin"],
        ),
        (
            '[headers.default]\nReferrer-Policy = "strict-origin-when-cross-origin"\n',
            [("Referrer-Policy", "bogus")],
            "Referrer-Policy",
            ["strict-origin-when-cross-origin"],
        ),
        (
            '[headers.default]\nReferrer-Policy = "strict-origin-when-cross-origin"\n',
            [],
            "Referrer-Policy",
            ["strict-origin-when-cross-origin"],
        ),
        (
            '[headers.default]\nX-Frame-Options = "SAMEORIGIN"\n',
            [("X-Frame-Options", "deny"), ("X-Frame-Options", "DENY")],
            "X-Frame-Options",
            ["DENY"],
        ),
        (
            '[headers.default]\nX-Frame-Options = "SAMEORIGIN"\n',
            [("X-Frame-Options", "DENY"), ("X-Frame-Options", "SAMEORIGIN")],
            "X-Frame-Options",
            ["SAMEORIGIN"],
        ),
        # remove: exact names and prefix wildcards; the profile's list too
        ('[headers]\nremove = ["X-Custom-Leak"]\n', [("X-Custom-Leak", "1")], "X-Custom-Leak", []),
        ('[headers]\nremove = ["X-Debug*"]\n', [("X-Debug-Token", "1"), ("x-debugger", "2")], "X-Debug-Token", []),
        ('[headers]\nremove = ["X-Debug*"]\n', [("X-Debug-Token", "1"), ("x-debugger", "2")], "X-Debugger", []),
        ("", [("X-AspNetMvc-Version", "5.2")], "X-AspNetMvc-Version", []),
        # untouched: what the policy does not own passes as sent
        ("", [("X-Custom", "a"), ("X-Custom", "b")], "X-Custom", ["a", "b"]),
        # profile none: nothing set or removed
        ('[headers]\nprofile = "none"\n', [("X-Frame-Options", "DENY")], "X-Frame-Options", ["DENY"]),
        ('[headers]\nprofile = "none"\n', [], "X-Powered-By", ["ASP.NET", "ARR/3.0"]),
    ],
)
async def test_policy_operation(
    upstream: Upstream,
    start_proxy: StartProxy,
    client: aiohttp.ClientSession,
    site_extra: str,
    upstream_pairs: list[tuple[str, str]],
    header: str,
    expected: list[str],
) -> None:
    proxy = await start_proxy({"crm": site_toml(upstream, site_extra)})
    response = await fetch(client, proxy, headers_path(*upstream_pairs))
    assert response.status == 200
    assert response.headers.getall(header, []) == expected


async def test_owasp_profile(upstream: Upstream, start_proxy: StartProxy, client: aiohttp.ClientSession) -> None:
    proxy = await start_proxy({"crm": site_toml(upstream, '[headers]\nprofile = "owasp"\n')})
    response = await fetch(client, proxy, headers_path(("X-Generator", "CRM"), ("X-XSS-Protection", "1; mode=block")))
    headers = response.headers
    assert headers.getall("X-XSS-Protection") == ["0"]
    assert headers.getall("X-Frame-Options") == ["SAMEORIGIN"]
    assert headers.getall("Content-Security-Policy") == ["frame-ancestors 'self'"]
    assert headers.getall("Referrer-Policy") == ["same-origin"]
    assert headers.getall("Cross-Origin-Opener-Policy") == ["same-origin"]
    assert headers.getall("X-Permitted-Cross-Domain-Policies") == ["none"]
    assert headers["Permissions-Policy"].startswith("accelerometer=(), ")
    for leaked in (*BANNERS, "X-Generator"):
        assert leaked not in headers


@pytest.mark.parametrize(
    "path",
    [
        "/crm/eware.dll/go",  # upstream 200 with duplicate headers
        "/crm/eware.dll/Do?SID=1&Act=200",  # conflicting X-Frame-Options
        "/status/404",
        "/status/500",
        "/redirect?to=/crm/",
        headers_path(status=204),
        "/sdata/crmj/sagecrm/-/company('43')",  # SData 401 without WWW-Authenticate
    ],
)
async def test_every_proxied_response_kind_carries_the_policy(
    proxy: Proxy, client: aiohttp.ClientSession, path: str
) -> None:
    response = await fetch(client, proxy, path)
    assert_sage_headers(response.headers)


async def test_304_and_head_carry_the_policy(proxy: Proxy, client: aiohttp.ClientSession) -> None:
    async with client.get(proxy.url + "/etag", headers={"If-None-Match": '"v1"'}) as response:
        assert response.status == 304
        assert await response.read() == b""
        assert_sage_headers(response.headers)
        assert response.headers["ETag"] == '"v1"'
    head = await fetch(client, proxy, "/crm/eware.dll/go", method="HEAD")
    assert head.status == 200
    assert_sage_headers(head.headers)


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET /crm/ HTTP/1.1\r\nHost: unknown.example\r\n\r\n", 421),
        (b"GET /crm/ HTTP/1.1\r\n\r\n", 400),  # HTTP/1.1 without Host
        (b"GET http://evil.example/ HTTP/1.1\r\nHost: crm.example.com\r\n\r\n", 421),  # absolute-form wins
        (b"GARBAGE\x01 / HTTP/1.1\r\nHost: crm.example.com\r\n\r\n", 400),  # aiohttp's parser error path
        (b"GET / HTTP/1.1\r\nHost: crm.example.com\r\nBad Header: x\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: crm.example.com\r\nContent-Length: x\r\n\r\n", 400),
    ],
)
async def test_refusals_carry_headers_and_no_banner(proxy: Proxy, request_bytes: bytes, status: int) -> None:
    response = await raw_request(proxy.port, request_bytes)
    assert response.status == status, response.raw
    assert response.get_all("X-Content-Type-Options") == ["nosniff"]
    assert response.get_all("X-Frame-Options") == ["DENY"]
    assert response.get_all("X-XSS-Protection") == ["1; mode=block"]
    assert response.get_all("Content-Security-Policy") == ["default-src 'none'; frame-ancestors 'none'"]
    assert response.get_all("Server") == []
    assert b"aiohttp" not in response.raw and b"Traceback" not in response.raw


async def test_upstream_down_is_502_with_site_policy(upstream: Upstream, start_proxy: StartProxy) -> None:
    proxy = await start_proxy({"crm": site_toml(upstream).replace(upstream.origin, "http://127.0.0.1:9")})
    response = await raw_request(
        proxy.port, b"GET /crm/ HTTP/1.1\r\nHost: crm.example.com\r\nConnection: close\r\n\r\n"
    )
    assert response.status == 502
    assert response.get_all("X-Frame-Options") == ["SAMEORIGIN"]  # the site's policy, not the refusal one
    assert response.get_all("X-XSS-Protection") == ["1; mode=block"]
    assert response.get_all("Server") == []


async def test_no_banner_even_with_profile_none(upstream: Upstream, start_proxy: StartProxy) -> None:
    proxy = await start_proxy({"crm": site_toml(upstream, '[headers]\nprofile = "none"\n')})
    refused = await raw_request(proxy.port, b"GET / HTTP/1.1\r\nHost: nobody.example\r\n\r\n")
    assert refused.get_all("Server") == []
    proxied = await raw_request(proxy.port, b"GET /crm/ HTTP/1.1\r\nHost: crm.example.com\r\nConnection: close\r\n\r\n")
    assert proxied.get_all("Server") == ["Microsoft-IIS/10.0"]  # profile none passes upstream's own


async def test_cookies_flagged_without_duplicates(proxy: Proxy, client: aiohttp.ClientSession) -> None:
    response = await fetch(client, proxy, "/cookies")
    assert response.headers.getall("Set-Cookie") == [
        "ASP.NET_SessionId=abc; path=/; SameSite=Lax; HttpOnly",
        "JSESSIONID=def; Path=/sdata; HttpOnly; SameSite=Lax",
        "pref=1; Expires=Wed, 21 Oct 2037 07:28:00 GMT; Path=/; SameSite=Lax; HttpOnly",
        "already=1; Secure; HttpOnly; SameSite=Strict",
    ]  # plain HTTP: no Secure added (it would make the browser drop the cookie)


async def test_cookies_left_alone_when_configured_off(upstream: Upstream, start_proxy: StartProxy, client) -> None:
    extra = '[cookies]\nsecure = false\nhttp_only = false\nsame_site = ""\n'
    proxy = await start_proxy({"crm": site_toml(upstream, extra)})
    response = await fetch(client, proxy, "/cookies")
    assert response.headers.getall("Set-Cookie")[0] == "ASP.NET_SessionId=abc; path=/"


@pytest.mark.parametrize(
    ("path", "header", "expected"),
    [
        ("/redirect?to=/crm/x%252Fy%3Fa%3D1", "Location", f"http://{PUBLIC_HOST}:{{port}}/crm/x%2Fy?a=1"),
        ("/redirect-internal", "Location", "http://iis.internal/crm/"),  # not ours: untouched
        ("/refresh", "Refresh", f"0; url=http://{PUBLIC_HOST}:{{port}}/crm/eware.dll/go"),
        (headers_path(("Location", "/relative/path")), "Location", "/relative/path"),
        (headers_path(("Content-Location", "http://127.0.0.1:{up}/sdata/x")), "Content-Location", None),
    ],
)
async def test_locations_point_at_the_public_origin(
    upstream: Upstream, start_proxy: StartProxy, path: str, header: str, expected: str | None
) -> None:
    proxy = await start_proxy({"crm": site_toml(upstream, "preserve_host = false\n")})
    public = f"{PUBLIC_HOST}:{proxy.port}"
    path = path.replace("{up}", str(upstream.port))
    async with (
        aiohttp.ClientSession(headers={"Host": public}) as session,
        session.get(proxy.url + path, allow_redirects=False) as response,
    ):
        value = response.headers[header]
    if expected is None:
        expected = f"http://{public}/sdata/x"
    assert value == expected.replace("{port}", str(proxy.port))


async def test_location_rewritten_to_https_for_trusted_balancer(upstream: Upstream, start_proxy: StartProxy) -> None:
    proxy_toml = PLAIN_ONLY + '[forwarded]\ntrusted_proxies = ["127.0.0.0/8"]\n'
    proxy = await start_proxy({"crm": site_toml(upstream)}, proxy_toml)
    request = (
        b"GET /redirect?to=/crm/ HTTP/1.1\r\nHost: crm.example.com\r\nX-Forwarded-Proto: https\r\n"
        b"Connection: close\r\n\r\n"
    )
    response = await raw_request(proxy.port, request)
    assert response.get_all("Location") == ["https://crm.example.com/crm/"]
    assert response.get_all("Strict-Transport-Security") == ["max-age=31536000"]
