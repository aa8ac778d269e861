//! Dense encoder steps with only the gradients that are read.
//!
//! Early in training most features fire and a step is dense. Stock candle ops differentiate
//! `(x − b_dec) W_enc` with two full matmuls and a third nobody reads: a matmul's backward
//! always computes its left input's gradient, here `(x − b_dec)`'s, only for `b_dec`, whose
//! gradient is the column sums times `W_encᵀ`, one matrix–vector product. [`centred_matmul`]
//! computes just what is read (and serves Gated's gate reconstruction through a frozen decoder,
//! whose gradient nobody reads either).
//!
//! A ReLU SAE's dense step goes further: stock ops differentiate `ReLU(x W_enc + b)` through
//! three `(batch, d_sae)` nodes (matmul, bias, ReLU), each starting its gradient from a zero
//! tensor and adding into it. [`relu_at`] takes the pre-activations already computed (they
//! decide between the sparse and the dense step) and differentiates in one pass: the masked
//! gradient, its column sums for the bias, and one matmul for `W_encᵀ`.

use std::sync::Mutex;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::kernels::{column_sums, contiguous_f32, plus_row, with_host};
use crate::Result;

/// `(x − c) · w_tᵀ` for `x` `(n, k)`, `c` `(k,)` and `w_t` `(m, k)`, f32 on the CPU, `w_t` with
/// any strides: `(n, m)`. Each gradient only when its input tracks one.
struct CentredMatmul;

impl candle_core::CustomOp3 for CentredMatmul {
    fn name(&self) -> &'static str {
        "centred-matmul"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, k) = l1.shape().dims2()?;
        let (m, k3) = l3.shape().dims2()?;
        let (x, c) = (
            contiguous_f32(s1, l1, "input")?,
            contiguous_f32(s2, l2, "centre")?,
        );
        if c.len() != k || k3 != k {
            candle_core::bail!(
                "centred-matmul: input ({n}, {k}), centre {}, weight ({m}, {k3})",
                c.len()
            )
        }
        let minus_c: Vec<f32> = c.iter().map(|v| -v).collect();
        let out = CpuStorage::F32(plus_row(x, &minus_c)).matmul(
            s3,
            (1, n, m, k),
            &Layout::contiguous((n, k)),
            &l3.transpose(0, 1)?,
        )?;
        Ok((out, Shape::from((n, m))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        c: &Tensor,
        w_t: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (xd, w, g) = (x.detach(), w_t.detach(), grad.detach());
        // d w_t = gᵀ (x − c), in w_t's own layout.
        let grad_w = w_t
            .track_op()
            .then(|| g.t()?.matmul(&xd.broadcast_sub(&c.detach())?))
            .transpose()?;
        // d c = −(Σ_rows g) · w_t, one matrix–vector product.
        let grad_c = c
            .track_op()
            .then(|| {
                let m = g.dim(1)?;
                let sums = with_host(&g, "the gradient", |g| Ok(column_sums(g, m.max(1))))?;
                let sums = Tensor::from_vec(sums, (1, m), g.device())?;
                sums.matmul(&w)?.squeeze(0)?.neg()
            })
            .transpose()?;
        let grad_x = x.track_op().then(|| g.matmul(&w)).transpose()?;
        Ok((grad_x, grad_c, grad_w))
    }
}

/// `ReLU(x · W_encᵀᵀ + bias)` for `x` `(batch, d_in)`, `W_encᵀ` `(d_sae, d_in)` and `bias`
/// `(d_sae,)`, f32 on the CPU, its value handed in.
struct ReluAt {
    /// The activations, moved out by the forward (a `(batch, d_sae)` copy costs a pass).
    acts: Mutex<Option<Vec<f32>>>,
}

