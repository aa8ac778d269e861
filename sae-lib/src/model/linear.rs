//! `y = x Wᵀ + b` with the weight stored transposed, `(in, out)` and contiguous.
//!
//! `candle_nn::Linear` keeps HF's `(out, in)` weight and multiplies by its transposed view.
//! candle's CPU matmul (the `gemm` crate) is much slower on that strided right-hand side: on
//! the 2-core AVX-512 CI machine, a `(128, 2048) × (2048, 512)` product ran at 90 GFLOP/s
//! against the view and 347 GFLOP/s against a contiguous copy (`(128, 512) × (512, 2048)`:
//! 149 against 305). Transposing once at load time is free by comparison.

use candle_core::{Module, Tensor};
use candle_nn::VarBuilder;

use crate::Result;

#[derive(Debug, Clone)]
pub struct Linear {
    /// `(in, out)`, contiguous.
    weight_t: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    /// Wraps an HF-layout `(out, in)` weight.
    pub fn new(weight: &Tensor, bias: Option<Tensor>) -> Result<Self> {
        Ok(Self {
            weight_t: weight.t()?.contiguous()?,
            bias,
        })
    }

    /// Loads `weight` `(out, in)` and, when `bias`, `bias` `(out,)` from `vb`.
    pub fn load(vb: VarBuilder, d_in: usize, d_out: usize, bias: bool) -> Result<Self> {
        let weight = vb.get((d_out, d_in), "weight")?;
        let bias = if bias {
            Some(vb.get(d_out, "bias")?)
        } else {
            None
        };
        Self::new(&weight, bias)
    }

    /// The weight in HF's `(out, in)` layout (a transposed view).
    pub fn weight(&self) -> Result<Tensor> {
        Ok(self.weight_t.t()?)
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        // Fold every leading dimension into the rows of one 2-D product.
        let dims = x.dims();
        let d_in = dims[dims.len() - 1];
        let rows = x.elem_count() / d_in.max(1);
        let y = x.reshape((rows, d_in))?.matmul(&self.weight_t)?;
        let mut out_dims = dims.to_vec();
        out_dims[dims.len() - 1] = self.weight_t.dim(1)?;
        let y = y.reshape(out_dims)?;
        match &self.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }
}
