//! Token ids through sae-lib equal Python `tokenizers`' ids from the same tokenizer.json
//! (expected ids made by `scripts/make_fixtures.py`).

use crate::common::*;
use sae_lib::tokenizer::Tokenizer;

#[test]
fn gpt_neox_tokenizer_matches_python_tokenizers() {
    let Some(path) = shared_data("gpt-neox-20b-tokenizer.json") else {
        return;
    };
    let tok = Tokenizer::from_file(&path).unwrap();
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("tokenizer_ids.json")).unwrap())
            .unwrap();
    let cases = expected["cases"].as_array().unwrap();
    assert!(cases.len() >= 5);
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let want: Vec<u32> = case["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(
            tok.encode(text, None).unwrap(),
            want,
            "text {:?}",
            &text[..text.len().min(40)]
        );
        // The tutorial's truncation keeps the first 128 ids.
        let truncated = tok.encode(text, Some(128)).unwrap();
        assert_eq!(truncated, want[..want.len().min(128)]);
    }
}

#[test]
fn missing_tokenizer_is_a_clear_error() {
    let msg = Tokenizer::from_file(std::path::Path::new("/no/such/tokenizer.json"))
        .unwrap_err()
        .to_string();
    assert!(msg.contains("tokenizer.json not found"), "{msg}");
}
