//! Sums of picked rows, `out[t, :] = Σ c · src[s, :]`, read a column panel at a time.
//!
//! The sparse decoder and both sparse weight gradients are such sums: each input's
//! reconstruction adds the decoder rows of its active features, and each feature's gradient
//! row adds the input (or output-gradient) rows that selected it. Row at a time, every term
//! reads a whole picked row, and at 4,096 features × 576 the decoder (9.4 MB) outgrows a
//! core's L2 cache, so each term waits on memory further out. Here the source is first
//! copied into panels of [`WIDTH`] columns, each panel one contiguous `(rows, WIDTH)` block
//! (1 MB for that decoder), and a chunk of outputs is summed one panel at a time, its
//! partial sums held in registers: each panel is read from L2 by every term of the chunk.
//! With few terms per source row (a TopK decoder) the copy does not pay, and whole rows are
//! read as before. Every output element still adds its terms in the same order with the same
//! arithmetic, so the result is bit-identical to the row-at-a-time loop.

use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::kernels::{axpy, simd, written_by};

/// Columns per panel: four 16-lane registers of partial sums (eight on AVX2).
pub(super) const WIDTH: usize = 64;

/// A `(rows, d)` matrix as column panels, panel `p` holding columns `p·WIDTH..` (the last
/// one narrower when `WIDTH` does not divide `d`) as its own contiguous `(rows, width)` block.
struct Panels(Vec<Vec<f32>>);

impl Panels {
    /// Copies `src`, a contiguous `(rows, d)` matrix, into panels.
    fn new(src: &[f32], rows: usize, d: usize) -> Self {
        let panels = (0..d.div_ceil(WIDTH)).into_par_iter().map(|p| {
            let (c0, w) = (p * WIDTH, WIDTH.min(d - p * WIDTH));
            let mut panel = Vec::with_capacity(rows * w);
            for r in 0..rows {
                panel.extend_from_slice(&src[r * d + c0..r * d + c0 + w]);
            }
            panel
        });
        Self(panels.collect())
    }

    /// Writes every element of `chunk`, whole output rows of width `d`: row `i` is the sum
    /// of `terms(i)`, taken one panel at a time with the panel's partial sums in registers.
    #[inline(always)]
    fn sum_chunk<I: Iterator<Item = (usize, f32)>>(
        &self,
        chunk: &mut [MaybeUninit<f32>],
        d: usize,
        terms: impl Fn(usize) -> I,
        fma: bool,
    ) {
        for (p, panel) in self.0.iter().enumerate() {
            let (c0, w) = (p * WIDTH, WIDTH.min(d - p * WIDTH));
            for (i, row) in chunk.chunks_exact_mut(d).enumerate() {
                let terms = terms(i).filter(|&(_, c)| c != 0.0);
                let mut acc = [0f32; WIDTH];
                if w == WIDTH {
                    for (s, c) in terms {
                        let x: &[f32; WIDTH] = panel[s * WIDTH..][..WIDTH].try_into().unwrap();
                        add_scaled(&mut acc, c, x, fma);
                    }
                } else {
                    for (s, c) in terms {
                        add_scaled(&mut acc[..w], c, &panel[s * w..(s + 1) * w], fma);
                    }
                }
                // The panels' widths add up to `d`: every column of the row is written.
                for (o, &a) in row[c0..c0 + w].iter_mut().zip(&acc) {
                    o.write(a);
                }
            }
        }
    }
}

/// Terms per source row below which [`sum_rows`] reads whole rows: copying the source into
/// panels costs a pass over it, which a TopK decoder's few terms per row (8 at k 32 and
/// 4,096 features, batch 1,024) do not earn back.
const PANELS_FROM: usize = 16;

/// `out[t, :] = Σ over (s, c) in terms(t) of c · src[s, :]` for `t < n` and `src` a contiguous
/// `(rows, d)` matrix: `(n, d)`, each output row's terms added in the order given, terms with
/// `c = 0` skipped. `total` (the number of terms, or an estimate) picks panels or whole rows.
pub(super) fn sum_rows<I>(
    n: usize,
    src: &[f32],
    d: usize,
    total: usize,
    terms: impl Fn(usize) -> I + Sync,
) -> Vec<f32>
where
    I: Iterator<Item = (usize, f32)>,
{
    if n == 0 || d == 0 {
        return vec![0f32; n * d];
    }
    let rows = src.len() / d;
    if total < PANELS_FROM * rows {
        let mut out = vec![0f32; n * d];
        out.par_chunks_mut(d).enumerate().for_each(|(t, row)| {
            for (s, c) in terms(t).filter(|&(_, c)| c != 0.0) {
                axpy(row, c, &src[s * d..(s + 1) * d]);
            }
        });
        return out;
    }
    let src = Panels::new(src, rows, d);
    // A few chunks per thread: enough to balance uneven rows, few enough that each panel is
    // reused by many outputs once in L2.
    let per = n.div_ceil(4 * rayon::current_num_threads()).max(1);
    // Every element is written (each chunk's rows, panel by panel), so the output is not
    // zeroed first: at 4,096 × 576 that was a serial 9.4 MB fill per sum.
    let fill = |out: &mut [MaybeUninit<f32>]| {
        out.par_chunks_mut(per * d)
            .enumerate()
            .for_each(|(chunk_no, chunk)| {
                let terms = |i: usize| terms(chunk_no * per + i);
                simd(
                    #[inline(always)]
                    |fma| src.sum_chunk(chunk, d, terms, fma),
                )
            })
    };
    // SAFETY: `sum_chunk` writes every element of each chunk, and the chunks cover the
    // `n · d` elements.
    unsafe { written_by(n * d, fill) }
}

/// `acc += c · x`, as [`axpy`](super::kernels::axpy) computes it.
#[inline(always)]
fn add_scaled(acc: &mut [f32], c: f32, x: &[f32], fma: bool) {
    for (a, &v) in acc.iter_mut().zip(x) {
        *a = if fma { c.mul_add(v, *a) } else { *a + c * v };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Through panels and through whole rows, against a plain row-at-a-time sum, bit for bit:
    /// on a width that leaves a narrow last panel, with a source row picked more than once
    /// and a zero coefficient.
    #[test]
    fn panel_sums_equal_row_at_a_time_sums() {
        for d in [WIDTH, 2 * WIDTH + 9, 5] {
            let rows = 37;
            let src: Vec<f32> = (0..rows * d)
                .map(|i| ((i * 7919) % 1009) as f32 / 97.0 - 5.0)
                .collect();
            let terms = |t: usize| {
                (0..(t % 6)).map(move |i| {
                    (
                        (t * 5 + i * 11) % rows,
                        if i == 2 { 0.0 } else { 0.3 * i as f32 - 0.7 },
                    )
                })
            };
            let n = 23;
            let panels = sum_rows(n, &src, d, usize::MAX, terms);
            let whole_rows = sum_rows(n, &src, d, 0, terms);
            let mut want = vec![0f32; n * d];
            for t in 0..n {
                for (s, c) in terms(t).filter(|&(_, c)| c != 0.0) {
                    super::super::kernels::axpy(
                        &mut want[t * d..(t + 1) * d],
                        c,
                        &src[s * d..(s + 1) * d],
                    );
                }
            }
            assert_eq!(panels, want, "panels, d = {d}");
            assert_eq!(whole_rows, want, "whole rows, d = {d}");
            assert!(want.iter().any(|&v| v != 0.0));
        }
    }
}
