//! The walkthrough's stages as notebooks use them: each reuses its saved output when the
//! settings are unchanged and recomputes it when they change.

use candle_core::DType;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use sae_lib::data::store::StoreWriter;
use sae_lib::data::ActivationStore;
use sae_lib::sae::common::normal_vec;
use sae_lib::sae::Sae;

use crate::common::*;
use sae_lib::walkthrough::{self, DocSplit, WalkthroughConfig};

fn config(out: &std::path::Path) -> WalkthroughConfig {
    let mut cfg = WalkthroughConfig::from_vars(|k| {
        let v = match k {
            "SAE_MODEL" => fixture("gpt_neox_parallel").display().to_string(),
            "SAE_DATASET" => fixture("corpus.txt").display().to_string(),
            "SAE_HOOK" => "blocks.1.hook_mlp_out".into(),
            "SAE_MAX_DOCS" => "20".into(),
            "SAE_D_SAE" => "32".into(),
            "SAE_STEPS" => "20".into(),
            "SAE_BATCH_SIZE" => "16".into(),
            "SAE_DEVICE" => "cpu".into(),
            _ => return None,
        };
        Some(v)
    })
    .unwrap();
    cfg.out = out.to_path_buf();
    cfg
}

#[test]
fn stages_reuse_saved_outputs_until_a_setting_changes() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    let (model, tokenizer) = walkthrough::load(&cfg).unwrap();

    let store = walkthrough::activations(&cfg, &model, &tokenizer).unwrap();
    assert_eq!(store.len(), 20, "one middle token per document");
    let shard = std::fs::read_dir(cfg.activations_dir())
        .unwrap()
        .flatten()
        .find(|e| e.path().extension().is_some_and(|x| x == "safetensors"))
        .unwrap()
        .path();
    let written = std::fs::metadata(&shard).unwrap().modified().unwrap();
    let again = walkthrough::activations(&cfg, &model, &tokenizer).unwrap();
    assert_eq!(again.len(), 20);
    assert_eq!(
        std::fs::metadata(&shard).unwrap().modified().unwrap(),
        written,
        "re-collected"
    );

    let (sae, rows) = walkthrough::train_sae(&cfg, &store).unwrap();
    let (reloaded, rows_again) = walkthrough::train_sae(&cfg, &store).unwrap();
    assert_eq!(rows, rows_again);
    assert_eq!(max_abs_diff(sae.w_dec(), reloaded.w_dec()), 0.0);

    assert_eq!(
        walkthrough::conflicts(&cfg),
        None,
        "the same settings reuse"
    );

    // A changed setting recomputes: more documents, then more steps. Before that, a run
    // would refuse the folder without --overwrite, naming each setting that changed once.
    cfg.collect.max_docs = Some(30);
    cfg.train.seed = 7;
    let what = walkthrough::conflicts(&cfg).expect("stale stages");
    assert!(
        what.contains("activations collected with other settings"),
        "{what}"
    );
    assert!(what.contains("SAE trained with other settings"), "{what}");
    assert!(
        what.contains("(changed: max_docs 20 → 30, seed 0 → 7)"),
        "{what}"
    );
    cfg.train.seed = 0;
    let bigger = walkthrough::activations(&cfg, &model, &tokenizer).unwrap();
    assert_eq!(bigger.len(), 30);
    cfg.train.steps = 30;
    let (_, longer) = walkthrough::train_sae(&cfg, &bigger).unwrap();
    assert_eq!(longer.last().unwrap().step, 30);
}

