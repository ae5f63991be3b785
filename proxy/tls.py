"""TLS: Mozilla-intermediate server contexts chosen per SNI name, certificate checks, upstream client contexts.

Certificates are loaded and checked with `cryptography` when the configuration loads (or reloads),
so a key that does not match, an expired certificate or one that does not cover a site's hosts is a
configuration error, never a handshake failure at 3 a.m. Each listener has one base context whose
`sni_callback` looks up the *current* `Certificates` (see `listener_context`): a reload that swaps a
certificate takes effect on the next handshake while open connections keep theirs.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import shutil
import ssl
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import certifi
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12

#: Mozilla "intermediate" TLS 1.2 suites (https://ssl-config.mozilla.org/, guidelines 5.7). The DHE
#: suites are left out: no DH parameters are configured, and ECDHE serves every client they would.
#: TLS 1.3 suites are OpenSSL's defaults, which are exactly Mozilla's.
INTERMEDIATE_CIPHERS = ":".join(
    (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
    )
)
#: Python's ssl module (3.11-3.13) can set a single ECDH group only; OpenSSL's default list would also
#: offer X448 and secp521r1, which Mozilla's intermediate profile excludes. P-256 is the one every
#: TLS client supports.
ECDH_CURVE = "prime256v1"
VERSIONS = {"TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3}
EXPIRY_WARNING = timedelta(days=14)
#: Attribute set on each connection's SSLObject by the SNI callback: the name the client asked for.
SNI_ATTRIBUTE = "crm_proxy_sni"


def upstream_context(*, verify: bool, ca: Path | None) -> ssl.SSLContext | bool:
    """Verified against certifi's bundle, or the internal CA an IIS binding is signed by.

    `False` is aiohttp's spelling for "do not verify"; configuration warns loudly about it.
    """
    if not verify:
        return False
    context = ssl.create_default_context(cafile=str(ca) if ca else certifi.where())
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def server_context(min_version: str = "TLSv1.2") -> ssl.SSLContext:
    """A server context with Mozilla's intermediate policy; `min_version = "TLSv1.3"` tightens it."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = VERSIONS[min_version]
    context.maximum_version = ssl.TLSVersion.MAXIMUM_SUPPORTED
    context.set_ciphers(INTERMEDIATE_CIPHERS)
    context.set_ecdh_curve(ECDH_CURVE)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION | ssl.OP_SINGLE_ECDH_USE
    context.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE  # Mozilla: every offered suite is strong, clients choose
    context.set_alpn_protocols(["http/1.1"])
    return context


