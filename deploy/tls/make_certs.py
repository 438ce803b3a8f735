#!/usr/bin/env python3
"""Make a private CA and one TLS certificate per Dask role (scheduler, worker, client).

Dask's TLS is mutual: every process presents a certificate signed by the cluster's CA and
refuses peers that do not. This script writes, into OUTDIR::

    ca.pem                          the CA certificate: give it to every process
    ca-key.pem                      the CA private key: keep it off the cluster (it signs new certs)
    scheduler.pem  scheduler-key.pem
    worker.pem     worker-key.pem
    client.pem     client-key.pem   for the job / notebook that runs ``daskgmm fit``

Private keys are written with mode 0600. Nothing here is a secret until you run it: never
commit the output (deploy/.gitignore ignores the default places).

Usage::

    pip install "daskgmm[tls]"     # cryptography
    python deploy/tls/make_certs.py deploy/docker/certs --hosts scheduler,localhost,127.0.0.1

``--hosts`` go into the subjectAltName of every certificate. Dask does not check host names
(it pins trust to the cluster's own CA instead), but other TLS clients such as a proxy may.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
import sys

ROLES = ("scheduler", "worker", "client")
FILES = ("ca.pem", "ca-key.pem") + tuple(f for r in ROLES for f in (f"{r}.pem", f"{r}-key.pem"))


def _write(path: str, data: bytes, private: bool) -> None:
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def make_certs(outdir: str, hosts: list[str], days: int = 365, force: bool = False) -> dict[str, str]:
    """Write a CA and scheduler/worker/client certificates into ``outdir``; return their paths."""
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise SystemExit(
            "error: this script needs the 'cryptography' package: pip install \"daskgmm[tls]\" "
            "(or pip install cryptography) "
            "(or use the openssl commands in deploy/README.md)"
        ) from e

    os.makedirs(outdir, exist_ok=True)
    existing = [f for f in FILES if os.path.exists(os.path.join(outdir, f))]
    if existing and not force:
        raise SystemExit(f"error: {outdir!r} already holds {existing}; pass --force to replace them")

    now = datetime.datetime.now(datetime.UTC)
    start, end = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=days)

    def key_pem(key) -> bytes:
        return key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    sans: list[x509.GeneralName] = []
    for h in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            sans.append(x509.DNSName(h))

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "daskgmm cluster CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = {"ca": os.path.join(outdir, "ca.pem"), "ca-key": os.path.join(outdir, "ca-key.pem")}
    _write(paths["ca"], ca_cert.public_bytes(serialization.Encoding.PEM), private=False)
    _write(paths["ca-key"], key_pem(ca_key), private=True)

    for role in ROLES:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"dask-{role}")]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                # every Dask process both listens (server) and connects (client)
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
            )
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        paths[role] = os.path.join(outdir, f"{role}.pem")
        paths[f"{role}-key"] = os.path.join(outdir, f"{role}-key.pem")
        _write(paths[role], cert.public_bytes(serialization.Encoding.PEM), private=False)
        _write(paths[f"{role}-key"], key_pem(key), private=True)
    return paths


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("outdir", help="directory to write the certificates into (created if missing)")
    p.add_argument(
        "--hosts",
        default="scheduler,localhost,127.0.0.1",
        help="comma-separated host names / IP addresses for subjectAltName (default: %(default)s)",
    )
    p.add_argument("--days", type=int, default=365, help="validity in days (default: %(default)s)")
    p.add_argument("--force", action="store_true", help="replace certificates already in OUTDIR")
    args = p.parse_args(argv)
    if args.days < 1:
        p.error("--days must be at least 1")
    hosts = [h.strip() for h in args.hosts.split(",") if h.strip()]
    paths = make_certs(args.outdir, hosts, days=args.days, force=args.force)
    print(f"wrote {len(paths)} files to {args.outdir} (keep ca-key.pem off the cluster)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
