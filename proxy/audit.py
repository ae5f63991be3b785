"""`crm-proxy audit URL`: fetch one response and judge its security headers, cookies, redirect and TLS.

`analyse` does all the judging from the header lines as received, without I/O, so every rule is tested
with tables; `audit` only gathers the data. The score follows the MDN HTTP Observatory's modifiers, so an
administrator sees the grade a pen tester's tool will show; docs/audit.md lists every rule.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import ssl
import sys
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from urllib.parse import urljoin, urlsplit

import aiohttp
import certifi
import yarl
from aiohttp.client_reqrep import ClientRequest
from aiohttp.connector import Connection
from aiohttp.tracing import Trace

from . import __version__
from .header_values import KNOWN_HEADERS, bad_value_chars, canonical_name, check, is_token, parse_hsts
from .profiles import OWASP_REMOVE, PROFILES

SIX_MONTHS = 15_552_000  # seconds: the Observatory's threshold for HSTS
SEVERITIES = ("error", "warning", "info")
GRADES = ((100, "A+"), (90, "A"), (85, "A-"), (80, "B+"), (70, "B"), (65, "B-"), (60, "C+"), (50, "C"), (45, "C-"),
          (40, "D+"), (30, "D"), (25, "D-"), (0, "F"))  # fmt: skip
_REDIRECTS = frozenset({301, 302, 307, 308})
_OLD_TLS = frozenset({"SSLv2", "SSLv3", "TLSv1", "TLSv1.1"})
_EXPIRY_WARNING = timedelta(days=14)
_LEAKS = {name.lower(): name for name in OWASP_REMOVE}
_FRAME_ANCESTORS = re.compile(r"(?:^|[;,])\s*frame-ancestors\b")
_CSP, _XFO, _HSTS, _XXP = "Content-Security-Policy", "X-Frame-Options", "Strict-Transport-Security", "X-XSS-Protection"
_REFERRER = "Referrer-Policy"


def grade(score: int) -> str:
    """The Observatory's letter for a score."""
    return next(letter for floor, letter in GRADES if score >= floor)


@dataclass(frozen=True)
class Finding:
    """One thing to fix or to know; `fix` is the crm-proxy configuration line that fixes it."""

    header: str
    severity: str  # error | warning | info
    message: str
    fix: str


@dataclass(frozen=True)
class TlsInfo:
    """What the handshake showed; `insecure`: the user asked to audit despite an untrusted certificate."""

    version: str
    cert_not_after: datetime | None
    verified: bool
    error: str | None
    insecure: bool = False


@dataclass(frozen=True)
class RedirectInfo:
    """Where a plain-HTTP response sends the browser (first hop only); `location` is None if nowhere."""

    location: str | None
    to_https: bool
    same_host: bool

    @classmethod
    def of(cls, url: str, status: int, raw_headers: Sequence[tuple[str, str]], host: str | None = None) -> RedirectInfo:
        """`host`: a Host header sent instead of the URL's host (auditing a site by address)."""
        location = next((value for name, value in raw_headers if name.lower() == "location"), None)
        if status not in _REDIRECTS or location is None:
            return cls(None, False, False)
        target = urlsplit(urljoin(url, location.strip()))
        asked = urlsplit("//" + host).hostname if host else urlsplit(url).hostname
        return cls(target.geturl(), target.scheme == "https", target.hostname == asked)