class CertificateError(Exception):
    """One problem with one certificate declaration; `key` is the configuration key to blame."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key, self.message = key, message


@dataclass(frozen=True)
class Source:
    """Where a certificate is declared: `[tls]` of proxy.toml (the default) or of a site file."""

    file: str  # label for messages: "proxy.toml", "sites/crm.toml"
    cert: Path | None = None
    key: Path | None = None
    pfx: Path | None = None
    pfx_password_env: str = ""

    @property
    def declared(self) -> bool:
        return self.cert is not None or self.pfx is not None

    @property
    def slot(self) -> str:
        """Stable identity across reloads: the same files mean the same certificate slot."""
        return f"{self.pfx}|{self.pfx_password_env}" if self.pfx is not None else f"{self.cert}|{self.key}"

    @property
    def main_key(self) -> str:
        return "tls.pfx" if self.pfx is not None else "tls.cert"


@dataclass(frozen=True)
class Loaded:
    """A checked certificate and the server context that presents it."""

    source: Source
    subject: str
    names: tuple[str, ...]  # subjectAltName DNS names, lower case
    ips: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...]
    not_after: datetime
    self_signed: bool
    fingerprint: str  # SHA-256 of the leaf, hex
    context: ssl.SSLContext = field(compare=False, repr=False)

    @property
    def slot(self) -> str:
        return self.source.slot

    def covers(self, host: str) -> bool:
        """Whether a browser would accept this certificate for `host` (RFC 6125: SAN only, one-label wildcards)."""
        literal = ip_literal(host)
        if literal is not None:
            return literal in self.ips
        if host in self.names:
            return True
        return not host.startswith("*.") and "." in host and "*." + host.split(".", 1)[1] in self.names

    def describe(self) -> str:
        shown = ", ".join([*self.names, *map(str, self.ips)]) or "no subjectAltName"
        return f"{self.subject} ({shown}), valid until {self.not_after:%Y-%m-%d %H:%M} UTC"


def ip_literal(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def _read(path: Path, key: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CertificateError(key, f"cannot read {path}: {exc.strerror or exc}") from exc


PrivateKey = Any  # cryptography's private key types


def _pem_parts(source: Source) -> tuple[list[x509.Certificate], PrivateKey]:
    assert source.cert is not None and source.key is not None
    try:
        chain = x509.load_pem_x509_certificates(_read(source.cert, "tls.cert"))
    except ValueError as exc:
        raise CertificateError("tls.cert", f"{source.cert} holds no PEM certificate: {exc}") from exc
    try:
        key = serialization.load_pem_private_key(_read(source.key, "tls.key"), password=None)
    except TypeError as exc:
        raise CertificateError("tls.key", f"{source.key} is encrypted; give an unencrypted PEM key or a pfx") from exc
    except ValueError as exc:
        raise CertificateError("tls.key", f"{source.key} holds no PEM private key: {exc}") from exc
    return chain, key


def _pfx_parts(source: Source) -> tuple[list[x509.Certificate], PrivateKey]:
    assert source.pfx is not None
    password: bytes | None = None
    if source.pfx_password_env:
        value = os.environ.get(source.pfx_password_env)
        if value is None:
            raise CertificateError("tls.pfx_password_env", f"environment variable {source.pfx_password_env} is not set")
        password = value.encode()
    data = _read(source.pfx, "tls.pfx")
    try:
        key, leaf, extra = pkcs12.load_key_and_certificates(data, password)
    except ValueError as exc:
        hint = "wrong password" if source.pfx_password_env else "no password given (set pfx_password_env)"
        raise CertificateError("tls.pfx", f"cannot open {source.pfx}: {hint}, or not a PKCS#12 file") from exc
    if key is None or leaf is None:
        raise CertificateError("tls.pfx", f"{source.pfx} must hold the certificate and its private key")
    return [leaf, *extra], key


def _public(key: Any) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _is_self_signed(cert: x509.Certificate) -> bool:
    if cert.issuer != cert.subject:
        return False
    try:
        cert.verify_directly_issued_by(cert)
    except Exception:  # InvalidSignature, unsupported algorithms: not provably self-signed
        return False
    return True


def _context_for(source: Source, chain: list[x509.Certificate], key: PrivateKey, min_version: str) -> ssl.SSLContext:
    """PEM files are loaded as they are, so a read-only container works.

    ssl loads keys from files only: for a PFX, the chain and an encrypted copy of the key go to a
    private temporary folder for a moment (a read-only container needs a tmpfs on /tmp for that).
    """
    context = server_context(min_version)
    if source.pfx is None:
        context.load_cert_chain(str(source.cert), str(source.key))
        return context
    folder = Path(tempfile.mkdtemp(prefix="crm-proxy-"))
    try:
        password = secrets.token_urlsafe(32).encode()
        pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain)
        encrypted = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(password),
        )
        (folder / "chain.pem").write_bytes(pem)
        (folder / "key.pem").write_bytes(encrypted)
        context.load_cert_chain(folder / "chain.pem", folder / "key.pem", password=password)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return context


def load(source: Source, min_version: str, now: datetime | None = None) -> Loaded:
    """Read, check and wrap one certificate; raise CertificateError naming the key to fix."""
    now = now or datetime.now(UTC)
    chain, key = _pfx_parts(source) if source.pfx is not None else _pem_parts(source)
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise CertificateError(source.main_key, "only RSA and ECDSA keys are supported")
    leaf = chain[0]
    if _public(leaf.public_key()) != _public(key.public_key()):
        others = [i for i, c in enumerate(chain[1:], 1) if _public(c.public_key()) == _public(key.public_key())]
        where = f" (it matches certificate #{others[0] + 1} in the file: put the server's first)" if others else ""
        raise CertificateError("tls.key", f"the private key does not match the certificate{where}")
    if leaf.not_valid_after_utc <= now:
        expired = f"{leaf.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"
        raise CertificateError(source.main_key, f"the certificate expired on {expired}")
    if leaf.not_valid_before_utc > now:
        raise CertificateError(
            source.main_key, f"the certificate is not valid before {leaf.not_valid_before_utc:%Y-%m-%d %H:%M} UTC"
        )
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = tuple(n.lower().rstrip(".") for n in san.get_values_for_type(x509.DNSName))
        ips = tuple(san.get_values_for_type(x509.IPAddress))
    except x509.ExtensionNotFound:
        names, ips = (), ()
    try:
        context = _context_for(source, chain, key, min_version)
    except (ssl.SSLError, ValueError, OSError) as exc:
        raise CertificateError(source.main_key, f"OpenSSL refused the certificate: {exc}") from exc
    fingerprint = leaf.fingerprint(hashes.SHA256()).hex()
    return Loaded(
        source=source,
        subject=leaf.subject.rfc4514_string() or "(empty subject)",
        names=names,
        ips=ips,
        not_after=leaf.not_valid_after_utc,
        self_signed=_is_self_signed(leaf),
        fingerprint=fingerprint,
        context=context,
    )


@dataclass(frozen=True)
class Certificates:
    """Which certificate serves which name, for one configuration snapshot."""

    default: Loaded | None = None
    by_host: Mapping[str, Loaded] = field(default_factory=dict, hash=False)

    def for_name(self, name: str | None) -> Loaded | None:
        """The certificate for an SNI name or a Host: exact, then `*.parent`, then the default."""
        if not name:
            return self.default
        name = name.lower().rstrip(".")
        if ip_literal(name) is not None:  # clients send no SNI for IP addresses (RFC 6066 §3)
            return self.default
        found = self.by_host.get(name)
        if found is None and "." in name:
            found = self.by_host.get("*." + name.split(".", 1)[1])
        return found or self.default

    def all(self) -> list[Loaded]:
        seen: dict[str, Loaded] = {}
        for loaded in [*([self.default] if self.default else []), *self.by_host.values()]:
            seen.setdefault(loaded.slot, loaded)
        return list(seen.values())

    def expiry_notes(self, now: datetime | None = None) -> list[str]:
        """Certificates expired or expiring within 14 days, for the daily log line of a long-running proxy."""
        now = now or datetime.now(UTC)
        notes = []
        for loaded in self.all():
            left = loaded.not_after - now
            where = f"{loaded.source.file}: {loaded.source.main_key}"
            if left <= timedelta(0):
                notes.append(
                    f"{where}: the certificate EXPIRED on {loaded.not_after:%Y-%m-%d %H:%M} UTC: renew and reload"
                )
            elif left < EXPIRY_WARNING:
                notes.append(
                    f"{where}: the certificate expires in {left.days} day(s), on {loaded.not_after:%Y-%m-%d} UTC"
                )
        return notes

    def misdirected(self, ssl_object: Any, host: str) -> bool:
        """True when the connection's certificate is not the one that serves `host` (answer 421).

        Compared by declaration (slot), not by certificate bytes, so connections opened before a
        reload that renewed the certificate keep working.
        """
        served = self.for_name(getattr(ssl_object, SNI_ATTRIBUTE, None))
        wanted = self.for_name(host)
        return served is None or wanted is None or served.slot != wanted.slot


Issue = tuple[str, str, str]  # (file, key, message), turned into config Problems by the caller


def load_all(
    default: Source, sites: Iterable[tuple[Source, tuple[str, ...]]], min_version: str, now: datetime | None = None
) -> tuple[Certificates, list[Issue], list[Issue]]:
    """Load every declared certificate once; return the store, the errors and the warnings."""
    now = now or datetime.now(UTC)
    errors: list[Issue] = []
    warnings: list[Issue] = []
    cache: dict[str, Loaded | CertificateError] = {}
    reported: set[tuple[str, str]] = set()

    def get(source: Source) -> Loaded | None:
        if source.slot not in cache:
            try:
                cache[source.slot] = load(source, min_version, now)
            except CertificateError as exc:
                cache[source.slot] = exc
        found = cache[source.slot]
        if (source.file, source.slot) in reported:
            return found if isinstance(found, Loaded) else None
        reported.add((source.file, source.slot))  # each file that declares a broken certificate hears of it
        if isinstance(found, CertificateError):
            errors.append((source.file, found.key, found.message))
            return None
        if found.not_after - now < EXPIRY_WARNING:
            when = f"{found.not_after:%Y-%m-%d %H:%M} UTC"
            days = (found.not_after - now).days
            warnings.append((source.file, source.main_key, f"the certificate expires in {days} day(s), on {when}"))
        return found

    default_loaded = get(default) if default.declared else None
    by_host: dict[str, Loaded] = {}
    declared_by: dict[str, Source] = {}
    for source, hosts in sites:
        if not source.declared:
            continue
        loaded = get(source)
        for host in hosts:
            if ip_literal(host) is not None:
                continue  # served with the default certificate: no SNI for IP addresses
            other = declared_by.setdefault(host, source)
            if other.slot != source.slot:
                errors.append(
                    (source.file, source.main_key, f"host {host!r} already has a certificate in {other.file}; "
                     "sites that share a host declare its certificate once, or identically")
                )  # fmt: skip
                continue
            if loaded is None:
                continue
            if not loaded.covers(host):
                message = f"the certificate does not cover host {host!r}: it is for {loaded.describe()}"
                errors.append((source.file, source.main_key, message))
                continue
            by_host[host] = loaded
    return Certificates(default_loaded, by_host), errors, warnings


def hsts_trouble(certificates: Certificates, hosts: Iterable[str]) -> str | None:
    """Why HSTS must be withheld for these hosts (Sage: only once a valid certificate is installed), or None."""
    for host in hosts:
        if ip_literal(host) is not None:
            continue  # browsers never record HSTS for an IP address (RFC 6797 §8.1.1)
        loaded = certificates.for_name(host)
        if loaded is None:
            return f"no certificate serves {host!r} over HTTPS"
        if loaded.self_signed:
            return f"the certificate for {host!r} ({loaded.source.file}) is self-signed"
        if not loaded.covers(host):
            return f"the certificate for {host!r} ({loaded.source.file}) does not cover it"
    return None


def listener_context(min_version: str, current: Callable[[], Certificates]) -> ssl.SSLContext:
    """The context a TLS listener is created with; the certificate is picked per handshake by SNI.

    Protocol versions, suites and groups stay those of this base context (OpenSSL keeps them when the
    SNI callback switches contexts), so `tls.min_version` takes effect at a restart, not a reload.
    """
    context = server_context(min_version)

    def choose(ssl_object: ssl.SSLObject, server_name: str | None, _base: ssl.SSLContext) -> int | None:
        name = server_name.lower().rstrip(".") if server_name else None
        setattr(ssl_object, SNI_ATTRIBUTE, name)
        loaded = current().for_name(name)
        if loaded is None:
            return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
        ssl_object.context = loaded.context
        return None

    context.sni_callback = choose  # type: ignore[assignment]
    return context
