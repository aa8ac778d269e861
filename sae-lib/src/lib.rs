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

#![deny(missing_docs)]

pub mod collect;
#[cfg(feature = "cuda")]
mod cuda;
pub mod data;
pub mod device;
mod error;
pub mod eval;
pub mod hooks;
pub mod hub;
pub mod io;
pub mod model;
pub mod ops;
pub mod output;
pub mod plot;
pub mod progress;
pub mod sae;
pub mod sweep;
pub mod tokenizer;
pub mod train;
pub mod walkthrough;

pub use error::{Error, Result};

// What the notebooks use, at the crate root: `use sae_lib::{WalkthroughConfig, Chart, ...}`.
pub use data::ActivationStore;
pub use hooks::{HookPoint, Hooks};
pub use model::{Model, Padding, TokenBatch};
pub use plot::{Chart, Html, ParetoMetric, Table};
pub use sae::{AnySae, Architecture, Sae, SaeConfig};
#[cfg(feature = "polars")]
pub use sweep::sweep_frame;
pub use sweep::{pareto_chart, run_sweep, sweep_table, SweepConfig};
pub use tokenizer::Tokenizer;
#[cfg(feature = "polars")]
pub use train::metrics_frame;
pub use train::{metrics_table, MetricsRow, TrainConfig, Trainer};
pub use walkthrough::WalkthroughConfig;

/// The tutorial's model: the default wherever no SAE, store or flag names another.
pub const TUTORIAL_MODEL: &str = "EleutherAI/pythia-70m-deduped";
/// The tutorial's text: the default wherever no SAE, store or flag names another.
pub const TUTORIAL_DATASET: &str = "NeelNanda/pile-10k";

/// Process-wide CPU settings that candle's defaults get wrong for this workload; the `sae`
/// binary and the benchmarks call it first thing, before any other thread starts.
///
/// - glibc keeps freed memory instead of returning every large block to the OS. Tensors are
///   large and short-lived: by default each one is a fresh `mmap`, and the page faults of
///   touching it again cost more than a third of a CPU forward pass (BENCHMARKS.md).
/// - candle's elementwise thread pool spins 25 000 times before sleeping after each op. Its
///   spinning worker takes a core from the `gemm` threads of the matmul that follows, which
///   cost a batch-1 forward about 40% of its speed; we lower the limit to
///   [`BARRIER_POOL_SPIN_LIMIT`] unless `CANDLE_BARRIER_POOL_SPIN_LIMIT` is already set.
pub fn init_cpu_runtime() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator thresholds; called before any threads start.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, i32::MAX);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
    const SPIN: &str = "CANDLE_BARRIER_POOL_SPIN_LIMIT";
    if std::env::var_os(SPIN).is_none() {
        // candle reads it once, when its pool starts on the first large elementwise op.
        std::env::set_var(SPIN, BARRIER_POOL_SPIN_LIMIT.to_string());
    }
}

/// The spin limit [`init_cpu_runtime`] gives candle's thread pool: 50 to 500 measured alike.
pub const BARRIER_POOL_SPIN_LIMIT: u32 = 100;