@dataclass(frozen=True)
class Report:
    """The findings, worst first, and the Observatory-style score; `breakdown` lists its modifiers."""

    url: str
    status: int
    findings: tuple[Finding, ...]
    score: int
    grade: str
    breakdown: tuple[tuple[str, int], ...] = ()

    @property
    def exit_code(self) -> int:
        return 1 if any(finding.severity == "error" for finding in self.findings) else 0

    def to_json(self) -> dict[str, object]:
        findings = [{"header": f.header, "severity": f.severity, "message": f.message, "fix": f.fix}
                    for f in self.findings]  # fmt: skip
        return {"url": self.url, "status": self.status, "findings": findings, "score": self.score, "grade": self.grade}

    def render_text(self) -> str:
        """A table for people: severity, header, then the message with its fix beneath, wrapped to the terminal."""
        steps = "".join(f" {points:+d} {label}" for label, points in self.breakdown)
        out = [f"{self.url} -> HTTP {self.status}", f"score {self.score}, grade {self.grade} (100{steps})", ""]
        width = min(max((len(f.header) for f in self.findings), default=0), 24)
        indent = " " * (width + 11)
        wrap = max(40, shutil.get_terminal_size((100, 24)).columns - len(indent) - 1)
        for f in self.findings:
            lines = textwrap.wrap(f.message, wrap, break_on_hyphens=False)
            lines += textwrap.wrap(f"fix: {f.fix}", wrap, subsequent_indent="  ", break_on_hyphens=False)
            out.append(f"{f.severity:<8} {f.header:<{width}}  {lines[0]}")
            out.extend(indent + line for line in lines[1:])
        counts = [f"{sum(f.severity == s for f in self.findings)} {s}" for s in SEVERITIES]
        out.append(", ".join(counts) if self.findings else "no findings")
        return "\n".join(out)


@dataclass(frozen=True)
class _Spec:
    """How one security header is judged: severity and Observatory modifier when missing or wrong."""

    fix: str
    missing: str = ""  # severity when absent; "" = no finding
    why_missing: str = ""
    wrong: str = "warning"  # severity when invalid or conflicting
    points: int = 0
    missing_points: int | None = None  # None: as `points`
    single: bool = False  # one value only: graders join repeated lines with a comma and then fail it


def _set(name: str, value: str) -> str:
    return f"[headers.set] {name} = {json.dumps(value)}"


_SPECS = {
    _HSTS: _Spec("[hsts] max_age = 31536000", "error", "not sent: browsers keep trying plain HTTP first, where an "
                 "attacker can intercept the redirect to HTTPS", "error", -20, single=True),
    _XFO: _Spec(_set(_XFO, "SAMEORIGIN"), "error", "not sent, and no CSP frame-ancestors either: any site can frame "
                "CRM pages and trick users into clicking (clickjacking)", "error", -20, single=True),
    "X-Content-Type-Options": _Spec(_set("X-Content-Type-Options", "nosniff"), "error", "not sent: browsers may "
                                    "guess a response's type and run an uploaded document as script", "error", -5,
                                    single=True),
    _CSP: _Spec(_set(_CSP, "frame-ancestors 'self'"), "warning", "not sent. Sage CRM pages use inline script and "
                "javascript: links, which an enforcing script policy breaks: start with frame-ancestors 'self', "
                "and try a script policy as Content-Security-Policy-Report-Only", "warning", -25),
    _REFERRER: _Spec(_set(_REFERRER, "strict-origin-when-cross-origin"), "info", "not sent: current browsers "
                     "default to strict-origin-when-cross-origin, older ones send the full address, with CRM's SID "
                     "session id, to other sites", "warning", -5, missing_points=0),
    _XXP: _Spec(_set(_XXP, "0")),
}  # fmt: skip
_RECOMMENDED = dict(PROFILES["owasp"].set) | {
    "Cross-Origin-Resource-Policy": "same-origin", "Cross-Origin-Embedder-Policy": "require-corp",
    "X-DNS-Prefetch-Control": "off", "X-Download-Options": "noopen", "Origin-Agent-Cluster": "?1",
    "Cache-Control": "no-store, max-age=0", "Clear-Site-Data": '"cache","cookies","storage"',
}  # fmt: skip
_OTHERS = [canonical_name(name) for name in sorted(KNOWN_HEADERS) if canonical_name(name) not in _SPECS]
_REFERRER_STRICT = frozenset({"no-referrer", "same-origin", "strict-origin", "strict-origin-when-cross-origin"})
_FULL_URL = "the full address, with CRM's SID session id in the query string,"
_REFERRER_WEAK = {
    "unsafe-url": ("warning", -5, f"unsafe-url sends {_FULL_URL} to every site, even over plain HTTP"),
    "no-referrer-when-downgrade": ("warning", 0, f"no-referrer-when-downgrade sends {_FULL_URL} to other sites"),
    "origin": ("info", -5, "origin sends this site's address to every site, even over plain HTTP"),
    "origin-when-cross-origin": ("info", -5, "origin-when-cross-origin sends this site's address to other sites, "
                                 "even over plain HTTP"),
}  # fmt: skip
_XXP_LEGACY = ("is what Sage's 'Implementation of a Secure System' guide asks for, but OWASP and current browsers "
               "moved to 0: the XSS filter is gone (Chrome 78, Edge, Safari; Firefox never had it) and its blocking "
               "could be abused to leak or break pages")  # fmt: skip
