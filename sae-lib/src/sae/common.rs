//! Pieces every SAE variant shares: seeded initialisation, decoder row norms, and the
//! geometric median used to initialise `b_dec`.

use candle_core::{DType, Device, Tensor, D};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::kernels::add_row;
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
    if crate::ops::host_f32(&[w]) && w.rank() == 2 {
        return Ok(w.contiguous()?.apply_op1(super::kernels::RowNorms)?);
    }
    Ok(w.sqr()?.sum(D::Minus1)?.sqrt()?)
}

/// `(W_enc, b_enc, W_dec)` of the same ReLU-family SAE with unit-norm decoder rows: each
/// feature's decoder norm moved into its encoder column and bias, so the reconstruction is
/// unchanged and a feature's activation is its contribution's length.
pub fn unit_decoder(w_enc: &Tensor, b_enc: &Tensor, w_dec: &Tensor) -> Result<[Tensor; 3]> {
    let norms = row_norms(w_dec)?;
    Ok([
        w_enc.broadcast_mul(&norms.unsqueeze(0)?)?,
        (b_enc * &norms)?,
        w_dec.broadcast_div(&norms.unsqueeze(1)?)?,
    ])
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

    /// Both selection paths (block bound for small k, quickselect for large k) against a sort.
    #[test]
    fn top_k_matches_a_full_sort() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let row = normal_vec(1000, &mut rng);
        let mut sorted: Vec<u32> = (0..1000).collect();
        sorted.sort_by(|&a, &b| row[b as usize].total_cmp(&row[a as usize]));
        for k in [1, 5, 62, 63, 100, 1000] {
            let (mut idx, kth) = top_k(&row, k);
            idx.sort_by(|&a, &b| row[b as usize].total_cmp(&row[a as usize]));
            assert_eq!(idx, sorted[..k], "k = {k}");
            assert_eq!(kth, row[sorted[k - 1] as usize], "k = {k}");
        }
        // Rows with ties, a NaN, and the winners bunched in one block: the chosen values
        // (the indices may differ among equal values) against a sort.
        let mut tied: Vec<f32> = (0..4096).map(|i| (i % 7) as f32).collect();
        tied[100..140].iter_mut().for_each(|v| *v = 9.0);
        let mut with_nan = normal_vec(4096, &mut rng);
        with_nan[4000] = f32::NAN;
        for row in [tied, with_nan, normal_vec(4099, &mut rng)] {
            let mut want = row.clone();
            want.sort_by(|a, b| b.total_cmp(a));
            for k in [1, 32, 200] {
                let (idx, kth) = top_k(&row, k);
                let mut got: Vec<f32> = idx.iter().map(|&j| row[j as usize]).collect();
                got.sort_by(|a, b| b.total_cmp(a));
                assert_eq!(
                    got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    want[..k].iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    "k = {k}"
                );
                assert_eq!(kth.to_bits(), want[k - 1].to_bits(), "k = {k}");
                let mut unique = idx.clone();
                unique.sort();
                unique.dedup();
                assert_eq!(unique.len(), k, "k = {k}: repeated indices");
            }
        }
    }

    /// AuxK on the CPU reads only the chosen dead features with positive pre-activations;
    /// its loss and gradients equal the stock path's, which decodes all `k_aux` of them.
    #[test]
    fn auxk_skips_only_features_the_relu_zeroes() {
        let dev = Device::Cpu;
        let (b, d_in, d_sae, k_aux) = (9, 12, 40, 8);
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let mut var = |n: usize, shape: (usize, usize)| {
            let t = Tensor::from_vec(normal_vec(n, &mut rng), shape, &dev).unwrap();
            candle_core::Var::from_tensor(&t).unwrap()
        };
        let (w_t, w_dec) = (
            var(d_sae * d_in, (d_sae, d_in)),
            var(d_sae * d_in, (d_sae, d_in)),
        );
        let (x, residual) = (var(b * d_in, (b, d_in)), var(b * d_in, (b, d_in)));
        let (x, residual) = (x.as_tensor().detach(), residual.as_tensor().detach());
        // Every third feature dead: 14 of them, more than k_aux.
        let dead: Vec<f32> = (0..d_sae).map(|j| (j % 3 == 0) as u8 as f32).collect();
        let dead = Tensor::new(dead.as_slice(), &dev).unwrap();
        let b_enc = Tensor::zeros(d_sae, DType::F32, &dev).unwrap();
        let run = |stock: bool| {
            let _guard = stock.then(crate::ops::StockOps::on);
            // Shifted down so that most chosen pre-activations are negative.
            let pre = (x.matmul(&w_t.as_tensor().t().unwrap()).unwrap() - 1.5).unwrap();
            let values_at = |idx: &Tensor| {
                let b_enc = (&b_enc - 1.5).unwrap();
                super::super::sparse::gather_pre_acts(&x, w_t.as_tensor(), &b_enc, None, idx, None)
            };
            let loss = auxk_loss(
                &pre,
                Some(&dead),
                &residual,
                w_dec.as_tensor(),
                k_aux,
                &values_at,
            )
            .unwrap();
            let grads = loss.backward().unwrap();
            let g = |v: &candle_core::Var| {
                grads
                    .get(v.as_tensor())
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()
            };
            (loss.to_scalar::<f32>().unwrap(), g(&w_t), g(&w_dec))
        };
        let (fast, stock) = (run(false), run(true));
        let (a, b) = (fast.0, stock.0);
        assert!(a > 0.0 && (a - b).abs() <= 1e-5 * b, "loss {a} against {b}");
        for (a, b, what) in [
            (&fast.1, &stock.1, "grad W_encT"),
            (&fast.2, &stock.2, "grad W_dec"),
        ] {
            assert!(a.iter().any(|v| *v != 0.0), "{what}: all zero");
            assert_close(a, b, what);
        }
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

/// What [`RowSelect`] returns for each row.
#[derive(Clone, Copy)]
enum Selected {
    /// The `k`-th largest value, `(rows, 1)` f32: `x >= kth` is then a top-k mask.
    KthValue,
    /// The indices of the `k` largest values, `(rows, k)` u32, in no particular order.
    Indices,
}

/// Top-k selection per row of a contiguous f32 `(rows, n)` tensor, in O(n) per row
/// (quickselect, rows in parallel) instead of a full sort.
struct RowSelect {
    k: usize,
    what: Selected,
}

impl candle_core::CustomOp1 for RowSelect {
    fn name(&self) -> &'static str {
        "row-select"
    }

    fn cpu_fwd(
        &self,
        storage: &candle_core::CpuStorage,
        layout: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        use rayon::prelude::*;
        let (rows, n) = layout.shape().dims2()?;
        let data = match (storage, layout.contiguous_offsets()) {
            (candle_core::CpuStorage::F32(d), Some((start, end))) => &d[start..end],
            _ => candle_core::bail!("row-select needs a contiguous f32 tensor"),
        };
        let k = self.k.clamp(1, n);
        Ok(match self.what {
            Selected::KthValue => {
                let out: Vec<f32> = data.par_chunks(n).map(|row| top_k(row, k).1).collect();
                (candle_core::CpuStorage::F32(out), (rows, 1).into())
            }
            Selected::Indices => {
                let out: Vec<u32> = data
                    .par_chunks(n)
                    .flat_map_iter(|row| top_k(row, k).0)
                    .collect();
                (candle_core::CpuStorage::U32(out), (rows, k).into())
            }
        })
    }
}

