//! Small CPU kernels under the SAEs: a dot product, `axpy`, rows scaled to unit norm, a bias
//! added to every row with a fast backward, and zero-copy access to a tensor's f32 data.
//!
//! The crate is built for baseline x86-64 (SSE2), so loops the compiler vectorises run four
//! lanes wide without FMA. `simd` runs a loop as a copy compiled for the widest vector unit
//! the CPU has (AVX-512F, or AVX2 with FMA: sixteen or eight lanes): the sparse encoder and
//! decoder, and the model's elementwise passes, spend their time in such loops. Only loops
//! that ask for fused multiply-add (`dot`, `axpy`) round differently on the wider paths, and a
//! given machine always takes the same path, so runs stay reproducible.

use candle_core::{CpuStorage, Storage, Tensor};

/// Whether this CPU has AVX2 and FMA (checked once; std caches the answer).
#[cfg(target_arch = "x86_64")]
fn wide() -> bool {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
}

/// Whether it also has AVX-512F: the same loops, sixteen lanes to a register.
#[cfg(target_arch = "x86_64")]
fn widest() -> bool {
    wide() && is_x86_feature_detected!("avx512f")
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn on_wide<R>(body: impl FnOnce(bool) -> R) -> R {
    body(true)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn on_widest<R>(body: impl FnOnce(bool) -> R) -> R {
    body(true)
}

/// Runs `body` compiled for the widest vector unit this CPU has; its argument says whether
/// fused multiply-add is there (`f32::mul_add` is a library call without it). The features
/// reach only code inlined into `body`: write it as an `#[inline(always)]` closure over
/// `#[inline(always)]` functions, and call `simd` inside each parallel task, not around one.
#[inline(always)]
pub(crate) fn simd<R>(body: impl FnOnce(bool) -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    if widest() {
        // SAFETY: the CPU has the features `on_widest` is compiled for.
        return unsafe { on_widest(body) };
    }
    #[cfg(target_arch = "x86_64")]
    if wide() {
        // SAFETY: the CPU has the features `on_wide` is compiled for.
        return unsafe { on_wide(body) };
    }
    body(false)
}

/// Sixteen independent partial sums, so the loop vectorises without reassociation.
#[inline(always)]
pub(crate) fn dot_body(a: &[f32], b: &[f32], fma: bool) -> f32 {
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

/// `Σ a[i] · b[i]` over the shorter of the two.
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    simd(
        #[inline(always)]
        |fma| dot_body(a, b, fma),
    )
}

/// `Σ x[i]²` in f64: thirty-two independent partial sums (so the loop vectorises without
/// reassociation) added in order, the same for a given slice on any thread.
pub(crate) fn sum_squares(x: &[f32]) -> f64 {
    simd(
        #[inline(always)]
        |_| {
            let mut acc = [0f64; 32];
            let chunks = x.chunks_exact(32);
            let tail: f64 = chunks
                .remainder()
                .iter()
                .map(|&v| v as f64 * v as f64)
                .sum();
            for c in chunks {
                for i in 0..32 {
                    acc[i] += c[i] as f64 * c[i] as f64;
                }
            }
            acc.iter().sum::<f64>() + tail
        },
    )
}

/// `out += alpha · x`.
pub(crate) fn axpy(out: &mut [f32], alpha: f32, x: &[f32]) {
    simd(
        #[inline(always)]
        |fma| axpy_body(out, alpha, x, fma),
    )
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

/// The L2 norm of each row of a contiguous f32 `(rows, d)` CPU matrix, `(rows,)`, with a
/// one-pass backward, `d w[j, :] = g[j] · w[j, :] / ‖w[j, :]‖` (stock ops differentiate
/// square, sum and root through three temporaries of the matrix's size).
pub(crate) struct RowNorms;

impl candle_core::CustomOp1 for RowNorms {
    fn name(&self) -> &'static str {
        "row-norms"
    }

    fn cpu_fwd(
        &self,
        s: &CpuStorage,
        l: &candle_core::Layout,
    ) -> candle_core::Result<(CpuStorage, candle_core::Shape)> {
        use rayon::prelude::*;
        let (rows, d) = l.shape().dims2()?;
        let w = contiguous_f32(s, l, "matrix")?;
        let norms: Vec<f32> = if d == 0 {
            vec![0.0; rows]
        } else {
            w.par_chunks(d).map(|r| dot(r, r).sqrt()).collect()
        };
        Ok((CpuStorage::F32(norms), rows.into()))
    }

    fn bwd(
        &self,
        w: &Tensor,
        norms: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        use rayon::prelude::*;
        let (rows, d) = w.dims2()?;
        let out = with_host(w, "the matrix", |w| {
            with_host(norms, "the norms", |n| {
                with_host(grad, "the gradient", |g| {
                    let mut out = vec![0f32; rows * d];
                    if d > 0 {
                        out.par_chunks_mut(d).enumerate().for_each(|(j, o)| {
                            // A zero row's norm has no gradient (stock ops would give NaN).
                            let s = if n[j] > 0.0 { g[j] / n[j] } else { 0.0 };
                            axpy(o, s, &w[j * d..(j + 1) * d]);
                        });
                    }
                    Ok(out)
                })
            })
        })?;
        Ok(Some(Tensor::from_vec(out, (rows, d), w.device())?))
    }
}

/// Folds the rows of `data` `(rows, d)` into one `(d,)` total: each block of 64 rows into
/// its own accumulator in parallel (`add_row`), then the blocks' accumulators in order
/// (`add`), so the result does not depend on scheduling. Reading a row at a time is the
/// point: candle's sums over rows read column by column.
pub(crate) fn fold_rows<T: Clone + Default + Send>(
    data: &[f32],
    d: usize,
    add_row: impl Fn(&mut [T], &[f32]) + Sync,
    add: impl Fn(&mut [T], &[T]),
) -> Vec<T> {
    use rayon::prelude::*;
    const ROWS: usize = 64;
    let partials: Vec<Vec<T>> = data
        .par_chunks(ROWS * d)
        .map(|block| {
            let mut acc = vec![T::default(); d];
            block.chunks(d).for_each(|row| add_row(&mut acc, row));
            acc
        })
        .collect();
    let mut out = vec![T::default(); d];
    partials.iter().for_each(|p| add(&mut out, p));
    out
}

/// The sums of the rows of `g` `(rows, d)`, independent of scheduling ([`fold_rows`]).
pub(crate) fn column_sums(g: &[f32], d: usize) -> Vec<f32> {
    let sum = |acc: &mut [f32], row: &[f32]| axpy(acc, 1.0, row);
    fold_rows(g, d, sum, sum)
}

/// `x + bias` for `x` `(rows, d)` and `bias` `(d,)`, contiguous f32 on the CPU. Its backward
/// sums the gradient's rows a block at a time; candle's `sum_keepdim(0)`, which the stock
/// `broadcast_add` backward uses, reads the gradient column by column (3 ms for a
/// `(1024, 576)` gradient, several times that for `(1024, 4096)`).
struct AddRow;

impl candle_core::CustomOp2 for AddRow {
    fn name(&self) -> &'static str {
        "add-row"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &candle_core::Layout,
        s2: &CpuStorage,
        l2: &candle_core::Layout,
    ) -> candle_core::Result<(CpuStorage, candle_core::Shape)> {
        let (rows, d) = l1.shape().dims2()?;
        let (x, bias) = (
            contiguous_f32(s1, l1, "input")?,
            contiguous_f32(s2, l2, "bias")?,
        );
        if bias.len() != d {
            candle_core::bail!("add-row: a bias of {} for rows of {d}", bias.len())
        }
        Ok((CpuStorage::F32(plus_row(x, bias)), (rows, d).into()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let d = bias.dim(0)?;
        let sums = with_host(grad, "the gradient", |g| Ok(column_sums(g, d.max(1))))?;
        let sums = Tensor::from_vec(sums, d, grad.device())?;
        Ok((Some(grad.clone()), Some(sums)))
    }
}

/// `x + bias` for the rows of `x` (each as long as `bias`), in one pass.
pub(crate) fn plus_row(x: &[f32], bias: &[f32]) -> Vec<f32> {
    use rayon::prelude::*;
    let d = bias.len();
    if d == 0 {
        return vec![0f32; x.len()];
    }
    // Written in parallel without a serial zero-fill first (16 MB for a batch of 1,024 at
    // 4,096 features).
    let fill = |out: &mut [std::mem::MaybeUninit<f32>]| {
        out.par_chunks_mut(d)
            .zip(x.par_chunks(d))
            .for_each(|(o, x)| {
                for ((o, x), b) in o.iter_mut().zip(x).zip(bias) {
                    o.write(x + b);
                }
            })
    };
    // SAFETY: the output's chunks and the input's have the same lengths, and each chunk is
    // written whole (`bias` is `d` long).
    unsafe { written_by(x.len(), fill) }
}

/// `x + bias` with `bias` `(d,)` added to every row of `x` `(rows, d)`: `AddRow` for f32 on
/// the CPU, `broadcast_add` elsewhere ([`crate::ops`]).
pub fn add_row(x: &Tensor, bias: &Tensor) -> crate::Result<Tensor> {
    if crate::ops::host_f32(&[x, bias]) && x.rank() == 2 && bias.rank() == 1 {
        return Ok(x.contiguous()?.apply_op2(&bias.contiguous()?, AddRow)?);
    }
    Ok(x.broadcast_add(bias)?)
}

/// `x − bias` for every row, as [`add_row`].
pub fn sub_row(x: &Tensor, bias: &Tensor) -> crate::Result<Tensor> {
    add_row(x, &bias.neg()?)
}

/// The data of a contiguous f32 CPU storage, as a custom op's forward receives it.
pub(crate) fn contiguous_f32<'a>(
    s: &'a CpuStorage,
    l: &candle_core::Layout,
    what: &str,
) -> candle_core::Result<&'a [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((a, b))) => Ok(&v[a..b]),
        _ => candle_core::bail!("expected a contiguous f32 {what}"),
    }
}

