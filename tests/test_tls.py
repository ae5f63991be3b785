"""TLS termination over real sockets: SNI per site, default certificate, policy, PEM/PFX, checks, HSTS, upstream TLS."""

from __future__ import annotations

import logging
import ssl
import textwrap
from pathlib import Path

import pytest
import trustme
from aiohttp import web

from proxy.config import ConfigError, load_config
from proxy.standin import make_app
from proxy.tls import INTERMEDIATE_CIPHERS
from tests.conftest import StartProxy, Upstream, raw_request, write_config
from tests.tlskit import HTTPS_ONLY, TlsConnection, make_cert, tls_get, write_cert, write_pem, write_pfx


def with_default(cert: Path, key: Path, extra: str = "") -> str:
    return HTTPS_ONLY + f'[tls]\ncert = "{cert}"\nkey = "{key}"\n' + textwrap.dedent(extra)


def tls_site(upstream: Upstream, hosts: list[str], cert: Path | None = None, key: Path | None = None, extra: str = ""):
    text = f"hosts = {hosts!r}\nupstream = {upstream.origin!r}\n".replace("'", '"')
    if cert is not None:
        text += f'[tls]\ncert = "{cert}"\nkey = "{key}"\n'
    return text + textwrap.dedent(extra)


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def certs(tmp_path: Path) -> Path:
    return tmp_path / "certs"


async def test_sni_picks_each_sites_certificate(
    upstream: Upstream, start_proxy: StartProxy, ca: trustme.CA, certs: Path
) -> None:
    a = write_pem(ca, certs, "a", "a.test")
    b = write_pem(ca, certs, "b", "b.test", "*.b.test")
    proxy = await start_proxy(
        {"a": tls_site(upstream, ["a.test"], *a), "b": tls_site(upstream, ["b.test", "x.b.test"], *b)}, HTTPS_ONLY
    )
    port = proxy.service.ports("https")[0]
    trust = ssl.create_default_context()
    ca.configure_trust(trust)
    for name, expected in (("a.test", ["a.test"]), ("b.test", ["b.test", "*.b.test"]), ("x.b.test", None)):
        got = await tls_get(port, name, context=trust)  # verified: chain and host name
        assert got.names == (expected or ["b.test", "*.b.test"])
        assert got.response.status == 200
        assert got.response.get_all("Strict-Transport-Security") == ["max-age=31536000"]
        assert got.response.get_all("X-Frame-Options") == ["SAMEORIGIN"]
    # the upstream is told the request came over HTTPS
    assert upstream.recorded[-1].header("X-Forwarded-Proto") == ["https"]


async def test_no_sni_gets_the_default_certificate_and_421_for_a_site_with_its_own(
    upstream: Upstream, start_proxy: StartProxy, ca: trustme.CA, certs: Path
) -> None:
    default = write_pem(ca, certs, "default", "default.test", "127.0.0.1")
    a = write_pem(ca, certs, "a", "a.test")
    sites = {"a": tls_site(upstream, ["a.test"], *a), "ip": tls_site(upstream, ["127.0.0.1", "plain.test"])}
    proxy = await start_proxy(sites, with_default(*default))
    port = proxy.service.ports("https")[0]

    got = await tls_get(port, None, host="a.test")
    assert got.names == ["default.test", "127.0.0.1"]
    assert got.response.status == 421
    assert got.response.get_all("X-Frame-Options") == ["DENY"]
    assert got.response.get_all("X-Content-Type-Options") == ["nosniff"]
    assert got.response.get_all("Strict-Transport-Security") == []
    assert got.response.get_all("Server") == []

    got = await tls_get(port, "unknown.test", host="a.test")  # an unknown SNI name: the default, then 421
    assert got.names == ["default.test", "127.0.0.1"] and got.response.status == 421
    got = await tls_get(port, "a.test", host="unknown.test")  # the right certificate, an unknown host
    assert got.names == ["a.test"] and got.response.status == 421

    # an IP address sends no SNI: the site that lists it is served with the default certificate
    got = await tls_get(port, None, host="127.0.0.1")
    assert got.response.status == 200