/// The indices of `row`'s `k` largest values (in no particular order) and the `k`-th largest
/// value; `1 <= k <= row.len()`. Ties and NaN are ranked by `total_cmp`.
fn top_k(row: &[f32], k: usize) -> (Vec<u32>, f32) {
    const BLOCK: usize = 16;
    let all = || select_top(row.iter().copied().zip(0..).collect(), k);
    if k * BLOCK > row.len() {
        return all();
    }
    // A bound first: the k largest block maxima are k distinct values, so the k-th largest
    // value is at least the k-th largest block maximum. Only blocks that reach it can hold a
    // winner, about k of the row's n / 16, so one vectorised pass over the row and a
    // selection among a few hundred candidates replace a heap update per value (the heap
    // was a tenth of a TopK training step at 16,384 features).
    let mut nan = false;
    let maxima: Vec<f32> = row
        .chunks(BLOCK)
        .map(|c| {
            nan |= c.iter().fold(false, |n, &v| n | v.is_nan());
            c.iter()
                .fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m })
        })
        .collect();
    if nan {
        return all();
    }
    let mut sorted = maxima.clone();
    let (_, &mut bound, _) = sorted.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
    let mut candidates = Vec::with_capacity(4 * k);
    for (block, &m) in maxima.iter().enumerate() {
        if m >= bound {
            let start = block * BLOCK;
            for (i, &v) in row[start..(start + BLOCK).min(row.len())]
                .iter()
                .enumerate()
            {
                if v >= bound {
                    candidates.push((v, (start + i) as u32));
                }
            }
        }
    }
    select_top(candidates, k)
}

