//! Output folders through the real `sae` binary: a finished run is never replaced silently,
//! one writer per folder, every numeric flag checked before any work, and files with the
//! permissions the user's umask gives.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::cli::{make_store, s, sae, train_args};

/// Every file under `dir` (lock file aside) with its bytes.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(snapshot(&p));
        } else {
            out.insert(p.clone(), std::fs::read(&p).unwrap());
        }
    }
    out
}

/// Runs `sae args` and checks one readable refusal: exit 1, exactly one `error:` line holding
/// every one of `expected`, no panic, no Rust `Debug` output.
fn refused(args: &[&str], expected: &[&str]) -> String {
    let o = sae(args);
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(1), "{args:?}: {stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{args:?}: {stderr}");
    for e in expected {
        assert!(
            errors[0].contains(e),
            "{args:?}: expected {e:?} in {stderr}"
        );
    }
    for debug in ["Some(", "None", "panicked"] {
        assert!(!stderr.contains(debug), "{args:?}: {debug:?} in {stderr}");
    }
    stderr
}

#[test]
fn finished_runs_are_never_replaced_and_bad_numbers_are_refused_first() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let acts = make_store(d);
    let text = d.join("text.txt");
    let fixture_model = crate::common::fixture("gpt_neox_parallel");
    let (new, sweep_out, nothing) = (d.join("new"), d.join("sweep"), d.join("nothing-here"));
    // A finished TopK run.
    let run = d.join("run");
    let mut args = train_args(&acts, &run, "30");
    args.extend(["--arch", "topk", "--k", "8"]);
    let o = sae(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let before = snapshot(&run);
    assert!(before.keys().any(|p| p.ends_with("metrics.json")));
    let acts_before = snapshot(&acts);

    let train = |extra: &[&'static str]| -> Vec<String> {
        let mut a: Vec<String> = ["train", "--acts", s(&acts), "--out", s(&run)]
            .iter()
            .map(|x| x.to_string())
            .collect();
        a.extend(extra.iter().map(|x| x.to_string()));
        a
    };
    let cases: Vec<(Vec<String>, Vec<&str>)> = vec![
        (
            train(&["--arch", "relu", "--steps", "5"]),
            vec![
                "already holds a topk SAE training run at step 30 of 30",
                "--overwrite",
                "--resume",
                "UTC",
            ],
        ),
        (
            train(&["--batch-size", "0"]),
            vec!["batch size must be at least 2 (got 0)"],
        ),
        (
            train(&["--batch-size", "1"]),
            vec!["batch size must be at least 2 (got 1)"],
        ),
        (
            train(&["--d-sae", "0"]),
            vec!["d_sae must be at least 1 (got 0)"],
        ),
        (
            train(&["--arch", "topk", "--k", "5000", "--d-sae", "1024"]),
            vec!["k = 5000 is more than d_sae = 1024"],
        ),
        (
            train(&["--arch", "topk", "--k", "0"]),
            vec!["k must be at least 1"],
        ),
        (
            train(&["--arch", "relu", "--k", "8"]),
            vec!["--k applies to topk"],
        ),
        (
            train(&["--steps", "0"]),
            vec!["steps must be at least 1 (got 0)"],
        ),
        (
            train(&["--lr", "0"]),
            vec!["learning rate must be a finite number above 0 (got 0)"],
        ),
        (
            train(&["--lr", "NaN"]),
            vec!["learning rate must be a finite number above 0"],
        ),
        (
            train(&["--l1=-1"]),
            vec!["sparsity coefficient must be a finite number above 0"],
        ),
        (
            train(&["--log-every", "0"]),
            vec!["log every must be at least 1"],
        ),
        (
            train(&["--checkpoint-every", "0"]),
            vec!["checkpoint every must be at least 1"],
        ),
        (
            vec![
                "collect".into(),
                "--model".into(),
                s(&fixture_model).into(),
                "--dataset".into(),
                s(&text).into(),
                "--hook".into(),
                "blocks.1.hook_mlp_out".into(),
                "--device".into(),
                "cpu".into(),
                "--out".into(),
                s(&acts).into(),
            ],
            vec!["already holds an activation store of", "--overwrite"],
        ),
        (
            vec![
                "collect".into(),
                "--model".into(),
                "x".into(),
                "--max-len".into(),
                "0".into(),
                "--out".into(),
                s(&new).into(),
            ],
            vec!["max length (tokens kept per document) must be at least 1"],
        ),
        (
            vec![
                "sweep".into(),
                "--acts".into(),
                s(&acts).into(),
                "--ks".into(),
                "0".into(),
                "--out".into(),
                s(&sweep_out).into(),
            ],
            vec!["k must be at least 1"],
        ),
        (
            vec![
                "train".into(),
                "--acts".into(),
                s(&acts).into(),
                "--out".into(),
                s(&nothing).into(),
                "--resume".into(),
            ],
            vec!["nothing to resume", "without --resume"],
        ),
    ];
    for (args, expected) in &cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        refused(&args, expected);
        assert!(
            snapshot(&run) == before,
            "{args:?} changed the finished run"
        );
        assert!(snapshot(&acts) == acts_before, "{args:?} changed the store");
    }
    assert!(!new.exists() && !sweep_out.exists() && !nothing.join(".sae-lock").exists());

    // --overwrite replaces the run, and only then.
    let o = sae(&train(&[
        "--arch",
        "relu",
        "--steps",
        "5",
        "--overwrite",
        "--batch-size",
        "64",
        "--d-sae",
        "64",
        "--device",
        "cpu",
    ])
    .iter()
    .map(String::as_str)
    .collect::<Vec<_>>());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("cfg.json")).unwrap()).unwrap();
    assert_eq!(cfg["architecture"], "standard");
    // No checkpoint of the old run survives beside the new one.
    let states: Vec<_> = std::fs::read_dir(&run)
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("trainer_state-")
        })
        .collect();
    assert_eq!(states.len(), 1);
}