_XXP_FIX = '[headers] profile = "owasp" (sends 0), or keep "sage-guide" (1; mode=block) if Sage\'s guide is the test'
_COOKIE_FLAGS = {  # flag: (spelling, fix, why it matters)
    "secure": ("Secure", "[cookies] secure = true", "browsers also send it over plain HTTP, readable on the network"),
    "httponly": ("HttpOnly", "[cookies] http_only = true", "page scripts can read it, so one XSS bug hands it out"),
    "samesite": ("SameSite", '[cookies] same_site = "Lax"', "browsers send it with requests that other sites start "
                 "(CSRF); Lax keeps links in e-mails working"),
}  # fmt: skip
_PLAIN_COOKIE = "this page is plain HTTP, so it crosses the network readable; crm-proxy adds Secure on HTTPS"
_REDIRECT_FIX = '[listen] http = ["0.0.0.0:80"] in proxy.toml: crm-proxy redirects to https:// on the same host'


class _Ledger:
    """Findings and Observatory modifiers, in the order the rules add them."""

    def __init__(self) -> None:
        self.findings: list[Finding] = []
        self.modifiers: list[tuple[str, int]] = []

    def add(self, header: str, severity: str, message: str, fix: str, points: int = 0) -> None:
        self.findings.append(Finding(header, severity, message, fix))
        self.score(header, points)

    def score(self, label: str, points: int) -> None:
        if points:
            self.modifiers.append((label, points))

    def report(self, url: str, status: int) -> Report:
        """Penalties first; bonuses count only while the score is at least 90; never below 0."""
        penalties = [modifier for modifier in self.modifiers if modifier[1] < 0]
        score = 100 + sum(points for _, points in penalties)
        bonuses = [modifier for modifier in self.modifiers if modifier[1] > 0] if score >= 90 else []
        score = max(0, score + sum(points for _, points in bonuses))
        findings = sorted(self.findings, key=lambda finding: SEVERITIES.index(finding.severity))
        return Report(url, status, tuple(findings), score, grade(score), tuple(penalties + bonuses))


def _days(count: int) -> str:
    return f"{count} day{'' if count == 1 else 's'}"


def _judge_header(ledger: _Ledger, name: str, spec: _Spec, lines: Sequence[str]) -> str | None:
    """Missing, invalid, conflicting or repeated; returns the one valid value for `_judge_value`."""
    if not lines:
        if spec.missing:
            points = spec.points if spec.missing_points is None else spec.missing_points
            ledger.add(name, spec.missing, spec.why_missing, spec.fix, points)
        return None
    verdict = check(name, lines)
    items = [item.strip() for line in lines for item in line.split(",")]
    distinct = list(dict.fromkeys(item.lower() for item in items))
    if verdict.value is None:
        problem = verdict.problem or "invalid"
        if spec.single and len(distinct) > 1 and not problem.startswith("conflicting"):
            problem = f"conflicting values {' and '.join(dict.fromkeys(items))}: {problem}"
        elif not problem.startswith("conflicting"):
            problem = f"invalid: {problem}"
        ledger.add(name, spec.wrong, problem, spec.fix, spec.points)
        return None
    if len(distinct) == len(items):
        return verdict.value
    why = "harmless to browsers"
    if spec.single:
        why = f"browsers accept it, but graders that join the lines see {', '.join(items)!r} and fail it"
    ledger.add(name, "warning", f"sent {len(items)} times, as when IIS and web.config both set it: {why}", spec.fix,
               spec.points if spec.single else 0)  # fmt: skip
    return None if spec.single else verdict.value


