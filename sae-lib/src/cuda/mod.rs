//! sae-lib's own CUDA kernels (`--features cuda`), where stock candle ops are slow on a GPU:
//! each row's top `k` ([`topk_indices`]; stock ops sort blocks of 1,024 columns twice over),
//! the sparse decoder with its backward ([`decode_rows`]; stock ops gather a `(batch, k, d_in)`
//! copy of the decoder rows and scatter its gradient back), and the sparse encoder's backward
//! ([`gather_pre_acts`]; stock ops recompute the encoder's dense matmul and differentiate it as
//! one, which makes a TopK step three dense matmuls instead of one), and Adam's update
//! ([`adam_update`]; three passes over memory against stock ops' dozen).
//!
//! build.rs compiles `topk.cu`, `rows.cu` and `adam.cu` to PTX. Their logic is tested on the CPU
//! (`tests/it/cuda_kernels.rs` runs them through a small CUDA emulation), and the GPU check
//! (`scripts/gpu/check.sh`) compares them with the stock path on a GPU. `SAE_STOCK_OPS=1`
//! turns them off.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{
    CudaSlice, CudaView, DeviceRepr, LaunchConfig, PushKernelArg,
};
use candle_core::cuda_backend::{CudaDType, WrapErr};
use candle_core::op::BackpropOp;
use candle_core::{
    CpuStorage, CudaDevice, CudaStorage, CustomOp3, DType, InplaceOp3, Layout, Shape, Storage,
    Tensor,
};

use crate::train::optim::AdamConsts;
use crate::Result;

const TOPK_PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/topk.ptx"));
const ROWS_PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/rows.ptx"));
const ADAM_PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/adam.ptx"));
// These four must equal the `#define`s of the same names in the kernels.
/// Threads per top-k block (a block per row).
const TOPK_THREADS: u32 = 256;
/// The largest `k` the top-k kernel takes (its candidates sit in shared memory).
pub const TOPK_MAX_K: usize = 1024;
/// Threads per block of the row kernels.
const ROWS_THREADS: u32 = 256;
/// Threads per block of the Adam kernels.
const ADAM_THREADS: u32 = 256;

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

/// Blocks of `threads` threads over an `(x, y)` grid.
fn grid((x, y): (usize, usize), threads: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (x as u32, y as u32, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Blocks to cover `d` columns with [`ROWS_THREADS`] threads each.
fn col_blocks(d: usize) -> usize {
    d.div_ceil(ROWS_THREADS as usize)
}

/// A `CustomOp3`'s or `InplaceOp3`'s name, and the `cpu_fwd` the trait asks for, refusing:
/// the op is CUDA's.
macro_rules! cuda_only {
    (inplace $name:literal) => {
        fn name(&self) -> &'static str {
            $name
        }

        fn cpu_fwd(
            &self,
            _: &mut CpuStorage,
            _: &Layout,
            _: &CpuStorage,
            _: &Layout,
            _: &CpuStorage,
            _: &Layout,
        ) -> candle_core::Result<()> {
            candle_core::bail!(concat!($name, " runs on CUDA tensors only"))
        }
    };
    ($name:literal) => {
        fn name(&self) -> &'static str {
            $name
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
            candle_core::bail!(concat!($name, " runs on CUDA tensors only"))
        }
    };
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
    let cfg = grid((rows, 1), TOPK_THREADS);
    // SAFETY: the arguments match the kernel's signature; sizes as it expects them.
    unsafe { launch.launch(cfg) }.w()?;
    Ok(tensor(out, &dev, (rows, k)))
}

