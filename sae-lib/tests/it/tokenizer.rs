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

/// A Llama-style tokenizer whose post-processor puts `<s>` before every text: `<s>` is the one
/// special id, not `<|im_end|>`, which is special but only ever comes from the text.
#[test]
fn special_ids_are_the_tokens_the_tokenizer_puts_around_every_text() {
    let added = |id: u32, content: &str| {
        serde_json::json!({"id": id, "content": content, "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": false, "special": true})
    };
    let bos = serde_json::json!({"SpecialToken": {"id": "<s>", "type_id": 0}});
    let text = |id: &str| serde_json::json!({"Sequence": {"id": id, "type_id": 0}});
    let json = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [added(0, "<s>"), added(1, "<|im_end|>")],
        "normalizer": null, "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": {"type": "TemplateProcessing", "single": [bos, text("A")],
            "pair": [bos, text("A"), bos, text("B")],
            "special_tokens": {"<s>": {"id": "<s>", "ids": [0], "tokens": ["<s>"]}}},
        "decoder": null,
        "model": {"type": "WordLevel", "unk_token": "[UNK]",
            "vocab": {"<s>": 0, "<|im_end|>": 1, "a": 2, "b": 3, "[UNK]": 4}},
    });
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer.json");
    std::fs::write(&path, json.to_string()).unwrap();
    let tok = Tokenizer::from_file(&path).unwrap();
    assert_eq!(tok.encode("a b <|im_end|>", None).unwrap(), [0, 2, 3, 1]);
    assert_eq!(tok.special_ids().unwrap(), [0]);

    let Some(pythia) = shared_data("gpt-neox-20b-tokenizer.json") else {
        return;
    };
    let pythia = Tokenizer::from_file(&pythia).unwrap();
    assert_eq!(
        pythia.special_ids().unwrap(),
        [] as [u32; 0],
        "Pythia adds nothing"
    );
}