def _judge_value(ledger: _Ledger, name: str, value: str) -> None:
    """Valid, but weak or legacy."""
    hsts = parse_hsts(value) if name == _HSTS else None
    if hsts is not None and not isinstance(hsts, str) and hsts.max_age < SIX_MONTHS:
        why = f"max-age={hsts.max_age} ({_days(hsts.max_age // 86400)}) is under six months (15552000 s)"
        ledger.add(name, "warning", why + (": it tells browsers to forget HSTS" if not hsts.max_age else ""),
                   _SPECS[_HSTS].fix, -10)  # fmt: skip
    elif name == _REFERRER and value in _REFERRER_STRICT:
        ledger.score(name, +5)
    elif name == _REFERRER and value in _REFERRER_WEAK:
        severity, points, why = _REFERRER_WEAK[value]
        ledger.add(name, severity, why, _SPECS[name].fix, points)
    elif name == _XXP and value.startswith("1"):
        ledger.add(name, "info", f"{value} {_XXP_LEGACY}", _XXP_FIX)


def _judge_page(ledger: _Ledger, lines: dict[str, list[str]], *, https: bool) -> bool:
    """The page's security headers; returns whether HSTS of six months or more protects its cookies."""
    csp = check(_CSP, lines[_CSP.lower()]).value if lines.get(_CSP.lower()) else None
    for name, spec in _SPECS.items():
        if name == _HSTS and not https:
            if lines.get(name.lower()):
                why = "sent over plain HTTP, where browsers ignore it (RFC 6797 8.1); crm-proxy sends it on HTTPS only"
                ledger.add(name, "info", why, spec.fix)
            continue
        if name == _XFO and csp is not None and _FRAME_ANCESTORS.search(csp):
            spec = replace(spec, missing="", wrong="warning", points=0)  # frame-ancestors overrides it
        if name == _CSP and lines.get("content-security-policy-report-only"):
            why = "only Content-Security-Policy-Report-Only, which enforces nothing: add frame-ancestors 'self'"
            spec = replace(spec, why_missing=why)
        value = _judge_header(ledger, name, spec, lines.get(name.lower(), []))
        if value is not None:
            _judge_value(ledger, name, value)
    for name in _OTHERS:
        if lines.get(name.lower()):
            fix = _set(name, _RECOMMENDED[name]) if name in _RECOMMENDED else f'[headers] remove = ["{name}"]'
            _judge_header(ledger, name, _Spec(fix), lines[name.lower()])
    hsts = lines.get(_HSTS.lower(), [])
    parsed = parse_hsts(hsts[0]) if https and len(hsts) == 1 else None
    return parsed is not None and not isinstance(parsed, str) and parsed.max_age >= SIX_MONTHS


def _judge_leaks(ledger: _Ledger, raw_headers: Sequence[tuple[str, str]]) -> None:
    for name, value in raw_headers:
        if (known := _LEAKS.get(name.lower())) is not None:
            why = f"{known}: {value} tells attackers which software to look up exploits for"
            ledger.add(known, "warning", why, f'[headers] remove = ["{known}"]')


