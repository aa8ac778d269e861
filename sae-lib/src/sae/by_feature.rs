//! The sparse steps' selections grouped by feature, for the weight-side backward passes.
//!
//! A sparse encoder or decoder step picks, for each input row, a few features; selection `p`
//! pairs an input row with a feature `j`. Its backward has two feature-major sums: a weight
//! gradient row per feature (`Σ coef_p · rows[row_p]` over the feature's selections) and, for
//! the decoder, one dot product per selection (`rows[row_p] · W[j]`). Grouping the selections
//! by feature once serves both: each feature's weight row is read once, from L1, against the
//! rows that picked it (an input-major loop reads a decoder row from far memory per selection).

use std::sync::atomic::{AtomicU32, Ordering};

use rayon::prelude::*;

use super::kernels::dot;
use super::panels::sum_rows;

/// One selection: its input row, coefficient, and position `p`.
#[derive(Clone, Copy)]
struct Term {
    row: u32,
    coef: f32,
    at: u32,
}

const NO_TERM: Term = Term {
    row: 0,
    coef: 0.0,
    at: 0,
};

/// Selections grouped by feature, each feature's in selection order.
pub(super) struct ByFeature {
    /// Feature `j`'s terms are the `start[j]`-th to the `start[j + 1]`-th, counted across
    /// `parts`.
    start: Vec<usize>,
    /// The terms of features `q · range..(q + 1) · range`, in feature order.
    parts: Vec<Vec<Term>>,
    range: usize,
    d_sae: usize,
    /// The number of selections.
    len: usize,
}

impl ByFeature {
    /// Groups selections `p < indices.len()` of features `indices[p] < d_sae`, made `k` per
    /// input (selection `p` is input `p / k`'s), with coefficients `coef[p]` and rows
    /// `row_of(p, p / k)`. A selection with no row adds nothing and is left out, and so is
    /// one with a zero coefficient unless `keep_zero` (the decoder's value gradient reads it).
    pub(super) fn new(
        indices: &[u32],
        k: usize,
        d_sae: usize,
        coef: &[f32],
        row_of: impl Fn(usize, usize) -> Option<usize> + Sync,
        keep_zero: bool,
    ) -> Self {
        let k = k.max(1);
        // Selection p's term, if kept, given its input b.
        let kept = |p: usize, b: usize| {
            (keep_zero || coef[p] != 0.0)
                .then(|| row_of(p, b))
                .flatten()
                .map(|r| Term {
                    row: r as u32,
                    coef: coef[p],
                    at: p as u32,
                })
        };
        // A counting sort within each of a few contiguous runs of selections, in parallel...
        let per = indices
            .len()
            .div_ceil(2 * rayon::current_num_threads())
            .max(1);
        let runs: Vec<(Vec<usize>, Vec<Term>)> = indices
            .par_chunks(per)
            .enumerate()
            .map(|(q, picked)| {
                let mut start = vec![0usize; d_sae + 1];
                for_kept(q * per, picked, k, &kept, |j, _| start[j as usize + 1] += 1);
                for j in 0..d_sae {
                    start[j + 1] += start[j];
                }
                let mut next = start.clone();
                let mut sorted = vec![NO_TERM; start[d_sae]];
                for_kept(q * per, picked, k, &kept, |j, t| {
                    sorted[next[j as usize]] = t;
                    next[j as usize] += 1;
                });
                (start, sorted)
            })
            .collect();
        // ...then merged, a range of features per task, each feature's runs in run order, so
        // its terms stay in selection order.
        let mut start = vec![0usize; d_sae + 1];
        for j in 0..d_sae {
            start[j + 1] = start[j] + runs.iter().map(|(s, _)| s[j + 1] - s[j]).sum::<usize>();
        }
        let range = d_sae.div_ceil(4 * rayon::current_num_threads()).max(1);
        let parts = (0..d_sae.div_ceil(range))
            .into_par_iter()
            .map(|q| {
                let features = q * range..((q + 1) * range).min(d_sae);
                let mut part = Vec::with_capacity(start[features.end] - start[features.start]);
                for j in features {
                    for (s, run) in &runs {
                        part.extend_from_slice(&run[s[j]..s[j + 1]]);
                    }
                }
                part
            })
            .collect();
        Self {
            start,
            parts,
            range,
            d_sae,
            len: indices.len(),
        }
    }

    /// Feature `j`'s kept selections, in selection order.
    fn terms(&self, j: usize) -> &[Term] {
        let q = j / self.range;
        let base = self.start[q * self.range];
        &self.parts[q][self.start[j] - base..self.start[j + 1] - base]
    }

    /// `out[j] = Σ over feature j's selections p of coef[p]`, `(d_sae,)`: a bias gradient.
    pub(super) fn sum_coefs(&self) -> Vec<f32> {
        (0..self.d_sae)
            .into_par_iter()
            .with_min_len(256)
            .map(|j| self.terms(j).iter().fold(0.0, |acc, t| acc + t.coef))
            .collect()
    }

