"""Logs: one JSON object per line, the access-log fields, and no secret in any line, whatever the path."""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Iterator

import pytest

from proxy.logs import configure
from proxy.redact import escape_controls
from proxy.redact import header as redact_header
from proxy.redact import target as redact_target
from tests.conftest import StartProxy, Upstream, raw_request, site_toml
from tests.ops import WITH_ADMIN, admin_url, get

SECRETS = ("czNjcjN0LXBhc3N3b3Jk", "c2FnZS1zZWNyZXQ", "ASPSESSION-7f3a9", "SIDVALUE-12345")
CREDENTIALS = (
    b"Authorization: Basic czNjcjN0LXBhc3N3b3Jk\r\n"
    b"X-Sage-Authorization: Basic c2FnZS1zZWNyZXQ\r\n"
    b"Cookie: ASP.NET_SessionId=ASPSESSION-7f3a9; crmsess=ASPSESSION-7f3a9\r\n"
)
ACCESS_FIELDS = {"time", "level", "logger", "message", "event", "site", "client", "method", "path", "status", "bytes",
                 "bytes_in", "duration_ms", "upstream_status", "upstream_ms"}  # fmt: skip


@pytest.fixture
def log_to(capsys: pytest.CaptureFixture[str]) -> Iterator[None]:
    """Install the proxy's logging on the captured stdout/stderr, and put the test runner's back after."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    flags = logging._srcfile, logging.logThreads, logging.logProcesses, logging.logMultiprocessing  # type: ignore[attr-defined]
    yield
    root.handlers[:], level = saved
    root.setLevel(level)
    logging._srcfile, logging.logThreads, logging.logProcesses, logging.logMultiprocessing = flags  # type: ignore[attr-defined]


def json_lines(text: str) -> list[dict[str, object]]:
    lines = [line for line in text.split("\n") if line]
    return [json.loads(line) for line in lines]  # each line on its own is one JSON object


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_json_access_lines_carry_the_fields_and_no_secret(
    upstream: Upstream, start_proxy: StartProxy, capsys: pytest.CaptureFixture[str], log_to: None
) -> None:
    configure("json")
    sites = {
        "crm": site_toml(upstream),
        "down": f'hosts = ["down.example"]\nupstream = "http://127.0.0.1:{closed_port()}"\n',
    }
    proxy = await start_proxy(sites)
    target = b"/crm/eware.dll/Do?SID=SIDVALUE-12345&Act=520&Mode=1"
    for host, path in (
        (b"crm.example.com", target),  # proxied, 200
        (b"down.example", target),  # upstream refused: 502 and a warning line
        (b"unknown.example", target),  # no site: 421 and a refusal line
        (b"crm.example.com", b"/crm/eware.dll/Do?sid=SIDVALUE-12345"),  # any case
        (b"crm.example.com", b"http://user:czNjcjN0LXBhc3N3b3Jk@crm.example.com/echo?SID=SIDVALUE-12345"),
    ):
        await raw_request(proxy.port, b"GET " + path + b" HTTP/1.1\r\nHost: " + host + b"\r\n" + CREDENTIALS
                          + b"Connection: close\r\n\r\n")  # fmt: skip
    await raw_request(proxy.port, b"GET " + target + b" HTTP/1.1\r\nHost: crm.example.com\r\n" + CREDENTIALS
                      + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n")  # fmt: skip  # malformed: 400
    out, err = capsys.readouterr()
    assert err == ""
    for secret in SECRETS:
        assert secret not in out
    entries = json_lines(out)
    access = [e for e in entries if e.get("event") == "access"]
    assert [(e["site"], e["status"]) for e in access] == [
        ("crm", 200), ("down", 502), ("-", 421), ("crm", 200), ("crm", 200), ("-", 400)
    ]  # fmt: skip
    first = access[0]
    assert set(first) >= ACCESS_FIELDS
    assert first["path"] == "/crm/eware.dll/Do?SID=[redacted]&Act=520&Mode=1"
    assert first["method"] == "GET" and first["client"] == "127.0.0.1" and first["logger"] == "crm_proxy.access"
    assert first["upstream_status"] == 200 and isinstance(first["upstream_ms"], float)
    assert isinstance(first["bytes"], int) and first["bytes"] > 0 and isinstance(first["duration_ms"], float)
    assert str(first["time"]).endswith("Z")
    assert access[1]["upstream_status"] is None and access[1]["upstream_error"] == "refused"
    assert access[4]["path"] == "http://[redacted]@crm.example.com/echo?SID=[redacted]"
    assert access[5]["method"] == "-" and access[5]["path"] == "-"  # unparsed: nothing of it is trusted
    assert any(e["level"] == "warning" and "SID=[redacted]" in str(e["message"]) for e in entries)  # the 502 line


async def test_events_are_json_lines(
    upstream: Upstream, start_proxy: StartProxy, capsys: pytest.CaptureFixture[str], log_to: None
) -> None:
    import aiohttp

    configure("json")
    proxy = await start_proxy({"crm": site_toml(upstream)}, WITH_ADMIN)
    async with aiohttp.ClientSession() as session:
        await (await session.post(admin_url(proxy, "/reload"))).read()
    entries = json_lines(capsys.readouterr().out)
    start = next(e for e in entries if e.get("event") == "start")
    assert start["listeners"] == [f"127.0.0.1:{proxy.port}"] and start["sites"] == ["crm"]
    reload = next(e for e in entries if e.get("event") == "reload")
    assert reload["ok"] is True and reload["logger"] == "crm_proxy.events"


async def test_text_lines_are_one_per_record_and_escape_control_characters(
    upstream: Upstream, start_proxy: StartProxy, capsys: pytest.CaptureFixture[str], log_to: None
) -> None:
    configure("text")
    proxy = await start_proxy({"crm": site_toml(upstream)})
    await get(proxy.port, "/echo?SID=SIDVALUE-12345")
    # aiohttp's parser error message quotes the offending bytes over several lines
    await raw_request(proxy.port, b"GET /\x01evil HTTP/1.1\r\nHost: crm.example.com\r\n" + CREDENTIALS + b"\r\n")
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert all(line[:4].isdigit() for line in lines), lines  # every line starts with its own timestamp
    access = [line for line in lines if '"GET /echo' in line]
    assert len(access) == 1
    assert ' crm 127.0.0.1 "GET /echo?SID=[redacted]" 200 ' in access[0] and " upstream 200 " in access[0]
    for secret in SECRETS:
        assert secret not in err


def test_redaction_functions() -> None:
    assert redact_target("/x?SID=1&Key0=4&sid=2;SID=3#f") == "/x?SID=[redacted]&Key0=4&sid=[redacted];SID=[redacted]#f"
    assert redact_target("/x?XSID=1&SIDE=2") == "/x?XSID=1&SIDE=2"  # only the parameter named SID
    assert redact_target("/login?user=a&password=hunter2") == "/login?user=a&password=[redacted]"
    assert redact_target("https://u:p@crm/x") == "https://[redacted]@crm/x"
    assert redact_header("Authorization", "Basic abc") == "Basic [redacted]"
    assert redact_header("x-sage-authorization", "Basic abc") == "Basic [redacted]"
    assert redact_header("Cookie", "a=b") == "a=[redacted]"
    assert redact_header("User-Agent", "evil\r\nforged: line") == "evil\\r\\nforged: line"
    assert escape_controls("a\x00b\x7fc\td") == "a\\x00b\\x7fc\\td"


async def test_a_certificate_near_its_end_is_a_warning_event(
    upstream: Upstream, start_proxy: StartProxy, capsys: pytest.CaptureFixture[str], log_to: None, tmp_path
) -> None:
    import datetime

    import trustme

    configure("json")
    not_after = datetime.datetime.now(datetime.UTC).replace(microsecond=0) + datetime.timedelta(days=5, hours=1)
    cert = trustme.CA().issue_cert("crm.example.com", not_after=not_after)
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "crm.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "crm-key.pem"))
    extra = f'[tls]\ncert = "{tmp_path / "crm.pem"}"\nkey = "{tmp_path / "crm-key.pem"}"\n'
    proxy = await start_proxy({"crm": site_toml(upstream, extra)})
    lines = json_lines(capsys.readouterr().out)
    (warning,) = [e for e in lines if "expires in" in e.get("message", "")]
    assert warning["level"] == "warning"
    assert warning["message"].startswith("sites/crm.toml: tls.cert: ")
    assert "expires in 5 day(s)" in warning["message"]
    assert proxy.service.metrics.cert_expiry.values[("crm",)] == not_after.timestamp()