def _judge_cookies(ledger: _Ledger, lines: Sequence[str], *, https: bool, hsts: bool) -> None:
    """Flags per Set-Cookie line; one Observatory modifier for all of them, the worst that applies."""
    worst, all_good = 0, bool(lines)
    for line in lines:
        first, *attributes = line.split(";")
        name = first.partition("=")[0].strip()
        flags = {key.strip().lower(): value.strip() for key, _, value in (a.partition("=") for a in attributes)}
        session = any(word in name.lower() for word in ("sess", "login"))  # ASP.NET_SessionId, JSESSIONID, ...
        what, minor = ("session cookie", "warning") if session else ("cookie", "info")
        for flag, (spelling, fix, why) in _COOKIE_FLAGS.items():
            if flag not in flags:
                severity = ("error" if session else "warning") if flag == "secure" and https else minor
                why = _PLAIN_COOKIE if flag == "secure" and not https else why
                ledger.add("Set-Cookie", severity, f"{what} {name} has no {spelling} flag: {why}", fix)
        same_site = flags.get("samesite")
        bad_same_site = same_site is not None and same_site.lower() not in ("strict", "lax", "none")
        if bad_same_site:
            why = f"{what} {name} has SameSite={same_site}: expected Strict, Lax or None"
            ledger.add("Set-Cookie", "warning", why, _COOKIE_FLAGS["samesite"][1])
        penalties = (
            (-10 if hsts else -40) if session and "secure" not in flags else 0,
            -30 if session and "httponly" not in flags else 0,
            (-5 if hsts else -20) if "secure" not in flags else 0,
            -20 if bad_same_site else 0,
        )
        worst = min(worst, *penalties)
        all_good = all_good and not any(penalties) and same_site is not None
    ledger.score("Set-Cookie", worst or (5 if all_good else 0))


def _judge_redirect(ledger: _Ledger, redirect: RedirectInfo) -> None:
    if redirect.location is None:
        why = "served over plain HTTP, no redirect to HTTPS: logons and the SID session id cross the network readable"
        ledger.add("Location", "error", why, _REDIRECT_FIX, -20)
    elif not redirect.to_https:
        ledger.add("Location", "error", f"redirects to {redirect.location}, not to https://", _REDIRECT_FIX, -20)
    elif not redirect.same_host:
        why = f"redirects to another host ({redirect.location}): this host never gets HSTS, and preloading fails"
        ledger.add("Location", "warning", why, _REDIRECT_FIX, -5)
    else:
        why = f"redirects to {redirect.location}: its security headers are judged there, so audit that URL"
        ledger.add("Location", "info", why, f"crm-proxy audit {redirect.location}")


def _judge_tls(ledger: _Ledger, tls: TlsInfo, host: str, now: datetime) -> None:
    fix = f'[tls] cert = "../certs/{host}.pem" (the full chain, from a CA your users trust)'
    if not tls.verified:
        why = f"certificate not trusted: {tls.error or 'not verified'}"
        ledger.add("TLS", "warning" if tls.insecure else "error", why + (" (--insecure)" if tls.insecure else ""), fix)
    if tls.cert_not_after is not None:
        left, when = tls.cert_not_after - now, tls.cert_not_after.strftime("%Y-%m-%d")
        if left <= timedelta(0):
            ledger.add("TLS", "error", f"certificate expired on {when}", fix)
        elif left < _EXPIRY_WARNING:
            ledger.add("TLS", "warning", f"certificate expires in {_days(left.days)}, on {when}", fix)
    if tls.version in _OLD_TLS:
        why = f"negotiated {tls.version}: versions before TLS 1.2 are weak and current browsers refuse them"
        ledger.add("TLS", "error", why, '[tls] min_version = "TLSv1.2" (proxy.toml)')


