//! Adam (Kingma & Ba 2015) over candle `Var`s, with global gradient-norm clipping.
//!
//! candle-nn's `AdamW` keeps its moments private, so a run could not be checkpointed and
//! resumed bit-identically; this one exposes its state. Same update as `torch.optim.Adam`.
//! The update is fused: one parallel pass on the CPU, three CUDA kernels on a GPU
//! (`src/cuda/adam.cu`), stock candle ops elsewhere.

use crate::sae::kernels::{simd, sum_squares, with_host};
use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};

use crate::{Error, Result};

/// Adam's hyperparameters. `Default` is PyTorch's (no weight decay).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AdamParams {
    /// Learning rate.
    pub lr: f64,
    /// Decay of the first moment (the gradient's running mean).
    pub beta1: f64,
    /// Decay of the second moment (the squared gradient's running mean).
    pub beta2: f64,
    /// Added to the second moment's square root in the denominator.
    pub eps: f64,
}

impl Default for AdamParams {
    fn default() -> Self {
        Self {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        }
    }
}

/// A variable's moments: on the host for contiguous f32 CPU variables (updated by one fused,
/// parallel pass per step), as tensors elsewhere (stock candle ops, any device).
enum Moments {
    Host { m: Vec<f32>, v: Vec<f32> },
    Device { m: Tensor, v: Tensor },
}

impl Moments {
    fn zeros(var: &Var) -> Result<Self> {
        let t = var.as_tensor();
        Ok(if host_f32(t) {
            let n = t.elem_count();
            Self::Host {
                m: vec![0.0; n],
                v: vec![0.0; n],
            }
        } else {
            Self::Device {
                m: t.zeros_like()?,
                v: t.zeros_like()?,
            }
        })
    }

    fn tensors(&self, like: &Tensor) -> Result<(Tensor, Tensor)> {
        Ok(match self {
            Self::Host { m, v } => (
                Tensor::from_slice(m, like.shape(), like.device())?,
                Tensor::from_slice(v, like.shape(), like.device())?,
            ),
            Self::Device { m, v } => (m.clone(), v.clone()),
        })
    }

    fn set(&mut self, m_new: &Tensor, v_new: &Tensor) -> Result<()> {
        match self {
            Self::Host { m, v } => {
                *m = m_new.flatten_all()?.to_dtype(DType::F32)?.to_vec1()?;
                *v = v_new.flatten_all()?.to_dtype(DType::F32)?.to_vec1()?;
            }
            Self::Device { m, v } => {
                *m = m_new.clone();
                *v = v_new.clone();
            }
        }
        Ok(())
    }
}

/// Whether `t` is a contiguous f32 tensor on the CPU and the fused path is not switched off
/// ([`crate::ops`]).
fn host_f32(t: &Tensor) -> bool {
    crate::ops::host_f32(&[t]) && t.is_contiguous()
}

/// Adam over named variables.
pub struct Adam {
    vars: Vec<(&'static str, Var)>,
    /// Each variable's learning rate as a multiple of `params.lr`.
    lr_scales: Vec<f64>,
    moments: Vec<Moments>,
    steps: u64,
    /// Its hyperparameters; the trainer sets `lr` each step from the schedule.
    pub params: AdamParams,
}

impl Adam {
    /// An optimiser for the named variables, with zero moments.
    pub fn new(vars: Vec<(&'static str, Var)>, params: AdamParams) -> Result<Self> {
        let moments = vars
            .iter()
            .map(|(_, v)| Moments::zeros(v))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            lr_scales: vec![1.0; vars.len()],
            vars,
            moments,
            steps: 0,
            params,
        })
    }

    /// Lets the named variables learn at a multiple of the learning rate (the others keep
    /// 1×); a name the optimiser does not hold is an error.
    pub fn with_lr_scales(mut self, scales: &[(&str, f64)]) -> Result<Self> {
        for &(name, scale) in scales {
            let Some(i) = self.vars.iter().position(|(n, _)| *n == name) else {
                return Err(Error::Training(format!(
                    "a learning-rate scale for `{name}`, which the optimiser does not hold"
                )));
            };
            self.lr_scales[i] = scale;
        }
        Ok(self)
    }

