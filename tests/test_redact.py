"""Logs carry no credentials, session ids or forged lines: the redaction helpers and the live log."""

from __future__ import annotations

import logging

import pytest

from proxy import redact
from tests.conftest import Proxy
from tests.rawclient import HOST, exchange


def test_sid_query_parameter_is_redacted() -> None:
    assert redact.target("/crm/eware.dll/Do?SID=173628141234&Act=520") == "/crm/eware.dll/Do?SID=[redacted]&Act=520"
    assert redact.target("/x?a=1&sid=9;SID=7#f") == "/x?a=1&sid=[redacted];SID=[redacted]#f"
    assert redact.target("/x?ASID=1&SIDE=2") == "/x?ASID=1&SIDE=2"  # only the parameter named SID
    assert redact.target("/?x=1;%53ID=SECRET9&%73id=2") == "/?x=1;%53ID=[redacted]&%73id=[redacted]"


@pytest.mark.parametrize(
    ("name", "value", "logged"),
    [
        ("Authorization", "Basic dXNlcjpzZWNyZXQ=", "Basic [redacted]"),
        ("authorization", "Bearer eyJhbGciOi", "Bearer [redacted]"),
        ("X-Sage-Authorization", "token123", "[redacted]"),
        ("Proxy-Authorization", "Basic abc", "Basic [redacted]"),
        ("Cookie", "ASP.NET_SessionId=abc123; crm=42", "ASP.NET_SessionId=[redacted]; crm=[redacted]"),
        ("Accept", "text/html", "text/html"),
        ("X-Evil", "a\r\nlevel=error forged", "a\\r\\nlevel=error forged"),
    ],
)
def test_header_values(name: str, value: str, logged: str) -> None:
    assert redact.header(name, value) == logged


def test_control_characters_are_escaped_and_text_is_bounded() -> None:
    assert redact.escape("a\r\nb\x00c\x1b[31md\\") == "a\\r\\nb\\x00c\\x1b[31md\\\\"
    assert redact.escape("x" * 400, 10) == "x" * 10 + "..."


def test_parser_messages_lose_quoted_bytes_and_credentials() -> None:
    message = "400, message:\n  Invalid header value char:\n\n    b'Authorization: Basic c2VjcmV0\\x00'\n  SID=77"
    logged = redact.text(message)
    assert "c2VjcmV0" not in logged and "77" not in logged
    assert "\n" not in logged and "<bytes>" in logged
    assert redact.text("Cookie: a=b, Authorization: Basic zzz") == "Cookie: [redacted]"


async def test_live_refusal_logs_carry_no_secret(proxy: Proxy, caplog: pytest.LogCaptureFixture) -> None:
    probes = [
        b"GET /crm/eware.dll/Do?SID=s3cr3tsid&Act=1 HTTP/1.1\r\nHost: unknown.example\r\n\r\n",  # 421 (routed log)
        b"GET /echo HTTP/1.1\r\n" + HOST + b"Authorization: Basic c2VjcmV0cGFzcw==\x00\r\n\r\n",  # parser error
        b"GET /echo HTTP/1.1\r\n" + HOST + b"Cookie: ASP.NET_SessionId=c00kies3cret\x01\r\n\r\n",
        b"GET /echo?SID=s3cr3tsid HTTP/1.1\r\n" + HOST + b"X-Sage-Authorization: t0kens3cret\x7f\r\n\r\n",
    ]
    with caplog.at_level(logging.DEBUG):
        for probe in probes:
            assert (await exchange(proxy.port, probe)).response.status in (400, 421)
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "refused" in text
    for secret in ("s3cr3tsid", "c2VjcmV0cGFzcw", "c00kies3cret", "t0kens3cret"):
        assert secret not in text
    assert all(
        "\n" not in r.getMessage() and "\r" not in r.getMessage() for r in caplog.records if "refused" in r.getMessage()
    )
