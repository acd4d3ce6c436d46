"""C2PA provenance: build the manifest, sign in memory, read back and verify.

The only module that imports `c2pa`, and only inside functions, so `--help` stays instant.
c2pa settings are scoped per instance: each Signer holds its own `c2pa.Context` objects
(thumbnails, trust anchors, network off) built with `Context.from_dict`; the deprecated
process-global `c2pa.load_settings` is never used (c2pa 0.38 Reader/Builder ignore it).
Key material never appears in a message, a repr, a log line or a pickle.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import os
import re
import shutil
import socket
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.errors import SignerError
from pipeline.spec.config import CHOICES
from pipeline.spec.schema import MODES

if TYPE_CHECKING:
    from collections.abc import Callable

    from pipeline.spec.config import SignerSection

SOURCE_TYPE = "http://cv.iptc.org/newscodes/digitalsourcetype/"
GENERATION_LABEL = "com.asset-pipeline.generation"
# C2PA 2.x moved training-and-mining to the CAWG assertion; c2pa-rs validates it cleanly.
TRAINING_MINING_LABEL = "cawg.training-mining"
TRAINING_MINING_USES = (
    "cawg.ai_training", "cawg.ai_generative_training", "cawg.data_mining", "cawg.ai_inference",
)
ALGORITHMS = CHOICES["algorithm"]  # the job spec's vocabulary: one list
UNTRUSTED = "signingCredential.untrusted"
_PARENT_ID = "parent"
_SECRETS = re.compile(r"-----BEGIN[^-]*-----.*?(?:-----END[^-]*-----|$)|[A-Za-z0-9+/=]{40,}", re.S)


def _redact(error: BaseException) -> str:
    """An error's message with anything that looks like PEM or base64 key data removed."""
    return _SECRETS.sub("[redacted]", str(error))


# ── demo credentials ────────────────────────────────────────────────────────
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
    creds = DemoCredentials(folder / "ca.pem", folder / "chain.pem", folder / "signer.key")
    if not creds.private_key.exists():
        folder.parent.mkdir(parents=True, exist_ok=True)
        temp = Path(tempfile.mkdtemp(prefix=".tmp-demo-signer-", dir=folder.parent))
        try:
            _write_demo_files(temp)
            os.rename(temp, folder)  # fails if another worker's folder is already there
        except OSError:
            if not folder.is_dir():
                raise
        finally:
            shutil.rmtree(temp, ignore_errors=True)
    missing = [p.name for p in (creds.ca_cert, creds.cert_chain, creds.private_key)
               if not p.is_file()]
    if missing:
        raise SignerError(f"{folder}: incomplete demo credentials (missing {', '.join(missing)}); "
                          "delete the folder to make new ones")
    return creds


DEMO_SIGNER = "_demo_signer"
DEMO_FILES = ("ca.pem", "chain.pem", "signer.key")


def demo_credentials(output: Any, *, make: bool = True) -> tuple[bytes, bytes, bytes, str]:
    """(CA, chain, key PEM, where) of an output's throwaway demo signer, made once: in a local
    folder by `make_demo_credentials`; on object storage as three objects, the key created last
    and exclusively, so every actor of every node signs with the same one. `make=False` only
    reads them (an unpickled signer must sign with the driver's CA, never a new one)."""
    from pipeline.storage.store import as_output

    out = as_output(output)
    if not make:
        rels = [f"{DEMO_SIGNER}/{name}" for name in DEMO_FILES]
        if missing := [out.where(r) for r in rels if not out.exists(r)]:
            raise SignerError(f"demo credentials not found: {', '.join(missing)}")
    if out.local:
        c = make_demo_credentials(Path(out.root) / DEMO_SIGNER)
        return c.ca_cert.read_bytes(), c.cert_chain.read_bytes(), c.private_key.read_bytes(), str(c.ca_cert.parent)
    rels = [f"{DEMO_SIGNER}/{name}" for name in DEMO_FILES]
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
    (folder / "ca.pem").write_bytes(ca.public_bytes(pem))
    (folder / "chain.pem").write_bytes(ee.public_bytes(pem) + ca.public_bytes(pem))
    key = ee_key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                               serialization.NoEncryption())
    fd = os.open(folder / "signer.key", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key)