    /// `out[j, :] = Σ over feature j's selections p of coef[p] · rows[row_of(p), :]`, `(d_sae,
    /// d)` for `rows` a contiguous `(·, d)` matrix: a weight gradient.
    pub(super) fn sum_rows(&self, rows: &[f32], d: usize) -> Vec<f32> {
        sum_rows(self.d_sae, rows, d, self.len, |j| {
            self.terms(j).iter().map(|t| (t.row as usize, t.coef))
        })
    }

    /// `out[p] = rows[row_of(p), :] · w[indices[p], :]` for each kept selection `p`, 0 for the
    /// others, for `rows` and `w` contiguous with rows of length `d`: a decoder's gradient for
    /// its values. One dot product at a time: at 4,096 features × 576 the rows come from L3,
    /// and four interleaved (four add chains, `w`'s row read once for them) ran no faster.
    pub(super) fn dots(&self, rows: &[f32], w: &[f32], d: usize) -> Vec<f32> {
        // Each selection is written once, by its feature's task; relaxed atomic stores compile
        // to plain stores.
        let out: Vec<AtomicU32> = (0..self.len).map(|_| AtomicU32::new(0)).collect();
        (0..self.d_sae)
            .into_par_iter()
            .with_min_len(16)
            .for_each(|j| {
                let wj = &w[j * d..(j + 1) * d];
                for t in self.terms(j) {
                    let r = t.row as usize;
                    let v = dot(&rows[r * d..(r + 1) * d], wj);
                    out[t.at as usize].store(v.to_bits(), Ordering::Relaxed);
                }
            });
        out.into_iter()
            .map(|v| f32::from_bits(v.into_inner()))
            .collect()
    }
}

/// `f(j, term)` for each kept selection `p0 + i` of feature `j = picked[i]`, `kept` taking
/// `p` and its input `p / k` (counted rather than divided).
fn for_kept(
    p0: usize,
    picked: &[u32],
    k: usize,
    kept: &impl Fn(usize, usize) -> Option<Term>,
    mut f: impl FnMut(u32, Term),
) {
    let (mut b, mut i) = (p0 / k, p0 % k);
    for (p, &j) in (p0..).zip(picked) {
        if let Some(t) = kept(p, b) {
            f(j, t);
        }
        i += 1;
        if i == k {
            (b, i) = (b + 1, 0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::kernels::axpy;
    use super::*;

    /// The grouped sums, dots and coefficient sums against loops over the selections in
    /// order, bit for bit (same terms, same order, same arithmetic): with runs that start
    /// mid-input, selections with no row, zero coefficients kept or left out, a feature no
    /// input picked, and enough terms per row for the panel path.
    #[test]
    fn grouped_sums_equal_selection_order_loops() {
        let (b, d_sae, d) = (7, 6, 70);
        for k in [5, 17] {
            let n = b * k;
            // Feature 5 is never picked; feature 0 has no row when picked at an odd p.
            let indices: Vec<u32> = (0..n).map(|p| ((p * 7 + p / 3) % 5) as u32).collect();
            let coef: Vec<f32> = (0..n)
                .map(|p| {
                    if p % 4 == 1 {
                        0.0
                    } else {
                        (p % 9) as f32 * 0.25 - 1.0
                    }
                })
                .collect();
            let rows: Vec<f32> = (0..b * d)
                .map(|i| ((i * 31) % 17) as f32 * 0.1 - 0.8)
                .collect();
            let w: Vec<f32> = (0..d_sae * d)
                .map(|i| ((i * 13) % 11) as f32 * 0.2 - 1.0)
                .collect();
            let row_of = |p: usize, b: usize| (indices[p] != 0 || p.is_multiple_of(2)).then_some(b);
            for keep_zero in [false, true] {
                let grouped = ByFeature::new(&indices, k, d_sae, &coef, row_of, keep_zero);
                let (mut sums, mut dots, mut coefs) =
                    (vec![0f32; d_sae * d], vec![0f32; n], vec![0f32; d_sae]);
                for p in 0..n {
                    let (j, c) = (indices[p] as usize, coef[p]);
                    let Some(r) = row_of(p, p / k) else { continue };
                    let row = &rows[r * d..(r + 1) * d];
                    if c != 0.0 {
                        axpy(&mut sums[j * d..(j + 1) * d], c, row);
                        coefs[j] += c;
                    }
                    if c != 0.0 || keep_zero {
                        dots[p] = dot(row, &w[j * d..(j + 1) * d]);
                    }
                }
                assert_eq!(grouped.sum_rows(&rows, d), sums, "sums, k = {k}");
                assert_eq!(grouped.dots(&rows, &w, d), dots, "dots, k = {k}");
                assert_eq!(grouped.sum_coefs(), coefs, "coefficients, k = {k}");
                assert!(dots.iter().filter(|&&v| v != 0.0).count() > n / 3);
            }
        }
    }
}
