"""A stand-in for a badly configured Sage CRM server (IIS 10 + ARR + Tomcat SData).

Used as the upstream behind the proxy in the test suite and as the demo backend of
``crm-proxy lab``.  It reproduces what real installations send on the wire (see
shared/SAGE_CRM.md): leaked banners, duplicated and conflicting security headers,
flagless cookies, absolute ``http://`` URLs built from the Host header, SData that never
sends ``WWW-Authenticate``.  A few non-Sage helper routes (``/echo``, ``/headers``,
``/large``...) let proxy tests be precise.  Bodies are always streamed in 64 KiB chunks
both ways, so hundreds of MiB can pass through without being held in memory.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import html
import json
import re
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from urllib.parse import parse_qsl

from aiohttp import web
from aiohttp.http import SERVER_SOFTWARE
from multidict import CIMultiDict

CHUNK = 64 * 1024
HEAD_KEEP = 64 * 1024  # how much of a request body handlers may look at (forms, JSON)


@dataclass(frozen=True)
class RecordedRequest:
    """What the upstream saw of one request, byte-exact where it matters to a proxy."""

    method: str
    raw_path: str
    headers: tuple[tuple[str, str], ...]
    body_length: int
    body_sha256: str
    remote: str | None

    def header(self, name: str) -> list[str]:
        """All values of header ``name`` (case-insensitive), in the order received."""
        low = name.lower()
        return [v for k, v in self.headers if k.lower() == low]


RECORDED = web.AppKey("recorded", list)
_STORE = web.AppKey("store", dict)  # REST records: {entity: {key: fields}}
_NAME = web.AppKey("name", str)  # CRM install name
_REQ = web.RequestKey("recorded", RecordedRequest)  # this request's record
_HEAD = web.RequestKey("head", bytes)  # first 64 KiB of this request's body

# --- deterministic body pattern --------------------------------------------------------

_PERIOD = 65521  # prime, so 64 KiB chunk boundaries never line up with the period


def _make_block() -> bytes:
    """Pseudo-random bytes from SHA-256 in counter mode: reproducible on every Python."""
    out = b"".join(hashlib.sha256(i.to_bytes(4, "big")).digest() for i in range(_PERIOD // 32 + 1))
    return out[:_PERIOD]


_BLOCK = _make_block()
_WIDE = _BLOCK * (CHUNK // _PERIOD + 2)  # any CHUNK-long slice from any phase fits


def pattern_bytes(offset: int, length: int) -> bytes:
    """Bytes ``offset .. offset+length`` of the endless deterministic test pattern."""
    parts: list[bytes] = []
    while length > 0:
        start = offset % _PERIOD
        n = min(length, len(_WIDE) - start)
        parts.append(_WIDE[start : start + n])
        offset += n
        length -= n
    return b"".join(parts)


def pattern_sha256(total: int) -> str:
    """Hex SHA-256 of the first ``total`` pattern bytes, computed chunk by chunk."""
    h = hashlib.sha256()
    for off in range(0, total, CHUNK):
        h.update(pattern_bytes(off, min(CHUNK, total - off)))
    return h.hexdigest()


_LINES = (f"{i:05d} Sage CRM stand-in compressible text, Company('43') row {i % 97}\n" for i in range(1600))
GZIP_PLAIN: bytes = "".join(_LINES).encode()
_GZIP_BODY = gzip.compress(GZIP_PLAIN, mtime=0)

# --- IIS look --------------------------------------------------------------------------

_IIS_TEXT = {
    401: "You do not have permission to view this directory or page using the credentials that you supplied.",
    403: "You do not have permission to view this directory or page.",
    404: "The resource you are looking for has been removed, had its name changed, or is temporarily unavailable.",
    405: "The page you are looking for cannot be displayed because an invalid method (HTTP verb) is being used.",
    500: "Internal Server Error: there is a problem with the resource you are looking for, and it cannot be displayed.",
    502: "Web server received an invalid response while acting as a gateway or proxy server.",
    503: "Service Unavailable",
}


def _reason(status: int) -> str:
    """Standard reason phrase, or a neutral one for codes http.HTTPStatus does not know."""
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def iis_error(status: int) -> web.Response:
    """The detailed-error HTML page IIS 10 shows for ``status``."""
    if status in (204, 304) or status < 200:
        return web.Response(status=status, reason=_reason(status))
    text = _IIS_TEXT.get(status, _reason(status))
    page = (
        '<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Strict//EN">\n<html><head>'
        f"<title>{status} - {html.escape(_reason(status))}</title></head><body>"
        '<div id="header"><h1>Server Error</h1></div><div id="content"><fieldset>'
        f"<h2>{status} - {html.escape(_reason(status))}.</h2><h3>{html.escape(text)}</h3>"
        "</fieldset></div></body></html>\n"
    )
    return web.Response(status=status, reason=_reason(status), text=page, content_type="text/html")


async def _banners(request: web.Request, response: web.StreamResponse) -> None:
    """Add the IIS/ARR banners to every response, errors included, as IIS + ARR leak them."""
    if response.headers.get("Server", SERVER_SOFTWARE) == SERVER_SOFTWARE:  # not set by a handler
        response.headers["Server"] = "Microsoft-IIS/10.0"
    response.headers.add("X-Powered-By", "ASP.NET")
    response.headers.add("X-Powered-By", "ARR/3.0")


def _host(request: web.Request) -> str:
    """The Host header exactly as received: IIS builds absolute URLs from it."""
    return request.headers.get("Host", request.host)


def _eware_headers(*pairs: tuple[str, str]) -> CIMultiDict[str]:
    """Headers of an eware.dll page: .NET banner plus the given (possibly repeated) lines."""
    headers: CIMultiDict[str] = CIMultiDict(pairs)
    headers.add("X-AspNet-Version", "4.0.30319")
    return headers


# --- middlewares -----------------------------------------------------------------------

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _record(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Consume the body in chunks (hashing it), record the request, run the handler.

    The request is appended once its body has fully arrived; handlers see the record
    and the first 64 KiB (enough for forms and JSON).  aiohttp's own 4xx (no route,
    bad method) become IIS error pages.
    """
    h, length, head = hashlib.sha256(), 0, bytearray()
    async for chunk in request.content.iter_any():
        h.update(chunk)
        length += len(chunk)
        if len(head) < HEAD_KEEP:
            head += chunk[: HEAD_KEEP - len(head)]
    rec = RecordedRequest(
        method=request.method,
        raw_path=request.raw_path,
        headers=tuple((k.decode("latin-1"), v.decode("latin-1")) for k, v in request.raw_headers),
        body_length=length,
        body_sha256=h.hexdigest(),
        remote=request.remote,
    )
    request.app[RECORDED].append(rec)
    request[_REQ] = rec
    request[_HEAD] = bytes(head)
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return iis_error(exc.status)