/// With every document asked for, the dataset's last ones are held out: the training store
/// never sees them, and the splice evaluation and the held-out store read exactly those.
#[test]
fn all_documents_leave_the_last_ones_held_out() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.collect.max_docs = None;
    cfg.eval_docs = 3;
    let (model, tokenizer) = walkthrough::load(&cfg).unwrap();
    let docs: Vec<String> = cfg.documents().unwrap().map(|d| d.unwrap()).collect();
    let split = cfg.split().unwrap();
    let training = docs.len() - 3;
    assert_eq!(
        split,
        DocSplit {
            training,
            held_out: 3
        }
    );

    let store = walkthrough::activations(&cfg, &model, &tokenizer).unwrap();
    assert_eq!(store.meta().docs + store.meta().skipped_empty, training);
    let held = walkthrough::held_out_sequences(&cfg, &tokenizer).unwrap();
    assert!(!held.from_training);
    let encode = |d: &String| tokenizer.encode(d, Some(cfg.collect.max_len)).unwrap();
    let last: Vec<Vec<u32>> = docs[training..].iter().map(encode).collect();
    assert_eq!(held.sequences, last);

    // The held-out rows are the tutorial loop's middle tokens of those documents.
    let rows = walkthrough::held_out_activations(&cfg, &model, &tokenizer)
        .unwrap()
        .expect("held-out documents remain");
    let tutorial = sae_lib::collect::tutorial_middle_tokens(
        &model,
        &tokenizer,
        docs[training..].iter().cloned().map(Ok),
        cfg.collect.hook,
        cfg.collect.max_len,
        None,
    )
    .unwrap();
    let got = rows.to_tensor(&candle_core::Device::Cpu).unwrap();
    assert_eq!(got.dims(), tutorial.activations.dims());
    assert!(max_abs_diff(&got, &tutorial.activations) < 1e-5);

    // At most a tenth of the dataset is held out; with every document training, none is.
    cfg.eval_docs = 1000;
    assert_eq!(cfg.split().unwrap().held_out, docs.len() / 10);
    cfg.collect.max_docs = Some(docs.len());
    assert!(
        walkthrough::held_out_sequences(&cfg, &tokenizer)
            .unwrap()
            .from_training
    );
    assert!(walkthrough::held_out_activations(&cfg, &model, &tokenizer)
        .unwrap()
        .is_none());
}

/// What the trainer found before its first step (a few rows holding most of the variance)
/// reaches the warnings notebooks print, after training and when the SAE is reloaded; a store
/// without such rows gives no such warning.
#[test]
fn warnings_name_a_few_rows_holding_most_of_the_variance() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.train.steps = 3;
    let (n, d) = (1000, 32);
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let plain = normal_vec(n * d, &mut rng);
    // Every 40th row 30 times as far out: 25 rows hold about 96% of the variance.
    let spiked: Vec<f32> = plain
        .iter()
        .enumerate()
        .map(|(i, v)| if (i / d) % 40 == 0 { 30.0 * v } else { *v })
        .collect();
    let outlier_warnings = |cfg: &WalkthroughConfig, values: &[f32]| {
        let store_dir = cfg.out.join("store");
        let _ = std::fs::remove_dir_all(&store_dir);
        let mut w = StoreWriter::create(&store_dir, empty_meta(d), 1 << 16, DType::F32).unwrap();
        for (doc, rows) in values.chunks(10 * d).enumerate() {
            let positions: Vec<u32> = (0..10).collect();
            w.add_document(doc as u32, &[1; 10], &positions, rows)
                .unwrap();
        }
        w.finish().unwrap();
        let store = ActivationStore::open(&store_dir).unwrap();
        let (_, rows) = walkthrough::train_sae(cfg, &store).unwrap();
        let named = |w: Vec<String>| {
            w.iter()
                .filter(|w| w.contains("of the activations' variance is in"))
                .count()
        };
        let first = named(walkthrough::warnings(cfg, &rows));
        let (_, reloaded) = walkthrough::train_sae(cfg, &store).unwrap();
        assert_eq!(named(walkthrough::warnings(cfg, &reloaded)), first);
        first
    };
    assert_eq!(outlier_warnings(&cfg, &spiked), 1);
    cfg.train.seed = 5; // another SAE stage, trained anew
    assert_eq!(outlier_warnings(&cfg, &plain), 0);
}