/// The `k` largest of `(value, index)` pairs (at least `k` of them) by `total_cmp`: their
/// indices in no particular order, and the `k`-th largest value.
fn select_top(mut pairs: Vec<(f32, u32)>, k: usize) -> (Vec<u32>, f32) {
    pairs.select_nth_unstable_by(k - 1, |a, b| b.0.total_cmp(&a.0));
    let kth = pairs[k - 1].0;
    (pairs[..k].iter().map(|&(_, j)| j).collect(), kth)
}

/// The `k`-th largest value of each row of `x` `(rows, n)`, shape `(rows, 1)`, not
/// differentiable (it only ever feeds a comparison).
pub fn kth_largest(x: &Tensor, k: usize) -> Result<Tensor> {
    let x32 = x.detach().to_dtype(DType::F32)?.contiguous()?;
    let kth = if crate::ops::host_f32(&[&x32]) {
        x32.apply_op1_no_bwd(&RowSelect {
            k,
            what: Selected::KthValue,
        })?
    } else {
        let idx = topk_indices(&x32, k)?;
        let last = idx.dim(1)? - 1;
        x32.gather(&idx.narrow(1, last, 1)?.contiguous()?, 1)?
    };
    Ok(kth.to_dtype(x.dtype())?)
}

/// `relu(pre)` keeping only each row's `k` largest pre-activations (SAELens' TopK: select on
/// the raw values, then ReLU, so a row with fewer than `k` positive values keeps fewer).
pub fn topk_relu(pre: &Tensor, k: usize) -> Result<Tensor> {
    let mask = pre
        .broadcast_ge(&kth_largest(pre, k)?)?
        .to_dtype(pre.dtype())?;
    Ok((pre.relu()? * mask)?)
}

