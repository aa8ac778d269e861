//! Which implementation an operation takes: sae-lib's hand-written CPU kernels, which read
//! contiguous f32 host memory (top-k selection, the sparse encoder and decoder, the bias op,
//! fused Adam, GELU, decoder renormalisation), or stock candle ops, which run on every device.
//!
//! A GPU takes the stock path, except for top-k selection, the sparse encoder and decoder, and
//! Adam, which have CUDA kernels of their own (`src/cuda`; their logic is tested on the CPU by
//! `tests/it/cuda_kernels.rs`). So that `cargo test` covers the code a GPU runs, the CPU can be
//! told to take the stock path too: [`StockOps::on`] or [`with_stock_ops`] on the current
//! thread, or `SAE_STOCK_OPS=1` in the environment for a whole process (`sae train`, the GPU
//! check script's `--device cpu` run). On a GPU the switch turns the CUDA kernels off.

use std::cell::Cell;

use candle_core::{DType, Device, Tensor};

thread_local! {
    static STOCK: Cell<bool> = Cell::new(
        std::env::var("SAE_STOCK_OPS").is_ok_and(|v| !v.is_empty() && v != "0"),
    );
}

/// Whether the CPU kernels apply: every tensor is f32 in host memory and stock ops were not
/// asked for.
pub fn host_f32(tensors: &[&Tensor]) -> bool {
    own_kernels_on(tensors, Device::is_cpu)
}

/// Whether a CPU kernel that records no autograd graph applies: [`host_f32`], and no tensor
/// asks for gradients (none is a variable or made from one). The model's own CPU paths
/// (attention, linear layers, rotary embedding, layer norm) take this test; a tensor that
/// tracks its graph goes through stock ops, which keep it.
pub fn host_f32_untracked(tensors: &[&Tensor]) -> bool {
    host_f32(tensors) && !tensors.iter().any(|t| t.track_op())
}

/// Whether the CUDA kernels apply: every tensor is f32 on a CUDA GPU and stock ops were not
/// asked for.
pub fn cuda_f32(tensors: &[&Tensor]) -> bool {
    own_kernels_on(tensors, Device::is_cuda)
}

/// Whether stock ops were not asked for and every tensor is f32 on a device `on` accepts.
fn own_kernels_on(tensors: &[&Tensor], on: fn(&Device) -> bool) -> bool {
    !stock_ops()
        && tensors
            .iter()
            .all(|t| on(t.device()) && t.dtype() == DType::F32)
}

/// Whether this thread takes the stock-op path on the CPU too.
pub fn stock_ops() -> bool {
    STOCK.with(Cell::get)
}

/// While alive, every op on this thread takes its stock-op path, as on a GPU; dropping it
/// restores what was set before.
#[must_use = "the stock path lasts only while the guard lives"]
pub struct StockOps(bool);

impl StockOps {
    /// Switches this thread to the stock-op path.
    pub fn on() -> Self {
        Self(STOCK.with(|s| s.replace(true)))
    }
}

impl Drop for StockOps {
    fn drop(&mut self) {
        STOCK.with(|s| s.set(self.0));
    }
}

/// Runs `f` with every op on this thread taking its stock-op path.
pub fn with_stock_ops<T>(f: impl FnOnce() -> T) -> T {
    let _stock = StockOps::on();
    f()
}

/// The largest difference between two tensors of one shape, as a fraction of `b`'s largest
/// magnitude where that exceeds 1 (a test helper). Relative, so that random inputs with large
/// values do not fail on one rounding step of a different summation order.
#[cfg(test)]
pub(crate) fn max_gap(a: &Tensor, b: &Tensor) -> f32 {
    let largest = |t: Tensor| -> candle_core::Result<f32> {
        t.abs()?
            .flatten_all()?
            .max(0)?
            .to_dtype(DType::F32)?
            .to_scalar::<f32>()
    };
    let gap = (a - b).and_then(largest).expect("two tensors of one shape");
    gap / largest(b.clone()).expect("a tensor").max(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_switch_is_scoped_to_the_closure() {
        let t = Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap();
        let before = host_f32(&[&t]);
        assert!(with_stock_ops(|| !host_f32(&[&t])));
        assert_eq!(host_f32(&[&t]), before);
        let half = t.to_dtype(DType::BF16).unwrap();
        assert!(!host_f32(&[&t, &half]));
        assert!(!cuda_f32(&[&t]), "a CPU tensor is not the CUDA kernels'");
    }
}
