//! The tokenizer a GGUF file keeps in its metadata (`tokenizer.ggml.*`), rebuilt as a HF
//! `tokenizer.json`. Two kinds are read:
//!
//! - byte-level BPE (`gpt2`: SmolLM2, Llama 3, Qwen), whose merges are in the file and whose
//!   pre-tokenizer llama.cpp names (`tokenizer.ggml.pre`);
//! - SentencePiece BPE (`llama`: Llama 2, Mistral, TinyLlama, Phi-3, Gemma), which stores no
//!   merges: they are rebuilt from the tokens' scores, as SentencePiece merged best-first.

use std::collections::HashMap;

use serde_json::{json, Value};

/// llama.cpp's token types (`tokenizer.ggml.token_type`).
const NORMAL: i64 = 1;
const UNKNOWN: i64 = 2;
const CONTROL: i64 = 3;
const USER_DEFINED: i64 = 4;

/// What `tokenizer.ggml.*` holds, read by [`super::gguf::GgufFile::tokenizer`].
pub(super) struct GgufVocab {
    /// The tokens, by id.
    pub tokens: Vec<String>,
    /// Their llama.cpp types; empty means every token is normal.
    pub types: Vec<i64>,
    /// Byte-level BPE's merges (`"a b"`); SentencePiece files have none.
    pub merges: Vec<String>,
    /// SentencePiece's token scores (`tokenizer.ggml.scores`).
    pub scores: Vec<f32>,
    /// Rank SentencePiece merges by token order instead of score (Gemma).
    pub by_order: bool,
    /// llama.cpp's pre-tokenizer name (`tokenizer.ggml.pre`).
    pub pre: String,
    /// The BOS token put before every text, when the file says to add one.
    pub bos: Option<usize>,
    /// SentencePiece's dummy prefix: a `▁` before each text (Llama 2, not Gemma).
    pub add_space_prefix: bool,
}

impl GgufVocab {
    fn kind(&self, id: usize) -> i64 {
        self.types.get(id).copied().unwrap_or(NORMAL)
    }

    /// Control and user-defined tokens are matched whole in the raw text, as llama.cpp does
    /// (a user-defined token keeps its spaces: Gemma's runs of blanks are spelled `"  "`).
    fn added_tokens(&self) -> Vec<Value> {
        (0..self.tokens.len())
            .filter(|&i| matches!(self.kind(i), UNKNOWN | CONTROL | USER_DEFINED))
            .map(|i| {
                json!({"id": i, "content": self.tokens[i], "single_word": false,
                       "lstrip": false, "rstrip": false, "normalized": false,
                       "special": self.kind(i) != USER_DEFINED})
            })
            .collect()
    }

    fn post_processor(&self) -> Value {
        let Some(content) = self.bos.and_then(|id| self.tokens.get(id)) else {
            return Value::Null;
        };
        let bos = json!({"SpecialToken": {"id": content, "type_id": 0}});
        json!({"type": "TemplateProcessing",
            "single": [bos, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [bos, {"Sequence": {"id": "A", "type_id": 0}},
                     {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {content.clone(): {"id": content, "ids": [self.bos],
                                                 "tokens": [content]}}})
    }

    fn vocab_map(&self) -> serde_json::Map<String, Value> {
        self.tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), json!(i)))
            .collect()
    }

