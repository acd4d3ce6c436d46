#!/usr/bin/env bash
# The Python packages that the lent GPU machine (kind nvidia-h200) lacks, packed for `carry`.
#
#     bash bench/gpu_wheels.sh            # once, here, before the one device call of bench/gpu.sh
#
# That machine has Python 3.12 with torch 2.11, torchvision, transformers 5.17, huggingface_hub,
# accelerate, peft, safetensors, timm, pyarrow, pillow, numpy, rich, fsspec, regex, requests
# (/work/.library/device/KINDS.md), and no registry. It lacks diffusers, open_clip_torch (+ ftfy,
# wcwidth), c2pa-python (+ toml, cryptography, cffi, pycparser), polars (+ polars-runtime-32) and
# Ray. Their wheels, fetched with the device README's `pip download` line for Python 3.12, come to
# about 81 MB (polars' runtime alone 54 MB): over the 64 MiB that may travel. So the wheels are
# unpacked (a wheel install is an unzip: none of these has a .data folder or needs a build step),
# the large unstripped extension modules are stripped (`strip --strip-unneeded` keeps the dynamic
# symbols), and the tree goes as ONE xz tarball: .whl/site.tar.xz, 44 MiB. bench/gpu.sh
# unpacks it into /tmp/site with Python's own tarfile (no xz binary needed there).
#
# Ray does not travel: its cp312 wheel alone is 79 MB (240 MB installed), more than the limit with
# everything else. bench/gpu.sh runs the pipeline with `--backend in-process` when `import ray`
# fails there, and says so in its summary.
#
# Versions are this repo's tested ones (.venv). .whl/ is ignored (.gitignore).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
DL=${WHEEL_CACHE:-/tmp/asset-pipeline-gpu-wheels}   # the downloaded wheels (kept: a rerun reuses them)
LIMIT_MIB=${LIMIT_MIB:-60}
PKGS=(diffusers==0.42.1 open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.9.4
      c2pa-python==0.38.1 toml==0.10.2 cryptography==50.0.2 cffi==2.1.1 pycparser==3.12
      polars==2.1.0 polars-runtime-32==2.1.0)

mkdir -p "$DL" .whl
# The device README's line, verbatim but for the names (Python 3.12, manylinux x86-64, no deps).
"$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$DL" "${PKGS[@]}"
echo "wheels: $(du -cb "$DL"/*.whl | tail -1 | cut -f1) bytes in $DL"

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
for p in "${PKGS[@]}"; do
    name=${p%%==*}; version=${p##*==}
    norm=$(echo "$name" | tr '-' '_')
    whl=$(ls "$DL"/*.whl | grep -i "/${norm}-${version}-" | head -1)
    [ -n "$whl" ] || { echo "no wheel for $p in $DL" >&2; exit 1; }
    "$PY" -c "import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])" "$whl" "$stage"
done
if ls -d "$stage"/*.data >/dev/null 2>&1; then
    echo "a wheel has a .data folder: unzipping is not installing it" >&2; exit 1
fi
if command -v strip >/dev/null; then
    find "$stage" -name '*.so*' -size +1M -print0 | while IFS= read -r -d '' so; do
        if file "$so" 2>/dev/null | grep -q 'not stripped' || ! command -v file >/dev/null; then
            strip --strip-unneeded "$so" && echo "stripped $(basename "$so")"
        fi
    done
else
    echo "no strip here: the tarball will be larger" >&2
fi
find "$stage" -name '__pycache__' -prune -exec rm -rf {} +
printf '%s\n' "${PKGS[@]}" > "$stage/ASSET_PIPELINE_WHEELS.txt"
echo "packing (xz -9: a few minutes on 2 cores)…"
tar -C "$stage" -cf - . | xz -9 -T0 > .whl/site.tar.xz.tmp
mv .whl/site.tar.xz.tmp .whl/site.tar.xz
size=$(stat -c %s .whl/site.tar.xz)
tree=$(git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
echo ".whl/site.tar.xz: $((size / 1048576)) MiB ($size bytes); tracked tree $((tree / 1048576)) MiB"
if [ "$size" -gt $((LIMIT_MIB * 1048576)) ]; then
    echo "over ${LIMIT_MIB} MiB: it would not travel with the tree (64 MiB in all)" >&2; exit 1
fi