    /// Number of updates taken.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// One update with the current `params.lr`.
    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        self.step_clipped(grads, None).map(|_| ())
    }

    /// One update with the current `params.lr`, the gradients first scaled so their global
    /// L2 norm is at most `max_norm` (as `torch.nn.utils.clip_grad_norm_`). Returns the norm
    /// before clipping, as a 0-d f64 tensor: on a GPU the clipping scale is computed there and
    /// nothing waits for it, unless the caller reads the norm.
    pub fn step_clipped(&mut self, grads: &GradStore, max_norm: Option<f64>) -> Result<Tensor> {
        let fused = |g: &Tensor, m: &Moments| host_f32(g) && matches!(m, Moments::Host { .. });
        // Squares summed on the host for the fused CPU path, and as a tensor for the rest.
        let (mut host_sq, mut device_sq) = (0f64, None::<Tensor>);
        for ((_, var), m) in self.vars.iter().zip(&self.moments) {
            let Some(g) = grads.get(var.as_tensor()) else {
                continue;
            };
            if fused(g, m) {
                // Chunk sums collected, then added in order: the same on any thread count.
                host_sq += with_host(g, "a gradient", |g| {
                    use rayon::prelude::*;
                    let chunks: Vec<f64> = g.par_chunks(1 << 16).map(sum_squares).collect();
                    Ok(chunks.iter().sum::<f64>())
                })?;
            } else {
                let sq = g.sqr()?.sum_all()?.to_dtype(DType::F64)?;
                device_sq = Some(match device_sq {
                    Some(total) => (total + sq)?,
                    None => sq,
                });
            }
        }
        let scale = match device_sq {
            None => ClipScale::host(host_sq.sqrt(), max_norm)?,
            Some(sq) => ClipScale::device((sq + host_sq)?.sqrt()?, max_norm)?,
        };
        self.steps += 1;
        let p = self.params;
        let t = self.steps as i32;
        let (bc1, bc2) = (1.0 - p.beta1.powi(t), 1.0 - p.beta2.powi(t));
        let vars = self.vars.iter().zip(&self.lr_scales);
        for (((_, var), &lr_scale), moments) in vars.zip(self.moments.iter_mut()) {
            let Some(g) = grads.get(var.as_tensor()) else {
                continue;
            };
            let p = AdamParams {
                lr: p.lr * lr_scale,
                ..p
            };
            let consts = AdamConsts::new(&p, bc1, bc2);
            match moments {
                Moments::Host { m, v } if host_f32(g) => {
                    with_host(g, "a gradient", |g| {
                        var.as_tensor().inplace_op1(&FusedAdam {
                            g,
                            m: std::sync::Mutex::new(m),
                            v: std::sync::Mutex::new(v),
                            scale: scale.on_host()?,
                            consts,
                        })
                    })?;
                }
                #[cfg(feature = "cuda")]
                Moments::Device { m, v }
                    if crate::ops::cuda_f32(&[var.as_tensor(), g, m, v])
                        && [var.as_tensor(), m, v].iter().all(|t| t.is_contiguous()) =>
                {
                    let s = scale.on(g)?;
                    (*m, *v) = crate::cuda::adam_update(var.as_tensor(), g, &s, (m, v), &consts)?;
                }
                _ => {
                    // Gradients carry the autograd graph of the step; detached moments do not
                    // keep every past step's graph alive.
                    let g = g.detach().broadcast_mul(&scale.on(g)?)?;
                    let (m, v) = moments.tensors(var.as_tensor())?;
                    let m = ((m * p.beta1)? + (&g * (1.0 - p.beta1))?)?;
                    let v = ((v * p.beta2)? + (g.sqr()? * (1.0 - p.beta2))?)?;
                    let denom = ((&v / bc2)?.sqrt()? + p.eps)?;
                    let update = ((&m / denom)? * (p.lr / bc1))?;
                    var.set(&var.as_tensor().sub(&update)?)?;
                    moments.set(&m, &v)?;
                }
            }
        }
        Ok(scale.norm)
    }

    /// Zeroes the moments of rows `rows` of `var` along `dim` (after a dead feature is
    /// resampled, its stale moments would fling it away).
    pub fn reset_rows(&mut self, var: &Var, dim: usize, rows: &[u32]) -> Result<()> {
        let id = var.as_tensor().id();
        let Some(i) = self.vars.iter().position(|(_, v)| v.as_tensor().id() == id) else {
            return Err(Error::Training(
                "resampling: a variable the optimiser does not hold".into(),
            ));
        };
        let t = var.as_tensor();
        let n = t.dim(dim)?;
        let mut keep = vec![1f32; n];
        for &r in rows {
            keep[r as usize] = 0.0;
        }
        let mut shape = vec![1; t.rank()];
        shape[dim] = n;
        let keep = Tensor::from_vec(keep, shape, t.device())?.to_dtype(t.dtype())?;
        let (m, v) = self.moments[i].tensors(t)?;
        self.moments[i].set(&m.broadcast_mul(&keep)?, &v.broadcast_mul(&keep)?)?;
        Ok(())
    }

    /// Moments under `"{name}.m"` / `"{name}.v"`, for checkpoints.
    pub fn state(&self) -> Result<HashMap<String, Tensor>> {
        let mut out = HashMap::new();
        for ((name, var), moments) in self.vars.iter().zip(&self.moments) {
            let (m, v) = moments.tensors(var.as_tensor())?;
            out.insert(format!("adam.{name}.m"), m);
            out.insert(format!("adam.{name}.v"), v);
        }
        Ok(out)
    }

    /// Restores moments saved by [`Adam::state`] and the step count.
    pub fn load_state(&mut self, state: &HashMap<String, Tensor>, steps: u64) -> Result<()> {
        for ((name, _), moments) in self.vars.iter().zip(self.moments.iter_mut()) {
            let get = |k: String| {
                state.get(&k).cloned().ok_or_else(|| {
                    Error::Training(format!("checkpoint lacks optimizer state `{k}`"))
                })
            };
            moments.set(
                &get(format!("adam.{name}.m"))?,
                &get(format!("adam.{name}.v"))?,
            )?;
        }
        self.steps = steps;
        Ok(())
    }
}

