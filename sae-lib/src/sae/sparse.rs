//! Sparse encoding for TopK-style SAEs: the selected pre-activations computed, and
//! differentiated, only where they were selected.
//!
//! A TopK SAE needs every pre-activation to choose the top `k`, so the encoder's forward
//! matmul is dense. Its backward need not be: the loss only sees `k` pre-activations per
//! input, so the gradient for `W_enc` has `k · batch` non-zero columns' worth of work, not
//! `d_sae · batch`. Stock candle ops route that gradient through a dense `(batch, d_sae)`
//! matrix and two dense matmuls; `GatherPreActs` computes it directly, reading and writing
//! one contiguous encoder row per selected feature (the encoder is held as `W_encᵀ`).

use candle_core::{CpuStorage, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::by_feature::ByFeature;
use super::grads::weight_grad;
use super::kernels::{axpy, contiguous_f32, dot, with_host};
use super::panels::sum_rows;
use crate::Result;

/// `out[b, i] = (x[b, :] − b_dec) · W_encᵀ[j, :] + b_enc[j]` with `j = indices[b, i]`, for `x`
/// `(batch, d_in)`, `W_encᵀ` `(d_sae, d_in)` and the biases `b_enc` `(d_sae,)` followed by
/// `b_dec` `(d_in,)` when `centred` (else `b_dec = 0`), all f32 on the CPU, with a sparse
/// backward for all three.
struct GatherPreActs {
    indices: Vec<u32>,
    k: usize,
    centred: bool,
    /// The values themselves, when the dense pre-activations that chose `indices` are at hand
    /// (TopK computes them all to choose): the forward then only hands them on.
    known: Option<Vec<f32>>,
}

impl candle_core::CustomOp3 for GatherPreActs {
    fn name(&self) -> &'static str {
        "gather-pre-acts"
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
        let (b, d_in) = l1.shape().dims2()?;
        let shape = Shape::from((b, self.k));
        if let Some(known) = &self.known {
            return Ok((CpuStorage::F32(known.clone()), shape));
        }
        let xs = contiguous_f32(s1, l1, "input")?;
        let wt = contiguous_f32(s2, l2, "W_encᵀ")?;
        let biases = contiguous_f32(s3, l3, "the biases")?;
        let (b_enc, b_dec) = biases.split_at(biases.len() - if self.centred { d_in } else { 0 });
        // (x − b_dec)·w_j + b_enc,j = x·w_j + (b_enc,j − b_dec·w_j)
        let bias: Vec<f32> = (b_enc.par_iter().enumerate())
            .map(|(j, &be)| match self.centred {
                true => be - dot(b_dec, &wt[j * d_in..(j + 1) * d_in]),
                false => be,
            })
            .collect();
        let mut out = vec![0f32; b * self.k];
        out.par_chunks_mut(self.k).enumerate().for_each(|(r, row)| {
            let x = &xs[r * d_in..(r + 1) * d_in];
            for (o, &j) in row.iter_mut().zip(&self.indices[r * self.k..]) {
                let j = j as usize;
                *o = dot(x, &wt[j * d_in..(j + 1) * d_in]) + bias[j];
            }
        });
        Ok((CpuStorage::F32(out), shape))
    }

    fn bwd(
        &self,
        xs: &Tensor,
        w_enc_t: &Tensor,
        biases: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (b, d_in) = xs.dims2()?;
        let d_sae = w_enc_t.dim(0)?;
        let k = self.k;
        let (grad_x, grad_wt, grad_b) = with_host(xs, "the input", |x| {
            with_host(grad, "the gradient", |g| {
                with_host(w_enc_t, "W_encᵀ", |wt| {
                    // d x[b, :] = Σ_i g[b, i] · W_encᵀ[idx[b, i], :], when x has a gradient
                    // to take (the data itself has none).
                    let grad_x = xs.track_op().then(|| {
                        let mut grad_x = vec![0f32; b * d_in];
                        grad_x
                            .par_chunks_mut(d_in)
                            .enumerate()
                            .for_each(|(r, out)| {
                                let span = r * k..(r + 1) * k;
                                for (&j, &gv) in self.indices[span.clone()].iter().zip(&g[span]) {
                                    if gv != 0.0 {
                                        let j = j as usize;
                                        axpy(out, gv, &wt[j * d_in..(j + 1) * d_in]);
                                    }
                                }
                            });
                        grad_x
                    });
                    // d b_enc[j] = Σ over (b, i) with idx[b, i] = j of g[b, i], and
                    // d W_encᵀ[j, :] = Σ over the same of g[b, i] · (x[b, :] − b_dec)
                    //               = Σ g[b, i] · x[b, :] − d b_enc[j] · b_dec.
                    let by_feature =
                        ByFeature::new(&self.indices, k, d_sae, g, |_, b| Some(b), false);
                    let mut grad_b = by_feature.sum_coefs();
                    let mut grad_wt = by_feature.sum_rows(x, d_in);
                    if self.centred {
                        with_host(biases, "the biases", |biases| {
                            let b_dec = &biases[d_sae..];
                            (grad_wt.par_chunks_mut(d_in).zip(&grad_b))
                                .for_each(|(row, &gb)| axpy(row, -gb, b_dec));
                            // d b_dec = −Σ_j d b_enc[j] · W_encᵀ[j, :], summed in fixed blocks
                            // of features and then in block order, the same for any threads.
                            const BLOCK: usize = 256;
                            let blocks: Vec<Vec<f32>> = (wt.par_chunks(BLOCK * d_in))
                                .zip(grad_b.par_chunks(BLOCK))
                                .map(|(w, gb)| {
                                    let mut acc = vec![0f32; d_in];
                                    for (w, &gb) in w.chunks_exact(d_in).zip(gb) {
                                        axpy(&mut acc, -gb, w);
                                    }
                                    acc
                                })
                                .collect();
                            let mut grad_b_dec = vec![0f32; d_in];
                            for block in &blocks {
                                axpy(&mut grad_b_dec, 1.0, block);
                            }
                            grad_b.extend(grad_b_dec);
                            Ok(())
                        })?;
                    }
                    Ok((grad_x, grad_wt, grad_b))
                })
            })
        })?;
        let device = xs.device();
        Ok((
            grad_x
                .map(|g| Tensor::from_vec(g, (b, d_in), device))
                .transpose()?,
            weight_grad(w_enc_t, Tensor::from_vec(grad_wt, (d_sae, d_in), device)?),
            Some(Tensor::from_vec(grad_b, biases.dims1()?, device)?),
        ))
    }
}

