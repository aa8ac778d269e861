//! Evaluation apart from training: pure metrics, and (later) the model with an SAE spliced in.

pub mod metrics;