# --- Sage CRM: eware.dll ---------------------------------------------------------------

_LOGON = """<!DOCTYPE html>
<html><head><title>Sage CRM</title></head>
<body onload="document.LoginForm.EWARE_USERID.focus()">
<form name="LoginForm" method="POST" action="/{name}/eware.dll/go">
{error}<input type="text" name="EWARE_USERID"> <input type="password" name="PASSWORD">
<input type="hidden" name="BrowserSupportsJavascript" value="1">
<input type="hidden" name="BrowserSupportsAJAX" value="1">
<input type="submit" value="Log On">
</form></body></html>
"""

_SCREEN = """<!DOCTYPE html>
<html><head><title>Sage CRM - Act {act}</title>
<script>var SID = "{sid}"; function saveEntry() {{ document.EntryForm.submit(); }}</script></head>
<body><form name="EntryForm" method="POST" action="/{name}/eware.dll/Do?SID={sid}&amp;Act={act}">
<p>Screen Act={act} SID={sid}</p><input type="text" name="comp_name" value="Gatecom">
<a href="javascript:document.EntryForm.submit()">Save</a>
</form></body></html>
"""


async def logon_page(request: web.Request) -> web.Response:
    """GET eware.dll/go: the logon form with IIS + web.config doubling the headers."""
    return _logon(request, "")