impl candle_core::CustomOp3 for ReluAt {
    fn name(&self) -> &'static str {
        "relu-at"
    }

    fn cpu_fwd(
        &self,
        _s1: &CpuStorage,
        l1: &Layout,
        _s2: &CpuStorage,
        l2: &Layout,
        _s3: &CpuStorage,
        _l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (b, _) = l1.shape().dims2()?;
        let (d_sae, _) = l2.shape().dims2()?;
        let acts = self.acts.lock().ok().and_then(|mut a| a.take());
        let Some(acts) = acts.filter(|a| a.len() == b * d_sae) else {
            candle_core::bail!("relu-at: its activations were used already or have another shape")
        };
        Ok((CpuStorage::F32(acts), Shape::from((b, d_sae))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w_enc_t: &Tensor,
        _bias: &Tensor,
        acts: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (b, d_sae) = acts.dims2()?;
        // d pre = d f where the feature fired (PyTorch's convention at 0: no gradient).
        let g = with_host(acts, "the activations", |f| {
            with_host(grad, "the gradient", |g| {
                let mut out = vec![0f32; b * d_sae];
                out.par_chunks_mut(d_sae.max(1))
                    .zip(f.par_chunks(d_sae.max(1)))
                    .zip(g.par_chunks(d_sae.max(1)))
                    .for_each(|((o, f), g)| {
                        for ((o, &f), &g) in o.iter_mut().zip(f).zip(g) {
                            *o = if f > 0.0 { g } else { 0.0 };
                        }
                    });
                Ok(out)
            })
        })?;
        let grad_bias = Tensor::from_vec(column_sums(&g, d_sae.max(1)), d_sae, grad.device())?;
        let g = Tensor::from_vec(g, (b, d_sae), grad.device())?;
        // d W_encᵀ = d preᵀ · x, already in W_encᵀ's layout; d x only when x has a gradient.
        let grad_w = g.t()?.matmul(&x.contiguous()?)?;
        let grad_x = x
            .track_op()
            .then(|| g.matmul(&w_enc_t.contiguous()?))
            .transpose()?;
        Ok((grad_x, Some(grad_w), Some(grad_bias)))
    }
}

/// `(x − c) · w_tᵀ`, `(n, m)`, for `x` `(n, k)`, `c` `(k,)` (none: zero) and `w_t` `(m, k)`:
/// the encoder's `(x − b_dec) W_enc` with `w_t = W_encᵀ`. Stock ops off the CPU kernels' path;
/// on it, the backward computes only the gradients of inputs that track one, `c`'s as a
/// matrix–vector product.
pub fn centred_matmul(x: &Tensor, c: Option<&Tensor>, w_t: &Tensor) -> Result<Tensor> {
    let host = crate::ops::host_f32(&[x, w_t]) && c.is_none_or(|c| crate::ops::host_f32(&[c]));
    if !host {
        let xc = match c {
            Some(c) => super::kernels::sub_row(x, c)?,
            None => x.clone(),
        };
        return Ok(xc.matmul(&w_t.t()?)?);
    }
    let c = match c {
        Some(c) => c.contiguous()?,
        None => Tensor::zeros(x.dim(1)?, x.dtype(), x.device())?,
    };
    Ok(x.contiguous()?.apply_op3(&c, w_t, CentredMatmul)?)
}

/// `ReLU(x W_enc + bias)`, `(batch, d_sae)`, for `x` `(batch, d_in)`, `w_enc_t` = `W_encᵀ`
/// `(d_sae, d_in)` and `bias` `(d_sae,)`, given `pre`: the same pre-activations computed
/// already, detached. Differentiable in `w_enc_t`, `bias`, and `x` when it has a gradient.
/// Contiguous f32 on the CPU ([`crate::ops::host_f32`]); elsewhere the caller applies a stock
/// ReLU to its differentiable pre-activations.
pub fn relu_at(x: &Tensor, w_enc_t: &Tensor, bias: &Tensor, pre: &Tensor) -> Result<Tensor> {
    // `v < 0` keeps a NaN a NaN, as the stock ReLU does, so a diverged run still says so.
    let acts = with_host(pre, "the pre-activations", |p| {
        Ok(p.par_iter()
            .map(|&v| if v < 0.0 { 0.0 } else { v })
            .collect::<Vec<f32>>())
    })?;
    let op = ReluAt {
        acts: Mutex::new(Some(acts)),
    };
    Ok(x.contiguous()?
        .apply_op3(&w_enc_t.contiguous()?, &bias.contiguous()?, op)?)
}

#[cfg(test)]
mod tests {
    use super::super::common::assert_close as close;
    use super::*;
    use candle_core::{Device, Var};

    /// Value and the tracked inputs' gradients against stock ops: the encoder's case (data,
    /// centre and weight rows), an input that tracks, and a frozen transposed weight.
    #[test]
    fn the_centred_matmul_matches_stock_ops() {
        let dev = Device::Cpu;
        let (n, k, m) = (70, 13, 37);
        let v = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let var = |shape: (usize, usize)| {
            Var::from_tensor(&Tensor::randn(0f32, 1., shape, &dev).unwrap()).unwrap()
        };
        let (x, w, w_frozen) = (
            var((n, k)),
            var((m, k)),
            Tensor::randn(0f32, 1., (k, m), &dev).unwrap(),
        );
        let c = Var::from_tensor(&Tensor::randn(0f32, 1., k, &dev).unwrap()).unwrap();
        let data = Tensor::randn(0f32, 1., (n, k), &dev).unwrap();
        let weights = Tensor::randn(0f32, 1., (n, m), &dev).unwrap();
        for case in 0..3 {
            let run = |fused: bool| {
                let (x, c, w) = match case {
                    0 => (&data, Some(c.as_tensor()), w.as_tensor().clone()),
                    1 => (x.as_tensor(), Some(c.as_tensor()), w.as_tensor().clone()),
                    _ => (x.as_tensor(), None, w_frozen.t().unwrap()),
                };
                let y = if fused {
                    centred_matmul(x, c, &w).unwrap()
                } else {
                    crate::ops::with_stock_ops(|| centred_matmul(x, c, &w)).unwrap()
                };
                let loss = (&y * &weights).unwrap().sqr().unwrap().sum_all().unwrap();
                let g = loss.backward().unwrap();
                let grads: Vec<Vec<f32>> = [x.clone(), w.clone()]
                    .iter()
                    .chain(c)
                    .filter(|t| t.track_op())
                    .map(|t| v(g.get(t).unwrap()))
                    .collect();
                (v(&y), grads)
            };
            let (fused, stock) = (run(true), run(false));
            close(&fused.0, &stock.0, "value");
            assert_eq!(
                fused.1.len(),
                [2, 3, 1][case],
                "case {case}: gradients taken"
            );
            for (f, s) in fused.1.iter().zip(&stock.1) {
                // Relative: these gradients run to the hundreds.
                let scale = s.iter().fold(1f32, |a, b| a.max(b.abs()));
                let gap = f.iter().zip(s).fold(0f32, |a, (p, q)| a.max((p - q).abs()));
                assert!(
                    gap < 1e-5 * scale,
                    "case {case}: gradients differ by {gap} of {scale}"
                );
            }
        }
    }

    /// Value and every gradient (the input's too, when it tracks) against stock matmul, bias
    /// and ReLU.
    #[test]
    fn the_fused_relu_matches_stock_ops() {
        let dev = Device::Cpu;
        let (b, d_in, d_sae) = (70, 13, 37);
        let v = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let x = Var::from_tensor(&Tensor::randn(0f32, 1., (b, d_in), &dev).unwrap()).unwrap();
        let w = Var::from_tensor(&Tensor::randn(0f32, 1., (d_sae, d_in), &dev).unwrap()).unwrap();
        let bias = Var::from_tensor(&Tensor::randn(0f32, 1., d_sae, &dev).unwrap()).unwrap();
        let weights = Tensor::randn(0f32, 1., (b, d_sae), &dev).unwrap();
        let run = |fused: bool| {
            let (x, w, bias) = (x.as_tensor(), w.as_tensor(), bias.as_tensor());
            let pre = x
                .matmul(&w.t().unwrap())
                .unwrap()
                .broadcast_add(bias)
                .unwrap();
            let f = if fused {
                relu_at(x, w, bias, &pre.detach()).unwrap()
            } else {
                pre.relu().unwrap()
            };
            let loss = (&f * &weights).unwrap().sqr().unwrap().sum_all().unwrap();
            let g = loss.backward().unwrap();
            let grad = |t: &Tensor| v(g.get(t).unwrap());
            (v(&f), grad(x), grad(w), grad(bias))
        };
        let (fused, stock) = (run(true), run(false));
        assert!(fused.0.contains(&0.0) && fused.0.iter().any(|&a| a > 0.0));
        close(&fused.0, &stock.0, "activations");
        close(&fused.1, &stock.1, "grad x");
        close(&fused.2, &stock.2, "grad W_encT");
        close(&fused.3, &stock.3, "grad bias");
    }
}
