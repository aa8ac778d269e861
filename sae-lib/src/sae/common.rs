//! Pieces every SAE variant shares: seeded initialisation, decoder row norms, and the
//! geometric median used to initialise `b_dec`.

use candle_core::{DType, Device, Tensor, D};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::Result;

/// `n` standard normal samples (Box–Muller), reproducible from `rng` on any machine.
pub fn normal_vec(n: usize, rng: &mut ChaCha8Rng) -> Vec<f32> {
    let mut out = Vec::with_capacity(n + 1);
    while out.len() < n {
        let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
        let u2: f64 = rng.random::<f64>();
        let r = (-2.0 * u1.ln()).sqrt();
        let theta = std::f64::consts::TAU * u2;
        out.push((r * theta.cos()) as f32);
        out.push((r * theta.sin()) as f32);
    }
    out.truncate(n);
    out
}

/// `(rows, cols)` of random directions, each row scaled to L2 norm `norm`.
pub fn random_rows(
    rows: usize,
    cols: usize,
    norm: f64,
    rng: &mut ChaCha8Rng,
    dtype: DType,
    device: &Device,
) -> Result<Tensor> {
    let w =
        Tensor::from_vec(normal_vec(rows * cols, rng), (rows, cols), device)?.to_dtype(dtype)?;
    Ok((w.broadcast_div(&row_norms(&w)?.unsqueeze(1)?)? * norm)?)
}

/// L2 norm of each row of a matrix, `(rows,)`.
pub fn row_norms(w: &Tensor) -> Result<Tensor> {
    Ok(w.sqr()?.sum(D::Minus1)?.sqrt()?)
}

/// The geometric median of the rows of `x` `(n, d)` by Weiszfeld's algorithm: the point
/// minimising the summed Euclidean distance, robust to the outliers that pull the mean.
pub fn geometric_median(x: &Tensor, iterations: usize) -> Result<Tensor> {
    let x = x.to_dtype(DType::F64)?;
    let mut median = x.mean(0)?;
    for _ in 0..iterations {
        let dist = x
            .broadcast_sub(&median)?
            .sqr()?
            .sum(1)?
            .sqrt()?
            .clamp(1e-8, f64::MAX)?;
        let w = dist.recip()?;
        let next = x
            .broadcast_mul(&w.unsqueeze(1)?)?
            .sum(0)?
            .broadcast_div(&w.sum_all()?)?;
        let moved = (&next - &median)?
            .sqr()?
            .sum_all()?
            .sqrt()?
            .to_scalar::<f64>()?;
        median = next;
        if moved < 1e-7 {
            break;
        }
    }
    Ok(median.to_dtype(DType::F32)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn geometric_median_resists_outliers() {
        // Nine points at the origin-ish cluster and one far outlier: the mean moves, the
        // geometric median stays with the cluster.
        let mut rows = vec![0f32; 9 * 2];
        rows.extend([100.0, 100.0]);
        for (i, v) in rows.iter_mut().take(18).enumerate() {
            *v = if i % 2 == 0 {
                0.01 * i as f32
            } else {
                -0.01 * i as f32
            };
        }
        let x = Tensor::from_vec(rows, (10, 2), &Device::Cpu).unwrap();
        let gm = geometric_median(&x, 200).unwrap().to_vec1::<f32>().unwrap();
        let mean = x.mean(0).unwrap().to_vec1::<f32>().unwrap();
        assert!(mean[0] > 9.0);
        assert!(gm[0].abs() < 0.2 && gm[1].abs() < 0.2, "{gm:?}");
    }

    #[test]
    fn random_rows_have_the_asked_norm_and_are_seeded() {
        let mut a = ChaCha8Rng::seed_from_u64(3);
        let mut b = ChaCha8Rng::seed_from_u64(3);
        let wa = random_rows(16, 8, 0.1, &mut a, DType::F32, &Device::Cpu).unwrap();
        let wb = random_rows(16, 8, 0.1, &mut b, DType::F32, &Device::Cpu).unwrap();
        assert_eq!(wa.to_vec2::<f32>().unwrap(), wb.to_vec2::<f32>().unwrap());
        for n in row_norms(&wa).unwrap().to_vec1::<f32>().unwrap() {
            assert!((n - 0.1).abs() < 1e-5);
        }
    }
}
