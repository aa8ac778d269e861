//! The `sae` binary end to end: the walkthrough's report, one clear error (never a panic) for
//! every bad input, and training that survives Ctrl-C and `kill -9`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::common::*;
use crate::eval::assert_valid_png;

pub(crate) fn sae(args: &[&str]) -> Output {
    sae_in(Path::new("."), args)
}

/// [`sae`] run from the working directory `cwd`.
pub(crate) fn sae_in(cwd: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sae"))
        .current_dir(cwd)
        .args(args)
        .env("HF_HUB_OFFLINE", "1")
        .env(
            "HF_HOME",
            std::env::temp_dir().join("sae-lib-test-empty-hf-home"),
        )
        .env_remove("SAE_PROGRESS")
        .env_remove("HF_HUB_CACHE")
        .env_remove("HF_TOKEN")
        .output()
        .unwrap()
}

pub(crate) fn text_fixture(dir: &Path) -> PathBuf {
    let path = dir.join("text.txt");
    let paragraphs: Vec<String> = (0..80)
        .map(|i| format!("Paragraph {i}: the quick brown fox jumps over {} lazy dogs, then rests by river number {}.", i % 7, i * 3))
        .collect();
    std::fs::write(&path, paragraphs.join("\n\n")).unwrap();
    path
}

pub(crate) fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The fixture's layer-1 MLP output, every token of each document's first 64.
const EVERY_TOKEN_OF_LAYER_1: [&str; 6] = [
    "--hook",
    "blocks.1.hook_mlp_out",
    "--mode",
    "all",
    "--max-len",
    "64",
];

#[test]
fn walkthrough_writes_the_whole_report() {
    let dir = tempfile::tempdir().unwrap();
    let text = text_fixture(dir.path());
    let out = dir.path().join("report");
    let model = fixture("gpt_neox_parallel");
    let mut args = vec!["walkthrough", "--model", s(&model), "--dataset", s(&text)];
    args.extend(EVERY_TOKEN_OF_LAYER_1);
    args.extend([
        "--exclude-first",
        "--max-docs",
        "60",
        "--eval-docs",
        "10",
        "--d-sae",
        "64",
        "--steps",
        "60",
        "--batch-size",
        "256",
        "--lr",
        "1e-3",
        "--device",
        "cpu",
        "--out",
        s(&out),
    ]);
    let o = sae(&args);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "walkthrough failed: {stderr}");
    let metrics: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("metrics.json")).unwrap()).unwrap();
    for key in ["fvu", "l0", "dead_fraction", "explained_variance"] {
        assert!(metrics[key].as_f64().unwrap().is_finite(), "{key}");
    }
    let held_out = &metrics["held_out"];
    assert!(held_out["fvu"].as_f64().unwrap().is_finite());
    assert!(
        held_out["rows"].as_u64().unwrap() > 100,
        "10 documents, every token"
    );
    assert_eq!(metrics["splice_held_out"], true);
    let splice = &metrics["splice"];
    assert!(splice["ce_loss_score"].as_f64().unwrap().is_finite());
    assert!(splice["tokens"].as_u64().unwrap() > 100);
    assert!(metrics["rows"].as_u64().unwrap() > 1000);
    // --exclude-first reaches both collections (the training and the held-out one).
    for store in ["activations", "held_out_activations"] {
        let meta: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join(store).join("meta.json")).unwrap())
                .unwrap();
        assert_eq!(meta["exclude_first"], true, "{store}: {meta}");
    }
    let charts = metrics["charts"].as_array().unwrap();
    assert!(charts.len() >= 5);
    let html = std::fs::read_to_string(out.join("index.html")).unwrap();
    for c in charts {
        let c = c.as_str().unwrap();
        assert_valid_png(&std::fs::read(out.join(c)).unwrap(), None);
        assert!(html.contains(c), "index.html does not show {c}");
    }
    assert!(html.contains("top activating contexts") || html.contains("Top activating contexts"));
    let cfg = sae_lib::walkthrough::WalkthroughConfig {
        out: out.clone(),
        ..Default::default()
    };
    let sae_dir = cfg.sae_dir();
    let files = [
        out.join("metrics.json"),
        out.join("index.html"),
        sae_dir.join("cfg.json"),
        sae_dir.join("sae_weights.safetensors"),
    ];
    for f in files {
        assert!(f.is_file(), "missing {}", f.display());
    }
    // The report's SAE loads back in SAELens' layout.
    sae_lib::sae::format::load(&cfg.sae_dir(), &candle_core::Device::Cpu).unwrap();
}

