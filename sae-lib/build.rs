//! With `--features cuda`: compiles sae-lib's CUDA kernels (src/cuda/*.cu) to PTX with nvcc,
//! for `include_str!` in src/cuda/mod.rs. Without it, nothing to do.
//!
//! The PTX targets `compute_$CUDA_COMPUTE_CAP` (the variable candle's own kernels read;
//! default 80): the driver compiles it for the GPU at hand, so one build serves Ampere and
//! every GPU after it. `sae-lib/scripts/cuda_toolchain.sh` sets it and puts nvcc on PATH.

use std::path::PathBuf;
use std::process::Command;

const KERNELS: [&str; 3] = ["topk", "rows", "adam"];

fn main() {
    println!("cargo:rerun-if-env-changed=CUDA_COMPUTE_CAP");
    for k in KERNELS {
        println!("cargo:rerun-if-changed=src/cuda/{k}.cu");
    }
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let cap = std::env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "80".into());
    let cap: String = cap.chars().filter(char::is_ascii_digit).collect();
    let nvcc = std::env::var_os("CUDA_ROOT")
        .map(|r| PathBuf::from(r).join("bin/nvcc"))
        .filter(|p| p.exists())
        .unwrap_or_else(|| "nvcc".into());
    for k in KERNELS {
        let status = Command::new(&nvcc)
            .args(["--ptx", "-O3", &format!("-arch=compute_{cap}"), "-o"])
            .arg(out.join(format!("{k}.ptx")))
            .arg(format!("src/cuda/{k}.cu"))
            .status()
            .unwrap_or_else(|e| {
                panic!(
                    "--features cuda needs nvcc ({e}): \
                     eval \"$(bash sae-lib/scripts/cuda_toolchain.sh)\" installs it"
                )
            });
        assert!(
            status.success(),
            "nvcc failed on src/cuda/{k}.cu ({status})"
        );
    }
}
