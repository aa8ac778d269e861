//! # sae-lib
//!
//! Sparse autoencoders for mechanistic interpretability, on candle.
//!
//! The pieces follow the tutorial this crate ports: load a language model with hook points
//! ([`model`], [`hooks`]), collect activations at `blocks.5.hook_mlp_out`, train a sparse
//! autoencoder on them, and evaluate and plot what it learned.
//!
//! ```no_run
//! use sae_lib::{hooks::{HookPoint, Hooks}, hub::HubOptions, model::{self, ModelSource, TokenBatch}};
//! # fn main() -> sae_lib::Result<()> {
//! let source = ModelSource::parse("EleutherAI/pythia-70m-deduped");
//! let hub = HubOptions::from_env();
//! let device = sae_lib::device::best_device();
//! let model = model::load_model(&source, &device, candle_core::DType::F32, &hub)?;
//! let tokenizer = model::load_tokenizer(&source, &hub)?;
//! let ids = tokenizer.encode("The quick brown fox", Some(128))?;
//! let batch = TokenBatch::from_sequences(&[ids], Default::default(), tokenizer.pad_id(), &device)?;
//! let hook = HookPoint::mlp_out(5); // "blocks.5.hook_mlp_out"
//! let mut hooks = Hooks::new().capture(hook).stop_at(hook);
//! model.forward(&batch, &mut hooks)?;
//! let acts = hooks.take(hook)?; // (1, seq, 512)
//! # Ok(()) }
//! ```

pub mod collect;
pub mod data;
pub mod device;
pub mod error;
pub mod eval;
pub mod hooks;
pub mod hub;
pub mod io;
pub mod model;
pub mod plot;
pub mod progress;
pub mod sae;
pub mod sweep;
pub mod tokenizer;
pub mod train;
pub mod walkthrough;

pub use error::{Error, Result};