/// Copies the fixture model into `dir` with `edit` applied.
fn broken_model(dir: &Path, edit: impl FnOnce(&Path)) -> PathBuf {
    let m = dir.join(format!("model-{}", std::fs::read_dir(dir).unwrap().count()));
    std::fs::create_dir_all(&m).unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(fixture("gpt_neox_parallel").join(f), m.join(f)).unwrap();
    }
    edit(&m);
    m
}

#[test]
fn every_bad_input_gets_one_clear_error_and_a_nonzero_exit() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let text = text_fixture(d);
    let empty = d.join("empty.txt");
    std::fs::write(&empty, "\n\n   \n").unwrap();
    let jsonl = d.join("docs.jsonl");
    std::fs::write(&jsonl, "{\"body\": \"hello\"}\n").unwrap();
    let good = fixture("gpt_neox_parallel");
    let no_config = broken_model(d, |m| std::fs::remove_file(m.join("config.json")).unwrap());
    let truncated = broken_model(d, |m| {
        let b = std::fs::read(m.join("model.safetensors")).unwrap();
        std::fs::write(m.join("model.safetensors"), &b[..b.len() / 3]).unwrap();
    });
    let bad_config = broken_model(d, |m| {
        let c = std::fs::read_to_string(m.join("config.json"))
            .unwrap()
            .replace("\"gelu\"", "\"swiglu-ish\"");
        std::fs::write(m.join("config.json"), c).unwrap();
    });
    let nan_model = broken_model(d, |m| {
        let p = m.join("model.safetensors");
        let mut ts = candle_core::safetensors::load(&p, &candle_core::Device::Cpu).unwrap();
        let w = &ts["gpt_neox.embed_in.weight"];
        ts.insert("gpt_neox.embed_in.weight".into(), (w * f64::NAN).unwrap());
        candle_core::safetensors::save(&ts, &p).unwrap();
    });
    // An 8-wide SAE, for a 32-wide model.
    let small_sae = d.join("small-sae");
    std::fs::create_dir_all(&small_sae).unwrap();
    std::fs::copy(
        fixture("saelens/standard/cfg.json"),
        small_sae.join("cfg.json"),
    )
    .unwrap();
    std::fs::copy(
        fixture("saelens/standard/sae_weights.safetensors"),
        small_sae.join("sae_weights.safetensors"),
    )
    .unwrap();
    let out = d.join("out");
    let collect = |model: &Path, dataset: &Path, extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = [
            "collect",
            "--model",
            s(model),
            "--dataset",
            s(dataset),
            "--device",
            "cpu",
        ]
        .iter()
        .map(|x| x.to_string())
        .collect();
        a.extend(extra.iter().map(|x| x.to_string()));
        // Defaults for what the case does not set itself.
        for (flag, value) in [("--hook", "blocks.1.hook_mlp_out"), ("--out", s(&out))] {
            if !extra.contains(&flag) {
                a.extend([flag.to_string(), value.to_string()]);
            }
        }
        a
    };
    let cases: Vec<(&str, Vec<String>, &str)> = vec![
        (
            "missing model files",
            collect(&no_config, &text, &[]),
            "config.json not found",
        ),
        (
            "missing model directory",
            collect(&d.join("nope"), &text, &[]),
            "model directory not found",
        ),
        (
            "truncated safetensors",
            collect(&truncated, &text, &[]),
            "truncated: the file has",
        ),
        (
            "unsupported config value",
            collect(&bad_config, &text, &[]),
            "hidden_act `swiglu-ish` is not supported",
        ),
        (
            "hook that does not exist",
            collect(&good, &text, &["--hook", "blocks.3.hook_mlp_out"]),
            "blocks.0 to blocks.2",
        ),
        (
            "malformed hook name",
            collect(&good, &text, &["--hook", "layers.1.mlp"]),
            "is not a hook name",
        ),
        (
            "empty dataset",
            collect(&good, &empty, &[]),
            "dataset is empty",
        ),
        (
            "missing dataset column",
            collect(&good, &jsonl, &[]),
            "no field `text`",
        ),
        (
            "NaN activations",
            collect(&nan_model, &text, &[]),
            "non-finite",
        ),
        (
            "unreachable Hub, nothing cached",
            collect(Path::new("EleutherAI/pythia-70m-deduped"), &text, &[]),
            "HF_HUB_OFFLINE",
        ),
        (
            "unwritable output folder",
            collect(&good, &text, &["--out", "/proc/sae-lib-cannot-write/x"]),
            "cannot create output folder",
        ),
        (
            "SAE whose d_in does not match the hook",
            [
                "eval",
                "--model",
                s(&good),
                "--dataset",
                s(&text),
                "--sae",
                s(&small_sae),
                "--hook",
                "blocks.1.hook_mlp_out",
                "--device",
                "cpu",
                "--out",
                s(&d.join("m.json")),
            ]
            .iter()
            .map(|x| x.to_string())
            .collect(),
            "d_in is 8",
        ),
        (
            "missing activation store",
            vec![
                "train".into(),
                "--acts".into(),
                s(&d.join("none")).into(),
                "--out".into(),
                s(&out).into(),
            ],
            "activation store (meta.json) not found",
        ),
    ];
    for (name, args, expected) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = sae(&args);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(
            o.status.code(),
            Some(1),
            "{name}: exit {:?}, stderr: {stderr}",
            o.status.code()
        );
        assert!(
            stderr.contains(expected),
            "{name}: expected {expected:?} in: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{name} panicked: {stderr}");
        assert_eq!(
            stderr.lines().filter(|l| l.starts_with("error:")).count(),
            1,
            "{name}: {stderr}"
        );
    }
    // No partial output anywhere.
    for entry in walk(d) {
        let name = entry.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            !name.contains(".tmp-"),
            "left a temporary file: {}",
            entry.display()
        );
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// A small activation store from the fixture model, collected from within `dir` with paths
/// relative to it (`./model`, `text.txt`), as a user in their own folder would: its
/// provenance must still find them from elsewhere.
pub(crate) fn make_store(dir: &Path) -> PathBuf {
    text_fixture(dir);
    let acts = dir.join("acts");
    std::os::unix::fs::symlink(fixture("gpt_neox_parallel"), dir.join("model")).unwrap();
    let mut args = vec!["collect", "--model", "./model", "--dataset", "text.txt"];
    args.extend(EVERY_TOKEN_OF_LAYER_1);
    args.extend(["--device", "cpu", "--out", "acts"]);
    let o = sae_in(dir, &args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    acts
}

pub(crate) fn train_args<'a>(acts: &'a Path, out: &'a Path, steps: &'a str) -> Vec<&'a str> {
    vec![
        "train",
        "--acts",
        s(acts),
        "--d-sae",
        "256",
        "--steps",
        steps,
        "--batch-size",
        "512",
        "--lr",
        "1e-3",
        "--seed",
        "3",
        "--checkpoint-every",
        "7",
        "--log-every",
        "5",
        "--device",
        "cpu",
        "--out",
        s(out),
    ]
}

