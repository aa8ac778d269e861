#!/usr/bin/env bash
# Fetches llama.cpp's tokenizer test files into .cache/models/llama-cpp-vocab/ (or
# $SAE_MODELS_DIR/llama-cpp-vocab) and prints that folder. Each `ggml-vocab-NAME.gguf` is a
# real model's vocabulary without weights (Llama 2, Phi-3, Llama 3, Qwen2, Qwen 3.5, GPT-2,
# MPT, StarCoder, Refact, Command-R, Falcon, DeepSeek LLM and Coder); its `.inp` holds test texts and its `.out` the ids the model's
# own HF tokenizer gives them. GPT-NeoX's (Pythia's) comes without texts; the tests compare it
# with Pythia's own tokenizer.json.
# llama-cpp-python's source package on PyPI carries them (vendor/llama.cpp/models/), so the
# Hugging Face Hub is not needed. They are never committed (.cache/ is ignored).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
dest=${SAE_MODELS_DIR:-$root/.cache/models}/llama-cpp-vocab
names="llama-spm phi-3 llama-bpe qwen2 qwen35 gpt-2 mpt starcoder refact command-r falcon deepseek-llm deepseek-coder"
vocab_only="gpt-neox"
if [ "$(cat "$dest/complete" 2>/dev/null)" = "$names $vocab_only" ]; then
    echo "$dest"
    exit 0
fi
version=0.3.36
url=https://files.pythonhosted.org/packages/ec/e9/e7de2b0463ea3ffbf0ede6cb21b58c1258a8f6521aae45ca773a59fe7cf3/llama_cpp_python-$version.tar.gz
sha=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
curl -fsSL --retry 3 -o "$tmp/sdist.tar.gz" "$url"
if ! echo "$sha  $tmp/sdist.tar.gz" | sha256sum -c --quiet -; then
    echo "error: the downloaded llama-cpp-python $version has an unexpected sha256" >&2
    exit 1
fi
models=llama_cpp_python-$version/vendor/llama.cpp/models
members=()
for n in $names; do
    for ext in "" .inp .out; do
        members+=("$models/ggml-vocab-$n.gguf$ext")
    done
done
for n in $vocab_only; do
    members+=("$models/ggml-vocab-$n.gguf")
done
tar -xzf "$tmp/sdist.tar.gz" -C "$tmp" "${members[@]}"
mkdir -p "$dest"
mv "$tmp/$models/"* "$dest/"
echo "$names $vocab_only" > "$dest/complete"
echo "$dest"
