//! Integration tests, one binary (each extra test binary costs a link of candle and polars).

mod cli;
mod collect;
mod common;
mod cuda_kernels;
mod defaults;
mod eval;
mod gemma2;
mod gemma_scope;
mod gguf;
mod hub;
mod llama_family;
mod mixed_precision;
mod mock_hub;
mod model;
mod outputs;
mod rope_scaling;
mod sae;
mod stock_ops;
mod stream;
mod tokenizer;
mod variants;
mod walkthrough;
