//! Gemma Scope's SAEs (`params.npz`, what they read told by the folder names) against
//! SAELens' own loader, from disk, from the Hub, and spliced into Gemma 2 by `sae eval`.

use candle_core::Device;
use sae_lib::sae::{format, Sae};

use crate::cli::{eval_five, s, text_fixture};
use crate::common::*;
use crate::mock_hub::{files_of, MockHub};
use crate::variants::encodes_as_expected;

const FOLDER: &str = "layer_1/width_64/average_l0_5";

/// The fixture SAE of the repository `gemma-scope-2b-pt-{site}`.
fn fixture_dir_of(site: &str) -> std::path::PathBuf {
    fixture(&format!("gemma_scope/gemma-scope-2b-pt-{site}")).join(FOLDER)
}

fn fixture_dir() -> std::path::PathBuf {
    fixture_dir_of("res")
}

/// A residual-stream SAE and an attention one (on `attn.hook_z`) encode and decode as
/// SAELens' Gemma 2 loader builds them, and say what they read as it does.
#[test]
fn gemma_scope_saes_load_and_encode_as_saelens_does() {
    for site in ["res", "att"] {
        let dir = fixture_dir_of(site);
        let sae = format::load(&dir, &Device::Cpu).unwrap();
        encodes_as_expected(&sae, &dir, site);
        let want: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("expected.json")).unwrap()).unwrap();
        let meta = &sae.config().metadata;
        assert_eq!(meta.model_name, want["model_name"].as_str().unwrap());
        assert_eq!(meta.hook_name, want["hook_name"].as_str().unwrap());
        assert_eq!(
            meta.context_size as u64,
            want["context_size"].as_u64().unwrap()
        );
        assert_eq!(meta.prepend_bos, want["prepend_bos"].as_bool().unwrap());
        assert_eq!(meta.dataset_path, want["dataset_path"].as_str().unwrap());
    }
}

/// From the Hub only `params.npz` is fetched, and the cache's folder name
/// (`models--google--gemma-scope-2b-pt-res`) says what it reads.
#[test]
fn a_gemma_scope_folder_comes_from_the_hub_alone() {
    let repo = "google/gemma-scope-2b-pt-res";
    let files = files_of(&fixture("gemma_scope/gemma-scope-2b-pt-res"), "");
    let server = MockHub::serve(repo, files);
    let cache = tempfile::tempdir().unwrap();
    let hub = server.options(cache.path());
    let dir = sae_lib::sae::locate(&format!("{repo}/{FOLDER}"), &hub).unwrap();
    assert_eq!(server.downloaded(), [format!("{FOLDER}/params.npz")]);
    let meta = format::metadata(&dir).unwrap();
    assert_eq!(
        (meta.model_name.as_str(), meta.hook_name.as_str()),
        ("gemma-2-2b", "blocks.1.hook_resid_post")
    );
}

/// `sae eval` splices it into a Gemma 2 at the hook its folder names.
#[test]
fn sae_eval_splices_a_gemma_scope_sae_into_gemma2() {
    let dir = tempfile::tempdir().unwrap();
    let text = text_fixture(dir.path());
    let model = fixture("gemma2");
    let (_, m) = eval_five(
        &fixture_dir(),
        &["--model", s(&model), "--dataset", s(&text)],
        &dir.path().join("m.json"),
    );
    assert_eq!(m["hook"], "blocks.1.hook_resid_post", "{m}");
    assert!(m["ce_loss_with_sae"].as_f64().unwrap().is_finite(), "{m}");
}

/// `np.savez_compressed` deflates each array: such an archive reads as the stored one.
#[test]
fn a_compressed_npz_reads_as_a_stored_one() {
    use std::io::{Read, Write};
    let stored = fixture_dir().join("params.npz");
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("gemma-scope-2b-pt-res/layer_1/w");
    std::fs::create_dir_all(&copy).unwrap();
    let mut archive = zip::ZipArchive::new(std::fs::File::open(&stored).unwrap()).unwrap();
    let mut out = zip::ZipWriter::new(std::fs::File::create(copy.join("params.npz")).unwrap());
    let deflated = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    for i in 0..archive.len() {
        let mut entry = archive.by_index(i).unwrap();
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).unwrap();
        out.start_file(entry.name().unwrap().to_string(), deflated)
            .unwrap();
        out.write_all(&bytes).unwrap();
    }
    out.finish().unwrap();
    let mut check =
        zip::ZipArchive::new(std::fs::File::open(copy.join("params.npz")).unwrap()).unwrap();
    assert_eq!(
        check.by_index(0).unwrap().compression(),
        zip::CompressionMethod::Deflated
    );
    let sae = format::load(&copy, &Device::Cpu).unwrap();
    encodes_as_expected(&sae, &fixture_dir(), "deflated gemma scope");
}

/// An attention SAE (`-att`) reads `attn.hook_z`, the heads before their projection
/// (`heads · head_dim` wide, here the fixture's 4 × 12, not its d_model of 32), and
/// `sae eval` splices it there.
#[test]
fn an_attention_sae_is_spliced_at_hook_z() {
    let dir = tempfile::tempdir().unwrap();
    let text = text_fixture(dir.path());
    let model = fixture("gemma2");
    let (_, m) = eval_five(
        &fixture_dir_of("att"),
        &["--model", s(&model), "--dataset", s(&text)],
        &dir.path().join("m.json"),
    );
    assert_eq!(m["hook"], "blocks.1.attn.hook_z", "{m}");
    let (clean, spliced) = (
        m["ce_loss_without_sae"].as_f64().unwrap(),
        m["ce_loss_with_sae"].as_f64().unwrap(),
    );
    assert!(spliced.is_finite() && spliced != clean, "{m}");
}

/// `sae inspect` on an attention SAE shows its contexts, and says rather than fails that its
/// features, outside the residual stream, have no decoder logit lens.
#[test]
fn inspecting_an_attention_sae_shows_contexts_without_a_logit_lens() {
    let dir = tempfile::tempdir().unwrap();
    let text = text_fixture(dir.path());
    let att = fixture_dir_of("att");
    let o = crate::cli::sae(&[
        "inspect",
        "--sae",
        s(&att),
        "--model",
        s(&fixture("gemma2")),
        "--dataset",
        s(&text),
        "--feature",
        "3",
        "--max-docs",
        "10",
    ]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(out.contains("top") && out.contains("[["), "{out}");
    assert!(
        out.contains("no logit lens") && out.contains("48 wide"),
        "{out}"
    );
}
