"""The listener's HTTP layer: every response the proxy writes, including aiohttp's own errors, passes here.

aiohttp answers a malformed request from inside its protocol handler, before any application code
or `on_response_prepare` signal runs, and stamps its `Server: Python/... aiohttp/...` banner on
everything. Both are closed off here: the request type applies the header policy at the moment any
response on it is prepared, and the protocol handler replaces aiohttp's error pages with our own.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

from aiohttp import web
from aiohttp.http import SERVER_SOFTWARE
from aiohttp.web_protocol import RequestHandler

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

    ATTRS = web.BaseRequest.ATTRS | frozenset({"context", "policy", "policy_context"})

    def __init__(self, *args: Any, context: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.context = context  # the configuration snapshot this request is served under
        self.policy: Policy = REFUSAL_POLICY
        self.policy_context: ResponseContext | None = None

    async def _prepare_hook(self, response: web.StreamResponse) -> None:
        """The single place the header policy is applied: every response is prepared exactly once."""
        headers = response.headers
        if headers.get("Server") is SERVER_SOFTWARE:  # aiohttp's setdefault, not a value upstream sent
            del headers["Server"]
        self.policy.apply(headers, self.policy_context or ResponseContext(https=self.secure))


def own_response(status: int, detail: str = "") -> web.Response:
    """A short plain-text page for the answers the proxy gives itself; never echoes the request."""
    phrase = HTTPStatus(status).phrase
    text = f"{status} {phrase}\n" + (f"\n{detail}\n" if detail else "")
    return web.Response(status=status, text=text, content_type="text/plain")


class ProxyRequestHandler(RequestHandler):
    """aiohttp's protocol handler with our error pages and one log line instead of a traceback."""

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if status >= 500:
            log.error("error handling request from %s: %r", request.remote, exc, exc_info=exc)
        else:
            log.info("refused malformed request from %s: %s", request.remote, message or exc)
        if request.writer.output_size > 0:
            raise ConnectionError("response already started; closing the connection instead")
        details = {400: "The request could not be parsed.", 500: "The proxy failed to handle this request."}
        response = own_response(status, details.get(status, ""))
        response.force_close()
        return response


class ProxyServer(web.Server):
    """`web.Server` that speaks through `ProxyRequestHandler` and makes `ProxyRequest`s."""

    def __init__(self, handler: Callable[..., Any], context: Callable[[], Any], **kwargs: Any) -> None:
        super().__init__(handler, request_factory=self._make_proxy_request, **kwargs)
        self._context = context

    def _make_proxy_request(self, message: Any, payload: Any, protocol: Any, writer: Any, task: Any) -> ProxyRequest:
        return ProxyRequest(message, payload, protocol, writer, task, self._loop, context=self._context())

    def __call__(self) -> RequestHandler:
        return ProxyRequestHandler(self, loop=self._loop, **self._kwargs)
