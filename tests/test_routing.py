"""Routing decisions from raw request targets and Host headers."""

from __future__ import annotations

import pytest

from proxy.routing import parse_target, split_authority


@pytest.mark.parametrize(
    ("authority", "host"),
    [
        ("Crm.Example.COM", "crm.example.com"),
        ("crm.example.com.:8443", "crm.example.com"),
        ("[::1]:8080", "[::1]"),
        ("[::1]", "[::1]"),
        ("crm.example.com:abc", ""),
        ("crm.example.com:80:80", ""),
        ("user@crm.example.com", ""),
        ("[::1]x", ""),
        ("", ""),
    ],
)
def test_split_authority(authority: str, host: str) -> None:
    assert split_authority(authority) == host


@pytest.mark.parametrize(
    ("raw", "host_header", "expected"),
    [
        (
            "/crm/eware.dll/go?SID=1",
            "crm.example.com",
            ("crm.example.com", "crm.example.com", "/crm/eware.dll/go?SID=1"),
        ),  # noqa: E501
        ("http://Other.example:81/x?y", "crm.example.com", ("other.example", "Other.example:81", "/x?y")),
        ("HTTPS://crm.example.com", None, ("crm.example.com", "crm.example.com", "/")),
        ("http://crm.example.com?q=1", None, ("crm.example.com", "crm.example.com", "/?q=1")),
        ("/x", None, (None, None, "/x")),
        ("/x", "   ", (None, None, "/x")),
        ("/x", "bad host:1", (None, "bad host:1", "/x")),
    ],
)
def test_parse_target(raw: str, host_header: str | None, expected: tuple[str | None, str | None, str]) -> None:
    target = parse_target(raw, host_header)
    assert (target.host, target.authority, target.path_qs) == expected