/// `--steps` for `passes` reads of the store at [`train_args`]' batch of 512.
fn steps_for_passes(acts: &Path, passes: u64) -> String {
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(acts.join("meta.json")).unwrap()).unwrap();
    (passes * meta["rows"].as_u64().unwrap())
        .div_ceil(512)
        .to_string()
}

pub(crate) fn checkpoint_step(out: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(out.join("trainer.json")).ok()?;
    serde_json::from_str::<serde_json::Value>(&text).ok()?["step"].as_u64()
}

/// Runs `sae args` and SIGKILLs it once `dir` holds a checkpoint at step `step` or later.
pub(crate) fn kill_9_after_checkpoint(args: &[&str], dir: &Path, step: u64) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sae"))
        .args(args)
        .spawn()
        .unwrap();
    let start = Instant::now();
    while checkpoint_step(dir).unwrap_or(0) < step {
        assert!(
            child.try_wait().unwrap().is_none(),
            "training finished before it could be killed"
        );
        assert!(start.elapsed() < Duration::from_secs(120));
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
}

#[test]
fn kill_9_then_resume_ends_with_the_uninterrupted_weights() {
    let dir = tempfile::tempdir().unwrap();
    let acts = make_store(dir.path());
    let steps = "400";
    let whole = dir.path().join("whole");
    let o = sae(&train_args(&acts, &whole, steps));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let killed = dir.path().join("killed");
    kill_9_after_checkpoint(&train_args(&acts, &killed, steps), &killed, 14);
    let at = checkpoint_step(&killed).unwrap();
    assert!(at < 400, "killed after the end");
    let mut args = train_args(&acts, &killed, steps);
    args.push("--resume");
    let o = sae(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for f in ["sae_weights.safetensors", "sparsity.safetensors"] {
        assert!(
            std::fs::read(whole.join(f)).unwrap() == std::fs::read(killed.join(f)).unwrap(),
            "{f} differs after kill -9 at step {at} and --resume"
        );
    }
}

#[test]
fn ctrl_c_saves_a_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let acts = make_store(dir.path());
    let out = dir.path().join("run");
    let child = Command::new(env!("CARGO_BIN_EXE_sae"))
        .args(train_args(&acts, &out, "100000"))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while checkpoint_step(&out).is_none() {
        assert!(start.elapsed() < Duration::from_secs(120));
        std::thread::sleep(Duration::from_millis(10));
    }
    let killed = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let o = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(
        stderr.contains("interrupted at step") && stderr.contains("--resume"),
        "{stderr}"
    );
    let step = checkpoint_step(&out).unwrap();
    assert!(step > 0 && step < 100000);
    sae_lib::sae::format::load(&out, &candle_core::Device::Cpu).unwrap();
}

