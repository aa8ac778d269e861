#!/usr/bin/env bash
# SAE training throughput (d_in 512, d_sae 4096, batch 4096): ours against PyTorch, same loss
# and optimiser, same machine, same run. Needs `pip install torch`.
set -euo pipefail
cd "$(dirname "$0")/../.."
threads=${THREADS:-$(nproc)}
steps=${STEPS:-20}
cargo build --release --example bench_train -q
{
  RAYON_NUM_THREADS=$threads ../target/release/examples/bench_train relu "$steps"
  python3 scripts/bench/train_torch.py "$threads" "$steps"
} | tee /dev/stderr | python3 scripts/bench/ratios.py