async def test_without_a_default_certificate_unknown_names_are_refused_at_the_handshake(
    upstream: Upstream, start_proxy: StartProxy, ca: trustme.CA, certs: Path
) -> None:
    a = write_pem(ca, certs, "a", "a.test")
    proxy = await start_proxy({"a": tls_site(upstream, ["a.test"], *a)}, HTTPS_ONLY)
    port = proxy.service.ports("https")[0]
    for sni in (None, "other.test"):
        # the callback answers unrecognized_name; asyncio closes the connection before that alert is flushed
        with pytest.raises((ssl.SSLError, ConnectionError)):
            await tls_get(port, sni, host="a.test")


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion:DeprecationWarning")
async def test_tls_policy_is_mozilla_intermediate(
    upstream: Upstream, start_proxy: StartProxy, ca: trustme.CA, certs: Path
) -> None:
    a = write_pem(ca, certs, "a", "a.test")
    proxy = await start_proxy({"a": tls_site(upstream, ["a.test"], *a)}, HTTPS_ONLY)
    port = proxy.service.ports("https")[0]

    got = await tls_get(port, "a.test")
    assert got.version == "TLSv1.3"

    tls12 = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    tls12.check_hostname, tls12.verify_mode = False, ssl.CERT_NONE
    tls12.maximum_version = ssl.TLSVersion.TLSv1_2
    got = await tls_get(port, "a.test", context=tls12)
    assert got.version == "TLSv1.2" and got.cipher in INTERMEDIATE_CIPHERS.split(":")

    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.check_hostname, old.verify_mode = False, ssl.CERT_NONE
    old.set_ciphers("DEFAULT:@SECLEVEL=0")  # let this client really offer TLS 1.1
    old.minimum_version = old.maximum_version = ssl.TLSVersion.TLSv1_1
    with pytest.raises((ssl.SSLError, ConnectionError)):  # asyncio closes before flushing the alert
        await tls_get(port, "a.test", context=old)

    cbc = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    cbc.check_hostname, cbc.verify_mode = False, ssl.CERT_NONE
    cbc.maximum_version = ssl.TLSVersion.TLSv1_2
    cbc.set_ciphers("ECDHE-ECDSA-AES128-SHA256:ECDHE-ECDSA-AES128-SHA")  # CBC: not in Mozilla intermediate
    with pytest.raises((ssl.SSLError, ConnectionError)):
        await tls_get(port, "a.test", context=cbc)


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion:DeprecationWarning")
async def test_tls_1_1_is_what_the_client_really_offered(tmp_path: Path) -> None:
    """Guard for the test above: the same client does reach a server that allows TLS 1.1."""
    ca = trustme.CA()
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.set_ciphers("DEFAULT:@SECLEVEL=0")
    server.minimum_version = ssl.TLSVersion.TLSv1
    ca.issue_cert("a.test").configure_cert(server)
    app = web.Application()

    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app.router.add_get("/headers", ok)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server)
    await site.start()
    try:
        old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        old.check_hostname, old.verify_mode = False, ssl.CERT_NONE
        old.set_ciphers("DEFAULT:@SECLEVEL=0")
        old.minimum_version = old.maximum_version = ssl.TLSVersion.TLSv1_1
        try:
            got = await tls_get(runner.addresses[0][1], "a.test", context=old)
        except ssl.SSLError as exc:  # this OpenSSL build cannot speak TLS 1.1 at all
            pytest.skip(f"the local OpenSSL refuses TLS 1.1 on both sides: {exc}")
        assert got.version == "TLSv1.1"
    finally:
        await runner.cleanup()


