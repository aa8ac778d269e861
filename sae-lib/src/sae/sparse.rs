//! Sparse encoding for TopK-style SAEs: the selected pre-activations computed, and
//! differentiated, only where they were selected.
//!
//! A TopK SAE needs every pre-activation to choose the top `k`, so the encoder's forward
//! matmul is dense. Its backward need not be: the loss only sees `k` pre-activations per
//! input, so the gradient for `W_enc` has `k · batch` non-zero columns' worth of work, not
//! `d_sae · batch`. Stock candle ops route that gradient through a dense `(batch, d_sae)`
//! matrix and two dense matmuls; [`GatherMatmul`] computes it directly.

use std::sync::OnceLock;

use candle_core::{CpuStorage, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::Result;

/// `out[b, i] = Σ_d xc[b, d] · W_enc[d, indices[b, i]]` for `xc` `(batch, d_in)` and `W_enc`
/// `(d_in, d_sae)`, both f32 on the CPU, with a sparse backward for both inputs.
struct GatherMatmul {
    indices: Vec<u32>,
    k: usize,
    /// `W_encᵀ` from the forward, for the backward (the same weights).
    w_t: OnceLock<Vec<f32>>,
}

/// `(rows, cols)` row-major to `(cols, rows)`, a band of output rows per task, so each read
/// of the source takes a whole cache line (a naive transpose of `W_enc` was 20 ms).
fn transpose(src: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    const BAND: usize = 16;
    let mut dst = vec![0f32; src.len()];
    dst.par_chunks_mut(BAND * rows)
        .enumerate()
        .for_each(|(band, out)| {
            let c0 = band * BAND;
            let width = out.len() / rows;
            for r in 0..rows {
                for (c, &v) in src[r * cols + c0..r * cols + c0 + width].iter().enumerate() {
                    out[c * rows + r] = v;
                }
            }
        });
    dst
}

/// A dot product the compiler vectorises (sixteen independent partial sums).
fn dot(a: &[f32], b: &[f32]) -> f32 {
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
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// `out += alpha · x`.
fn axpy(out: &mut [f32], alpha: f32, x: &[f32]) {
    for (o, v) in out.iter_mut().zip(x) {
        *o += alpha * v;
    }
}

fn contiguous_f32<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> candle_core::Result<&'a [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((a, b))) => Ok(&v[a..b]),
        _ => candle_core::bail!("gather-matmul needs a contiguous f32 {what}"),
    }
}

fn to_vec(t: &Tensor) -> candle_core::Result<Vec<f32>> {
    t.flatten_all()?.to_vec1::<f32>()
}

impl candle_core::CustomOp2 for GatherMatmul {
    fn name(&self) -> &'static str {
        "gather-matmul"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (b, d_in) = l1.shape().dims2()?;
        let (_, d_sae) = l2.shape().dims2()?;
        let xc = contiguous_f32(s1, l1, "input")?;
        let w = contiguous_f32(s2, l2, "W_enc")?;
        let wt = self.w_t.get_or_init(|| transpose(w, d_in, d_sae));
        let mut out = vec![0f32; b * self.k];
        out.par_chunks_mut(self.k).enumerate().for_each(|(r, row)| {
            let x = &xc[r * d_in..(r + 1) * d_in];
            for (o, &j) in row.iter_mut().zip(&self.indices[r * self.k..]) {
                *o = dot(x, &wt[j as usize * d_in..(j as usize + 1) * d_in]);
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((b, self.k))))
    }

    fn bwd(
        &self,
        xc: &Tensor,
        w_enc: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (b, d_in) = xc.dims2()?;
        let d_sae = w_enc.dim(1)?;
        let k = self.k;
        let (x, g) = (to_vec(xc)?, to_vec(grad)?);
        // Kept from the forward; recomputed only if the forward ran elsewhere.
        let computed;
        let wt = match self.w_t.get() {
            Some(wt) => wt,
            None => {
                computed = transpose(&to_vec(w_enc)?, d_in, d_sae);
                &computed
            }
        };
        // d xc[b, :] = Σ_i g[b, i] · W_enc[:, idx[b, i]]
        let mut grad_x = vec![0f32; b * d_in];
        grad_x
            .par_chunks_mut(d_in)
            .enumerate()
            .for_each(|(r, out)| {
                let span = r * k..(r + 1) * k;
                for (&j, &gv) in self.indices[span.clone()].iter().zip(&g[span]) {
                    let j = j as usize;
                    axpy(out, gv, &wt[j * d_in..(j + 1) * d_in]);
                }
            });
        // d W_encᵀ[j, :] = Σ over (b, i) with idx[b, i] = j of g[b, i] · xc[b, :]: group the
        // selections by feature, so each feature's row is one contiguous sum of input rows.
        let mut start = vec![0usize; d_sae + 1];
        for &j in &self.indices {
            start[j as usize + 1] += 1;
        }
        for j in 0..d_sae {
            start[j + 1] += start[j];
        }
        let mut next = start.clone();
        let mut by_feature = vec![0u32; self.indices.len()];
        for (p, &j) in self.indices.iter().enumerate() {
            by_feature[next[j as usize]] = p as u32;
            next[j as usize] += 1;
        }
        let mut grad_wt = vec![0f32; d_sae * d_in];
        grad_wt
            .par_chunks_mut(d_in)
            .enumerate()
            .for_each(|(j, out)| {
                for &p in &by_feature[start[j]..start[j + 1]] {
                    let r = p as usize / k;
                    axpy(out, g[p as usize], &x[r * d_in..(r + 1) * d_in]);
                }
            });
        let device = xc.device();
        Ok((
            Some(Tensor::from_vec(grad_x, (b, d_in), device)?),
            Some(Tensor::from_vec(
                transpose(&grad_wt, d_sae, d_in),
                (d_in, d_sae),
                device,
            )?),
        ))
    }
}