/// `out[b, :] = Σ_i values[b, i] · W_dec[indices[b, i], :]` for `values` `(batch, k)` and
/// `W_dec` `(d_sae, d_in)`, both f32 on the CPU: the decoder reads `k` rows per input, and its
/// backward touches only those rows (stock ops gather a `(batch, k, d_in)` copy of them and
/// scatter its gradient back).
struct SparseDecode {
    indices: Vec<u32>,
    k: usize,
    /// A zero value's gradient is not read (see `Encoding::flat_at_zero`): left at zero.
    flat_at_zero: bool,
}

impl candle_core::CustomOp2 for SparseDecode {
    fn name(&self) -> &'static str {
        "sparse-decode"
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
        let v = contiguous_f32(s1, l1, "values")?;
        let w = contiguous_f32(s2, l2, "W_dec")?;
        let k = self.k;
        let out = sum_rows(b, w, d_in, b * k, |r| {
            let span = r * k..(r + 1) * k;
            (self.indices[span.clone()].iter().map(|&j| j as usize)).zip(v[span].iter().copied())
        });
        Ok((CpuStorage::F32(out), Shape::from((b, d_in))))
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
        let (grad_v, grad_w) = with_host(values, "the values", |v| {
            with_host(grad, "the gradient", |g| {
                with_host(w_dec, "W_dec", |w| {
                    // d values[b, i] = g[b, :] · W_dec[idx[b, i], :], and
                    // d W_dec[j, :] = Σ over (b, i) with idx[b, i] = j of values[b, i] · g[b, :],
                    // unless W_dec is a frozen copy (Gated's gate reconstruction).
                    let by_feature = ByFeature::new(
                        &self.indices,
                        k,
                        d_sae,
                        v,
                        |_, b| Some(b),
                        !self.flat_at_zero,
                    );
                    let grad_v = by_feature.dots(g, w, d_in);
                    let grad_w = w_dec.track_op().then(|| by_feature.sum_rows(g, d_in));
                    Ok((grad_v, grad_w))
                })
            })
        })?;
        let device = values.device();
        Ok((
            Some(Tensor::from_vec(grad_v, (b, k), device)?),
            grad_w
                .map(|g| Tensor::from_vec(g, (d_sae, d_in), device))
                .transpose()?
                .and_then(|g| weight_grad(w_dec, g)),
        ))
    }
}

