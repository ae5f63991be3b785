"""Per-request accounting: one `Exchange` filled in as a request passes, then one access-log line and metrics.

The hooks are placed so the forwarding code stays unaware of them: the handler is wrapped (start time,
cancellation), the upstream transport is wrapped (upstream status, time, error kind), and aiohttp's
access-logger slot receives every finished response, including aiohttp's own 400s for unparsable
requests, which never reach a handler. The request task carries the `Exchange` in a context variable,
so the three meet without the request object growing attributes.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from .config import Config, Site
from .logs import access_fields, event
from .metrics import NO_SITE, Metrics
from .upstream import OutboundRequest, UpstreamError

access_log = logging.getLogger("crm_proxy.access")


@dataclass
class Exchange:
    """What is known about one request so far; the access log and metrics read it at the end."""

    metrics: Metrics
    started: float
    site: str = NO_SITE
    upstream_status: int | None = None
    upstream_seconds: float | None = None
    upstream_error: str | None = None
    logged: bool = False


CURRENT: contextvars.ContextVar[Exchange | None] = contextvars.ContextVar("crm_proxy_exchange", default=None)


def routed(site: Site) -> None:
    """Called by the handler once it knows the site; labels metrics and the access log line."""
    exchange = CURRENT.get()
    if exchange is not None:
        exchange.site = site.name


@contextlib.contextmanager
def websocket_open(site: str) -> Iterator[None]:
    """Count an open WebSocket tunnel for `crm_proxy_open_websockets` while the block runs."""
    exchange = CURRENT.get()
    if exchange is None:
        yield
        return
    gauge = exchange.metrics.websockets
    gauge.inc(site)
    try:
        yield
    finally:
        gauge.dec(site)


Handler = Callable[[Any], Awaitable[web.StreamResponse]]


def observed(handler: Handler, metrics: Metrics) -> Handler:
    """Wrap the proxy handler: start the exchange, and account for requests cancelled by a leaving client."""

    @functools.wraps(handler)
    async def wrapper(request: Any) -> web.StreamResponse:
        exchange = Exchange(metrics, time.monotonic())
        CURRENT.set(exchange)  # the request runs in its own task: this value ends with it
        try:
            return await handler(request)
        except asyncio.CancelledError:
            # nginx's 499: the client closed the connection before the answer was complete
            seconds = time.monotonic() - exchange.started
            finish(metrics, exchange, request, 499, request.writer.output_size, seconds)
            raise

    return wrapper


def received(request: Any) -> int:
    """Request body bytes read from the client so far (decoded from chunked framing)."""
    return int(getattr(request.content, "total_bytes", 0) or 0)


def finish(metrics: Metrics, exchange: Exchange | None, request: Any, status: int, sent: int, seconds: float) -> None:
    """Record one finished request once: metrics, then the access-log line.

    `exchange` is None when the handler never ran: aiohttp refused a request it could not parse,
    so its method and target are not known.
    """
    if exchange is not None:
        if exchange.logged:
            return
        exchange.logged = True
    site = exchange.site if exchange is not None else NO_SITE
    body = received(request) if exchange is not None else 0
    method = request.method if exchange is not None else "-"
    metrics.request(site, method, status, seconds, body, sent)
    if not access_log.isEnabledFor(logging.INFO):
        return
    snapshot = getattr(request, "context", None)
    trusted = exchange is not None and snapshot is not None and snapshot.is_trusted(request.remote)
    fields = access_fields(
        site=site,
        client=request.remote or "",
        forwarded_for=request.headers.get("X-Forwarded-For") if trusted else None,
        method=method,
        target=request.raw_path if exchange is not None else "-",
        status=status,
        sent=sent,
        received=body,
        seconds=seconds,
        upstream_status=exchange.upstream_status if exchange else None,
        upstream_seconds=exchange.upstream_seconds if exchange else None,
        upstream_error=exchange.upstream_error if exchange else None,
    )
    access_log.info("%s %s %s", fields["method"], fields["path"], status, extra={"fields": fields})


def access_logger_class(metrics: Metrics) -> type[AbstractAccessLogger]:
    """aiohttp's access-logger slot, bound to this proxy's metrics; it sees every finished response."""

    class AccessLogger(AbstractAccessLogger):
        def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
            finish(metrics, CURRENT.get(), request, response.status, request.writer.output_size, time)

        @property
        def enabled(self) -> bool:
            return True  # aiohttp measures the request time only while a logger is enabled

    return AccessLogger


class ObservedTransport:
    """The upstream transport, noting upstream status, time to the response head, and failures by kind."""

    def __init__(self, inner: Any, metrics: Metrics) -> None:
        self._inner = inner
        self._metrics = metrics

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)  # anything else the transport offers (WebSocket upgrades, ...)

    def dedicated(self) -> ObservedTransport:
        return ObservedTransport(self._inner.dedicated(), self._metrics)

    def failed(self, exc: UpstreamError) -> None:
        exchange = CURRENT.get()
        site = exchange.site if exchange is not None else NO_SITE
        self._metrics.upstream_errors.inc(site, exc.kind)
        if exchange is not None:
            exchange.upstream_error = exc.kind

    @contextlib.asynccontextmanager
    async def send(self, request: OutboundRequest) -> AsyncIterator[Any]:
        exchange = CURRENT.get()
        started = time.monotonic()
        manager = self._inner.send(request)
        try:
            answer = await manager.__aenter__()
        except UpstreamError as exc:
            self.failed(exc)
            raise
        if exchange is not None:
            exchange.upstream_status = answer.status
            exchange.upstream_seconds = time.monotonic() - started
        try:
            yield _ObservedResponse(answer, self.failed)
        except BaseException as exc:
            if not await manager.__aexit__(type(exc), exc, exc.__traceback__):
                raise
        else:
            await manager.__aexit__(None, None, None)

    async def close(self) -> None:
        await self._inner.close()


class _ObservedResponse:
    def __init__(self, inner: Any, failed: Callable[[UpstreamError], None]) -> None:
        self._inner, self._failed = inner, failed
        self.status, self.reason, self.headers = inner.status, inner.reason, inner.headers

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._inner.chunks():
                yield chunk
        except UpstreamError as exc:
            self._failed(exc)
            raise


# --- reloads and certificates ------------------------------------------------------------------------


def counted_reload(method: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate `ProxyService.reload`: count the result, log it as an event, refresh certificate expiry."""

    def record(service: Any, ok: bool) -> bool:
        metrics: Metrics = service.metrics
        metrics.reloads.inc("success" if ok else "failure")
        metrics.reload_ok.set(value=1 if ok else 0)
        event("reload", "configuration reloaded" if ok else "reload refused; the running configuration stays",
              ok=ok, config=str(service.config.directory))  # fmt: skip
        if ok:
            refresh_certificates(metrics, service.config)
        return ok

    @functools.wraps(method)
    def wrapper(service: Any, *args: Any, **kwargs: Any) -> Any:
        result = method(service, *args, **kwargs)
        if inspect.isawaitable(result):

            async def later() -> bool:
                return record(service, bool(await result))

            return later()
        return record(service, bool(result))

    return wrapper


def refresh_certificates(metrics: Metrics, config: Config) -> None:
    """Set `crm_proxy_certificate_expiry_timestamp_seconds` per site from the certificates the listeners serve.

    Expiry warnings are the configuration's own (`Config.warnings`, logged at start and on every reload).
    """
    metrics.cert_expiry.values.clear()
    for site in config.sites:
        served = config.certificates.for_name(site.hosts[0]) if site.hosts else None
        if served is not None:
            metrics.cert_expiry.set(site.name, value=served.not_after.timestamp())


def watch_connections(metrics: Metrics, runners: Callable[[], list[web.BaseRunner]]) -> None:
    """Read the open-connection count from the listeners at scrape time instead of tracking it."""

    def collect() -> None:
        count = sum(len(r.server.connections) for r in runners() if isinstance(r.server, web.Server))
        metrics.connections.set(value=count)

    metrics.collectors.append(collect)