/// The gradient norm before clipping and the factor that clips it: computed on the host, or
/// where the gradients live, so that a GPU is not waited for.
struct ClipScale {
    /// 0-d f64.
    norm: Tensor,
    /// `max / (norm + 1e-6)` above `max`, else 1.
    scale: Factor,
}

/// A clipping factor, where it was computed.
enum Factor {
    Host(f32),
    /// 0-d f32.
    Device(Tensor),
}

impl ClipScale {
    fn host(norm: f64, max_norm: Option<f64>) -> Result<Self> {
        let scale = match max_norm {
            Some(max) if norm > max => max / (norm + 1e-6),
            _ => 1.0,
        };
        Ok(Self {
            norm: Tensor::new(norm, &candle_core::Device::Cpu)?,
            scale: Factor::Host(scale as f32),
        })
    }

    fn device(norm: Tensor, max_norm: Option<f64>) -> Result<Self> {
        let one = norm.ones_like()?;
        let scale = match max_norm {
            Some(max) => {
                let clipped = ((norm.affine(1.0, 1e-6)?.recip()?) * max)?;
                norm.gt(max)?.where_cond(&clipped, &one)?
            }
            None => one,
        };
        let scale = Factor::Device(scale.to_dtype(DType::F32)?);
        Ok(Self { norm, scale })
    }

    /// The scale as an f32 (reading it from the device, where it is there).
    fn on_host(&self) -> candle_core::Result<f32> {
        match &self.scale {
            Factor::Host(s) => Ok(*s),
            Factor::Device(t) => t.to_scalar::<f32>(),
        }
    }

    /// The scale as a 0-d tensor in `like`'s dtype on its device.
    fn on(&self, like: &Tensor) -> Result<Tensor> {
        let t = match &self.scale {
            Factor::Host(s) => Tensor::new(*s, like.device())?,
            Factor::Device(t) => t.to_device(like.device())?,
        };
        Ok(t.to_dtype(like.dtype())?)
    }
}

/// Adam's constants for one step, in f32, as both fused updates (the CPU's, and CUDA's in
/// `src/cuda/adam.cu`) use them.
#[derive(Debug, Clone, Copy)]
pub struct AdamConsts {
    /// β1 and 1 − β1.
    pub beta1: (f32, f32),
    /// β2 and 1 − β2.
    pub beta2: (f32, f32),
    /// lr / (1 − β1ᵗ).
    pub step: f32,
    /// 1 / (1 − β2ᵗ).
    pub inv_bc2: f32,
    /// ε, added to the second moment's square root.
    pub eps: f32,
}

impl AdamConsts {
    /// From the hyperparameters and the bias corrections `1 − βᵢᵗ`.
    pub fn new(p: &AdamParams, bc1: f64, bc2: f64) -> Self {
        Self {
            beta1: (p.beta1 as f32, (1.0 - p.beta1) as f32),
            beta2: (p.beta2 as f32, (1.0 - p.beta2) as f32),
            step: (p.lr / bc1) as f32,
            inv_bc2: (1.0 / bc2) as f32,
            eps: p.eps as f32,
        }
    }
}

/// Adam's update of one contiguous f32 CPU variable in place, in one parallel pass over the
/// parameter, its gradient (times the clip `scale`) and its moments: the same arithmetic as
/// the stock-op path, without its dozen temporary tensors (which cost a TopK step more than
/// its encoder matmul at d_sae 4096).
struct FusedAdam<'a> {
    g: &'a [f32],
    m: std::sync::Mutex<&'a mut Vec<f32>>,
    v: std::sync::Mutex<&'a mut Vec<f32>>,
    scale: f32,
    consts: AdamConsts,
}

