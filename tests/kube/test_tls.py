"""The lab's one certificate authority (``retina_lab.kube_tls``), as TLS clients judge it.

The API emulator and the node runner's HTTPS front (what pods reach as ``kubernetes.default.svc``)
both take their certificates from it, so a real TLS handshake on loopback checks what both serve:
with OpenSSL's strict verification (Python 3.13's and urllib3 2.3's default), by every name
in-cluster clients use, and never for a name or a CA it was not made for."""

from __future__ import annotations

import socket
import ssl
import stat
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests

from retina_lab.kube import KubeEmulator
from retina_lab.kube_tls import SERVER_NAMES, ServingCerts, make_serving_certs

POD_GATEWAY = "10.241.0.1"  # an address like the node runner's pod-network gateway


@contextmanager
def tls_server(certs: ServingCerts) -> Iterator[int]:
    """A loopback TLS server that completes handshakes with ``certs.server_context()`` and
    closes; yields its port."""
    context = certs.server_context()
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            conn.settimeout(5)
            try:
                with context.wrap_socket(conn, server_side=True):
                    pass
            except (ssl.SSLError, OSError):
                conn.close()  # the client refused the certificate; that is its verdict to report

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        listener.close()


def strict_client(ca: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca))
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    return context


def handshake(port: int, context: ssl.SSLContext, server_hostname: str) -> dict:
    """The server certificate's decoded form, after a verified handshake."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=server_hostname) as tls,
    ):
        return tls.getpeercert()


@pytest.fixture
def runner_certs(tmp_path: Path) -> ServingCerts:
    """Certificates made as the node runner makes them: loopback and its pod gateway."""
    return make_serving_certs(tmp_path / "pki", ["127.0.0.1", POD_GATEWAY], SERVER_NAMES)


@pytest.mark.parametrize("name", [*SERVER_NAMES, "127.0.0.1"])
def test_strict_client_trusts_the_serving_certificate_by_every_in_cluster_name(
    runner_certs: ServingCerts, name: str
) -> None:
    with tls_server(runner_certs) as port:
        peer = handshake(port, strict_client(runner_certs.ca_cert), name)
    assert dict(x[0] for x in peer["subject"]) == {"commonName": "kube-apiserver"}
    assert ("IP Address", POD_GATEWAY) in peer["subjectAltName"]


def test_client_refuses_a_name_the_certificate_is_not_for(runner_certs: ServingCerts) -> None:
    with tls_server(runner_certs) as port, pytest.raises(ssl.SSLCertVerificationError, match="mismatch"):
        handshake(port, strict_client(runner_certs.ca_cert), "kubernetes.evil.example")


def test_client_of_another_lab_ca_refuses_the_certificate(tmp_path: Path, runner_certs: ServingCerts) -> None:
    other = make_serving_certs(tmp_path / "other")
    with tls_server(runner_certs) as port, pytest.raises(ssl.SSLCertVerificationError, match="unable to get"):
        handshake(port, strict_client(other.ca_cert), "kubernetes.default.svc")


def test_private_key_is_owner_only_even_over_an_older_readable_one(tmp_path: Path) -> None:
    key = tmp_path / "pki" / "apiserver.key"
    key.parent.mkdir()
    key.write_bytes(b"left by an earlier run")
    key.chmod(0o644)
    certs = make_serving_certs(tmp_path / "pki")
    assert stat.S_IMODE(certs.server_key.stat().st_mode) == 0o600
    assert certs.server_key.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")


def test_emulator_serves_https_a_strict_client_trusts(tmp_path: Path) -> None:
    with KubeEmulator(workdir=tmp_path) as kube:
        assert kube.url.startswith("https://127.0.0.1:")
        port = int(kube.url.rsplit(":", 1)[1])
        peer = handshake(port, strict_client(kube.ca_path), "localhost")
        assert dict(x[0] for x in peer["subject"]) == {"commonName": "kube-apiserver"}
        answer = requests.get(f"{kube.url}/version", timeout=5, verify=str(kube.ca_path))
        assert answer.status_code == 200 and "gitVersion" in answer.json()
