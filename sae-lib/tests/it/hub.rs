//! Credentials and refusals against the Hub stand-in: a gated repository asks for a token, a
//! token is taken from where `huggingface_hub` takes it, and each refusal says what to do.

use std::path::Path;
use std::process::{Command, Output};

use candle_core::{DType, Device};
use sae_lib::hub::HubOptions;
use sae_lib::model::{load_model, ModelSource};

use crate::common::*;
use crate::mock_hub::{files_of, MockHub};

const GRANTED: &str = "hf_granted_token";

fn gated_pythia() -> MockHub {
    MockHub::serve_gated(
        vec![(
            "org/gated".into(),
            files_of(&fixture("pythia/safetensors"), ""),
        )],
        GRANTED,
    )
}

/// A gated model loads with the granted token only; without one, or with another, the error
/// names the HTTP refusal, the repository's page and the variable to set, and does not blame
/// the network.
#[test]
fn a_gated_repository_says_which_token_it_needs() {
    let server = gated_pythia();
    let cache = tempfile::tempdir().unwrap();
    let hub = |token: Option<&str>| HubOptions {
        token: token.map(String::from),
        ..server.options(cache.path())
    };
    let load = |spec: &str, token| {
        load_model(
            &ModelSource::parse(spec),
            &Device::Cpu,
            DType::F32,
            &hub(token),
        )
    };
    let page = format!("{}/org/gated", server.endpoint);

    let msg = load("org/gated", None).unwrap_err().to_string();
    for want in [
        "`org/gated`",
        "HTTP 401",
        "HF_TOKEN",
        "huggingface-cli login",
        &page,
    ] {
        assert!(msg.contains(want), "missing {want:?} in: {msg}");
    }
    assert!(
        !msg.contains("cannot reach"),
        "not a network problem: {msg}"
    );

    let msg = load("org/gated", Some("hf_not_granted"))
        .unwrap_err()
        .to_string();
    for want in ["HTTP 403", "request access", &page] {
        assert!(msg.contains(want), "missing {want:?} in: {msg}");
    }

    let model = load("org/gated", Some(GRANTED)).unwrap();
    let local = load_fixture_model("pythia/safetensors");
    assert_eq!(
        max_abs_diff(&model.unembed().unwrap(), &local.unembed().unwrap()),
        0.0
    );
    let seen = server.tokens_seen();
    let last_refused = seen.iter().rposition(|t| t.as_deref() != Some(GRANTED));
    assert!(
        last_refused.is_some_and(|i| i + 1 < seen.len()),
        "the granted load sent the token with every request: {seen:?}"
    );

    let msg = load("org/absent", Some(GRANTED)).unwrap_err().to_string();
    assert!(
        msg.contains("`org/absent`") && msg.contains("HTTP 404"),
        "{msg}"
    );
}

/// `sae collect --model org/gated` from an empty cache, with the stand-in as the Hub and `env`
/// on top of a clean Hub environment.
fn collect(server: &MockHub, dir: &Path, out: &str, env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sae"));
    cmd.args(["collect", "--model", "org/gated", "--dataset"])
        .arg(fixture("corpus.txt"))
        .args([
            "--hook",
            "blocks.1.hook_mlp_out",
            "--max-docs",
            "2",
            "--out",
        ])
        .arg(dir.join(out))
        .env("HF_ENDPOINT", &server.endpoint)
        .env("HF_HOME", dir.join("home"));
    for var in [
        "HF_HUB_OFFLINE",
        "HF_HUB_CACHE",
        "HF_TOKEN",
        "HF_TOKEN_PATH",
    ] {
        cmd.env_remove(var);
    }
    for (var, value) in env {
        cmd.env(var, value);
    }
    cmd.output().unwrap()
}

/// The token comes from `HF_TOKEN`, else the file at `HF_TOKEN_PATH`, else `$HF_HOME/token`
/// (where `huggingface-cli login` writes it), and `HF_HUB_CACHE` moves the cache out of
/// `HF_HOME`, as in Python's `huggingface_hub`.
#[test]
fn the_token_and_the_cache_are_found_where_huggingface_hub_looks() {
    let server = gated_pythia();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let stderr = |o: &Output| String::from_utf8_lossy(&o.stderr).into_owned();
    let s = |p: &Path| p.to_str().unwrap().to_string();

    let o = collect(&server, d, "none", &[]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("HTTP 401"), "{}", stderr(&o));

    // The login file, with the newline `huggingface-cli login` leaves.
    std::fs::create_dir_all(d.join("home")).unwrap();
    std::fs::write(d.join("home/token"), format!("{GRANTED}\n")).unwrap();
    let cache = d.join("elsewhere");
    let o = collect(&server, d, "login", &[("HF_HUB_CACHE", &s(&cache))]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(cache.join("models--org--gated").is_dir());
    assert!(
        !d.join("home/hub").exists(),
        "HF_HUB_CACHE replaces $HF_HOME/hub"
    );

    // HF_TOKEN comes before the file.
    let wrong = d.join("wrong");
    std::fs::write(&wrong, "hf_not_granted").unwrap();
    let o = collect(&server, d, "env", &[("HF_TOKEN", "hf_not_granted")]);
    assert!(stderr(&o).contains("HTTP 403"), "{}", stderr(&o));

    // HF_TOKEN_PATH moves the file.
    std::fs::remove_file(d.join("home/token")).unwrap();
    let o = collect(&server, d, "path", &[("HF_TOKEN_PATH", &s(&wrong))]);
    assert!(stderr(&o).contains("HTTP 403"), "{}", stderr(&o));
    std::fs::write(&wrong, GRANTED).unwrap();
    let o = collect(&server, d, "path2", &[("HF_TOKEN_PATH", &s(&wrong))]);
    assert!(o.status.success(), "{}", stderr(&o));
}

/// SAELens' `release/sae_id`, as `SAE.from_pretrained` takes them, is the Hub folder its
/// directory maps them to.
#[test]
fn an_saelens_release_name_is_its_hub_folder() {
    let repo = "ctigges/pythia-70m-deduped__mlp-sm_processed";
    let server = MockHub::serve(
        repo,
        files_of(&fixture("saelens/legacy_standard"), "5-mlp-sm/"),
    );
    let cache = tempfile::tempdir().unwrap();
    let hub = server.options(cache.path());
    let by_release =
        sae_lib::sae::locate("pythia-70m-deduped-mlp-sm/blocks.5.hook_mlp_out", &hub).unwrap();
    assert_eq!(
        by_release,
        sae_lib::sae::locate(&format!("{repo}/5-mlp-sm"), &hub).unwrap()
    );
    assert!(server
        .downloaded()
        .iter()
        .all(|f| f.starts_with("5-mlp-sm/")));
    let msg = sae_lib::sae::locate("pythia-70m-deduped-mlp-sm/blocks.5.hook_attn_out", &hub)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("blocks.5.hook_mlp_out"), "{msg}");
}
