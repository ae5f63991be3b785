"""The listener's HTTP layer: every response the proxy writes, including aiohttp's own errors, passes here.

aiohttp answers a malformed request from inside its protocol handler, before any application code
or `on_response_prepare` signal runs, and stamps its `Server: Python/... aiohttp/...` banner on
everything. Both are closed off here: the request type applies the header policy at the moment any
response on it is prepared, and the protocol handler replaces aiohttp's error pages with our own.

The protocol handler is also where requests are refused before routing, because only it sees the
bytes as they arrive: what llhttp accepts but a proxy must not (HTTP/0.9 and versions other than
1.0/1.1, transfer codings other than a lone `chunked`, control characters), a request head over
`limits.max_header_bytes` in total, a head that does not arrive within `timeouts.client_header`
(slowloris), and connections over `limits.max_connections`. Every refusal becomes an error
"message" in aiohttp's queue, so its response is prepared on a request like any other and gets the
refusal header set, then the connection is closed and nothing more of it is parsed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from aiohttp import web
from aiohttp.http import SERVER_SOFTWARE, HttpVersion10, HttpVersion11, RawRequestMessage
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong
from aiohttp.streams import EMPTY_PAYLOAD
from aiohttp.web_protocol import ERROR, RequestHandler, _ErrInfo

from . import redact
from .policy import Policy, ResponseContext

log = logging.getLogger("crm_proxy")

#: Policy for answers that belong to no site (unknown host, malformed request): strict, as an error page can be.
REFUSAL_POLICY = Policy.build(
    profile="sage-guide",
    set={
        "X-Frame-Options": "DENY",
        "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
        "Referrer-Policy": "no-referrer",
    },
    cookies=None,
)


class ProxyRequest(web.BaseRequest):
    """A request that knows which header policy its responses get."""

    ATTRS = web.BaseRequest.ATTRS | frozenset({"context", "policy", "policy_context", "keep_content_type"})

    def __init__(self, *args: Any, context: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.context = context  # the configuration snapshot this request is served under
        self.policy: Policy = REFUSAL_POLICY
        self.policy_context: ResponseContext | None = None
        #: False for a proxied answer that came without Content-Type: aiohttp's default must not be added.
        self.keep_content_type = True

    async def _prepare_hook(self, response: web.StreamResponse) -> None:
        """The single place the header policy is applied: every response is prepared exactly once."""
        headers = response.headers
        if headers.get("Server") is SERVER_SOFTWARE:  # aiohttp's setdefault, not a value upstream sent
            del headers["Server"]
        if not self.keep_content_type:  # aiohttp's octet-stream default would turn a page into a download
            headers.popall("Content-Type", None)
        self.policy.apply(headers, self.policy_context or ResponseContext(https=self.secure))


def own_response(status: int, detail: str = "") -> web.Response:
    """A short plain-text page for the answers the proxy gives itself; never echoes the request."""
    phrase = HTTPStatus(status).phrase
    text = f"{status} {phrase}\n" + (f"\n{detail}\n" if detail else "")
    return web.Response(status=status, text=text, content_type="text/plain")


class Refusal(BadHttpMessage):
    """A request refused before routing; `detail` is our own text, safe to show the client."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


@dataclass
class ConnectionGate:
    """Open client connections across every listener, against `limits.max_connections` (0: no cap)."""

    cap: int = 0
    open: int = 0


_VERSIONS = (HttpVersion10, HttpVersion11)
_REQUEST_LINE_END = (b" HTTP/1.1", b" HTTP/1.0")
#: Control characters RFC 9110 §5.5 forbids in field lines (HTAB is allowed in values; names are tokens).
_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
#: Seconds a refused connection stays half-open, swallowing what the client still sends, so that
#: the refusal is read before the close (closing on unread input sends a reset that can destroy it).
LINGER = 2.0
#: aiohttp's error page for a request it could not parse claims HTTP/1.0; ours answer as 1.1 and say `close`.
_ERROR_11 = ERROR._replace(version=HttpVersion11)