/// `out[b, :] = Σ_i c[b, i] · t[idx[b, i], :]`, `(batch, d)`, for `c` and `idx` `(batch, k)`
/// and a table `t` of rows of `d` (`rows.cu`'s `sum_rows_f32`).
fn sum_rows(
    dev: &CudaDevice,
    c: &CudaView<f32>,
    idx: &CudaView<u32>,
    t: &CudaView<f32>,
    (b, k, d): (usize, usize, usize),
) -> candle_core::Result<CudaSlice<f32>> {
    // SAFETY: the kernel writes every element.
    let out = unsafe { dev.alloc::<f32>(b * d)? };
    if b > 0 && d > 0 {
        let func = dev.get_or_load_custom_func("sum_rows_f32", "sae_lib_rows", ROWS_PTX)?;
        let mut launch = func.builder();
        launch.arg(c).arg(idx).arg(t).arg(&out);
        candle_core::builder_arg!(launch, k as u32, d as u32);
        // SAFETY: as in `topk_indices`.
        unsafe { launch.launch(grid((b, col_blocks(d)), ROWS_THREADS)) }.w()?;
    }
    Ok(out)
}

/// `out[b, i] = g[b, :] · t[idx[b, i], :]`, `(batch, k)`; with `flat_at_zero`, zero where
/// `c[b, i]` is (`rows.cu`'s `dot_rows_f32`).
fn dot_rows(
    dev: &CudaDevice,
    (g, idx, t, c): (
        &CudaView<f32>,
        &CudaView<u32>,
        &CudaView<f32>,
        &CudaView<f32>,
    ),
    flat_at_zero: bool,
    (b, k, d): (usize, usize, usize),
) -> candle_core::Result<CudaSlice<f32>> {
    // SAFETY: the kernel writes every element.
    let out = unsafe { dev.alloc::<f32>(b * k)? };
    if b * k > 0 {
        let func = dev.get_or_load_custom_func("dot_rows_f32", "sae_lib_rows", ROWS_PTX)?;
        let mut launch = func.builder();
        launch.arg(g).arg(idx).arg(t).arg(c).arg(&out);
        candle_core::builder_arg!(launch, k as u32, d as u32, u32::from(flat_at_zero));
        // SAFETY: as in `topk_indices`.
        unsafe { launch.launch(grid((b * k, 1), ROWS_THREADS)) }.w()?;
    }
    Ok(out)
}

/// `out[j, :] = Σ over (b, i) with idx[b, i] = j of c[b, i] · g[b, :]`, `(n, d)`, for `g`
/// `(batch, d)` (`rows.cu`'s `scatter_rows_f32`).
fn scatter_rows(
    dev: &CudaDevice,
    (g, c, idx): (&CudaView<f32>, &CudaView<f32>, &CudaView<u32>),
    n: usize,
    (b, k, d): (usize, usize, usize),
) -> candle_core::Result<CudaSlice<f32>> {
    let out = dev.alloc_zeros::<f32>(n * d)?;
    if b * k > 0 && d > 0 {
        let func = dev.get_or_load_custom_func("scatter_rows_f32", "sae_lib_rows", ROWS_PTX)?;
        let mut launch = func.builder();
        launch.arg(g).arg(c).arg(idx).arg(&out);
        candle_core::builder_arg!(launch, k as u32, d as u32);
        // SAFETY: as in `topk_indices`.
        unsafe { launch.launch(grid((b * k, col_blocks(d)), ROWS_THREADS)) }.w()?;
    }
    Ok(out)
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
    cuda_only!("cuda-sparse-decode");

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
        let (v, w) = (cuda_view::<f32>(s1, l1)?, cuda_view::<f32>(s2, l2)?);
        let idx = cuda_view::<u32>(s3, l3)?;
        let out = sum_rows(&s1.device, &v, &idx, &w, (b, k, d))?;
        let out = CudaStorage::wrap_cuda_slice(out, s1.device.clone());
        Ok((out, Shape::from((b, d))))
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
        let grad_v = dot_rows(&dev, (&g, &idx, &w, &v), self.flat_at_zero, (b, k, d))?;
        // Unless W_dec is a frozen copy (Gated's gate reconstruction).
        let grad_w = w_dec
            .track_op()
            .then(|| scatter_rows(&dev, (&g, &v, &idx), d_sae, (b, k, d)))
            .transpose()?
            .map(|gw| tensor(gw, &dev, (d_sae, d)));
        Ok((Some(tensor(grad_v, &dev, (b, k))), grad_w, None))
    }
}

