//! An SAE's reconstruction and sparsity over a whole activation source, read in chunks: memory
//! stays bounded by one chunk's `(rows, d_sae)` activations however large the store is (the
//! dense `(rows, d_sae)` matrix of a 1.28M-token store at 4,096 features would be 21 GB).

use candle_core::{DType, Device, IndexOp, Tensor};
use serde::{Deserialize, Serialize};

use crate::sae::Sae;
use crate::train::ActivationSource;
use crate::{Error, Result};

/// Rows encoded at a time.
pub const CHUNK_ROWS: usize = 4096;

/// What [`score`] measures, over every row of the source.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Score {
    /// Rows scored (every row of the source).
    pub rows: usize,
    /// `Σ‖x − x̂‖² / Σ‖x − x̄‖²` over all rows (see [`super::metrics::fvu`]).
    pub fvu: f64,
    /// Fraction of variance explained, `1 − fvu`.
    pub explained_variance: f64,
    /// Mean active features per input.
    pub l0: f64,
    /// Fraction of features that fired on no row.
    pub dead_fraction: f64,
    /// How many rows each feature fired on.
    #[serde(skip)]
    pub firing_counts: Vec<f32>,
    /// Active features of each row, in row order.
    #[serde(skip)]
    pub l0_per_input: Vec<f32>,
}

/// Scores `sae` on every row of `data`, [`CHUNK_ROWS`] at a time, on `device`. `on_chunk` is
/// told the rows done so far (for progress).
pub fn score(
    data: &dyn ActivationSource,
    sae: &dyn Sae,
    device: &Device,
    on_chunk: &mut dyn FnMut(usize),
) -> Result<Score> {
    let (n, d) = (data.len(), data.d());
    if d != sae.config().d_in {
        return Err(Error::Input(format!(
            "the activations have width {d} but the SAE's d_in is {}: this SAE was trained on \
             another hook or model",
            sae.config().d_in
        )));
    }
    if n < 2 {
        return Err(Error::Input(format!(
            "scoring needs at least 2 rows of activations (got {n}): the FVU needs a variance"
        )));
    }
    let d_sae = sae.config().d_sae;
    let mut sum = vec![0f64; d];
    let (mut sum_sq, mut err) = (0f64, 0f64);
    let mut counts = vec![0f32; d_sae];
    let mut l0_per_input = Vec::with_capacity(n);
    let rows: Vec<u32> = (0..n as u32).collect();
    for chunk in rows.chunks(CHUNK_ROWS) {
        let x = data.gather_once(chunk, device)?;
        let f = sae.encode(&x)?;
        let x_hat = sae.decode(&f)?;
        let x64 = x.to_dtype(DType::F64)?;
        err += (&x64 - x_hat.to_dtype(DType::F64)?)?
            .sqr()?
            .sum_all()?
            .to_scalar::<f64>()?;
        sum_sq += x64.sqr()?.sum_all()?.to_scalar::<f64>()?;
        for (s, v) in sum.iter_mut().zip(x64.sum(0)?.to_vec1::<f64>()?) {
            *s += v;
        }
        let active = f.ne(0f32)?.to_dtype(DType::F32)?;
        for (c, v) in counts.iter_mut().zip(active.sum(0)?.to_vec1::<f32>()?) {
            *c += v;
        }
        l0_per_input.extend(active.sum(1)?.to_vec1::<f32>()?);
        on_chunk(chunk.len());
    }
    // Σ‖x − x̄‖² = Σ‖x‖² − n‖x̄‖², in f64.
    let variance = sum_sq - sum.iter().map(|s| s * s).sum::<f64>() / n as f64;
    let fvu = if variance > 0.0 {
        err / variance
    } else {
        f64::NAN
    };
    Ok(Score {
        rows: n,
        fvu,
        explained_variance: 1.0 - fvu,
        l0: l0_per_input.iter().map(|&v| v as f64).sum::<f64>() / n as f64,
        dead_fraction: counts.iter().filter(|&&c| c == 0.0).count() as f64 / d_sae as f64,
        firing_counts: counts,
        l0_per_input,
    })
}

/// One clear error when a feature index is past the SAE's last feature.
pub fn check_features(sae: &dyn Sae, features: &[usize]) -> Result<()> {
    let d_sae = sae.config().d_sae;
    match features.iter().find(|&&f| f >= d_sae) {
        Some(&bad) => Err(Error::Input(format!(
            "feature {bad} does not exist: the SAE has {d_sae} features (0 to {})",
            d_sae.saturating_sub(1)
        ))),
        None => Ok(()),
    }
}

/// The activations of `features` on every row of `data`, in row order, one `Vec` per feature;
/// one chunked pass however many features are asked for.
pub fn feature_activations(
    data: &dyn ActivationSource,
    sae: &dyn Sae,
    features: &[usize],
    device: &Device,
) -> Result<Vec<Vec<f32>>> {
    check_features(sae, features)?;
    if data.d() != sae.config().d_in {
        return Err(Error::Input(format!(
            "the store's activations have width {} but the SAE's d_in is {}",
            data.d(),
            sae.config().d_in
        )));
    }
    let mut out = vec![Vec::with_capacity(data.len()); features.len()];
    let rows: Vec<u32> = (0..data.len() as u32).collect();
    for chunk in rows.chunks(CHUNK_ROWS) {
        let f = sae.encode(&data.gather_once(chunk, device)?)?;
        for (acts, &feature) in out.iter_mut().zip(features) {
            acts.extend(f.i((.., feature))?.to_dtype(DType::F32)?.to_vec1::<f32>()?);
        }
    }
    Ok(out)
}

/// The first `n` rows' inputs and reconstructions, flattened, for the reconstruction chart.
pub fn sample_reconstruction(
    data: &dyn ActivationSource,
    sae: &dyn Sae,
    n: usize,
    device: &Device,
) -> Result<(Vec<f32>, Vec<f32>)> {
    let rows: Vec<u32> = (0..n.min(data.len()) as u32).collect();
    let x = data.gather(&rows, device)?;
    let x_hat = sae.decode(&sae.encode(&x)?)?;
    let flat =
        |t: &Tensor| -> Result<Vec<f32>> { Ok(t.flatten_all()?.to_dtype(DType::F32)?.to_vec1()?) };
    Ok((flat(&x)?, flat(&x_hat)?))
}
