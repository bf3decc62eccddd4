"""The gateway's TLS certificate for PostgreSQL clients: a new self-signed one, or an
existing certificate and key (from an internal CA) checked before ``breakglass init``
installs them.

Clients connect with ``sslmode=verify-full``, so the certificate must name every host
name or address they use; that is checked here rather than discovered by an engineer.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# Always in a self-signed certificate, so local clients and the demo verify it.
LOCAL_NAMES = ("localhost", "127.0.0.1", "::1")

_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


class TlsFilesError(Exception):
    """A host name, certificate or key that cannot serve; the message says why."""


@dataclass(frozen=True)
class TlsFiles:
    cert_pem: bytes  # the gateway's certificate, then any intermediates
    key_pem: bytes  # PKCS#8, unencrypted (the gateway starts unattended)
    names: tuple[str, ...]  # DNS names and addresses in the certificate's SANs
    not_after: dt.datetime


Name = x509.DNSName | x509.IPAddress


def parse_name(text: str) -> Name:
    """A host name (``gw.example.com``, ``*.gw.example.com``) or an IP address."""
    raw = text.strip()
    try:
        return x509.IPAddress(ipaddress.ip_address(raw.strip("[]")))
    except ValueError:
        pass
    name = raw.lower().rstrip(".")
    labels = name.split(".")
    if labels and labels[0] == "*" and len(labels) > 2:
        labels = labels[1:]
    if not name or len(name) > 253 or not all(_LABEL.match(label) for label in labels):
        raise TlsFilesError(
            f"--hostname {text!r} is not a DNS name or an IP address "
            "(give the bare name clients connect to, e.g. gw.example.com or 10.0.0.5, no port)"
        )
    return x509.DNSName(name)


def _show(n: Name) -> str:
    return str(n.value)


def self_signed(hostnames: Sequence[str] = (), days: int = 365) -> TlsFiles:
    """A new P-256 key and a self-signed certificate for the local names and ``hostnames``."""
    names: list[Name] = []
    for text in (*LOCAL_NAMES, *hostnames):
        n = parse_name(text)
        if n not in names:
            names.append(n)
    key = ec.generate_private_key(ec.SECP256R1())
    common = _show(names[len(LOCAL_NAMES)] if len(names) > len(LOCAL_NAMES) else names[0])
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common[:64])])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return TlsFiles(
        cert_pem=cert.public_bytes(serialization.Encoding.PEM),
        key_pem=_pkcs8(key),
        names=tuple(_show(n) for n in names),
        not_after=cert.not_valid_after_utc,
    )


def _pkcs8(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _covers(sans: x509.SubjectAlternativeName, want: Name) -> bool:
    if isinstance(want, x509.IPAddress):
        return want.value in sans.get_values_for_type(x509.IPAddress)
    host = want.value
    for pattern in (p.lower().rstrip(".") for p in sans.get_values_for_type(x509.DNSName)):
        if pattern == host:
            return True
        if pattern.startswith("*.") and "." in host and host.split(".", 1)[1] == pattern[2:]:
            return True
    return False


def _read(path: Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise TlsFilesError(f"cannot read {what} {path}: {e.strerror}") from None


def load_existing(
    cert_path: Path,
    key_path: Path,
    hostnames: Sequence[str] = (),
    *,
    now: dt.datetime | None = None,
) -> TlsFiles:
    """Check an existing certificate (PEM, leaf first, then intermediates) and its key.

    Refuses, saying why: unreadable or non-PEM files, an encrypted key, a key that is not
    the certificate's, a certificate outside its validity period, a CA certificate, one whose
    key usage does not allow a TLS server, one with no subjectAltName, and one that does not
    name every host in ``hostnames``.
    """
    now = now or dt.datetime.now(dt.UTC)
    try:
        chain = x509.load_pem_x509_certificates(_read(cert_path, "certificate"))
    except ValueError:
        raise TlsFilesError(f"{cert_path} is not a PEM certificate (BEGIN CERTIFICATE)") from None
    leaf = chain[0]
    try:
        key = serialization.load_pem_private_key(_read(key_path, "key"), password=None)
    except TypeError:
        raise TlsFilesError(
            f"{key_path} is encrypted; the gateway starts unattended and needs an unencrypted "
            "key file (keep it mode 0600, readable only by the gateway's user)"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise TlsFilesError(f"{key_path} is not a PEM private key (BEGIN PRIVATE KEY)") from None
    der = serialization.Encoding.DER
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(der, spki) != leaf.public_key().public_bytes(der, spki):
        raise TlsFilesError(
            f"{key_path} is not the key of the certificate in {cert_path} "
            "(the first certificate in the file must be the gateway's own)"
        )
    if leaf.not_valid_after_utc <= now:
        raise TlsFilesError(f"{cert_path} expired on {leaf.not_valid_after_utc:%Y-%m-%d %H:%M} UTC")
    if leaf.not_valid_before_utc > now:
        raise TlsFilesError(
            f"{cert_path} is not valid before {leaf.not_valid_before_utc:%Y-%m-%d %H:%M} UTC"
        )
    ext = leaf.extensions
    try:
        if ext.get_extension_for_class(x509.BasicConstraints).value.ca:
            raise TlsFilesError(
                f"{cert_path} is a CA certificate; give the gateway's own certificate "
                "(clients get the CA as sslrootcert)"
            )
    except x509.ExtensionNotFound:
        pass
    try:
        eku = ext.get_extension_for_class(x509.ExtendedKeyUsage).value
        if ExtendedKeyUsageOID.SERVER_AUTH not in eku and (
            ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE not in eku
        ):
            raise TlsFilesError(
                f"{cert_path} is not usable by a TLS server: its extended key usage lacks "
                "serverAuth"
            )
    except x509.ExtensionNotFound:
        pass
    try:
        ku = ext.get_extension_for_class(x509.KeyUsage).value
        if not (ku.digital_signature or ku.key_encipherment):
            raise TlsFilesError(
                f"{cert_path} is not usable by a TLS server: its key usage allows neither "
                "digitalSignature nor keyEncipherment"
            )
    except x509.ExtensionNotFound:
        pass
    try:
        sans = ext.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise TlsFilesError(
            f"{cert_path} has no subjectAltName; clients checking the name "
            "(sslmode=verify-full) need the gateway's names there"
        ) from None
    missing = [h for h in hostnames if not _covers(sans, parse_name(h))]
    if missing:
        raise TlsFilesError(
            f"{cert_path} does not name {', '.join(missing)} (it names "
            f"{', '.join(str(v) for v in _san_values(sans)) or 'nothing usable'})"
        )
    try:  # last word: what the gateway's TLS library itself says
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
            str(cert_path), str(key_path)
        )
    except ssl.SSLError as e:
        raise TlsFilesError(f"{cert_path} and {key_path} cannot serve TLS: {e.reason}") from None
    return TlsFiles(
        cert_pem=b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain),
        key_pem=_pkcs8(key),
        names=tuple(str(v) for v in _san_values(sans)),
        not_after=leaf.not_valid_after_utc,
    )


def _san_values(sans: x509.SubjectAlternativeName) -> list:
    return [*sans.get_values_for_type(x509.DNSName), *sans.get_values_for_type(x509.IPAddress)]