/// The pre-activations `(xc · W_enc + b_enc)` at `indices` `(batch, k)`, where `xc` is the
/// centred input `x − b_dec`. Differentiable in all three; on the CPU in f32 the gradient is
/// computed sparsely, elsewhere through stock ops (a dense matmul and a gather).
pub fn gather_pre_acts(
    xc: &Tensor,
    w_enc: &Tensor,
    b_enc: &Tensor,
    indices: &Tensor,
) -> Result<Tensor> {
    let (b, k) = indices.dims2()?;
    let bias = b_enc
        .index_select(&indices.flatten_all()?, 0)?
        .reshape((b, k))?;
    let sparse_ok = xc.device().is_cpu() && xc.dtype() == DType::F32 && w_enc.dtype() == DType::F32;
    let values = if sparse_ok {
        let op = GatherMatmul {
            indices: indices.flatten_all()?.to_vec1::<u32>()?,
            k,
            w_t: OnceLock::new(),
        };
        xc.contiguous()?.apply_op2(&w_enc.contiguous()?, op)?
    } else {
        xc.matmul(w_enc)?.gather(&indices.contiguous()?, 1)?
    };
    Ok((values + bias)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// Forward values and gradients against the dense stock-op formulation.
    #[test]
    fn sparse_gradients_equal_the_dense_formulation() {
        let dev = Device::Cpu;
        let (b, d_in, d_sae, k) = (6, 5, 11, 3);
        let x = Tensor::randn(0f32, 1., (b, d_in), &dev).unwrap();
        let w = Var::from_tensor(&Tensor::randn(0f32, 1., (d_in, d_sae), &dev).unwrap()).unwrap();
        let b_enc = Var::from_tensor(&Tensor::randn(0f32, 1., d_sae, &dev).unwrap()).unwrap();
        let b_dec = Var::from_tensor(&Tensor::randn(0f32, 1., d_in, &dev).unwrap()).unwrap();
        // Distinct indices per row, some features chosen by several rows, some by none.
        let idx: Vec<u32> = (0..b)
            .flat_map(|r| (0..k).map(move |i| ((r * 2 + i * 3) % d_sae) as u32))
            .collect();
        let idx = Tensor::from_vec(idx, (b, k), &dev).unwrap();
        let weights = Tensor::randn(0f32, 1., (b, k), &dev).unwrap();
        let run = |sparse: bool| {
            let xc = x.broadcast_sub(b_dec.as_tensor()).unwrap();
            let v = if sparse {
                gather_pre_acts(&xc, w.as_tensor(), b_enc.as_tensor(), &idx).unwrap()
            } else {
                xc.matmul(w.as_tensor())
                    .unwrap()
                    .broadcast_add(b_enc.as_tensor())
                    .unwrap()
                    .gather(&idx, 1)
                    .unwrap()
            };
            let loss = (&v * &weights).unwrap().sqr().unwrap().sum_all().unwrap();
            let grads = loss.backward().unwrap();
            let g = |t: &Var| to_vec(grads.get(t.as_tensor()).unwrap()).unwrap();
            (to_vec(&v).unwrap(), g(&w), g(&b_enc), g(&b_dec))
        };
        let (sparse, dense) = (run(true), run(false));
        let close = |a: &[f32], b: &[f32], what: &str| {
            let worst = a
                .iter()
                .zip(b)
                .map(|(x, y)| (x - y).abs())
                .fold(0f32, f32::max);
            assert!(worst < 1e-4, "{what}: max abs diff {worst}");
        };
        close(&sparse.0, &dense.0, "values");
        close(&sparse.1, &dense.1, "grad W_enc");
        close(&sparse.2, &dense.2, "grad b_enc");
        close(&sparse.3, &dense.3, "grad b_dec");
    }
}
