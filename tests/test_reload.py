"""Reload: new handshakes get new certificates, open keep-alive connections keep working, bad files change nothing."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import trustme
from cryptography.hazmat.primitives.hashes import SHA256

from tests.conftest import StartProxy, Upstream
from tests.tlskit import HTTPS_ONLY, TlsConnection, ca_subject, tls_get, write_pem

GET = b"GET /headers HTTP/1.1\r\nHost: crm.test\r\n\r\n"


def crm_site(upstream: Upstream, certs: Path, extra: str = "") -> str:
    return (
        f'hosts = ["crm.test"]\nupstream = "{upstream.origin}"\n'
        f'[tls]\ncert = "{certs / "crm.pem"}"\nkey = "{certs / "crm-key.pem"}"\n' + textwrap.dedent(extra)
    )


async def test_reload_swaps_the_certificate_while_a_keep_alive_connection_stays_usable(
    upstream: Upstream, start_proxy: StartProxy, tmp_path: Path
) -> None:
    certs = tmp_path / "certs"
    old_ca, new_ca = trustme.CA(), trustme.CA()
    write_pem(old_ca, certs, "crm", "crm.test")
    proxy = await start_proxy({"crm": crm_site(upstream, certs)}, HTTPS_ONLY)
    port = proxy.service.ports("https")[0]

    kept = await TlsConnection.open(port, "crm.test")
    try:
        assert (await kept.request(GET)).status == 200
        old_fingerprint = kept.certificate.fingerprint(SHA256())

        write_pem(new_ca, certs, "crm", "crm.test")  # renewed in place, as certbot or win-acme do
        assert proxy.service.reload() is True

        fresh = await tls_get(port, "crm.test")
        assert fresh.certificate.issuer == ca_subject(new_ca)
        assert fresh.certificate.fingerprint(SHA256()) != old_fingerprint
        assert fresh.response.status == 200

        # the connection opened before the reload: same TLS session, same certificate, still served
        for _ in range(2):
            answer = await kept.request(GET)
            assert answer.status == 200
            assert answer.get_all("X-Frame-Options") == ["SAMEORIGIN"]
        assert kept.certificate.fingerprint(SHA256()) == old_fingerprint
    finally:
        await kept.close()


async def test_reload_applies_new_policy_to_new_requests(
    upstream: Upstream, start_proxy: StartProxy, tmp_path: Path
) -> None:
    certs = tmp_path / "certs"
    write_pem(trustme.CA(), certs, "crm", "crm.test")
    proxy = await start_proxy({"crm": crm_site(upstream, certs)}, HTTPS_ONLY)
    port = proxy.service.ports("https")[0]
    site_file = proxy.service.config.directory / "sites" / "crm.toml"
    site_file.write_text(crm_site(upstream, certs, "[hsts]\nmax_age = 600\n"))
    assert proxy.service.reload() is True
    got = await tls_get(port, "crm.test")
    assert got.response.get_all("Strict-Transport-Security") == ["max-age=600"]


async def test_a_broken_reload_keeps_the_running_configuration_and_logs_every_error(
    upstream: Upstream, start_proxy: StartProxy, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    certs = tmp_path / "certs"
    ca = trustme.CA()
    write_pem(ca, certs, "crm", "crm.test")
    proxy = await start_proxy({"crm": crm_site(upstream, certs)}, HTTPS_ONLY)
    port = proxy.service.ports("https")[0]
    before = (await tls_get(port, "crm.test")).certificate

    # a typo in the site file and in proxy.toml
    site_file = proxy.service.config.directory / "sites" / "crm.toml"
    proxy_file = proxy.service.config.directory / "proxy.toml"
    site_file.write_text(crm_site(upstream, certs, "[hsts]\nmax_agee = 5\n"))
    proxy_file.write_text(HTTPS_ONLY + "[limits]\nmax_body_bytes = -1\n")
    with caplog.at_level(logging.ERROR, logger="crm_proxy"):
        assert proxy.service.reload() is False
    assert "reload refused: sites/crm.toml: hsts.max_agee: unknown key in [hsts]" in caplog.text
    assert "reload refused: proxy.toml: limits.max_body_bytes: must be a non-negative integer" in caplog.text
    proxy_file.write_text(HTTPS_ONLY)

    # a renewed certificate for the wrong host
    write_pem(ca, certs, "crm", "other.test")
    site_file.write_text(crm_site(upstream, certs))
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="crm_proxy"):
        assert proxy.service.reload() is False
    assert "reload refused: sites/crm.toml: tls.cert: the certificate does not cover host 'crm.test'" in caplog.text

    after = await tls_get(port, "crm.test")
    assert after.certificate == before
    assert after.response.status == 200
    assert after.response.get_all("Strict-Transport-Security") == ["max-age=31536000"]

    site_file.write_text("hosts = [")  # not even TOML
    assert proxy.service.reload() is False
    assert (await tls_get(port, "crm.test")).response.status == 200


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="no SIGHUP on this platform")
async def test_sighup_reloads_certificates_of_a_running_serve(upstream: Upstream, tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    old_ca, new_ca = trustme.CA(), trustme.CA()
    write_pem(old_ca, certs, "crm", "crm.test")
    directory = tmp_path / "config"
    (directory / "sites").mkdir(parents=True)
    (directory / "proxy.toml").write_text(HTTPS_ONLY + '[admin]\nlisten = ""\n')
    (directory / "sites" / "crm.toml").write_text(crm_site(upstream, certs))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy", "serve", "--config", str(directory),
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, env=env,
    )  # fmt: skip
    try:
        assert process.stderr is not None
        line = await asyncio.wait_for(process.stderr.readline(), 20)
        while b"listening on https://" not in line:
            line = await asyncio.wait_for(process.stderr.readline(), 20)
        port = int(line.rsplit(b":", 1)[1])
        assert (await tls_get(port, "crm.test")).certificate.issuer == ca_subject(old_ca)

        write_pem(new_ca, certs, "crm", "crm.test")
        process.send_signal(signal.SIGHUP)
        while b"configuration reloaded" not in line:
            line = await asyncio.wait_for(process.stderr.readline(), 20)
        assert (await tls_get(port, "crm.test")).certificate.issuer == ca_subject(new_ca)
    finally:
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 20) == 0
