//! sae-lib's own CUDA kernels (`--features cuda`), where stock candle ops are slow on a GPU:
//! each row's top `k` ([`topk_indices`]; stock ops sort blocks of 1,024 columns twice over)
//! and the sparse decoder with its backward ([`decode_rows`]; stock ops gather a
//! `(batch, k, d_in)` copy of the decoder rows and scatter its gradient back).
//!
//! build.rs compiles `topk.cu` and `decode.cu` to PTX. Their logic is tested on the CPU
//! (`tests/it/cuda_kernels.rs` runs them through a small CUDA emulation), and the GPU check
//! (`scripts/gpu/check.sh`) compares them with the stock path on a GPU. `SAE_STOCK_OPS=1`
//! turns them off.

use candle_core::cuda_backend::cudarc::driver::{
    CudaSlice, CudaView, DeviceRepr, LaunchConfig, PushKernelArg,
};
use candle_core::cuda_backend::{CudaDType, WrapErr};
use candle_core::op::BackpropOp;
use candle_core::{
    CpuStorage, CudaDevice, CudaStorage, CustomOp3, DType, Layout, Shape, Storage, Tensor,
};

use crate::Result;

const TOPK_PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/topk.ptx"));
const DECODE_PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/decode.ptx"));
// These three must equal the `#define`s of the same names in the kernels.
/// Threads per top-k block (a block per row).
const TOPK_THREADS: u32 = 256;
/// The largest `k` the top-k kernel takes (its candidates sit in shared memory).
pub const TOPK_MAX_K: usize = 1024;
/// Threads per decoder block.
const DECODE_THREADS: u32 = 256;

/// A contiguous tensor's device memory, as a view of its `T` elements.
fn cuda_view<'a, T: CudaDType>(
    storage: &'a CudaStorage,
    layout: &Layout,
) -> candle_core::Result<CudaView<'a, T>> {
    match layout.contiguous_offsets() {
        Some((a, b)) => Ok(storage.as_cuda_slice::<T>()?.slice(a..b)),
        None => candle_core::bail!("sae-lib's CUDA kernels take contiguous tensors"),
    }
}

/// [`cuda_view`] of a tensor's storage.
fn view<'a, T: CudaDType>(
    storage: &'a Storage,
    layout: &Layout,
) -> candle_core::Result<CudaView<'a, T>> {
    match storage {
        Storage::Cuda(s) => cuda_view(s, layout),
        _ => candle_core::bail!("sae-lib's CUDA kernels take CUDA tensors"),
    }
}

/// A new tensor, outside the autograd graph, owning `slice`.
fn tensor<T: CudaDType + DeviceRepr>(
    slice: CudaSlice<T>,
    dev: &CudaDevice,
    shape: impl Into<Shape>,
) -> Tensor {
    let storage = Storage::Cuda(CudaStorage::wrap_cuda_slice(slice, dev.clone()));
    Tensor::from_storage(storage, shape, BackpropOp::none(), false)
}

/// The CUDA device `t` lives on.
fn cuda_device(t: &Tensor) -> candle_core::Result<CudaDevice> {
    match t.device() {
        candle_core::Device::Cuda(d) => Ok(d.clone()),
        _ => candle_core::bail!("expected a CUDA tensor"),
    }
}

