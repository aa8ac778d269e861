//! The walkthrough's stages as notebooks use them: each reuses its saved output when the
//! settings are unchanged and recomputes it when they change.

use crate::common::*;
use sae_lib::sae::Sae;
use sae_lib::walkthrough::{self, WalkthroughConfig};

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

    // A changed setting recomputes: more documents, then more steps.
    cfg.collect.max_docs = Some(30);
    let bigger = walkthrough::activations(&cfg, &model, &tokenizer).unwrap();
    assert_eq!(bigger.len(), 30);
    cfg.train.steps = 30;
    let (_, longer) = walkthrough::train_sae(&cfg, &bigger).unwrap();
    assert_eq!(longer.last().unwrap().step, 30);
}
