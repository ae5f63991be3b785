"""Forwarding: what the upstream sees, what the client gets back, byte for byte, over real sockets."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import os

import aiohttp
import pytest
from yarl import URL

from proxy.standin import GZIP_PLAIN, pattern_bytes, pattern_sha256
from tests.conftest import PLAIN_ONLY, PUBLIC_HOST, Proxy, StartProxy, Upstream, raw_request, site_toml

MIB = 1024 * 1024


async def test_upstream_sees_exactly_the_clients_request(proxy: Proxy, upstream: Upstream) -> None:
    request = (
        b"POST /sdata/crmj/sagecrm2/-/Company('43')?$select=Name,Phone&where=Id%20eq%20'43'&x=%2F HTTP/1.1\r\n"
        b"Host: crm.example.com\r\n"
        b"Authorization: Basic YWRtaW46\r\n"
        b"X-Sage-Authorization: Basic YWRtaW46\r\n"
        b"Cookie: a=1; b=2\r\n"
        b"X-Custom: one\r\n"
        b"x-custom: two\r\n"
        b"Content-Type: application/json\r\n"
        b"Content-Length: 13\r\n"
        b"Connection: close\r\n"
        b"\r\n"
        b'{"Name":"Ab"}'
    )
    await raw_request(proxy.port, request)
    seen = upstream.recorded[-1]
    assert seen.method == "POST"
    assert seen.raw_path == "/sdata/crmj/sagecrm2/-/Company('43')?$select=Name,Phone&where=Id%20eq%20'43'&x=%2F"
    assert seen.header("Authorization") == ["Basic YWRtaW46"]
    assert seen.header("X-Sage-Authorization") == ["Basic YWRtaW46"]
    assert seen.header("Cookie") == ["a=1; b=2"]
    assert seen.header("X-Custom") == ["one", "two"]
    assert seen.header("Content-Type") == ["application/json"]
    assert seen.header("Content-Length") == ["13"]
    assert seen.header("Host") == ["crm.example.com"]
    assert seen.body_sha256 == hashlib.sha256(b'{"Name":"Ab"}').hexdigest()
    names = {name.lower() for name, _ in seen.headers}
    for added in ("user-agent", "accept", "accept-encoding", "transfer-encoding"):
        assert added not in names, f"proxy added {added}"


async def test_hop_by_hop_and_connection_listed_headers_are_dropped(proxy: Proxy, upstream: Upstream) -> None:
    request = (
        b"GET /echo HTTP/1.1\r\nHost: crm.example.com\r\nConnection: close, X-Secret-Hop\r\n"
        b"X-Secret-Hop: 1\r\nKeep-Alive: timeout=5\r\nProxy-Authorization: Basic eA==\r\nTE: trailers\r\n"
        b"Upgrade: h2c\r\nX-Kept: yes\r\n\r\n"
    )
    response = await raw_request(proxy.port, request)
    seen = upstream.recorded[-1]
    names = {name.lower() for name, _ in seen.headers}
    assert names & {"x-secret-hop", "keep-alive", "proxy-authorization", "te", "upgrade"} == set()
    assert seen.header("X-Kept") == ["yes"]
    assert response.status == 200


async def test_forwarded_headers_replace_client_claims(proxy: Proxy, upstream: Upstream) -> None:
    request = (
        b"GET /echo HTTP/1.1\r\nHost: crm.example.com:8080\r\nX-Forwarded-For: 203.0.113.9\r\n"
        b"X-Forwarded-Proto: https\r\nX-Forwarded-Host: evil.example\r\nX-Real-IP: 203.0.113.9\r\n"
        b"Forwarded: for=203.0.113.9\r\nConnection: close\r\n\r\n"
    )
    await raw_request(proxy.port, request)
    seen = upstream.recorded[-1]
    assert seen.header("X-Forwarded-For") == ["127.0.0.1"]
    assert seen.header("X-Forwarded-Proto") == ["http"]
    assert seen.header("X-Forwarded-Host") == ["crm.example.com:8080"]
    assert seen.header("X-Real-IP") == [] and seen.header("Forwarded") == []
    assert seen.header("Host") == ["crm.example.com:8080"]  # preserve_host (default)


async def test_trusted_proxy_claims_are_appended(upstream: Upstream, start_proxy: StartProxy) -> None:
    proxy_toml = PLAIN_ONLY + '[forwarded]\ntrusted_proxies = ["127.0.0.1/32"]\n'
    proxy = await start_proxy({"crm": site_toml(upstream)}, proxy_toml)
    request = (
        b"GET /echo HTTP/1.1\r\nHost: crm.example.com\r\nX-Forwarded-For: 203.0.113.9\r\n"
        b"X-Forwarded-Proto: https\r\nConnection: close\r\n\r\n"
    )
    await raw_request(proxy.port, request)
    seen = upstream.recorded[-1]
    assert seen.header("X-Forwarded-For") == ["203.0.113.9, 127.0.0.1"]
    assert seen.header("X-Forwarded-Proto") == ["https"]


async def test_preserve_host_false_sends_the_upstream_address(upstream: Upstream, start_proxy: StartProxy) -> None:
    proxy = await start_proxy({"crm": site_toml(upstream, "preserve_host = false\n")})
    await raw_request(proxy.port, b"GET /echo HTTP/1.1\r\nHost: crm.example.com\r\nConnection: close\r\n\r\n")
    assert upstream.recorded[-1].header("Host") == [f"127.0.0.1:{upstream.port}"]


async def test_routing_by_host_and_longest_prefix(upstream: Upstream, start_proxy: StartProxy) -> None:
    crm = site_toml(upstream, '[headers.set]\nX-Site = "crm"\n', hosts='["crm.example.com"]')
    sdata = site_toml(upstream, 'paths = ["/sdata/"]\n[headers.set]\nX-Site = "sdata"\n', hosts='["CRM.example.com"]')
    proxy = await start_proxy({"crm": crm, "sdata": sdata})
    cases = {
        b"/crm/eware.dll/go": "crm",
        b"/sdata/crmj/userdata?SID=1": "sdata",
        b"/SDATA/crmj/userdata?SID=1": "sdata",  # IIS paths are case-insensitive
        b"/sdata": "sdata",
        b"/sdatax": "crm",
    }
    for path, expected in cases.items():
        request = b"GET " + path + b" HTTP/1.1\r\nHost: Crm.Example.COM.:443\r\nConnection: close\r\n\r\n"
        response = await raw_request(proxy.port, request)
        assert response.get_all("X-Site") == [expected], path


async def test_absolute_form_for_a_configured_host_is_served(proxy: Proxy, upstream: Upstream) -> None:
    request = b"GET http://crm.example.com/echo?q=1 HTTP/1.1\r\nHost: other.example\r\nConnection: close\r\n\r\n"
    response = await raw_request(proxy.port, request)
    assert response.status == 200
    assert upstream.recorded[-1].raw_path == "/echo?q=1"
    assert upstream.recorded[-1].header("Host") == ["crm.example.com"]


async def test_connect_is_refused(proxy: Proxy, upstream: Upstream) -> None:
    before = len(upstream.recorded)
    response = await raw_request(
        proxy.port, b"CONNECT crm.example.com:443 HTTP/1.1\r\nHost: crm.example.com:443\r\n\r\n"
    )
    assert response.status in (400, 405)
    assert response.get_all("X-Content-Type-Options") == ["nosniff"]
    assert len(upstream.recorded) == before


async def test_gzip_body_passes_compressed_and_unchanged(proxy: Proxy, client: aiohttp.ClientSession) -> None:
    async with client.get(proxy.url + "/gzip", headers={"Accept-Encoding": "gzip"}) as response:
        body = await response.read()
        assert response.headers["Content-Encoding"] == "gzip"
        assert response.headers["Content-Length"] == str(len(body))
    assert body == gzip.compress(GZIP_PLAIN, mtime=0)
    assert gzip.decompress(body) == GZIP_PLAIN


@pytest.mark.parametrize("chunked", [False, True])
async def test_20_mib_download_byte_for_byte(proxy: Proxy, client: aiohttp.ClientSession, chunked: bool) -> None:
    size = 20 * MIB
    digest, received = hashlib.sha256(), 0
    url = URL(proxy.url + f"/large?bytes={size}" + ("&chunked=1" if chunked else ""), encoded=True)
    async with client.get(url) as response:
        assert response.status == 200
        assert ("Content-Length" in response.headers) is not chunked
        async for chunk in response.content.iter_any():
            digest.update(chunk)
            received += len(chunk)
    assert received == size
    assert digest.hexdigest() == pattern_sha256(size)


@pytest.mark.parametrize("chunked", [False, True])
async def test_20_mib_upload_byte_for_byte(proxy: Proxy, client: aiohttp.ClientSession, chunked: bool) -> None:
    size = 20 * MIB

    async def body():  # type: ignore[no-untyped-def]
        for offset in range(0, size, MIB):
            yield pattern_bytes(offset, MIB)

    headers = {} if chunked else {"Content-Length": str(size)}
    async with client.post(proxy.url + "/upload", data=body(), headers=headers) as response:
        result = json.loads(await response.read())
    assert result == {"body_length": size, "body_sha256": pattern_sha256(size)}


async def test_expect_100_continue(proxy: Proxy, upstream: Upstream) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(
        b"PUT /upload HTTP/1.1\r\nHost: crm.example.com\r\nContent-Length: 5\r\nExpect: 100-continue\r\n"
        b"Connection: close\r\n\r\n"
    )
    await writer.drain()
    interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    writer.write(b"hello")
    rest = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert rest.startswith(b"HTTP/1.1 200 ")
    assert upstream.recorded[-1].body_sha256 == hashlib.sha256(b"hello").hexdigest()
    assert upstream.recorded[-1].header("Expect") == []


async def test_head_keeps_upstream_length_and_sends_no_body(proxy: Proxy) -> None:
    response = await raw_request(
        proxy.port, b"HEAD /large?bytes=1000 HTTP/1.1\r\nHost: crm.example.com\r\nConnection: close\r\n\r\n"
    )
    assert response.status == 200
    assert response.get_all("Content-Length") == ["1000"]
    assert response.body == b""


async def test_keep_alive_reuses_the_client_connection(proxy: Proxy) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    for _ in range(3):
        writer.write(b"GET /echo HTTP/1.1\r\nHost: crm.example.com\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200 OK\r\n")
        length = int(next(line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:"))[15:])
        await reader.readexactly(length)
    writer.close()


async def test_upstream_refused_is_502(upstream: Upstream, start_proxy: StartProxy) -> None:
    proxy = await start_proxy({"crm": site_toml(upstream).replace(upstream.origin, "http://127.0.0.1:9")})
    response = await raw_request(proxy.port, b"GET / HTTP/1.1\r\nHost: crm.example.com\r\nConnection: close\r\n\r\n")
    assert response.status == 502
    assert b"127.0.0.1:9" not in response.raw  # no internal detail leaks to the client


async def test_upstream_read_timeout_is_504(upstream: Upstream, start_proxy: StartProxy) -> None:
    proxy_toml = PLAIN_ONLY + "[timeouts]\nupstream_read = 0.3\n"
    proxy = await start_proxy({"crm": site_toml(upstream)}, proxy_toml)
    response = await raw_request(
        proxy.port, b"GET /slow?delay=1.5 HTTP/1.1\r\nHost: crm.example.com\r\nConnection: close\r\n\r\n"
    )
    assert response.status == 504
    assert response.get_all("X-Frame-Options") == ["SAMEORIGIN"]


async def test_upstream_dying_mid_body_truncates_without_a_second_status_line(proxy: Proxy) -> None:
    response = await raw_request(
        proxy.port, b"GET /die-midway?bytes=5000 HTTP/1.1\r\nHost: crm.example.com\r\nConnection: close\r\n\r\n"
    )
    assert response.status == 200
    assert response.get_all("Content-Length") == ["10000"]
    assert len(response.body) < 10000  # the client can tell the body was cut short
    assert b"HTTP/1.1" not in response.body
    # and the proxy still serves
    again = await raw_request(proxy.port, b"GET /echo HTTP/1.1\r\nHost: crm.example.com\r\nConnection: close\r\n\r\n")
    assert again.status == 200


async def test_body_limit_refuses_before_contacting_upstream(upstream: Upstream, start_proxy: StartProxy) -> None:
    proxy_toml = PLAIN_ONLY + "[limits]\nmax_body_bytes = 1000\n"
    proxy = await start_proxy({"crm": site_toml(upstream)}, proxy_toml)
    before = len(upstream.recorded)
    response = await raw_request(
        proxy.port, b"POST /upload HTTP/1.1\r\nHost: crm.example.com\r\nContent-Length: 5000\r\n\r\n" + os.urandom(100)
    )
    assert response.status == 413
    assert response.get_all("X-XSS-Protection") == ["1; mode=block"]
    assert len(upstream.recorded) == before


async def test_public_host_in_redirect_after_logon(proxy: Proxy, client: aiohttp.ClientSession) -> None:
    form = {"EWARE_USERID": "admin", "PASSWORD": "", "BrowserSupportsJavascript": "1"}
    async with client.post(proxy.url + "/crm/eware.dll/go", data=form, allow_redirects=False) as response:
        assert response.status == 302
        assert response.headers["Location"].startswith(f"http://{PUBLIC_HOST}/crm/eware.dll/Do?SID=")
