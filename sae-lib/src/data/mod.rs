//! Datasets of text in, activation stores out.

pub mod dataset;
pub mod filter;
pub mod store;

pub use dataset::{DatasetOptions, DatasetSource, TxtSplit};
pub use filter::TokenFilter;
pub use store::{ActivationStore, CollectMode, StoreMeta};