/// Blocks of [`DECODE_THREADS`] threads over an `(x, y)` grid.
fn grid(x: usize, y: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (x as u32, y as u32, 1),
        block_dim: (DECODE_THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Indices `(rows, k)` of each row's `k` largest values of `x` `(rows, n)`, largest first
/// (ties: the lower column first); `k` is clamped to `1..=n`, and then at most [`TOPK_MAX_K`].
pub fn topk_indices(x: &Tensor, k: usize) -> Result<Tensor> {
    let x = x.contiguous()?;
    let (rows, n) = x.dims2()?;
    let k = k.clamp(1, n.max(1));
    if k > TOPK_MAX_K {
        let msg = format!("the CUDA top-k takes k up to {TOPK_MAX_K}, not {k}");
        return Err(candle_core::Error::Msg(msg).into());
    }
    let dev = cuda_device(&x)?;
    if rows == 0 || n == 0 {
        return Ok(Tensor::zeros((rows, k.min(n)), DType::U32, x.device())?);
    }
    let (storage, layout) = x.storage_and_layout();
    let src = view::<f32>(&storage, layout)?;
    let func = dev.get_or_load_custom_func("topk_rows_f32", "sae_lib_topk", TOPK_PTX)?;
    // SAFETY: the kernel writes every element.
    let out = unsafe { dev.alloc::<u32>(rows * k)? };
    let mut launch = func.builder();
    launch.arg(&src).arg(&out);
    candle_core::builder_arg!(launch, n as u32, k as u32);
    let cfg = LaunchConfig {
        grid_dim: (rows as u32, 1, 1),
        block_dim: (TOPK_THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: the arguments match the kernel's signature; sizes as it expects them.
    unsafe { launch.launch(cfg) }.w()?;
    Ok(tensor(out, &dev, (rows, k)))
}

/// `Σ_i values[b, i] · W_dec[indices[b, i], :]`, `(batch, d_in)`, differentiable in `values`
/// and `W_dec`: the CUDA counterpart of the CPU's sparse decoder (same `flat_at_zero`).
pub fn decode_rows(
    values: &Tensor,
    indices: &Tensor,
    w_dec: &Tensor,
    flat_at_zero: bool,
) -> Result<Tensor> {
    let indices = indices.to_dtype(DType::U32)?.contiguous()?;
    Ok(values
        .contiguous()?
        .apply_op3(&w_dec.contiguous()?, &indices, Decode { flat_at_zero })?)
}

struct Decode {
    flat_at_zero: bool,
}

impl CustomOp3 for Decode {
    fn name(&self) -> &'static str {
        "cuda-sparse-decode"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("cuda-sparse-decode runs on CUDA tensors only")
    }

    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
        s3: &CudaStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let (b, k) = l1.shape().dims2()?;
        let (_, d) = l2.shape().dims2()?;
        let dev = &s1.device;
        let (v, w) = (cuda_view::<f32>(s1, l1)?, cuda_view::<f32>(s2, l2)?);
        let idx = cuda_view::<u32>(s3, l3)?;
        // SAFETY: the kernel writes every element.
        let out = unsafe { dev.alloc::<f32>(b * d)? };
        if b > 0 && d > 0 {
            let func =
                dev.get_or_load_custom_func("decode_rows_f32", "sae_lib_decode", DECODE_PTX)?;
            let mut launch = func.builder();
            launch.arg(&v).arg(&idx).arg(&w).arg(&out);
            candle_core::builder_arg!(launch, k as u32, d as u32);
            // SAFETY: as in `topk_indices`.
            unsafe { launch.launch(grid(b, d.div_ceil(DECODE_THREADS as usize))) }.w()?;
        }
        Ok((
            CudaStorage::wrap_cuda_slice(out, dev.clone()),
            Shape::from((b, d)),
        ))
    }

    fn bwd(
        &self,
        values: &Tensor,
        w_dec: &Tensor,
        indices: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (b, k) = values.dims2()?;
        let (d_sae, d) = w_dec.dims2()?;
        let dev = cuda_device(values)?;
        let grad = grad.contiguous()?;
        let (sg, lg) = grad.storage_and_layout();
        let (sv, lv) = values.storage_and_layout();
        let (sw, lw) = w_dec.storage_and_layout();
        let (si, li) = indices.storage_and_layout();
        let (g, v) = (view::<f32>(&sg, lg)?, view::<f32>(&sv, lv)?);
        let (w, idx) = (view::<f32>(&sw, lw)?, view::<u32>(&si, li)?);
        let (k32, d32) = (k as u32, d as u32);
        // SAFETY: the kernel writes every element.
        let grad_v = unsafe { dev.alloc::<f32>(b * k)? };
        if b * k > 0 {
            let func = dev.get_or_load_custom_func(
                "decode_grad_values_f32",
                "sae_lib_decode",
                DECODE_PTX,
            )?;
            let mut launch = func.builder();
            launch.arg(&g).arg(&idx).arg(&w).arg(&v).arg(&grad_v);
            candle_core::builder_arg!(launch, k32, d32, u32::from(self.flat_at_zero));
            // SAFETY: as in `topk_indices`.
            unsafe { launch.launch(grid(b * k, 1)) }.w()?;
        }
        // Unless W_dec is a frozen copy (Gated's gate reconstruction).
        let grad_w = if w_dec.track_op() {
            let gw = dev.alloc_zeros::<f32>(d_sae * d)?;
            if b * k > 0 && d > 0 {
                let func = dev.get_or_load_custom_func(
                    "decode_grad_weights_f32",
                    "sae_lib_decode",
                    DECODE_PTX,
                )?;
                let mut launch = func.builder();
                launch.arg(&g).arg(&v).arg(&idx).arg(&gw);
                candle_core::builder_arg!(launch, k32, d32);
                // SAFETY: as in `topk_indices`.
                unsafe { launch.launch(grid(b * k, d.div_ceil(DECODE_THREADS as usize))) }.w()?;
            }
            Some(tensor(gw, &dev, (d_sae, d)))
        } else {
            None
        };
        Ok((Some(tensor(grad_v, &dev, (b, k))), grad_w, None))
    }
}