/// `Σ_i values[b, i] · W_dec[indices[b, i], :]`, `(batch, d_in)`, with no bias: `values` and
/// `indices` are `(batch, k)`. Differentiable in `values` and `W_dec`; on the CPU in f32 both
/// directions read only the selected rows, elsewhere stock ops gather them. `flat_at_zero`:
/// the gradient of a zero value is not read, and the CPU path leaves it at zero.
pub fn decode_rows(
    values: &Tensor,
    indices: &Tensor,
    w_dec: &Tensor,
    flat_at_zero: bool,
) -> Result<Tensor> {
    let (b, k) = values.dims2()?;
    if crate::ops::host_f32(&[values, w_dec]) {
        let op = SparseDecode {
            indices: indices.flatten_all()?.to_vec1::<u32>()?,
            k,
            flat_at_zero,
        };
        return Ok(values.contiguous()?.apply_op2(&w_dec.contiguous()?, op)?);
    }
    #[cfg(feature = "cuda")]
    if crate::ops::cuda_f32(&[values, w_dec]) {
        return crate::cuda::decode_rows(values, indices, w_dec, flat_at_zero);
    }
    let d_in = w_dec.dim(1)?;
    let rows = w_dec
        .index_select(&indices.flatten_all()?, 0)?
        .reshape((b, k, d_in))?;
    // (b, 1, k) @ (b, k, d_in) -> (b, 1, d_in)
    Ok(values.unsqueeze(1)?.matmul(&rows)?.squeeze(1)?)
}

/// The pre-activations `(x − b_dec) · W_enc + b_enc` at `indices` `(batch, k)`, where
/// `w_enc_t` is `W_encᵀ` `(d_sae, d_in)` and no `b_dec` is zero. Differentiable in all four;
/// on the CPU in f32, and on CUDA in f32 when `pre` is given, the gradient is computed
/// sparsely, elsewhere through stock ops (a dense matmul and a gather). `pre`, the same
/// pre-activations already computed densely `(batch, d_sae)`, saves recomputing the selected
/// ones.
pub fn gather_pre_acts(
    x: &Tensor,
    w_enc_t: &Tensor,
    b_enc: &Tensor,
    b_dec: Option<&Tensor>,
    indices: &Tensor,
    pre: Option<&Tensor>,
) -> Result<Tensor> {
    let (b, k) = indices.dims2()?;
    let host = crate::ops::host_f32(&[x, w_enc_t, b_enc])
        && b_dec.is_none_or(|b| crate::ops::host_f32(&[b]));
    if !host {
        // The centring folded into the bias: the input needs no gradient.
        let b_enc = match b_dec {
            Some(b_dec) => fold_bias(w_enc_t, b_enc, b_dec)?,
            None => b_enc.clone(),
        };
        #[cfg(feature = "cuda")]
        if let Some(pre) = pre.filter(|pre| crate::ops::cuda_f32(&[x, w_enc_t, &b_enc, pre])) {
            return crate::cuda::gather_pre_acts(x, w_enc_t, &b_enc, indices, pre);
        }
        let pre = x.matmul(&w_enc_t.t()?)?.broadcast_add(&b_enc)?;
        return Ok(pre.gather(&indices.contiguous()?, 1)?);
    }
    let indices = indices.flatten_all()?.to_vec1::<u32>()?;
    let known = match pre {
        Some(pre) if pre.dtype() == DType::F32 && pre.device().is_cpu() => {
            let d_sae = pre.dim(1)?;
            Some(with_host(pre, "the pre-activations", |p| {
                let mut known = vec![0f32; b * k];
                known
                    .par_chunks_mut(k.max(1))
                    .zip(p.par_chunks(d_sae.max(1)))
                    .zip(indices.par_chunks(k.max(1)))
                    .for_each(|((out, row), picked)| {
                        for (o, &j) in out.iter_mut().zip(picked) {
                            *o = row[j as usize];
                        }
                    });
                Ok(known)
            })?)
        }
        _ => None,
    };
    let op = GatherPreActs {
        indices,
        k,
        centred: b_dec.is_some(),
        known,
    };
    let biases = match b_dec {
        Some(b_dec) => Tensor::cat(&[b_enc, b_dec], 0)?,
        None => b_enc.contiguous()?,
    };
    Ok(x.contiguous()?
        .apply_op3(&w_enc_t.contiguous()?, &biases, op)?)
}

