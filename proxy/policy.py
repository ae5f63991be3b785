"""The header policy: the one place that decides the response headers a client sees.

A `Policy` is compiled once per site when the configuration loads; `Policy.apply` then runs for
every response, proxied or made by the proxy itself, just before its headers are written.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from multidict import CIMultiDict

from .header_values import canonical_name, check
from .profiles import PROFILES

SET_COOKIE = "Set-Cookie"
HSTS = "Strict-Transport-Security"
_REWRITTEN_URL_HEADERS = ("Location", "Content-Location")
_REFRESH = re.compile(r"""^(\s*\d+(?:\.\d*)?\s*[;,]\s*(?:url\s*=\s*)?)(['"]?)(.*?)\2(\s*)$""", re.I)


@dataclass(frozen=True)
class CookieFlags:
    """Attributes added to every upstream `Set-Cookie` that lacks them."""

    secure: bool = True
    http_only: bool = True
    same_site: str = "Lax"


@dataclass(frozen=True)
class ResponseContext:
    """What the policy needs to know about the exchange a response belongs to."""

    https: bool
    #: `scheme://host[:port]` as the client addressed us; absolute URLs upstream builds are moved here.
    public_origin: str | None = None
    #: Lower-case host names that mean "the upstream" in a Location (its address, the Host it was sent).
    upstream_hosts: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Policy:
    """A site's effective header rules, resolved from its profile and `[headers]` table."""

    set: tuple[tuple[str, str], ...] = ()
    default: tuple[tuple[str, str], ...] = ()
    remove: frozenset[str] = frozenset()
    remove_prefixes: tuple[str, ...] = ()
    #: The `Strict-Transport-Security` value sent over HTTPS; None withholds it (and drops upstream's).
    hsts: str | None = None
    cookies: CookieFlags | None = CookieFlags()
    _owned: frozenset[str] = field(default=frozenset(), repr=False, compare=False)

    @classmethod
    def build(
        cls,
        *,
        profile: str,
        set: Mapping[str, str] | None = None,
        default: Mapping[str, str] | None = None,
        remove: Iterable[str] = (),
        hsts: str | None = None,
        cookies: CookieFlags | None = CookieFlags(),
    ) -> Policy:
        """Resolve precedence once: the site's `set`, then its `default`, then the profile."""
        base = PROFILES[profile]
        chosen_set: dict[str, tuple[str, str]] = {n.lower(): (canonical_name(n), v) for n, v in base.set}
        chosen_default: dict[str, tuple[str, str]] = {}
        for name, value in (default or {}).items():
            chosen_set.pop(name.lower(), None)
            chosen_default[name.lower()] = (canonical_name(name), value)
        for name, value in (set or {}).items():
            chosen_default.pop(name.lower(), None)
            chosen_set[name.lower()] = (canonical_name(name), value)
        owned = frozenset(chosen_set) | frozenset(chosen_default) | {HSTS.lower()}
        exact, prefixes = set_of(base.remove), []
        for name in remove:
            if name.endswith("*"):
                prefixes.append(name[:-1].lower())
            else:
                exact.add(name.lower())
        return cls(
            set=tuple(chosen_set.values()),
            default=tuple(chosen_default.values()),
            remove=frozenset(exact - owned),
            remove_prefixes=tuple(prefixes),
            hsts=hsts,
            cookies=cookies,
            _owned=owned,
        )

    def removes(self, lower_name: str) -> bool:
        if lower_name in self.remove:
            return True
        return any(lower_name.startswith(p) for p in self.remove_prefixes) and lower_name not in self._owned

    def apply(self, headers: CIMultiDict[str], ctx: ResponseContext) -> None:
        """Rewrite `headers` in place. Idempotent: applying it twice changes nothing more."""
        doomed = {name for name in headers if self.removes(name.lower())}
        for name in doomed:
            del headers[name]
        for name, value in self.set:
            headers.popall(name, None)
            headers[name] = value
        for name, value in self.default:
            sent = headers.popall(name, ())
            verdict = check(name, sent) if sent else None
            headers[name] = verdict.value if verdict is not None and verdict.value is not None else value
        headers.popall(HSTS, None)
        if ctx.https and self.hsts is not None:
            headers[HSTS] = self.hsts
        if self.cookies is not None and SET_COOKIE in headers:
            cookies = [flag_cookie(c, self.cookies, https=ctx.https) for c in headers.popall(SET_COOKIE)]
            for cookie in cookies:
                headers.add(SET_COOKIE, cookie)
        if ctx.public_origin is not None and ctx.upstream_hosts:
            rewrite_locations(headers, ctx)

    def describe(self) -> list[tuple[str, str, str]]:
        """(operation, header, value) rows for `crm-proxy check`."""
        rows = [("set", n, v) for n, v in self.set] + [("default", n, v) for n, v in self.default]
        if self.hsts is not None:
            rows.append(("set on https", HSTS, self.hsts))
        rows += [("remove", canonical_name(n), "") for n in sorted(self.remove)]
        rows += [("remove", p + "*", "") for p in self.remove_prefixes]
        if self.cookies is not None:
            flags = [f for f, on in (("Secure", self.cookies.secure), ("HttpOnly", self.cookies.http_only)) if on]
            if self.cookies.same_site:
                flags.append(f"SameSite={self.cookies.same_site}")
            rows.append(("cookies", SET_COOKIE, "; ".join(flags)))
        return rows


def set_of(names: Iterable[str]) -> set[str]:
    return {n.lower() for n in names}


def flag_cookie(cookie: str, flags: CookieFlags, *, https: bool) -> str:
    """Add the missing attributes, never a second copy of one already there."""
    present = {part.split("=", 1)[0].strip().lower() for part in cookie.split(";")[1:]}
    extra = []
    same_site_none = False
    if "samesite" in present:
        same_site_none = bool(re.search(r";\s*samesite\s*=\s*none\s*(;|$)", cookie, re.I))
    elif flags.same_site:
        extra.append(f"SameSite={flags.same_site}")
        same_site_none = flags.same_site.lower() == "none"
    if "secure" not in present and https and (flags.secure or same_site_none):
        extra.append("Secure")
    if "httponly" not in present and flags.http_only:
        extra.append("HttpOnly")
    if not extra:
        return cookie
    return cookie.rstrip().rstrip(";") + "; " + "; ".join(extra)


def rewrite_url(url: str, ctx: ResponseContext) -> str:
    """Move an absolute URL that points at the upstream to the origin the client used."""
    if not url.lower().startswith(("http://", "https://")):
        return url
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        return url
    if host is None or host.rstrip(".") not in ctx.upstream_hosts:
        return url
    rest = url[len(parts.scheme) + 3 + len(parts.netloc) :]
    return f"{ctx.public_origin}{rest}"


def rewrite_locations(headers: CIMultiDict[str], ctx: ResponseContext) -> None:
    for name in _REWRITTEN_URL_HEADERS:
        if name in headers:
            values = [rewrite_url(v, ctx) for v in headers.popall(name)]
            for value in values:
                headers.add(name, value)
    if "Refresh" in headers:
        for value in [rewrite_refresh(v, ctx) for v in headers.popall("Refresh")]:
            headers.add("Refresh", value)


def rewrite_refresh(value: str, ctx: ResponseContext) -> str:
    """`Refresh: 0; url=http://internal/...`: only the URL part moves to the public origin."""
    match = _REFRESH.match(value)
    if not match:
        return value
    lead, quote, url, tail = match.groups()
    return f"{lead}{quote}{rewrite_url(url, ctx)}{quote}{tail}"
