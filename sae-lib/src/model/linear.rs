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

/// A linear layer `y = x Wᵀ + b`, its weight kept transposed, `(in, out)`.
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
        let mut out_dims = dims.to_vec();
        out_dims[dims.len() - 1] = self.weight_t.dim(1)?;
        let mut operands = vec![x, &self.weight_t];
        operands.extend(&self.bias);
        // A shape that does not fit goes stock, which says what is wrong.
        let fits = self.weight_t.dim(0)? == d_in
            && self
                .bias
                .as_ref()
                .is_none_or(|b| b.dims() == [out_dims[dims.len() - 1]]);
        if fits && crate::ops::host_f32_untracked(&operands) {
            let y = self.forward_on_host(&x.contiguous()?, rows, d_in)?;
            return Tensor::from_vec(y, out_dims, x.device());
        }
        let y = x.reshape((rows, d_in))?.matmul(&self.weight_t)?;
        let y = y.reshape(out_dims)?;
        match &self.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }
}

impl Linear {
    /// `x W + b` on the CPU in one product: each output row starts as the bias and the product
    /// is accumulated onto it. candle's matmul zeroes its output first and the bias is then a
    /// second pass, together about 5 ms of a pythia-70m layer at batch 32 on 2 cores.
    fn forward_on_host(
        &self,
        x: &Tensor,
        rows: usize,
        d_in: usize,
    ) -> candle_core::Result<Vec<f32>> {
        use crate::sae::kernels::{with_host, written_by, SharedOut};
        use rayon::prelude::*;
        let d_out = self.weight_t.dim(1)?;
        let mut y = match &self.bias {
            // Written in parallel: a serial copy left one of two cores idle for 3% of the
            // forward.
            Some(b) => with_host(b, "the bias", |b| {
                let fill = |y: &mut [std::mem::MaybeUninit<f32>]| {
                    y.par_chunks_mut(d_out).with_min_len(64).for_each(|row| {
                        for (o, &v) in row.iter_mut().zip(b) {
                            o.write(v);
                        }
                    })
                };
                // SAFETY: every row of `y` is written, `b` being `d_out` long.
                Ok(unsafe { written_by(rows * d_out, fill) })
            })?,
            None => vec![0f32; rows * d_out],
        };
        with_host(x, "the input", |x| {
            with_host(&self.weight_t, "the weight", |w| {
                // One single-threaded product per thread, each over its own band of output
                // columns: gemm's own threads split the product by output rows, so each
                // repacked the whole weight (a fifth of the time at 128 rows).
                let threads = rayon::current_num_threads().max(1);
                let band = d_out
                    .div_ceil(threads)
                    .next_multiple_of(64)
                    .min(d_out)
                    .max(1);
                let dst = SharedOut(y.as_mut_ptr());
                (0..d_out.div_ceil(band)).into_par_iter().for_each(|i| {
                    let (first, n) = (i * band, band.min(d_out - i * band));
                    // SAFETY: `y` is rows × d_out, `x` rows × d_in and `w` d_in × d_out, all
                    // row-major and contiguous; each task writes its own columns of `y`.
                    unsafe {
                        gemm::gemm(
                            rows,
                            n,
                            d_in,
                            dst.at(first),
                            1,
                            d_out as isize,
                            self.bias.is_some(),
                            x.as_ptr(),
                            1,
                            d_in as isize,
                            w.as_ptr().add(first),
                            1,
                            d_out as isize,
                            1.0,
                            1.0,
                            false,
                            false,
                            false,
                            gemm::Parallelism::None,
                        );
                    }
                });
                Ok(())
            })
        })?;
        Ok(y)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// The one-product CPU path against stock ops, with and without a bias, over a leading
    /// batch dimension; and a tracked input still gets its gradient.
    #[test]
    fn the_host_path_matches_stock_ops() {
        let dev = Device::Cpu;
        // 7 outputs in one band of columns; 200 in bands of 64 or more, one per thread.
        for (d_out, d_in) in [(7, 5), (200, 33)] {
            let w = Tensor::randn(0f32, 1., (d_out, d_in), &dev).unwrap();
            let b = Tensor::randn(0f32, 1., d_out, &dev).unwrap();
            let x = Tensor::randn(0f32, 1., (3, 4, d_in), &dev).unwrap();
            for bias in [None, Some(b)] {
                let linear = Linear::new(&w, bias).unwrap();
                let host = linear.forward(&x).unwrap();
                let stock = crate::ops::with_stock_ops(|| linear.forward(&x)).unwrap();
                assert_eq!(host.dims(), [3, 4, d_out]);
                assert!(crate::ops::max_gap(&host, &stock) < 1e-5);
            }
        }
        let w = Tensor::randn(0f32, 1., (7, 5), &dev).unwrap();
        let x = Tensor::randn(0f32, 1., (3, 4, 5), &dev).unwrap();
        // A width that does not fit is a clear error, not an out-of-bounds read.
        let e = Linear::new(&w, None)
            .unwrap()
            .forward(&x.narrow(2, 0, 4).unwrap());
        assert!(e.unwrap_err().to_string().contains("shape mismatch"));
        let var = Var::from_tensor(&x).unwrap();
        let y = Linear::new(&w, None)
            .unwrap()
            .forward(var.as_tensor())
            .unwrap();
        assert!(y.sum_all().unwrap().backward().unwrap().get(&var).is_some());
    }
}