def analyse(url: str, status: int, raw_headers: Sequence[tuple[str, str]], *, tls: TlsInfo | None,
            redirect: RedirectInfo | None, now: datetime | None = None) -> Report:  # fmt: skip
    """Judge one response from its header lines as received (duplicates kept); pure, so tests use tables.

    A plain-HTTP redirect to HTTPS is not a page: browsers render nothing and ignore its HSTS, so only its
    target, banners and cookies are judged there.
    """
    parts = urlsplit(url)
    https = parts.scheme.lower() == "https"
    lines: dict[str, list[str]] = {}
    for name, value in raw_headers:
        lines.setdefault(name.lower(), []).append(value)
    ledger = _Ledger()
    if redirect is not None and not https:
        _judge_redirect(ledger, redirect)
    if tls is not None and https:
        _judge_tls(ledger, tls, parts.hostname or "site", now or datetime.now(UTC))
    leaving = not https and redirect is not None and redirect.to_https
    hsts = False if leaving else _judge_page(ledger, lines, https=https)
    _judge_leaks(ledger, raw_headers)
    _judge_cookies(ledger, lines.get("set-cookie", []), https=https, hsts=hsts)
    return ledger.report(url, status)


# --- gathering the data ------------------------------------------------------------------------------------


class AuditError(Exception):
    """A usage, network or TLS problem that leaves nothing to judge; its message is one line for stderr."""


class _Connector(aiohttp.TCPConnector):
    """Notes the TLS version and certificate: a response without a body releases its connection at once."""

    tls: tuple[str, bytes | None] | None = None

    async def connect(self, req: ClientRequest, traces: list[Trace], timeout: aiohttp.ClientTimeout) -> Connection:
        connection = await super().connect(req, traces, timeout)
        ssl_object = connection.transport.get_extra_info("ssl_object") if connection.transport else None
        if ssl_object is not None:
            self.tls = (ssl_object.version() or "", ssl_object.getpeercert(binary_form=True))
        return connection


def _der(data: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, start, end) of the DER element at `pos`."""
    tag, length, pos = data[pos], data[pos + 1], pos + 2
    if length & 0x80:
        size = length & 0x7F
        length, pos = int.from_bytes(data[pos : pos + size], "big"), pos + size
    return tag, pos, pos + length


def cert_not_after(der: bytes) -> datetime | None:
    """notAfter of a DER certificate: `ssl` decodes certificates only when it has verified them."""
    try:
        tbs = _der(der, _der(der, 0)[1])[1]
        pos = _der(der, tbs)[2] if der[tbs] == 0xA0 else tbs  # skip the explicit [0] version
        for _ in range(3):  # serialNumber, signature, issuer
            pos = _der(der, pos)[2]
        not_before_end = _der(der, _der(der, pos)[1])[2]
        tag, start, end = _der(der, not_before_end)
        stamp = der[start:end].decode("ascii")
        return datetime.strptime(stamp, "%y%m%d%H%M%SZ" if tag == 0x17 else "%Y%m%d%H%M%SZ").replace(tzinfo=UTC)
    except (IndexError, ValueError):
        return None


def _context(ca: str | None, *, verify: bool) -> ssl.SSLContext:
    if not verify:
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        return context
    try:
        return ssl.create_default_context(cafile=ca or certifi.where())
    except (OSError, ssl.SSLError) as exc:
        raise AuditError(f"cannot use CA file {ca}: {exc}") from None


_Headers = list[tuple[str, str]]
_Fetched = tuple[int, _Headers, tuple[str, bytes | None] | None]


async def _fetch(url: yarl.URL, headers: _Headers, context: ssl.SSLContext | bool, wait: float) -> _Fetched:
    """One GET, nothing followed, decompressed or stored; the header lines as received."""
    connector = _Connector(ssl=context)
    session = aiohttp.ClientSession(connector=connector, auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar(),
                                    timeout=aiohttp.ClientTimeout(total=wait),
                                    headers={"User-Agent": f"crm-proxy-audit/{__version__}"})  # fmt: skip
    async with session, session.get(url, headers=headers, allow_redirects=False) as response:
        raw = [(name.decode("utf-8", "surrogateescape"), value.decode("utf-8", "surrogateescape"))
               for name, value in response.raw_headers]  # fmt: skip
        return response.status, raw, connector.tls


def parse_header(text: str) -> tuple[str, str]:
    """'Name: Value', as curl's -H takes it."""
    name, colon, value = text.partition(":")
    if not colon or not is_token(name.strip()) or bad_value_chars(value):
        raise AuditError(f"--header must look like 'Name: Value', got {text!r}")
    return name.strip(), value.strip()


