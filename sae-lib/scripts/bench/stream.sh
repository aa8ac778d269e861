#!/usr/bin/env bash
# Streaming training against collect-then-train, on the same tokens, in one run.
#
# SmolLM2-135M (GGUF) layer 15 MLP output over the first $DOCS paragraphs of WikiText-2 valid,
# every token, context 128, one pass (each token trains once, as at scale); TopK 4096, k 32,
# batch 256. Both SAEs are scored on held-out rows (WikiText-2 test). Then: distinct documents
# per batch of 4,096 at several buffer sizes, peak RSS at two token counts ten times apart,
# and six SAEs on two hooks from one pass.
# Needs ../shared/data and the SmolLM2 GGUF (scripts/fetch_smollm2.sh).
set -euo pipefail
cd "$(dirname "$0")/../.."   # sae-lib
threads=${THREADS:-$(nproc)}
docs=${DOCS:-1000}
data=${SHARED_DATA:-../../shared/data}/wikitext-2
model=$(bash scripts/fetch_smollm2.sh)
work=${OUT:-../out/bench/stream}
hook=blocks.15.hook_mlp_out
cargo build --release --bin sae -q
sae=../target/release/sae
rm -rf "$work" && mkdir -p "$work"
export RAYON_NUM_THREADS=$threads SAE_PROGRESS=none
common=(--device cpu --max-len 128)
sae_flags=(--arch topk --d-sae 4096 --k 32 --batch-size 256 --seed 0)

seconds() { # seconds NAME CMD...: runs CMD, appends "NAME seconds" to $work/times
  local name=$1 t0 t1
  shift
  t0=$(date +%s.%N)
  "$@" > "$work/$name.log" 2>&1 || { cat "$work/$name.log"; exit 1; }
  t1=$(date +%s.%N)
  echo "$name $(echo "$t1 - $t0" | bc)" | tee -a "$work/times"
}
score() { "$sae" score --sae "$1" --acts "$work/test" --device cpu; }

"$sae" collect --model "$model" --dataset "$data/test.txt" --hook $hook --mode all \
  --max-docs 300 "${common[@]}" --out "$work/test" > /dev/null
seconds collect "$sae" collect --model "$model" --dataset "$data/valid.txt" --hook $hook \
  --mode all --max-docs "$docs" "${common[@]}" --out "$work/train"
rows=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['rows'])" "$work/train/meta.json")
steps=$((rows / 256))
echo "train rows $rows, steps $steps"
seconds store_train "$sae" train --acts "$work/train" "${sae_flags[@]}" --steps $steps \
  --device cpu --out "$work/store-sae"
base=(train --model "$model" --dataset "$data/valid.txt" --hook $hook --max-docs "$docs"
  --arch topk --d-sae 4096 --k 32 --seed 0 "${common[@]}")
stream=("${base[@]}" --batch-size 256 --tokens $((steps * 256)))
seconds stream_whole "$sae" "${stream[@]}" --buffer-rows $((rows + 1)) --out "$work/stream-whole"
seconds stream_16k "$sae" "${stream[@]}" --buffer-rows 16384 --out "$work/stream-16k"
for b in 4096 16384 65536 $((rows + 1)); do # how well batches of 4,096 mix
  "$sae" "${base[@]}" --batch-size 4096 --tokens "$rows" --buffer-rows $b \
    --out "$work/mix-$b" > "$work/mix-$b.log" 2>&1
done
for t in 20480 204800; do # peak RSS
  "$sae" "${base[@]}" --batch-size 256 --buffer-rows 16384 --tokens $t --out "$work/rss-$t" > "$work/rss-$t.log" 2>&1
done
seconds stream_6 "$sae" train --model "$model" --dataset "$data/valid.txt" --max-docs "$docs" \
  --hook blocks.10.hook_resid_post --hook $hook --sae arch=topk,k=32 --sae arch=batchtopk,k=32 \
  --sae arch=relu --d-sae 4096 --batch-size 256 --tokens $((steps * 256)) --buffer-rows 16384 \
  "${common[@]}" --out "$work/stream-6"

echo "== held-out scores (WikiText-2 test, $(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['rows'])" "$work/test/meta.json") rows)"
for run in store-sae stream-whole/$hook/topk-4096-k32 stream-16k/$hook/topk-4096-k32; do
  echo "$run $(score "$work/$run")"
done
echo "== stream summaries"
for s in "$work"/*/stream_summary.json; do echo "$s $(cat "$s")"; done
echo "== times (s)"
cat "$work/times"
echo "machine: $(nproc) cores, $threads threads; $(date -u +%F)"