def _logon(request: web.Request, error: str) -> web.Response:
    """The logon page; ``error`` is an already-escaped message line."""
    headers = _eware_headers(
        ("X-Frame-Options", "SAMEORIGIN"),
        ("X-Frame-Options", "SAMEORIGIN"),
        ("X-XSS-Protection", "1; mode=block"),
        ("Set-Cookie", f"ASP.NET_SessionId={secrets.token_hex(12)}; path=/"),
        ("Set-Cookie", f"crmlogin=1; path=/{request.app[_NAME]}"),
    )
    body = _LOGON.format(name=request.app[_NAME], error=error)
    return web.Response(text=body, content_type="text/html", headers=headers)


async def logon_post(request: web.Request) -> web.Response:
    """POST eware.dll/go: a session in ``SID`` and an absolute http:// redirect to the desk."""
    form = dict(parse_qsl(request[_HEAD].decode("latin-1")))
    if not form.get("EWARE_USERID"):
        return _logon(request, '<p class="ErrorContent">Please enter your user name.</p>\n')
    sid = str(secrets.randbelow(9 * 10**14) + 10**14)
    location = f"http://{_host(request)}/{request.app[_NAME]}/eware.dll/Do?SID={sid}&Act=200"
    headers = _eware_headers(("Location", location), ("Set-Cookie", f"crmsession={sid}; path=/"))
    return web.Response(status=302, headers=headers, text="Object moved", content_type="text/html")


async def screen(request: web.Request) -> web.StreamResponse:
    """GET eware.dll/Do: a CRM screen, a library download (Act=1282) or a slow export (1410/1411)."""
    act = request.query.get("Act", "")
    if act == "1282":
        return await _send_pattern(
            request,
            int(request.query.get("size", 1024 * 1024)),
            chunked=False,
            headers=_eware_headers(
                ("Content-Type", "application/octet-stream"), ("Content-Disposition", 'attachment; filename="doc.bin"')
            ),
        )
    if act in ("1410", "1411"):
        await asyncio.sleep(float(request.query.get("delay", 2)))
        xlsx = b"PK\x03\x04" + pattern_bytes(0, 2048)
        headers = _eware_headers(("Content-Disposition", 'attachment; filename="report.xlsx"'))
        return web.Response(
            body=xlsx, headers=headers, content_type="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
        )
    headers = _eware_headers(
        ("X-Frame-Options", "SAMEORIGIN"),
        ("X-Frame-Options", "DENY"),
        ("X-Content-Type-Options", "nosniff"),
    )
    esc = {k: html.escape(request.query.get(k, ""), quote=True) for k in ("Act", "SID")}
    body = _SCREEN.format(act=esc["Act"], sid=esc["SID"], name=request.app[_NAME])
    return web.Response(text=body, content_type="text/html", headers=headers)


async def screen_post(request: web.Request) -> web.Response:
    """POST eware.dll/Do: the EntryForm was saved; redirect (absolute http://) to the same screen."""
    location = f"http://{_host(request)}{request.raw_path}"
    return web.Response(
        status=302, headers=_eware_headers(("Location", location)), text="Object moved", content_type="text/html"
    )


# --- Sage CRM: SData (Tomcat behind ARR) -----------------------------------------------


def _authorized(request: web.Request) -> bool:
    """SData accepts Basic in either header, or a SID query parameter."""
    for name in ("Authorization", "X-Sage-Authorization"):
        if request.headers.get(name, "").startswith("Basic "):
            return True
    return bool(request.query.get("SID"))


