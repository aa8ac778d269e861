//! Adam (Kingma & Ba 2015) over candle `Var`s, with global gradient-norm clipping.
//!
//! candle-nn's `AdamW` keeps its moments private, so a run could not be checkpointed and
//! resumed bit-identically; this one exposes its state. Same update as `torch.optim.Adam`.

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};

use crate::{Error, Result};

/// Adam's hyperparameters. `Default` is PyTorch's, with no weight decay.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AdamParams {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
}

impl Default for AdamParams {
    fn default() -> Self {
        Self {
            lr: 5e-5,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        }
    }
}

/// Adam over named variables.
pub struct Adam {
    vars: Vec<(&'static str, Var)>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    steps: u64,
    pub params: AdamParams,
}

impl Adam {
    pub fn new(vars: Vec<(&'static str, Var)>, params: AdamParams) -> Result<Self> {
        let m = vars
            .iter()
            .map(|(_, v)| v.zeros_like())
            .collect::<candle_core::Result<Vec<_>>>()?;
        let v = m.clone();
        Ok(Self {
            vars,
            m,
            v,
            steps: 0,
            params,
        })
    }

    /// Number of updates taken.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// One update with the current `params.lr`.
    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        self.steps += 1;
        let p = self.params;
        let t = self.steps as i32;
        let (bc1, bc2) = (1.0 - p.beta1.powi(t), 1.0 - p.beta2.powi(t));
        for (i, (_, var)) in self.vars.iter().enumerate() {
            let Some(g) = grads.get(var.as_tensor()) else {
                continue;
            };
            // Gradients carry the autograd graph of the step; detached moments do not keep
            // every past step's graph alive.
            let g = g.detach();
            self.m[i] = ((&self.m[i] * p.beta1)? + (&g * (1.0 - p.beta1))?)?;
            self.v[i] = ((&self.v[i] * p.beta2)? + (g.sqr()? * (1.0 - p.beta2))?)?;
            let denom = ((&self.v[i] / bc2)?.sqrt()? + p.eps)?;
            let update = ((&self.m[i] / denom)? * (p.lr / bc1))?;
            var.set(&var.as_tensor().sub(&update)?)?;
        }
        Ok(())
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
        let n = self.m[i].dim(dim)?;
        let mut keep = vec![1f32; n];
        for &r in rows {
            keep[r as usize] = 0.0;
        }
        let mut shape = vec![1; self.m[i].rank()];
        shape[dim] = n;
        let keep =
            Tensor::from_vec(keep, shape, self.m[i].device())?.to_dtype(self.m[i].dtype())?;
        self.m[i] = self.m[i].broadcast_mul(&keep)?;
        self.v[i] = self.v[i].broadcast_mul(&keep)?;
        Ok(())
    }

    /// Moments under `"{name}.m"` / `"{name}.v"`, for checkpoints.
    pub fn state(&self) -> HashMap<String, Tensor> {
        let mut out = HashMap::new();
        for (i, (name, _)) in self.vars.iter().enumerate() {
            out.insert(format!("adam.{name}.m"), self.m[i].clone());
            out.insert(format!("adam.{name}.v"), self.v[i].clone());
        }
        out
    }

    /// Restores moments saved by [`Adam::state`] and the step count.
    pub fn load_state(&mut self, state: &HashMap<String, Tensor>, steps: u64) -> Result<()> {
        for (i, (name, _)) in self.vars.iter().enumerate() {
            let get = |k: String| {
                state.get(&k).cloned().ok_or_else(|| {
                    Error::Training(format!("checkpoint lacks optimizer state `{k}`"))
                })
            };
            self.m[i] = get(format!("adam.{name}.m"))?;
            self.v[i] = get(format!("adam.{name}.v"))?;
        }
        self.steps = steps;
        Ok(())
    }
}

/// Scales all gradients so their global L2 norm is at most `max_norm` (as
/// `torch.nn.utils.clip_grad_norm_`); returns the norm before clipping.
pub fn clip_grad_norm(
    grads: &mut GradStore,
    vars: &[(&'static str, Var)],
    max_norm: f64,
) -> Result<f64> {
    let mut total = 0f64;
    for (_, var) in vars {
        if let Some(g) = grads.get(var.as_tensor()) {
            total += g
                .sqr()?
                .sum_all()?
                .to_dtype(candle_core::DType::F64)?
                .to_scalar::<f64>()?;
        }
    }
    let norm = total.sqrt();
    if norm > max_norm {
        let scale = max_norm / (norm + 1e-6);
        for (_, var) in vars {
            if let Some(g) = grads.remove(var.as_tensor()) {
                grads.insert(var.as_tensor(), (g * scale)?);
            }
        }
    }
    Ok(norm)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn adam_minimises_a_quadratic_and_clipping_bounds_the_norm() {
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
            let mut grads = loss.backward().unwrap();
            let before = clip_grad_norm(&mut grads, &[("x", x.clone())], 1.0).unwrap();
            let after = grads
                .get(x.as_tensor())
                .unwrap()
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
                .sqrt();
            assert!(after <= 1.0 + 1e-4 && (before <= 1.0 || (after - 1.0).abs() < 1e-3));
            opt.step(&grads).unwrap();
        }
        let v = x.as_tensor().to_vec1::<f32>().unwrap();
        assert!(v.iter().all(|a| a.abs() < 0.05), "{v:?}");
    }
}