/// `pre` `(batch, d_sae)`, TopK's dense pre-activations `xc · W_enc + b_enc`, at `indices`
/// `(batch, k)`, differentiable in `xc` `(batch, d_in)`, `W_encᵀ` `(d_sae, d_in)` and `b_enc`
/// `(d_sae,)` with a sparse backward: the CUDA counterpart of the CPU's gather
/// (`sae::sparse::gather_pre_acts`). Stock ops would recompute the dense matmul, and
/// differentiate it as one, scattering the gradient into a `(batch, d_sae)` matrix first.
pub fn gather_pre_acts(
    xc: &Tensor,
    w_enc_t: &Tensor,
    b_enc: &Tensor,
    indices: &Tensor,
    pre: &Tensor,
) -> Result<Tensor> {
    let indices = indices.to_dtype(DType::U32)?.contiguous()?;
    let known = pre.detach().contiguous()?.gather(&indices, 1)?;
    let op = GatherPreActs { indices, known };
    Ok(xc
        .contiguous()?
        .apply_op3(&w_enc_t.contiguous()?, &b_enc.contiguous()?, op)?)
}

struct GatherPreActs {
    /// `(batch, k)`, u32.
    indices: Tensor,
    /// The values, gathered from the dense pre-activations: the forward only hands them on.
    known: Tensor,
}

impl CustomOp3 for GatherPreActs {
    cuda_only!("cuda-gather-pre-acts");

    fn cuda_fwd(
        &self,
        _: &CudaStorage,
        _: &Layout,
        _: &CudaStorage,
        _: &Layout,
        _: &CudaStorage,
        _: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        // `known` is the gather's own (batch, k) buffer, so the clone copies just that.
        let (storage, layout) = self.known.storage_and_layout();
        match &*storage {
            Storage::Cuda(s) => Ok((s.try_clone(layout)?, layout.shape().clone())),
            _ => candle_core::bail!("cuda-gather-pre-acts: the pre-activations are not on CUDA"),
        }
    }

    fn bwd(
        &self,
        xc: &Tensor,
        w_enc_t: &Tensor,
        b_enc: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (b, k) = self.indices.dims2()?;
        let (d_sae, d) = w_enc_t.dims2()?;
        let dev = cuda_device(xc)?;
        let grad = grad.contiguous()?;
        let (sg, lg) = grad.storage_and_layout();
        let (sx, lx) = xc.storage_and_layout();
        let (sw, lw) = w_enc_t.storage_and_layout();
        let (si, li) = self.indices.storage_and_layout();
        let (g, x) = (view::<f32>(&sg, lg)?, view::<f32>(&sx, lx)?);
        let (w, idx) = (view::<f32>(&sw, lw)?, view::<u32>(&si, li)?);
        // d xc[b, :] = Σ_i g[b, i] · W_encᵀ[idx[b, i], :], when xc has a gradient to take
        // (the data itself has none).
        let grad_x = xc
            .track_op()
            .then(|| sum_rows(&dev, &g, &idx, &w, (b, k, d)))
            .transpose()?
            .map(|gx| tensor(gx, &dev, (b, d)));
        // d W_encᵀ[j, :] = Σ over (b, i) with idx[b, i] = j of g[b, i] · xc[b, :]
        let grad_w = scatter_rows(&dev, (&x, &g, &idx), d_sae, (b, k, d))?;
        // d b_enc[j] = Σ over (b, i) with idx[b, i] = j of g[b, i]
        let grad_b =
            b_enc
                .zeros_like()?
                .index_add(&self.indices.flatten_all()?, &grad.flatten_all()?, 0)?;
        Ok((grad_x, Some(tensor(grad_w, &dev, (d_sae, d))), Some(grad_b)))
    }
}