def head_size(message: RawRequestMessage) -> int:
    """The fewest bytes this head could have been sent in (`Name:value` lines, no optional whitespace).

    Heads that arrive while the connection is idle are counted byte for byte as they arrive; this
    covers pipelined ones, and never counts more than the client sent.
    """
    line = len(message.method) + len(message.path.encode("utf-8", "surrogateescape")) + 12
    return line + sum(len(name) + len(value) + 3 for name, value in message.raw_headers) + 2


def too_large(limit: int) -> Refusal:
    return Refusal(431, f"The request head is larger than the {limit} bytes this proxy accepts.")


def vet(message: RawRequestMessage, head_limit: int) -> Refusal | None:
    """What llhttp lets through but a proxy in front of IIS must refuse; None when the request may be routed."""
    if message.version not in _VERSIONS:
        return Refusal(400, "Only HTTP/1.1 and HTTP/1.0 are served here.")
    if head_limit and head_size(message) > head_limit:
        return too_large(head_limit)
    codings: list[bytes] = []
    lengths = 0
    for name, value in message.raw_headers:
        if _CONTROL.search(name) or _CONTROL.search(value):
            return Refusal(400, "A header contains a control character.")
        low = name.lower()
        if low == b"transfer-encoding":
            codings.append(value)
        elif low == b"content-length":
            lengths += 1
    if not codings:
        return None
    if message.version == HttpVersion10:
        return Refusal(400, "Transfer-Encoding is not allowed in an HTTP/1.0 request.")
    if len(codings) > 1 or lengths:
        return Refusal(400, "The request is framed more than one way.")
    chain = [c.strip(b" \t").lower() for c in codings[0].split(b",")]
    if chain[-1] != b"chunked":
        return Refusal(400, "The request body's length cannot be determined (chunked must be the last coding).")
    if len(chain) > 1:
        return Refusal(501, "Only the chunked transfer coding is supported.")
    return None


