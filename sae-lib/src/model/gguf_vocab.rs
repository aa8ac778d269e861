//! The tokenizer a GGUF file keeps in its metadata (`tokenizer.ggml.*`), rebuilt as a HF
//! `tokenizer.json`. Two kinds are read:
//!
//! - byte-level BPE (`gpt2`: SmolLM2, Llama 3, Qwen, DeepSeek, Mistral Nemo, Pythia), whose
//!   merges are in the file and whose pre-tokenizer llama.cpp names (`tokenizer.ggml.pre`;
//!   none in older files, Pythia's among them, which split as GPT-2 does);
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
    /// on llama.cpp's test texts that regex splits Falcon's, StarCoder's and DeepSeek's
    /// vocabularies otherwise than their own tokenizers do.
    pub fn byte_level_json(&self) -> Result<Value, String> {
        let Some(&(_, split)) = PRE_TOKENIZERS.iter().find(|(name, _)| *name == self.pre) else {
            let names: Vec<&str> = PRE_TOKENIZERS.iter().map(|(name, _)| *name).collect();
            return Err(format!(
                "pre-tokenizer `{}` is not supported (supported: {})",
                self.pre,
                names.join(", ")
            ));
        };
        // Each regex splits every piece the ones before it left, keeping what it matched and
        // what lay between as pieces (llama.cpp's `unicode_regex_split`, HF's `Isolated`).
        let mut steps: Vec<Value> = split
            .regexes
            .iter()
            .map(|regex| {
                json!({"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated",
                       "invert": false})
            })
            .collect();
        steps.push(json!({"type": "ByteLevel", "add_prefix_space": false,
                          "trim_offsets": true, "use_regex": false}));
        Ok(json!({
            "version": "1.0", "truncation": null, "padding": null,
            "added_tokens": self.added_tokens(), "normalizer": null,
            "pre_tokenizer": {"type": "Sequence", "pretokenizers": steps},
            "post_processor": self.post_processor(),
            "decoder": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true,
                        "use_regex": true},
            "model": {"type": "BPE", "dropout": null, "unk_token": null,
                      "continuing_subword_prefix": null, "end_of_word_suffix": null,
                      "fuse_unk": false, "byte_fallback": false,
                      "ignore_merges": split.ignore_merges,
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

/// How a byte-level vocabulary splits text before its merges, as llama.cpp's
/// `llama-vocab.cpp` states it: regexes applied one after another, then bytes mapped to
/// GPT-2's printable characters. Where llama.cpp adapts a model's regex to its own engine
/// (Llama 3's, Tekken's), the tokenizer.json original stands here.
#[derive(Clone, Copy)]
struct Split {
    regexes: &'static [&'static str],
    /// A piece that is a whole token is taken as it is, even where no chain of merges reaches
    /// it (Llama 3's tokenizer.json, and llama.cpp for its names): " Việt" is one token in
    /// Llama 3, four by merges.
    ignore_merges: bool,
}

const fn split(regexes: &'static [&'static str]) -> Split {
    Split {
        regexes,
        ignore_merges: false,
    }
}

/// GPT-2's regex: contractions, then a letter, digit or other run with one leading space.
const GPT2_REGEX: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

const GPT2: Split = split(&[GPT2_REGEX]);
/// Every digit apart first (SmolLM's, StarCoder's).
const DIGITS_APART: Split = split(&[r"\p{N}", GPT2_REGEX]);
/// Punctuation runs apart, then GPT-2's regex, then digits in threes.
const FALCON: Split = split(&[r"[\p{P}\$\+<=>\^~\|`]+", GPT2_REGEX, "[0-9][0-9][0-9]"]);
/// Llama 3's tokenizer.json: case-insensitive contractions, a letter run with one leading
/// non-letter, digits in threes, punctuation runs, line breaks apart.
const LLAMA3_REGEX: &str = concat!(
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}",
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
);
const LLAMA3: Split = Split {
    regexes: &[LLAMA3_REGEX],
    ignore_merges: true,
};
/// Mistral's Tekken (Mistral Nemo, Mistral Small 3), from its tokenizer.json: a letter run
/// split where lower case follows upper (`HTTPServer` → `HTTPS`, `erver`), every digit
/// apart, no contractions; whole-token pieces taken as they are.
const TEKKEN: Split = Split {
    regexes: &[concat!(
        r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+",
        r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*",
        r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    )],
    ignore_merges: true,
};
/// ByteDance's Seed-Coder: Qwen2's, but a punctuation run stops before a line break.
const SEED_CODER: Split = split(&[concat!(
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1}",
    r"| ?[^\s\p{L}\p{N}\r\n]+|\s*[\r\n]+|\s+(?!\S)|\s+",
)]);
/// Qwen2's (Qwen3's too): Llama 3's with every digit apart.
const QWEN2: Split = split(&[concat!(
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}",
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
)]);
/// Qwen 3.5's: Qwen2's with combining marks (`\p{M}`) counted as letters.
const QWEN35: Split = split(&[concat!(
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}",
    r"| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
)]);
/// DeepSeek's CJK and Hangul runs (its ranges run on from U+0800 to the CJK block).
const CJK_HANGUL: &str = r"[一-龥ࠀ-一가-퟿]+";
/// DeepSeek LLM's: line breaks apart, then runs of Latin, Greek, Cyrillic, Armenian, Georgian
/// and Cherokee letters (its list of ranges), ASCII and full-width punctuation, trailing
/// blanks, CJK and Hangul runs, digit runs.
const DEEPSEEK_LLM: Split = split(&[
    r"[\r\n]",
    concat!(
        "\\s?[A-Za-z\u{B5}\u{C0}-\u{D6}\u{D8}-\u{F6}\u{F8}-\u{1BA}\u{1BC}-\u{1BF}\u{1C4}-\u{293}",
        "\u{295}-\u{2AF}\u{370}-\u{373}\u{376}\u{377}\u{37B}-\u{37D}\u{37F}\u{386}\u{388}-\u{38A}",
        "\u{38C}\u{38E}-\u{3A1}\u{3A3}-\u{3F5}\u{3F7}-\u{481}\u{48A}-\u{52F}\u{531}-\u{556}\u{10A0}",
        "-\u{10C5}\u{13A0}-\u{13F5}\u{13F8}-\u{13FD}\u{1C90}-\u{1CBA}\u{1CBD}-\u{1CBF}\u{1D00}",
        "-\u{1D2B}\u{1D6B}-\u{1D77}\u{1D79}-\u{1D9A}\u{1E00}-\u{1F15}\u{1F18}-\u{1F1D}\u{1F20}",
        "-\u{1F45}\u{1F48}-\u{1F4D}\u{1F50}-\u{1F57}\u{1F59}\u{1F5B}\u{1F5D}\u{1F5F}-\u{1F7D}",
        "\u{1F80}-\u{1FB4}\u{1FB6}-\u{1FBC}\u{1FBE}\u{1FC2}-\u{1FC4}\u{1FC6}-\u{1FCC}\u{1FD0}",
        "-\u{1FD3}\u{1FD6}-\u{1FDB}\u{1FE0}-\u{1FEC}\u{1FF2}-\u{1FF4}\u{1FF6}-\u{1FFC}\u{2102}",
        "\u{2107}\u{210A}-\u{2113}\u{2115}\u{2119}-\u{211D}\u{2124}\u{2126}\u{2128}\u{212A}-\u{212D}",
        "\u{212F}-\u{2134}\u{2139}\u{213C}-\u{213F}\u{2145}-\u{2149}\u{214E}\u{2183}\u{2184}\u{2C00}",
        "-\u{2C7B}\u{2C7E}-\u{2CE4}\u{2CEB}-\u{2CEE}\u{2CF2}\u{2CF3}\u{A640}-\u{A66D}\u{A680}",
        "-\u{A69B}\u{A722}-\u{A76F}\u{A771}-\u{A787}\u{A78B}-\u{A78E}\u{AB70}-\u{ABBF}\u{FB00}",
        "-\u{FB06}\u{FB13}-\u{FB17}\u{FF21}-\u{FF3A}\u{FF41}-\u{FF5A}\u{10400}-\u{1044F}\u{104B0}",
        "-\u{104D3}\u{104D8}-\u{104FB}\u{10C80}-\u{10CB2}\u{10CC0}-\u{10CF2}\u{118A0}-\u{118DF}",
        "\u{1E900}-\u{1E943}]+",
    ),
    r"\s?[!-/:-~！-／：-～‘-‟　-。]+",
    r"\s+$",
    CJK_HANGUL,
    r"\p{N}+",
]);
/// DeepSeek Coder's: line breaks, letter runs and punctuation runs apart (each with one
/// leading blank), CJK and Hangul runs, every digit apart.
const DEEPSEEK_CODER: Split = split(&[r"[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", CJK_HANGUL, r"\p{N}"]);

