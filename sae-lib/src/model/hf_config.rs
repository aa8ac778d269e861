//! Reading HF `config.json` files written by transformers 4 or 5.

use std::path::Path;

use crate::{Error, Result};

/// Parses `path` as JSON, lifting transformers 5's `rope_parameters` into the top-level
/// fields that transformers 4 (and the Hub's checkpoints) use: each `(from, to)` in `lift`
/// copies `rope_parameters.from` to `to` unless `to` is already set, and a `rope_type` other
/// than `default` makes the whole object `rope_scaling`, for the model to accept or refuse.
pub(crate) fn read(path: &Path, lift: &[(&str, &str)]) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io("reading", path, e))?;
    let bad = |message: String| Error::Config {
        path: path.into(),
        message,
    };
    let mut value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| bad(format!("not valid JSON: {e}")))?;
    if let Some(rope) = value
        .get("rope_parameters")
        .cloned()
        .filter(|v| v.is_object())
    {
        let scaled = rope["rope_type"].as_str().is_some_and(|k| k != "default");
        if scaled && value.get("rope_scaling").is_none_or(|v| v.is_null()) {
            value["rope_scaling"] = rope.clone();
        }
        for (from, to) in lift {
            if value.get(*to).is_none() && !rope[*from].is_null() {
                value[*to] = rope[*from].clone();
            }
        }
    }
    Ok(value)
}