# ── claim and verification ──────────────────────────────────────────────────
@dataclass(frozen=True)
class Claim:
    """What the manifest says about one image. The prompt appears only as its hash."""

    title: str
    model: str
    model_revision: str | None
    seed: int
    steps: int
    guidance_scale: float
    prompt_sha256: str
    mode: str  # t2i | img2img | inpaint
    item_id: str
    software_agent: str  # "asset-pipeline 0.1.0"
    parent: bytes | None = field(default=None, repr=False)  # the product photo (staging)
    parent_mime: str | None = None
    parent_title: str | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if (self.mode == "t2i") != (self.parent is None):
            raise ValueError(f"mode {self.mode!r}: a parent image is needed for img2img/inpaint "
                             "and not allowed for t2i")
        if self.parent is not None and not self.parent_mime:
            raise ValueError("parent_mime is required with a parent image")

    def generation(self) -> dict[str, Any]:
        keys = ("model", "model_revision", "seed", "steps", "guidance_scale", "prompt_sha256",
                "mode", "item_id")
        # seed_str: a JavaScript reader's numbers are doubles, exact only to 2**53; seeds are 63 bits.
        return {**{k: getattr(self, k) for k in keys}, "seed_str": str(self.seed)}


@dataclass(frozen=True)
class Verification:
    state: str  # Trusted | Valid | Invalid (the reader's validation state), or Missing
    label: str | None  # active manifest label
    errors: tuple[str, ...]  # failure status codes
    generation: dict | None  # the com.asset-pipeline.generation assertion

    @property
    def ok(self) -> bool:
        return self.state in ("Trusted", "Valid") and not self.errors


def build_manifest(claim: Claim) -> dict[str, Any]:
    """The manifest definition c2pa's Builder takes for `claim`."""
    name, _, version = claim.software_agent.rpartition(" ")
    agent = {"name": name, "version": version} if name else {"name": claim.software_agent}
    if claim.parent is None:
        actions = [{"action": "c2pa.created", "softwareAgent": agent,
                    "digitalSourceType": SOURCE_TYPE + "trainedAlgorithmicMedia"}]
    else:  # staging: the product photo is opened, then edited by the model
        actions = [{"action": "c2pa.opened", "softwareAgent": agent,
                    "parameters": {"ingredientIds": [_PARENT_ID]}},
                   {"action": "c2pa.edited", "softwareAgent": agent,
                    "description": f"{claim.mode} with {claim.model}",
                    "digitalSourceType": SOURCE_TYPE + "compositeWithTrainedAlgorithmicMedia"}]
    not_allowed = {use: {"use": "notAllowed"} for use in TRAINING_MINING_USES}
    # "created": the signer itself makes these statements (C2PA 2.x created_assertions), so a
    # validator holds the signer accountable for them; without it c2pa-rs files everything but
    # the hash as gathered (information passed on from elsewhere). Ingredients stay gathered.
    return {
        "claim_generator_info": [agent],
        "title": claim.title,
        "assertions": [
            {"label": "c2pa.actions.v2", "data": {"actions": actions}, "created": True},
            {"label": TRAINING_MINING_LABEL, "data": {"entries": not_allowed}, "created": True},
            {"label": GENERATION_LABEL, "data": claim.generation(), "created": True},
        ],
    }


def _verify_settings(trust_anchors_pem: bytes | None) -> dict[str, Any]:
    # user_anchors adds to c2pa's own trust list (trust_anchors would replace it).
    settings: dict[str, Any] = {"verify": {"remote_manifest_fetch": False, "ocsp_fetch": False}}
    if trust_anchors_pem:
        settings["trust"] = {"user_anchors": trust_anchors_pem.decode("ascii", "replace")}
    return settings


def _sign_settings(thumbnail: bool) -> dict[str, Any]:
    # Thumbnails cost ~30x the signing time. verify_after_sign is off because the pipeline
    # reads every asset back with `verify` anyway; doing it twice would double the cost.
    return {"builder": {"thumbnail": {"enabled": thumbnail}},
            "verify": {"verify_after_sign": False}}


def _read(context: Any, data: bytes, mime: str) -> Verification:
    import c2pa

    try:
        reader = c2pa.Reader.try_create(mime, io.BytesIO(data), None, context)
    except c2pa.C2paError as e:
        return Verification("Invalid", None, (f"unreadable: {_redact(e)}",), None)
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
    generation = next((a.get("data") for a in manifest.get("assertions", [])
                       if a.get("label") == GENERATION_LABEL), None)
    return Verification(store.get("validation_state", "Invalid"), label, tuple(failures),
                        generation)


def verify_bytes(data: bytes, mime: str, trust_anchors_pem: bytes | None) -> Verification:
    """Read back and validate an asset's manifest, trusting `trust_anchors_pem`."""
    import c2pa

    with c2pa.Context.from_dict(_verify_settings(trust_anchors_pem)) as context:
        return _read(context, data, mime)


# ── key material ────────────────────────────────────────────────────────────
def _load_chain(pem: bytes, source: str) -> list[Any]:
    from cryptography import x509

    try:
        chain = x509.load_pem_x509_certificates(pem)
    except ValueError:
        raise SignerError(f"{source}: not a PEM certificate chain") from None
    return chain


