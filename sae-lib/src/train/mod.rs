//! Training: the loop, its optimiser, its schedules and where its batches come from.

pub mod health;
pub mod job;
pub mod optim;
pub mod schedule;
pub mod source;
pub mod stream;
pub mod trainer;

pub use health::{diagnose, diagnose_held_out, diagnose_outliers, RunSummary};
pub use job::StreamJob;
pub use source::{ActivationSource, BatchSource, RowRange, StoreBatches};
pub use stream::{ActivationStream, StreamConfig};
#[cfg(feature = "polars")]
pub use trainer::metrics_frame;
pub use trainer::{
    metrics_table, BDecInit, Compute, MetricsRow, TrainConfig, TrainReport, Trainer,
};