/// llama.cpp's pre-tokenizer names (`tokenizer.ggml.pre`) and the split each stands for, as
/// llama.cpp's own tokenizer applies them. `default` is a file from before llama.cpp named
/// pre-tokenizers.
const PRE_TOKENIZERS: &[(&str, Split)] = &[
    ("default", GPT2),
    ("gpt-2", GPT2),
    ("gpt2", GPT2),
    ("mpt", GPT2),
    ("phi-2", GPT2),
    ("olmo", GPT2),
    ("exaone4", GPT2),
    ("a.x-4.0", GPT2),
    ("mellum", GPT2),
    ("smollm", DIGITS_APART),
    ("starcoder", DIGITS_APART),
    ("refact", DIGITS_APART),
    ("command-r", DIGITS_APART),
    ("codeshell", DIGITS_APART),
    ("exaone", DIGITS_APART),
    ("minerva-7b", DIGITS_APART),
    ("mellum2", DIGITS_APART),
    ("falcon", FALCON),
    ("llama3", LLAMA3),
    ("llama-v3", LLAMA3),
    ("llama-bpe", LLAMA3),
    ("falcon3", LLAMA3),
    ("falcon-h1", LLAMA3),
    ("pixtral", LLAMA3),
    ("lfm2", LLAMA3),
    ("midm-2.0", LLAMA3),
    ("smaug-bpe", split(&[LLAMA3_REGEX])),
    ("dbrx", split(&[LLAMA3_REGEX])),
    ("qwen2", QWEN2),
    ("deepseek-r1-qwen", QWEN2),
    ("stablelm2", QWEN2),
    ("megrez", QWEN2),
    ("kormo", QWEN2),
    ("qwen35", QWEN35),
    ("deepseek-llm", DEEPSEEK_LLM),
    ("deepseek-coder", DEEPSEEK_CODER),
    ("tekken", TEKKEN),
    ("seed-coder", SEED_CODER),
];

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