/// A pointer to an output buffer, shared by parallel tasks that each write their own part of
/// it (a `(sequence, head)` block, a band of columns).
#[derive(Clone, Copy)]
pub(crate) struct SharedOut(pub(crate) *mut f32);
// SAFETY: the tasks write disjoint elements, and the buffer outlives them (the users' part).
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

impl SharedOut {
    /// The element `offset` places in (a method, so closures capture the whole `SharedOut`).
    ///
    /// # Safety
    /// `offset` must be within the buffer.
    pub(crate) unsafe fn at(self, offset: usize) -> *mut f32 {
        self.0.add(offset)
    }
}

/// `n` values, each written by `fill`, which receives them uninitialised: no zeroing pass
/// first (a `(4096, 512)` activation is 8 MB of memset).
///
/// # Safety
/// `fill` must write every element.
pub(crate) unsafe fn written_by(
    n: usize,
    fill: impl FnOnce(&mut [std::mem::MaybeUninit<f32>]),
) -> Vec<f32> {
    let mut v = Vec::with_capacity(n);
    fill(&mut v.spare_capacity_mut()[..n]);
    // SAFETY: the caller's promise: `fill` wrote all `n`.
    unsafe { v.set_len(n) };
    v
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
    /// The bias op's value and both gradients against stock `broadcast_add`, on a shape whose
    /// rows do not fill the last block.
    #[test]
    fn add_row_matches_broadcast_add() {
        use candle_core::{Device, Var};
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f32, 1., (150, 7), &dev).unwrap()).unwrap();
        let b = Var::from_tensor(&Tensor::randn(0f32, 1., 7, &dev).unwrap()).unwrap();
        let w = Tensor::randn(0f32, 1., (150, 7), &dev).unwrap();
        let run = |fast: bool| {
            let y = if fast {
                sub_row(x.as_tensor(), b.as_tensor()).unwrap()
            } else {
                x.as_tensor().broadcast_sub(b.as_tensor()).unwrap()
            };
            let loss = (&y * &w).unwrap().sqr().unwrap().sum_all().unwrap();
            let g = loss.backward().unwrap();
            let v = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            (
                v(&y),
                v(g.get(x.as_tensor()).unwrap()),
                v(g.get(b.as_tensor()).unwrap()),
            )
        };
        let (fast, stock) = (run(true), run(false));
        for (a, b) in [(fast.0, stock.0), (fast.1, stock.1), (fast.2, stock.2)] {
            // Relative: the bias gradient sums 150 rows in another order than candle does.
            let worst = a
                .iter()
                .zip(&b)
                .map(|(p, q)| (p - q).abs() / q.abs().max(1.0))
                .fold(0f32, f32::max);
            assert!(worst < 1e-5, "max relative diff {worst}");
        }
    }

    /// The norms and their gradient against square, sum and root.
    #[test]
    fn row_norms_match_stock_ops() {
        use candle_core::{Device, Var};
        let w =
            Var::from_tensor(&Tensor::randn(0f32, 1., (40, 21), &Device::Cpu).unwrap()).unwrap();
        let c = Tensor::randn(0f32, 1., 40, &Device::Cpu).unwrap();
        let run = |fast: bool| {
            let n = if fast {
                crate::sae::common::row_norms(w.as_tensor()).unwrap()
            } else {
                crate::ops::with_stock_ops(|| crate::sae::common::row_norms(w.as_tensor())).unwrap()
            };
            let g = (&n * &c).unwrap().sum_all().unwrap().backward().unwrap();
            let v = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            (v(&n), v(g.get(w.as_tensor()).unwrap()))
        };
        let (fast, stock) = (run(true), run(false));
        crate::sae::common::assert_close(&fast.0, &stock.0, "norms");
        crate::sae::common::assert_close(&fast.1, &stock.1, "gradient");
    }

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