/// `--dtype bf16` trains in mixed precision: the checkpoint records it (so `--resume` goes on
/// in bf16), and the saved SAE holds f32 weights that reconstruct the store.
#[test]
fn bf16_training_saves_f32_weights_and_records_its_dtype() {
    let dir = tempfile::tempdir().unwrap();
    let acts = make_store(dir.path());
    let out = dir.path().join("bf16");
    let mut args = train_args(&acts, &out, "40");
    args.extend(["--dtype", "bf16"]);
    let o = sae(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("trainer.json")).unwrap()).unwrap();
    assert_eq!(state["train"]["compute"], "bf16", "{state}");
    use sae_lib::sae::Sae;
    let sae = sae_lib::sae::format::load(&out, &candle_core::Device::Cpu).unwrap();
    for (name, v) in sae.vars() {
        assert_eq!(v.dtype(), candle_core::DType::F32, "{name}");
    }
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("metrics.json")).unwrap()).unwrap();
    let fvu = report["final_metrics"]["fvu"].as_f64().unwrap();
    assert!(fvu.is_finite() && fvu < 0.9, "FVU {fvu}");
}

/// A run that reads its store many times says its FVU is on training rows and points at
/// held-out scoring; a run that reads it about once does not.
#[test]
fn many_passes_over_a_store_point_at_held_out_scoring() {
    let dir = tempfile::tempdir().unwrap();
    let acts = make_store(dir.path());
    for (passes, noted) in [(1u64, false), (12, true)] {
        let out = dir.path().join(format!("passes-{passes}"));
        let steps = steps_for_passes(&acts, passes);
        let o = sae(&train_args(&acts, &out, &steps));
        let (stdout, stderr) = (
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr),
        );
        assert!(o.status.success(), "{stderr}");
        assert!(stdout.contains("(on training rows)"), "{stdout}");
        assert_eq!(
            stderr.contains("sae score --sae"),
            noted,
            "{passes} passes: {stderr}"
        );
    }
}

/// `--init-threshold` starts JumpReLU's θ where it says (recorded with the run, so a resumed
/// run's resampling restarts θ there too), a many-pass JumpReLU run without it points at it,
/// and it is refused with one clear line where it does not apply or is not a positive number.
#[test]
fn init_threshold_is_jumprelus_and_positive() {
    let dir = tempfile::tempdir().unwrap();
    let acts = make_store(dir.path());
    let twelve_passes = steps_for_passes(&acts, 12);
    let run = |name: &str, extra: &[&str]| {
        let out = dir.path().join(name);
        let mut args = train_args(&acts, &out, &twelve_passes);
        args.extend_from_slice(extra);
        (sae(&args), out)
    };
    let (o, out) = run("given", &["--arch", "jumprelu", "--init-threshold", "0.4"]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(!stderr.contains("--init-threshold"), "{stderr}");
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("trainer.json")).unwrap()).unwrap();
    let recorded = state.pointer("/train/init_threshold");
    assert_eq!(recorded.and_then(|v| v.as_f64()), Some(0.4), "{state}");
    let (o, _) = run("default", &["--arch", "jumprelu"]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(
        stderr.contains("--init-threshold 0.7 --b-dec-init zeros"),
        "{stderr}"
    );
    for (name, extra, expected) in [
        (
            "relu",
            &["--arch", "relu", "--init-threshold", "0.4"][..],
            "--init-threshold applies to jumprelu",
        ),
        (
            "negative",
            &["--arch", "jumprelu", "--init-threshold=-1"][..],
            "the initial threshold must be a finite number above 0",
        ),
    ] {
        let (o, out) = run(name, extra);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{name}: {stderr}");
        assert!(stderr.contains(expected), "{name}: {stderr}");
        assert_eq!(
            stderr.lines().filter(|l| l.starts_with("error:")).count(),
            1,
            "{stderr}"
        );
        assert!(!out.exists(), "{name}: left {}", out.display());
    }
}

