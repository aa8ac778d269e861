//! Top-k selection from stock candle ops, for devices without sae-lib's CPU kernel.
//!
//! candle's CUDA `arg_sort` sorts each row inside one thread block, in shared memory: a row of
//! more than 1,024 values needs more threads than a block has, and more shared memory than a
//! kernel gets by default (a row of 16,384 f32 pads to 64 KB against 48 KB). So a wide row is
//! cut into blocks of [`SORT_WIDTH`] columns, each block's `k` best are kept, and the
//! selection repeats on the survivors until one sort covers them.

use candle_core::Tensor;

use crate::Result;

/// The widest row one stock sort is asked to handle.
pub const SORT_WIDTH: usize = 1024;

/// Indices `(rows, k)` of each row's `k` largest values of `x` `(rows, n)`, largest first;
/// `1 <= k`, clamped to `n`. Only sorts of rows at most [`SORT_WIDTH`] wide, unless `k` itself
/// is at least that wide.
pub fn topk_indices_blocked(x: &Tensor, k: usize) -> Result<Tensor> {
    let (rows, n) = x.dims2()?;
    let k = k.clamp(1, n.max(1));
    if n <= SORT_WIDTH || k >= SORT_WIDTH / 2 {
        return Ok(x.arg_sort_last_dim(false)?.narrow(1, 0, k)?.contiguous()?);
    }
    let blocks = n.div_ceil(SORT_WIDTH);
    // Pad the last block with -inf, which never outranks a real value.
    let pad = blocks * SORT_WIDTH - n;
    let padded = if pad == 0 {
        x.contiguous()?
    } else {
        let fill = Tensor::full(f32::NEG_INFINITY, (rows, pad), x.device())?.to_dtype(x.dtype())?;
        Tensor::cat(&[x, &fill], 1)?
    };
    let local = padded
        .reshape((rows * blocks, SORT_WIDTH))?
        .arg_sort_last_dim(false)?
        .narrow(1, 0, k)?
        .reshape((rows, blocks, k))?;
    let offsets: Vec<u32> = (0..blocks).map(|b| (b * SORT_WIDTH) as u32).collect();
    let offsets = Tensor::from_vec(offsets, (1, blocks, 1), x.device())?;
    // Candidates: every block's k best, as column indices of `x`.
    let candidates = local
        .broadcast_add(&offsets)?
        .reshape((rows, blocks * k))?
        .contiguous()?;
    let values = padded.gather(&candidates, 1)?;
    let best = topk_indices_blocked(&values, k)?;
    Ok(candidates.gather(&best, 1)?.contiguous()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Indices and k-th values against a full sort of each row, on widths around the block
    /// size and k from 1 to beyond one block's share.
    #[test]
    fn blocked_selection_matches_a_full_sort() {
        for (n, ks) in [
            (700, vec![1, 5]),
            (3000, vec![1, 32, 300]),
            (4096, vec![64, 600]),
        ] {
            let x = Tensor::randn(0f32, 1.0, (3, n), &Device::Cpu).unwrap();
            let rows = x.to_vec2::<f32>().unwrap();
            for k in ks {
                let got = topk_indices_blocked(&x, k)
                    .unwrap()
                    .to_vec2::<u32>()
                    .unwrap();
                // common's k-th value on the stock path: the last of these indices.
                let kth = crate::ops::with_stock_ops(|| super::super::common::kth_largest(&x, k))
                    .unwrap()
                    .to_vec2::<f32>()
                    .unwrap();
                for (r, row) in rows.iter().enumerate() {
                    let mut want: Vec<u32> = (0..n as u32).collect();
                    want.sort_by(|&a, &b| row[b as usize].total_cmp(&row[a as usize]));
                    assert_eq!(got[r], want[..k], "n {n}, k {k}, row {r}");
                    assert_eq!(kth[r][0], row[want[k - 1] as usize]);
                }
            }
        }
    }
}
