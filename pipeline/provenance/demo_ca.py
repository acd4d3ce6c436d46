"""The demo CA: a throwaway certificate authority and signer for `[signer] mode = 'demo'`.

Made once per output in `_demo_signer/` (a local folder, or three objects on object storage) and
reused, so resumed runs and every actor of every node sign with the same key. Never for real
assets: the driver says so loudly when it uses one.
"""

from __future__ import annotations

import datetime as dt
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import SignerError
from pipeline.storage.layout import DEMO_FILES, DEMO_SIGNER
from pipeline.storage.write import atomic_folder


@dataclass(frozen=True)
class DemoCredentials:
    ca_cert: Path
    cert_chain: Path
    private_key: Path


def make_demo_credentials(folder: Path) -> DemoCredentials:
    """A throwaway CA and signer under `folder`, reused when already there.

    Reuse keeps one signer across resumed runs. Made in a temp folder and renamed into
    place, so parallel workers racing to make it all end up with the same one.
    """
    folder = Path(folder)
    creds = DemoCredentials(*(folder / name for name in DEMO_FILES))
    if not creds.private_key.exists():
        atomic_folder(folder, _write_demo_files, mode=0o700)  # another worker's folder, if there first, stands
    missing = [p.name for p in (creds.ca_cert, creds.cert_chain, creds.private_key)
               if not p.is_file()]
    if missing:
        raise SignerError(f"{folder}: incomplete demo credentials (missing {', '.join(missing)}); "
                          "delete the folder to make new ones")
    return creds


def demo_credentials(output: Any, *, make: bool = True) -> tuple[bytes, bytes, bytes, str]:
    """(CA, chain, key PEM, where) of an output's throwaway demo signer, made once: in a local
    folder by `make_demo_credentials`; on object storage as three objects, the key created last
    and exclusively, so every actor of every node signs with the same one. `make=False` only
    reads them (an unpickled signer must sign with the driver's CA, never a new one)."""
    from pipeline.storage.store import as_output

    out = as_output(output)
    rels = [f"{DEMO_SIGNER}/{name}" for name in DEMO_FILES]
    if not make and (missing := [out.where(r) for r in rels if not out.exists(r)]):
        raise SignerError(f"demo credentials not found: {', '.join(missing)}")
    if out.local:
        c = make_demo_credentials(Path(out.root) / DEMO_SIGNER)
        return c.ca_cert.read_bytes(), c.cert_chain.read_bytes(), c.private_key.read_bytes(), str(c.ca_cert.parent)
    if not out.exists(rels[2]):
        with tempfile.TemporaryDirectory() as temp:
            _write_demo_files(Path(temp))
            made = [(Path(temp) / name).read_bytes() for name in DEMO_FILES]
        out.put(rels[0], made[0])
        out.put(rels[1], made[1])
        out.create(rels[2], made[2])  # another run's key, if one got there first: theirs stands
    try:
        ca, chain, key = (out.get(r) for r in rels)
    except FileNotFoundError:
        raise SignerError(f"{out.where(DEMO_SIGNER)}: incomplete demo credentials; delete them to make new ones") \
            from None
    return ca, chain, key, out.where(DEMO_SIGNER)


def _write_demo_files(folder: Path) -> None:
    """ES256 CA + end-entity cert with the extensions c2pa-rs checks for a claim signer."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "asset-pipeline demo"),
                          x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def usage(*, sign: bool, ca: bool) -> x509.KeyUsage:
        return x509.KeyUsage(digital_signature=sign, content_commitment=False,
                             key_encipherment=False, data_encipherment=False, key_agreement=False,
                             key_cert_sign=ca, crl_sign=ca, encipher_only=False,
                             decipher_only=False)

    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ee_key = ec.generate_private_key(ec.SECP256R1())

    def cert(subject: str, key: Any) -> x509.CertificateBuilder:
        return (x509.CertificateBuilder().subject_name(name(subject))
                .issuer_name(name("asset-pipeline demo CA (throwaway)"))
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(hours=1))
                .not_valid_after(now + dt.timedelta(days=3650))
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False))

    ca = (cert("asset-pipeline demo CA (throwaway)", ca_key)
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(usage(sign=False, ca=True), critical=True)
          .sign(ca_key, hashes.SHA256()))
    ee = (cert("asset-pipeline demo signer (throwaway)", ee_key)
          .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
          .add_extension(usage(sign=True, ca=False), critical=True)
          .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), False)
          .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                         False)
          .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    ca_name, chain_name, key_name = DEMO_FILES
    (folder / ca_name).write_bytes(ca.public_bytes(pem))
    (folder / chain_name).write_bytes(ee.public_bytes(pem) + ca.public_bytes(pem))
    key = ee_key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                               serialization.NoEncryption())
    fd = os.open(folder / key_name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key)