/// `sae sweep` measures every SAE on as many of the store's last rows as `--eval-rows` asks
/// and says which; 0 measures on the training rows.
#[test]
fn a_sweep_measures_on_the_rows_eval_rows_names() {
    let dir = tempfile::tempdir().unwrap();
    let acts = make_store(dir.path());
    for (rows, says, held_out) in [
        ("50", "on the store's last 50 rows", true),
        ("0", "on the training rows", false),
    ] {
        let out = dir.path().join(format!("sweep-{rows}"));
        let o = sae(&[
            "sweep",
            "--acts",
            s(&acts),
            "--archs",
            "topk",
            "--ks",
            "4",
            "--d-sae",
            "32",
            "--steps",
            "5",
            "--batch-size",
            "64",
            "--eval-rows",
            rows,
            "--device",
            "cpu",
            "--out",
            s(&out),
        ]);
        let stdout = String::from_utf8_lossy(&o.stdout);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert!(stdout.contains(says), "{stdout}");
        let points: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join("sweep.json")).unwrap()).unwrap();
        assert_eq!(points[0]["held_out"], held_out, "{points}");
    }
}

/// With only `--sae` (and the store for inspect), `eval` splices the SAE into the model and
/// text its cfg.json names, at its context size, and `inspect` reads the store's own model,
/// instead of the tutorial's Pythia (which this offline test cannot fetch).
#[test]
fn eval_and_inspect_default_to_the_model_and_text_the_sae_came_from() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let acts = make_store(d);
    let out = d.join("sae");
    let mut args = train_args(&acts, &out, "20");
    args.extend(["--arch", "topk", "--k", "4"]);
    let o = sae(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    // The store read all 80 documents of the text, and the SAE's cfg.json says so: by
    // default `eval` starts after them, and here none remain.
    let cfg_path = out.join("cfg.json");
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&cfg_path).unwrap()).unwrap();
    assert_eq!(cfg["metadata"]["training_docs"], 80, "{cfg}");
    // The store was collected from `d` with relative paths; they are recorded absolute, so
    // `eval` below, run from the tests' own folder, finds the model and text.
    for key in ["model_name", "dataset_path"] {
        let path = Path::new(cfg["metadata"][key].as_str().unwrap());
        assert!(path.is_absolute() && path.exists(), "{key}: {cfg}");
    }
    let metrics = d.join("m.json");
    let eval = |extra: &[&str]| {
        let mut args = vec![
            "eval",
            "--sae",
            s(&out),
            "--device",
            "cpu",
            "--out",
            s(&metrics),
        ];
        args.extend(extra);
        let o = sae(&args);
        let stderr = String::from_utf8_lossy(&o.stderr).to_string();
        assert!(stderr.contains("using the SAE's own model"), "{stderr}");
        let tokens = o.status.success().then(|| {
            let m: serde_json::Value =
                serde_json::from_slice(&std::fs::read(&metrics).unwrap()).unwrap();
            assert!(m["ce_loss_score"].as_f64().unwrap().is_finite(), "{m}");
            // Warned, in the log and metrics.json, exactly when the SAE does no better than
            // zeroing an activation whose loss it should recover.
            let f = |k: &str| m[k].as_f64().unwrap();
            let useless =
                f("ce_loss_with_ablation") > f("ce_loss_without_sae") && f("ce_loss_score") <= 0.0;
            let warned = m["warnings"].as_array().unwrap();
            assert_eq!(warned.len(), usize::from(useless), "{m}");
            assert_eq!(stderr.contains("warning: spliced"), useless, "{stderr}");
            m["tokens"].as_u64().unwrap()
        });
        (tokens, stderr)
    };
    let (tokens, stderr) = eval(&["--max-docs", "5"]);
    assert!(tokens.is_none(), "{stderr}");
    assert!(
        stderr.contains("no documents with text after the first 80")
            && stderr.contains("--skip-docs"),
        "{stderr}"
    );
    let (tokens, stderr) = eval(&["--max-docs", "5", "--skip-docs", "0"]);
    let tokens = tokens.unwrap_or_else(|| panic!("{stderr}"));
    // 5 documents cut at the store's 64 tokens, not the tutorial's 128.
    assert!(tokens > 5 && tokens <= 5 * 64, "{tokens}");

    // An SAE whose activations came from the first 75 documents is evaluated on the last 5.
    cfg["metadata"]["training_docs"] = 75.into();
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let (after, stderr) = eval(&["--max-docs", "10"]);
    assert!(stderr.contains("after the first 75"), "{stderr}");
    let (explicit, _) = eval(&["--max-docs", "10", "--skip-docs", "75"]);
    let (from_first, _) = eval(&["--max-docs", "10", "--skip-docs", "0"]);
    assert_eq!(after, explicit, "{stderr}");
    assert!(
        after.unwrap() < from_first.unwrap(),
        "{after:?} {from_first:?}"
    );
    // A cfg.json that does not say (SAELens' own): from the first document, with a note.
    cfg["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("training_docs");
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let (unknown, stderr) = eval(&["--max-docs", "10"]);
    assert!(
        stderr.contains("may be ones the SAE trained on"),
        "{stderr}"
    );
    assert_eq!(unknown, from_first, "{stderr}");

    // `inspect` on the store, and without one: it then collects every token of the SAE's own
    // text at its hook and context size, here the store's 80 documents, and shows the same.
    let inspect = |feature: &str, extra: &[&str]| {
        let mut args = vec![
            "inspect",
            "--sae",
            s(&out),
            "--feature",
            feature,
            "--top",
            "3",
        ];
        args.extend(extra);
        let o = sae(&args);
        let stderr = String::from_utf8_lossy(&o.stderr).to_string();
        assert!(o.status.success(), "{stderr}");
        (String::from_utf8_lossy(&o.stdout).to_string(), stderr)
    };
    let live = (0..16)
        .map(|f| f.to_string())
        .find(|f| inspect(f, &["--acts", s(&acts)]).0.contains("[["))
        .expect("one of the first 16 features fires");
    let (stdout, _) = inspect(&live, &["--acts", s(&acts)]);
    assert!(
        stdout.contains(&format!("feature {live}: top 3")),
        "{stdout}"
    );
    assert!(
        stdout.contains("promotes:"),
        "the logit lens needs the model: {stdout}"
    );
    let (collected, stderr) = inspect(&live, &["--max-docs", "80"]);
    assert!(
        stderr.contains("using the SAE's own model") && stderr.contains("from 80 documents"),
        "{stderr}"
    );
    assert_eq!(collected, stdout, "{stderr}");
    // A feature past the last (256 of them) is refused before any collection.
    let o = sae(&["inspect", "--sae", s(&out), "--feature", "256"]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{stderr}");
    assert!(
        stderr.contains("feature 256 does not exist: the SAE has 256 features (0 to 255)")
            && !stderr.contains("collected"),
        "{stderr}"
    );
}

/// `sae eval --sae DIR --max-docs 5` on the CPU, plus `extra`, into `out`: its stdout and
/// metrics.json (it must succeed).
pub(crate) fn eval_five(dir: &Path, extra: &[&str], out: &Path) -> (String, serde_json::Value) {
    let mut args = vec![
        "eval",
        "--sae",
        s(dir),
        "--max-docs",
        "5",
        "--device",
        "cpu",
    ];
    args.extend(extra);
    args.extend(["--out", s(out)]);
    let o = sae(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let m = serde_json::from_slice(&std::fs::read(out).unwrap()).unwrap();
    (String::from_utf8_lossy(&o.stdout).into_owned(), m)
}

/// `--drop-outliers` (10 unless given) and `--exclude-first` reach the store and the SAE's
/// cfg.json, and `sae eval` leaves those tokens alone and says how many; a ratio that would cut
/// into ordinary tokens is one clear error.
#[test]
fn tokens_left_out_at_collection_are_left_alone_by_eval() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let text = text_fixture(d);
    let model = fixture("gpt_neox_parallel");
    let collect = |out: &str, filter: &[&str]| {
        let acts = d.join(out);
        let mut args = vec!["collect", "--model", s(&model), "--dataset", s(&text)];
        args.extend(EVERY_TOKEN_OF_LAYER_1);
        args.extend(["--max-docs", "40", "--device", "cpu", "--out", s(&acts)]);
        args.extend(filter);
        let o = sae(&args);
        let meta = o.status.success().then(|| {
            serde_json::from_slice::<serde_json::Value>(
                &std::fs::read(acts.join("meta.json")).unwrap(),
            )
            .unwrap()
        });
        (o, meta)
    };
    let (_, meta) = collect("default-ratio", &["--drop-outliers"]);
    assert_eq!(meta.unwrap()["outlier_norm"], 10.0);
    let (o, _) = collect("bad", &["--drop-outliers", "1"]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && stderr.contains("above 1") && !stderr.contains("panicked"),
        "{stderr}"
    );
    let (o, meta) = collect("acts", &["--drop-outliers", "1.2", "--exclude-first"]);
    let meta = meta.unwrap_or_else(|| panic!("{}", String::from_utf8_lossy(&o.stderr)));
    assert!(meta["outliers_dropped"].as_u64().unwrap() > 0, "{meta}");
    assert_eq!(meta["exclude_first"], true);

    let out = d.join("sae");
    let acts = d.join("acts");
    let o = sae(&train_args(&acts, &out, "10"));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("cfg.json")).unwrap()).unwrap();
    assert_eq!(cfg["metadata"]["exclude_first"], true, "{cfg}");
    assert!((cfg["metadata"]["outlier_norm"].as_f64().unwrap() - 1.2).abs() < 1e-6);

    let (stdout, m) = eval_five(&out, &[], &d.join("m.json"));
    // At least each document's first token, and not all of them.
    let passed = m["tokens_passed_through"].as_u64().unwrap();
    assert!(passed > 5 && passed < m["tokens"].as_u64().unwrap(), "{m}");
    assert!(
        stdout.contains(&format!(
            "{passed} tokens kept their own activation with the SAE"
        )),
        "{stdout}"
    );
    // Read without a store, its features are read on the tokens it trained on.
    let page = d.join("feature");
    let o = sae(&[
        "inspect",
        "--sae",
        s(&out),
        "--feature",
        "0",
        "--max-docs",
        "5",
        "--out",
        s(&page),
    ]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        o.status.success() && stderr.contains("leaving out each first token and "),
        "{stderr}"
    );
}

