//! Tokens left out of the activations: each document's first, and outliers by norm.
//!
//! Many models park attention on a few tokens (a document's first, and often the next few or
//! its first delimiters) and give them activations with norms a hundred times the rest
//! ("massive activations", Sun et al. 2024, arXiv:2402.17762). A handful of such rows holds
//! most of the variance, so an SAE trained on them spends itself reconstructing them. The
//! filter is recorded with the store and the SAE, so that an evaluation leaves the same tokens
//! alone: spliced into the model, the SAE replaces only the tokens it was trained on, as
//! SAELens' evaluation does for the special tokens it excludes.

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Which tokens of each document are left out, beyond the collection mode's choice.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct TokenFilter {
    /// Leave out each document's first position (mode `all`).
    #[serde(default)]
    pub exclude_first: bool,
    /// Leave out tokens whose activation norm is over this many times the median norm of the
    /// tokens in the same forward batch. `None` keeps them. A stream feeding several hooks
    /// leaves a token out of all of them when it is an outlier at any; the splice judges by
    /// the SAE's own hook alone.
    #[serde(default)]
    pub outlier_norm: Option<f32>,
}

impl TokenFilter {
    /// Checks the ratio before any work starts.
    pub fn validate(&self) -> Result<()> {
        match self.outlier_norm {
            Some(r) if !(r.is_finite() && r > 1.0) => Err(Error::Input(format!(
                "the outlier norm ratio must be a number above 1 (got {r}): tokens whose \
                 activation norm is over that many times the median are left out, so 10 \
                 leaves out only attention sinks and 1 would leave out half the tokens"
            ))),
            _ => Ok(()),
        }
    }

    /// Whether either rule leaves anything out.
    pub fn is_active(&self) -> bool {
        self.exclude_first || self.outlier_norm.is_some()
    }

    /// Which rows are outliers, given their norms at each hook (`norms[h][row]`): those over
    /// the ratio times their hook's median at any hook. All `false` without a ratio.
    pub fn outliers(&self, norms: &[Vec<f32>]) -> Vec<bool> {
        let rows = norms.first().map_or(0, Vec::len);
        let mut out = vec![false; rows];
        let Some(ratio) = self.outlier_norm else {
            return out;
        };
        for hook in norms {
            let mut sorted = hook.clone();
            sorted.sort_unstable_by(f32::total_cmp);
            let limit = ratio * sorted.get(rows / 2).copied().unwrap_or(0.0);
            for (o, &n) in out.iter_mut().zip(hook) {
                *o |= n > limit;
            }
        }
        out
    }
}

/// The Euclidean norm of one activation.
pub fn norm(row: &[f32]) -> f32 {
    row.iter().map(|v| v * v).sum::<f32>().sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_far_above_the_median_norm_are_outliers_at_any_hook() {
        let filter = TokenFilter {
            exclude_first: false,
            outlier_norm: Some(10.0),
        };
        // Median 2: the limit is 20 at the first hook; 1.5 at the second (median 0.15).
        let norms = vec![
            vec![1.0, 2.0, 2.0, 20.0, 21.0],
            vec![0.1, 0.1, 2.0, 0.2, 0.15],
        ];
        assert_eq!(
            filter.outliers(&norms),
            vec![false, false, true, false, true]
        );
        assert_eq!(
            TokenFilter::default().outliers(&norms),
            vec![false; 5],
            "no ratio, no outliers"
        );
        assert!(filter.outliers(&[]).is_empty());
    }

    #[test]
    fn a_ratio_that_would_cut_into_ordinary_tokens_is_refused() {
        for bad in [1.0, 0.5, f32::NAN, f32::INFINITY, -3.0] {
            let f = TokenFilter {
                exclude_first: false,
                outlier_norm: Some(bad),
            };
            let err = f.validate().unwrap_err().to_string();
            assert!(err.contains("above 1"), "{bad}: {err}");
        }
        assert!(TokenFilter {
            exclude_first: true,
            outlier_norm: Some(10.0)
        }
        .validate()
        .is_ok());
    }
}
