"""TLS certificates for a Flower deployment on localhost (or named hosts), made with ``cryptography``.

``make_certificates(folder)`` writes a private certificate authority and a SuperLink certificate it signed:

* ``ca.crt``: the CA certificate; SuperNodes get it as ``--root-certificates`` and ``flwr`` as
  ``root-certificates`` in the connection config; a node without it cannot join;
* ``server.pem`` / ``server.key``: the SuperLink's certificate (subject alternative names: ``localhost``,
  ``127.0.0.1``, ``::1`` and any ``hosts``) and its key (mode 0600), for ``--ssl-certfile`` / ``--ssl-keyfile``
  (``ca.crt`` goes to ``--ssl-ca-certfile``).

From a shell (no ``openssl`` needed): ``python -m fedsim.flower.tls OUTDIR [--host NAME_OR_IP ...]``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedsim.files import atomic_write_bytes

LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")


@dataclass(frozen=True)
class TlsFiles:
    """Paths of the CA certificate and of the SuperLink's certificate and key."""

    ca_cert: Path
    server_cert: Path
    server_key: Path


def files_in(folder: str | Path) -> TlsFiles:
    """The ``TlsFiles`` that ``make_certificates(folder)`` writes (they need not exist yet)."""
    folder = Path(folder)
    return TlsFiles(folder / "ca.crt", folder / "server.pem", folder / "server.key")


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedsim"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _san(hosts) -> x509.SubjectAlternativeName:
    names = []
    for host in dict.fromkeys(hosts):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def _pem_key(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def make_certificates(folder: str | Path, hosts=(), days: int = 30) -> TlsFiles:
    """Write a fresh CA and a SuperLink certificate valid for ``localhost``/loopback and ``hosts``.

    Every call makes new keys (EC P-256), so two folders hold two CAs that do not trust each other.
    """
    if days < 1:
        raise ValueError(f"days = {days}: a certificate must be valid for at least 1 day")
    files = files_in(folder)
    now = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5)   # tolerate small clock skew
    until = now + dt.timedelta(days=days)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (x509.CertificateBuilder()
               .subject_name(_name("fedsim test CA")).issuer_name(_name("fedsim test CA"))
               .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now).not_valid_after(until)
               .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                            content_commitment=False, key_encipherment=False,
                                            data_encipherment=False, key_agreement=False,
                                            encipher_only=False, decipher_only=False), critical=True)
               .sign(ca_key, hashes.SHA256()))

    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(_name("fedsim superlink")).issuer_name(ca_cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(until)
            .add_extension(_san((*LOCAL_HOSTS, *hosts)), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))

    atomic_write_bytes(files.ca_cert, ca_cert.public_bytes(serialization.Encoding.PEM))
    atomic_write_bytes(files.server_cert, cert.public_bytes(serialization.Encoding.PEM))
    atomic_write_bytes(files.server_key, _pem_key(key))
    os.chmod(files.server_key, 0o600)
    return files


def main(argv=None) -> int:
    """``python -m fedsim.flower.tls OUTDIR [--host H ...] [--days D]``: write the files, print their paths."""
    parser = argparse.ArgumentParser(prog="python -m fedsim.flower.tls", description=__doc__.split("\n")[0])
    parser.add_argument("outdir", help="folder for ca.crt, server.pem and server.key")
    parser.add_argument("--host", action="append", default=[],
                        help="extra DNS name or IP address the SuperLink is reached at (repeatable)")
    parser.add_argument("--days", type=int, default=30, help="validity in days (default 30)")
    args = parser.parse_args(argv)
    if args.days < 1:
        parser.error(f"--days {args.days}: must be at least 1")
    files = make_certificates(args.outdir, hosts=args.host, days=args.days)
    for label, path in (("CA certificate", files.ca_cert), ("SuperLink certificate", files.server_cert),
                        ("SuperLink key", files.server_key)):
        print(f"{label}: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
