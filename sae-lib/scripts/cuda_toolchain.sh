#!/usr/bin/env bash
# CUDA 13.0 toolchain from PyPI wheels, for `--features cuda` on a machine with no GPU and no
# CUDA install. Idempotent; installs into .cache/cuda/venv (or $SAE_CUDA_DIR/venv; 1.2 GB, of
# which cuBLAS is most); messages go to stderr, and stdout carries only `export` lines:
#   eval "$(bash sae-lib/scripts/cuda_toolchain.sh)"
#   CARGO_TARGET_DIR=target-cuda cargo build --release --features cuda --bin sae
#   eval "$(bash sae-lib/scripts/cuda_toolchain.sh --runtime)"    # before running that binary
#
# Why CUDA 13.0: no 12.x wheel ships nvcc (nvidia-cuda-nvcc-cu12 12.0-12.9 hold only ptxas), and
# the PTX that candle-kernels embeds is `.version 9.0`, which the driver JIT only loads from
# R580 on (13.1's would need R590; nvcc has no flag for an older PTX ISA). The H200 machines run
# driver 580.x. cudarc 0.19 knows CUDA <= 13.4 and reads the version from `nvcc --version`.
# candle-kernels (through cudaforge) turns CUDA_COMPUTE_CAP=90 into sm_90a: PTX for its
# kernels, SASS for its MoE/GGUF static library. That nvcc work takes ~12 minutes on 2 cores,
# and runs under `cargo check` too.
#
# Linking: candle-core builds cudarc with `dynamic-linking` (not switchable from here: adding
# cudarc's `dynamic-loading` makes its build script panic), and candle-kernels links cudart,
# so the linker wants libcuda, libcublas, libcublasLt, libcurand, libnvrtc and libcudart. All
# but libcuda are the real CUDA 13.0 libraries from their wheels (~570 MB download). No wheel
# ships the driver, so lib/stubs/libcuda.so is a stub built from cuda.h whose every entry
# point returns CUDA_ERROR_STUB_LIBRARY (34), like the CUDA toolkit's own stub. The binary
# then needs libcuda.so.1, libcublas.so.13, libcurand.so.10 and libcudart.so.13 at run time
# (bound at load: it is linked with -z now). To start it on a machine without a driver, e.g.
# for `sae --help`, put <root>/lib and <root>/lib/stubs on LD_LIBRARY_PATH; the CPU is then
# used, as `--device auto` finds no GPU.
#
# Runtime, on the GPU machine: the NVIDIA driver (>= 580) and any CUDA 13.x cuBLAS, cuRAND and
# cudart (NVRTC too, to be safe). `--runtime` prints the LD_LIBRARY_PATH line for the first
# folder that has them all: this script's venv, then python3's site-packages nvidia/cu13/lib
# (the H200 image's torch venv has these wheels), then /usr/local/cuda/lib64. If none does, it
# pip-installs RUNTIME_WHEELS below into the venv (needs PyPI, which the H200 machine cannot
# reach; the wheels are too big to carry there). By hand, anywhere with PyPI:
#   pip install --target DIR nvidia-cublas==13.0.2.14 nvidia-curand==10.4.0.35 \
#       nvidia-cuda-nvrtc==13.0.88 nvidia-cuda-runtime==13.0.96
#   export LD_LIBRARY_PATH=DIR/nvidia/cu13/lib:$LD_LIBRARY_PATH
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
dir=${SAE_CUDA_DIR:-$root/.cache/cuda}
venv=$dir/venv
# nvcc (with ptxas, fatbinary, cudafe++), cicc + libdevice, crt and cccl headers.
BUILD_WHEELS="nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-cuda-cccl==13.0.85"
# cudart (also the headers nvcc includes), cuBLAS, cuRAND, NVRTC.
RUNTIME_WHEELS="nvidia-cuda-runtime==13.0.96 nvidia-cublas==13.0.2.14 nvidia-curand==10.4.0.35 nvidia-cuda-nvrtc==13.0.88"
RUNTIME_LIBS="libcudart.so.13 libcublas.so.13 libcublasLt.so.13 libcurand.so.10 libnvrtc.so.13"

say() { echo "cuda_toolchain: $*" >&2; }

