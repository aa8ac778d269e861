//! Llama's relatives against transformers: Mistral (a sliding window on every layer), Qwen2
//! (biased q, k and v) and Qwen3 (normalised query and key heads), each on every hook point
//! and the logits, from config files laid out as the Hub's.

use sae_lib::hooks::Hooks;
use sae_lib::model::TokenBatch;

use crate::common::*;
use crate::model::check_parity;

#[test]
fn mistral_qwen2_and_qwen3_match_transformers() {
    for family in ["mistral", "qwen2", "qwen3"] {
        assert_eq!(load_fixture_model(family).architecture(), family);
        check_parity(family, family);
    }
}

/// The window settings are read, not assumed: Mistral without its window, and Qwen2 with
/// the window its file carries switched on, answer otherwise.
#[test]
fn the_windows_are_the_configs() {
    for (family, key, value) in [
        ("mistral", "sliding_window", serde_json::Value::Null),
        ("qwen2", "use_sliding_window", serde_json::json!(true)),
    ] {
        let exp = expected(family);
        let mask = &exp["batch.attention_mask"];
        let batch = TokenBatch::new(&exp["batch.input_ids"], Some(mask)).unwrap();
        let model = load_edited(family, |cfg| cfg[key] = value).unwrap();
        let logits = model.forward(&batch, &mut Hooks::new()).unwrap().unwrap();
        let d = masked_max_abs_diff(&logits, &exp["batch.logits"], mask);
        assert!(
            d > 1e-2,
            "{family} with {key} changed: logits moved by only {d}"
        );
    }
}