def _tomcat(resp: web.Response) -> web.Response:
    """Mark a response as coming from Tomcat (ARR still adds its own banner)."""
    resp.headers["Server"] = "Apache-Coyote/1.1"
    return resp


def _sdata_json(data: object, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """A Tomcat JSON response."""
    return _tomcat(web.json_response(data, status=status, headers=headers))


def _refused() -> web.Response:
    """401 the way CRM sends it: no WWW-Authenticate, so browsers never prompt."""
    diag = {
        "$diagnoses": [
            {"$severity": "error", "$sdataCode": "AuthenticationRequired", "$message": "Authentication required"}
        ]
    }
    return _sdata_json(diag, status=401)


_KEY = re.compile(r"^(?P<kind>[A-Za-z_]\w*)(?:\('(?P<key>[^']*)'\))?$")  # Company or Company('43')


async def sdata_v1(request: web.Request) -> web.Response:
    """SData v1 (read-only Atom XML) for anything under /sdata/<install>j/sagecrm/-/."""
    if not _authorized(request):
        return _refused()
    base = f"http://{_host(request)}/sdata/{request.app[_NAME]}j/sagecrm/-/"
    m = _KEY.match(request.match_info["tail"])
    if m is None:
        return _tomcat(iis_error(404))
    kind, key = m["kind"], m["key"]
    keys = [key] if key is not None else ["43", "44"]
    entries = "".join(
        f"<entry><id>{html.escape(base)}{kind}('{k}')</id><title>{kind} {k}</title>"
        f'<link rel="self" href="{html.escape(base)}{kind}(\'{k}\')"/>'
        f'<sdata:payload><{kind} sdata:key="{k}"><Name>Gatecom {k}</Name></{kind}></sdata:payload></entry>'
        for k in keys
    )
    ns = (
        'xmlns="http://www.w3.org/2005/Atom" xmlns:sdata="http://schemas.sage.com/sdata/2008/1" '
        'xmlns:opensearch="http://a9.com/-/spec/opensearch/1.1/"'
    )
    if key is not None:
        xml, kind_type = entries.replace("<entry>", f"<entry {ns}>", 1), "entry"
    else:
        total = f"<opensearch:totalResults>{len(keys)}</opensearch:totalResults>"
        xml, kind_type = f"<feed {ns}>{total}{entries}</feed>", "feed"
    body = ('<?xml version="1.0" encoding="utf-8"?>\n' + xml).encode()
    resp = web.Response(body=body, headers={"Content-Type": f"application/atom+xml; type={kind_type}"})
    return _tomcat(resp)


async def sdata_rest(request: web.Request) -> web.Response:
    """The sagecrm2 REST API: list/create an entity, read/update/delete one record."""
    if not _authorized(request):
        return _refused()
    m = _KEY.match(request.match_info["tail"])
    if m is None:
        return _sdata_json({"$diagnoses": [{"$message": "Not found"}]}, status=404)
    kind, key = m["kind"], m["key"]
    records = request.app[_STORE].setdefault(kind.lower(), {})
    base = f"http://{_host(request)}/sdata/{request.app[_NAME]}j/sagecrm2/-/{kind}"

    def resource(k: str) -> dict[str, object]:
        return {"$key": k, "$url": f"{base}('{k}')", **records[k]}

    if key is None and request.method == "GET":
        res = [resource(k) for k in records]
        return _sdata_json(
            {"$baseUrl": base, "$totalResults": len(res), "$startIndex": 1, "$itemsPerPage": 100, "$resources": res}
        )
    if key is None and request.method == "POST":
        new = str(max((int(k) for k in records if k.isdigit()), default=0) + 1)
        records[new] = _json_body(request)
        return _sdata_json(resource(new), status=201, headers={"Location": f"{base}('{new}')"})
    if key is None or request.method not in ("GET", "PUT", "DELETE"):
        return _tomcat(iis_error(405))
    if key not in records:
        return _sdata_json({"$diagnoses": [{"$message": f"{kind} not found"}]}, status=404)
    if request.method == "PUT":
        records[key].update(_json_body(request))
    elif request.method == "DELETE":
        del records[key]
        return _tomcat(web.Response(status=204))
    return _sdata_json(resource(key), headers={"Content-Location": f"{base}('{key}')"})


def _json_body(request: web.Request) -> dict[str, object]:
    """The (small) JSON object of a REST write, ignoring keys starting with ``$``."""
    try:
        data = json.loads(request[_HEAD] or b"{}")
    except ValueError:
        return {}
    return {k: v for k, v in data.items() if not k.startswith("$")} if isinstance(data, dict) else {}


async def notifications(request: web.Request) -> web.Response:
    """userdata?Action=getNotifications: small JSON with relative links, as CRM sends."""
    if not _authorized(request):
        return _refused()
    sid = request.query.get("SID", "")
    items = [{"id": 1, "text": "Call Gatecom", "link": f"eware.dll/Do?SID={sid}&Act=200&Key1=43"}]
    return _sdata_json({"action": request.query.get("Action", ""), "notifications": items})


# --- test helpers ----------------------------------------------------------------------


async def echo(request: web.Request) -> web.Response:
    """Any method under /echo: what arrived, as JSON."""
    rec = request[_REQ]
    return web.json_response(
        {
            "method": rec.method,
            "raw_path": rec.raw_path,
            "headers": [list(h) for h in rec.headers],
            "body_length": rec.body_length,
            "body_sha256": rec.body_sha256,
        }
    )


async def upload(request: web.Request) -> web.Response:
    """POST/PUT /upload: length and hash of the (already streamed and hashed) body."""
    rec = request[_REQ]
    return web.json_response({"body_length": rec.body_length, "body_sha256": rec.body_sha256})


async def headers_route(request: web.Request) -> web.Response:
    """/headers?h=Name:Value...&status=NNN: exactly those header lines, in order."""
    headers: CIMultiDict[str] = CIMultiDict()
    for item in request.query.getall("h", []):
        name, _, value = item.partition(":")
        headers.add(name, value)
    status = int(request.query.get("status", 200))
    if status in (204, 304):
        return web.Response(status=status, reason=_reason(status), headers=headers)
    headers.setdefault("Content-Type", "text/plain; charset=utf-8")
    return web.Response(status=status, reason=_reason(status), headers=headers, body=b"ok")


async def status_route(request: web.Request) -> web.Response:
    """/status/{code}: the IIS error page for that status."""
    return iis_error(int(request.match_info["code"]))


async def _write_pattern(request: web.Request, resp: web.StreamResponse, total: int) -> None:
    """Write ``total`` pattern bytes in 64 KiB chunks; nothing for HEAD (aiohttp would send it)."""
    if request.method == "HEAD":
        return
    for off in range(0, total, CHUNK):
        await resp.write(pattern_bytes(off, min(CHUNK, total - off)))


async def _send_pattern(
    request: web.Request, total: int, *, chunked: bool, headers: CIMultiDict[str] | None = None
) -> web.StreamResponse:
    """Stream ``total`` pattern bytes in 64 KiB writes, with Content-Length or chunked."""
    resp = web.StreamResponse(headers=headers)
    if chunked:
        resp.enable_chunked_encoding()
    else:
        resp.content_length = total
    resp.headers.setdefault("Content-Type", "application/octet-stream")
    await resp.prepare(request)
    await _write_pattern(request, resp, total)
    await resp.write_eof()
    return resp


async def large(request: web.Request) -> web.StreamResponse:
    """/large?bytes=N[&chunked=1]: a big deterministic body (default 20 MiB)."""
    total = int(request.query.get("bytes", 20 * 1024 * 1024))
    return await _send_pattern(request, total, chunked=request.query.get("chunked") == "1")


async def gzip_route(request: web.Request) -> web.Response:
    """/gzip: pre-compressed by the 'server', as IIS static compression does."""
    headers = {"Content-Encoding": "gzip", "Vary": "Accept-Encoding", "Content-Type": "text/plain"}
    return web.Response(body=_GZIP_BODY, headers=headers)


async def slow(request: web.Request) -> web.Response:
    """/slow?delay=S: a long report, for upstream read timeouts."""
    await asyncio.sleep(float(request.query.get("delay", 1)))
    return web.Response(text="done")


async def drip(request: web.Request) -> web.StreamResponse:
    """/drip?chunks=N&interval=S: one small chunk every S seconds, to catch buffering."""
    resp = web.StreamResponse(headers={"Content-Type": "text/plain"})
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    interval = float(request.query.get("interval", 0.2))
    for i in range(0 if request.method == "HEAD" else int(request.query.get("chunks", 5))):
        if i:
            await asyncio.sleep(interval)
        await resp.write(f"chunk {i}\n".encode())
    await resp.write_eof()
    return resp


async def etag(request: web.Request) -> web.Response:
    """/etag: conditional GET; the 304 keeps the doubled X-Frame-Options lines."""
    if request.headers.get("If-None-Match") == '"v1"':
        headers = CIMultiDict([("ETag", '"v1"'), ("X-Frame-Options", "SAMEORIGIN"), ("X-Frame-Options", "SAMEORIGIN")])
        return web.Response(status=304, headers=headers)
    return web.Response(text="version 1", headers={"ETag": '"v1"'})


async def redirect(request: web.Request) -> web.Response:
    """/redirect?to=PATH: absolute http:// Location from the Host header, like IIS."""
    location = f"http://{_host(request)}{request.query.get('to', '/')}"
    return web.Response(status=302, headers={"Location": location})


async def refresh(request: web.Request) -> web.Response:
    """/refresh: a Refresh header with an absolute internal URL."""
    url = f"http://{_host(request)}/{request.app[_NAME]}/eware.dll/go"
    return web.Response(text="refresh", headers={"Refresh": f"0; url={url}"})


async def cookies(request: web.Request) -> web.Response:
    """/cookies: a mix of flagless and flagged Set-Cookie lines."""
    headers = CIMultiDict(
        ("Set-Cookie", c)
        for c in (
            "ASP.NET_SessionId=abc; path=/",
            "JSESSIONID=def; Path=/sdata; HttpOnly",
            "pref=1; Expires=Wed, 21 Oct 2037 07:28:00 GMT; Path=/",
            "already=1; Secure; HttpOnly; SameSite=Strict",
        )
    )
    return web.Response(text="cookies", headers=headers)


async def die_midway(request: web.Request) -> web.StreamResponse:
    """/die-midway?bytes=N: promise 2N bytes, send N, then drop the connection."""
    n = int(request.query.get("bytes", CHUNK))
    resp = web.StreamResponse()
    resp.content_length = 2 * n
    resp.content_type = "application/octet-stream"
    await resp.prepare(request)
    await _write_pattern(request, resp, n)
    if request.transport is not None:
        request.transport.close()  # flushes what was written, then closes; aiohttp ignores the rest
    return resp


WS_PROTOCOLS = ("crm.v2", "crm.v1")  # what /ws/echo offers, in its order of preference
WS_CLOSED = web.AppKey("ws_closed", list)  # close code of each /ws/echo session once it ended (None: no frame)


async def ws_echo(request: web.Request) -> web.StreamResponse:
    """/ws/echo[?greet=TEXT]: echo text and binary; 'close:CODE:REASON' closes with that code and reason.

    Negotiates a subprotocol from WS_PROTOCOLS and permessage-deflate when offered, and answers
    pings (aiohttp's autoping): enough to see every part of a WebSocket cross the proxy.
    """
    ws = web.WebSocketResponse(protocols=WS_PROTOCOLS, max_msg_size=0)
    await ws.prepare(request)
    if "greet" in request.query:  # /ws/echo?greet=TEXT speaks first, right behind the 101
        await ws.send_str(request.query["greet"])
    async for message in ws:
        if message.type == web.WSMsgType.TEXT:
            if message.data.startswith("close:"):
                _, code, reason = message.data.split(":", 2)
                await ws.close(code=int(code), message=reason.encode())
                break
            await ws.send_str(message.data)
        elif message.type == web.WSMsgType.BINARY:
            await ws.send_bytes(message.data)
    request.app[WS_CLOSED].append(ws.close_code)
    return ws


async def events(request: web.Request) -> web.StreamResponse:
    """/events?count=N&interval=S: a server-sent event feed, one event every S seconds."""
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await resp.prepare(request)
    interval = float(request.query.get("interval", 1))
    for i in range(0 if request.method == "HEAD" else int(request.query.get("count", 5))):
        if i:
            await asyncio.sleep(interval)
        await resp.write(f"id: {i}\nevent: notification\ndata: event {i}\n\n".encode())
    await resp.write_eof()
    return resp


def _fixed_redirect(location: str) -> Handler:
    """A handler answering 302 to a fixed ``location`` (relative, or an internal name)."""

    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(status=302, headers={"Location": location})

    return handler


def make_app(*, name: str = "crm") -> web.Application:
    """Build the stand-in; ``name`` is the CRM install name (paths /<name>/ and /sdata/<name>j/)."""
    app = web.Application(middlewares=[_record])
    app[RECORDED] = []
    app[WS_CLOSED] = []
    app[_STORE] = {"company": {"43": {"Name": "Gatecom", "Website": "http://gatecom.example"}}}
    app[_NAME] = name
    app.on_response_prepare.append(_banners)
    eware, sdata = f"/{name}/eware.dll", f"/sdata/{name}j"
    r = app.router
    r.add_get(f"{eware}/go", logon_page)
    r.add_post(f"{eware}/go", logon_post)
    r.add_get(f"{eware}/Do", screen)
    r.add_post(f"{eware}/Do", screen_post)
    r.add_get(f"{sdata}/sagecrm/-/{{tail:.+}}", sdata_v1)
    r.add_route("*", f"{sdata}/sagecrm2/-/{{tail:.+}}", sdata_rest)
    r.add_get(f"{sdata}/userdata", notifications)
    r.add_route("*", "/echo{tail:.*}", echo)
    r.add_post("/upload", upload)
    r.add_put("/upload", upload)
    r.add_get("/headers", headers_route)
    r.add_get(r"/status/{code:\d{3}}", status_route)
    r.add_get("/large", large)
    r.add_get("/gzip", gzip_route)
    r.add_get("/slow", slow)
    r.add_get("/drip", drip)
    r.add_get("/etag", etag)
    r.add_get("/redirect", redirect)
    r.add_get("/redirect-internal", _fixed_redirect("http://iis.internal/crm/"))
    r.add_get("/refresh", refresh)
    r.add_get("/cookies", cookies)
    r.add_get("/die-midway", die_midway)
    r.add_get("/ws/echo", ws_echo)
    r.add_get("/events", events)
    r.add_get("/", _fixed_redirect(f"/{name}/"))  # the default IIS site points at the CRM app
    r.add_get(f"/{name}/", _fixed_redirect(f"{eware}/go"))  # the install's default document
    return app  # anything else (under /crm/ or not) is an IIS 404 page, via _record


async def run_standin(host: str, port: int) -> web.AppRunner:
    """Start the stand-in on host:port (0 = any free port; read ``runner.addresses``)."""
    runner = web.AppRunner(make_app(), handler_cancellation=True)  # IIS, too, stops work for a client gone
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
