// Validate images with an independent C2PA implementation: @trustnxt/c2pa-ts, pure TypeScript,
// sharing no code with c2pa-rs (which the pipeline signs with).
//
//   node validate.mjs [--trust ca.pem]... file...
//
// Prints a JSON array, one object per file: the validation status codes (failures, successes),
// the active claim's created and gathered assertions, the generation assertion, the ingredients
// and the signer's certificate chain. Exit status 0 whenever every file was read and judged;
// 2 for a usage error.
//
// c2pa-ts checks the certificate profile (it says signingCredential.trusted for any well-formed
// certificate) but not a chain of trust, so this script does that with @peculiar/x509: the chain
// must reach a --trust anchor through verified signatures, else signingCredential.untrusted is a
// failure (as c2pa-rs reports it). Two failures are this script's own words, not C2PA codes'
// (none fits): asset.unsupported (not JPEG, PNG or BMFF) and claim.missing (no manifest at all).
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { X509Certificate, X509ChainBuilder, PemConverter } from '@peculiar/x509';
import { BMFF, JPEG, PNG } from '@trustnxt/c2pa-ts/asset';
import { SuperBox } from '@trustnxt/c2pa-ts/jumbf';
import { ManifestStore, ValidationResult } from '@trustnxt/c2pa-ts/manifest';

const GENERATION = 'com.asset-pipeline.generation';
const SOFT_BINDING = 'c2pa.soft-binding';
const TRUSTED = 'signingCredential.trusted';
const UNTRUSTED = 'signingCredential.untrusted';

function openAsset(buf) {
    for (const [Kind, mime] of [[JPEG, 'image/jpeg'], [PNG, 'image/png'], [BMFF, 'video/mp4']]) {
        if (Kind.canRead(buf)) return [new Kind(buf), mime];
    }
    return [undefined, undefined];
}

const label = (hashedUri) => hashedUri.uri.split('/').pop();

async function thumbprint(cert) {
    return Buffer.from(await cert.getThumbprint()).toString('hex');
}

// Whether `cert` chains to one of `anchors`, each link's signature verified (X509ChainBuilder).
async function trust(cert, chainCertificates, anchors) {
    const anchorPrints = new Set(await Promise.all(anchors.map(thumbprint)));
    const builder = new X509ChainBuilder({ certificates: [...anchors, ...chainCertificates] });
    let chain = [];
    try {
        chain = Array.from(await builder.build(cert));
    } catch {
        chain = [cert];
    }
    const now = new Date();
    let trusted = false;
    for (const c of chain) {
        if (anchorPrints.has(await thumbprint(c)) && c.notBefore <= now && now <= c.notAfter) {
            trusted = true;
            break;
        }
    }
    return { trusted, chain: chain.map((c) => c.subject) };
}

async function validate(file, anchors) {
    const out = { file, format: null, manifest: null, claim_version: null, failures: [],
                  successes: [], created_assertions: [], gathered_assertions: [], generation: null,
                  ingredients: [], soft_binding: null, actions: [], signer: null, trust: null };
    const [asset, mime] = openAsset(await fs.readFile(file));
    if (!asset) {
        out.failures.push('asset.unsupported');
        return out;
    }
    out.format = mime;
    const jumbf = asset.getManifestJUMBF();
    if (!jumbf) {
        out.failures.push('claim.missing');  // no manifest at all
        return out;
    }
    let result;
    try {
        const store = ManifestStore.read(SuperBox.fromBuffer(jumbf));
        result = await store.validate(asset);
        const manifest = store.getActiveManifest();
        out.manifest = manifest?.label ?? null;
        const claim = manifest?.claim;
        if (claim) {
            out.claim_version = claim.version + 1;  // c2pa-ts numbers versions from 0
            // In a v2 claim `assertions` are the created assertions.
            out.created_assertions = claim.assertions.map(label);
            out.gathered_assertions = (claim.gatheredAssertions ?? []).map(label);
        }
        for (const a of manifest?.assertions?.assertions ?? []) {
            const content = a.sourceBox?.contentBoxes?.[0]?.content;
            if (a.label === GENERATION) out.generation = content ?? null;
            if (a.label === SOFT_BINDING) {  // an invisible watermark's algorithm and payload
                out.soft_binding = { alg: content?.alg ?? null, value: content?.blocks?.[0]?.value ?? null };
            }
            if (a.label?.startsWith('c2pa.actions')) {
                out.actions = (a.actions ?? content?.actions ?? []).map((x) => x.action);
            }
            if (a.label?.startsWith('c2pa.ingredient')) {
                out.ingredients.push({ relationship: content?.relationship ?? null,
                                       title: content?.['dc:title'] ?? null });
            }
        }
        const signature = manifest?.signature?.signatureData;
        if (signature?.certificate) {
            out.signer = signature.certificate.subject;
            if (anchors.length) {
                out.trust = await trust(signature.certificate, signature.chainCertificates ?? [],
                                        anchors);
            }
        }
    } catch (e) {
        result = ValidationResult.fromError(e);
    }
    for (const entry of result.statusEntries) {
        (entry.success === false ? out.failures : out.successes).push(entry.code);
    }
    if (anchors.length && !out.trust?.trusted) {
        out.successes = out.successes.filter((code) => code !== TRUSTED);
        out.failures.push(UNTRUSTED);
    }
    return out;
}

async function main(argv) {
    const anchors = [];
    const files = [];
    for (let i = 0; i < argv.length; i++) {
        if (argv[i] === '--trust') {
            const pem = await fs.readFile(argv[++i], 'utf8');
            anchors.push(...PemConverter.decode(pem).map((der) => new X509Certificate(der)));
        } else {
            files.push(argv[i]);
        }
    }
    if (!files.length) {
        console.error(`usage: node ${path.basename(process.argv[1])} [--trust ca.pem]... file...`);
        return 2;
    }
    const results = [];
    for (const file of files) results.push(await validate(file, anchors));
    // 64-bit integers come back from CBOR as BigInt: written as strings, exactly.
    console.log(JSON.stringify(results, (_, v) => (typeof v === 'bigint' ? v.toString() : v), 1));
    return 0;
}

process.exitCode = await main(process.argv.slice(2));
