#!/usr/bin/env bash
# The GPU check: parity with the CPU, then ours against PyTorch on the same GPU, in one run.
#
#   here (no GPU needed):  bash sae-lib/scripts/gpu/check.sh --pack
#       builds the three examples below with CUDA (cuda_toolchain.sh) into target-cuda and packs
#       them, stripped, into .cache/gpu-check.tar.xz (small enough to carry to the GPU machine)
#       with the pure-Python wheels of sparsify's model that the GPU image lacks;
#   there:                 bash sae-lib/scripts/gpu/check.sh [--device cuda]
#       unpacks that archive when present (saying which commit built it) and runs the check;
#   on the CPU:            bash sae-lib/scripts/gpu/check.sh --device cpu
#       the same steps at small sizes: parity is then the CPU's stock-op path (what a GPU runs)
#       against its hand-written kernels.
#
# Steps: 1. device_parity (GPT-NeoX and Llama fixtures, hooks and logits within 1e-3; 20 TopK
# training steps; sae-lib's top-k and decoder kernels against stock ops on the device);
# 2. bench_forward to blocks.5.hook_mlp_out at pythia-70m's shape, batch 64 x 128, against
# transformers (forward_torch.py); 3. bench_train: ReLU at 4,096 features against the same loss
# and Adam in PyTorch (train_torch.py), in f32 and in bf16 mixed precision (`--dtype bf16`;
# torch.autocast there), and TopK k 32 at 16,384 features, with and without sae-lib's kernels,
# against sparsify's SparseCoder with its Triton decoder (train_sparsify.py), each training row
# with a "breakdown" line of its step's phases (encoder matmul, top-k, forward, backward) on
# both sides; 4. one table of ratios (ratios.py). Python rows need torch (and transformers for step 2, sparsify for its
# row) in python3; without them they are skipped with a message. A failed step, or one that
# runs past $SAE_STEP_TIMEOUT seconds (default 180), is reported at the end (exit 1) after the
# others have run.
set -euo pipefail
root=$(cd "$(dirname "$0")/../../.." && pwd)
cd "$root"
bench=sae-lib/scripts/bench
pack=$root/.cache/gpu-check.tar.xz
device=cuda
bin=
while [ $# -gt 0 ]; do
    case $1 in
        --pack)
            eval "$(bash sae-lib/scripts/cuda_toolchain.sh)"
            CARGO_TARGET_DIR=target-cuda cargo build --release --locked --features cuda \
                --example device_parity --example bench_forward --example bench_train
            staging=$(mktemp -d)
            for e in device_parity bench_forward bench_train; do
                strip -o "$staging/$e" "target-cuda/release/examples/$e"
            done
            # sparsify 1.3.3 and what its model modules import beyond the GPU image
            python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
                -d "$staging/wheels" eai-sparsify==1.3.3 natsort==8.4.0 simple-parsing==0.1.9 \
                docstring-parser==0.18.0
            # the commit the binaries were built from, "+dirty" with uncommitted changes
            echo "$(git rev-parse --short HEAD)$(git diff --quiet HEAD || echo +dirty)" \
                >"$staging/commit"
            tar -C "$staging" -cJf "$pack" device_parity bench_forward bench_train wheels commit
            rm -rf "$staging"
            echo "packed: $pack ($(du -h "$pack" | cut -f1)); carry .cache/gpu-check.tar.xz"
            exit 0
            ;;
        --device) device=$2; shift ;;
        --bin) bin=$2; shift ;;
        *) echo "check.sh: unknown argument $1 (see the header of this script)" >&2; exit 2 ;;
    esac
    shift
done

if [ -z "$bin" ]; then
    if [ "$device" != cpu ] && [ -f "$pack" ]; then
        bin=$(mktemp -d)
        tar -C "$bin" -xJf "$pack"
        echo "binaries from $pack, built at commit $(cat "$bin/commit" 2>/dev/null || echo unknown)"
    else
        cargo build --release --locked --example device_parity --example bench_forward \
            --example bench_train
        bin=target/release/examples
    fi
fi
if [ "$device" = cpu ]; then
    batch=8 steps=3 threads=$(nproc)
else
    batch=64 steps=50 threads=$(nproc)
    if command -v nvidia-smi >/dev/null; then
        nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    fi
    eval "$(bash sae-lib/scripts/cuda_toolchain.sh --runtime)"
fi
export SAE_DEVICE=$device DEVICE=$device RAYON_NUM_THREADS=$threads

# A failed or hung step is reported and the rest still run: GPU time comes in minutes.
failed=()
limit=${SAE_STEP_TIMEOUT:-180}
echo "== 1. parity on $device"
timeout "$limit" "$bin/device_parity" "$device" || failed+=("parity")

have() { python3 -c "import $1" 2>/dev/null; }
if ! have sparsify && [ -d "$bin/wheels" ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target "$bin/site" \
        "$bin"/wheels/*.whl && export PYTHONPATH=$bin/site${PYTHONPATH:+:$PYTHONPATH}
fi
# sparsify's package imports its trainer (datasets, ...); train_sparsify.py needs its model only
have_sparsify() { python3 -c "import importlib.util as u; assert u.find_spec('sparsify')" 2>/dev/null; }
lines=$(mktemp)
row() {  # runs one benchmark, keeping its JSON line
    timeout "$limit" "$@" | tee -a "$lines" || failed+=("$*")
}
echo "== 2. forward to blocks.5.hook_mlp_out, batch $batch x 128"
row "$bin/bench_forward" "$batch"
if have transformers; then
    row python3 "$bench/forward_torch.py" "$threads" "$batch"
else
    echo "skipped: transformers (and torch) are not importable by python3"
fi
echo "== 3. SAE training, d_in 512, batch 4096, $steps steps"
row "$bin/bench_train" relu "$steps" 4096
row env SAE_DTYPE=bf16 "$bin/bench_train" relu "$steps" 4096
row "$bin/bench_train" topk "$steps" 16384
# the same without sae-lib's top-k and decoder kernels: what they are worth
row env SAE_STOCK_OPS=1 "$bin/bench_train" topk "$steps" 16384
if have torch; then
    row python3 "$bench/train_torch.py" "$threads" "$steps"
    row env DTYPE=bf16 python3 "$bench/train_torch.py" "$threads" "$steps"
    if have_sparsify; then
        row python3 "$bench/train_sparsify.py" "$threads" "$steps" 16384
    else
        echo "skipped: sparsify is not importable by python3 (pip install eai-sparsify==1.3.3)"
    fi
else
    echo "skipped: torch is not importable by python3"
fi
echo "== 4. ratios (ours / PyTorch)"
python3 "$bench/ratios.py" <"$lines"
rm -f "$lines"
if [ ${#failed[@]} -gt 0 ]; then
    printf 'check.sh: failed: %s\n' "${failed[@]}" >&2
    exit 1
fi
