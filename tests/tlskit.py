"""Test helpers for TLS: certificates made at test time, and a raw HTTPS client that shows what it got."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ipaddress
import ssl
from dataclasses import dataclass
from pathlib import Path

import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

from tests.conftest import RawResponse, read_response


def write_pem(ca: trustme.CA, directory: Path, name: str, *hosts: str, **kwargs: object) -> tuple[Path, Path]:
    """A CA-issued leaf for `hosts`, written as full-chain PEM + key; returns (cert, key)."""
    leaf = ca.issue_cert(*hosts, **kwargs)  # type: ignore[arg-type]
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / f"{name}.pem", directory / f"{name}-key.pem"
    cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    key.write_bytes(leaf.private_key_pem.bytes())
    return cert, key


def make_cert(
    hosts: tuple[str, ...], *, issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None = None,
    days: int = 90, start_days_ago: int = 1,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:  # fmt: skip
    """A leaf made with `cryptography` (non-critical SAN, as public CAs issue them); self-signed without `issuer`."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])])
    now = dt.datetime.now(dt.UTC)
    sans: list[x509.GeneralName] = []
    for host in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer[0].subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=start_days_ago))
        .not_valid_after(now + dt.timedelta(days=days) - dt.timedelta(days=start_days_ago))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    )
    builder = builder.add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    if issuer is not None:  # strict verifiers (sslyze's, browsers') want the chain linked by key identifiers
        aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer[1].public_key())
        builder = builder.add_extension(aki, critical=False)
    signer = issuer[1] if issuer else key
    return builder.sign(signer, hashes.SHA256()), key


def write_cert(
    directory: Path, name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey, *chain: x509.Certificate
) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / f"{name}.pem", directory / f"{name}-key.pem"
    cert_path.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (cert, *chain)))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


def write_pfx(ca: trustme.CA, directory: Path, name: str, password: bytes | None, *hosts: str) -> Path:
    """The PKCS#12 file IIS would export for a CA-issued leaf."""
    leaf = ca.issue_cert(*hosts)
    cert = x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes())
    key = serialization.load_pem_private_key(leaf.private_key_pem.bytes(), None)
    encryption = serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    data = pkcs12.serialize_key_and_certificates(name.encode(), key, cert, None, encryption)  # type: ignore[arg-type]
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.pfx"
    path.write_bytes(data)
    return path


def ca_subject(ca: trustme.CA) -> x509.Name:
    return x509.load_pem_x509_certificate(ca.cert_pem.bytes()).subject


def client_context(ca: trustme.CA | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context()
    if ca is not None:
        ca.configure_trust(context)
    return context


def any_cert_context() -> ssl.SSLContext:
    """A client that accepts whatever it is shown, to look at the certificate."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


@dataclass
class TlsExchange:
    certificate: x509.Certificate
    version: str
    cipher: str
    response: RawResponse

    @property
    def names(self) -> list[str]:
        san = self.certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        return [str(n) for n in san.get_values_for_type(x509.DNSName)] + [
            str(ip) for ip in san.get_values_for_type(x509.IPAddress)
        ]


class TlsConnection:
    """One TLS connection kept open, for several requests (keep-alive)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int, sni: str | None, context: ssl.SSLContext | None = None) -> TlsConnection:
        context = context or any_cert_context()
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname=sni or "")
        return cls(reader, writer)

    @property
    def certificate(self) -> x509.Certificate:
        der = self.writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        return x509.load_der_x509_certificate(der)

    async def request(self, data: bytes, timeout: float = 5.0) -> RawResponse:
        self.writer.write(data)
        await self.writer.drain()
        return await read_response(self.reader, timeout)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await self.writer.wait_closed()


async def tls_get(
    port: int, sni: str | None, host: str | None = None, path: str = "/headers",
    context: ssl.SSLContext | None = None,
) -> TlsExchange:  # fmt: skip
    """One request on a fresh TLS connection; `sni=None` sends no server name."""
    connection = await TlsConnection.open(port, sni, context)
    try:
        ssl_object = connection.writer.get_extra_info("ssl_object")
        host_line = f"Host: {host or sni}\r\n" if (host or sni) else ""
        response = await connection.request(f"GET {path} HTTP/1.1\r\n{host_line}Connection: close\r\n\r\n".encode())
        return TlsExchange(connection.certificate, ssl_object.version(), ssl_object.cipher()[0], response)
    finally:
        await connection.close()


HTTPS_ONLY = """
[listen]
https = ["127.0.0.1:0"]
http = []
plain = []
[log]
format = "text"
"""