/// `b_enc − W_encᵀ b_dec`, `(d_sae,)`: `(x − b_dec)·w_j + b_enc,j = x·w_j + (b_enc,j −
/// b_dec·w_j)`, the centring folded into a per-feature bias.
pub(super) fn fold_bias(w_enc_t: &Tensor, b_enc: &Tensor, b_dec: &Tensor) -> Result<Tensor> {
    Ok((b_enc - w_enc_t.matmul(&b_dec.unsqueeze(1)?)?.squeeze(1)?)?)
}

/// A per-feature `v` `(d_sae,)` at each input's `indices` `(batch, m)`, differentiable in `v`.
pub fn per_feature_at(v: &Tensor, indices: &Tensor) -> Result<Tensor> {
    Ok(v.index_select(&indices.flatten_all()?, 0)?
        .reshape(indices.shape())?)
}

/// The sparse step's limit: beyond this share of `d_sae` candidates per input on average, dense
/// is cheaper. The cost follows the batch's total more than its largest row (a pad costs only
/// its value's gradient; the kernels skip its zero value and zero gradient elsewhere): on SmolLM2 the largest row held 2-2.5× the mean
/// candidates, and a ReLU run that waited for every row to fit (limit d_sae/4 per row) spent
/// 5.5% longer (163.5 s against 154.5 s for 1,000 steps, same run, same result).
const SPARSE_UP_TO: usize = 4;
/// No input may have more than this share of `d_sae` candidates (the padded `(batch, m)`
/// indices stay small).
const ROW_CAP: usize = 2;

