#!/usr/bin/env bash
# Collection throughput: the tutorial loop and the batched collector (ours) against the PyTorch
# tutorial loop, same documents, same machine, same run.
# Needs ../shared/data (tokenizer, WikiText) and `pip install torch transformers tokenizers`.
set -euo pipefail
cd "$(dirname "$0")/../.."
threads=${THREADS:-$(nproc)}
n=${DOCS:-300}
data=${SHARED_DATA:-../../shared/data}
model=$(mktemp -d)/pythia-70m-shaped
cargo build --release --example bench_collect --example make_random_model -q
../target/release/examples/make_random_model "$model"
{
  RAYON_NUM_THREADS=$threads ../target/release/examples/bench_collect "$model" "$data/gpt-neox-20b-tokenizer.json" "$data/wikitext-2/valid.txt" "$n"
  python3 scripts/bench/collect_torch.py "$threads" "$data/gpt-neox-20b-tokenizer.json" "$data/wikitext-2/valid.txt" "$n"
} | tee /dev/stderr | python3 scripts/bench/ratios.py
rm -rf "$(dirname "$model")"