/// AuxK (Gao et al. 2024): the `k_aux` largest pre-activations among dead features must
/// reconstruct the main reconstruction's residual, giving dead features a gradient.
/// `pre` (read, not differentiated) chooses them; `values_at` gives the differentiable
/// pre-activations at chosen `(batch, k)` indices. Returns `mean ‖e − ê‖²`, or zero when
/// nothing is dead.
pub fn auxk_loss(
    pre: &Tensor,
    dead: Option<&Tensor>,
    residual: &Tensor,
    w_dec: &Tensor,
    k_aux: usize,
    values_at: &dyn Fn(&Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    let zero = Tensor::zeros((), pre.dtype(), pre.device())?;
    let Some(dead) = dead else { return Ok(zero) };
    let dead_ids: Vec<u32> = (0u32..)
        .zip(dead.to_dtype(DType::F32)?.to_vec1::<f32>()?)
        .filter_map(|(j, d)| (d > 0.0).then_some(j))
        .collect();
    if dead_ids.is_empty() {
        return Ok(zero);
    }
    // Choose among the dead features' columns only, then map back to feature ids.
    let dead_ids = Tensor::new(dead_ids.as_slice(), pre.device())?;
    let dead_pre = pre.detach().index_select(&dead_ids, 1)?;
    let mut local = topk_indices(&dead_pre, k_aux)?;
    if crate::ops::host_f32(&[&dead_pre]) {
        local = positive_first(&local, &dead_pre)?;
    }
    let (b, k) = local.dims2()?;
    let indices = dead_ids
        .index_select(&local.flatten_all()?, 0)?
        .reshape((b, k))?;
    let values = values_at(&indices)?.relu()?;
    let e_hat = super::sparse::decode_rows(&values, &indices, w_dec, false)?;
    squared_error(&e_hat, &residual.detach())
}

/// `chosen` `(batch, k)` columns of `pre` reordered per row with the positive pre-activations
/// first, and cut to the most any row has (at least one): the others are zero after the ReLU
/// and give neither output nor gradient. Few dead features have positive pre-activations, so
/// AuxK reads a fraction of its `k_aux` decoder rows.
fn positive_first(chosen: &Tensor, pre: &Tensor) -> Result<Tensor> {
    let ((b, k), device) = (chosen.dims2()?, chosen.device().clone());
    let (chosen, pre) = (chosen.to_vec2::<u32>()?, pre.to_vec2::<f32>()?);
    let mut rows: Vec<Vec<u32>> = chosen
        .into_iter()
        .zip(&pre)
        .map(|(mut row, p)| {
            row.sort_by_key(|&j| p[j as usize] <= 0.0);
            row
        })
        .collect();
    let keep = (rows.iter())
        .zip(&pre)
        .map(|(row, p)| row.iter().filter(|&&j| p[j as usize] > 0.0).count())
        .max()
        .unwrap_or(0)
        .clamp(1, k);
    let flat: Vec<u32> = rows.iter_mut().flat_map(|r| r.drain(..keep)).collect();
    Ok(Tensor::from_vec(flat, (b, keep), &device)?)
}

/// Test support: `a` and `b` have the same length and differ nowhere by more than 1e-4 of
/// their largest magnitude (or 1e-4 outright below magnitude 1). Relative, because random
/// inputs can make a gradient reach the thousands, where one f32 rounding step of a different
/// summation order is already 1.2e-4.
#[cfg(test)]
pub(crate) fn assert_close(a: &[f32], b: &[f32], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    let scale = (a.iter().chain(b)).fold(1f32, |m, x| m.max(x.abs()));
    let worst = (a.iter().zip(b))
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    assert!(
        worst < 1e-4 * scale,
        "{what}: max abs diff {worst} at magnitude {scale}"
    );
}

/// Test support: a variant's sparse training step (the CPU kernels' path) gives the dense
/// step's (the stock path's) loss terms and every parameter's gradient.
#[cfg(test)]
pub(crate) fn assert_sparse_step_equals_dense_step(sae: &impl super::Sae, x: &Tensor) {
    assert_kernels_match_stock_ops(sae, x, true)
}

/// Test support: a variant's training step on the CPU kernels' path, sparse or dense as
/// `sparse` says it must be here, gives the stock path's loss terms and every gradient.
#[cfg(test)]
pub(crate) fn assert_kernels_match_stock_ops(sae: &impl super::Sae, x: &Tensor, sparse: bool) {
    use super::{FeatureActs, LossContext};
    let run = |stock: bool| {
        let _stock = stock.then(crate::ops::StockOps::on);
        let ctx = LossContext {
            sparsity_coefficient: 0.7,
            dead: None,
        };
        let out = sae.loss(x, &ctx).unwrap();
        assert_eq!(
            matches!(out.feature_acts, FeatureActs::Sparse { .. }),
            !stock && sparse,
            "the CPU kernels' path must be the {} one here, the stock path dense",
            if sparse { "sparse" } else { "dense" }
        );
        let terms: Vec<f32> = (out.terms.iter())
            .map(|(_, t)| t.to_scalar::<f32>().unwrap())
            .collect();
        let grads = super::grads::backward(&out.total).unwrap();
        let grads: Vec<Vec<f32>> = (sae.vars().iter())
            .map(|(_, v)| {
                let g = grads
                    .get(v.as_tensor())
                    .expect("every parameter has a gradient");
                g.flatten_all().unwrap().to_vec1::<f32>().unwrap()
            })
            .collect();
        (terms, grads)
    };
    let ((sparse_terms, sparse_grads), (dense_terms, dense_grads)) = (run(false), run(true));
    for (s, d) in sparse_terms.iter().zip(&dense_terms) {
        assert!(
            (s - d).abs() <= 1e-4 * d.abs().max(1.0),
            "loss term {s} vs {d}"
        );
    }
    for ((name, _), (s, d)) in sae.vars().iter().zip(sparse_grads.iter().zip(&dense_grads)) {
        let scale = d.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
        let gap = (s.iter().zip(d))
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(
            gap <= 1e-4 * scale,
            "{name}: gradients differ by {gap} (scale {scale})"
        );
    }
}

/// The encoder and decoder every variant has: `W_encᵀ` `(d_sae, d_in)`, `b_enc` `(d_sae,)`,
/// `W_dec` `(d_sae, d_in)`, `b_dec` `(d_in,)`.
///
/// The encoder is held as rows, one per feature (as `nn.Linear` and sparsify hold it), and
/// transposed to SAELens' `W_enc` `(d_in, d_sae)` only at the save/load boundary: the sparse
/// TopK encoder reads and updates a feature's weights as one contiguous row, and the dense
/// matmul reads the transposed view at the same speed.
#[derive(Debug, Clone)]
pub struct SaeParams {
    /// `W_encᵀ` `(d_sae, d_in)`: row `j` is feature `j`'s encoder direction.
    pub w_enc_t: candle_core::Var,
    /// `(d_sae,)` encoder bias.
    pub b_enc: candle_core::Var,
    /// `(d_sae, d_in)`: row `j` is feature `j`'s decoder direction.
    pub w_dec: candle_core::Var,
    /// `(d_in,)` decoder bias, subtracted from the input before encoding.
    pub b_dec: candle_core::Var,
}

impl SaeParams {
    /// Decoder rows in random directions at norm `dec_norm`, `W_enc = W_decᵀ`, zero biases.
    pub fn init(d_in: usize, d_sae: usize, dec_norm: f64, init: &mut super::Init) -> Result<Self> {
        use candle_core::Var;
        let (dtype, device) = (init.dtype, init.device);
        let w_dec = random_rows(d_sae, d_in, dec_norm, init.rng, dtype, device)?;
        Ok(Self {
            w_enc_t: Var::from_tensor(&w_dec)?,
            b_enc: Var::zeros(d_sae, dtype, device)?,
            w_dec: Var::from_tensor(&w_dec)?,
            b_dec: Var::zeros(d_in, dtype, device)?,
        })
    }

    /// From saved tensors; `b_enc_name` is `b_enc` (or `b_gate` for the gated SAE).
    pub fn load(
        get: &mut super::TensorGetter,
        d_in: usize,
        d_sae: usize,
        b_enc_name: &str,
    ) -> Result<Self> {
        use candle_core::Var;
        Ok(Self {
            w_enc_t: Var::from_tensor(&get("W_enc", &[d_in, d_sae])?.t()?.contiguous()?)?,
            b_enc: Var::from_tensor(&get(b_enc_name, &[d_sae])?)?,
            w_dec: Var::from_tensor(&get("W_dec", &[d_sae, d_in])?)?,
            b_dec: Var::from_tensor(&get("b_dec", &[d_in])?)?,
        })
    }

    /// SAELens' `W_enc` `(d_in, d_sae)`: a transposed view, no copy.
    pub fn w_enc(&self) -> Result<Tensor> {
        Ok(self.w_enc_t.as_tensor().t()?)
    }

    /// `(x − b_dec) W_enc + b_enc`, in `x`'s dtype.
    pub fn pre_acts(&self, x: &Tensor) -> Result<Tensor> {
        add_row(&self.centred(x)?, &cast_as(&self.b_enc, x)?)
    }

    /// `(x − b_dec) W_enc`, differentiated without a gradient for the data
    /// ([`centred_matmul`](super::dense::centred_matmul)).
    pub fn centred(&self, x: &Tensor) -> Result<Tensor> {
        let b_dec = cast_as(&self.b_dec, x)?;
        super::dense::centred_matmul(x, Some(&b_dec), &cast_as(&self.w_enc_t, x)?)
    }

    /// The pre-activations at chosen `(batch, k)` indices, differentiable through the sparse
    /// gather (see [`gather_pre_acts`](super::sparse::gather_pre_acts)); `pre` holds them all,
    /// detached, and supplies the values.
    pub fn pre_acts_at(&self, x: &Tensor, pre: &Tensor, indices: &Tensor) -> Result<Tensor> {
        let [w, b_enc, b_dec] = [&self.w_enc_t, &self.b_enc, &self.b_dec].map(|v| cast_as(v, x));
        super::sparse::gather_pre_acts(x, &w?, &b_enc?, Some(&b_dec?), indices, Some(pre))
    }

    /// `ReLU` of the pre-activations `pre` (differentiable, all of them), with one fused
    /// backward on the CPU kernels' path (see [`relu_at`](super::dense::relu_at)).
    pub fn relu_acts(&self, x: &Tensor, pre: &Tensor) -> Result<Tensor> {
        if !crate::ops::host_f32(&[x, pre]) {
            return Ok(pre.relu()?);
        }
        // The centring folded into a per-feature bias: the encoder's input is then the data,
        // which needs no gradient, and b_dec's gradient through the encoder is one
        // matrix–vector product rather than a matmul over the batch.
        let w = cast_as(&self.w_enc_t, x)?;
        let [b_enc, b_dec] = [&self.b_enc, &self.b_dec].map(|v| cast_as(v, x));
        let bias = super::sparse::fold_bias(&w, &b_enc?, &b_dec?)?;
        super::dense::relu_at(x, &w, &bias, &pre.detach())
    }

    /// Rescales decoder rows to unit norm (for penalties that a growing decoder would cheat).
    pub fn normalize_decoder(&self) -> Result<()> {
        let w = self.w_dec.as_tensor();
        if crate::ops::host_f32(&[w]) && w.is_contiguous() {
            // In place, one pass (the stock ops below make three temporaries of W_dec's size).
            return Ok(w.inplace_op1(&super::kernels::UnitRows)?);
        }
        self.w_dec
            .set(&w.broadcast_div(&row_norms(w)?.unsqueeze(1)?)?)?;
        Ok(())
    }
}

/// `var` in `x`'s dtype. Mixed-precision training hands the SAE bf16 activations while its
/// weights stay f32 (`TrainConfig::compute`): each use casts the weight to the activations'
/// dtype, and the cast is differentiable, so gradients reach the f32 weights and Adam updates
/// those. No copy when the dtypes agree.
pub fn cast_as(var: &candle_core::Var, x: &Tensor) -> Result<Tensor> {
    Ok(var.as_tensor().to_dtype(x.dtype())?)
}

/// `t` in f32 when it is in half precision (bf16, f16), else unchanged (an f64 loss stays
/// f64): losses are reduced in at least f32.
pub fn widen(t: &Tensor) -> Result<Tensor> {
    Ok(match t.dtype() {
        DType::BF16 | DType::F16 => t.to_dtype(DType::F32)?,
        _ => t.clone(),
    })
}

/// `‖x − x̂‖²` summed over `d_in` and averaged over the batch, `(b, d_in)` in, a scalar out,
/// computed in at least f32: the reconstruction terms of every loss.
pub fn squared_error(x_hat: &Tensor, x: &Tensor) -> Result<Tensor> {
    Ok((widen(x_hat)? - widen(x)?)?.sqr()?.sum(1)?.mean(0)?)
}

/// Indices `(rows, k)` of each row's `k` largest values (not differentiable).
pub fn topk_indices(x: &Tensor, k: usize) -> Result<Tensor> {
    let x32 = x.detach().to_dtype(DType::F32)?.contiguous()?;
    if crate::ops::host_f32(&[&x32]) {
        Ok(x32.apply_op1_no_bwd(&RowSelect {
            k,
            what: Selected::Indices,
        })?)
    } else {
        #[cfg(feature = "cuda")]
        if crate::ops::cuda_f32(&[&x32]) && k.min(x32.dim(1)?) <= crate::cuda::TOPK_MAX_K {
            return crate::cuda::topk_indices(&x32, k);
        }
        super::select::topk_indices_blocked(&x32, k)
    }
}

/// Sparse decoding for TopK-style SAEs: `x̂ = Σ_j v_j W_dec[i_j] + b_dec` over each input's `k`
/// selected features only, never forming the `(batch, d_sae)` product with the decoder.
/// `values` and `indices` are `(batch, k)`; differentiable in `values`, `W_dec` and `b_dec`.
pub fn sparse_decode(
    values: &Tensor,
    indices: &Tensor,
    w_dec: &Tensor,
    b_dec: &Tensor,
    flat_at_zero: bool,
) -> Result<Tensor> {
    let out = super::sparse::decode_rows(values, indices, w_dec, flat_at_zero)?;
    add_row(&out, b_dec)
}

/// Dense `(batch, n)` feature activations from sparse `(batch, k)` values at `indices` (not
/// differentiable). On the CPU, rows are filled in parallel: candle's `scatter_add` into a
/// `(4096, 16384)` zero matrix was a tenth of a TopK training step.
pub fn densify(values: &Tensor, indices: &Tensor, n: usize) -> Result<Tensor> {
    let (b, _) = values.dims2()?;
    if crate::ops::host_f32(&[values]) {
        use rayon::prelude::*;
        let v = values.detach().to_vec2::<f32>()?;
        let idx = indices.to_vec2::<u32>()?;
        let mut out = vec![0f32; b * n];
        out.par_chunks_mut(n.max(1))
            .zip(v.par_iter().zip(idx.par_iter()))
            .for_each(|(row, (v, idx))| {
                for (x, &j) in v.iter().zip(idx) {
                    row[j as usize] += x;
                }
            });
        return Ok(Tensor::from_vec(out, (b, n), values.device())?);
    }
    Ok(
        Tensor::zeros((b, n), values.dtype(), values.device())?.scatter_add(
            indices,
            &values.detach(),
            1,
        )?,
    )
}
