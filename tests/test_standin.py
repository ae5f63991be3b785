"""The Sage CRM stand-in on its own: the proxy tests rely on it behaving exactly like this."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import re

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from yarl import URL

from proxy.standin import (
    GZIP_PLAIN,
    RECORDED,
    RecordedRequest,
    make_app,
    pattern_bytes,
    pattern_sha256,
    run_standin,
)

BASIC = {"Authorization": "Basic YWRtaW46"}


@pytest.fixture
async def client(aiohttp_client) -> TestClient:
    return await aiohttp_client(make_app())


def assert_iis(resp: aiohttp.ClientResponse, server: str = "Microsoft-IIS/10.0") -> None:
    assert resp.headers.getall("Server") == [server]
    assert resp.headers.getall("X-Powered-By") == ["ASP.NET", "ARR/3.0"]


def last(client: TestClient) -> RecordedRequest:
    return client.app[RECORDED][-1]


# --- pattern helpers -------------------------------------------------------------------


def test_pattern_is_consistent_across_offsets() -> None:
    whole = pattern_bytes(0, 300_000)
    assert len(whole) == 300_000
    assert pattern_bytes(12_345, 200_000) == whole[12_345:212_345]
    assert whole[:65536] != whole[65536:131072]  # chunk-sized shifts are detectable
    assert pattern_sha256(300_000) == hashlib.sha256(whole).hexdigest()
    assert pattern_sha256(0) == hashlib.sha256(b"").hexdigest()


# --- eware.dll -------------------------------------------------------------------------


async def test_logon_page_headers(client: TestClient) -> None:
    resp = await client.get("/crm/eware.dll/go")
    assert resp.status == 200
    assert_iis(resp)
    assert resp.headers["X-AspNet-Version"] == "4.0.30319"
    assert resp.headers.getall("X-Frame-Options") == ["SAMEORIGIN", "SAMEORIGIN"]
    assert resp.headers["X-XSS-Protection"] == "1; mode=block"
    cookies = resp.headers.getall("Set-Cookie")
    assert len(cookies) == 2
    assert re.fullmatch(r"ASP\.NET_SessionId=\w+; path=/", cookies[0])
    assert cookies[1] == "crmlogin=1; path=/crm"
    body = await resp.text()
    assert 'name="EWARE_USERID"' in body and 'name="BrowserSupportsJavascript"' in body


async def test_logon_post_redirects_absolute_http(client: TestClient) -> None:
    form = {"EWARE_USERID": "admin", "PASSWORD": "", "BrowserSupportsJavascript": "1"}
    resp = await client.post(
        "/crm/eware.dll/go", data=form, headers={"Host": "crm.internal:8080"}, allow_redirects=False
    )
    assert resp.status == 302
    assert re.fullmatch(r"http://crm\.internal:8080/crm/eware\.dll/Do\?SID=\d{15}&Act=200", resp.headers["Location"])
    assert "Refresh" not in resp.headers
    cookie = resp.headers["Set-Cookie"]
    assert "secure" not in cookie.lower() and "httponly" not in cookie.lower()
    assert last(client).body_length > 0


async def test_logon_post_without_user_shows_form(client: TestClient) -> None:
    resp = await client.post("/crm/eware.dll/go", data={"PASSWORD": "x"}, allow_redirects=False)
    assert resp.status == 200
    assert "Please enter" in await resp.text()


async def test_screen_escapes_and_conflicting_headers(client: TestClient) -> None:
    resp = await client.get("/crm/eware.dll/Do", params={"SID": "123456789012345", "Act": "<b>200"})
    assert resp.status == 200
    assert_iis(resp)
    assert resp.headers.getall("X-Frame-Options") == ["SAMEORIGIN", "DENY"]
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    body = await resp.text()
    assert "&lt;b&gt;200" in body and "<b>200" not in body
    assert "123456789012345" in body
    assert "javascript:document.EntryForm.submit()" in body and "<script>" in body


async def test_library_download(client: TestClient) -> None:
    resp = await client.get("/crm/eware.dll/Do?SID=1&Act=1282&size=100000")
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "application/octet-stream"
    assert resp.headers["Content-Disposition"] == 'attachment; filename="doc.bin"'
    assert resp.headers["Content-Length"] == "100000"
    assert await resp.read() == pattern_bytes(0, 100000)


async def test_report_export(client: TestClient) -> None:
    resp = await client.get("/crm/eware.dll/Do?SID=1&Act=1410&delay=0")
    assert resp.status == 200
    assert resp.content_type.endswith("spreadsheetml.sheet")
    assert (await resp.read()).startswith(b"PK")


async def test_screen_post_redirects_back(client: TestClient) -> None:
    resp = await client.post(
        "/crm/eware.dll/Do?SID=123&Act=200", data={"comp_name": "x"}, headers={"Host": "iis"}, allow_redirects=False
    )
    assert resp.status == 302
    assert resp.headers["Location"] == "http://iis/crm/eware.dll/Do?SID=123&Act=200"


async def test_root_and_unknown_crm_paths(client: TestClient) -> None:
    resp = await client.get("/", allow_redirects=False)
    assert resp.status == 302 and resp.headers["Location"] == "/crm/"
    resp = await client.get("/crm/", allow_redirects=False)
    assert resp.status == 302 and resp.headers["Location"] == "/crm/eware.dll/go"
    resp = await client.get("/crm/nothing.asp")
    assert resp.status == 404
    assert_iis(resp)
    assert "has been removed" in await resp.text()
    resp = await client.get("/not-routed")
    assert resp.status == 404 and "has been removed" in await resp.text()


# --- SData -----------------------------------------------------------------------------


async def test_sdata_refuses_without_auth(client: TestClient) -> None:
    for path in (
        "/sdata/crmj/sagecrm/-/company('43')",
        "/sdata/crmj/sagecrm2/-/Company",
        "/sdata/crmj/userdata?Action=getNotifications",
    ):
        resp = await client.get(path)
        assert resp.status == 401, path
        assert "WWW-Authenticate" not in resp.headers


async def test_sdata_v1_atom_and_raw_path(client: TestClient) -> None:
    path = "/sdata/crmj/sagecrm/-/company('43')?where=comp_name%2Fx%20eq%20'43'&$format=atom"
    hdrs = {"X-Sage-Authorization": "Basic YWRtaW46", "Host": "tomcat"}
    resp = await client.get(URL(path, encoded=True), headers=hdrs)
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "application/atom+xml; type=entry"
    assert_iis(resp, server="Apache-Coyote/1.1")
    body = await resp.text()
    assert "http://tomcat/sdata/crmj/sagecrm/-/company('43')" in body
    assert last(client).raw_path == path


async def test_sdata_v1_feed_with_sid(client: TestClient) -> None:
    resp = await client.get("/sdata/crmj/sagecrm/-/company?SID=123")
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "application/atom+xml; type=feed"


async def test_rest_crud(client: TestClient) -> None:
    base = "/sdata/crmj/sagecrm2/-/Company"
    hdrs = {**BASIC, "Host": "iis:81"}
    resp = await client.get(base, headers=hdrs)
    data = await resp.json()
    assert resp.headers["Server"] == "Apache-Coyote/1.1"
    assert data["$totalResults"] == 1 and data["$startIndex"] == 1 and data["$itemsPerPage"] == 100
    assert data["$resources"][0]["$key"] == "43"
    assert data["$resources"][0]["$url"] == "http://iis:81/sdata/crmj/sagecrm2/-/Company('43')"

    resp = await client.get(base + "('43')", headers=hdrs)
    assert resp.headers["Content-Location"] == "http://iis:81/sdata/crmj/sagecrm2/-/Company('43')"
    resp = await client.put(base + "('43')", json={"Name": "Renamed"}, headers=hdrs)
    assert (await resp.json())["Name"] == "Renamed"

    resp = await client.post(base, json={"Name": "New"}, headers=hdrs)
    assert resp.status == 201
    assert resp.headers["Location"] == "http://iis:81/sdata/crmj/sagecrm2/-/Company('44')"
    resp = await client.delete(base + "('44')", headers=hdrs)
    assert resp.status == 204
    resp = await client.get(base + "('44')", headers=hdrs)
    assert resp.status == 404


async def test_notifications(client: TestClient) -> None:
    resp = await client.get("/sdata/crmj/userdata?Action=getNotifications&SID=42")
    assert resp.status == 200
    data = await resp.json()
    assert data["notifications"][0]["link"].startswith("eware.dll/Do?SID=42")


# --- recorder and echo -----------------------------------------------------------------


async def test_recorder_keeps_case_duplicates_and_body_hash(client: TestClient) -> None:
    body = pattern_bytes(0, 300_000)
    headers = [("X-Dup", "one"), ("X-Dup", "two"), ("X-MiXeD-Case", "v")]
    resp = await client.post(URL("/echo/a%2Fb?x=('43')&y=%2F", encoded=True), data=body, headers=headers)
    echoed = await resp.json()
    rec = last(client)
    assert rec.method == "POST"
    assert rec.raw_path == "/echo/a%2Fb?x=('43')&y=%2F" == echoed["raw_path"]
    assert rec.header("X-DUP") == ["one", "two"]
    assert ("X-MiXeD-Case", "v") in rec.headers
    assert [list(h) for h in rec.headers] == echoed["headers"]
    assert rec.body_length == 300_000 == echoed["body_length"]
    assert rec.body_sha256 == hashlib.sha256(body).hexdigest() == echoed["body_sha256"]
    assert rec.remote == "127.0.0.1"


async def test_recorder_on_raw_wire(client: TestClient) -> None:
    """Bytes on the wire, so nothing client-side merges or re-cases the header lines."""
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    writer.write(
        b"GET /echo?a=%2F&b=('1') HTTP/1.1\r\nHost: crm.internal\r\nx-dup: 1\r\nX-DUP: 2\r\nConnection: close\r\n\r\n"
    )
    await writer.drain()
    reply = await reader.read()
    writer.close()
    assert reply.startswith(b"HTTP/1.1 200")
    rec = last(client)
    assert rec.raw_path == "/echo?a=%2F&b=('1')"
    assert rec.headers == (("Host", "crm.internal"), ("x-dup", "1"), ("X-DUP", "2"), ("Connection", "close"))
    assert rec.body_length == 0 and rec.body_sha256 == hashlib.sha256(b"").hexdigest()


async def test_upload(client: TestClient) -> None:
    body = pattern_bytes(7, 1_000_000)
    resp = await client.put("/upload", data=body)
    assert await resp.json() == {"body_length": 1_000_000, "body_sha256": hashlib.sha256(body).hexdigest()}


# --- header helpers --------------------------------------------------------------------


async def test_headers_route_adds_lines_in_order(client: TestClient) -> None:
    resp = await client.get("/headers?h=X-A:1&h=X-A:2&h=X-Empty:&h=Set-Cookie:a%3Db%3B%20path%3D/")
    assert resp.status == 200
    assert_iis(resp)
    assert resp.headers.getall("X-A") == ["1", "2"]
    assert resp.headers["X-Empty"] == ""
    assert resp.headers["Set-Cookie"] == "a=b; path=/"
    assert await resp.text() == "ok"


@pytest.mark.parametrize("status", [204, 304])
async def test_headers_route_empty_statuses(client: TestClient, status: int) -> None:
    resp = await client.get(f"/headers?status={status}&h=X-Frame-Options:DENY")
    assert resp.status == status
    assert resp.headers["X-Frame-Options"] == "DENY"
    assert await resp.read() == b""


async def test_status_pages(client: TestClient) -> None:
    resp = await client.get("/status/500")
    assert resp.status == 500
    assert_iis(resp)
    assert "Internal Server Error" in await resp.text()


async def test_etag(client: TestClient) -> None:
    resp = await client.get("/etag")
    assert resp.status == 200 and resp.headers["ETag"] == '"v1"'
    resp = await client.get("/etag", headers={"If-None-Match": '"v1"'})
    assert resp.status == 304
    assert resp.headers["ETag"] == '"v1"'
    assert resp.headers.getall("X-Frame-Options") == ["SAMEORIGIN", "SAMEORIGIN"]
    assert await resp.read() == b""


async def test_redirects_and_refresh(client: TestClient) -> None:
    resp = await client.get("/redirect?to=/crm/x", headers={"Host": "iis:8080"}, allow_redirects=False)
    assert resp.status == 302 and resp.headers["Location"] == "http://iis:8080/crm/x"
    resp = await client.get("/redirect-internal", allow_redirects=False)
    assert resp.headers["Location"] == "http://iis.internal/crm/"
    resp = await client.get("/refresh", headers={"Host": "iis"})
    assert resp.headers["Refresh"] == "0; url=http://iis/crm/eware.dll/go"


async def test_cookies(client: TestClient) -> None:
    resp = await client.get("/cookies")
    assert resp.headers.getall("Set-Cookie") == [
        "ASP.NET_SessionId=abc; path=/",
        "JSESSIONID=def; Path=/sdata; HttpOnly",
        "pref=1; Expires=Wed, 21 Oct 2037 07:28:00 GMT; Path=/",
        "already=1; Secure; HttpOnly; SameSite=Strict",
    ]


# --- bodies and framing ----------------------------------------------------------------


@pytest.mark.parametrize("chunked", [False, True])
async def test_large_framing(client: TestClient, chunked: bool) -> None:
    size = 3 * 1024 * 1024
    resp = await client.get(f"/large?bytes={size}" + ("&chunked=1" if chunked else ""))
    h = hashlib.sha256()
    total = 0
    async for chunk in resp.content.iter_chunked(65536):
        h.update(chunk)
        total += len(chunk)
    assert total == size and h.hexdigest() == pattern_sha256(size)
    if chunked:
        assert resp.headers["Transfer-Encoding"] == "chunked" and "Content-Length" not in resp.headers
    else:
        assert resp.headers["Content-Length"] == str(size) and "Transfer-Encoding" not in resp.headers


@pytest.mark.parametrize(
    "path", ["/large?bytes=100000", "/large?bytes=1000&chunked=1", "/drip?chunks=2", "/crm/eware.dll/Do?Act=1282"]
)
async def test_head_sends_no_body(client: TestClient, path: str) -> None:
    """A streamed body on HEAD would corrupt the next response on the kept-alive connection."""
    for _ in range(2):
        resp = await client.head(path)
        assert resp.status == 200 and await resp.read() == b""
        resp = await client.get("/echo")
        assert resp.status == 200 and (await resp.json())["method"] == "GET"


async def test_gzip_bytes_arrive_compressed(aiohttp_client) -> None:
    client = await aiohttp_client(make_app(), auto_decompress=False)
    resp = await client.get("/gzip", headers={"Accept-Encoding": "gzip"})
    raw = await resp.read()
    assert resp.headers["Content-Encoding"] == "gzip"
    assert resp.headers["Vary"] == "Accept-Encoding"
    assert raw == gzip.compress(GZIP_PLAIN, mtime=0)
    assert gzip.decompress(raw) == GZIP_PLAIN and len(GZIP_PLAIN) > 90_000


async def test_slow_and_drip(client: TestClient) -> None:
    resp = await client.get("/slow?delay=0.01")
    assert await resp.text() == "done"
    resp = await client.get("/drip?chunks=3&interval=0.01")
    assert resp.headers["Transfer-Encoding"] == "chunked"
    assert await resp.text() == "chunk 0\nchunk 1\nchunk 2\n"


async def test_die_midway(client: TestClient) -> None:
    resp = await client.get("/die-midway?bytes=100000")
    assert resp.headers["Content-Length"] == "200000"
    with pytest.raises(aiohttp.ClientPayloadError):
        await resp.read()


async def test_run_standin_on_free_port() -> None:
    runner = await run_standin("127.0.0.1", 0)
    try:
        host, port = runner.addresses[0][:2]
        async with aiohttp.ClientSession() as session, session.get(f"http://{host}:{port}/echo?q=1") as resp:
            assert json.loads(await resp.text())["raw_path"] == "/echo?q=1"
    finally:
        await runner.cleanup()
