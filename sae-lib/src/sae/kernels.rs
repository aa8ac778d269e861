//! Small CPU kernels under the sparse ops: a dot product, `axpy` and rows scaled to unit norm,
//! plus zero-copy access to a tensor's f32 data.
//!
//! The crate is built for baseline x86-64 (SSE2), so loops the compiler vectorises run four
//! lanes wide without FMA. `dot` and `axpy` check once for AVX2 and FMA and then run a copy
//! of the same loop compiled for them (eight lanes, fused multiply-add): the sparse encoder
//! and decoder spend most of their time here. Results differ from the baseline path only by
//! FMA rounding, and a given machine always takes the same path, so runs stay reproducible.

use candle_core::{CpuStorage, Storage, Tensor};

/// Whether this CPU has AVX2 and FMA (checked once; std caches the answer).
#[cfg(target_arch = "x86_64")]
fn wide() -> bool {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
}

/// Sixteen independent partial sums, so the loop vectorises without reassociation.
#[inline(always)]
fn dot_body(a: &[f32], b: &[f32], fma: bool) -> f32 {
    let mut acc = [0f32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..16 {
            acc[i] = if fma {
                x[i].mul_add(y[i], acc[i])
            } else {
                acc[i] + x[i] * y[i]
            };
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[inline(always)]
fn axpy_body(out: &mut [f32], alpha: f32, x: &[f32], fma: bool) {
    for (o, &v) in out.iter_mut().zip(x) {
        *o = if fma {
            alpha.mul_add(v, *o)
        } else {
            *o + alpha * v
        };
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_wide(a: &[f32], b: &[f32]) -> f32 {
    dot_body(a, b, true)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn axpy_wide(out: &mut [f32], alpha: f32, x: &[f32]) {
    axpy_body(out, alpha, x, true)
}

/// `Σ a[i] · b[i]` over the shorter of the two.
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if wide() {
        // SAFETY: the CPU has the features `dot_wide` was compiled for.
        return unsafe { dot_wide(a, b) };
    }
    dot_body(a, b, false)
}

/// `out += alpha · x`.
pub(crate) fn axpy(out: &mut [f32], alpha: f32, x: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if wide() {
        // SAFETY: as in `dot`.
        return unsafe { axpy_wide(out, alpha, x) };
    }
    axpy_body(out, alpha, x, false)
}

/// Scales each row of a contiguous f32 `(rows, d)` CPU matrix to unit L2 norm, in place.
pub(crate) struct UnitRows;

impl candle_core::InplaceOp1 for UnitRows {
    fn name(&self) -> &'static str {
        "unit-rows"
    }

    fn cpu_fwd(
        &self,
        storage: &mut CpuStorage,
        layout: &candle_core::Layout,
    ) -> candle_core::Result<()> {
        use rayon::prelude::*;
        let (rows, d) = layout.shape().dims2()?;
        let (CpuStorage::F32(data), Some((a, b))) = (storage, layout.contiguous_offsets()) else {
            candle_core::bail!("unit-rows needs a contiguous f32 matrix")
        };
        if rows == 0 || d == 0 {
            return Ok(());
        }
        data[a..b].par_chunks_mut(d).for_each(|row| {
            let inv = 1.0 / dot(row, row).sqrt();
            row.iter_mut().for_each(|v| *v *= inv);
        });
        Ok(())
    }
}

/// Runs `f` on a contiguous f32 CPU tensor's data in place, under its read lock: a gradient
/// or weight read where it lies rather than copied out (a copy of `W_dec` was a tenth of the
/// sparse backward). `what` names the tensor in the error.
pub(crate) fn with_host<R>(
    t: &Tensor,
    what: &str,
    f: impl FnOnce(&[f32]) -> candle_core::Result<R>,
) -> candle_core::Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    match (&*storage, layout.contiguous_offsets()) {
        (Storage::Cpu(CpuStorage::F32(d)), Some((a, b))) => f(&d[a..b]),
        _ => candle_core::bail!("expected an f32 CPU tensor for {what}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The dispatched kernels against plain f64 sums, at lengths around the 16-lane blocks.
    #[test]
    fn unit_rows_have_unit_norm_and_keep_their_direction() {
        let w = Tensor::new(
            &[[3f32, 4.0], [0.0, -2.0], [1.0, 1.0]],
            &candle_core::Device::Cpu,
        )
        .unwrap();
        w.inplace_op1(&UnitRows).unwrap();
        let got = w.to_vec2::<f32>().unwrap();
        let h = std::f32::consts::FRAC_1_SQRT_2;
        let want = [[0.6, 0.8], [0.0, -1.0], [h, h]];
        for (g, w) in got.iter().flatten().zip(want.iter().flatten()) {
            assert!((g - w).abs() < 1e-6, "{got:?}");
        }
    }

    #[test]
    fn dot_and_axpy_match_plain_sums() {
        for n in [0, 1, 15, 16, 17, 100, 576] {
            let a: Vec<f32> = (0..n).map(|i| ((i * 7 % 13) as f32 - 6.0) / 3.0).collect();
            let b: Vec<f32> = (0..n).map(|i| ((i * 5 % 11) as f32 - 5.0) / 7.0).collect();
            let want: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
            assert!((dot(&a, &b) as f64 - want).abs() < 1e-4, "dot, n = {n}");
            let mut out = b.clone();
            axpy(&mut out, 0.5, &a);
            for i in 0..n {
                assert!((out[i] - (b[i] + 0.5 * a[i])).abs() < 1e-6, "axpy, n = {n}");
            }
        }
    }
}