/// `sae eval --sae org/name/folder` with nothing but a Hub cache: the SAE from its
/// repository's folder, its cfg.json from before SAELens 6 naming its model as TransformerLens
/// does (`pythia-70m-deduped`), and that model then read from EleutherAI's repository.
#[test]
fn sae_eval_reads_a_hub_sae_and_finds_its_model() {
    use candle_core::{DType, Device, Tensor};
    let dir = tempfile::tempdir().unwrap();
    let text = text_fixture(dir.path());
    let folder = dir.path().join("1-mlp-sm");
    std::fs::create_dir_all(&folder).unwrap();
    let (d_in, d_sae, dev) = (32, 64, &Device::Cpu);
    let weights = std::collections::HashMap::from([
        (
            "W_enc",
            Tensor::randn(0f32, 0.2, (d_in, d_sae), dev).unwrap(),
        ),
        ("b_enc", Tensor::zeros(d_sae, DType::F32, dev).unwrap()),
        (
            "W_dec",
            Tensor::randn(0f32, 0.2, (d_sae, d_in), dev).unwrap(),
        ),
        ("b_dec", Tensor::zeros(d_in, DType::F32, dev).unwrap()),
    ]);
    candle_core::safetensors::save(&weights, folder.join("sae_weights.safetensors")).unwrap();
    let cfg = serde_json::json!({
        "model_name": "pythia-70m-deduped", "hook_point": "blocks.1.hook_mlp_out",
        "hook_point_layer": 1, "d_in": d_in, "d_sae": d_sae, "context_size": 16,
        "dataset_path": s(&text),
    });
    std::fs::write(folder.join("cfg.json"), cfg.to_string()).unwrap();
    let home = dir.path().join("hf");
    cache_repo(&home.join("hub"), "org/saes", &[("1-mlp-sm", folder)], &[]);
    let model = fixture("gpt_neox_parallel");
    cache_repo(
        &home.join("hub"),
        "EleutherAI/pythia-70m-deduped",
        &[("", model)],
        &[],
    );
    let out = dir.path().join("m.json");
    let o = Command::new(env!("CARGO_BIN_EXE_sae"))
        .args(["eval", "--sae", "org/saes/1-mlp-sm", "--max-docs", "5"])
        .args(["--device", "cpu", "--out", s(&out)])
        .env("HF_HUB_OFFLINE", "1")
        .env("HF_HOME", &home)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(
        stderr.contains("model EleutherAI/pythia-70m-deduped and dataset"),
        "{stderr}"
    );
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(out).unwrap()).unwrap();
    assert_eq!(m["hook"], "blocks.1.hook_mlp_out", "{m}");
    assert!(m["ce_loss_with_sae"].as_f64().unwrap().is_finite(), "{m}");
}