/// For a sparse training step: each input's features with `pre ≥ floor` (per feature, `(d_sae,)`),
/// as `(batch, m)` indices where `m` is the batch's largest count; shorter rows are padded with
/// a feature below its floor. The caller's activation must give features below the floor
/// neither a value nor a gradient (a ReLU's floor is 0, a JumpReLU's `θ − ε`). `None` off the
/// CPU kernels' path, when the batch averages `d_sae / SPARSE_UP_TO` candidates or more, or when
/// some input's candidates and pad do not fit in `d_sae / ROW_CAP` (it then stops at the first
/// such one): the step is then dense.
pub fn candidates(pre: &Tensor, floor: &Tensor) -> Result<Option<Tensor>> {
    if !crate::ops::host_f32(&[pre, floor]) {
        return Ok(None);
    }
    let (b, d_sae) = pre.dims2()?;
    let floor = floor.to_vec1::<f32>()?;
    let limit = d_sae / ROW_CAP;
    if d_sae / SPARSE_UP_TO == 0 {
        return Ok(None);
    }
    // Each row's candidates and a feature that is not one (its pad), or `None` as soon as the
    // row reaches `limit` candidates: with its pad it would not fit.
    let rows: Option<Vec<(Vec<u32>, u32)>> = with_host(pre, "the pre-activations", |p| {
        Ok(p.par_chunks(d_sae)
            .map(|row| {
                let mut picked = Vec::new();
                let mut pad = None;
                for (j, (&v, &f)) in row.iter().zip(&floor).enumerate() {
                    // (NaN is no candidate, and may pad.)
                    if v >= f {
                        if picked.len() + 1 == limit {
                            return None;
                        }
                        picked.push(j as u32);
                    } else if pad.is_none() {
                        pad = Some(j as u32);
                    }
                }
                Some((picked, pad?))
            })
            .collect())
    })?;
    let Some(rows) = rows else {
        return Ok(None);
    };
    let total: usize = rows.iter().map(|(picked, _)| picked.len()).sum();
    if total >= b * (d_sae / SPARSE_UP_TO) {
        return Ok(None);
    }
    let m = 1 + rows
        .iter()
        .map(|(picked, _)| picked.len())
        .max()
        .unwrap_or(0);
    let mut idx = Vec::with_capacity(b * m);
    for (picked, pad) in rows {
        idx.extend(picked.into_iter().chain(std::iter::repeat(pad)).take(m));
    }
    Ok(Some(Tensor::from_vec(idx, (b, m), pre.device())?))
}

#[cfg(test)]
mod tests {
    use super::super::common::assert_close as close;
    use super::*;
    use candle_core::{Device, Var};

    fn to_vec(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    }

    /// Each row's features at or above the floor, padded with one below it to the batch's
    /// largest count; dense (`None`) once the batch averages a quarter of `d_sae` or one row
    /// reaches half, however few the others have.
    #[test]
    fn candidates_pad_to_the_largest_row_and_give_up_on_a_dense_batch() {
        let dev = Device::Cpu;
        let d = 16;
        let rows = |counts: &[usize]| {
            let v: Vec<f32> = (counts.iter())
                .flat_map(|&c| (0..d).map(move |j| if j >= d - c { 1.0 } else { -1.0 }))
                .collect();
            Tensor::from_vec(v, (counts.len(), d), &dev).unwrap()
        };
        let floor = Tensor::zeros(d, candle_core::DType::F32, &dev).unwrap();
        let idx = candidates(&rows(&[2, 0, 5, 1]), &floor).unwrap().unwrap();
        let idx = idx.to_vec2::<u32>().unwrap();
        assert_eq!(idx.iter().map(Vec::len).collect::<Vec<_>>(), vec![6; 4]);
        assert_eq!(idx[0][..2], [14, 15]);
        assert!(
            idx[0][2..].iter().all(|&j| j < 14),
            "pads lie below the floor"
        );
        assert_eq!(idx[2][..5], [11, 12, 13, 14, 15]);
        // Means below 16/4, but one row at 16/2 candidates (with its pad it would not fit).
        assert!(candidates(&rows(&[8, 0, 0, 0, 0]), &floor)
            .unwrap()
            .is_none());
        assert!(candidates(&rows(&[7, 0, 0, 0]), &floor).unwrap().is_some());
        // No row at half, but 4 on average.
        assert!(candidates(&rows(&[4, 4, 4, 4]), &floor).unwrap().is_none());
        assert!(candidates(&rows(&[4, 4, 4, 3]), &floor).unwrap().is_some());
    }

    /// Distinct indices per row, some features chosen by several rows, some by none.
    fn indices(b: usize, k: usize, d_sae: usize) -> Tensor {
        let idx: Vec<u32> = (0..b)
            .flat_map(|r| (0..k).map(move |i| ((r * 2 + i * 3) % d_sae) as u32))
            .collect();
        Tensor::from_vec(idx, (b, k), &Device::Cpu).unwrap()
    }

