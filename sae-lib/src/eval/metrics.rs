//! Pure reconstruction and sparsity metrics, named as SAELens names them.

use candle_core::{DType, Tensor};

use crate::Result;

/// Fraction of variance unexplained: `Σ‖x − x̂‖² / Σ‖x − x̄‖²` over a batch, where `x̄` is the
/// batch mean. (Not `E‖x − x̂‖² / E‖x‖²`, which flatters any SAE on activations with a large
/// mean; SAELens fixed exactly this in its PRs #443 and #665.) Scale-invariant, so the same in
/// the trainer's scaled space and the model's.
pub fn fvu(x: &Tensor, x_hat: &Tensor) -> Result<f64> {
    let x = x.to_dtype(DType::F64)?;
    let x_hat = x_hat.to_dtype(DType::F64)?;
    let err = (&x - &x_hat)?.sqr()?.sum_all()?.to_scalar::<f64>()?;
    let var = x
        .broadcast_sub(&x.mean(0)?)?
        .sqr()?
        .sum_all()?
        .to_scalar::<f64>()?;
    Ok(if var > 0.0 { err / var } else { f64::NAN })
}

/// SAELens' `explained_variance`: `1 − FVU`.
pub fn explained_variance(x: &Tensor, x_hat: &Tensor) -> Result<f64> {
    Ok(1.0 - fvu(x, x_hat)?)
}

/// Mean number of active (non-zero) features per input.
pub fn l0(feature_acts: &Tensor) -> Result<f64> {
    let n = feature_acts.dim(0)? as f64;
    Ok(feature_acts
        .ne(0f32)?
        .to_dtype(DType::F64)?
        .sum_all()?
        .to_scalar::<f64>()?
        / n)
}

/// Mean L1 norm of the feature activations per input.
pub fn l1(feature_acts: &Tensor) -> Result<f64> {
    let n = feature_acts.dim(0)? as f64;
    Ok(feature_acts
        .abs()?
        .to_dtype(DType::F64)?
        .sum_all()?
        .to_scalar::<f64>()?
        / n)
}

/// How many inputs each feature fired on, `(d_sae,)`.
pub fn firing_counts(feature_acts: &Tensor) -> Result<Vec<f32>> {
    if crate::ops::host_f32(&[feature_acts]) && feature_acts.rank() == 2 && feature_acts.dim(1)? > 0
    {
        // A row at a time: the trainer counts every dense step's `(batch, d_sae)` activations.
        let d = feature_acts.dim(1)?;
        let counts = crate::sae::kernels::with_host(feature_acts, "the activations", |f| {
            Ok(crate::sae::kernels::fold_rows(
                f,
                d,
                |c: &mut [u32], row| {
                    c.iter_mut()
                        .zip(row)
                        .for_each(|(c, &v)| *c += u32::from(v != 0.0))
                },
                |c, p| c.iter_mut().zip(p).for_each(|(c, &n)| *c += n),
            ))
        })?;
        return Ok(counts.into_iter().map(|n| n as f32).collect());
    }
    Ok(feature_acts
        .ne(0f32)?
        .to_dtype(DType::F32)?
        .sum(0)?
        .to_vec1::<f32>()?)
}

/// `log10` of each feature's firing frequency, with never-firing features at `log10(1e-10)`
/// (SAELens' `sparsity.safetensors` convention).
pub fn log10_density(counts: &[f32], samples: f64) -> Vec<f32> {
    counts
        .iter()
        .map(|&c| ((c as f64 / samples.max(1.0)) + 1e-10).log10() as f32)
        .collect()
}

/// Fractions of features that never fired (dead) and that fired on more than `dense_above`
/// of inputs (dense), from per-feature frequencies.
pub fn dead_and_dense(frequencies: &[f64], dense_above: f64) -> (f64, f64) {
    let n = frequencies.len().max(1) as f64;
    let dead = frequencies.iter().filter(|&&f| f == 0.0).count() as f64 / n;
    let dense = frequencies.iter().filter(|&&f| f > dense_above).count() as f64 / n;
    (dead, dense)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// The row-block count against the stock ops' count, over more rows than one block.
    #[test]
    fn firing_counts_match_the_stock_count() {
        let x = Tensor::randn(0f32, 1., (150, 9), &Device::Cpu).unwrap();
        let f = x.relu().unwrap();
        let fast = firing_counts(&f).unwrap();
        let stock = crate::ops::with_stock_ops(|| firing_counts(&f)).unwrap();
        assert_eq!(fast, stock);
        assert!(fast.iter().all(|&c| c > 30.0 && c < 120.0), "{fast:?}");
    }

    #[test]
    fn fvu_is_centered_and_scale_invariant() {
        let dev = Device::Cpu;
        // Large shared offset: predicting only the mean explains nothing (FVU = 1), even though
        // E‖x − x̂‖² / E‖x‖² would be tiny.
        let x = Tensor::new(
            &[[10f32, 1.0], [10.0, -1.0], [10.0, 3.0], [10.0, -3.0]],
            &dev,
        )
        .unwrap();
        let mean = x.mean_keepdim(0).unwrap().broadcast_as(x.shape()).unwrap();
        assert!((fvu(&x, &mean).unwrap() - 1.0).abs() < 1e-9);
        assert_eq!(fvu(&x, &x).unwrap(), 0.0);
        let noisy = (&x + 0.5).unwrap();
        let a = fvu(&x, &noisy).unwrap();
        let b = fvu(&(&x * 7.0).unwrap(), &(&noisy * 7.0).unwrap()).unwrap();
        assert!((a - b).abs() < 1e-9 && a > 0.0);
    }

    #[test]
    fn sparsity_counts() {
        let f = Tensor::new(&[[0f32, 2.0, 0.0], [1.0, 3.0, 0.0]], &Device::Cpu).unwrap();
        assert_eq!(l0(&f).unwrap(), 1.5);
        assert_eq!(l1(&f).unwrap(), 3.0);
        assert_eq!(firing_counts(&f).unwrap(), vec![1.0, 2.0, 0.0]);
        let (dead, dense) = dead_and_dense(&[0.5, 1.0, 0.0], 0.6);
        assert!((dead - 1.0 / 3.0).abs() < 1e-12 && (dense - 1.0 / 3.0).abs() < 1e-12);
        assert!((log10_density(&[1.0], 10.0)[0] + 1.0).abs() < 1e-5);
    }
}
