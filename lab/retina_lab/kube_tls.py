"""A throw-away certificate authority and serving certificate for the lab's API servers.

kube-apiserver serves only HTTPS, and its clients rely on that: kubectl sends a bearer token only
over TLS, and in-cluster clients (``load_incluster_config``, kopf, client-go) connect to
``https://$KUBERNETES_SERVICE_HOST`` and trust the ``ca.crt`` of the projected service-account
volume.  So the API emulator (``retina_lab.kube``) and the node runner's HTTPS front for pods
(``retina_lab.noderunner.apifront``) do the same, each with a CA made for it alone.  This module is
the one place both get their certificates from.

The certificates carry what OpenSSL's strict verification (``VERIFY_X509_STRICT``, on by default in
Python 3.13's ``ssl.create_default_context`` and urllib3 2.3) demands: a subject key identifier on
the CA and an authority key identifier on the serving certificate, as kubeadm's do.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

#: Names the serving certificate is valid for: loopback and the in-cluster service names.
SERVER_NAMES = (
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
)
SERVER_IPS = ("127.0.0.1", "::1")

#: The CA signs certificates and CRLs (first line), nothing else (the rest).
# fmt: off
_CA_KEY_USAGE = x509.KeyUsage(
    digital_signature=True, key_cert_sign=True, crl_sign=True,
    content_commitment=False, key_encipherment=False, data_encipherment=False, key_agreement=False,
    encipher_only=False, decipher_only=False,
)
# fmt: on


@dataclass(frozen=True)
class ServingCerts:
    ca_cert: Path  # PEM of the CA: what clients trust (kubeconfig certificate-authority, ca.crt)
    server_cert: Path
    server_key: Path  # mode 0600

    def server_context(self) -> ssl.SSLContext:
        """A TLS server context that presents the serving certificate."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.server_cert, self.server_key)
        return context


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_serving_certs(
    directory: Path,
    ips: Sequence[str] = SERVER_IPS,
    dns_names: Sequence[str] = SERVER_NAMES,
    *,
    ca_name: str = "retina-emulator-ca",
    lifetime: datetime.timedelta = datetime.timedelta(days=7),
) -> ServingCerts:
    """Write ``ca.crt``, ``apiserver.crt`` and ``apiserver.key`` (0600) into ``directory``.

    The serving certificate is valid for ``dns_names`` and ``ips`` (its subject alternative names),
    from five minutes ago (a little clock skew between host and containers) for ``lifetime``."""
    now = datetime.datetime.now(datetime.UTC)
    not_before, not_after = now - datetime.timedelta(minutes=5), now + lifetime
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name(ca_name))
        .issuer_name(_name(ca_name))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_CA_KEY_USAGE, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    names = [x509.DNSName(n) for n in dns_names] + [x509.IPAddress(ipaddress.ip_address(a)) for a in ips]
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("kube-apiserver"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    certs = ServingCerts(directory / "ca.crt", directory / "apiserver.crt", directory / "apiserver.key")
    certs.ca_cert.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    certs.server_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    # Created 0600 rather than chmod-ed after writing: the key is never readable by others.
    fd = os.open(certs.server_key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        os.fchmod(out.fileno(), 0o600)  # a key left by an earlier run keeps its old mode otherwise
        out.write(key_pem)
    return certs