    /// Forward values and gradients against the dense stock-op formulation.
    #[test]
    fn sparse_encoder_gradients_equal_the_dense_formulation() {
        let dev = Device::Cpu;
        let (b, d_in, d_sae, k) = (6, 21, 11, 3);
        let x = Tensor::randn(0f32, 1., (b, d_in), &dev).unwrap();
        let w_t = Var::from_tensor(&Tensor::randn(0f32, 1., (d_sae, d_in), &dev).unwrap()).unwrap();
        let b_enc = Var::from_tensor(&Tensor::randn(0f32, 1., d_sae, &dev).unwrap()).unwrap();
        let b_dec = Var::from_tensor(&Tensor::randn(0f32, 1., d_in, &dev).unwrap()).unwrap();
        let idx = indices(b, k, d_sae);
        let weights = Tensor::randn(0f32, 1., (b, k), &dev).unwrap();
        // 0: stock ops; the sparse op on the centred input computing the values (1) or handed
        // them (2); on the input with b_dec, computing (3) or handed (4).
        let run = |mode: u8| {
            let xc = x.broadcast_sub(b_dec.as_tensor()).unwrap();
            let dense = xc
                .matmul(&w_t.as_tensor().t().unwrap())
                .unwrap()
                .broadcast_add(b_enc.as_tensor())
                .unwrap();
            let pre = dense.detach();
            let (input, centre) = match mode {
                1 | 2 => (&xc, None),
                _ => (&x, Some(b_dec.as_tensor())),
            };
            let known = [2, 4].contains(&mode).then_some(&pre);
            let (w, bias) = (w_t.as_tensor(), b_enc.as_tensor());
            let v = match mode {
                0 => dense.gather(&idx, 1).unwrap(),
                _ => gather_pre_acts(input, w, bias, centre, &idx, known).unwrap(),
            };
            let loss = (&v * &weights).unwrap().sqr().unwrap().sum_all().unwrap();
            let grads = loss.backward().unwrap();
            let g = |t: &Var| to_vec(grads.get(t.as_tensor()).unwrap());
            (to_vec(&v), g(&w_t), g(&b_enc), g(&b_dec))
        };
        let dense = run(0);
        for sparse in [run(1), run(2), run(3), run(4)] {
            close(&sparse.0, &dense.0, "values");
            close(&sparse.1, &dense.1, "grad W_encT");
            close(&sparse.2, &dense.2, "grad b_enc");
            close(&sparse.3, &dense.3, "grad b_dec");
        }
    }

    /// The sparse decoder's output and gradients against gathered rows weighted by broadcasting.
    #[test]
    fn sparse_decoder_gradients_equal_the_dense_formulation() {
        let dev = Device::Cpu;
        let (b, d_in, d_sae, k) = (7, 19, 13, 4);
        let values = Var::from_tensor(&Tensor::randn(0f32, 1., (b, k), &dev).unwrap()).unwrap();
        let w_dec =
            Var::from_tensor(&Tensor::randn(0f32, 1., (d_sae, d_in), &dev).unwrap()).unwrap();
        let idx = indices(b, k, d_sae);
        let target = Tensor::randn(0f32, 1., (b, d_in), &dev).unwrap();
        let run = |sparse: bool| {
            let out = if sparse {
                decode_rows(values.as_tensor(), &idx, w_dec.as_tensor(), false).unwrap()
            } else {
                // Σ_i values[b, i] · (the gathered decoder rows), by broadcasting.
                let rows = w_dec
                    .as_tensor()
                    .index_select(&idx.flatten_all().unwrap(), 0)
                    .unwrap()
                    .reshape((b, k, d_in))
                    .unwrap();
                let v = values.as_tensor().unsqueeze(2).unwrap();
                rows.broadcast_mul(&v).unwrap().sum(1).unwrap()
            };
            let loss = (&out - &target).unwrap().sqr().unwrap().sum_all().unwrap();
            let grads = loss.backward().unwrap();
            let g = |t: &Var| to_vec(grads.get(t.as_tensor()).unwrap());
            (to_vec(&out), g(&values), g(&w_dec))
        };
        let (sparse, dense) = (run(true), run(false));
        close(&sparse.0, &dense.0, "output");
        close(&sparse.1, &dense.1, "grad values");
        close(&sparse.2, &dense.2, "grad W_dec");
    }
}
