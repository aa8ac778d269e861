//! Evaluation apart from training: pure metrics, the model with an SAE spliced in, and
//! feature inspection.

pub mod inspect;
pub mod lm;
pub mod metrics;
pub mod splice;

pub use lm::{lm_loss, LmLoss, Unigram};
pub use splice::{splice_eval, SpliceMetrics};
