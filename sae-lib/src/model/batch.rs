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

/// A `(batch, seq)` block of token ids with its attention mask (1 = real token). A row may
/// pack several sequences end to end; each then sees only itself, at its own positions.
#[derive(Debug, Clone)]
pub struct TokenBatch {
    /// `(batch, seq)` u32 token ids; padded positions hold `pad_id`.
    pub input_ids: Tensor,
    mask: Vec<Vec<u8>>,
    /// Per token, which of its row's sequences it belongs to: 1, 2, ...; 0 for padding.
    segments: Vec<Vec<u16>>,
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
        let rows: Vec<Vec<&[u32]>> = sequences.iter().map(|s| vec![s.as_slice()]).collect();
        Self::packed(&rows, padding, pad_id, device)
    }

    /// Packs each row's sequences end to end, then pads the rows to the longest. The
    /// attention bias is block-diagonal and positions restart for each sequence, so every
    /// sequence gets the activations it would get alone (up to float rounding).
    pub fn packed(
        rows: &[Vec<&[u32]>],
        padding: Padding,
        pad_id: u32,
        device: &Device,
    ) -> Result<Self> {
        if rows.is_empty() {
            return Err(Error::Input(
                "cannot build a batch from zero sequences".into(),
            ));
        }
        if let Some(i) = rows
            .iter()
            .position(|r| r.is_empty() || r.iter().any(|s| s.is_empty()))
        {
            return Err(Error::Input(format!(
                "sequence {i} of the batch is empty (an empty prompt?): skip empty prompts before \
                 running the model"
            )));
        }
        let row_len = |r: &Vec<&[u32]>| r.iter().map(|s| s.len()).sum::<usize>();
        let seq_len = rows.iter().map(row_len).max().unwrap_or(0);
        let mut ids = Vec::with_capacity(rows.len() * seq_len);
        let mut segments = Vec::with_capacity(rows.len());
        for row in rows {
            let pad = seq_len - row_len(row);
            let real_ids = row.iter().flat_map(|s| s.iter().copied());
            let real_segments = (1u16..)
                .zip(row)
                .flat_map(|(n, s)| std::iter::repeat_n(n, s.len()));
            let pads = || std::iter::repeat_n(pad_id, pad);
            let pad_segments = || std::iter::repeat_n(0u16, pad);
            match padding {
                Padding::Right => {
                    ids.extend(real_ids.chain(pads()));
                    segments.push(real_segments.chain(pad_segments()).collect());
                }
                Padding::Left => {
                    ids.extend(pads().chain(real_ids));
                    segments.push(pad_segments().chain(real_segments).collect());
                }
            }
        }
        let input_ids = Tensor::from_vec(ids, (rows.len(), seq_len), device)?;
        Ok(Self::from_segments(input_ids, segments))
    }

    fn from_segments(input_ids: Tensor, segments: Vec<Vec<u16>>) -> Self {
        let mask = segments
            .iter()
            .map(|row| row.iter().map(|&s| u8::from(s != 0)).collect())
            .collect();
        Self {
            input_ids,
            mask,
            segments,
        }
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
        let segments = mask
            .iter()
            .map(|row| row.iter().map(|&m| u16::from(m != 0)).collect())
            .collect();
        Ok(Self::from_segments(
            input_ids.to_dtype(DType::U32)?,
            segments,
        ))
    }

    /// `(batch, seq)`.
    pub fn dims(&self) -> (usize, usize) {
        (self.mask.len(), self.mask.first().map_or(0, Vec::len))
    }

    /// The 0/1 attention mask, row by row.
    pub fn mask(&self) -> &[Vec<u8>] {
        &self.mask
    }

    /// Position ids: each real token's index within its sequence, so a left-padded or packed
    /// sequence gets the same positions as it would alone (HF's `cumsum(mask) - 1` for one
    /// sequence per row; padding repeats the last position, or 0 before any token).
    pub fn positions(&self) -> Vec<Vec<u32>> {
        self.segments
            .iter()
            .map(|row| {
                // `pos` counts the current sequence's tokens so far.
                let (mut current, mut pos) = (0u16, 0u32);
                row.iter()
                    .map(|&s| {
                        if s == 0 {
                            return pos.saturating_sub(1);
                        }
                        if s != current {
                            (current, pos) = (s, 0);
                        }
                        pos += 1;
                        pos - 1
                    })
                    .collect()
            })
            .collect()
    }

    /// Additive attention bias `(batch, 1, seq, seq)`: 0 where query `i` may attend to key `j`
    /// (`j <= i`, `j` is a real token of `i`'s own sequence), a large negative number elsewhere.
    /// Finite, so a padded query row still yields a (meaningless) finite softmax; padded
    /// queries see every earlier real token.
    pub fn attention_bias(&self, device: &Device) -> Result<Tensor> {
        if device.is_cpu() && !crate::ops::stock_ops() {
            return self.attention_bias_on_host();
        }
        // Elsewhere it is built on the device from the `(batch, seq)` segment ids, so a GPU
        // receives 4 bytes a token rather than 4 a (query, key) pair: 4 MB per batch of
        // 64 x 128.
        let (b, t) = self.dims();
        let segments: Vec<u32> = self.segments.iter().flatten().map(|&s| s.into()).collect();
        let segments = Tensor::from_vec(segments, (b, 1, t), device)?;
        let (query, key) = (segments.unsqueeze(3)?, segments.unsqueeze(2)?);
        let position = Tensor::arange(0u32, t as u32, device)?;
        // 0/1 masks combined in u8: `*` is and, `maximum` is or.
        let causal = position
            .unsqueeze(0)?
            .broadcast_le(&position.unsqueeze(1)?)?;
        let own_sequence = query
            .broadcast_eq(&key)?
            .broadcast_maximum(&query.eq(0u32)?)?;
        let open = own_sequence
            .broadcast_mul(&key.ne(0u32)?)?
            .broadcast_mul(&causal)?;
        // open * -BLOCKED + BLOCKED: exactly 0 where open, BLOCKED elsewhere.
        let blocked = f64::from(BLOCKED);
        Ok(open.to_dtype(DType::F32)?.affine(-blocked, blocked)?)
    }

    /// [`Self::attention_bias`] written out element by element: ten times faster than the
    /// tensor ops on a CPU.
    fn attention_bias_on_host(&self) -> Result<Tensor> {
        let (b, t) = self.dims();
        let mut bias = Vec::with_capacity(b * t * t);
        for row in &self.segments {
            for (i, &si) in row.iter().enumerate() {
                bias.extend(row.iter().enumerate().map(|(j, &sj)| {
                    let open = j <= i && sj != 0 && (si == 0 || sj == si);
                    if open {
                        0.0
                    } else {
                        BLOCKED
                    }
                }));
            }
        }
        Ok(Tensor::from_vec(bias, (b, 1, t, t), &Device::Cpu)?)
    }
}

