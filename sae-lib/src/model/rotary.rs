//! Rotary position embeddings (Su et al. 2021, <https://arxiv.org/abs/2104.09864>) in the
//! "rotate half" layout HF uses for GPT-NeoX and Llama, applied to the first `rotary_dim`
//! channels of each head (GPT-NeoX's `rotary_pct` < 1 leaves the rest untouched).
//!
//! Angles are computed from per-row position ids rather than a fixed table, so padded
//! batches and any sequence length work.

use candle_core::{DType, Device, Tensor, D};

use crate::Result;

/// Inverse frequencies for `rotary_dim` channels.
#[derive(Debug, Clone)]
pub struct Rotary {
    inv_freq: Vec<f32>,
    rotary_dim: usize,
}

/// The cos/sin tables for one batch, each `(batch, 1, seq, rotary_dim)`.
#[derive(Debug, Clone)]
pub struct RotaryAngles {
    cos: Tensor,
    sin: Tensor,
    rotary_dim: usize,
}

impl Rotary {
    /// `rotary_dim` must be even; `base` is HF's `rope_theta` / `rotary_emb_base`.
    pub fn new(rotary_dim: usize, base: f64) -> Self {
        let inv_freq = (0..rotary_dim)
            .step_by(2)
            .map(|i| (1.0 / base.powf(i as f64 / rotary_dim as f64)) as f32)
            .collect();
        Self {
            inv_freq,
            rotary_dim,
        }
    }

    /// Angles for `positions` (one row of position ids per sequence), in `dtype`.
    pub fn angles(
        &self,
        positions: &[Vec<u32>],
        dtype: DType,
        device: &Device,
    ) -> Result<RotaryAngles> {
        let (b, t) = (positions.len(), positions.first().map_or(0, Vec::len));
        let half = self.inv_freq.len();
        // Only the position ids travel to the device; the angles are made there.
        let positions: Vec<f32> = positions.iter().flatten().map(|&p| p as f32).collect();
        let positions = Tensor::from_vec(positions, (b, 1, t, 1), device)?;
        let inv_freq = Tensor::from_slice(&self.inv_freq, (1, 1, 1, half), device)?;
        let freqs = positions.broadcast_mul(&inv_freq)?;
        // cat(freqs, freqs): both halves of the rotated channels share an angle.
        let freqs = Tensor::cat(&[&freqs, &freqs], D::Minus1)?;
        Ok(RotaryAngles {
            cos: freqs.cos()?.to_dtype(dtype)?,
            sin: freqs.sin()?.to_dtype(dtype)?,
            rotary_dim: self.rotary_dim,
        })
    }
}

impl RotaryAngles {
    /// Rotates the first `rotary_dim` channels of `x`, shape `(batch, heads, seq, head_dim)`.
    pub fn apply(&self, x: &Tensor) -> Result<Tensor> {
        let head_dim = x.dim(D::Minus1)?;
        let (rot, pass) = if self.rotary_dim == head_dim {
            (x.clone(), None)
        } else {
            (
                x.narrow(D::Minus1, 0, self.rotary_dim)?,
                Some(x.narrow(D::Minus1, self.rotary_dim, head_dim - self.rotary_dim)?),
            )
        };
        let half = self.rotary_dim / 2;
        let rotated_half = Tensor::cat(
            &[
                &rot.narrow(D::Minus1, half, half)?.neg()?,
                &rot.narrow(D::Minus1, 0, half)?,
            ],
            D::Minus1,
        )?;
        let out = (rot.broadcast_mul(&self.cos)? + rotated_half.broadcast_mul(&self.sin)?)?;
        Ok(match pass {
            Some(pass) => Tensor::cat(&[&out, &pass], D::Minus1)?,
            None => out,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn angles_are_position_times_inverse_frequency() {
        let rotary = Rotary::new(4, 10_000.);
        let positions = [vec![0, 1, 7], vec![2, 0, 0]];
        let angles = rotary.angles(&positions, DType::F32, &Device::Cpu).unwrap();
        let cos = angles.cos.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let mut i = 0;
        for &p in positions.iter().flatten() {
            for half in 0..2 {
                for (k, &f) in [1.0, 0.01f32].iter().enumerate() {
                    assert_eq!(
                        cos[i],
                        (p as f32 * f).cos(),
                        "position {p}, half {half}, {k}"
                    );
                    i += 1;
                }
            }
        }
    }

    #[test]
    fn position_zero_is_identity_and_norm_is_kept() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1., (1, 2, 3, 8), &dev).unwrap();
        let angles = Rotary::new(4, 10_000.)
            .angles(&[vec![0, 1, 7]], DType::F32, &dev)
            .unwrap();
        let y = angles.apply(&x).unwrap();
        let d0 = (y.narrow(2, 0, 1).unwrap() - x.narrow(2, 0, 1).unwrap()).unwrap();
        assert!(
            d0.abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
                < 1e-6
        );
        // Rotation keeps each pair's norm, so the whole vector's norm is unchanged...
        let n = |t: &Tensor| {
            t.sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        };
        assert!((n(&x) - n(&y)).abs() < 1e-3);
        // ...and leaves the non-rotary channels alone.
        let pass = (y.narrow(3, 4, 4).unwrap() - x.narrow(3, 4, 4).unwrap()).unwrap();
        assert_eq!(
            pass.abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap(),
            0.0
        );
    }
}
