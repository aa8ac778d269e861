//! sae-lib's CUDA kernels (src/cuda/*.cu) on the CPU: tests/cuda_on_cpu/harness.cpp runs them
//! through a small CUDA emulation against plain C++ references, so their logic is checked on
//! machines without a GPU. Needs a C++20 compiler (`c++`, or `$CXX`); skips without one.

use std::path::Path;
use std::process::Command;

#[test]
fn cuda_kernels_match_plain_references_on_the_cpu() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("harness");
    let compiled = Command::new(&cxx)
        .args(["-std=c++20", "-O2", "-pthread", "-I"])
        .arg(root.join("src/cuda"))
        .arg(root.join("tests/cuda_on_cpu/harness.cpp"))
        .arg("-o")
        .arg(&exe)
        .output();
    let compiled = match compiled {
        Ok(out) => out,
        Err(e) => {
            println!("SKIP: no C++ compiler `{cxx}` ({e}); set CXX to one with C++20");
            return;
        }
    };
    assert!(
        compiled.status.success(),
        "the harness did not compile:\n{}",
        String::from_utf8_lossy(&compiled.stderr)
    );
    let run = Command::new(&exe).output().unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "kernel mismatches:\n{stdout}");
    assert!(stdout.contains("ok (0 failures)"), "{stdout}");
}
