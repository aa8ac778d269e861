//! The tutorial as stages that notebooks and the `sae walkthrough` command share: load the
//! model, collect activations, train the SAE. Each stage returns data and prints nothing; the
//! CLI adds the evaluation and the report folder on top.

mod config;
mod stages;

pub use config::{DocSplit, WalkthroughConfig};
pub use stages::*;
