"""The gateway's TLS names: `breakglass init --hostname` and `--tls-cert/--tls-key`, checked by
real psql with sslmode=verify-full against a real gateway (hostaddr=127.0.0.1 with a
non-local host name, so libpq checks the name without DNS)."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from breakglass.proxy.tls_files import TlsFilesError, load_existing
from tests.harness import GatewayThread
from tests.test_cli import bg

pytestmark = pytest.mark.timeout(90)

NOW = dt.datetime.now(dt.UTC)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _pem_key(key, password: bytes | None = None) -> bytes:
    enc = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc)


class Ca:
    """A throwaway internal CA that issues gateway certificates."""

    def __init__(self, directory: Path, cn: str = "Test Internal CA") -> None:
        self.dir = directory
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(_name(cn))
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(NOW - dt.timedelta(days=1))
            .not_valid_after(NOW + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.pem = directory / "ca.pem"
        self.pem.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(
        self,
        stem: str,
        names: list[str] | None = ("gw.example.test",),
        *,
        eku=(ExtendedKeyUsageOID.SERVER_AUTH,),
        ca: bool = False,
        not_before: dt.datetime = NOW - dt.timedelta(hours=1),
        not_after: dt.datetime = NOW + dt.timedelta(days=10),
        password: bytes | None = None,
    ) -> tuple[Path, Path]:
        key = ec.generate_private_key(ec.SECP256R1())
        b = (
            x509.CertificateBuilder()
            .subject_name(_name(stem))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if names is not None:
            sans = []
            for n in names:
                try:
                    sans.append(x509.IPAddress(ipaddress.ip_address(n)))
                except ValueError:
                    sans.append(x509.DNSName(n))
            b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        if eku is not None:
            b = b.add_extension(x509.ExtendedKeyUsage(list(eku)), critical=False)
        cert = b.sign(self.key, hashes.SHA256())
        crt, kf = self.dir / f"{stem}.crt", self.dir / f"{stem}.key"
        crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        kf.write_bytes(_pem_key(key, password))
        return crt, kf


@pytest.fixture(scope="module")
def ca(tmp_path_factory) -> Ca:
    return Ca(tmp_path_factory.mktemp("ca"))


def psql_verify_full(gw: GatewayThread, host: str, rootcert: Path):
    """Real psql, verify-full, connecting to 127.0.0.1 but checking the certificate for ``host``."""
    env = dict(os.environ, PGPASSWORD=gw.grant(), PGCONNECT_TIMEOUT="10")
    for k in ("PGSERVICE", "PGSSLMODE", "PGSSLROOTCERT", "PGHOST", "PGHOSTADDR"):
        env.pop(k, None)
    dsn = (
        f"host={host} hostaddr=127.0.0.1 port={gw.pg_port} user=erin dbname=shop "
        f"sslmode=verify-full sslrootcert={rootcert}"
    )
    return subprocess.run(
        ["psql", "-X", "-At", dsn, "-c", "select 40 + 2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )


def _gateway_serving(tmp: Path, pg_server, init_args: list[str]) -> GatewayThread:
    """A real gateway serving the certificate and key that `breakglass init ARGS` installed."""
    made = tmp / "made"
    r = bg("init", str(made), *init_args)
    assert r.returncode == 0, r.stderr
    gw = GatewayThread(tmp / "gw", pg=pg_server)
    for f in ("gateway_tls.crt", "gateway_tls.key"):
        shutil.copyfile(made / "keys" / f, gw.dir / "keys" / f)
    return gw.start()


@pytest.fixture(scope="module")
def gw_named(pg_server, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tls-named")
    gw = _gateway_serving(tmp, pg_server, ["--hostname", "gw.example.test", "10.1.2.3"])
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def gw_ca(pg_server, tmp_path_factory, ca):
    tmp = tmp_path_factory.mktemp("tls-ca")
    crt, key = ca.issue("gw-ca-issued", ["gw.example.test", "*.db.example.test"])
    gw = _gateway_serving(
        tmp,
        pg_server,
        ["--tls-cert", str(crt), "--tls-key", str(key), "--hostname", "gw.example.test"],
    )
    yield gw
    gw.stop()


def test_self_signed_names_pass_verify_full(gw_named):
    cert = gw_named.dir / "keys/gateway_tls.crt"
    for host in ("gw.example.test", "10.1.2.3", "localhost"):
        r = psql_verify_full(gw_named, host, cert)
        assert r.returncode == 0 and r.stdout.strip() == "42", (host, r.stderr)
    r = psql_verify_full(gw_named, "other.example.test", cert)
    assert r.returncode != 0
    assert 'does not match host name "other.example.test"' in r.stderr


def test_without_hostname_a_real_name_fails_verify_full(pg_server, tmp_path):
    gw = GatewayThread(tmp_path / "gw", pg=pg_server).start()
    try:
        r = psql_verify_full(gw, "gw.example.test", gw.dir / "keys/gateway_tls.crt")
        assert r.returncode != 0 and "does not match host name" in r.stderr
    finally:
        gw.stop()


def test_ca_issued_certificate_passes_verify_full(gw_ca, ca):
    for host in ("gw.example.test", "orders.db.example.test"):
        r = psql_verify_full(gw_ca, host, ca.pem)
        assert r.returncode == 0 and r.stdout.strip() == "42", (host, r.stderr)
    # The installed key is private.
    assert (gw_ca.dir / "keys/gateway_tls.key").stat().st_mode & 0o077 == 0
    r = psql_verify_full(gw_ca, "localhost", ca.pem)  # not in this certificate
    assert r.returncode != 0 and "does not match host name" in r.stderr
    # A client trusting only some other CA refuses the gateway.
    (ca.dir / "other").mkdir(exist_ok=True)
    r = psql_verify_full(gw_ca, "gw.example.test", Ca(ca.dir / "other", "Another CA").pem)
    assert r.returncode != 0 and "certificate verify failed" in r.stderr


def _refusal(ca: Ca, case: str) -> tuple[Path, Path, list[str]]:
    if case == "wrong key":
        crt, _ = ca.issue("wk-a")
        _, key = ca.issue("wk-b")
        return crt, key, []
    if case == "expired":
        return (
            *ca.issue(
                "exp", not_before=NOW - dt.timedelta(days=3), not_after=NOW - dt.timedelta(days=1)
            ),
            [],
        )
    if case == "not yet valid":
        return (*ca.issue("nyv", not_before=NOW + dt.timedelta(days=1)), [])
    if case == "CA certificate":
        return (*ca.issue("isca", ca=True), [])
    if case == "client-only":
        return (*ca.issue("cli", eku=(ExtendedKeyUsageOID.CLIENT_AUTH,)), [])
    if case == "no SAN":
        return (*ca.issue("nosan", None), [])
    if case == "name missing":
        return (*ca.issue("nm"), ["gw.example.test", "gw2.example.test"])
    if case == "encrypted key":
        return (*ca.issue("enc", password=b"secret-pass"), [])
    if case == "not PEM":
        crt, key = ca.issue("garbage")
        crt.write_text("hello\n")
        return crt, key, []
    raise AssertionError(case)


REFUSALS = {
    "wrong key": "is not the key of the certificate",
    "expired": "expired on",
    "not yet valid": "is not valid before",
    "CA certificate": "is a CA certificate",
    "client-only": "lacks serverAuth",
    "no SAN": "has no subjectAltName",
    "name missing": "does not name gw2.example.test",
    "encrypted key": "is encrypted",
    "not PEM": "is not a PEM certificate",
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_unusable_certificates_are_refused_with_the_reason(ca, case):
    crt, key, names = _refusal(ca, case)
    with pytest.raises(TlsFilesError, match=REFUSALS[case]):
        load_existing(crt, key, names)


def test_cli_refusals_are_one_line_and_create_nothing(ca, tmp_path):
    crt, key, _ = _refusal(ca, "client-only")
    for args, expect in (
        (["--tls-cert", str(crt), "--tls-key", str(key)], "lacks serverAuth"),
        (["--tls-cert", str(crt)], "give both --tls-cert and --tls-key"),
        (["--hostname", "gw.example.test:6432"], "is not a DNS name or an IP address"),
        (["--hostname", "https://gw.example.test"], "is not a DNS name or an IP address"),
    ):
        r = bg("init", str(tmp_path / "w"), *args)
        assert r.returncode == 1, args
        assert expect in r.stderr and "Traceback" not in r.stderr, r.stderr
        assert not (tmp_path / "w").exists()


def test_init_json_lists_the_certificate_names(tmp_path):
    import json

    r = bg("init", str(tmp_path / "w"), "--hostname", "GW.Example.Test.", "2001:db8::7", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["tls_names"] == ["localhost", "127.0.0.1", "::1", "gw.example.test", "2001:db8::7"]
    cert = x509.load_pem_x509_certificate((tmp_path / "w/keys/gateway_tls.crt").read_bytes())
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in eku
