"""Read-back verification: read an asset's C2PA manifest and validate it against trust anchors.

Every written image is read back after signing and its validation state recorded; `verify`
re-checks a finished output the same way. The reader's settings are scoped to one
`c2pa.Context` (network off: no remote manifests, no OCSP), never process-global.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import Any

from pipeline.provenance.claim import GENERATION_LABEL, SOFT_BINDING_LABEL
from pipeline.provenance.keys import redact

UNTRUSTED = "signingCredential.untrusted"
TIMESTAMP_TRUSTED = "timeStamp.trusted"


@dataclass(frozen=True)
class Verification:
    state: str  # Trusted | Valid | Invalid (the reader's validation state), or Missing
    label: str | None  # active manifest label
    errors: tuple[str, ...]  # failure status codes
    generation: dict | None  # the com.asset-pipeline.generation assertion
    # The signature's time from a trusted RFC 3161 timestamp ([signer].tsa_url): only a trusted
    # one keeps the signature valid after its certificate expires.
    timestamp: str | None = None
    soft_binding: dict | None = None  # the c2pa.soft-binding assertion (an invisible watermark's alg and payload)

    @property
    def ok(self) -> bool:
        return self.state in ("Trusted", "Valid") and not self.errors


def verify_settings(trust_anchors_pem: bytes | None) -> dict[str, Any]:
    """The reader's c2pa settings: no network, and `trust_anchors_pem` trusted."""
    # user_anchors adds to c2pa's own trust list (trust_anchors would replace it).
    settings: dict[str, Any] = {"verify": {"remote_manifest_fetch": False, "ocsp_fetch": False}}
    if trust_anchors_pem:
        settings["trust"] = {"user_anchors": trust_anchors_pem.decode("ascii", "replace")}
    return settings


def read_manifest(context: Any, data: bytes, mime: str) -> Verification:
    """The validation state, failures and generation assertion of `data`, read with `context`."""
    import c2pa

    try:
        reader = c2pa.Reader.try_create(mime, io.BytesIO(data), None, context)
    except c2pa.C2paError as e:
        return Verification("Invalid", None, (f"unreadable: {redact(e)}",), None)
    if reader is None:
        return Verification("Missing", None, (), None)
    with reader:
        store = json.loads(reader.json())
    label = store.get("active_manifest")
    manifest = store.get("manifests", {}).get(label, {})
    results = store.get("validation_results") or {}
    deltas = [d.get("validationDeltas", {}) for d in results.get("ingredientDeltas", [])]
    failures = [f["code"] for r in [results.get("activeManifest") or {}, *deltas]
                for f in r.get("failure", [])]
    assertions = {a.get("label"): a.get("data") for a in manifest.get("assertions", [])}
    generation = assertions.get(GENERATION_LABEL)
    trusted = {s.get("code") for s in (results.get("activeManifest") or {}).get("success", [])}
    timestamp = (manifest.get("signature_info") or {}).get("time") if TIMESTAMP_TRUSTED in trusted else None
    return Verification(store.get("validation_state", "Invalid"), label, tuple(failures),
                        generation, timestamp, assertions.get(SOFT_BINDING_LABEL))


def verify_bytes(data: bytes, mime: str, trust_anchors_pem: bytes | None) -> Verification:
    """Read back and validate an asset's manifest, trusting `trust_anchors_pem`."""
    import c2pa

    with c2pa.Context.from_dict(verify_settings(trust_anchors_pem)) as context:
        return read_manifest(context, data, mime)