/// Adam's update of the f32 CUDA variable `p`, in place, from the gradient `g` times the
/// scalar `scale` (a 0-d f32 tensor on the GPU, so that clipping needs no wait for it) and the
/// moments `(m, v)`; returns the new moments. Three passes over memory (`adam.cu`) where stock
/// ops take about a dozen. `p`, `m` and `v` must be contiguous.
pub fn adam_update(
    p: &Tensor,
    g: &Tensor,
    scale: &Tensor,
    (m, v): (&Tensor, &Tensor),
    c: &AdamConsts,
) -> Result<(Tensor, Tensor)> {
    let g = g.contiguous()?;
    let moment = |mom: &Tensor, (beta, keep), square| {
        mom.apply_op3_no_bwd(&g, scale, &AdamMoment { beta, keep, square })
    };
    let (m, v) = (moment(m, c.beta1, false)?, moment(v, c.beta2, true)?);
    p.inplace_op3(&m, &v, &AdamStep(*c))?;
    Ok((m, v))
}

/// Blocks of [`ADAM_THREADS`] over the `n` elements of the contiguous `l`.
fn elementwise(l: &Layout, name: &str) -> candle_core::Result<(usize, LaunchConfig)> {
    if !l.is_contiguous() {
        candle_core::bail!("{name} takes contiguous tensors");
    }
    let n = l.shape().elem_count();
    let cfg = grid((n.div_ceil(ADAM_THREADS as usize).max(1), 1), ADAM_THREADS);
    Ok((n, cfg))
}

/// One moment, `β · mom + (1 − β) · (s·g)` (squared for the second), as a new tensor.
struct AdamMoment {
    beta: f32,
    keep: f32,
    square: bool,
}

impl CustomOp3 for AdamMoment {
    cuda_only!("cuda-adam-moment");

    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
        s3: &CudaStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let (n, cfg) = elementwise(l1, self.name())?;
        let (mom, g) = (cuda_view::<f32>(s1, l1)?, cuda_view::<f32>(s2, l2)?);
        let scale = cuda_view::<f32>(s3, l3)?;
        let dev = &s1.device;
        // SAFETY: the kernel writes every element.
        let out = unsafe { dev.alloc::<f32>(n)? };
        let func = dev.get_or_load_custom_func("adam_moment_f32", "sae_lib_adam", ADAM_PTX)?;
        let mut launch = func.builder();
        launch.arg(&mom).arg(&g).arg(&scale).arg(&out);
        candle_core::builder_arg!(
            launch,
            n as u32,
            self.beta,
            self.keep,
            u32::from(self.square)
        );
        // SAFETY: as in `topk_indices`.
        unsafe { launch.launch(cfg) }.w()?;
        let out = CudaStorage::wrap_cuda_slice(out, dev.clone());
        Ok((out, l1.shape().clone()))
    }
}

/// The variable's step, in place, from its new moments.
struct AdamStep(AdamConsts);

impl InplaceOp3 for AdamStep {
    cuda_only!(inplace "cuda-adam-step");

    fn cuda_fwd(
        &self,
        s1: &mut CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
        s3: &CudaStorage,
        l3: &Layout,
    ) -> candle_core::Result<()> {
        let (n, cfg) = elementwise(l1, self.name())?;
        let (m, v) = (cuda_view::<f32>(s2, l2)?, cuda_view::<f32>(s3, l3)?);
        let dev = s1.device.clone();
        let start = l1.start_offset();
        let mut p = s1.as_cuda_slice_mut::<f32>()?.slice_mut(start..start + n);
        let func = dev.get_or_load_custom_func("adam_step_f32", "sae_lib_adam", ADAM_PTX)?;
        let mut launch = func.builder();
        launch.arg(&mut p).arg(&m).arg(&v);
        let c = &self.0;
        candle_core::builder_arg!(launch, n as u32, c.step, c.inv_bc2, c.eps);
        // SAFETY: as in `topk_indices`.
        unsafe { launch.launch(cfg) }.w()?;
        Ok(())
    }
}