    /// A byte-level BPE `tokenizer.json`. `smollm` splits every digit apart before GPT-2's
    /// regex, as SmolLM2's own tokenizer.json does; Llama 3's names and Qwen's use their own
    /// regex; GPT-2's and MPT's names, and `default` (a file from before llama.cpp named
    /// pre-tokenizers), get GPT-2's regex alone. Other names split text in ways not rebuilt
    /// here (Falcon's, DeepSeek's, StarCoder's...), and are refused rather than guessed: on
    /// llama.cpp's test texts, GPT-2's regex gives another split for each. Llama 3 takes a piece that is a whole
    /// token as it is, even where no chain of merges reaches it (`ignore_merges` in its
    /// tokenizer.json, as in llama.cpp): " Việt" is one token there, four by merges.
    pub fn byte_level_json(&self) -> Result<Value, String> {
        let llama3 = matches!(
            self.pre.as_str(),
            "llama3" | "llama-v3" | "llama-bpe" | "falcon3"
        );
        let byte_level = json!({"type": "ByteLevel", "add_prefix_space": false,
                                "trim_offsets": true, "use_regex": true});
        let split = |regex: &str| {
            json!({"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated",
                 "invert": false},
                {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true,
                 "use_regex": false}]})
        };
        let pre_tokenizer = match self.pre.as_str() {
            "smollm" => json!({"type": "Sequence", "pretokenizers": [
                {"type": "Digits", "individual_digits": true}, byte_level]}),
            _ if llama3 => split(LLAMA3_SPLIT),
            "smaug-bpe" | "dbrx" => split(LLAMA3_SPLIT),
            "qwen2" | "deepseek-r1-qwen" => split(QWEN2_SPLIT),
            "default" | "gpt-2" | "gpt2" | "mpt" => byte_level.clone(),
            other => {
                return Err(format!(
                    "pre-tokenizer `{other}` is not supported (supported: default, gpt-2, mpt, \
                     smollm, llama3, llama-v3, llama-bpe, falcon3, smaug-bpe, dbrx, qwen2, \
                     deepseek-r1-qwen)"
                ))
            }
        };
        Ok(json!({
            "version": "1.0", "truncation": null, "padding": null,
            "added_tokens": self.added_tokens(), "normalizer": null,
            "pre_tokenizer": pre_tokenizer, "post_processor": self.post_processor(),
            "decoder": byte_level,
            "model": {"type": "BPE", "dropout": null, "unk_token": null,
                      "continuing_subword_prefix": null, "end_of_word_suffix": null,
                      "fuse_unk": false, "byte_fallback": false, "ignore_merges": llama3,
                      "vocab": self.vocab_map(), "merges": self.merges}
        }))
    }

    /// A SentencePiece BPE `tokenizer.json`: spaces become `▁` (with one more in front when
    /// `add_space_prefix`, after each special token too, as llama.cpp does), characters
    /// outside the vocabulary fall back to `<0xNN>` byte tokens, and merges come from
    /// [`sentencepiece_merges`].
    pub fn sentencepiece_json(&self) -> Value {
        let replace = json!({"type": "Replace", "pattern": {"String": " "}, "content": "▁"});
        let normalizer = if self.add_space_prefix {
            json!({"type": "Sequence", "normalizers": [
                {"type": "Prepend", "prepend": "▁"}, replace]})
        } else {
            replace
        };
        let mut decoders = vec![
            json!({"type": "Replace", "pattern": {"String": "▁"}, "content": " "}),
            json!({"type": "ByteFallback"}),
            json!({"type": "Fuse"}),
        ];
        if self.add_space_prefix {
            decoders.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
        }
        let unk = (0..self.tokens.len())
            .find(|&i| self.kind(i) == UNKNOWN)
            .map(|i| self.tokens[i].clone());
        json!({
            "version": "1.0", "truncation": null, "padding": null,
            "added_tokens": self.added_tokens(), "normalizer": normalizer,
            "pre_tokenizer": null, "post_processor": self.post_processor(),
            "decoder": {"type": "Sequence", "decoders": decoders},
            "model": {"type": "BPE", "dropout": null, "unk_token": unk,
                      "continuing_subword_prefix": null, "end_of_word_suffix": null,
                      "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
                      "vocab": self.vocab_map(), "merges": self.sentencepiece_merges()}
        })
    }

    /// The merges a SentencePiece vocabulary implies: every way to cut a normal token into two
    /// normal tokens, ranked by the token's score (SentencePiece BPE merges the adjacent pair
    /// whose union scores best), then by a longer left part, then a longer right part, then by
    /// id. Llama 2's whitespace-only tokens score -1e9 and so merge last. Gemma's scores do not
    /// follow its merge order while its token order does (`by_order`), as transformers' GGUF
    /// loader found; that loader's ranking is the one used here.
    fn sentencepiece_merges(&self) -> Vec<[String; 2]> {
        let normal: HashMap<&str, usize> = (0..self.tokens.len())
            .filter(|&i| self.kind(i) == NORMAL)
            .map(|i| (self.tokens[i].as_str(), i))
            .collect();
        let score = |i: usize| match self.by_order {
            true => -(i as f64),
            false => f64::from(self.scores.get(i).copied().unwrap_or(0.0)),
        };
        let mut merges = Vec::new();
        for (i, token) in self.tokens.iter().enumerate() {
            if normal.get(token.as_str()) != Some(&i) {
                continue;
            }
            let mut cuts: Vec<_> = token
                .char_indices()
                .skip(1)
                .filter_map(|(cut, _)| {
                    let (left, right) = token.split_at(cut);
                    Some((normal.get(left)?, normal.get(right)?, left, right))
                })
                .collect();
            cuts.sort_by_key(|&(l, r, ..)| (*l, *r));
            merges.extend(cuts.into_iter().map(|(_, _, left, right)| {
                let key = (score(i), left.chars().count(), right.chars().count());
                (key, [left.to_string(), right.to_string()])
            }));
        }
        // Stable and descending, as `sorted(..., reverse=True)` is in transformers.
        merges
            .sort_by(|(a, _), (b, _)| b.0.total_cmp(&a.0).then(b.1.cmp(&a.1)).then(b.2.cmp(&a.2)));
        merges.into_iter().map(|(_, pair)| pair).collect()
    }
}

/// Llama 3's split (its tokenizer.json's): case-insensitive contractions, a letter run with
/// one leading non-letter, digits in threes, punctuation runs, line breaks apart.
const LLAMA3_SPLIT: &str = concat!(
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}",
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
);

/// Qwen2's split (its tokenizer.json's, Qwen3's too): Llama 3's with every digit apart.
const QWEN2_SPLIT: &str = concat!(
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}",
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
);
