#!/usr/bin/env bash
# Forward throughput up to blocks.5.hook_mlp_out: candle (ours) vs PyTorch + transformers, same
# shapes, same machine, same run. Needs `pip install torch transformers`.
set -euo pipefail
cd "$(dirname "$0")/../.."
threads=${THREADS:-$(nproc)}
cargo build --release --example bench_forward -q
{
  RAYON_NUM_THREADS=$threads ../target/release/examples/bench_forward 1 32
  python3 scripts/bench/forward_torch.py "$threads" 1 32
} | tee /dev/stderr | python3 scripts/bench/ratios.py
