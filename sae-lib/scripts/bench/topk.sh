#!/usr/bin/env bash
# TopK (k = 32) with sparse decoding against a dense ReLU SAE at the same width (d_sae 16384,
# d_in 512, batch 4096), both trained by sae-lib's trainer: samples/s and their ratio.
set -euo pipefail
cd "$(dirname "$0")/../.."
steps=${STEPS:-6}
cargo build --release --example bench_train -q
relu=$(../target/release/examples/bench_train relu "$steps" 16384)
topk=$(../target/release/examples/bench_train topk "$steps" 16384)
echo "$relu"; echo "$topk"
python3 - "$relu" "$topk" <<'PY'
import json, sys
relu, topk = (json.loads(a)["samples_per_s"] for a in sys.argv[1:])
print(f"| d_sae 16384, k 32 | TopK sparse {topk:.0f} samples/s | ReLU dense {relu:.0f} samples/s | {topk / relu:.2f}x |")
PY
