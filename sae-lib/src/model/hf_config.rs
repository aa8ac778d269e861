//! Reading HF `config.json` files written by transformers 4 or 5.

use std::path::Path;

use crate::{Error, Result};

/// Parses `path` as JSON, lifting transformers 5's `rope_parameters` into the top-level
/// fields that transformers 4 (and the Hub's checkpoints) use: each `(from, to)` in `lift`
/// copies `rope_parameters.from` to `to` unless `to` is already set. A `rope_type` other
/// than `default` is rejected, since no model here implements rotary scaling.
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
        if let Some(kind) = rope["rope_type"].as_str().filter(|k| *k != "default") {
            return Err(bad(format!(
                "rope_type `{kind}` is not supported (only `default`)"
            )));
        }
        for (from, to) in lift {
            if value.get(*to).is_none() && !rope[*from].is_null() {
                value[*to] = rope[*from].clone();
            }
        }
    }
    Ok(value)
}