/// The tutorial's own command, `sae collect --model EleutherAI/pythia-70m-deduped --dataset
/// NeelNanda/pile-10k`, against a Hub stand-in serving those two repositories (a sharded
/// checkpoint; a parquet split named as pile-10k's is, beside a README; large files through a
/// redirect, as the Hub serves them), from an empty cache:
/// it downloads the checkpoint and the split, nothing else, and collects exactly what the same
/// files give from disk.
#[test]
fn the_tutorials_hub_model_and_dataset_download_and_collect() {
    use crate::mock_hub::{files_of, MockHub};
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let parquet = d.join("train.parquet");
    let paragraphs: Vec<String> = (0..12)
        .map(|i| {
            format!(
                "Paragraph {i} of the pile: {} words and a number, {}.",
                i % 5,
                i * 7
            )
        })
        .collect();
    let docs: Vec<&str> = paragraphs.iter().map(String::as_str).collect();
    crate::collect::write_parquet(&parquet, "text", &docs);
    let split = "data/train-00000-of-00001-4746b8785c874cc7.parquet";
    let checkpoint = fixture("pythia/sharded");
    let server = MockHub::serve_all(vec![
        (
            "EleutherAI/pythia-70m-deduped".into(),
            files_of(&checkpoint, ""),
        ),
        (
            "datasets/NeelNanda/pile-10k".into(),
            vec![
                (split.into(), std::fs::read(&parquet).unwrap()),
                ("README.md".into(), b"# pile-10k".to_vec()),
            ],
        ),
    ]);
    let collect = |model: &str, dataset: &str, out: &Path| {
        let o = Command::new(env!("CARGO_BIN_EXE_sae"))
            .args(["collect", "--model", model, "--dataset", dataset])
            .args(EVERY_TOKEN_OF_LAYER_1)
            .args(["--max-docs", "8", "--out", s(out)])
            .env("HF_ENDPOINT", &server.endpoint)
            .env("HF_HOME", d.join("hf"))
            .env_remove("HF_HUB_OFFLINE")
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    let (online, local) = (d.join("online"), d.join("local"));
    collect(
        "EleutherAI/pythia-70m-deduped",
        "NeelNanda/pile-10k",
        &online,
    );
    let mut downloaded = server.downloaded();
    downloaded.sort();
    let mut wanted: Vec<String> = files_of(&checkpoint, "").into_iter().map(|f| f.0).collect();
    wanted.push(split.into());
    wanted.sort();
    assert_eq!(downloaded, wanted);
    assert!(
        server.cdn_requests() > 0,
        "the weights came through the Hub's redirect"
    );
    collect(s(&checkpoint), s(&parquet), &local);
    let shards = |dir: &Path| {
        let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
            .collect();
        names.sort();
        names
            .iter()
            .map(|p| std::fs::read(p).unwrap())
            .collect::<Vec<_>>()
    };
    assert!(!shards(&online).is_empty());
    assert!(shards(&online) == shards(&local), "the stores differ");
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(online.join("meta.json")).unwrap()).unwrap();
    assert_eq!(
        (meta["model"].as_str(), meta["dataset"].as_str()),
        (
            Some("EleutherAI/pythia-70m-deduped"),
            Some("NeelNanda/pile-10k")
        ),
        "{meta}"
    );
}

/// An SAE saved by sparsify is evaluated at the hook its folder names (`layers.1.mlp`).
#[test]
fn sae_eval_reads_a_sparsify_sae() {
    let dir = tempfile::tempdir().unwrap();
    let text = text_fixture(dir.path());
    let model = fixture("gpt_neox_parallel");
    let (_, m) = eval_five(
        &fixture("sparsify/run/layers.1.mlp"),
        &["--model", s(&model), "--dataset", s(&text)],
        &dir.path().join("m.json"),
    );
    assert_eq!(m["hook"], "blocks.1.hook_mlp_out", "{m}");
    assert!(m["ce_loss_with_sae"].as_f64().unwrap().is_finite(), "{m}");
}
