#!/usr/bin/env bash
# Registers the evcxr Rust kernel for these notebooks (idempotent):
#  - installs evcxr_jupyter with cargo when it is missing (about 17 minutes on 2 cores);
#  - registers the kernel with Jupyter, with two environment variables in its kernel.json:
#    LD_LIBRARY_PATH, so the kernel can load Rust's own libstd (rustup does not put it on the
#    library path), and EVCXR_TMPDIR, a persistent build folder so a second kernel does not
#    rebuild candle and polars;
#  - seeds that build folder with the workspace's Cargo.lock, so notebooks build the same
#    dependency versions the tests use, and with a cargo config that builds dependencies
#    (sae-lib, candle, gemm, ...) optimised and without the debug assertions and overflow
#    checks evcxr turns on for every crate, which made training in a notebook several times
#    slower than the same code in `sae`;
#  - builds sae-lib and its dependencies into that folder now (warm_kernel.py, a progress line
#    every 15 s), so the first cell of the first notebook a reader opens answers in seconds
#    instead of sitting at [*] through a silent build of about 16 minutes.
# Needs: cargo (rustup), python3 with jupyter_client (pip install -r notebooks/requirements.txt).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# evcxr owns build/ (it rewrites build/.cargo/config.toml); our cargo config sits one level up,
# where cargo still finds it.
home=${SAE_EVCXR_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/sae-lib/evcxr}
build_dir=$home/build
if ! command -v evcxr_jupyter >/dev/null; then
    echo "evcxr_jupyter is missing: cargo install evcxr_jupyter --locked (about 17 minutes)" >&2
    cargo install evcxr_jupyter --version 0.22.0 --locked
fi
evcxr_jupyter --install >/dev/null
mkdir -p "$build_dir"
if [ ! -f "$build_dir/Cargo.lock" ]; then
    cp "$here/../Cargo.lock" "$build_dir/Cargo.lock"
fi
mkdir -p "$home/.cargo"
cat > "$home/.cargo/config.toml" <<'TOML'
# Written by sae-lib's notebooks/setup_kernel.sh. Cell code keeps evcxr's checks.
[profile.dev.package."*"]
opt-level = 3
debug-assertions = false
overflow-checks = false
TOML
python3 - "$build_dir" "$(rustc --print target-libdir)" <<'PY'
import json, os, sys
from jupyter_client.kernelspec import KernelSpecManager
build_dir, libdir = sys.argv[1], sys.argv[2]
spec_dir = KernelSpecManager().find_kernel_specs()["rust"]
path = os.path.join(spec_dir, "kernel.json")
spec = json.load(open(path))
spec.setdefault("env", {}).update({"LD_LIBRARY_PATH": libdir, "EVCXR_TMPDIR": build_dir})
json.dump(spec, open(path, "w"), indent=2)
print(f"rust kernel: {path} (build folder {build_dir})")
PY
# Seconds when the build folder is already warm.
python3 "$here/warm_kernel.py"