#[test]
fn a_second_writer_fails_at_once_naming_the_first_and_a_crash_leaves_no_lock() {
    let dir = tempfile::tempdir().unwrap();
    let acts = make_store(dir.path());
    let out = dir.path().join("same");
    let mut first = Command::new(env!("CARGO_BIN_EXE_sae"))
        .args(train_args(&acts, &out, "100000"))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lock = out.join(sae_lib::output::LOCK_FILE);
    let start = Instant::now();
    // Wait for the lock and a first checkpoint (to resume from after the crash).
    while !(std::fs::read_to_string(&lock).is_ok_and(|t| t.contains("pid"))
        && out.join("trainer.json").is_file())
    {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no lock or checkpoint appeared"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut args = train_args(&acts, &out, "20");
    args.extend(["--arch", "topk", "--k", "4"]);
    let begun = Instant::now();
    let stderr = refused(
        &args,
        &[
            "is being written by another sae run",
            &format!("pid {}", first.id()),
        ],
    );
    assert!(begun.elapsed() < Duration::from_secs(10), "{stderr}");
    // kill -9: the kernel drops the lock, and the next run takes the folder at once.
    first.kill().unwrap();
    first.wait().unwrap();
    let mut resume = train_args(&acts, &out, "100000");
    resume.extend(["--resume"]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_sae"))
        .args(&resume)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    if let Some(status) = child.try_wait().unwrap() {
        let o = child.wait_with_output().unwrap();
        panic!(
            "the resumed run stopped ({status}): {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

#[cfg(unix)]
#[test]
fn written_files_follow_the_umask() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let acts = make_store(dir.path());
    let out = dir.path().join("run");
    let args = train_args(&acts, &out, "10").join(" ");
    for (umask, mode) in [("022", 0o644), ("027", 0o640)] {
        let o = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "umask {umask} && exec '{}' {args} --overwrite",
                env!("CARGO_BIN_EXE_sae")
            ))
            .env("HF_HUB_OFFLINE", "1")
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let files: Vec<_> = std::fs::read_dir(&out).unwrap().flatten().collect();
        assert!(files.len() >= 5);
        for f in files {
            let got = f.metadata().unwrap().permissions().mode() & 0o777;
            assert_eq!(
                got,
                mode,
                "{} has mode {got:o} under umask {umask}",
                f.path().display()
            );
        }
    }
}
