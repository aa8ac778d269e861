//! Scaled dot-product attention with an additive bias, shared by every model here.
//!
//! On the CPU (contiguous f32) each (sequence, head) pair is one parallel task: its scores,
//! their softmax and the weighted sum of values go through one `(seq, seq)` scratch buffer,
//! with single-threaded matrix products, and the result lands directly in the
//! `(batch, seq, heads · head_dim)` layout the output projection reads. Stock ops (a GPU, or
//! other dtypes) take several passes over memory: at pythia-70m's shape, batch 32, candle's
//! batched products ran at 65–74 GFLOP/s on the 2-core machine (one multithreaded call per
//! small matrix), its softmax took 7.8 ms a layer where PyTorch's took 1.8, and the scaling,
//! the bias, the transposes and the repeated key/value heads each made a copy.

use candle_core::{DType, Tensor};
use rayon::prelude::*;

use crate::sae::kernels::{simd, SharedOut};
use crate::Result;

/// How a query and a key make a score: `scale · q·k`, then, with a `softcap`,
/// `softcap · tanh(score / softcap)` (Gemma 2's bound on the scores), before the bias.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Scores {
    pub scale: f64,
    pub softcap: Option<f64>,
}

impl Scores {
    /// `q·k / √head_dim`, uncapped: every model's but Gemma 2's.
    pub fn standard(head_dim: usize) -> Self {
        Self {
            scale: 1.0 / (head_dim as f64).sqrt(),
            softcap: None,
        }
    }
}

/// Attention for `q` `(batch, heads, seq, head_dim)` over `k` and `v`
/// `(batch, kv_heads, seq, head_dim)`, each key/value head serving `heads / kv_heads` query
/// heads, with scores made as `scores` says plus an additive `bias` `(batch, 1, seq, seq)`;
/// the softmax in f32 whatever the dtype. Returns `(batch, seq, heads · head_dim)`.
pub(crate) fn attend(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    bias: &Tensor,
    scores: Scores,
) -> Result<Tensor> {
    let (b, heads, t, hd) = q.dims4()?;
    let kv_heads = k.dim(1)?;
    // The shapes the CPU path indexes by; anything else (a broadcast bias, say) goes stock.
    let shapes = bias.dims() == [b, 1, t, t]
        && k.dims() == [b, kv_heads, t, hd]
        && v.dims() == k.dims()
        && kv_heads > 0
        && heads % kv_heads == 0;
    if shapes && crate::ops::host_f32_untracked(&[q, k, v, bias]) {
        let dims = Dims {
            batch: b,
            heads,
            kv_heads,
            seq: t,
            head_dim: hd,
        };
        use crate::sae::kernels::with_host;
        let out = with_host(q, "the queries", |q| {
            with_host(k, "the keys", |k| {
                with_host(v, "the values", |v| {
                    with_host(bias, "the attention bias", |bias| {
                        Ok(attend_on_host(q, k, v, bias, dims, scores))
                    })
                })
            })
        })?;
        return Ok(Tensor::from_vec(out, (b, t, heads * hd), q.device())?);
    }
    let dtype = q.dtype();
    let n_rep = heads / kv_heads.max(1);
    let k = candle_transformers::utils::repeat_kv(k.clone(), n_rep)?;
    let v = candle_transformers::utils::repeat_kv(v.clone(), n_rep)?;
    let q = (q * scores.scale)?;
    let mut logits = q.matmul(&k.t()?.contiguous()?)?.to_dtype(DType::F32)?; // (b, heads, t, t)
    if let Some(cap) = scores.softcap {
        logits = ((logits / cap)?.tanh()? * cap)?;
    }
    let probs = candle_nn::ops::softmax_last_dim(&logits.broadcast_add(bias)?)?.to_dtype(dtype)?;
    Ok(probs
        .matmul(&v.contiguous()?)?
        .transpose(1, 2)? // (b, t, heads, hd)
        .reshape((b, t, heads * hd))?)
}

#[derive(Clone, Copy)]
struct Dims {
    batch: usize,
    heads: usize,
    kv_heads: usize,
    seq: usize,
    head_dim: usize,
}

