//! Evaluation apart from training: pure metrics, the model with an SAE spliced in, and
//! feature inspection.

pub mod inspect;
pub mod lm;
pub mod metrics;
pub mod score;
pub mod splice;

pub use lm::{lm_loss, LmLoss, Unigram};
pub use score::{score, Score};
pub use splice::{splice_eval, SpliceMetrics};

/// What a CE loss recovered above 1 means, for wherever it is shown.
pub const CE_ABOVE_ONE: &str = "CE loss recovered above 1 means the model's loss with the SAE \
    spliced in was lower than without it on these tokens: the SAE's error happened to help. It \
    is common on small or random models and short evaluations, and is no sign of a better SAE; \
    judge the SAE by its FVU and by the KL divergence.";
