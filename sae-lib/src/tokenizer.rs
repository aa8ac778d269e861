//! Tokenization through the `tokenizers` crate, with the tutorial's right-side truncation.

use std::path::Path;

use crate::{Error, Result};

/// A HF `tokenizer.json` tokenizer.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tokenizer(vocab={})", self.inner.get_vocab_size(true))
    }
}

impl Tokenizer {
    /// Loads a `tokenizer.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        if !path.is_file() {
            return Err(Error::MissingFile {
                what: "tokenizer.json",
                path: path.into(),
                hint: "put the model's tokenizer.json beside its config.json".into(),
            });
        }
        let inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| Error::Tokenizer(format!("cannot load {}: {e}", path.display())))?;
        Ok(Self { inner })
    }

    /// Wraps an already-built tokenizer.
    pub fn new(inner: tokenizers::Tokenizer) -> Self {
        Self { inner }
    }

    /// Token ids of `text` (the tokenizer's own special-token rules), keeping the first
    /// `max_len` when given, as HF's `truncation=True, max_length=max_len` does.
    pub fn encode(&self, text: &str, max_len: Option<usize>) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, true)
            .map_err(|e| Error::Tokenizer(format!("cannot encode text: {e}")))?;
        let mut ids = enc.get_ids().to_vec();
        if let Some(max) = max_len {
            ids.truncate(max);
        }
        Ok(ids)
    }

    /// Text of `ids`, special tokens kept.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, false)
            .map_err(|e| Error::Tokenizer(format!("cannot decode: {e}")))
    }

    /// The string of one token, for displaying contexts token by token, with its own leading
    /// space. SentencePiece decoders (Llama 2's, Mistral's) strip the space a text's first
    /// token carries, so the token is read as the second of a pair: `▁the` is " the", not
    /// "the", and a context's tokens put side by side read as its text.
    pub fn token_text(&self, id: u32) -> String {
        let Ok(alone) = self.decode(&[id]) else {
            return format!("<{id}>");
        };
        match self.decode(&[id, id]) {
            Ok(pair) if pair.starts_with(&alone) => pair[alone.len()..].to_string(),
            _ => alone,
        }
    }

    /// The id used to pad batches: the tokenizer's pad token if it has one, else 0 (padded
    /// positions are masked, so the value never matters).
    pub fn pad_id(&self) -> u32 {
        self.inner
            .get_padding()
            .map(|p| p.pad_id)
            .or_else(|| self.inner.token_to_id("<|padding|>"))
            .unwrap_or(0)
    }

    /// Ids of the special tokens the tokenizer puts around every text (a BOS first, for Gemma
    /// and Llama; none for Pythia), sorted. The splice evaluation leaves them alone, as
    /// SAELens' evaluation leaves BOS, EOS and padding: a BOS carries an attention sink's
    /// outsized activation.
    pub fn special_ids(&self) -> Result<Vec<u32>> {
        let mut ids = self.encode("", None)?;
        ids.sort_unstable();
        ids.dedup();
        Ok(ids)
    }

    /// Number of tokens in the vocabulary, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
}