# pip-installs a set of wheels into the venv unless its stamp says they are there already.
install() {  # $1: the set's name, $2: its wheels
    local stamp=$venv/.installed-$1
    [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$2" ] && return
    say "installing $2 into $venv"
    [ -x "$venv/bin/python" ] || python3 -m venv "$venv" >&2
    # shellcheck disable=SC2086
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps \
        --no-compile $2 >&2
    echo "$2" >"$stamp"
}
# Where the wheels unpack: <venv>/lib/python3.X/site-packages/nvidia/cu13.
cuda_root() { set -- "$venv"/lib/python3*/site-packages/nvidia/cu13; echo "$1"; }

has_runtime_libs() { for l in $RUNTIME_LIBS; do [ -e "$1/$l" ] || return 1; done; }

if [ "${1:-}" = --runtime ]; then
    lib=
    for d in "$(cuda_root)/lib" $(python3 -c 'import site; print(*site.getsitepackages())' 2>/dev/null \
            | tr ' ' '\n' | sed 's|$|/nvidia/cu13/lib|') /usr/local/cuda/lib64; do
        if has_runtime_libs "$d"; then lib=$d; break; fi
    done
    if [ -z "$lib" ]; then install runtime "$RUNTIME_WHEELS"; lib=$(cuda_root)/lib; fi
    say "runtime libraries: $lib"
    printf 'export LD_LIBRARY_PATH=%q${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}\n' "$lib"
    exit 0
fi

install build "$BUILD_WHEELS"
install runtime "$RUNTIME_WHEELS"
cuda=$(cuda_root)

# The linker wants unversioned names; the wheels ship only the sonames.
for l in $RUNTIME_LIBS; do ln -sfn "$l" "$cuda/lib/${l%%.so.*}.so"; done
# The driver stub: one function per cu* entry point that cuda.h declares (current and older
# ABI versions) and the profiler API's three; all return CUDA_ERROR_STUB_LIBRARY.
if [ ! -e "$cuda/lib/stubs/libcuda.so.1" ]; then
    mkdir -p "$cuda/lib/stubs"
    { for v in "" -D__CUDA_API_VERSION_INTERNAL; do
          gcc -E -P -x c $v -I"$cuda/include" "$cuda/include/cuda.h"; done \
          | grep -oE '\bcu[A-Z][A-Za-z0-9_]*[[:space:]]*\(' | tr -d '( \t'
      echo cuProfilerInitialize; echo cuProfilerStart; echo cuProfilerStop
    } | sort -u | sed 's/.*/int &(void) { return 34; }/' >"$cuda/lib/stubs/libcuda.c"
    gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$cuda/lib/stubs/libcuda.so.1" \
        "$cuda/lib/stubs/libcuda.c"
    ln -sfn libcuda.so.1 "$cuda/lib/stubs/libcuda.so"
fi

# Check nvcc: a half-precision kernel to PTX for the target compute capability.
cap=${CUDA_COMPUTE_CAP:-90}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cat >"$tmp/k.cu" <<'EOF'
#include <cuda_fp16.h>
extern "C" __global__ void add(const __half *a, __half *b) { b[threadIdx.x] = __hadd(a[threadIdx.x], b[threadIdx.x]); }
EOF
"$cuda/bin/nvcc" --ptx -arch="sm_$cap" -o "$tmp/k.ptx" "$tmp/k.cu" >&2
grep -q "^.target sm_$cap" "$tmp/k.ptx" || { say "nvcc made no sm_$cap PTX"; exit 1; }
say "$("$cuda/bin/nvcc" --version | grep release); PTX $(grep -m1 '^.version' "$tmp/k.ptx"), sm_$cap"

# nvcc.profile in the wheel already adds include/ and include/cccl, so no -I flags are needed.
# cudarc finds the libraries through CUDA_ROOT (lib/, lib/stubs/); candle-kernels' cudaforge
# finds nvcc on PATH and reads CUDA_COMPUTE_CAP (else it would ask nvidia-smi).
case ":$PATH:" in *":$cuda/bin:"*) ;; *) printf 'export PATH=%q:"$PATH"\n' "$cuda/bin" ;; esac
printf 'export CUDA_ROOT=%q CUDA_PATH=%q CUDA_HOME=%q\n' "$cuda" "$cuda" "$cuda"
printf 'export CUDA_COMPUTE_CAP=%q\n' "$cap"
