"""The plain-HTTP listener: a redirect to HTTPS for configured hosts, and ACME HTTP-01 challenge files.

Nothing is proxied here. An unknown Host gets 421, never a redirect (no open redirect to a name
an attacker chose). Responses pass the same header policy hook as everything else, with
`https=False`, so they carry the site's security headers but never `Strict-Transport-Security`
(RFC 6797 §7.2).
"""

from __future__ import annotations

import re
from pathlib import Path

from aiohttp import web

from .config import Site
from .forward import Snapshot, checked_target, refuse
from .policy import ResponseContext
from .protocol import ProxyRequest, own_response

ACME_PREFIX = "/.well-known/acme-challenge/"
#: RFC 8555 §8.3: the token is base64url, so anything else (dots, slashes, %-escapes) is refused.
_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,256}")
MAX_CHALLENGE_BYTES = 64 * 1024


def site_for_host(snapshot: Snapshot, host: str, path_qs: str) -> Site | None:
    """The site whose header policy the answer gets; None when the host is not configured at all."""
    return snapshot.router.match(host, path_qs) or snapshot.router.any_site(host)


def https_location(host: str, public_port: int, path_qs: str) -> str:
    """`https://HOST[:port]/path?query`, the path and query exactly as the client sent them."""
    port = "" if public_port == 443 else f":{public_port}"
    return f"https://{host}{port}{path_qs}"


def challenge(directory: Path | None, path: str) -> web.Response:
    """A challenge file from `[acme] challenge_dir`; 404 for anything that is not a plain token there."""
    token = path[len(ACME_PREFIX) :]
    if directory is None or not _TOKEN.fullmatch(token):
        return own_response(404, "No such ACME challenge.")
    file = directory / token
    try:
        if not file.is_file() or file.stat().st_size > MAX_CHALLENGE_BYTES:
            return own_response(404, "No such ACME challenge.")
        body = file.read_bytes()
    except OSError:
        return own_response(404, "No such ACME challenge.")
    return web.Response(body=body, content_type="application/octet-stream")


async def handle_redirect(request: ProxyRequest) -> web.StreamResponse:
    snapshot: Snapshot = request.context
    target = checked_target(request)
    if isinstance(target, web.Response):
        return target
    assert target.host is not None
    site = site_for_host(snapshot, target.host, target.path_qs)
    if site is None:
        return refuse(request, 421, "This proxy serves no site for this host.")
    request.policy = site.policy
    request.policy_context = ResponseContext(https=False)
    path = target.path_qs.split("?", 1)[0]
    acme_dir = snapshot.config.proxy.acme_challenge_dir
    if acme_dir is not None and path.startswith(ACME_PREFIX) and request.method in ("GET", "HEAD"):
        return challenge(acme_dir, path)
    listen = snapshot.config.proxy.listen
    location = https_location(target.host, listen.public_port, target.path_qs)
    response = own_response(listen.redirect_status, "This site is served over HTTPS only.")
    response.headers["Location"] = location
    if request.body_exists:
        response.force_close()  # do not read an upload we are not going to use
    return response
