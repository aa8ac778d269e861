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

    /// A byte-level BPE `tokenizer.json`, splitting text as [`PRE_TOKENIZERS`] says for the
    /// file's pre-tokenizer name. A name not there is refused rather than given GPT-2's regex:
    /// on llama.cpp's test texts that regex splits DeepSeek's, Qwen 3.5's, Falcon's and
    /// StarCoder's vocabularies otherwise than their own tokenizers. Llama 3's names take a
    /// piece that is a whole token as it is, even where no chain of merges reaches it
    /// (`ignore_merges` in its tokenizer.json, as in llama.cpp): " Việt" is one token there,
    /// four by merges.
    pub fn byte_level_json(&self) -> Result<Value, String> {
        let Some(&(_, split)) = PRE_TOKENIZERS.iter().find(|(name, _)| *name == self.pre) else {
            let names: Vec<&str> = PRE_TOKENIZERS.iter().map(|(name, _)| *name).collect();
            return Err(format!(
                "pre-tokenizer `{}` is not supported (supported: {})",
                self.pre,
                names.join(", ")
            ));
        };
        let byte_level = json!({"type": "ByteLevel", "add_prefix_space": false,
                                "trim_offsets": true, "use_regex": true});
        let isolate = |regex: &str| {
            json!({"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated",
                   "invert": false})
        };
        let bytes_only = json!({"type": "ByteLevel", "add_prefix_space": false,
                                "trim_offsets": true, "use_regex": false});
        let sequence = |steps: Vec<Value>| json!({"type": "Sequence", "pretokenizers": steps});
        let pre_tokenizer = match split {
            Split::Gpt2 => byte_level.clone(),
            Split::DigitsApart => sequence(vec![
                json!({"type": "Digits", "individual_digits": true}),
                byte_level.clone(),
            ]),
            Split::Falcon => sequence(vec![
                isolate(r"[\p{P}\$\+<=>\^~\|`]+"),
                byte_level.clone(),
                isolate("[0-9][0-9][0-9]"),
            ]),
            Split::Llama3 | Split::Llama3Regex => sequence(vec![isolate(LLAMA3_SPLIT), bytes_only]),
            Split::Qwen2 => sequence(vec![isolate(QWEN2_SPLIT), bytes_only]),
        };
        let ignore_merges = matches!(split, Split::Llama3);
        Ok(json!({
            "version": "1.0", "truncation": null, "padding": null,
            "added_tokens": self.added_tokens(), "normalizer": null,
            "pre_tokenizer": pre_tokenizer, "post_processor": self.post_processor(),
            "decoder": byte_level,
            "model": {"type": "BPE", "dropout": null, "unk_token": null,
                      "continuing_subword_prefix": null, "end_of_word_suffix": null,
                      "fuse_unk": false, "byte_fallback": false, "ignore_merges": ignore_merges,
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

/// How a byte-level vocabulary splits text before its merges.
#[derive(Clone, Copy)]
enum Split {
    /// GPT-2's regex.
    Gpt2,
    /// Every digit apart, then GPT-2's regex (SmolLM's, StarCoder's).
    DigitsApart,
    /// Punctuation runs apart, GPT-2's regex, then digits in threes.
    Falcon,
    /// [`LLAMA3_SPLIT`], and a piece that is a whole token taken as it is (`ignore_merges`).
    Llama3,
    /// [`LLAMA3_SPLIT`] alone (Smaug's, DBRX's).
    Llama3Regex,
    /// [`QWEN2_SPLIT`].
    Qwen2,
}

/// llama.cpp's pre-tokenizer names (`tokenizer.ggml.pre`) and the split each stands for, as
/// llama.cpp's own tokenizer applies them. `default` is a file from before llama.cpp named
/// pre-tokenizers.
const PRE_TOKENIZERS: &[(&str, Split)] = &[
    ("default", Split::Gpt2),
    ("gpt-2", Split::Gpt2),
    ("gpt2", Split::Gpt2),
    ("mpt", Split::Gpt2),
    ("phi-2", Split::Gpt2),
    ("smollm", Split::DigitsApart),
    ("starcoder", Split::DigitsApart),
    ("refact", Split::DigitsApart),
    ("command-r", Split::DigitsApart),
    ("codeshell", Split::DigitsApart),
    ("exaone", Split::DigitsApart),
    ("falcon", Split::Falcon),
    ("llama3", Split::Llama3),
    ("llama-v3", Split::Llama3),
    ("llama-bpe", Split::Llama3),
    ("falcon3", Split::Llama3),
    ("falcon-h1", Split::Llama3),
    ("pixtral", Split::Llama3),
    ("smaug-bpe", Split::Llama3Regex),
    ("dbrx", Split::Llama3Regex),
    ("qwen2", Split::Qwen2),
    ("deepseek-r1-qwen", Split::Qwen2),
];

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

#[cfg(test)]
mod tests {
    use super::*;

    /// Ids of `text` under a SentencePiece vocabulary a, b, c, ab (score -5), bc (score -1).
    fn encode(text: &str, by_order: bool) -> Vec<u32> {
        let vocab = GgufVocab {
            tokens: ["a", "b", "c", "ab", "bc"].map(String::from).to_vec(),
            types: vec![],
            merges: vec![],
            scores: vec![0.0, 0.0, 0.0, -5.0, -1.0],
            by_order,
            pre: "default".into(),
            bos: None,
            add_space_prefix: false,
        };
        let json = vocab.sentencepiece_json().to_string();
        let tokenizer = tokenizers::Tokenizer::from_bytes(json.as_bytes()).unwrap();
        tokenizer.encode(text, false).unwrap().get_ids().to_vec()
    }

    #[test]
    fn sentencepiece_merges_rank_by_score_or_by_token_order() {
        // By score, "bc" (-1) merges before "ab" (-5); by order (Gemma), "ab" (id 3) first.
        assert_eq!(encode("abc", false), [0, 4]);
        assert_eq!(encode("abc", true), [3, 2]);
    }
}
