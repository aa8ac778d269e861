#!/usr/bin/env bash
# The activation stores of the peer benchmarks: SmolLM2-135M-Instruct (GGUF) at
# blocks.15.hook_mlp_out, every token of each document up to 128 tokens, f32.
#   .cache/peers/train  from wikitext-2 valid.txt, the first $TRAIN_DOCS documents (800: 49,390 rows)
#   .cache/peers/test   from wikitext-2 test.txt, the first $TEST_DOCS documents (150: 9,418 rows)
# (the sizes of the earlier measurement; all of valid.txt gives 71,741 rows: TRAIN_DOCS=all)
# Needs target/release/sae (cargo build --release). Re-running rebuilds both stores.
# Env: DATA (folder with valid.txt and test.txt), OUT (default .cache/peers), SAE (binary),
#      TRAIN_DOCS (default 800, or all), TEST_DOCS (default 150), THREADS (default: all cores).
set -euo pipefail
root=$(cd "$(dirname "$0")/../../../.." && pwd)
cd "$root"
data=${DATA:-$root/../shared/data/wikitext-2}
out=${OUT:-$root/.cache/peers}
sae=${SAE:-$root/target/release/sae}
test_docs=${TEST_DOCS:-150}
train_docs=${TRAIN_DOCS:-800}
train_limit=()
[ "$train_docs" = all ] || train_limit=(--max-docs "$train_docs")
[ -x "$sae" ] || { echo "error: $sae missing: run cargo build --release first" >&2; exit 1; }
model=$(bash sae-lib/scripts/fetch_smollm2.sh)
mkdir -p "$out"
rm -rf "$out/train" "$out/test"  # sae collect will not overwrite a store
common=(--model "$model" --hook blocks.15.hook_mlp_out --mode all --max-len 128 --device cpu)
if [ -n "${THREADS:-}" ]; then export RAYON_NUM_THREADS=$THREADS; fi
"$sae" collect "${common[@]}" --dataset "$data/valid.txt" "${train_limit[@]}" --out "$out/train"
"$sae" collect "${common[@]}" --dataset "$data/test.txt" --max-docs "$test_docs" --out "$out/test"
python3 -c "
import json, sys
for s in sys.argv[1:]:
    m = json.load(open(s + '/meta.json'))
    print(f\"{s}: {m['rows']} rows x {m['d']} ({m['dtype']}), {m['docs']} docs, hook {m['hook']}\")
" "$out/train" "$out/test"
