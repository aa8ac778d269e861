//! Sparse encoding for TopK-style SAEs: the selected pre-activations computed, and
//! differentiated, only where they were selected.
//!
//! A TopK SAE needs every pre-activation to choose the top `k`, so the encoder's forward
//! matmul is dense. Its backward need not be: the loss only sees `k` pre-activations per
//! input, so the gradient for `W_enc` has `k · batch` non-zero columns' worth of work, not
//! `d_sae · batch`. Stock candle ops route that gradient through a dense `(batch, d_sae)`
//! matrix and two dense matmuls; [`GatherMatmul`] computes it directly.

use candle_core::{CpuStorage, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::Result;

/// `out[b, i] = Σ_d xc[b, d] · W_enc[d, indices[b, i]]` for `xc` `(batch, d_in)` and `W_enc`
/// `(d_in, d_sae)`, both f32 on the CPU, with a sparse backward for both inputs.
struct GatherMatmul {
    indices: Vec<u32>,
    k: usize,
}

/// `W_enc` `(d_in, d_sae)` transposed to `(d_sae, d_in)`, so each feature's weights are
/// contiguous.
fn transpose(w: &[f32], d_in: usize, d_sae: usize) -> Vec<f32> {
    let mut wt = vec![0f32; w.len()];
    wt.par_chunks_mut(d_in).enumerate().for_each(|(j, row)| {
        for (d, v) in row.iter_mut().enumerate() {
            *v = w[d * d_sae + j];
        }
    });
    wt
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
        let wt = transpose(contiguous_f32(s2, l2, "W_enc")?, d_in, d_sae);
        let mut out = vec![0f32; b * self.k];
        out.par_chunks_mut(self.k).enumerate().for_each(|(r, row)| {
            let x = &xc[r * d_in..(r + 1) * d_in];
            for (i, o) in row.iter_mut().enumerate() {
                let j = self.indices[r * self.k + i] as usize;
                let w = &wt[j * d_in..(j + 1) * d_in];
                *o = x.iter().zip(w).map(|(a, b)| a * b).sum();
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
        let (x, w, g) = (to_vec(xc)?, to_vec(w_enc)?, to_vec(grad)?);
        let wt = transpose(&w, d_in, d_sae);
        // d xc[b, :] = Σ_i g[b, i] · W_enc[:, idx[b, i]]
        let mut grad_x = vec![0f32; b * d_in];
        grad_x
            .par_chunks_mut(d_in)
            .enumerate()
            .for_each(|(r, out)| {
                for i in 0..k {
                    let (j, gv) = (self.indices[r * k + i] as usize, g[r * k + i]);
                    for (o, wv) in out.iter_mut().zip(&wt[j * d_in..(j + 1) * d_in]) {
                        *o += gv * wv;
                    }
                }
            });
        // d W_enc[d, j] = Σ over (b, i) with idx[b, i] = j of g[b, i] · xc[b, d]; each thread
        // owns whole rows of W_enc, so the scatter needs no atomics.
        let mut grad_w = vec![0f32; d_in * d_sae];
        grad_w
            .par_chunks_mut(d_sae)
            .enumerate()
            .for_each(|(d, out)| {
                for r in 0..b {
                    let xv = x[r * d_in + d];
                    for i in 0..k {
                        out[self.indices[r * k + i] as usize] += g[r * k + i] * xv;
                    }
                }
            });
        let device = xc.device();
        Ok((
            Some(Tensor::from_vec(grad_x, (b, d_in), device)?),
            Some(Tensor::from_vec(grad_w, (d_in, d_sae), device)?),
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
