//! One error type for the whole library. Each variant says what went wrong *and* what to do.

use std::path::PathBuf;

/// Everything sae-lib can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A tensor operation failed (shape mismatch, device error, ...).
    #[error(transparent)]
    Candle(#[from] candle_core::Error),

    /// A file could not be read or written.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done ("reading", "writing", ...).
        action: &'static str,
        /// The file or folder involved.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },

    /// A file that must exist is missing.
    #[error("{what} not found at {path}: {hint}")]
    MissingFile {
        /// What was looked for, in words ("model directory", ...).
        what: &'static str,
        /// Where it was looked for.
        path: PathBuf,
        /// What to do about it, for the user.
        hint: String,
    },

    /// A model's `config.json` could not be parsed or asks for something unsupported.
    #[error("model config {path}: {message}")]
    Config {
        /// The config file involved (a model's `config.json`, an SAE's `cfg.json`, or a GGUF
        /// file).
        path: PathBuf,
        /// What is wrong with it, for the user.
        message: String,
    },

    /// A weights file is corrupt, truncated or does not match the config.
    #[error("weights {path}: {message}")]
    Weights {
        /// The tensor file involved (model weights, an SAE, a checkpoint or a store shard).
        path: PathBuf,
        /// What went wrong, for the user.
        message: String,
    },

    /// A hook name that does not parse or does not exist in this model.
    #[error("{0}")]
    Hook(String),

    /// The Hugging Face Hub could not provide a file.
    #[error("{0}")]
    Hub(String),

    /// The tokenizer could not be loaded or failed to encode.
    #[error("tokenizer: {0}")]
    Tokenizer(String),

    /// Invalid input data (empty prompt, NaN activations, wrong shapes).
    #[error("{0}")]
    Input(String),

    /// A dataset could not be read.
    #[error("dataset {path}: {message}")]
    Dataset {
        /// The dataset's Hub id or file (`file:line` for a bad JSON line).
        path: String,
        /// What went wrong, for the user.
        message: String,
    },

    /// Training diverged or was misconfigured.
    #[error("{0}")]
    Training(String),

    /// An output folder already holds a run that this one would replace.
    #[error(
        "{path} already holds {what}; continue it with --resume (train), replace it with \
         --overwrite, or choose another --out"
    )]
    OutputExists {
        /// The output folder.
        path: PathBuf,
        /// What the folder already holds, in words (a training run, an SAE, ...).
        what: String,
    },

    /// Another process is writing into the same output folder.
    #[error(
        "{path} is being written by another sae run ({owner}); wait for it to finish or \
         choose another --out"
    )]
    Locked {
        /// The output folder.
        path: PathBuf,
        /// Who holds the lock, in words (pid, host, start time and command when known).
        owner: String,
    },

    /// A JSON document could not be parsed or written.
    #[error("JSON {path}: {source}")]
    Json {
        /// The JSON file involved.
        path: PathBuf,
        /// The underlying serde_json error.
        #[source]
        source: serde_json::Error,
    },
}

/// The library's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An I/O error on `path` while doing `action` ("reading", "writing", ...).
    pub fn io(action: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            action,
            path: path.into(),
            source,
        }
    }
}