/// The attention bias where a query may not look: finite, and far below any real score.
const BLOCKED: f32 = f32::MIN / 2.0;

/// `bias` `(batch, 1, seq, seq)` further closed where a key is `window` or more places before
/// its query: sliding-window attention (Gemma 2's every other layer, Mistral's), as
/// transformers masks it, by place in the row. `None` leaves it as it is.
pub(crate) fn windowed(bias: &Tensor, window: Option<usize>) -> Result<Tensor> {
    let t = bias.dim(3)?;
    let Some(window) = window.filter(|&w| t > w) else {
        return Ok(bias.clone());
    };
    let band: Vec<f32> = (0..t * t)
        .map(|ij| {
            let (i, j) = (ij / t, ij % t);
            if i >= j + window {
                BLOCKED
            } else {
                0.0
            }
        })
        .collect();
    let band = Tensor::from_vec(band, (t, t), bias.device())?;
    Ok(bias.broadcast_add(&band)?.maximum(f64::from(BLOCKED))?)
}

/// Checks a config's `layer_types` (transformers 5: `sliding_attention` or `full_attention`
/// per layer), when it has them.
pub(crate) fn check_layer_types(
    types: Option<&[String]>,
    layers: usize,
) -> std::result::Result<(), String> {
    let Some(types) = types else {
        return Ok(());
    };
    if types.len() != layers {
        return Err(format!(
            "layer_types has {} entries for {layers} layers",
            types.len()
        ));
    }
    match types
        .iter()
        .find(|t| !matches!(t.as_str(), "sliding_attention" | "full_attention"))
    {
        Some(t) => Err(format!("layer type `{t}` is not supported")),
        None => Ok(()),
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

    /// The attention bias as `[row][query][key]`.
    fn bias_of(batch: &TokenBatch) -> Vec<Vec<Vec<f32>>> {
        batch
            .attention_bias(&Device::Cpu)
            .unwrap()
            .squeeze(1)
            .unwrap()
            .to_vec3()
            .unwrap()
    }

    #[test]
    fn bias_is_causal_and_masks_padding() {
        let b = TokenBatch::from_sequences(&[vec![1, 2], vec![3]], Padding::Left, 0, &Device::Cpu)
            .unwrap();
        let bias = bias_of(&b);
        let open = |v: f32| v == 0.0;
        // Row 0: causal (query 0 cannot see key 1; query 1 sees both).
        assert!(open(bias[0][1][0]) && open(bias[0][1][1]) && !open(bias[0][0][1]));
        // Row 1 is left-padded: nobody attends to the pad at key 0.
        assert!(!open(bias[1][1][0]) && open(bias[1][1][1]));
    }

    #[test]
    fn packed_sequences_restart_positions_and_see_only_themselves() {
        let (a, b) = (vec![5, 6, 7], vec![8, 9]);
        let batch = TokenBatch::packed(
            &[vec![a.as_slice(), b.as_slice()], vec![b.as_slice()]],
            Padding::Right,
            0,
            &Device::Cpu,
        )
        .unwrap();
        assert_eq!(
            batch.positions(),
            vec![vec![0, 1, 2, 0, 1], vec![0, 1, 1, 1, 1]]
        );
        assert_eq!(batch.mask()[1], vec![1, 1, 0, 0, 0]);
        let bias = bias_of(&batch);
        let open = |i: usize, j: usize| bias[0][i][j] == 0.0;
        // The second sequence (columns 3, 4) sees itself causally, never the first.
        assert!(open(3, 3) && open(4, 3) && open(4, 4) && !open(3, 4));
        assert!((0..3).all(|j| !open(3, j) && !open(4, j)));
        // The first sees only itself.
        assert!(open(2, 0) && open(2, 2) && !open(2, 3));
    }

    #[test]
    fn the_bias_a_gpu_builds_matches_the_host_loop() {
        let (a, b, c) = (vec![5, 6, 7], vec![8, 9], vec![4]);
        let rows = [
            vec![a.as_slice(), b.as_slice()],
            vec![b.as_slice()],
            vec![c.as_slice(), c.as_slice(), b.as_slice()],
        ];
        for padding in [Padding::Left, Padding::Right] {
            let batch = TokenBatch::packed(&rows, padding, 0, &Device::Cpu).unwrap();
            let host = bias_of(&batch);
            let ops = crate::ops::with_stock_ops(|| bias_of(&batch));
            assert_eq!(host, ops, "{padding:?}");
        }
    }

    #[test]
    fn empty_prompt_is_a_clear_error() {
        let e = TokenBatch::from_sequences(&[vec![1], vec![]], Padding::Right, 0, &Device::Cpu)
            .unwrap_err();
        assert!(e.to_string().contains("empty"));
    }
}
