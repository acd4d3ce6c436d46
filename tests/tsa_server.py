"""A timestamp authority on loopback for tests: OpenSSL's `openssl ts -reply` behind http.server.

Its certificate has what c2pa-rs checks of a TSA (crypto/cose/certificate_profile.rs): X.509 v3,
ECDSA P-256/SHA-256, issued by a CA (a self-signed CA is refused as the signer), keyUsage
digitalSignature, extendedKeyUsage timeStamping alone (critical: OpenSSL insists), and an
authority key identifier (without one: `certificate params incorrect`).
"""

from __future__ import annotations

import datetime as dt
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CONFIG = """[tsa]
default_tsa = tsa1
[tsa1]
serial = {d}/serial
signer_cert = {d}/tsa.pem
certs = {d}/ca.pem
signer_key = {d}/tsa.key
signer_digest = sha256
default_policy = 1.2.3.4.1
digests = sha256, sha384, sha512
ess_cert_id_alg = sha256
"""
PEM = serialization.Encoding.PEM


def issue(subject: str, key, issuer: str, issuer_key, *, eku=None,
          lifetime: dt.timedelta = dt.timedelta(days=30)) -> x509.Certificate:
    """A CA certificate (no `eku`), or an end-entity one for `eku` issued by a CA."""
    ca, now, public = eku is None, dt.datetime.now(dt.UTC), key.public_key()
    b = (x509.CertificateBuilder().public_key(public).serial_number(x509.random_serial_number())
         .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
         .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
         .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + lifetime)
         .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True)
         .add_extension(x509.KeyUsage(not ca, False, False, False, False, ca, ca, False, False), True)
         .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False))
    if not ca:
        b = (b.add_extension(x509.ExtendedKeyUsage([eku]), critical=True).add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), False))
    return b.sign(issuer_key, hashes.SHA256())


class LoopbackTSA:
    """Serves on a free loopback port: `url` to sign with, `ca_pem` to trust, `requests` seen
    as (path, content type, body)."""

    def __init__(self, folder: Path) -> None:
        ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
        self.ca_pem = issue("test TSA root", ca_key, "test TSA root", ca_key).public_bytes(PEM)
        cert = issue("test TSA", key, "test TSA root", ca_key, eku=ExtendedKeyUsageOID.TIME_STAMPING)
        (folder / "ca.pem").write_bytes(self.ca_pem)
        (folder / "tsa.pem").write_bytes(cert.public_bytes(PEM))
        (folder / "tsa.key").write_bytes(key.private_bytes(
            PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        (folder / "serial").write_text("01\n")
        (folder / "tsa.cnf").write_text(CONFIG.format(d=folder))
        self.requests: list[tuple[str, str | None, bytes]] = []
        requests = self.requests

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                requests.append((self.path, self.headers.get("Content-Type"), body))
                (folder / "query.tsq").write_bytes(body)
                reply = subprocess.run(["openssl", "ts", "-reply", "-config", str(folder / "tsa.cnf"),
                                        "-queryfile", str(folder / "query.tsq"), "-out", "/dev/stdout"],
                                       capture_output=True, check=True).stdout
                self.send_response(200)
                self.send_header("Content-Type", "application/timestamp-reply")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args) -> None:  # quiet
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/tsa"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
