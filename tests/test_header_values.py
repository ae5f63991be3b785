"""Tables for proxy.header_values: what is valid, its canonical form, how duplicates collapse, and why not."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.header_values import (
    KNOWN_HEADERS,
    Hsts,
    Verdict,
    bad_value_chars,
    canonical_name,
    check,
    is_token,
    parse_hsts,
)

XFO, XCTO, XXP, RP = "X-Frame-Options", "X-Content-Type-Options", "X-XSS-Protection", "Referrer-Policy"
HSTS, CSP, CSPRO, PP = (
    "Strict-Transport-Security",
    "Content-Security-Policy",
    "Content-Security-Policy-Report-Only",
    "Permissions-Policy",
)
COOP, COEP, CORP = "Cross-Origin-Opener-Policy", "Cross-Origin-Embedder-Policy", "Cross-Origin-Resource-Policy"
CC, CSD = "Cache-Control", "Clear-Site-Data"

VALID = [
    # X-Frame-Options: split on commas, case-insensitive, canonical upper case, duplicates collapse
    (XFO, ["DENY"], "DENY"),
    (XFO, ["deny"], "DENY"),
    (XFO, [" sameorigin\t"], "SAMEORIGIN"),
    (XFO, ["SAMEORIGIN", "sameorigin"], "SAMEORIGIN"),
    (XFO, ["SAMEORIGIN, SAMEORIGIN"], "SAMEORIGIN"),
    ("x-frame-options", ["SameOrigin,sameorigin", "SAMEORIGIN"], "SAMEORIGIN"),
    (XCTO, ["nosniff"], "nosniff"),
    (XCTO, ["NoSniff"], "nosniff"),
    (XCTO, ["nosniff", "nosniff, nosniff"], "nosniff"),
    (XXP, ["0"], "0"),
    (XXP, ["1"], "1"),
    (XXP, ["1;mode=block"], "1; mode=block"),
    (XXP, ["1 ; MODE = Block"], "1; mode=block"),
    (XXP, ["1; report=https://r.example/xss"], "1; report=https://r.example/xss"),
    (XXP, ["1; mode=block; report=/r"], "1; mode=block; report=/r"),
    (XXP, ["1; mode=block", "1;mode=block"], "1; mode=block"),
    (XXP, ["0, 0"], "0"),
    # Referrer-Policy: a list where the last token wins
    (RP, ["no-referrer"], "no-referrer"),
    (RP, ["Strict-Origin-When-Cross-Origin"], "strict-origin-when-cross-origin"),
    (RP, ["no-referrer, strict-origin-when-cross-origin"], "strict-origin-when-cross-origin"),
    (RP, ["origin", "same-origin"], "same-origin"),
    (RP, ["unsafe-url,, no-referrer,"], "no-referrer"),
    # Strict-Transport-Security
    (HSTS, ["max-age=31536000"], "max-age=31536000"),
    (HSTS, ['max-age="600"'], "max-age=600"),
    (HSTS, ["max-age=600; includesubdomains; PRELOAD"], "max-age=600; includeSubDomains; preload"),
    (HSTS, ["preload ;max-age = 0600;; "], "max-age=600; preload"),
    (HSTS, ["max-age=0"], "max-age=0"),
    (HSTS, ["max-age=1; includeSubDomains", "max-age=1;includesubdomains"], "max-age=1; includeSubDomains"),
    # cross-origin policies and the single-keyword headers
    (COOP, ["same-origin"], "same-origin"),
    (COOP, ["noopener-allow-popups"], "noopener-allow-popups"),
    (COOP, ['same-origin-allow-popups;report-to="coop"'], 'same-origin-allow-popups; report-to="coop"'),
    (COOP, ['same-origin; report-to="a,b"'], 'same-origin; report-to="a,b"'),
    (COOP, ["unsafe-none", "unsafe-none"], "unsafe-none"),
    (COEP, ["require-corp"], "require-corp"),
    (COEP, ['credentialless ; report-to="e"'], 'credentialless; report-to="e"'),
    (CORP, ["same-site"], "same-site"),
    (CORP, ["cross-origin, cross-origin"], "cross-origin"),
    ("X-Permitted-Cross-Domain-Policies", ["NONE"], "none"),
    ("X-Permitted-Cross-Domain-Policies", ["by-content-type"], "by-content-type"),
    ("X-DNS-Prefetch-Control", ["Off"], "off"),
    ("X-Download-Options", ["noopen"], "noopen"),
    ("Origin-Agent-Cluster", ["?1"], "?1"),
    ("Origin-Agent-Cluster", ["?0", "?0"], "?0"),
    # Content-Security-Policy: whitespace normalised; distinct lines are all enforced, so they join
    (CSP, ["default-src 'self'"], "default-src 'self'"),
    (CSP, ["  Default-Src   'self'  ;; img-src * data: ;"], "default-src 'self'; img-src * data:"),
    (CSP, ["default-src 'self'", "default-src  'self';"], "default-src 'self'"),
    (CSP, ["default-src 'self'", "frame-ancestors 'self'"], "default-src 'self', frame-ancestors 'self'"),
    (CSP, ["default-src 'self', frame-ancestors 'self'"], "default-src 'self', frame-ancestors 'self'"),
    (CSPRO, ["upgrade-insecure-requests; report-uri /csp"], "upgrade-insecure-requests; report-uri /csp"),
    # Permissions-Policy
    (PP, ['camera=(), geolocation=(self "https://a.example")'], 'camera=(), geolocation=(self "https://a.example")'),
    (PP, ["sync-xhr = ( self )", "fullscreen=*"], "sync-xhr=(self), fullscreen=*"),
    (PP, ["camera=()", "camera=( )"], "camera=()"),
    (PP, ["usb=self,usb=self"], "usb=self"),
    # list headers: items join, duplicates collapse
    (CC, ["no-store, max-age=0"], "no-store, max-age=0"),
    (CC, ["No-Store", "private"], "no-store, private"),
    (CC, ['no-cache="Set-Cookie, X-Foo"'], 'no-cache="Set-Cookie, X-Foo"'),
    (CSD, ['"cache","cookies","storage"'], '"cache", "cookies", "storage"'),
    (CSD, ['"*"', '"*"'], '"*"'),
    # any other header: stripped, identical lines collapse
    ("X-Foo", [" bar "], "bar"),
    ("Server", ["Microsoft-IIS/10.0", "Microsoft-IIS/10.0 "], "Microsoft-IIS/10.0"),
    ("X-Note", ["café, thé"], "café, thé"),
]

INVALID = [
    (XFO, [], "no value"),
    (XFO, [""], "empty"),
    (XFO, ["DENY", "SAMEORIGIN"], "conflicting values DENY and SAMEORIGIN (browsers then block framing"),
    (XFO, ["sameorigin, deny"], "conflicting values SAMEORIGIN and DENY"),
    (XFO, ["ALLOW-FROM https://partner.example"], "Content-Security-Policy: frame-ancestors"),
    (XFO, ["allow-from https://partner.example"], "obsolete"),
    (XFO, ["ALLOWALL"], "not a standard value"),
    (XFO, ["SAMEORGIN"], "expected DENY or SAMEORIGIN, got SAMEORGIN"),
    (XFO, ["SAMEORIGIN,"], "empty item"),
    (XFO, ["SAMEORIGIN", ""], "empty item"),
    (XCTO, ["sniff"], "expected nosniff"),
    (XCTO, ["nosniff; x"], "expected nosniff"),
    (XXP, ["2"], "expected 0, 1"),
    (XXP, ["1; mode=allow"], "expected 0, 1"),
    (XXP, ["0; mode=block"], "expected 0, 1"),
    (XXP, ["1; mode=block; mode=block"], "expected 0, 1"),
    (XXP, ["1; report="], "expected 0, 1"),
    (XXP, ["0", "1; mode=block"], "conflicting values 0 and '1; mode=block'"),
    (RP, ["foo"], "got foo"),
    (RP, ["no-referrer, bogus"], "got bogus"),
    (RP, [""], "empty"),
    (RP, [" , ,"], "empty"),
    (HSTS, ["includeSubDomains"], "missing max-age"),
    (HSTS, ["max-age=1y"], "whole number of seconds, got 1y"),
    (HSTS, ["max-age="], "whole number"),
    (HSTS, ["max-age"], "whole number"),
    (HSTS, ['max-age="600'], "whole number"),
    (HSTS, ["max-age=-1"], "whole number"),
    (HSTS, ["max-age=1; max-age=2"], "sent twice"),
    (HSTS, ["max-age=1; preload; PRELOAD"], "sent twice"),
    (HSTS, ["max-age=1, max-age=1"], "sent twice"),
    (HSTS, ["max-age=1; includeSubdomain"], "unknown directive"),
    (HSTS, ["max-age=1; preload=yes"], "takes no value"),
    (HSTS, ["max-age=1", "max-age=2"], "conflicting values"),
    (HSTS, ["max-age=1", ""], "empty"),
    (HSTS, [" ; "], "empty"),
    (HSTS, ["max-age=" + "9" * 40], "unreasonably large"),
    (HSTS, ["max-age=\u0661\u0662"], "non-ASCII"),
    (COOP, ["Same-Origin"], "case-sensitive"),
    (COOP, ["same-origin; foo=1"], "report-to"),
    (COOP, ["same-origin; report-to=coop"], "report-to"),
    (COOP, ["same-origin, unsafe-none"], "conflicting values"),
    (COOP, ["bogus"], "expected same-origin"),
    (COEP, ["require-corp;"], "report-to"),
    (COEP, ["cors"], "expected require-corp"),
    (CORP, ["same-origin, same-site"], "conflicting values"),
    (CORP, ["Same-Site"], "case-sensitive"),
    ("X-Permitted-Cross-Domain-Policies", ["master"], "expected none"),
    ("X-DNS-Prefetch-Control", ["maybe"], "expected on or off"),
    ("X-Download-Options", ["open"], "expected noopen"),
    ("Origin-Agent-Cluster", ["1"], "expected ?0 or ?1"),
    ("Origin-Agent-Cluster", ["?1", "?0"], "conflicting values"),
    (CSP, [";"], "no directives"),
    (CSP, [" "], "empty"),
    (CSP, ["default-src 'self'; Default-Src *"], "appears twice"),
    (CSP, ["default_src 'self'"], "invalid directive name"),
    (CSP, ["script-src 'nonce-\u00e9'"], "non-ASCII"),
    (CSPRO, ["default-src 'self', ;"], "no directives"),
    (PP, ["camera"], "expected feature=()"),
    (PP, ["Camera=()"], "expected feature=()"),
    (PP, ["camera=(none)"], "expected feature=()"),
    (PP, ["camera=(self 'https://a.example')"], "expected feature=()"),
    (PP, ["camera=(self)", "camera=()"], "conflicting values 'camera=(self)' and 'camera=()'"),
    (CC, ["max-age=0, max-age=60"], "conflicting values"),
    (CC, ["no-store;"], "invalid Cache-Control directive"),
    (CSD, ["cache"], "expected"),
    (CSD, ['"Cache"'], "case-sensitive"),
    (CSD, ['"bogus"'], "expected"),
    ("X-Foo", ["a", "b"], "conflicting values a and b"),
    ("X-Foo", ["\t "], "empty"),
    # bad characters, for every header
    ("X-Foo", ["a\r\nb"], "carriage return (CR)"),
    (XFO, ["DENY\n"], "line feed (LF)"),
    ("X-Foo", ["ok", "bad\nvalue"], "line feed (LF)"),
    (CSP, ["default-src 'self'\x00"], "NUL"),
    (HSTS, ["max-age=1\x00"], "NUL"),
    ("X-Foo", ["a\x7f"], "U+007F"),
]


@pytest.mark.parametrize(("name", "values", "expected"), VALID)
def test_valid_values_reduce_to_their_canonical_form(name: str, values: list[str], expected: str) -> None:
    verdict = check(name, values)
    assert verdict == Verdict(expected, None)
    assert verdict.ok
    assert check(name, [expected]).value == expected


@pytest.mark.parametrize(("name", "values", "fragment"), INVALID)
def test_invalid_values_say_why(name: str, values: list[str], fragment: str) -> None:
    verdict = check(name, values)
    assert verdict.value is None
    assert not verdict.ok
    assert verdict.problem is not None and fragment in verdict.problem


def test_a_bare_string_is_one_line() -> None:
    assert check(XFO, "sameorigin") == Verdict("SAMEORIGIN", None)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("max-age=31536000; includeSubDomains", Hsts(31536000, True, False)),
        ('max-age="600"', Hsts(600, False, False)),
        ("PRELOAD; Max-Age=0; includesubdomains", Hsts(0, True, True)),
        ("includeSubDomains", "missing max-age (required)"),
        ("max-age=1, max-age=1", "sent twice"),
    ],
)
def test_parse_hsts(value: str, expected: Hsts | str) -> None:
    parsed = parse_hsts(value)
    if isinstance(expected, Hsts):
        assert parsed == expected
    else:
        assert isinstance(parsed, str) and expected in parsed


@pytest.mark.parametrize(
    ("hsts", "text"),
    [
        (Hsts(31536000, True, False), "max-age=31536000; includeSubDomains"),
        (Hsts(63072000, True, True), "max-age=63072000; includeSubDomains; preload"),
        (Hsts(0, False, True), "max-age=0; preload"),
    ],
)
def test_hsts_renders_canonically(hsts: Hsts, text: str) -> None:
    assert str(hsts) == text
    assert parse_hsts(text) == hsts


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("plain value", None),
        ("with\ttab", None),
        ("café", None),
        ("", None),
        ("a\r\nb", "contains a carriage return (CR)"),
        ("a\nb", "contains a line feed (LF)"),
        ("a\x00b", "contains a NUL character"),
        ("\x1b[0m", "contains a control character (U+001B)"),
        ("next\x85line", "contains a control character (U+0085)"),
        ("raw \udcff byte", "contains bytes that are not valid UTF-8"),
    ],
)
def test_bad_value_chars(value: str, problem: str | None) -> None:
    assert bad_value_chars(value) == problem


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("X-Frame-Options", True),
        ("a", True),
        ("!#$%&'*+-.^_`|~09AZaz", True),
        ("", False),
        ("X Frame", False),
        ("X-Frame:", False),
        ("X-Fr\u00e4me", False),
        ("X-Frame\n", False),
        ('"quoted"', False),
        ("(x)", False),
    ],
)
def test_is_token(name: str, ok: bool) -> None:
    assert is_token(name) is ok


@pytest.mark.parametrize(
    ("name", "canonical"),
    [
        ("x-frame-options", "X-Frame-Options"),
        ("STRICT-TRANSPORT-SECURITY", "Strict-Transport-Security"),
        ("content-security-policy", "Content-Security-Policy"),
        ("content-security-policy-report-only", "Content-Security-Policy-Report-Only"),
        ("x-xss-protection", "X-XSS-Protection"),
        ("x-dns-prefetch-control", "X-DNS-Prefetch-Control"),
        ("permissions-policy", "Permissions-Policy"),
        ("referrer-policy", "Referrer-Policy"),
        ("cross-origin-opener-policy", "Cross-Origin-Opener-Policy"),
        ("x-permitted-cross-domain-policies", "X-Permitted-Cross-Domain-Policies"),
        ("origin-agent-cluster", "Origin-Agent-Cluster"),
        ("clear-site-data", "Clear-Site-Data"),
        ("x-aspnet-version", "X-AspNet-Version"),
        ("etag", "ETag"),
        ("x-foo-bar", "X-Foo-Bar"),
        ("X-FOO--bar", "X-Foo--Bar"),
        ("server", "Server"),
    ],
)
def test_canonical_name(name: str, canonical: str) -> None:
    assert canonical_name(name) == canonical


def test_known_headers_are_lowercase_and_spelled_canonically() -> None:
    assert {"x-frame-options", "strict-transport-security", "content-security-policy"} <= KNOWN_HEADERS
    for name in KNOWN_HEADERS:
        assert name == name.lower()
        assert canonical_name(name).lower() == name and canonical_name(name) != name


FRAGMENTS = [
    "DENY", "sameorigin", "ALLOW-FROM x", "nosniff", "0", "1", "mode=block", "report=/r", "no-referrer",
    "max-age=600", '"600"', "includeSubDomains", "preload", "same-origin", "require-corp", 'report-to="x"',
    "default-src 'self'", "img-src *", "camera=()", "(self)", '"https://a.example"', '"cache"', "no-store",
    "?1", "on", ",", ";", "=", " ", "\t", '"', "\\", "(", ")", "\r\n", "\x00", "\u00e9", "\u212a",
]  # fmt: skip
PIECES = st.one_of(st.sampled_from(FRAGMENTS), st.sampled_from([value for _, _, value in VALID]), st.text(max_size=8))
VALUES = st.lists(PIECES, max_size=6).map("".join) | st.lists(PIECES, min_size=1, max_size=3).map(", ".join) | PIECES
NAMES = st.one_of(
    st.sampled_from(sorted(KNOWN_HEADERS)), st.sampled_from(sorted(KNOWN_HEADERS)).map(str.upper), st.text()
)


@settings(max_examples=400)
@given(NAMES, st.lists(VALUES, max_size=4))
def test_check_never_raises_and_canonical_values_are_fixed_points(name: str, values: list[str]) -> None:
    verdict = check(name, values)
    assert isinstance(verdict, Verdict)
    assert (verdict.value is None) != (verdict.problem is None)
    if verdict.value is not None:
        assert bad_value_chars(verdict.value) is None
        assert check(name, [verdict.value]).value == verdict.value