/// The CPU path of [`attend`] on raw contiguous buffers: `q` `(b, heads, t, hd)`, `k` and `v`
/// `(b, kv_heads, t, hd)`, `bias` `(b, t, t)`; returns `(b, t, heads, hd)`.
fn attend_on_host(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    bias: &[f32],
    dims: Dims,
    rule: Scores,
) -> Vec<f32> {
    let Dims {
        batch,
        heads,
        kv_heads,
        seq: t,
        head_dim: hd,
    } = dims;
    let fill = |out: &mut [std::mem::MaybeUninit<f32>]| {
        let dst = SharedOut(out.as_mut_ptr().cast::<f32>());
        let scale = rule.scale as f32;
        let group = heads / kv_heads.max(1);
        (0..batch * heads).into_par_iter().for_each_init(
            || vec![0f32; t * t],
            |scores, bh| {
                let (bi, h) = (bh / heads, bh % heads);
                let kv = (bi * kv_heads + h / group) * t * hd;
                let (q, k, v) = (
                    &q[bh * t * hd..][..t * hd],
                    &k[kv..][..t * hd],
                    &v[kv..][..t * hd],
                );
                // scores = bias + scale · q kᵀ, kᵀ read in place as a column-major view of k;
                // with a cap the bias is added after it.
                let bias = &bias[bi * t * t..][..t * t];
                if rule.softcap.is_none() {
                    scores.copy_from_slice(bias);
                }
                // SAFETY: every pointer spans the rows and strides given; `scores` is this
                // task's own.
                unsafe {
                    gemm::gemm(
                        t,
                        t,
                        hd,
                        scores.as_mut_ptr(),
                        1,
                        t as isize,
                        rule.softcap.is_none(),
                        q.as_ptr(),
                        1,
                        hd as isize,
                        k.as_ptr(),
                        hd as isize,
                        1,
                        1.0,
                        scale,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    );
                }
                if let Some(cap) = rule.softcap {
                    let cap = cap as f32;
                    for (s, b) in scores.iter_mut().zip(bias) {
                        *s = cap * (*s / cap).tanh() + b;
                    }
                }
                simd(
                    #[inline(always)]
                    |_| {
                        for row in scores.chunks_exact_mut(t) {
                            softmax(row);
                        }
                    },
                );
                // out[bi, :, h, :] = probs · v, rows `heads · hd` apart.
                // SAFETY: this task alone writes the (bi, ·, h, ·) block of `out`, which
                // outlives the parallel loop; the other pointers span what is read.
                unsafe {
                    gemm::gemm(
                        t,
                        hd,
                        t,
                        dst.at((bi * t * heads + h) * hd),
                        1,
                        (heads * hd) as isize,
                        false,
                        scores.as_ptr(),
                        1,
                        t as isize,
                        v.as_ptr(),
                        1,
                        hd as isize,
                        0.0,
                        1.0,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    );
                }
            },
        );
    };
    // SAFETY: the tasks cover every (sequence, head) pair, and each one's product writes
    // all of its (seq, head_dim) block.
    unsafe { crate::sae::kernels::written_by(batch * t * heads * hd, fill) }
}

/// A row of scores into probabilities, in place. The maximum and the sum are taken over 16
/// lanes of partial results, and the exponentials as a map of their own, so that each of the
/// three passes vectorises (a running maximum or sum would not).
#[inline(always)]
fn softmax(row: &mut [f32]) {
    const LANES: usize = 16;
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let chunks = row.chunks_exact(LANES);
    let mut max = chunks
        .remainder()
        .iter()
        .copied()
        .fold(f32::NEG_INFINITY, f32::max);
    for c in chunks {
        for i in 0..LANES {
            lanes[i] = lanes[i].max(c[i]);
        }
    }
    max = lanes.iter().copied().fold(max, f32::max);
    for s in row.iter_mut() {
        *s = exp_nonpositive(*s - max);
    }
    let chunks = row.chunks_exact(LANES);
    let mut lanes = [0f32; LANES];
    let tail: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for i in 0..LANES {
            lanes[i] += c[i];
        }
    }
    let inv = 1.0 / (lanes.iter().sum::<f32>() + tail);
    for s in row.iter_mut() {
        *s *= inv;
    }
}