impl candle_core::InplaceOp1 for FusedAdam<'_> {
    fn name(&self) -> &'static str {
        "fused-adam"
    }

    fn cpu_fwd(
        &self,
        storage: &mut candle_core::CpuStorage,
        layout: &candle_core::Layout,
    ) -> candle_core::Result<()> {
        use rayon::prelude::*;
        let (candle_core::CpuStorage::F32(data), Some((a, b))) =
            (storage, layout.contiguous_offsets())
        else {
            candle_core::bail!("fused-adam needs a contiguous f32 tensor")
        };
        let p = &mut data[a..b];
        let (mut m, mut v) = (self.m.lock().unwrap(), self.v.lock().unwrap());
        if p.len() != self.g.len() || m.len() != p.len() || v.len() != p.len() {
            candle_core::bail!("fused-adam: parameter, gradient and moments differ in size")
        }
        // The same f32 constants as the stock-op path's scalar ops.
        let AdamConsts {
            beta1: (b1, c1),
            beta2: (b2, c2),
            step,
            inv_bc2,
            eps,
        } = self.consts;
        let scale = self.scale;
        const CHUNK: usize = 1 << 14;
        p.par_chunks_mut(CHUNK)
            .zip(self.g.par_chunks(CHUNK))
            .zip(m.par_chunks_mut(CHUNK).zip(v.par_chunks_mut(CHUNK)))
            .for_each(|((p, g), (m, v))| {
                // Wide registers for the square root and division; no fused multiply-add, so
                // the same bits as the scalar loop.
                simd(
                    #[inline(always)]
                    |_| {
                        for i in 0..p.len() {
                            let g = g[i] * scale;
                            m[i] = m[i] * b1 + g * c1;
                            v[i] = v[i] * b2 + g * g * c2;
                            p[i] -= m[i] / ((v[i] * inv_bc2).sqrt() + eps) * step;
                        }
                    },
                )
            });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn adam_minimises_a_quadratic() {
        let x = Var::new(&[3f32, -2.0], &Device::Cpu).unwrap();
        let mut opt = Adam::new(
            vec![("x", x.clone())],
            AdamParams {
                lr: 0.1,
                ..Default::default()
            },
        )
        .unwrap();
        for _ in 0..300 {
            let loss = x.as_tensor().sqr().unwrap().sum_all().unwrap();
            let grads = loss.backward().unwrap();
            let norm = opt.step_clipped(&grads, Some(1.0)).unwrap();
            let norm = norm.to_scalar::<f64>().unwrap();
            assert!(norm.is_finite());
        }
        let v = x.as_tensor().to_vec1::<f32>().unwrap();
        assert!(v.iter().all(|a| a.abs() < 0.05), "{v:?}");
    }

    /// Clipping against a hand-written Adam in f64: the returned norm is the gradient's before
    /// clipping, and each step's gradient is scaled to norm `max` when above it (two steps of
    /// very different gradient sizes, so clipping changes where Adam lands). Both paths.
    #[test]
    fn clipping_scales_the_gradient_to_max_norm_before_adam() {
        let (x0, max, p) = ([3f64, -2.0], 1.0, AdamParams::default());
        let reference = |clip: bool| {
            let (mut x, mut m, mut v, mut norms) = (x0, [0f64; 2], [0f64; 2], vec![]);
            for (t, c) in [(1, 10.0), (2, 1.0)] {
                let g = [2.0 * c * x[0], 2.0 * c * x[1]];
                let norm = (g[0] * g[0] + g[1] * g[1]).sqrt();
                norms.push(norm);
                let scale = if clip && norm > max {
                    max / (norm + 1e-6)
                } else {
                    1.0
                };
                for i in 0..2 {
                    let g = g[i] * scale;
                    m[i] = p.beta1 * m[i] + (1.0 - p.beta1) * g;
                    v[i] = p.beta2 * v[i] + (1.0 - p.beta2) * g * g;
                    let (bc1, bc2) = (1.0 - p.beta1.powi(t), 1.0 - p.beta2.powi(t));
                    x[i] -= p.lr / bc1 * m[i] / ((v[i] / bc2).sqrt() + p.eps);
                }
            }
            (x, norms)
        };
        let (want, want_norms) = reference(true);
        let (unclipped, _) = reference(false);
        assert!(
            (want[0] - unclipped[0]).abs() > 1e-4,
            "the case must depend on clipping"
        );
        for stock in [false, true] {
            let x = Var::new(&[x0[0] as f32, x0[1] as f32], &Device::Cpu).unwrap();
            let mut opt = Adam::new(vec![("x", x.clone())], p).unwrap();
            let _stock = stock.then(crate::ops::StockOps::on);
            for (step, c) in [10.0, 1.0].into_iter().enumerate() {
                let loss = (x.as_tensor().sqr().unwrap().sum_all().unwrap() * c).unwrap();
                let norm = opt
                    .step_clipped(&loss.backward().unwrap(), Some(max))
                    .unwrap()
                    .to_scalar::<f64>()
                    .unwrap();
                assert!((norm - want_norms[step]).abs() < 1e-4 * want_norms[step]);
            }
            let got = x.as_tensor().to_vec1::<f32>().unwrap();
            for i in 0..2 {
                assert!(
                    (got[i] as f64 - want[i]).abs() < 1e-5,
                    "{got:?} vs {want:?}"
                );
            }
        }
    }

    /// A variable with an lr scale takes Adam's first step (lr · sign g, as `m̂/√v̂` = ±1)
    /// times its scale, on both paths; the others take plain lr; an unknown name is refused.
    #[test]
    fn lr_scales_multiply_a_variables_step() {
        let p = AdamParams {
            lr: 0.01,
            ..Default::default()
        };
        for stock in [false, true] {
            let _stock = stock.then(crate::ops::StockOps::on);
            let a = Var::new(&[1f32, -1.0], &Device::Cpu).unwrap();
            let b = Var::new(&[1f32, -1.0], &Device::Cpu).unwrap();
            let mut opt = Adam::new(vec![("a", a.clone()), ("b", b.clone())], p)
                .unwrap()
                .with_lr_scales(&[("b", 25.0)])
                .unwrap();
            let loss = (a.as_tensor().sqr().unwrap() + b.as_tensor().sqr().unwrap())
                .unwrap()
                .sum_all()
                .unwrap();
            opt.step(&loss.backward().unwrap()).unwrap();
            let moved = |v: &Var| 1.0 - v.as_tensor().to_vec1::<f32>().unwrap()[0];
            assert!((moved(&a) - 0.01).abs() < 1e-5, "{}", moved(&a));
            assert!((moved(&b) - 0.25).abs() < 1e-5, "{}", moved(&b));
        }
        let x = Var::new(&[1f32], &Device::Cpu).unwrap();
        let err = Adam::new(vec![("x", x)], p)
            .unwrap()
            .with_lr_scales(&[("y", 2.0)]);
        assert!(err.is_err());
    }

    /// The fused CPU update against the stock-op path a GPU runs: same parameters and moments
    /// after clipped steps, to the last bit.
    #[test]
    fn the_fused_update_equals_the_stock_op_update() {
        let start: Vec<f32> = (0..70_000)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 30.0)
            .collect();
        let run = |stock: bool| {
            let x = Var::new(start.as_slice(), &Device::Cpu).unwrap();
            let mut opt = Adam::new(vec![("x", x.clone())], AdamParams::default()).unwrap();
            let _stock = stock.then(crate::ops::StockOps::on);
            let mut norms = vec![];
            for step in 0..5 {
                let loss =
                    (x.as_tensor().sqr().unwrap().sum_all().unwrap() * (step + 1) as f64).unwrap();
                let grads = loss.backward().unwrap();
                let norm = opt.step_clipped(&grads, Some(50.0)).unwrap();
                norms.push(norm.to_scalar::<f64>().unwrap());
            }
            let state = opt.state().unwrap();
            (
                x.as_tensor().to_vec1::<f32>().unwrap(),
                state["adam.x.v"].to_vec1::<f32>().unwrap(),
                norms,
            )
        };
        let (fused, generic) = (run(false), run(true));
        assert!(
            generic.2.iter().all(|&n| n > 50.0),
            "clipping never engaged"
        );
        // The clip norm is summed in f64 here and in f32 by candle's `sum_all`: the scales
        // differ in the last bits, nothing more.
        let worst = |a: &[f32], b: &[f32]| {
            a.iter()
                .zip(b)
                .map(|(x, y)| (x - y).abs() / x.abs().max(y.abs()).max(1e-12))
                .fold(0f32, f32::max)
        };
        let (dp, dv) = (worst(&fused.0, &generic.0), worst(&fused.1, &generic.1));
        assert!(
            dp < 1e-5 && dv < 1e-5,
            "relative differences: params {dp}, moments {dv}"
        );
        for (a, b) in fused.2.iter().zip(&generic.2) {
            assert!((a - b).abs() <= 1e-5 * a.abs(), "norms {a} vs {b}");
        }
    }
}