class ProxyRequestHandler(RequestHandler):
    """aiohttp's protocol handler with our error pages, request vetting, head limits and timers."""

    def __init__(
        self,
        manager: web.Server,
        *,
        loop: asyncio.AbstractEventLoop,
        client_header: float = 0,
        head_limit: int = 0,
        gate: ConnectionGate | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(manager, loop=loop, **kwargs)
        self._client_header = client_header
        self._head_limit = head_limit
        self._gate = gate
        self._counted = False
        self._refused = False  # a refusal is queued: parse nothing more on this connection
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_bytes: int | None = None  # bytes of the head being received; None while a request runs
        self._head_line: bytes | None = None  # the request line until its end is seen, then None
        self._refusal: web.StreamResponse | None = None  # the error answer, closed gently once written
        self._draining = False  # closing for shutdown while a request's body may still be arriving
        self._fed_while_busy = False  # bytes arrived while a request ran (a pipelined head may have begun)
        #: An upstream transport of this client connection's own, once it authenticates with NTLM/Negotiate.
        self.pinned_upstream: Any = None

    # --- connection lifetime -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        gate = self._gate
        if gate is not None and gate.cap:
            if gate.open >= gate.cap:
                log.warning("refused a connection: limits.max_connections (%d) reached", gate.cap)
                self._refuse(Refusal(503, "The proxy is at its connection limit; try again shortly."))
                return
            gate.open += 1
            self._counted = True
        self._start_head()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self.pinned_upstream is not None:  # its authenticated upstream connection dies with it
            asyncio.ensure_future(self.pinned_upstream.close())
            self.pinned_upstream = None
        if self._counted and self._gate is not None:
            self._gate.open -= 1
            self._counted = False
        self._stop_head_timer()
        super().connection_lost(exc)

    def drain(self) -> None:
        """Shutdown begins: take no further request, but keep reading the body of the one in flight."""
        self._draining = self._request_in_progress and not self._upgraded
        self.close()

    async def shutdown(self, timeout: float | None = 15.0) -> None:
        """Let the request in flight finish, body upload included, before aiohttp's shutdown.

        aiohttp's own shutdown stops reading at once, which would strand a request whose body is
        still arriving; here the connection only stops taking new requests until it is done.
        """
        loop = self._loop
        deadline = loop.time() + (timeout or 0)
        if not self._close:
            self.drain()
        if self._request_in_progress and self._handler_waiter is None and timeout:
            self._handler_waiter = waiter = loop.create_future()
            with contextlib.suppress(TimeoutError, asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(waiter), timeout)
            self._handler_waiter = None
        await super().shutdown(max(0.01, deadline - loop.time()))  # aiohttp reads 0 as "no time limit"

    # --- the request head ----------------------------------------------------------------

    def _start_head(self) -> None:
        self._head_bytes, self._head_line = 0, b""
        self._stop_head_timer()
        if self._client_header > 0:
            self._head_timer = self._loop.call_later(self._client_header, self._head_timed_out)

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _idle(self) -> bool:
        """Waiting for the next request with none queued: new bytes start a new head."""
        waiter = self._waiter
        return waiter is not None and not waiter.done() and not self._messages

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._head_bytes is None or self.transport is None or self._refused:
            return
        if self._head_bytes == 0:  # connected and said nothing: just hang up
            self.force_close()
            return
        log.info("refused request from %s: no complete request head within %gs", self._peer(), self._client_header)
        self._refuse(Refusal(408, "The request head did not arrive in time."))

    def _scan_head(self, data: bytes) -> Refusal | None:
        """Count the head's bytes and check its request line as soon as the line is complete."""
        assert self._head_bytes is not None
        self._head_bytes += len(data)
        if self._head_line is None:
            return None
        line = (self._head_line + data).lstrip(b"\r\n")  # RFC 9112 §2.2: blank lines before it are ignored
        end = line.find(b"\n")
        if end < 0:
            self._head_line = line[: self._head_limit or None]
            return None
        self._head_line = None
        if not line[:end].rstrip(b"\r").endswith(_REQUEST_LINE_END):
            return Refusal(400, "The request line must end with HTTP/1.1 or HTTP/1.0.")
        return None

    def data_received(self, data: bytes) -> None:
        if self._refused or self._force_close:
            return
        if self._close:
            if not self._draining:
                return
            self._close = False  # shutting down, but the body of the request in flight is still welcome
            try:
                self.data_received(data)
            finally:
                self._close = True
            return
        if self._head_bytes is None and data and self._idle():
            self._start_head()
            if self._fed_while_busy:  # the parser may hold the start of this head already: its line was not seen
                self._head_line = None
        counting = self._head_bytes is not None and self._payload_parser is None and not self._upgraded
        if counting and data:
            refusal = self._scan_head(data)
            if refusal is not None:
                self._refuse(refusal)
                return
            assert self._head_bytes is not None
            over = self._head_bytes - self._head_limit if self._head_limit else 0
            if over > 0:  # only the bytes that fit may be parsed: does the head end within them?
                fits, data = data[: len(data) - over], data[len(data) - over :]
                if not self._feed(fits):
                    if not self._refused:
                        self._refuse(too_large(self._head_limit))
                    return
        self._feed(data)

    def _feed(self, data: bytes) -> bool:
        """Parse `data`; True when it completed at least one request head (or a parse error)."""
        before = self._request_count
        super().data_received(data)
        # bytes parsed outside a counted head (a body, or whatever followed a complete head) may hold the
        # start of the next head: its request line is then only known to llhttp, and `vet` checks it there
        self._fed_while_busy = self._head_bytes is None or self._request_count != before
        if self._request_count == before:
            return False
        self._head_bytes = None
        self._stop_head_timer()
        self._vet_queued(self._request_count - before)
        return True

    def _vet_queued(self, count: int) -> None:
        """Swap a just-parsed request that must be refused for an error entry; drop what follows it."""
        queue = self._messages
        for index in range(max(0, len(queue) - count), len(queue)):
            message, _ = queue[index]
            refusal = vet(message, self._head_limit) if isinstance(message, RawRequestMessage) else None
            if refusal is None and not isinstance(message, _ErrInfo):
                continue
            if refusal is not None:
                queue[index] = (_ErrInfo(status=refusal.status, exc=refusal, message=refusal.detail), EMPTY_PAYLOAD)
            current = self._current_request
            if index == 0 and current is not None and not current.content.is_eof():
                # a parse error in the body of the request being forwarded (a bad chunk): fail its upload now
                current.content.set_exception(BadHttpMessage("malformed request body"))
            while len(queue) > index + 1:
                queue.pop()
            self._refused = True
            return

    def _refuse(self, refusal: Refusal) -> None:
        """Queue an error answer; the connection parses nothing more and closes after it."""
        self._refused = True
        self._head_bytes = None
        self._stop_head_timer()
        self._messages.append((_ErrInfo(status=refusal.status, exc=refusal, message=refusal.detail), EMPTY_PAYLOAD))
        self._request_count += 1
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def finish_response(
        self, request: web.BaseRequest, resp: web.StreamResponse, start_time: float | None
    ) -> tuple[web.StreamResponse, bool]:
        result = await super().finish_response(request, resp, start_time)
        if resp is self._refusal and self.transport is not None:
            self._linger()
        return result

    def _linger(self) -> None:
        """Close a refused connection gently: FIN after the answer, input discarded, abort after LINGER.

        Only for plain TCP: a TLS transport cannot half-close, and its own close (close_notify,
        then waiting for the peer's) already keeps the socket open while the client reads.
        """
        transport = self.transport
        assert transport is not None
        try:
            if not transport.can_write_eof():
                return
            transport.write_eof()
        except (OSError, RuntimeError, NotImplementedError):
            return
        self.transport = None  # aiohttp's own close would reset a client that is still sending
        self._loop.call_later(LINGER, transport.abort)

    def _peer(self) -> str:
        peer = self.peername
        return str(peer[0]) if isinstance(peer, tuple) else str(peer)

    # --- error pages ---------------------------------------------------------------------

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        detail = ""
        if isinstance(exc, Refusal):
            status, detail = exc.status, exc.detail
        elif isinstance(exc, LineTooLong) or getattr(exc, "message", "").startswith("Too many headers"):
            status, detail = 431, "A request header line is too long, or there are too many."
        if status >= 500 and not isinstance(exc, Refusal):
            log.error("error handling request from %s: %r", request.remote, exc, exc_info=exc)
        elif not isinstance(exc, Refusal) or status not in (408, 503):  # those two were logged when decided
            reason = detail if isinstance(exc, Refusal) else f"{type(exc).__name__}: {message or exc}"
            log.info("refused malformed request from %s: %d %s", request.remote, status, redact.text(reason))
        if request.writer.output_size > 0:
            raise ConnectionError("response already started; closing the connection instead")
        details = {400: "The request could not be parsed.", 500: "The proxy failed to handle this request."}
        response = own_response(status, detail or details.get(status, ""))
        response.force_close()
        self._refusal = response
        return response


class ProxyServer(web.Server):
    """`web.Server` that speaks through `ProxyRequestHandler` and makes `ProxyRequest`s."""

    def __init__(
        self,
        handler: Callable[..., Any],
        context: Callable[[], Any],
        *,
        client_header: float = 0,
        head_limit: int = 0,
        gate: ConnectionGate | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(handler, request_factory=self._make_proxy_request, **kwargs)
        self._context = context
        self._options: dict[str, Any] = {"client_header": client_header, "head_limit": head_limit, "gate": gate}

    def _make_proxy_request(self, message: Any, payload: Any, protocol: Any, writer: Any, task: Any) -> ProxyRequest:
        if message is ERROR:
            message = _ERROR_11
        return ProxyRequest(message, payload, protocol, writer, task, self._loop, context=self._context())

    def pre_shutdown(self) -> None:
        for connection in self._connections:
            if isinstance(connection, ProxyRequestHandler):
                connection.drain()
            else:
                connection.close()

    def __call__(self) -> RequestHandler:
        return ProxyRequestHandler(self, loop=self._loop, **self._options, **self._kwargs)