/// `e^x` for `x <= 0` (a score less its row's maximum), within 3e-7 relative, without libm's
/// call per value: `2^n · e^r` with `n` the nearest integer to `x / ln 2`, set in the exponent
/// bits, and `r = x − n ln 2` (in two parts, so `r` keeps its precision) in [-0.35, 0.35],
/// where a degree-7 Taylor series is good to 5e-9. Below ln(f32::MIN_POSITIVE) the result is
/// 0 where f32's `exp` gives a subnormal, which a softmax cannot tell from 0.
#[inline(always)]
fn exp_nonpositive(x: f32) -> f32 {
    // Round to nearest by the 1.5 · 2^23 trick: plain SSE2 arithmetic, no rounding call.
    const ROUND: f32 = 12_582_912.0;
    const LN2_HI: f32 = 0.693_145_75; // ln 2's leading bits: n · LN2_HI is exact
    const LN2_LO: f32 = 1.428_606_8e-6;
    const SMALLEST: f32 = -87.336_5;
    // Computed for every x and then selected, without a branch, so the row's loop vectorises.
    let y = x.max(SMALLEST);
    let shifted = y * std::f32::consts::LOG2_E + ROUND;
    let n = shifted - ROUND;
    let r = (y - n * LN2_HI) - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0
                    + r * (1.0 / 24.0
                        + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    // 2^n from n's bits in `shifted` (its low mantissa bits hold n + 2^22, so the difference
    // of the two bit patterns is n): integer arithmetic that vectorises, where `n as i32`
    // is a saturating conversion that does not.
    let n_bits = shifted.to_bits().wrapping_sub(ROUND.to_bits());
    let e = f32::from_bits(n_bits.wrapping_add(127) << 23) * p;
    if x < SMALLEST {
        0.0
    } else {
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Padding, TokenBatch};
    use candle_core::Device;

    /// The CPU path against stock ops, with grouped key/value heads and a bias that packs two
    /// sequences in one row and pads another.
    #[test]
    fn the_host_path_matches_stock_ops() {
        let dev = Device::Cpu;
        let (b, heads, kv_heads, t, hd) = (2, 6, 2, 9, 8);
        let q = Tensor::randn(0f32, 1., (b, heads, t, hd), &dev).unwrap();
        let k = Tensor::randn(0f32, 1., (b, kv_heads, t, hd), &dev).unwrap();
        let v = Tensor::randn(0f32, 1., (b, kv_heads, t, hd), &dev).unwrap();
        let (one, two): (Vec<u32>, Vec<u32>) = ((1..6).collect(), (1..5).collect());
        let rows = [vec![one.as_slice(), two.as_slice()], vec![two.as_slice()]];
        let bias = TokenBatch::packed(&rows, Padding::Left, 0, &dev)
            .unwrap()
            .attention_bias(&dev)
            .unwrap();
        let capped = Scores {
            scale: 0.3,
            softcap: Some(1.5),
        };
        for scores in [Scores::standard(hd), capped] {
            let host = attend(&q, &k, &v, &bias, scores).unwrap();
            let stock = crate::ops::with_stock_ops(|| attend(&q, &k, &v, &bias, scores)).unwrap();
            assert_eq!(host.dims(), [b, t, heads * hd]);
            let gap = crate::ops::max_gap(&host, &stock);
            assert!(gap < 1e-5, "{scores:?}: largest gap {gap}");
        }
    }

    /// The softmax's exponential against `f32::exp` over its whole range.
    #[test]
    fn exp_nonpositive_is_close_to_exp() {
        let mut worst = 0f32;
        for i in 0..=200_000 {
            let x = -90.0 * i as f32 / 200_000.0;
            let (got, want) = (exp_nonpositive(x), x.exp());
            if want > f32::MIN_POSITIVE {
                worst = worst.max((got - want).abs() / want);
            } else {
                assert!(got <= f32::MIN_POSITIVE, "e^{x}: {got}");
            }
        }
        assert!(worst < 3e-7, "largest relative error {worst}");
    }
}
