"""Make request text safe to log: no credentials, no session ids, no forged log lines.

Anything from a client that reaches a log line (a path, a header, a parser's complaint that
quotes the bytes it choked on) passes through here first. Secrets are replaced, not hashed:
a log is read by more people than the CRM's users are.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

REDACTED = "[redacted]"
#: Headers whose whole value is a credential; the scheme word (`Basic`, `Bearer`) is kept.
CREDENTIAL_HEADERS = frozenset({"authorization", "proxy-authorization", "x-sage-authorization"})
#: Headers made of `name=value` pairs whose values are secrets (session cookies).
COOKIE_HEADERS = frozenset({"cookie", "set-cookie"})
#: Query parameters that carry a session (Sage CRM keeps its session id in `SID`) or another credential.
SECRET_PARAMS = frozenset({"sid", "password", "pwd", "token", "access_token"})

_NAMES = "|".join(sorted(SECRET_PARAMS))
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\\]")
_CONTROL_ONLY = re.compile(r"[\x00-\x1f\x7f]")
_PARAM = re.compile(r"(?<![^?&;])([^=&;#\s?]+)=[^&;#\s'\"]*")
_WORD_PARAM = re.compile(r"(?i)\b(" + _NAMES + r")=[^&;#\s'\"]*")
_USERINFO = re.compile(r"(?i)^(https?://)[^/?#@]*@")
_CREDENTIAL_LINE = re.compile(
    r"(?i)\b(authorization|proxy-authorization|x-sage-authorization|cookie|set-cookie)(\s*[:=]\s*)([^\r\n'\"]*)"
)
_COOKIE_PAIR = re.compile(r"([^=;,\s]+)=([^;,]*)")
#: A Python bytes literal in an exception message: the raw request bytes a parser quotes.
_BYTES_LITERAL = re.compile(r"b'(?:[^'\\]|\\.)*'|b\"(?:[^\"\\]|\\.)*\"")
_ESCAPES = {"\r": "\\r", "\n": "\\n", "\t": "\\t", "\\": "\\\\"}
LIMIT = 300


def _secret_param(match: re.Match[str]) -> str:
    """`SID=...` (however its name is percent-encoded, `%53ID`) with the value replaced; others untouched."""
    name = match[1]
    return f"{name}={REDACTED}" if unquote(name).lower() in SECRET_PARAMS else match[0]


def escape(text: str, limit: int = LIMIT) -> str:
    """Control characters (CR, LF, NUL, ESC, ...) and backslashes as escapes; long text cut with an ellipsis."""
    cut = text[:limit]
    out = _CONTROL.sub(lambda m: _ESCAPES.get(m[0], f"\\x{ord(m[0]):02x}"), cut)
    return out + ("..." if len(text) > limit else "")


def escape_controls(text: str) -> str:
    """Only control characters as escapes, for whole log lines (backslashes in messages stay readable)."""
    return _CONTROL_ONLY.sub(lambda m: _ESCAPES.get(m[0], f"\\x{ord(m[0]):02x}"), text)


def target(raw: str, limit: int = LIMIT) -> str:
    """A request-target for the log: session and credential parameters and URL user-info replaced, then escaped."""
    raw = _USERINFO.sub(r"\1" + REDACTED + "@", raw)
    return escape(_PARAM.sub(_secret_param, raw), limit)


def scrub(message: str) -> str:
    """The last line of defence for any log line, whoever wrote it: session ids out, controls escaped."""
    return escape_controls(_PARAM.sub(_secret_param, message))


def header(name: str, value: str, limit: int = LIMIT) -> str:
    """One header value for the log: credentials and cookie values replaced, then escaped."""
    low = name.lower()
    if low in CREDENTIAL_HEADERS:
        scheme = value.strip().split(" ", 1)[0] if " " in value.strip() else ""
        value = f"{scheme} {REDACTED}" if scheme else REDACTED
    elif low in COOKIE_HEADERS:
        value = _COOKIE_PAIR.sub(lambda m: f"{m[1]}={REDACTED}", value)
    return escape(value, limit)


def text(message: object, limit: int = LIMIT) -> str:
    """Free text that may quote request bytes (parser errors).

    Quoted byte strings are dropped whole (a parser quotes a header value without its name, so
    nothing tells whether it was a password); credentials, cookies and SIDs replaced; escaped.
    """
    raw = _BYTES_LITERAL.sub("<bytes>", str(message))
    raw = _CREDENTIAL_LINE.sub(lambda m: f"{m[1]}{m[2]}{REDACTED}", raw)
    raw = _WORD_PARAM.sub(lambda m: f"{m[1]}={REDACTED}", raw)
    return escape(raw, limit)
