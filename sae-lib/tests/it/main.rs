//! Integration tests, one binary (each extra test binary costs a link of candle and polars).

mod cli;
mod collect;
mod defaults;
mod common;
mod eval;
mod gguf;
mod model;
mod outputs;
mod sae;
mod tokenizer;
mod variants;
mod walkthrough;
