"""Configuration: the shipped files load; every problem is reported at once, by file and key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from proxy.cli import main
from proxy.config import ConfigError, load_config
from tests.conftest import write_config

SHIPPED = Path(__file__).resolve().parent.parent / "config"

BROKEN_PROXY = """
[listen]
plain = ["127.0.0.1:8080", "nohost"]
redirect_status = 303
[timeouts]
upstream_read = "5m"
[limts]
x = 1
[log]
format = "xml"
"""
BROKEN_SITE = r"""
hosts = ["crm.example.com"]
upstream = "ftp://iis.internal"
preserv_host = true
[headers]
profile = "strict"
remove = ["Content-Length", "Bad Name"]
[headers.set]
X-Frame-Options = "ALLOW-FROM https://a.example"
"Bad Header" = "x"
X-Content-Type-Options = "sniff"
X-Custom = "a\nb"
[headers.default]
Strict-Transport-Security = "max-age=1"
[hsts]
max_age = "1y"
[cookies]
same_site = "None"
secure = false
"""
EXPECTED = [
    'proxy.toml: listen.plain: must be "host:port" or "[ipv6]:port", got "nohost"',
    "proxy.toml: listen.redirect_status: must be one of 301, 302, 307, 308, got 303",
    'proxy.toml: timeouts.upstream_read: must be a positive number of seconds, got "5m"',
    'proxy.toml: log.format: must be one of "json", "text", got "xml"',
    'proxy.toml: limts: unknown key in the top level (did you mean "limits"?)',
    'sites/crm.toml: upstream: must be an http:// or https:// URL with a host, got "ftp://iis.internal"',
    'sites/crm.toml: headers.profile: must be one of "sage-guide", "owasp", "none", got "strict"',
    'sites/crm.toml: headers.remove: "Content-Length" frames the response body; removing it would corrupt responses',
    'sites/crm.toml: headers.remove: not a header name or a prefix like "X-AspNet*", got "Bad Name"',
    'sites/crm.toml: headers.set.X-Frame-Options: invalid value "ALLOW-FROM https://a.example": ALLOW-FROM is '
    "obsolete and ignored by current browsers; use Content-Security-Policy: frame-ancestors instead",
    "sites/crm.toml: headers.set.Bad Header: not a valid header name (RFC 9110 token: letters, digits and "
    "!#$%&'*+-.^_`|~)",
    'sites/crm.toml: headers.set.X-Content-Type-Options: invalid value "sniff": expected nosniff, got sniff',
    'sites/crm.toml: headers.set.X-Custom: invalid value "a\\nb": contains a line feed (LF)',
    "sites/crm.toml: headers.default.Strict-Transport-Security: set by the proxy itself: configure it in [hsts]",
    'sites/crm.toml: hsts.max_age: must be a non-negative integer, got "1y"',
    "sites/crm.toml: cookies.same_site: SameSite=None needs secure = true (browsers reject such cookies otherwise)",
    'sites/crm.toml: preserv_host: unknown key in the top level (did you mean "preserve_host"?)',
    'sites/noup.toml: hosts: missing: list the host names this site answers, e.g. hosts = ["crm.example.com"]',
    'sites/noup.toml: upstream: missing: the address of IIS or Tomcat, e.g. upstream = "http://iis.internal:80"',
    'sites/noup.toml: paths: each prefix must start with "/", got "sdata"',
    "sites/syntax.toml: line 2, column 10: invalid TOML: Expected '=' after a key in a key/value pair",
]


@pytest.fixture
def broken(tmp_path: Path) -> Path:
    return write_config(
        tmp_path,
        BROKEN_PROXY,
        {"crm": BROKEN_SITE, "noup": 'paths = ["sdata"]\n', "syntax": 'hosts = ["a.example"]\nupstream "http://x"\n'},
    )


def test_shipped_config_loads() -> None:
    config = load_config(SHIPPED)
    assert {site.name for site in config.sites} == {"crm", "sdata"}
    sdata = next(site for site in config.sites if site.name == "sdata")
    assert sdata.paths == ("/sdata/",)
    assert config.proxy.listen.redirect_status == 308


def test_every_problem_reported_at_once(broken: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(broken)
    assert [str(p) for p in caught.value.problems] == EXPECTED


def test_check_command_prints_problems_and_exits_1(broken: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "--config", str(broken)]) == 1
    err = capsys.readouterr().err
    assert f"has {len(EXPECTED)} problem(s)" in err
    for line in EXPECTED:
        assert f"  {line}\n" in err
    assert "Traceback" not in err


def test_check_command_prints_effective_policy(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "--config", str(SHIPPED)]) == 0
    out = capsys.readouterr().out
    assert "sites/crm.toml: crm.example.com / -> http://iis.internal" in out
    assert "  set           X-Frame-Options: SAMEORIGIN\n" in out
    assert "  default       Referrer-Policy: strict-origin-when-cross-origin\n" in out
    assert "  remove        X-Powered-By\n" in out


def test_python_dash_m_runs_the_cli() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "proxy", "check", "--config", str(SHIPPED)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "OK, 2 site(s)" in result.stdout


@pytest.mark.parametrize(
    ("sites", "expected"),
    [
        (
            {
                "a": 'hosts = ["crm.example.com"]\nupstream = "http://a"\n',
                "b": 'hosts = ["CRM.example.com"]\nupstream = "http://b"\n',
            },
            'sites/b.toml: paths: host "crm.example.com" with prefix "/" is also claimed by sites/a.toml',
        ),
        ({"a": 'hosts = []\nupstream = "http://a"\n'}, "sites/a.toml: hosts: must name at least one host"),
        (
            {"a": 'hosts = ["https://crm.example.com/"]\nupstream = "http://a"\n'},
            'sites/a.toml: hosts: not a host name (no scheme, port or path), got "https://crm.example.com/"',
        ),
        (
            {"a": 'hosts = ["a.example"]\nupstream = "http://a/crm"\n'},
            'sites/a.toml: upstream: must be an origin without path or query, got "http://a/crm"',
        ),
        (
            {"a": 'hosts = ["a.example"]\nupstream = "http://a"\n[hsts]\npreload = true\n'},
            "sites/a.toml: hsts.preload: the preload list requires max_age >= 31536000 and include_subdomains = true",
        ),
        (
            {
                "a": 'hosts = ["a.example"]\nupstream = "http://a"\n'
                '[headers.set]\nX-Frame-Options = "DENY, SAMEORIGIN"\n'
            },
            'sites/a.toml: headers.set.X-Frame-Options: invalid value "DENY, SAMEORIGIN": conflicting values DENY and '
            "SAMEORIGIN (browsers then block framing or ignore the header)",
        ),
        (
            {"a": 'hosts = ["a.example"]\nupstream = "http://a"\n[headers.set]\nX-Frame-Options = 1\n'},
            "sites/a.toml: headers.set.X-Frame-Options: must be a string, got 1",
        ),
        (
            {"a": 'hosts = ["a.example"]\nupstream = "http://a"\n[headers.default]\nReferrer-Policy = "x"\n'},
            'sites/a.toml: headers.default.Referrer-Policy: invalid value "x": expected no-referrer, '
            "no-referrer-when-downgrade, same-origin, origin, strict-origin, origin-when-cross-origin, "
            "strict-origin-when-cross-origin or unsafe-url, got x",
        ),
        ({}, "sites/: no site files (sites/*.toml): nothing to serve"),
        (
            {"a": 'hosts = ["a.example"]\nupstream = "http://a"\n[headers.set]\nContent-Encoding = "gzip"\n'},
            "sites/a.toml: headers.set.Content-Encoding: frames or describes the body; setting it would corrupt "
            "responses",
        ),
        (
            {"a": 'hosts = ["a.example"]\nupstream = "http://a"\n[upstream_tls]\nca = "x\\u0000"\n'},
            "sites/a.toml: upstream_tls.ca: must not contain a NUL character",
        ),
        (
            {"a": 'hosts = ["a.example"]\nupstream = "http://a"\n[upstream_tls]\nca = "."\n'},
            "sites/a.toml: upstream_tls.ca: not a file: {dir}/sites",
        ),
        (
            {"a": 'hosts = ["a.example"]\nupstream = "https://10.0.0.5"\n[upstream_tls]\nserver_name = "a b"\n'},
            'sites/a.toml: upstream_tls.server_name: not a host name, got "a b"',
        ),
        (
            {"a": 'hosts = ["a.example"]\nupstream = "http://u:p@iis"\n'},
            "sites/a.toml: upstream: must not hold a user name or password (the client's Authorization passes through)",
        ),
        (
            {"a": 'hosts = ["a.example"]\nupstream = "http://exa mple"\n'},
            'sites/a.toml: upstream: must be an http:// or https:// URL with a host, got "http://exa mple"',
        ),
        (
            {"a": 'hosts = ["a.example"]\nupstream = "http://a"\n[tls]\npfx_password_env = "X"\n'},
            "sites/a.toml: tls.pfx_password_env: only applies with pfx",
        ),
        (
            {
                "a": 'hosts = ["a.example"]\nupstream = "http://a"\n[hsts]\nmax_age = 0\n',
                "b": 'hosts = ["a.example"]\nupstream = "http://b"\npaths = ["/sdata/"]\n',
            },
            'sites/b.toml: hsts: host "a.example" has a different [hsts] in sites/a.toml',
        ),
    ],
)
def test_single_problems(tmp_path: Path, sites: dict[str, str], expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write_config(tmp_path, "", sites))
    assert [str(p) for p in caught.value.problems] == [expected.replace("{dir}", str(tmp_path.resolve()))]


def test_serve_on_a_busy_port_says_so_and_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proxy_toml = f'[listen]\nhttps = []\nhttp = []\nplain = ["127.0.0.1:{port}"]\n[admin]\nlisten = ""\n'
        directory = write_config(tmp_path, proxy_toml, {"a": 'hosts = ["a.example"]\nupstream = "http://a"\n'})
        assert main(["serve", "--config", str(directory)]) == 1
    err = capsys.readouterr().err
    assert f"crm-proxy: cannot listen: error while attempting to bind on address ('127.0.0.1', {port})" in err
    assert "Traceback" not in err
