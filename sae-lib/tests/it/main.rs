//! Integration tests, one binary (each extra test binary costs a link of candle and polars).

mod collect;
mod common;
mod model;
mod sae;
mod tokenizer;
