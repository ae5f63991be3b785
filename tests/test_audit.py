"""`crm-proxy audit`: the rules of `analyse` as tables, then live audits of the stand-in, the proxy and TLS."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import trustme
from aiohttp import web

from proxy.audit import AuditError, Finding, RedirectInfo, Report, TlsInfo, analyse, audit, cert_not_after, grade, main
from tests.conftest import PUBLIC_HOST, StartProxy, Upstream, site_toml

NOW = datetime(2026, 3, 1, tzinfo=UTC)
HTTPS = "https://crm.example.com/crm/eware.dll/go"
HTTP = "http://crm.example.com/crm/eware.dll/go"
TLS_OK = TlsInfo("TLSv1.3", NOW + timedelta(days=365), True, None)
GOOD = [
    ("Strict-Transport-Security", "max-age=31536000"),
    ("X-Frame-Options", "SAMEORIGIN"),
    ("X-Content-Type-Options", "nosniff"),
    ("Content-Security-Policy", "frame-ancestors 'self'"),
    ("Referrer-Policy", "same-origin"),
]
Headers = list[tuple[str, str]]
Capture = pytest.CaptureFixture[str]


def run(headers: Headers, url: str = HTTPS, *, tls: TlsInfo | None = TLS_OK, redirect: RedirectInfo | None = None,
        status: int = 200) -> Report:  # fmt: skip
    return analyse(url, status, headers, tls=tls if url.startswith("https") else None, redirect=redirect, now=NOW)


def good(*replace: tuple[str, str | None]) -> Headers:
    """GOOD with some headers replaced (value) or dropped (None)."""
    changes = dict(replace)
    kept = [(name, changes.pop(name, value)) for name, value in GOOD]
    return [(name, value) for name, value in kept if value is not None] + [
        (name, value) for name, value in changes.items() if value is not None
    ]


def about(report: Report, header: str) -> list[Finding]:
    return [finding for finding in report.findings if finding.header == header]


# --- per-header rules -------------------------------------------------------------------------------------

NO_FRAME_ANCESTORS = ("Content-Security-Policy", "default-src 'self'")


@pytest.mark.parametrize(
    ("headers", "header", "severity", "says", "fix"),
    [
        # X-Frame-Options
        (good(("X-Frame-Options", None), NO_FRAME_ANCESTORS), "X-Frame-Options", "error", "clickjacking",
         '[headers.set] X-Frame-Options = "SAMEORIGIN"'),
        (good(("X-Frame-Options", None), NO_FRAME_ANCESTORS) + [("X-Frame-Options", "SAMEORIGIN")] * 2,
         "X-Frame-Options", "warning", "'SAMEORIGIN, SAMEORIGIN'", "SAMEORIGIN"),
        (good(("X-Frame-Options", "SAMEORIGIN, SAMEORIGIN")), "X-Frame-Options", "warning", "sent 2 times", ""),
        (good(("X-Frame-Options", None), NO_FRAME_ANCESTORS) + [("X-Frame-Options", "SAMEORIGIN"),
         ("X-Frame-Options", "DENY")], "X-Frame-Options", "error", "conflicting values SAMEORIGIN and DENY", ""),
        (good(("X-Frame-Options", None), NO_FRAME_ANCESTORS) + [("X-Frame-Options", "SAMEORIGIN"),
         ("X-Frame-Options", "ALLOWALL")], "X-Frame-Options", "error", "conflicting values SAMEORIGIN and ALLOWALL",
         ""),
        (good(("X-Frame-Options", "ALLOW-FROM https://a.example")), "X-Frame-Options", "warning", "obsolete", ""),
        (good(("X-Frame-Options", "DENY, SAMEORIGIN")), "X-Frame-Options", "warning", "conflicting", ""),
        # X-Content-Type-Options
        (good(("X-Content-Type-Options", None)), "X-Content-Type-Options", "error", "not sent",
         '[headers.set] X-Content-Type-Options = "nosniff"'),
        (good(("X-Content-Type-Options", "sniff")), "X-Content-Type-Options", "error", "invalid: expected nosniff", ""),
        (good(("X-Content-Type-Options", "nosniff, nosniff")), "X-Content-Type-Options", "warning", "sent 2 times", ""),
        # Strict-Transport-Security
        (good(("Strict-Transport-Security", None)), "Strict-Transport-Security", "error", "not sent",
         "[hsts] max_age = 31536000"),
        (good(("Strict-Transport-Security", "max-age=86400")), "Strict-Transport-Security", "warning",
         "max-age=86400 (1 day) is under six months", "[hsts] max_age = 31536000"),
        (good(("Strict-Transport-Security", "max-age=0")), "Strict-Transport-Security", "warning", "forget HSTS", ""),
        (good(("Strict-Transport-Security", "max-age=31536000, max-age=31536000")), "Strict-Transport-Security",
         "error", "sent twice", ""),
        (GOOD + [("Strict-Transport-Security", "max-age=31536000")], "Strict-Transport-Security", "warning",
         "sent 2 times", ""),
        (GOOD + [("Strict-Transport-Security", "max-age=60")], "Strict-Transport-Security", "error", "conflicting", ""),
        # Content-Security-Policy
        (good(("Content-Security-Policy", None)), "Content-Security-Policy", "warning", "inline script",
         "[headers.set] Content-Security-Policy = \"frame-ancestors 'self'\""),
        (good(("Content-Security-Policy", None), ("Content-Security-Policy-Report-Only", "script-src 'self'")),
         "Content-Security-Policy", "warning", "enforces nothing", "frame-ancestors 'self'"),
        (good(("Content-Security-Policy", "frame-ancestors 'self'; frame-ancestors 'none'")),
         "Content-Security-Policy", "warning", "appears twice", ""),
        # Referrer-Policy
        (good(("Referrer-Policy", None)), "Referrer-Policy", "info", "older ones send the full address", ""),
        (good(("Referrer-Policy", "unsafe-url")), "Referrer-Policy", "warning", "SID session id", ""),
        (good(("Referrer-Policy", "no-referrer-when-downgrade")), "Referrer-Policy", "warning", "SID", ""),
        (good(("Referrer-Policy", "origin")), "Referrer-Policy", "info", "this site's address", ""),
        (good(("Referrer-Policy", "bogus")), "Referrer-Policy", "warning", "invalid", "strict-origin-when"),
        # X-XSS-Protection
        (GOOD + [("X-XSS-Protection", "1; mode=block")], "X-XSS-Protection", "info", "Chrome 78", "sage-guide"),
        (GOOD + [("X-XSS-Protection", "1; mode=block")], "X-XSS-Protection", "info", "Implementation of a Secure",
         'profile = "owasp"'),
        (GOOD + [("X-XSS-Protection", "2")], "X-XSS-Protection", "warning", "invalid", 'X-XSS-Protection = "0"'),
        (GOOD + [("X-XSS-Protection", "0"), ("X-XSS-Protection", "1")], "X-XSS-Protection", "warning",
         "conflicting", ""),
        # the other headers header_values knows
        (GOOD + [("Cross-Origin-Opener-Policy", "same-origin, unsafe-none")], "Cross-Origin-Opener-Policy",
         "warning", "conflicting", '[headers.set] Cross-Origin-Opener-Policy = "same-origin"'),
        (GOOD + [("Permissions-Policy", "camera=()"), ("Permissions-Policy", "camera=()")], "Permissions-Policy",
         "warning", "harmless to browsers", "Permissions-Policy"),
        (GOOD + [("Content-Security-Policy-Report-Only", ";")], "Content-Security-Policy-Report-Only", "warning",
         "no directives", '[headers] remove = ["Content-Security-Policy-Report-Only"]'),
    ],
)  # fmt: skip
def test_header_rule(headers: Headers, header: str, severity: str, says: str, fix: str) -> None:
    found = about(run(headers), header)
    assert len(found) == 1, found
    assert found[0].severity == severity
    assert says in found[0].message
    assert fix in found[0].fix


def test_all_good_has_no_findings_and_scores_a_plus() -> None:
    report = run(GOOD)
    assert report.findings == ()
    assert (report.score, report.grade, report.exit_code) == (105, "A+", 0)
    assert report.breakdown == (("Referrer-Policy", 5),)


@pytest.mark.parametrize("csp", ["frame-ancestors 'self'", "default-src 'self'; frame-ancestors 'none'"])
def test_csp_frame_ancestors_stands_in_for_x_frame_options(csp: str) -> None:
    report = run(good(("X-Frame-Options", None), ("Content-Security-Policy", csp)))
    assert about(report, "X-Frame-Options") == []
    assert report.score == 105


def test_report_only_frame_ancestors_does_not_count() -> None:
    headers = good(("X-Frame-Options", None), ("Content-Security-Policy", None),
                   ("Content-Security-Policy-Report-Only", "frame-ancestors 'self'"))  # fmt: skip
    assert [f.severity for f in about(run(headers), "X-Frame-Options")] == ["error"]


def test_header_names_are_case_insensitive_and_lines_kept_apart() -> None:
    headers = [(name.lower(), value) for name, value in GOOD] + [("x-frame-options", "DENY")]
    found = about(run(headers), "X-Frame-Options")
    assert [f.severity for f in found] == ["warning"]  # conflict, but CSP frame-ancestors overrides it
    assert "conflicting values SAMEORIGIN and DENY" in found[0].message


def test_hsts_over_plain_http_is_info_and_missing_hsts_is_not_judged() -> None:
    report = run(GOOD, HTTP)
    assert [(f.severity, f.header) for f in report.findings] == [("info", "Strict-Transport-Security")]
    assert "browsers ignore it" in report.findings[0].message
    assert about(run(good(("Strict-Transport-Security", None)), HTTP), "Strict-Transport-Security") == []


# --- information leaks ------------------------------------------------------------------------------------


def test_each_banner_line_is_a_warning_with_its_remove_line() -> None:
    leaks = [("Server", "Microsoft-IIS/10.0"), ("X-Powered-By", "ASP.NET"), ("x-powered-by", "ARR/3.0"),
             ("X-AspNet-Version", "4.0.30319"), ("X-ASPNETMVC-VERSION", "5.2"), ("X-Generator", "Umbraco"),
             ("X-Varnish-Server", "v1")]  # fmt: skip
    report = run(GOOD + leaks + [("X-Custom", "fine")])
    found = [(f.header, f.severity, f.fix) for f in report.findings]
    assert found == [
        (name, "warning", f'[headers] remove = ["{name}"]')
        for name in ("Server", "X-Powered-By", "X-Powered-By", "X-AspNet-Version", "X-AspNetMvc-Version",
                     "X-Generator", "X-Varnish-Server")
    ]  # fmt: skip
    assert "Microsoft-IIS/10.0" in report.findings[0].message
    assert report.score == 105  # the Observatory does not score banners


# --- cookies ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "cookie", "expected"),
    [
        (HTTPS, "ASP.NET_SessionId=abc; path=/", [("error", "Secure"), ("warning", "HttpOnly"),
                                                  ("warning", "SameSite")]),
        (HTTPS, "JSESSIONID=def; Path=/sdata; HttpOnly", [("error", "Secure"), ("warning", "SameSite")]),
        (HTTPS, "crmlogin=1; path=/crm; secure; samesite=lax", [("warning", "HttpOnly")]),
        (HTTPS, "pref=1; Path=/", [("warning", "Secure"), ("info", "HttpOnly"), ("info", "SameSite")]),
        (HTTPS, "ok=1; Secure; HttpOnly; SameSite=Strict", []),
        (HTTPS, "PHPSESSID=1; Secure; HttpOnly; SameSite=Sometimes", [("warning", "SameSite=Sometimes")]),
        (HTTP, "ASP.NET_SessionId=abc; path=/", [("warning", "Secure"), ("warning", "HttpOnly"),
                                                 ("warning", "SameSite")]),
        (HTTP, "pref=1; HttpOnly; SameSite=Lax", [("info", "Secure")]),
    ],
)  # fmt: skip
def test_cookie_flags(url: str, cookie: str, expected: list[tuple[str, str]]) -> None:
    found = about(run(GOOD + [("Set-Cookie", cookie)], url), "Set-Cookie")
    name = cookie.partition("=")[0].lower()
    what = "session cookie " if "sess" in name or "login" in name else "cookie "
    assert [f.severity for f in found] == [severity for severity, _ in expected]
    for finding, (_, flag) in zip(found, expected, strict=True):
        assert flag in finding.message
        assert finding.message.startswith(what)
        assert finding.fix.startswith("[cookies] ")


def test_cookie_fixes_are_config_lines() -> None:
    fixes = {f.fix for f in run(GOOD + [("Set-Cookie", "ASP.NET_SessionId=1")]).findings}
    assert fixes == {"[cookies] secure = true", "[cookies] http_only = true", '[cookies] same_site = "Lax"'}


# --- redirects and TLS ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "location", "host", "expected"),
    [
        (301, "https://crm.example.com/crm/", None, RedirectInfo("https://crm.example.com/crm/", True, True)),
        (308, "https://CRM.example.com:8443/", None, RedirectInfo("https://CRM.example.com:8443/", True, True)),
        (302, "https://login.example.com/", None, RedirectInfo("https://login.example.com/", True, False)),
        (307, "/crm/eware.dll/go", None, RedirectInfo("http://crm.example.com/crm/eware.dll/go", False, True)),
        (308, "https://crm.example.com/", "crm.example.com:80", RedirectInfo("https://crm.example.com/", True, True)),
        (303, "https://crm.example.com/", None, RedirectInfo(None, False, False)),
        (200, None, None, RedirectInfo(None, False, False)),
    ],
)  # fmt: skip
def test_redirect_info(status: int, location: str | None, host: str | None, expected: RedirectInfo) -> None:
    url = HTTP if host is None else "http://10.0.0.5/crm/eware.dll/go"
    headers = [("Location", location)] if location else []
    assert RedirectInfo.of(url, status, headers, host) == expected


@pytest.mark.parametrize(
    ("redirect", "severity", "says", "score"),
    [
        (RedirectInfo(None, False, False), "error", "no redirect to HTTPS", 80),  # Referrer bonus lost: under 90
        (RedirectInfo("http://crm.example.com/", False, True), "error", "not to https://", 80),
        (RedirectInfo("https://other.example.com/", True, False), "warning", "another host", 95),
        (RedirectInfo("https://crm.example.com/", True, True), "info", "audit that URL", 100),
    ],
)
def test_plain_http_redirect(redirect: RedirectInfo, severity: str, says: str, score: int) -> None:
    report = run(good(("Strict-Transport-Security", None)), HTTP, redirect=redirect, status=301)
    found = about(report, "Location")
    assert [(f.severity, says in f.message) for f in found] == [(severity, True)]
    assert '[listen] http = ["0.0.0.0:80"]' in found[0].fix or found[0].fix.startswith("crm-proxy audit https://")
    assert report.score == score


def test_redirect_to_https_judges_banners_and_cookies_but_not_page_headers() -> None:
    headers = [("Location", "https://crm.example.com/"), ("Server", "Microsoft-IIS/10.0"), ("Set-Cookie", "a=1")]
    report = run(headers, HTTP, redirect=RedirectInfo("https://crm.example.com/", True, True), status=308)
    assert {f.header for f in report.findings} == {"Location", "Server", "Set-Cookie"}
    assert report.exit_code == 0


@pytest.mark.parametrize(
    ("tls", "expected"),
    [
        (TLS_OK, []),
        (TlsInfo("TLSv1.2", NOW + timedelta(days=90), True, None), []),
        (TlsInfo("TLSv1.3", None, False, "self-signed certificate"), [("error", "self-signed certificate")]),
        (TlsInfo("TLSv1.3", None, False, "self-signed certificate", insecure=True), [("warning", "--insecure")]),
        (TlsInfo("TLSv1.3", NOW - timedelta(days=1), True, None), [("error", "expired on 2026-02-28")]),
        (TlsInfo("TLSv1.3", NOW + timedelta(days=5), True, None), [("warning", "expires in 5 days, on 2026-03-06")]),
        (TlsInfo("TLSv1.3", NOW + timedelta(days=14), True, None), []),
        (TlsInfo("TLSv1.1", NOW + timedelta(days=90), True, None), [("error", "TLSv1.1")]),
        (TlsInfo("TLSv1", NOW - timedelta(days=9), False, "certificate has expired", insecure=True),
         [("error", "expired on"), ("error", "TLSv1"), ("warning", "has expired")]),  # worst first
    ],
)  # fmt: skip
def test_tls(tls: TlsInfo, expected: list[tuple[str, str]]) -> None:
    report = run(GOOD, tls=tls)
    found = about(report, "TLS")
    assert [f.severity for f in found] == [severity for severity, _ in expected]
    assert all(says in f.message for f, (_, says) in zip(found, expected, strict=True))
    assert all("[tls]" in f.fix for f in found)
    assert report.score == 105  # TLS findings do not change the score


# --- score, grade, exit code, JSON ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "score", "grade_", "breakdown"),
    [
        (GOOD, 105, "A+", [("Referrer-Policy", 5)]),
        (GOOD + [("Set-Cookie", "sid=1; Secure; HttpOnly; SameSite=Lax")], 110, "A+",
         [("Referrer-Policy", 5), ("Set-Cookie", 5)]),
        (good(("Content-Security-Policy", None)), 75, "B", [("Content-Security-Policy", -25)]),  # bonus lost
        (good(("Strict-Transport-Security", "max-age=86400")), 95, "A",
         [("Strict-Transport-Security", -10), ("Referrer-Policy", 5)]),
        (good(("X-Content-Type-Options", None)), 100, "A+", [("X-Content-Type-Options", -5), ("Referrer-Policy", 5)]),
        (good(("Referrer-Policy", "unsafe-url")), 95, "A", [("Referrer-Policy", -5)]),
        (good(("Referrer-Policy", None)), 100, "A+", []),
        ([], 30, "D", [("Strict-Transport-Security", -20), ("X-Frame-Options", -20), ("X-Content-Type-Options", -5),
                       ("Content-Security-Policy", -25)]),
        ([("Set-Cookie", "ASP.NET_SessionId=1")], 0, "F",
         [("Strict-Transport-Security", -20), ("X-Frame-Options", -20), ("X-Content-Type-Options", -5),
          ("Content-Security-Policy", -25), ("Set-Cookie", -40)]),  # 100 - 110, floored
        # HSTS of six months or more softens cookies without Secure
        (GOOD + [("Set-Cookie", "ASP.NET_SessionId=1; HttpOnly; SameSite=Lax")], 95, "A",
         [("Set-Cookie", -10), ("Referrer-Policy", 5)]),
        (good(("Strict-Transport-Security", None), ("Set-Cookie", "ASP.NET_SessionId=1; HttpOnly; SameSite=Lax")), 40,
         "D+", [("Strict-Transport-Security", -20), ("Set-Cookie", -40)]),
        (GOOD + [("Set-Cookie", "pref=1; HttpOnly; SameSite=Lax")], 100, "A+",
         [("Set-Cookie", -5), ("Referrer-Policy", 5)]),
        (good(("Strict-Transport-Security", None), ("Set-Cookie", "pref=1")), 60, "C+",
         [("Strict-Transport-Security", -20), ("Set-Cookie", -20)]),
        (GOOD + [("Set-Cookie", "ASPSESSIONIDQA=1; Secure; SameSite=Lax")], 70, "B", [("Set-Cookie", -30)]),
        (GOOD + [("Set-Cookie", "a=1; Secure; HttpOnly; SameSite=Lax"), ("Set-Cookie", "b=1; Secure")], 105, "A+",
         [("Referrer-Policy", 5)]),  # b has no SameSite: no cookie bonus, no penalty
        # duplicates score as the Observatory sees the comma-joined value
        (good(("X-Frame-Options", "SAMEORIGIN, SAMEORIGIN")), 105, "A+", [("Referrer-Policy", 5)]),  # CSP covers it
        (good(("X-Content-Type-Options", "nosniff, nosniff")), 100, "A+",
         [("X-Content-Type-Options", -5), ("Referrer-Policy", 5)]),
        (GOOD + [("Strict-Transport-Security", "max-age=31536000")], 80, "B+", [("Strict-Transport-Security", -20)]),
    ],
)  # fmt: skip
def test_score(headers: Headers, score: int, grade_: str, breakdown: list[tuple[str, int]]) -> None:
    report = run(headers)
    assert (report.score, report.grade) == (score, grade_)
    assert list(report.breakdown) == breakdown


@pytest.mark.parametrize(
    ("score", "letter"),
    [(115, "A+"), (100, "A+"), (95, "A"), (90, "A"), (85, "A-"), (80, "B+"), (75, "B"), (70, "B"), (65, "B-"),
     (60, "C+"), (55, "C"), (50, "C"), (45, "C-"), (40, "D+"), (35, "D"), (30, "D"), (25, "D-"), (20, "F"), (0, "F")],
)  # fmt: skip
def test_grade_table(score: int, letter: str) -> None:
    assert grade(score) == letter


def test_findings_are_sorted_worst_first_and_exit_code_follows_errors() -> None:
    report = run(good(("X-Content-Type-Options", None)) + [("X-XSS-Protection", "1; mode=block"), ("Server", "IIS")])
    assert [f.severity for f in report.findings] == ["error", "warning", "info"]
    assert report.exit_code == 1
    assert run(GOOD + [("Server", "IIS")]).exit_code == 0


def test_json_shape_is_exact() -> None:
    report = run(good(("X-Frame-Options", None), NO_FRAME_ANCESTORS), status=200)
    data = json.loads(json.dumps(report.to_json()))
    assert list(data) == ["url", "status", "findings", "score", "grade"]
    assert (data["url"], data["status"], data["score"], data["grade"]) == (HTTPS, 200, 80, "B+")
    assert data["findings"] == [
        {
            "header": "X-Frame-Options",
            "severity": "error",
            "message": report.findings[0].message,
            "fix": '[headers.set] X-Frame-Options = "SAMEORIGIN"',
        }
    ]


def test_render_text_is_a_table_with_fixes() -> None:
    text = run(good(("X-Content-Type-Options", None)) + [("Server", "Microsoft-IIS/10.0")]).render_text()
    lines = text.splitlines()
    assert lines[0] == f"{HTTPS} -> HTTP 200"
    assert lines[1] == "score 100, grade A+ (100 -5 X-Content-Type-Options +5 Referrer-Policy)"
    assert any(line.startswith("error    X-Content-Type-Options  not sent") for line in lines)
    assert any(line.startswith("warning  Server") for line in lines)
    assert 'fix: [headers.set] X-Content-Type-Options = "nosniff"' in text
    assert lines[-1] == "1 error, 1 warning, 0 info"
    assert run(GOOD).render_text().endswith("no findings")


def test_cert_not_after_reads_der(tmp_path: Path) -> None:
    ca = trustme.CA()
    when = datetime(2049, 12, 31, 23, 59, 59)  # UTCTime; 2050 and later are GeneralizedTime
    for not_after in (when, datetime(3000, 1, 1)):
        pem = ca.issue_cert("localhost", not_after=not_after).cert_chain_pems[0].bytes().decode()
        assert cert_not_after(ssl.PEM_cert_to_DER_cert(pem)) == not_after.replace(tzinfo=UTC)
    assert cert_not_after(b"\x30\x03junk") is None


# --- live: the stand-in, the proxy in front of it, TLS ----------------------------------------------------


async def test_live_standin_logon_page(upstream: Upstream) -> None:
    report = await audit(f"{upstream.origin}/crm/eware.dll/go")
    assert report.status == 200
    kinds = {(f.header, f.severity) for f in report.findings}
    for banner in ("Server", "X-Powered-By", "X-AspNet-Version"):
        assert (banner, "warning") in kinds
    assert len(about(report, "X-Powered-By")) == 2
    assert "sent 2 times" in about(report, "X-Frame-Options")[0].message
    assert {f.message.split(" has no ")[1].split()[0] for f in about(report, "Set-Cookie")} == {
        "Secure", "HttpOnly", "SameSite"}  # fmt: skip
    assert len(about(report, "Set-Cookie")) == 6  # ASP.NET_SessionId and crmlogin, three flags each
    assert [f.severity for f in about(report, "X-XSS-Protection")] == ["info"]
    assert [f.severity for f in about(report, "Content-Security-Policy")] == ["warning"]
    assert ("Location", "error") in kinds  # plain HTTP, no redirect
    assert (report.score, report.grade, report.exit_code) == (0, "F", 1)


async def test_live_standin_screen_has_conflicting_frame_options(upstream: Upstream) -> None:
    report = await audit(f"{upstream.origin}/crm/eware.dll/Do?SID=198369875659391&Act=200")
    (xfo,) = about(report, "X-Frame-Options")
    assert (xfo.severity, "conflicting values SAMEORIGIN and DENY" in xfo.message) == ("error", True)


async def test_live_through_proxy_with_owasp_profile(upstream: Upstream, start_proxy: StartProxy) -> None:
    proxy = await start_proxy({"crm": site_toml(upstream, '[headers]\nprofile = "owasp"\n')})
    report = await audit(f"{proxy.url}/crm/eware.dll/go", headers=[f"Host: {PUBLIC_HOST}"])
    assert report.status == 200
    # Headers and cookies are fixed; what is left is that this listener serves plain HTTP (decided: an error,
    # with HSTS not judged) and that cookies cannot carry Secure there (a warning on plain HTTP).
    assert [(f.header, f.severity) for f in report.findings if f.severity == "error"] == [("Location", "error")]
    assert {(f.header, f.severity) for f in report.findings} == {("Location", "error"), ("Set-Cookie", "warning")}
    assert all("no Secure flag" in f.message for f in about(report, "Set-Cookie"))
    assert report.breakdown == (("Location", -20), ("Set-Cookie", -40))


async def no_server_banner(request: web.Request, response: web.StreamResponse) -> None:
    del response.headers["Server"]  # aiohttp's own banner would be a finding


async def serve(app: web.Application, context: ssl.SSLContext | None = None) -> tuple[web.AppRunner, int]:
    app.on_response_prepare.append(no_server_banner)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context).start()
    return runner, runner.addresses[0][1]


async def test_live_plain_redirect_to_https_same_host() -> None:
    async def moved(request: web.Request) -> web.Response:
        return web.Response(status=308, headers={"Location": f"https://{PUBLIC_HOST}{request.path_qs}"})

    app = web.Application()
    app.router.add_get("/{tail:.*}", moved)
    runner, port = await serve(app)
    try:
        report = await audit(f"http://127.0.0.1:{port}/crm/?a=1", headers=[f"Host: {PUBLIC_HOST}"])
        assert [(f.header, f.severity) for f in report.findings] == [("Location", "info")]
        assert report.findings[0].fix == f"crm-proxy audit https://{PUBLIC_HOST}/crm/?a=1"
        other = await audit(f"http://127.0.0.1:{port}/crm/")  # the client asked for 127.0.0.1
        assert [(f.header, f.severity) for f in other.findings] == [("Location", "warning")]
    finally:
        await runner.cleanup()


async def good_page(request: web.Request) -> web.Response:
    return web.Response(text="ok", headers=GOOD)


TlsServer = Callable[[timedelta | None], Awaitable[tuple[int, str]]]


@pytest.fixture
async def tls_server(tmp_path: Path) -> AsyncIterator[TlsServer]:
    """An HTTPS server for 'localhost' with a certificate from a fresh trustme CA; returns (port, CA file)."""
    ca, runners = trustme.CA(), []
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))

    async def start(lifetime: timedelta | None = None) -> tuple[int, str]:
        not_after = datetime.now(UTC).replace(tzinfo=None) + lifetime if lifetime else None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("localhost", not_after=not_after).configure_cert(context)
        app = web.Application()
        app.router.add_get("/", good_page)
        runner, port = await serve(app, context)
        runners.append(runner)
        return port, str(ca_file)

    yield start
    for runner in runners:
        await runner.cleanup()


async def test_live_https_verified_with_ca(tls_server: TlsServer) -> None:
    port, ca_file = await tls_server(None)
    report = await audit(f"https://localhost:{port}/", ca=ca_file)
    assert (report.findings, report.score, report.grade, report.exit_code) == ((), 105, "A+", 0)


async def test_live_https_untrusted_stops_unless_insecure(tls_server: TlsServer) -> None:
    port, _ = await tls_server(None)
    with pytest.raises(AuditError, match="certificate not trusted .*--ca FILE"):
        await audit(f"https://localhost:{port}/")
    report = await audit(f"https://localhost:{port}/", insecure=True)
    assert [(f.header, f.severity) for f in report.findings] == [("TLS", "warning")]
    assert "not trusted" in report.findings[0].message
    assert report.exit_code == 0


async def test_live_https_expiring_certificate(tls_server: TlsServer) -> None:
    port, ca_file = await tls_server(timedelta(days=3, hours=1))
    report = await audit(f"https://localhost:{port}/", ca=ca_file)
    assert [(f.header, f.severity, "expires in 3 days" in f.message) for f in report.findings] == [
        ("TLS", "warning", True)
    ]


# --- the command ------------------------------------------------------------------------------------------


async def test_main_prints_json_and_returns_exit_code(upstream: Upstream, capsys: Capture) -> None:
    code = await asyncio.to_thread(main, [f"{upstream.origin}/crm/eware.dll/go", "--json"])
    data = json.loads(capsys.readouterr().out)
    assert code == 1
    assert list(data) == ["url", "status", "findings", "score", "grade"]
    assert data["grade"] == "F"


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        ([f"http://127.0.0.1:{closed_port()}/"], "cannot connect to 127.0.0.1"),
        (["ftp://crm.example.com/"], "expected an http:// or https:// URL"),
        (["http://127.0.0.1/", "--header", "no colon"], "--header must look like 'Name: Value'"),
        (["http://127.0.0.1/", "--header", "X-A: 1\r\nX-B: 2"], "--header must look like 'Name: Value'"),
        (["http://[bad/"], "expected an http:// or https:// URL"),
        (["https://127.0.0.1/", "--ca", "/nonexistent/ca.pem"], "cannot use CA file"),
    ],
)
async def test_main_errors_are_one_line_and_exit_2(argv: list[str], says: str, capsys: Capture) -> None:
    code = await asyncio.to_thread(main, argv)
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("crm-proxy audit: ") and says in err
    assert err.count("\n") == 1 and "Traceback" not in err


async def test_main_timeout(upstream: Upstream, capsys: Capture) -> None:
    code = await asyncio.to_thread(main, [f"{upstream.origin}/slow?delay=0.6", "--timeout", "0.1"])
    assert (code, capsys.readouterr().err) == (
        2,
        f"crm-proxy audit: {upstream.origin}/slow?delay=0.6: no response within 0.1 s\n",
    )
