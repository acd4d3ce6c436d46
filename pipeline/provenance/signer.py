"""The signer: sign an image's claim into it, in memory, and read it back.

c2pa settings are scoped per instance: each Signer holds its own `c2pa.Context` objects
(thumbnails, trust anchors, network off) built with `Context.from_dict`; the deprecated
process-global `c2pa.load_settings` is never used (c2pa 0.38 Reader/Builder ignore it).
Key material never appears in a message, a repr, a log line or a pickle: a signer pickles
only where its keys come from, and reads them again where it lands.
"""

from __future__ import annotations

import hashlib
import io
import os
import socket
import sys
from typing import TYPE_CHECKING, Any

from pipeline.errors import SignerError
from pipeline.provenance.claim import Claim, build_manifest, input_ingredients, parent_ingredient
from pipeline.provenance.demo_ca import demo_credentials
from pipeline.provenance.keys import load_chain, load_key, public_der, read_file, read_secret, redact
from pipeline.provenance.readback import UNTRUSTED, Verification, read_manifest, verify_settings
from pipeline.spec.limits import CHOICES
from pipeline.spec.vocabulary import T2I

if TYPE_CHECKING:
    from collections.abc import Callable

    from pipeline.spec.config import SignerSection

ALGORITHMS = CHOICES["algorithm"]  # the job spec's vocabulary: one list


def sign_settings(thumbnail: bool) -> dict[str, Any]:
    """The builder's c2pa settings."""
    # Thumbnails cost ~30x the signing time. verify_after_sign is off because the pipeline
    # reads every asset back with `verify` anyway; doing it twice would double the cost.
    return {"builder": {"thumbnail": {"enabled": thumbnail}},
            "verify": {"verify_after_sign": False}}


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
        chain = load_chain(cert_chain_pem, "cert_chain")
        load_key(private_key_pem, "private_key")
        if trust_anchors_pem:
            load_chain(trust_anchors_pem, "trust_anchors")
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
        extra = read_file(section.trust_anchors, "trust_anchors") if section.trust_anchors else b""
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
            chain, chain_src = read_secret(section.cert_chain, section.cert_chain_env,
                                            "cert_chain")
            key, key_src = read_secret(section.private_key, section.private_key_env,
                                        "private_key")
            anchors = extra or None
        else:
            raise SignerError(f"[signer].mode must be 'demo' or 'files', got {section.mode!r}")
        load_chain(chain, chain_src)  # name the file or variable when it is unreadable
        load_key(key, key_src)
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
                                c2pa.Context.from_dict(sign_settings(self.thumbnail)),
                                c2pa.Context.from_dict(verify_settings(self.trust_anchors_pem)))
            except c2pa.C2paError as e:
                raise SignerError(f"c2pa rejected the signing credentials: {redact(e)}") from None
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
                if (ingredient := parent_ingredient(claim)) is not None:
                    builder.add_ingredient(ingredient, claim.parent_mime, io.BytesIO(claim.parent))
                for definition, steering in input_ingredients(claim):
                    builder.add_ingredient(definition, steering.mime, io.BytesIO(steering.data))
                builder.sign(signer, mime, io.BytesIO(data), out)
        except c2pa.C2paError as e:
            raise SignerError(f"signing a {mime} asset failed: {redact(e)}") from None
        return out.getvalue()

    def verify(self, data: bytes, mime: str) -> Verification:
        """Read back `data` and validate it against this signer's trust anchors."""
        return read_manifest(self._handles()[3], data, mime)

    def self_test(self, fmt: str) -> None:
        """Sign and verify a tiny image in the job's output format ([output].format), so a bad key
        or chain, or a format c2pa cannot sign, or a timestamp authority not trusted ([signer].tsa_url),
        stops the job before any GPU work."""
        import numpy as np

        from pipeline.storage.write import encode_image

        cert = load_chain(self._chain, "cert_chain")[0]
        key = load_key(self._key, "private_key")
        if public_der(cert.public_key()) != public_der(key.public_key()):
            raise SignerError("signer self-test: the private key does not match the signing "
                              "certificate (the first certificate of the chain)")
        data, mime = encode_image(np.full((8, 8, 3), (200, 120, 40), np.uint8), fmt)
        claim = Claim(title=f"self-test.{fmt}", model="self-test", model_revision=None, seed=0,
                      steps=0, guidance_scale=0.0, prompt_sha256="0" * 64, mode=T2I,
                      item_id="self-test", software_agent="asset-pipeline self-test")
        try:
            result = self.verify(self.sign(data, mime, claim), mime)
        except SignerError as e:
            raise SignerError(f"signer self-test ([output].format = {fmt!r}): {e}") from None
        if result.ok and self.tsa_url and not result.timestamp:
            # c2pa reports an untrusted timestamp as informational only, yet it does not do what
            # tsa_url is for: the signature still expires with its certificate.
            raise SignerError(f"signer self-test: [signer].tsa_url = {self.tsa_url!r} timestamps "
                              "signatures but its timestamp authority is not trusted, so they "
                              "would expire with the signing certificate (add the TSA's root CA "
                              "to [signer].trust_anchors)")
        if result.ok:
            return
        hint = (" (set [signer].trust_anchors to the CA that issued the certificate)"
                if UNTRUSTED in result.errors else "")
        raise SignerError(f"signer self-test: a freshly signed {mime} image does not verify: state "
                          f"{result.state}, errors {', '.join(result.errors) or 'none'}{hint}")
