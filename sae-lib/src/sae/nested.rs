//! Nested sparse decoding for Matryoshka SAEs: every inner prefix's reconstruction from one
//! pass over each input's selected decoder rows.
//!
//! Decoding each prefix `m_t` separately reads the `k` selected rows once per prefix, forward
//! and backward, and each backward builds its own zero-filled `(d_sae, d_in)` gradient for
//! `W_dec` that autograd then adds up. Here each selected row is read once: it is added to the
//! smallest prefix that contains it, and prefix sums give the larger ones. Backward, a row in
//! prefix `t` feeds every reconstruction `t' ≥ t`, so its gradient is the dot product with the
//! suffix sum `Σ_{t' ≥ t} g_{t'}` of the output gradients, and one `W_dec` gradient is built.

use candle_core::{CpuStorage, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::by_feature::ByFeature;
use super::grads::weight_grad;
use super::kernels::{axpy, contiguous_f32, with_host};
use crate::Result;

/// `out[b, t, :] = Σ_i [indices[b, i] < ends[t]] · values[b, i] · W_dec[indices[b, i], :]`,
/// `values` `(batch, k)`, `W_dec` `(d_sae, d_in)`, `out` `(batch, ends.len(), d_in)`, f32 on the
/// CPU.
struct NestedDecode {
    indices: Vec<u32>,
    k: usize,
    ends: Vec<usize>,
}

impl NestedDecode {
    /// The smallest prefix holding feature `j`, if any does.
    fn prefix_of(&self, j: u32) -> Option<usize> {
        self.ends.iter().position(|&end| (j as usize) < end)
    }
}

impl candle_core::CustomOp2 for NestedDecode {
    fn name(&self) -> &'static str {
        "nested-decode"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (b, _) = l1.shape().dims2()?;
        let (_, d_in) = l2.shape().dims2()?;
        let n = self.ends.len();
        let v = contiguous_f32(s1, l1, "values")?;
        let w = contiguous_f32(s2, l2, "W_dec")?;
        let mut out = vec![0f32; b * n * d_in];
        out.par_chunks_mut(n * d_in)
            .enumerate()
            .for_each(|(r, rows)| {
                let span = r * self.k..(r + 1) * self.k;
                for (&j, &vi) in self.indices[span.clone()].iter().zip(&v[span]) {
                    if let (Some(t), true) = (self.prefix_of(j), vi != 0.0) {
                        let j = j as usize;
                        axpy(
                            &mut rows[t * d_in..(t + 1) * d_in],
                            vi,
                            &w[j * d_in..(j + 1) * d_in],
                        );
                    }
                }
                for t in 1..n {
                    let (done, rest) = rows.split_at_mut(t * d_in);
                    axpy(&mut rest[..d_in], 1.0, &done[(t - 1) * d_in..]);
                }
            });
        Ok((CpuStorage::F32(out), Shape::from((b, n, d_in))))
    }

    fn bwd(
        &self,
        values: &Tensor,
        w_dec: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (b, k) = values.dims2()?;
        let (d_sae, d_in) = w_dec.dims2()?;
        let n = self.ends.len();
        // suffix[b, t, :] = Σ_{t' ≥ t} grad[b, t', :]
        let mut suffix = with_host(grad, "the gradient", |g| Ok(g.to_vec()))?;
        suffix.par_chunks_mut(n * d_in).for_each(|rows| {
            for t in (0..n.saturating_sub(1)).rev() {
                let (head, tail) = rows.split_at_mut((t + 1) * d_in);
                axpy(&mut head[t * d_in..], 1.0, &tail[..d_in]);
            }
        });
        let row_of = |p: usize, b: usize| self.prefix_of(self.indices[p]).map(|t| b * n + t);
        let (grad_v, grad_w) = with_host(values, "the values", |v| {
            with_host(w_dec, "W_dec", |w| {
                let by_feature = ByFeature::new(&self.indices, k, d_sae, v, row_of, true);
                let grad_v = by_feature.dots(&suffix, w, d_in);
                let grad_w = by_feature.sum_rows(&suffix, d_in);
                Ok((grad_v, grad_w))
            })
        })?;
        let device = values.device();
        Ok((
            Some(Tensor::from_vec(grad_v, (b, k), device)?),
            weight_grad(w_dec, Tensor::from_vec(grad_w, (d_sae, d_in), device)?),
        ))
    }
}

