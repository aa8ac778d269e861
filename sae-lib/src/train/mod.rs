//! Training: the loop, its optimiser, its schedules and where its batches come from.

pub mod health;
pub mod optim;
pub mod schedule;
pub mod source;
pub mod trainer;

pub use health::{diagnose, RunSummary};
pub use source::ActivationSource;
pub use trainer::{metrics_frame, BDecInit, MetricsRow, TrainConfig, TrainReport, Trainer};
