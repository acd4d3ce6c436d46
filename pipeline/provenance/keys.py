"""Key material: read a signer's certificate chain and private key, and keep them out of every
message.

Keys come from files or environment variables on each node (the demo CA writes files too). Every
error here names the file or variable, never its contents, and `redact` strips anything that
looks like PEM or base64 key data from a library's message before it is shown, logged or raised.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from pipeline.errors import SignerError

_SECRETS = re.compile(r"-----BEGIN[^-]*-----.*?(?:-----END[^-]*-----|$)|[A-Za-z0-9+/=]{40,}", re.S)


def redact(error: BaseException) -> str:
    """An error's message with anything that looks like PEM or base64 key data removed."""
    return _SECRETS.sub("[redacted]", str(error))


def load_chain(pem: bytes, source: str) -> list[Any]:
    """The certificates of a PEM chain, the signing certificate first; `source` names it in errors."""
    from cryptography import x509

    try:
        chain = x509.load_pem_x509_certificates(pem)
    except ValueError:
        raise SignerError(f"{source}: not a PEM certificate chain") from None
    return chain


def load_key(pem: bytes, source: str) -> Any:
    """An unencrypted PEM private key; `source` names it in errors."""
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        return load_pem_private_key(pem, password=None)
    except TypeError:
        raise SignerError(f"{source}: encrypted private keys are not supported") from None
    except Exception:
        raise SignerError(f"{source}: not a readable PEM private key") from None


def read_file(path: str, key: str) -> bytes:
    """The bytes of the file that `[signer].<key>` names."""
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise SignerError(f"[signer].{key}: cannot read {path}: {e.strerror}") from None


def read_secret(path: str | None, env: str | None, key: str) -> tuple[bytes, str]:
    """PEM bytes from a file, else from an environment variable; plus where they came from."""
    if path:
        return read_file(path, key), path
    if env:
        value = os.environ.get(env, "")
        if not value.strip():
            raise SignerError(f"[signer].{key}_env: environment variable {env} is not set")
        if "\\n" in value and "\n" not in value:  # PEM pasted into one line
            value = value.replace("\\n", "\n")
        return value.encode(), f"environment variable {env}"
    raise SignerError(f"[signer].{key} or [signer].{key}_env is required when mode = 'files'")


def public_der(key: Any) -> bytes:
    """A public key's DER bytes, to compare a certificate's key with a private key's."""
    from cryptography.hazmat.primitives import serialization

    return key.public_bytes(serialization.Encoding.DER,
                            serialization.PublicFormat.SubjectPublicKeyInfo)
