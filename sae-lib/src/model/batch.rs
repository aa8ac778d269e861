//! Token batches with padding: the attention mask, the position ids and the additive
//! attention bias every model in this crate shares.

use candle_core::{DType, Device, Tensor};

use crate::{Error, Result};

/// Which side of a short sequence the padding goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Padding {
    /// Real tokens first, padding after (the HF default for training).
    #[default]
    Right,
    /// Padding first, real tokens after (the HF default for generation).
    Left,
}

/// A `(batch, seq)` block of token ids with its attention mask (1 = real token).
#[derive(Debug, Clone)]
pub struct TokenBatch {
    /// `(batch, seq)` u32 token ids; padded positions hold `pad_id`.
    pub input_ids: Tensor,
    mask: Vec<Vec<u8>>,
}

impl TokenBatch {
    /// Pads `sequences` to the longest one. Empty sequences are rejected: a model cannot
    /// produce an activation for a prompt with no tokens.
    pub fn from_sequences(
        sequences: &[Vec<u32>],
        padding: Padding,
        pad_id: u32,
        device: &Device,
    ) -> Result<Self> {
        if sequences.is_empty() {
            return Err(Error::Input(
                "cannot build a batch from zero sequences".into(),
            ));
        }
        if let Some(i) = sequences.iter().position(|s| s.is_empty()) {
            return Err(Error::Input(format!(
                "sequence {i} of the batch is empty (an empty prompt?): skip empty prompts before \
                 running the model"
            )));
        }
        let seq_len = sequences.iter().map(Vec::len).max().unwrap_or(0);
        let mut ids = Vec::with_capacity(sequences.len() * seq_len);
        let mut mask = Vec::with_capacity(sequences.len());
        for s in sequences {
            let pad = seq_len - s.len();
            let (row_ids, row_mask): (Vec<u32>, Vec<u8>) = match padding {
                Padding::Right => (
                    s.iter()
                        .copied()
                        .chain(std::iter::repeat_n(pad_id, pad))
                        .collect(),
                    std::iter::repeat_n(1, s.len())
                        .chain(std::iter::repeat_n(0, pad))
                        .collect(),
                ),
                Padding::Left => (
                    std::iter::repeat_n(pad_id, pad)
                        .chain(s.iter().copied())
                        .collect(),
                    std::iter::repeat_n(0, pad)
                        .chain(std::iter::repeat_n(1, s.len()))
                        .collect(),
                ),
            };
            ids.extend(row_ids);
            mask.push(row_mask);
        }
        let input_ids = Tensor::from_vec(ids, (sequences.len(), seq_len), device)?;
        Ok(Self { input_ids, mask })
    }

    /// A batch from an id tensor `(batch, seq)` and an optional 0/1 mask of the same shape.
    pub fn new(input_ids: &Tensor, attention_mask: Option<&Tensor>) -> Result<Self> {
        let (b, t) = input_ids.dims2()?;
        let mask = match attention_mask {
            Some(m) => {
                if m.dims() != [b, t] {
                    return Err(Error::Input(format!(
                        "attention mask shape {:?} does not match input ids {:?}",
                        m.dims(),
                        [b, t]
                    )));
                }
                m.to_dtype(DType::U8)?.to_vec2::<u8>()?
            }
            None => vec![vec![1; t]; b],
        };
        Ok(Self {
            input_ids: input_ids.to_dtype(DType::U32)?,
            mask,
        })
    }

    /// `(batch, seq)`.
    pub fn dims(&self) -> (usize, usize) {
        (self.mask.len(), self.mask.first().map_or(0, Vec::len))
    }

    /// The 0/1 attention mask, row by row.
    pub fn mask(&self) -> &[Vec<u8>] {
        &self.mask
    }

    /// Position ids: each real token's index among the real tokens of its row, so a left-padded
    /// sequence gets the same positions as it would alone (HF's `cumsum(mask) - 1`, clamped at 0).
    pub fn positions(&self) -> Vec<Vec<u32>> {
        self.mask
            .iter()
            .map(|row| {
                let mut seen = 0u32;
                row.iter()
                    .map(|&m| {
                        seen += m as u32;
                        seen.saturating_sub(1)
                    })
                    .collect()
            })
            .collect()
    }

    /// Additive attention bias `(batch, 1, seq, seq)`: 0 where query `i` may attend to key `j`
    /// (`j <= i` and `j` is a real token), a large negative number elsewhere. Finite, so a
    /// padded query row that can see nothing still yields a (meaningless) finite softmax.
    pub fn attention_bias(&self, device: &Device) -> Result<Tensor> {
        let (b, t) = self.dims();
        let blocked = f32::MIN / 2.0;
        let mut bias = Vec::with_capacity(b * t * t);
        for row in &self.mask {
            for i in 0..t {
                bias.extend((0..t).map(|j| if j <= i && row[j] == 1 { 0.0 } else { blocked }));
            }
        }
        Ok(Tensor::from_vec(bias, (b, 1, t, t), device)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn left_padding_positions_start_at_zero() {
        let b =
            TokenBatch::from_sequences(&[vec![5, 6, 7], vec![8]], Padding::Left, 0, &Device::Cpu)
                .unwrap();
        assert_eq!(b.positions(), vec![vec![0, 1, 2], vec![0, 0, 0]]);
        assert_eq!(
            b.input_ids.to_vec2::<u32>().unwrap(),
            vec![vec![5, 6, 7], vec![0, 0, 8]]
        );
        let r =
            TokenBatch::from_sequences(&[vec![5, 6, 7], vec![8]], Padding::Right, 0, &Device::Cpu)
                .unwrap();
        assert_eq!(r.positions(), vec![vec![0, 1, 2], vec![0, 0, 0]]);
        assert_eq!(r.mask()[1], vec![1, 0, 0]);
    }

    #[test]
    fn bias_is_causal_and_masks_padding() {
        let b = TokenBatch::from_sequences(&[vec![1, 2], vec![3]], Padding::Left, 0, &Device::Cpu)
            .unwrap();
        let bias: Vec<Vec<Vec<f32>>> = b
            .attention_bias(&Device::Cpu)
            .unwrap()
            .squeeze(1)
            .unwrap()
            .to_vec3()
            .unwrap();
        let open = |v: f32| v == 0.0;
        // Row 0: causal (query 0 cannot see key 1; query 1 sees both).
        assert!(open(bias[0][1][0]) && open(bias[0][1][1]) && !open(bias[0][0][1]));
        // Row 1 is left-padded: nobody attends to the pad at key 0.
        assert!(!open(bias[1][1][0]) && open(bias[1][1][1]));
    }

    #[test]
    fn empty_prompt_is_a_clear_error() {
        let e = TokenBatch::from_sequences(&[vec![1], vec![]], Padding::Right, 0, &Device::Cpu)
            .unwrap_err();
        assert!(e.to_string().contains("empty"));
    }
}
