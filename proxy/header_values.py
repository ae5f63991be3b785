"""Syntax of the security response headers: validity, canonical form, and collapsing of duplicates.

The configuration validator, the runtime header policy and the `audit` command all ask this module, so they
agree on what a valid value is. Pure and without I/O; `check` runs for every response, so rules are found by
lowercased name in a dict and every regex is compiled once, at import.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

_OWS = " \t"
_TCHAR = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]"
_TOKEN = re.compile(_TCHAR + "+")
_QUOTED = r'"(?:[\t !#-\[\]-~]|\\[\t -~])*"'  # RFC 9110 quoted-string, ASCII only
_SF_STRING = r'"(?:[ !#-\[\]-~]|\\["\\])*"'  # RFC 8941 sf-string
_BAD_CHAR = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f\ud800-\udfff]")
_BAD_NAMES = {"\r": "a carriage return (CR)", "\n": "a line feed (LF)", "\x00": "a NUL character"}


def is_token(name: str) -> bool:
    """True for an RFC 9110 §5.6.2 token (a field name); anything else would corrupt the header block."""
    return _TOKEN.fullmatch(name) is not None


def bad_value_chars(value: str) -> str | None:
    """Describe the first character a field value may not hold (RFC 9110 §5.5), or None if there is none.

    CR and LF would allow header injection; other controls (C0, DEL, C1) confuse clients, and lone surrogates
    (upstream bytes that were not UTF-8) would make aiohttp fail while writing the response.
    """
    found = _BAD_CHAR.search(value)
    if found is None:
        return None
    char = found.group()
    if char in _BAD_NAMES:
        return f"contains {_BAD_NAMES[char]}"
    if char >= "\ud800":
        return "contains bytes that are not valid UTF-8"
    return f"contains a control character (U+{ord(char):04X})"


_SPELLINGS = (
    "Cache-Control", "Clear-Site-Data", "Content-Security-Policy", "Content-Security-Policy-Report-Only",
    "Cross-Origin-Embedder-Policy", "Cross-Origin-Opener-Policy", "Cross-Origin-Resource-Policy",
    "Origin-Agent-Cluster", "Permissions-Policy", "Referrer-Policy", "Strict-Transport-Security",
    "X-Content-Type-Options", "X-DNS-Prefetch-Control", "X-Download-Options", "X-Frame-Options",
    "X-Permitted-Cross-Domain-Policies", "X-XSS-Protection",
    # usual spellings that are not Title-Case per dash segment
    "ETag", "WWW-Authenticate", "Content-MD5", "X-AspNet-Version", "X-AspNetMvc-Version", "X-UA-Compatible",
    "X-SourceFiles", "X-SourceMap", "SourceMap", "DNT", "TE",
)  # fmt: skip
_CANONICAL = {spelling.lower(): spelling for spelling in _SPELLINGS}


def canonical_name(name: str) -> str:
    """The usual spelling of a header name, so set, replaced and audited headers read the same everywhere."""
    lower = name.lower()
    known = _CANONICAL.get(lower)
    if known is not None:
        return known
    return "-".join(part[:1].upper() + part[1:] for part in lower.split("-"))


@dataclass(frozen=True, slots=True)
class Verdict:
    """The one canonical value of a header, or the problem why there is none."""

    value: str | None
    problem: str | None

    @property
    def ok(self) -> bool:
        return self.value is not None


@dataclass(frozen=True, slots=True)
class Hsts:
    """A parsed Strict-Transport-Security value; `str()` gives its canonical form."""

    max_age: int
    include_subdomains: bool
    preload: bool

    def __str__(self) -> str:
        subdomains = "; includeSubDomains" if self.include_subdomains else ""
        return f"max-age={self.max_age}{subdomains}{'; preload' if self.preload else ''}"


class _Invalid(ValueError):
    """Raised by an item parser; its message becomes `Verdict.problem`."""


def _show(value: str) -> str:
    """A value quoted for a problem, shortened so that junk from an upstream cannot flood a log line."""
    if len(value) > 60:
        value = value[:57] + "..."
    return value if _TOKEN.fullmatch(value) else repr(value)


_REPORT_TO = re.compile(r"([^;]*?)[ \t]*(?:;[ \t]*report-to[ \t]*=[ \t]*(" + _SF_STRING + "))?")


def _enum(*allowed: str, case_sensitive: bool = False, report_to: bool = False) -> Callable[[str], str]:
    """A parser for one keyword of `allowed`, canonically spelled as given.

    Browsers compare structured-field keywords (COOP, COEP, CORP, Origin-Agent-Cluster, Clear-Site-Data)
    case-sensitively, so there a wrongly cased keyword is reported, not silently fixed.
    """
    by_lower = {keyword.lower(): keyword for keyword in allowed}
    expected = "expected " + (f"{', '.join(allowed[:-1])} or {allowed[-1]}" if allowed[1:] else allowed[0])

    def parse(item: str) -> str:
        keyword, param = item, ""
        if report_to:
            found = _REPORT_TO.fullmatch(item)
            if found is None:
                raise _Invalid(f'{expected}, with at most a report-to="endpoint" parameter, got {_show(item)}')
            keyword, param = found[1], (f"; report-to={found[2]}" if found[2] else "")
        canonical = by_lower.get(keyword.lower())
        if canonical is None:
            raise _Invalid(f"{expected}, got {_show(keyword)}")
        if case_sensitive and keyword != canonical:
            raise _Invalid(f"values are case-sensitive and browsers ignore {_show(keyword)}: write {canonical}")
        return canonical + param

    return parse


_xfo_keyword = _enum("DENY", "SAMEORIGIN")


def _xfo(item: str) -> str:
    """An X-Frame-Options item; obsolete and non-standard keywords get a message saying what to use instead."""
    lower = item.lower()
    if not item:
        raise _Invalid("has an empty item (browsers then see two different values and block framing)")
    if lower.startswith("allow-from"):
        raise _Invalid("ALLOW-FROM is obsolete and ignored by current browsers; "
                       "use Content-Security-Policy: frame-ancestors instead")  # fmt: skip
    if lower == "allowall":
        raise _Invalid("ALLOWALL is not a standard value; to allow framing, omit X-Frame-Options "
                       "or use Content-Security-Policy: frame-ancestors")  # fmt: skip
    return _xfo_keyword(item)


_XXP_REPORT = re.compile(r"[!-~]+")


def _xxp(item: str) -> str:
    """X-XSS-Protection: `0`, or `1` with optional `mode=block` and `report=<uri>` (Chromium's old grammar)."""
    head, *directives = (part.strip(_OWS) for part in item.split(";"))
    mode = report = ""
    valid = head in ("0", "1")
    for directive in filter(None, directives):
        key, eq, arg = (part.strip(_OWS) for part in directive.partition("="))
        key = key.lower()
        if head == "1" and eq and key == "mode" and arg.lower() == "block" and not mode:
            mode = "; mode=block"
        elif head == "1" and eq and key == "report" and _XXP_REPORT.fullmatch(arg) and not report:
            report = f"; report={arg}"
        else:
            valid = False
    if not valid:
        raise _Invalid(f"expected 0, 1, 1; mode=block or 1; report=<uri>, got {_show(item)}")
    return head + mode + report


_HSTS_AGE = re.compile(r'([0-9]+)|"([0-9]+)"')
_HSTS_NAMES = {"max-age": "max-age", "includesubdomains": "includeSubDomains", "preload": "preload"}


def parse_hsts(value: str) -> Hsts | str:
    """Parse one Strict-Transport-Security field (RFC 6797 §6.1), or say why browsers would ignore it."""
    bad = bad_value_chars(value) or (None if value.isascii() else "contains non-ASCII characters")
    if bad is not None:
        return bad
    if "," in value:
        return "sent twice: the value holds a comma, as when two headers are joined, and browsers ignore it"
    seen: dict[str, str | None] = {}
    for part in value.split(";"):
        name, eq, arg = (piece.strip(_OWS) for piece in part.partition("="))
        key = name.lower()
        if not name and not eq:
            continue  # RFC 6797 allows empty directives
        if key not in _HSTS_NAMES:
            return f"unknown directive {_show(name)} (expected max-age, includeSubDomains, preload)"
        if key in seen:
            return f"directive {_HSTS_NAMES[key]} sent twice (each may appear once)"
        seen[key] = arg if eq else None
    if not seen:
        return "empty value"
    if "max-age" not in seen:
        return "missing max-age (required)"
    age = _HSTS_AGE.fullmatch(seen["max-age"] or "")
    if age is None:
        return f"max-age must be a whole number of seconds, got {_show(seen['max-age'] or '')}"
    digits = (age[1] or age[2]).lstrip("0") or "0"
    if len(digits) > 18:  # also keeps int() far below its digit limit
        return "max-age is unreasonably large"
    for flag in ("includesubdomains", "preload"):
        if seen.get(flag) is not None:
            return f"directive {_HSTS_NAMES[flag]} takes no value"
    return Hsts(int(digits), "includesubdomains" in seen, "preload" in seen)


def _hsts(item: str) -> str:
    parsed = parse_hsts(item)
    if isinstance(parsed, str):
        raise _Invalid(parsed)
    return str(parsed)


_CSP_NAME = re.compile(r"[A-Za-z0-9-]+")


def _csp(policy: str) -> str:
    """One serialized CSP policy, normalised; a repeated directive is reported because browsers drop it."""
    directives: dict[str, str] = {}
    for part in policy.split(";"):
        words = part.split()
        if not words:
            continue
        name = words[0].lower()
        if not _CSP_NAME.fullmatch(name):
            raise _Invalid(f"invalid directive name {_show(words[0])}")
        if name in directives:
            raise _Invalid(f"directive {name} appears twice in one policy (browsers ignore the second)")
        directives[name] = " ".join([name, *words[1:]])
    if not directives:
        raise _Invalid("has no directives")
    return "; ".join(directives.values())


_PERMISSION = re.compile(r"([a-z][a-z0-9-]*)[ \t]*=[ \t]*(\*|self|\(([^()]*)\))")
_ALLOW_ITEM = re.compile(r'self|\*|"[!#-\[\]-~]+"')


def _permission(member: str) -> str:
    """One Permissions-Policy member `feature=allowlist` (a loosely checked RFC 8941 dictionary member)."""
    found = _PERMISSION.fullmatch(member)
    items = (found[3] or "").split() if found else []
    if found is None or not all(_ALLOW_ITEM.fullmatch(item) for item in items):
        raise _Invalid(f'expected feature=(), feature=self or feature=(self "https://origin"), '
                       f"got {_show(member)}")  # fmt: skip
    return f"{found[1]}={found[2] if found[3] is None else '(' + ' '.join(items) + ')'}"


_CACHE_DIRECTIVE = re.compile(f"({_TCHAR}+)(?:[ \t]*=[ \t]*({_TCHAR}+|{_QUOTED}))?")


def _cache_directive(item: str) -> str:
    found = _CACHE_DIRECTIVE.fullmatch(item)
    if found is None:
        raise _Invalid(f"invalid Cache-Control directive {_show(item)}")
    return found[1].lower() + (f"={found[2]}" if found[2] is not None else "")


def _anything(item: str) -> str:
    if not item:
        raise _Invalid("empty value")
    return item


@dataclass(frozen=True, slots=True)
class _Rule:
    """How a header's lines reduce: to `one` value, the `last` item wins, items `join`, or whole `line`s."""

    parse: Callable[[str], str]
    mode: str = "one"
    keyed: bool = False  # join: items are `key=...`, and one key with two different values conflicts
    quoted: bool = False  # commas inside "quoted strings" do not split items
    keep_empty: bool = False  # an empty item is a problem in itself (the parser says which)
    note: str = ""  # appended to a conflict: what browsers then do


_CSP_RULE = _Rule(_csp, mode="join")
_RULES: dict[str, _Rule] = {
    "x-frame-options": _Rule(_xfo, keep_empty=True, note=" (browsers then block framing or ignore the header)"),
    "x-content-type-options": _Rule(_enum("nosniff")),
    "x-xss-protection": _Rule(_xxp),
    "referrer-policy": _Rule(_enum("no-referrer", "no-referrer-when-downgrade", "same-origin", "origin",
                                   "strict-origin", "origin-when-cross-origin", "strict-origin-when-cross-origin",
                                   "unsafe-url"), mode="last"),
    "strict-transport-security": _Rule(_hsts, mode="line"),
    "cross-origin-opener-policy": _Rule(_enum("same-origin", "same-origin-allow-popups", "noopener-allow-popups",
                                              "unsafe-none", case_sensitive=True, report_to=True), quoted=True),
    "cross-origin-embedder-policy": _Rule(_enum("require-corp", "credentialless", "unsafe-none",
                                                case_sensitive=True, report_to=True), quoted=True),
    "cross-origin-resource-policy": _Rule(_enum("same-site", "same-origin", "cross-origin", case_sensitive=True)),
    "x-permitted-cross-domain-policies": _Rule(_enum("none", "master-only", "by-content-type", "by-ftp-filename",
                                                     "all", "none-this-response")),
    "x-dns-prefetch-control": _Rule(_enum("on", "off")),
    "x-download-options": _Rule(_enum("noopen")),
    "origin-agent-cluster": _Rule(_enum("?0", "?1", case_sensitive=True)),
    "content-security-policy": _CSP_RULE,
    "content-security-policy-report-only": _CSP_RULE,
    "permissions-policy": _Rule(_permission, mode="join", keyed=True, quoted=True),
    "cache-control": _Rule(_cache_directive, mode="join", keyed=True, quoted=True),
    "clear-site-data": _Rule(_enum('"cache"', '"cookies"', '"storage"', '"executionContexts"', '"clientHints"',
                                   '"prefetchCache"', '"prerenderCache"', '"*"', case_sensitive=True),
                             mode="join", quoted=True),
}  # fmt: skip
_GENERIC = _Rule(_anything, mode="line")
KNOWN_HEADERS: frozenset[str] = frozenset(_RULES)


def _split_quoted(line: str) -> list[str]:
    """Split on the commas outside double-quoted strings (RFC 9110 lists, RFC 8941 dictionaries)."""
    if '"' not in line:
        return line.split(",")
    items, start, quoted, escaped = [], 0, False, False
    for index, char in enumerate(line):
        if escaped:
            escaped = False
        elif quoted and char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == "," and not quoted:
            items.append(line[start:index])
            start = index + 1
    items.append(line[start:])
    return items


def _conflict(first: str, second: str, note: str = "") -> str:
    return f"conflicting values {_show(first)} and {_show(second)}{note}"


def _combine(rule: _Rule, values: Sequence[str]) -> str:
    """Split the lines into items where the grammar allows, parse each, and reduce them to one value."""
    if rule.mode == "line":
        items = [line.strip(_OWS) for line in values]
    else:
        items = [item.strip(_OWS) for line in values
                 for item in (_split_quoted(line) if rule.quoted else line.split(","))]  # fmt: skip
        if not any(items):
            raise _Invalid("empty value")
        if not rule.keep_empty:
            items = [item for item in items if item]  # RFC 9110 §5.6.1: empty list elements do not count
    parsed = [rule.parse(item) for item in items]
    if rule.mode == "last":
        return parsed[-1]  # Referrer Policy §11.1: the last recognised token wins
    unique = list(dict.fromkeys(parsed))
    if rule.mode != "join":
        if len(unique) > 1:
            raise _Invalid(_conflict(unique[0], unique[1], rule.note))
        return unique[0]
    if rule.keyed:
        by_key: dict[str, str] = {}
        for item in unique:
            earlier = by_key.setdefault(item.partition("=")[0], item)
            if earlier != item:
                raise _Invalid(_conflict(earlier, item))
    return ", ".join(unique)


def check(name: str, values: Sequence[str]) -> Verdict:
    """The single canonical value of header `name`, given every line sent for it, or why there is none.

    A bare str counts as one line: it is a Sequence[str] too, but iterating its characters is never meant.
    """
    if isinstance(values, str):
        values = (values,)
    if not values:
        return Verdict(None, "no value")
    for line in values:
        bad = bad_value_chars(line)
        if bad is not None:
            return Verdict(None, bad)
    rule = _RULES.get(name.lower())
    if rule is None:
        rule = _GENERIC
    elif not all(line.isascii() for line in values):
        return Verdict(None, "contains non-ASCII characters")
    try:
        return Verdict(_combine(rule, values), None)
    except _Invalid as problem:
        return Verdict(None, str(problem))
