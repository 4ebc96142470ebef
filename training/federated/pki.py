"""The federation's keys: a CA and the SuperLink's TLS certificate (TLS is on by
default), and one EC P-384 key pair per site for SuperNode authentication (the
SuperLink only admits registered public keys). Made with `cryptography`, which
Flower itself uses; the private keys are written readable by their owner only."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

VALID_DAYS = 365


@dataclass(frozen=True)
class Pki:
    folder: Path

    @property
    def ca(self) -> Path:
        return self.folder / "ca.crt"

    @property
    def server_cert(self) -> Path:
        return self.folder / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.folder / "server.key"

    def site_key(self, site: str) -> Path:
        return self.folder / "sites" / f"{site}.key"

    def site_public_key(self, site: str) -> Path:
        return self.folder / "sites" / f"{site}.pub"


def _private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _name(common: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "radfusion federation"),
            x509.NameAttribute(NameOID.COMMON_NAME, common),
        ]
    )


def make_pki(folder: Path, sites: list[str], hosts: list[str]) -> Pki:
    """A new CA, the server certificate for ``hosts`` (names or IP addresses the sites
    dial) and a key pair per site."""
    pki = Pki(folder)
    # The SuperLink's own processes (SuperExec, ServerApp) dial it on loopback, over TLS.
    hosts = list(dict.fromkeys([*hosts, "127.0.0.1", "localhost"]))
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("radfusion federation CA"))
        .issuer_name(_name("radfusion federation CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA384())
    )
    server_key = ec.generate_private_key(ec.SECP384R1())
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    server = (
        x509.CertificateBuilder()
        .subject_name(_name(hosts[0]))
        .issuer_name(ca.subject)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=VALID_DAYS))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA384())
    )
    folder.mkdir(parents=True, exist_ok=True)
    pem = serialization.Encoding.PEM
    pkcs8 = serialization.PrivateFormat.PKCS8
    plain = serialization.NoEncryption()
    pki.ca.write_bytes(ca.public_bytes(pem))
    _private(folder / "ca.key", ca_key.private_bytes(pem, pkcs8, plain))
    pki.server_cert.write_bytes(server.public_bytes(pem))
    _private(pki.server_key, server_key.private_bytes(pem, pkcs8, plain))
    for site in sites:
        add_site_key(pki, site)
    return pki


def add_site_key(pki: Pki, site: str) -> Path:
    """A site's SuperNode key pair (OpenSSH format, as flower-supernode reads it)."""
    key = ec.generate_private_key(ec.SECP384R1())
    _private(
        pki.site_key(site),
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
        ),
    )
    pki.site_public_key(site).write_bytes(
        key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    )
    return pki.site_public_key(site)