async def audit(url: str, *, insecure: bool = False, ca: str | None = None, headers: Sequence[str] = (),
                timeout: float = 15) -> Report:  # fmt: skip
    """Fetch `url` once, exactly as given, and judge the response; AuditError when there is none.

    An untrusted certificate stops the audit unless `insecure`: the request may carry the user's headers.
    """
    try:
        target = yarl.URL(url, encoded=True)
    except ValueError:
        target = yarl.URL()
    if target.scheme not in ("http", "https") or not target.host:
        raise AuditError(f"{url}: expected an http:// or https:// URL")
    sent = [parse_header(header) for header in headers]
    tls: TlsInfo | None = None
    try:
        if target.scheme == "http":
            status, raw, _ = await _fetch(target, sent, True, timeout)
        else:
            error = None
            try:
                status, raw, seen = await _fetch(target, sent, _context(ca, verify=True), timeout)
            except aiohttp.ClientConnectorCertificateError as exc:
                error = getattr(exc.certificate_error, "verify_message", None) or str(exc.certificate_error)
                if not insecure:
                    hint = "pass --ca FILE for a private CA, or --insecure to audit anyway"
                    raise AuditError(f"{target.host}: certificate not trusted ({error}); {hint}") from None
                status, raw, seen = await _fetch(target, sent, _context(None, verify=False), timeout)
            version, der = seen or ("", None)
            tls = TlsInfo(version, cert_not_after(der) if der else None, error is None, error, insecure)
    except aiohttp.ClientSSLError as exc:
        raise AuditError(f"TLS handshake with {target.host} failed: {exc}") from None
    except aiohttp.ClientConnectorError as exc:
        cause = exc.os_error  # errno gives "Connection refused"; name lookups have only a (negative) EAI code
        reason = os.strerror(cause.errno) if (cause.errno or 0) > 0 else cause.strerror or str(cause)
        raise AuditError(f"cannot connect to {target.host}:{target.port}: {reason}") from None
    except TimeoutError:
        raise AuditError(f"{url}: no response within {timeout:g} s") from None
    except (aiohttp.ClientError, ValueError) as exc:
        raise AuditError(f"{url}: {exc or type(exc).__name__}") from None
    host = next((value for name, value in sent if name.lower() == "host"), None)
    redirect = RedirectInfo.of(url, status, raw, host) if target.scheme == "http" else None
    return analyse(url, status, raw, tls=tls, redirect=redirect)


def main(argv: list[str]) -> int:
    """`crm-proxy audit`: exit 0 without error findings, 1 with, 2 when nothing could be fetched."""
    about = "Judge the security headers, cookies, redirect and TLS of a URL, with the crm-proxy line fixing each."
    parser = argparse.ArgumentParser(prog="crm-proxy audit", description=about)
    parser.add_argument("url", help="http:// or https:// URL, e.g. https://crm.example.com/crm/eware.dll/go")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--insecure", action="store_true", help="audit even if the certificate is not trusted")
    parser.add_argument("--ca", metavar="FILE", help="PEM bundle to verify the certificate with (default: certifi)")
    example = "send this request header, e.g. 'Host: crm.example.com' (repeatable)"
    parser.add_argument("--header", action="append", default=[], metavar="'NAME: VALUE'", help=example)
    parser.add_argument("--timeout", type=float, default=15, help="seconds (default 15)")
    args = parser.parse_args(argv)
    try:
        report = asyncio.run(audit(args.url, insecure=args.insecure, ca=args.ca, headers=args.header,
                                   timeout=args.timeout))  # fmt: skip
    except AuditError as exc:
        print(f"crm-proxy audit: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report.to_json(), indent=2) if args.json else report.render_text())
    return report.exit_code