def _load_key(pem: bytes, source: str) -> Any:
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        return load_pem_private_key(pem, password=None)
    except TypeError:
        raise SignerError(f"{source}: encrypted private keys are not supported") from None
    except Exception:
        raise SignerError(f"{source}: not a readable PEM private key") from None


def _read_file(path: str, key: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise SignerError(f"[signer].{key}: cannot read {path}: {e.strerror}") from None


def _read_secret(path: str | None, env: str | None, key: str) -> tuple[bytes, str]:
    """PEM bytes from a file, else from an environment variable; plus where they came from."""
    if path:
        return _read_file(path, key), path
    if env:
        value = os.environ.get(env, "")
        if not value.strip():
            raise SignerError(f"[signer].{key}_env: environment variable {env} is not set")
        if "\\n" in value and "\n" not in value:  # PEM pasted into one line
            value = value.replace("\\n", "\n")
        return value.encode(), f"environment variable {env}"
    raise SignerError(f"[signer].{key} or [signer].{key}_env is required when mode = 'files'")


def _public_der(key: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.public_bytes(serialization.Encoding.DER,
                            serialization.PublicFormat.SubjectPublicKeyInfo)


# ── signer ──────────────────────────────────────────────────────────────────
class Signer:
    """Signs and verifies assets with one certificate chain and key.

    Keys never travel: a signer made by `from_section` pickles only where its keys come from
    (the job's [signer] section: demo CA, file paths, names of environment variables) and reads
    them again where it is unpickled; one made directly from key bytes refuses to be pickled.
    Native c2pa handles are made on first use in each process.
    """

    def __init__(
        self,
        *,
        cert_chain_pem: bytes,
        private_key_pem: bytes,
        algorithm: str = "es256",
        tsa_url: str | None = None,
        thumbnail: bool = False,
        trust_anchors_pem: bytes | None = None,
    ) -> None:
        if algorithm not in ALGORITHMS:
            raise SignerError(f"unknown signing algorithm {algorithm!r} ({', '.join(ALGORITHMS)})")
        chain = _load_chain(cert_chain_pem, "cert_chain")
        _load_key(private_key_pem, "private_key")
        if trust_anchors_pem:
            _load_chain(trust_anchors_pem, "trust_anchors")
        self.subject = chain[0].subject.rfc4514_string()
        self.algorithm, self.tsa_url, self.thumbnail = algorithm, tsa_url, thumbnail
        self.trust_anchors_pem = trust_anchors_pem
        self._chain, self._key = cert_chain_pem, private_key_pem
        self._native: tuple[Any, ...] | None = None  # (pid, signer, sign ctx, verify ctx)
        self._source: tuple[SignerSection, str | None] | None = None  # set by from_section

    def __repr__(self) -> str:
        return (f"Signer(subject={self.subject!r}, algorithm={self.algorithm!r}, "
                f"tsa_url={self.tsa_url!r}, thumbnail={self.thumbnail}, "
                f"trust_anchors={'yes' if self.trust_anchors_pem else 'no'})")

    def __getstate__(self) -> dict[str, Any]:
        """Where the keys come from, never the keys: no key bytes, no PEM, no variable's value."""
        if self._source is None:
            raise SignerError("a Signer made from key bytes cannot be pickled (keys never travel): "
                              "make it with Signer.from_section, from the demo CA, key files or "
                              "environment variables, so each process reads the keys itself")
        section, output = self._source
        return {"section": section, "output": output, "subject": self.subject,
                "chain_sha256": hashlib.sha256(self._chain).hexdigest()}  # public certificates

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Read the keys again, here, from the same source; the error names what is missing."""
        try:
            signer = Signer.from_section(state["section"], state["output"], quiet=True,
                                         make_demo=False)
        except SignerError as e:
            raise SignerError(f"signer unpickled on {socket.gethostname()} (pid {os.getpid()}): "
                              f"cannot read its keys here: {e}") from None
        if hashlib.sha256(signer._chain).hexdigest() != state["chain_sha256"]:
            raise SignerError(f"signer unpickled on {socket.gethostname()}: the certificate chain "
                              f"here ({signer.subject}) is not the one it was made with "
                              f"({state['subject']}); every node must sign with the same keys")
        self.__dict__.update(signer.__dict__)

    @classmethod
    def from_section(cls, section: SignerSection, output: Any, *, quiet: bool = False,
                     warn: Callable[[str], None] | None = None, make_demo: bool = True) -> Signer:
        """The signer a job spec asks for; demo mode makes (or reuses) the output's throwaway
        CA, loudly (once: the driver warns, `quiet` workers do not). `output` is the output
        folder or prefix (a path, a URI or a store.Output); `warn` says it (default: stderr).
        `make_demo=False` only reads an existing demo CA."""
        extra = _read_file(section.trust_anchors, "trust_anchors") if section.trust_anchors else b""
        where_out = None
        if section.mode == "demo":
            from pipeline.storage.store import as_output

            out = as_output(output)
            where_out = out.uri
            ca, chain, key, where = demo_credentials(out, make=make_demo)
            if not quiet:
                msg = (f"[signer] mode = 'demo': a THROWAWAY demo CA and signing key in {where} "
                       "- never use these credentials for real assets")
                if warn:
                    warn(msg)
                else:
                    print(f"WARNING: {msg}", file=sys.stderr, flush=True)
            chain_src, key_src = f"{where}/chain.pem", f"{where}/signer.key"
            anchors = ca + extra
        elif section.mode == "files":
            chain, chain_src = _read_secret(section.cert_chain, section.cert_chain_env,
                                            "cert_chain")
            key, key_src = _read_secret(section.private_key, section.private_key_env,
                                        "private_key")
            anchors = extra or None
        else:
            raise SignerError(f"[signer].mode must be 'demo' or 'files', got {section.mode!r}")
        _load_chain(chain, chain_src)  # name the file or variable when it is unreadable
        _load_key(key, key_src)
        signer = cls(cert_chain_pem=chain, private_key_pem=key, algorithm=section.algorithm,
                     tsa_url=section.tsa_url, thumbnail=section.thumbnail, trust_anchors_pem=anchors)
        signer._source = (section, where_out)
        return signer

    def _handles(self) -> tuple[Any, ...]:
        """This process's c2pa signer and contexts (rebuilt after a fork or unpickling)."""
        import c2pa

        if self._native is None or self._native[0] != os.getpid():
            try:
                info = c2pa.C2paSignerInfo(self.algorithm.encode(), self._chain, self._key,
                                           self.tsa_url)
                self._native = (os.getpid(), c2pa.Signer.from_info(info),
                                c2pa.Context.from_dict(_sign_settings(self.thumbnail)),
                                c2pa.Context.from_dict(_verify_settings(self.trust_anchors_pem)))
            except c2pa.C2paError as e:
                raise SignerError(f"c2pa rejected the signing credentials: {_redact(e)}") from None
        return self._native

    def sign(self, data: bytes, mime: str, claim: Claim) -> bytes:
        """`data` with a signed manifest for `claim` embedded, in memory.

        Sign last: any resize or re-encode afterwards breaks the hash binding.
        """
        import c2pa

        if mime not in c2pa.Builder.get_supported_mime_types():
            raise SignerError(f"c2pa cannot embed a manifest in {mime!r} assets")
        _, signer, context, _ = self._handles()
        out = io.BytesIO()
        try:
            with c2pa.Builder(build_manifest(claim), context=context) as builder:
                if claim.parent is not None:
                    ingredient = {"title": claim.parent_title or "parent",
                                  "relationship": "parentOf", "label": _PARENT_ID}
                    builder.add_ingredient(ingredient, claim.parent_mime, io.BytesIO(claim.parent))
                builder.sign(signer, mime, io.BytesIO(data), out)
        except c2pa.C2paError as e:
            raise SignerError(f"signing a {mime} asset failed: {_redact(e)}") from None
        return out.getvalue()

    def verify(self, data: bytes, mime: str) -> Verification:
        """Read back `data` and validate it against this signer's trust anchors."""
        return _read(self._handles()[3], data, mime)

    def self_test(self, fmt: str) -> None:
        """Sign and verify a tiny image in the job's output format ([output].format), so a bad key
        or chain, or a format c2pa cannot sign, stops the job before any GPU work."""
        import numpy as np

        from pipeline.storage.write import encode_image

        cert = _load_chain(self._chain, "cert_chain")[0]
        key = _load_key(self._key, "private_key")
        if _public_der(cert.public_key()) != _public_der(key.public_key()):
            raise SignerError("signer self-test: the private key does not match the signing "
                              "certificate (the first certificate of the chain)")
        data, mime = encode_image(np.full((8, 8, 3), (200, 120, 40), np.uint8), fmt)
        claim = Claim(title=f"self-test.{fmt}", model="self-test", model_revision=None, seed=0,
                      steps=0, guidance_scale=0.0, prompt_sha256="0" * 64, mode="t2i",
                      item_id="self-test", software_agent="asset-pipeline self-test")
        try:
            result = self.verify(self.sign(data, mime, claim), mime)
        except SignerError as e:
            raise SignerError(f"signer self-test ([output].format = {fmt!r}): {e}") from None
        if result.ok:
            return
        hint = (" (set [signer].trust_anchors to the CA that issued the certificate)"
                if UNTRUSTED in result.errors else "")
        raise SignerError(f"signer self-test: a freshly signed {mime} image does not verify: state "
                          f"{result.state}, errors {', '.join(result.errors) or 'none'}{hint}")