async def test_min_version_tls13_refuses_tls12(
    upstream: Upstream, start_proxy: StartProxy, ca: trustme.CA, certs: Path
) -> None:
    a = write_pem(ca, certs, "a", "a.test")
    proxy = await start_proxy(
        {"a": tls_site(upstream, ["a.test"], *a)}, HTTPS_ONLY + '[tls]\nmin_version = "TLSv1.3"\n'
    )
    port = proxy.service.ports("https")[0]
    tls12 = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    tls12.check_hostname, tls12.verify_mode = False, ssl.CERT_NONE
    tls12.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises((ssl.SSLError, ConnectionError)):
        await tls_get(port, "a.test", context=tls12)
    assert (await tls_get(port, "a.test")).version == "TLSv1.3"


async def test_pfx_with_password_from_the_environment(
    upstream: Upstream, start_proxy: StartProxy, ca: trustme.CA, certs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pfx = write_pfx(ca, certs, "crm", b"s3cret!", "crm.test")
    monkeypatch.setenv("CRM_PFX_PASSWORD", "s3cret!")
    site = tls_site(upstream, ["crm.test"], extra=f'[tls]\npfx = "{pfx}"\npfx_password_env = "CRM_PFX_PASSWORD"\n')
    proxy = await start_proxy({"crm": site}, HTTPS_ONLY)
    trust = ssl.create_default_context()
    ca.configure_trust(trust)
    got = await tls_get(proxy.service.ports("https")[0], "crm.test", context=trust)
    assert got.names == ["crm.test"] and got.response.status == 200


async def test_pfx_without_a_password(upstream: Upstream, start_proxy: StartProxy, ca: trustme.CA, certs: Path) -> None:
    pfx = write_pfx(ca, certs, "open", None, "open.test")
    proxy = await start_proxy({"crm": tls_site(upstream, ["open.test"], extra=f'[tls]\npfx = "{pfx}"\n')}, HTTPS_ONLY)
    got = await tls_get(proxy.service.ports("https")[0], "open.test")
    assert got.names == ["open.test"] and got.response.status == 200


def test_hsts_withheld_when_the_default_certificate_does_not_cover_a_site(
    tmp_path: Path, ca: trustme.CA, certs: Path
) -> None:
    default = write_pem(ca, certs, "default", "default.test")
    site = 'hosts = ["nocert.test"]\nupstream = "http://127.0.0.1:9"\n'
    config = load_config(write_config(tmp_path / "config", with_default(*default), {"nocert": site}))
    assert (
        "sites/nocert.toml: hsts: Strict-Transport-Security withheld: the certificate for 'nocert.test' (proxy.toml)"
        " does not cover it (hsts.force = true sends it anyway)" in config.warnings
    )
    assert config.sites[0].policy.hsts is None
    # behind a balancer (plain listeners only) the guard does not apply
    plain = with_default(*default).replace('https = ["127.0.0.1:0"]', "https = []")
    config = load_config(write_config(tmp_path / "plain", plain, {"nocert": site}))
    assert config.sites[0].policy.hsts == "max-age=31536000" and config.warnings == ()


def test_preload_needs_a_year_and_subdomains_and_max_age_zero_is_always_sent(tmp_path: Path) -> None:
    site = 'hosts = ["a.test"]\nupstream = "http://127.0.0.1:9"\n[hsts]\npreload = true\nmax_age = 600\n'
    assert problems_of(write_config(tmp_path / "bad", HTTPS_ONLY, {"a": site})) == [
        "sites/a.toml: hsts.preload: the preload list requires max_age >= 31536000 and include_subdomains = true"
    ]
    kill = 'hosts = ["a.test"]\nupstream = "http://127.0.0.1:9"\n[hsts]\nmax_age = 0\n'
    config = load_config(write_config(tmp_path / "kill", HTTPS_ONLY, {"a": kill}))  # no certificate at all
    assert config.sites[0].policy.hsts == "max-age=0"


def problems_of(directory: Path) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(directory)
    return [str(p) for p in caught.value.problems]


def test_certificate_problems_are_named_by_file_and_key(
    tmp_path: Path, ca: trustme.CA, certs: Path, upstream_origin: str = "http://127.0.0.1:9"
) -> None:
    good_cert, good_key = write_pem(ca, certs, "good", "good.test")
    _, other_key = write_pem(ca, certs, "other", "other.test")
    expired = write_cert(certs, "expired", *make_cert(("old.test",), days=30, start_days_ago=60))
    pfx = write_pfx(ca, certs, "locked", b"right", "pfx.test")

    def site(hosts: str, tls: str) -> str:
        return f'hosts = {hosts}\nupstream = "{upstream_origin}"\n[tls]\n{tls}\n'

    directory = write_config(
        tmp_path / "config",
        with_default(good_cert, other_key),
        {
            "a_mismatch": site('["good.test"]', f'cert = "{good_cert}"\nkey = "{other_key}"'),
            "b_expired": site('["old.test"]', f'cert = "{expired[0]}"\nkey = "{expired[1]}"'),
            "c_uncovered": site('["crm.test"]', f'cert = "{good_cert}"\nkey = "{good_key}"'),
            "d_missing": site('["gone.test"]', 'cert = "nope.pem"\nkey = "nope-key.pem"'),
            "e_pfx": site('["pfx.test"]', f'pfx = "{pfx}"\npfx_password_env = "CRM_PROXY_TEST_UNSET_VARIABLE"'),
            "f_pfx": site('["pfx2.test"]', f'pfx = "{pfx}"'),
        },
    )
    found = problems_of(directory)
    assert "proxy.toml: tls.key: the private key does not match the certificate" in found
    assert any(p.startswith("sites/b_expired.toml: tls.cert: the certificate expired on ") for p in found)
    assert any(
        p.startswith("sites/c_uncovered.toml: tls.cert: the certificate does not cover host 'crm.test': it is for ")
        and "good.test" in p
        for p in found
    )
    assert any(p.startswith("sites/d_missing.toml: tls.cert: file not found: ") for p in found)
    assert any(p.startswith("sites/d_missing.toml: tls.key: file not found: ") for p in found)
    assert (
        "sites/e_pfx.toml: tls.pfx_password_env: environment variable CRM_PROXY_TEST_UNSET_VARIABLE is not set" in found
    )
    assert any(p.startswith("sites/f_pfx.toml: tls.pfx: cannot open ") for p in found)
    # the same broken pair declared in two files is reported in both
    assert "sites/a_mismatch.toml: tls.key: the private key does not match the certificate" in found
    assert len(found) == len(set(found))


def test_a_certificate_expiring_soon_is_a_warning(tmp_path: Path, certs: Path) -> None:
    cert, key = write_cert(certs, "soon", *make_cert(("soon.test",), days=10))
    directory = write_config(
        tmp_path / "config", HTTPS_ONLY, {"s": f'hosts = ["soon.test"]\nupstream = "http://127.0.0.1:9"\n'
                                               f'[tls]\ncert = "{cert}"\nkey = "{key}"\n'}
    )  # fmt: skip
    config = load_config(directory)
    assert any(
        w.startswith("sites/s.toml: tls.cert: the certificate expires in 8 day(s), on ") for w in config.warnings
    )


async def test_hsts_guard_withholds_it_for_a_self_signed_certificate_unless_forced(
    upstream: Upstream, start_proxy: StartProxy, certs: Path, caplog: pytest.LogCaptureFixture
) -> None:
    own = write_cert(certs, "self", *make_cert(("self.test",)))
    forced = write_cert(certs, "forced", *make_cert(("forced.test",)))
    sites = {
        "self": tls_site(upstream, ["self.test"], *own),
        "forced": tls_site(upstream, ["forced.test"], *forced, extra="[hsts]\nforce = true\n"),
    }
    with caplog.at_level(logging.WARNING, logger="crm_proxy"):
        proxy = await start_proxy(sites, HTTPS_ONLY)
    warnings = proxy.service.config.warnings
    assert (
        "sites/self.toml: hsts: Strict-Transport-Security withheld: the certificate for 'self.test' (sites/self.toml)"
        " is self-signed (hsts.force = true sends it anyway)" in warnings
    )
    assert any(
        w.startswith("sites/forced.toml: hsts.force: sending Strict-Transport-Security although ") for w in warnings
    )
    assert "Strict-Transport-Security withheld" in caplog.text  # logged at start too
    port = proxy.service.ports("https")[0]
    # /headers lets the upstream send its own HSTS: withheld means dropped, too
    path = "/headers?h=Strict-Transport-Security:max-age%3D99"
    withheld = await tls_get(port, "self.test", path=path)
    assert withheld.response.status == 200
    assert withheld.response.get_all("Strict-Transport-Security") == []
    assert withheld.response.get_all("X-Frame-Options") == ["SAMEORIGIN"]
    sent = await tls_get(port, "forced.test", path=path)
    assert sent.response.get_all("Strict-Transport-Security") == ["max-age=31536000"]


async def test_hsts_exactly_once_replacing_upstreams_and_also_on_redirects(
    upstream: Upstream, start_proxy: StartProxy, ca: trustme.CA, certs: Path
) -> None:
    a = write_pem(ca, certs, "a", "a.test")
    extra = "[hsts]\nmax_age = 63072000\ninclude_subdomains = true\npreload = true\n"
    proxy = await start_proxy({"a": tls_site(upstream, ["a.test"], *a, extra=extra)}, HTTPS_ONLY)
    port = proxy.service.ports("https")[0]
    path = "/headers?h=Strict-Transport-Security:max-age%3D1&h=Strict-Transport-Security:max-age%3D2"
    got = await tls_get(port, "a.test", path=path)
    assert got.response.get_all("Strict-Transport-Security") == ["max-age=63072000; includeSubDomains; preload"]
    redirect = await tls_get(port, "a.test", path="/")
    assert redirect.response.status == 302
    assert redirect.response.get_all("Strict-Transport-Security") == ["max-age=63072000; includeSubDomains; preload"]


async def test_set_cookie_gets_secure_over_https(
    upstream: Upstream, start_proxy: StartProxy, ca: trustme.CA, certs: Path
) -> None:
    a = write_pem(ca, certs, "a", "a.test")
    proxy = await start_proxy({"a": tls_site(upstream, ["a.test"], *a)}, HTTPS_ONLY)
    got = await tls_get(proxy.service.ports("https")[0], "a.test", path="/crm/eware.dll/go")
    cookies = got.response.get_all("Set-Cookie")
    assert cookies and all(c.endswith("; SameSite=Lax; Secure; HttpOnly") for c in cookies)


def test_shipped_config_without_certificates_passes_with_a_clear_warning() -> None:
    config = load_config(Path(__file__).parent.parent / "config")
    assert any(
        w.startswith("proxy.toml: listen.https: no certificate is configured") and "refuse every TLS handshake" in w
        for w in config.warnings
    )
    assert all(site.policy.hsts is None for site in config.sites)


async def test_https_listener_without_any_certificate_refuses_handshakes(
    upstream: Upstream, start_proxy: StartProxy
) -> None:
    proxy = await start_proxy({"a": tls_site(upstream, ["a.test"])}, HTTPS_ONLY)
    with pytest.raises((ssl.SSLError, ConnectionError)):
        await tls_get(proxy.service.ports("https")[0], "a.test")


# --- https upstreams -----------------------------------------------------------------------------------


@pytest.fixture
async def tls_upstream(ca: trustme.CA) -> Upstream:
    """The stand-in served over TLS with a certificate for iis.internal and 127.0.0.1 from the test CA."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("iis.internal", "127.0.0.1").configure_cert(context)
    runner = web.AppRunner(make_app())
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context).start()
    yield Upstream(runner, runner.addresses[0][1])
    await runner.cleanup()


def https_site(upstream: Upstream, extra: str) -> str:
    return f'hosts = ["crm.test", "127.0.0.1"]\nupstream = "https://127.0.0.1:{upstream.port}"\n' + extra


async def test_https_upstream_verified_with_the_internal_ca(
    tls_upstream: Upstream, start_proxy: StartProxy, ca: trustme.CA, tmp_path: Path
) -> None:
    ca.cert_pem.write_to_path(str(tmp_path / "internal-ca.pem"))
    proxy = await start_proxy(
        {"crm": https_site(tls_upstream, f'[upstream_tls]\nca = "{tmp_path / "internal-ca.pem"}"\n')}
    )
    answer = await raw_request(proxy.port, b"GET /headers HTTP/1.1\r\nHost: crm.test\r\nConnection: close\r\n\r\n")
    assert answer.status == 200
    # by name, when the upstream is addressed by IP: server_name is verified and sent as SNI
    extra = f'[upstream_tls]\nca = "{tmp_path / "internal-ca.pem"}"\nserver_name = "iis.internal"\n'
    proxy = await start_proxy({"crm": https_site(tls_upstream, extra)})
    answer = await raw_request(proxy.port, b"GET /headers HTTP/1.1\r\nHost: crm.test\r\nConnection: close\r\n\r\n")
    assert answer.status == 200


async def test_https_upstream_that_does_not_verify_is_a_502_with_headers_and_a_reason(
    tls_upstream: Upstream, start_proxy: StartProxy, ca: trustme.CA, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    proxy = await start_proxy({"crm": https_site(tls_upstream, "")})  # certifi's bundle: the test CA is unknown
    with caplog.at_level(logging.WARNING, logger="crm_proxy"):
        answer = await raw_request(proxy.port, b"GET /headers HTTP/1.1\r\nHost: crm.test\r\nConnection: close\r\n\r\n")
    assert answer.status == 502
    assert answer.get_all("X-Frame-Options") == ["SAMEORIGIN"]
    assert answer.get_all("X-Content-Type-Options") == ["nosniff"]
    assert "tls" in caplog.text and "CERTIFICATE_VERIFY_FAILED" in caplog.text
    assert tls_upstream.recorded == []

    # the right CA, but the name in the certificate is not the one asked for
    ca.cert_pem.write_to_path(str(tmp_path / "internal-ca.pem"))
    extra = f'[upstream_tls]\nca = "{tmp_path / "internal-ca.pem"}"\nserver_name = "wrong.internal"\n'
    proxy = await start_proxy({"crm": https_site(tls_upstream, extra)})
    answer = await raw_request(proxy.port, b"GET /headers HTTP/1.1\r\nHost: crm.test\r\nConnection: close\r\n\r\n")
    assert answer.status == 502

    # verify = false passes, with a warning at every start
    proxy = await start_proxy({"crm": https_site(tls_upstream, "[upstream_tls]\nverify = false\n")})
    answer = await raw_request(proxy.port, b"GET /headers HTTP/1.1\r\nHost: crm.test\r\nConnection: close\r\n\r\n")
    assert answer.status == 200
    assert any("upstream_tls.verify: false" in w for w in proxy.service.config.warnings)


async def test_keep_alive_on_tls(upstream: Upstream, start_proxy: StartProxy, ca: trustme.CA, certs: Path) -> None:
    a = write_pem(ca, certs, "a", "a.test")
    proxy = await start_proxy({"a": tls_site(upstream, ["a.test"], *a)}, HTTPS_ONLY)
    connection = await TlsConnection.open(proxy.service.ports("https")[0], "a.test")
    try:
        for _ in range(3):
            answer = await connection.request(b"GET /headers HTTP/1.1\r\nHost: a.test\r\n\r\n")
            assert answer.status == 200
    finally:
        await connection.close()
