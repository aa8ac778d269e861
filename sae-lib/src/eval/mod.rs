//! Evaluation apart from training: pure metrics, the model with an SAE spliced in, and
//! feature inspection.

pub mod inspect;
pub mod metrics;
pub mod splice;

pub use splice::{splice_eval, SpliceMetrics};