/// The reconstructions `(batch, d_in)` from the features below each of `ends` (increasing),
/// with `b_dec` added: `Σ_i [indices[b, i] < end] · values[b, i] · W_dec[indices[b, i], :] +
/// b_dec`. Differentiable in `values`, `W_dec` and `b_dec`. On the CPU in f32 one op reads each
/// selected row once for all prefixes; elsewhere each prefix is a masked sparse decode.
pub fn nested_decode(
    values: &Tensor,
    indices: &Tensor,
    w_dec: &Tensor,
    b_dec: &Tensor,
    ends: &[usize],
) -> Result<Vec<Tensor>> {
    if !crate::ops::host_f32(&[values, w_dec]) {
        return ends
            .iter()
            .map(|&end| {
                let inside = indices.lt(end as u32)?.to_dtype(values.dtype())?;
                super::common::sparse_decode(&(values * inside)?, indices, w_dec, b_dec, false)
            })
            .collect();
    }
    let (b, k) = values.dims2()?;
    let d_in = w_dec.dim(1)?;
    let op = NestedDecode {
        indices: indices.flatten_all()?.to_vec1::<u32>()?,
        k,
        ends: ends.to_vec(),
    };
    let all = values.contiguous()?.apply_op2(&w_dec.contiguous()?, op)?;
    let all = super::kernels::add_row(&all.reshape((b * ends.len(), d_in))?, b_dec)?.reshape((
        b,
        ends.len(),
        d_in,
    ))?;
    (0..ends.len())
        .map(|t| Ok(all.narrow(1, t, 1)?.squeeze(1)?))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// The fused op against the masked decodes the stock-op path runs (the GPU's path):
    /// reconstructions and the gradients of a loss over all prefixes, with features outside
    /// every inner prefix, zero values and features chosen by several rows.
    #[test]
    fn nested_decode_matches_one_masked_decode_per_prefix() {
        let dev = Device::Cpu;
        let (b, d_in, d_sae, k) = (7, 19, 16, 5);
        let ends = [2usize, 4, 8];
        let v = Tensor::randn(0f32, 1., (b, k), &dev)
            .unwrap()
            .relu()
            .unwrap();
        let values = Var::from_tensor(&v).unwrap();
        let w_dec =
            Var::from_tensor(&Tensor::randn(0f32, 1., (d_sae, d_in), &dev).unwrap()).unwrap();
        let b_dec = Var::from_tensor(&Tensor::randn(0f32, 1., d_in, &dev).unwrap()).unwrap();
        let idx: Vec<u32> = (0..b * k)
            .map(|p| ((p * 7 + p / k) % d_sae) as u32)
            .collect();
        let idx = Tensor::from_vec(idx, (b, k), &dev).unwrap();
        let x = Tensor::randn(0f32, 1., (b, d_in), &dev).unwrap();
        let run = |stock: bool| {
            let _guard = stock.then(crate::ops::StockOps::on);
            let outs = nested_decode(
                values.as_tensor(),
                &idx,
                w_dec.as_tensor(),
                b_dec.as_tensor(),
                &ends,
            )
            .unwrap();
            let mut loss = Tensor::zeros((), candle_core::DType::F32, &dev).unwrap();
            for (t, out) in outs.iter().enumerate() {
                let term = super::super::common::squared_error(out, &x).unwrap();
                loss = (loss + (term * (t + 1) as f64).unwrap()).unwrap();
            }
            let grads = loss.backward().unwrap();
            let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let g = |var: &Var| flat(grads.get(var.as_tensor()).unwrap());
            let outs: Vec<f32> = outs.iter().flat_map(flat).collect();
            (outs, g(&values), g(&w_dec), g(&b_dec))
        };
        let (fused, stock) = (run(false), run(true));
        for (a, b, what) in [
            (&fused.0, &stock.0, "reconstructions"),
            (&fused.1, &stock.1, "grad values"),
            (&fused.2, &stock.2, "grad W_dec"),
            (&fused.3, &stock.3, "grad b_dec"),
        ] {
            super::super::common::assert_close(a, b, what);
        }
    }
}
