//! JumpReLU's two training functions of dense `(batch, d_sae)` pre-activations and the
//! thresholds θ `(d_sae,)`, each in one pass over the data: the activations
//! `pre · H(pre − θ)` and the per-input count `Σ_i H(pre_i − θ_i)`, with the straight-through
//! pseudo-derivatives to θ that jumprelu.rs states. Built from stock ops the two take about
//! ten `(batch, d_sae)` temporaries, which made a dense JumpReLU step cost more than SAELens'.
//!
//! The rectangle kernel is `K = 1[|pre − θ| / ε ≤ ½]`. θ's gradients are sums over the batch,
//! taken in fixed blocks of rows and added in order, so a run stays deterministic.

use candle_core::{CpuStorage, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::kernels::{contiguous_f32, with_host};
use crate::Result;

/// Rows per block of θ's gradient sums.
const ROWS: usize = 64;

/// Whether `pre` is inside the kernel's window around `theta`.
fn in_window(pre: f32, theta: f32, inv_eps: f32) -> bool {
    ((pre - theta) * inv_eps).abs() <= 0.5
}

/// `Σ_b weight(b, j) · K(b, j)` for every feature `j`, over `(batch, d)` pre-activations.
fn kernel_column_sums(
    pre: &[f32],
    theta: &[f32],
    inv_eps: f32,
    weight: impl Fn(usize, usize) -> f32 + Sync,
) -> Vec<f32> {
    let d = theta.len();
    let partial: Vec<Vec<f32>> = pre
        .par_chunks(ROWS * d)
        .enumerate()
        .map(|(block, rows)| {
            let mut sums = vec![0f32; d];
            for (r, row) in rows.chunks(d).enumerate() {
                let b = block * ROWS + r;
                for (j, (&p, &t)) in row.iter().zip(theta).enumerate() {
                    if in_window(p, t, inv_eps) {
                        sums[j] += weight(b, j);
                    }
                }
            }
            sums
        })
        .collect();
    let mut total = vec![0f32; d];
    for sums in partial {
        total.iter_mut().zip(sums).for_each(|(t, s)| *t += s);
    }
    total
}

/// `pre · H(pre − θ)`; gradient `H` to `pre`, `−(θ/ε) K` to θ.
struct JumpAct {
    inv_eps: f32,
}

impl candle_core::CustomOp2 for JumpAct {
    fn name(&self) -> &'static str {
        "jumprelu-act"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let pre = contiguous_f32(s1, l1, "pre-activations")?;
        let theta = contiguous_f32(s2, l2, "thresholds")?;
        let mut out = vec![0f32; pre.len()];
        out.par_chunks_mut(theta.len())
            .zip(pre.par_chunks(theta.len()))
            .for_each(|(o, p)| {
                for ((o, &p), &t) in o.iter_mut().zip(p).zip(theta) {
                    *o = if p > t { p } else { 0.0 };
                }
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        pre: &Tensor,
        theta: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let d = theta.dim(0)?;
        let (grad_pre, grad_theta) = with_host(pre, "the pre-activations", |p| {
            with_host(theta, "the thresholds", |t| {
                with_host(grad, "the gradient", |g| {
                    let mut grad_pre = vec![0f32; p.len()];
                    grad_pre
                        .par_chunks_mut(d)
                        .zip(p.par_chunks(d).zip(g.par_chunks(d)))
                        .for_each(|(o, (p, g))| {
                            for (((o, &p), &g), &t) in o.iter_mut().zip(p).zip(g).zip(t) {
                                *o = if p > t { g } else { 0.0 };
                            }
                        });
                    let sums = kernel_column_sums(p, t, self.inv_eps, |b, j| g[b * d + j]);
                    let grad_theta = sums
                        .iter()
                        .zip(t)
                        .map(|(s, t)| -s * t * self.inv_eps)
                        .collect::<Vec<_>>();
                    Ok((grad_pre, grad_theta))
                })
            })
        })?;
        Ok((
            Some(Tensor::from_vec(grad_pre, pre.shape(), pre.device())?),
            Some(Tensor::from_vec(grad_theta, d, theta.device())?),
        ))
    }
}

/// `Σ_j H(pre_j − θ_j)` per row `(batch,)`; gradient `−(1/ε) K` to θ, none to `pre`.
struct StepCount {
    inv_eps: f32,
}

impl candle_core::CustomOp2 for StepCount {
    fn name(&self) -> &'static str {
        "jumprelu-step-count"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let pre = contiguous_f32(s1, l1, "pre-activations")?;
        let theta = contiguous_f32(s2, l2, "thresholds")?;
        let counts: Vec<f32> = pre
            .par_chunks(theta.len())
            .map(|p| p.iter().zip(theta).filter(|(p, t)| p > t).count() as f32)
            .collect();
        let b = counts.len();
        Ok((CpuStorage::F32(counts), Shape::from(b)))
    }

    fn bwd(
        &self,
        pre: &Tensor,
        theta: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let grad_theta = with_host(pre, "the pre-activations", |p| {
            with_host(theta, "the thresholds", |t| {
                with_host(grad, "the gradient", |g| {
                    let sums = kernel_column_sums(p, t, self.inv_eps, |b, _| g[b]);
                    Ok(sums.iter().map(|s| -s * self.inv_eps).collect::<Vec<_>>())
                })
            })
        })?;
        Ok((
            None,
            Some(Tensor::from_vec(
                grad_theta,
                theta.dims1()?,
                theta.device(),
            )?),
        ))
    }
}

/// Whether the fused ops apply: f32 on the CPU, pre-activations `(batch, d)` against `(d,)`
/// thresholds.
pub fn fused(pre: &Tensor, theta: &Tensor) -> bool {
    crate::ops::host_f32(&[pre, theta]) && pre.rank() == 2 && theta.rank() == 1
}

/// `JumpAct`; the caller checks [`fused`].
pub fn jump_act(pre: &Tensor, theta: &Tensor, eps: f64) -> Result<Tensor> {
    let op = JumpAct {
        inv_eps: (1.0 / eps) as f32,
    };
    Ok(pre.contiguous()?.apply_op2(&theta.contiguous()?, op)?)
}

/// `StepCount`; the caller checks [`fused`].
pub fn step_count(pre: &Tensor, theta: &Tensor, eps: f64) -> Result<Tensor> {
    let op = StepCount {
        inv_eps: (1.0 / eps) as f32,
    };
    Ok(pre.contiguous()?.apply_op2(&theta.contiguous()?, op)?)
}

#[cfg(test)]
mod tests {
    use super::super::common::assert_close;
    use super::super::jumprelu::{jumprelu_ste, step_l0_ste};
    use candle_core::{Device, Var};

    /// The fused activations and counts against the stock-op pseudo-derivatives: values and
    /// both gradients, with many pre-activations inside the kernel's window and rows that do
    /// not fill the last block of θ's sums.
    #[test]
    fn fused_ops_match_the_stock_pseudo_derivatives() {
        let dev = Device::Cpu;
        let (b, d, eps) = (150, 37, 0.3);
        let pre =
            Var::from_tensor(&candle_core::Tensor::randn(0f32, 1., (b, d), &dev).unwrap()).unwrap();
        let theta =
            Var::from_tensor(&(candle_core::Tensor::rand(0f32, 1., d, &dev).unwrap())).unwrap();
        let w = candle_core::Tensor::randn(0f32, 1., (b, d), &dev).unwrap();
        let wb = candle_core::Tensor::randn(0f32, 1., b, &dev).unwrap();
        let run = |stock: bool| {
            let _guard = stock.then(crate::ops::StockOps::on);
            let f = jumprelu_ste(pre.as_tensor(), theta.as_tensor(), eps).unwrap();
            let n = step_l0_ste(pre.as_tensor(), theta.as_tensor(), eps).unwrap();
            let loss = ((&f * &w).unwrap().sum_all().unwrap()
                + (&n * &wb).unwrap().sum_all().unwrap())
            .unwrap();
            let grads = loss.backward().unwrap();
            let flat = |t: &candle_core::Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            [
                flat(&f),
                flat(&n),
                flat(grads.get(pre.as_tensor()).unwrap()),
                flat(grads.get(theta.as_tensor()).unwrap()),
            ]
        };
        let (fused, stock) = (run(false), run(true));
        let window = stock[3].iter().filter(|g| g.abs() > 0.0).count();
        assert!(
            window > d / 2,
            "too few thresholds got a gradient: {window}"
        );
        let names = ["activations", "counts", "grad pre", "grad θ"];
        for ((a, e), what) in fused.iter().zip(&stock).zip(names) {
            assert_close(a, e, what);
        }
    }
}
