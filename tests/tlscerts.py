"""A throwaway certificate authority for TLS tests, made with the openssl
command: a CA certificate and a 127.0.0.1 server certificate it signed, as a
corporate proxy or an on-prem upstream with a private CA would present."""

from __future__ import annotations

import shutil
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from fakes import FakeUpstream


@dataclass(frozen=True)
class PrivateCA:
    ca: Path  # the CA certificate: what a provider's ca_bundle points at
    cert: Path  # the server's certificate (IP:127.0.0.1), signed by the CA
    key: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert, self.key)
        return context

    def upstream(self, **kwargs) -> FakeUpstream:
        """A FakeUpstream that speaks https with the CA-signed certificate."""
        return FakeUpstream(tls=self.server_context(), **kwargs)


def make_test_ca(directory: Path) -> PrivateCA:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=directory)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
            "-subj", "/CN=llmrouter test CA", "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1")
    (directory / "server.ext").write_text("subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "server.pem", "-days", "1", "-extfile", "server.ext")
    return PrivateCA(directory / "ca.pem", directory / "server.pem", directory / "server.key")
