//! Where training batches come from: an on-disk activation store or an in-memory tensor (the
//! tutorial's middle-token activations), both read in the same seeded shuffle.

use candle_core::{DType, Device, Tensor};

use crate::data::store::{permutation, ActivationStore};
use crate::{Error, Result};

/// Rows of activations that can be gathered by index.
pub trait ActivationSource {
    /// Number of rows.
    fn len(&self) -> usize;
    /// Width of a row.
    fn d(&self) -> usize;
    /// Rows `rows` as an f32 tensor `(rows.len(), d)` on `device`.
    fn gather(&self, rows: &[u32], device: &Device) -> Result<Tensor>;
    /// [`gather`](Self::gather) for one pass over the rows: a store drops the pages read from
    /// memory, so the pass stays within one chunk's memory however large the store is.
    fn gather_once(&self, rows: &[u32], device: &Device) -> Result<Tensor> {
        self.gather(rows, device)
    }
}

impl ActivationSource for ActivationStore {
    fn len(&self) -> usize {
        ActivationStore::len(self)
    }
    fn d(&self) -> usize {
        ActivationStore::d(self)
    }
    fn gather(&self, rows: &[u32], device: &Device) -> Result<Tensor> {
        ActivationStore::gather(self, rows, device)
    }
    fn gather_once(&self, rows: &[u32], device: &Device) -> Result<Tensor> {
        ActivationStore::gather_once(self, rows, device)
    }
}

impl ActivationSource for Tensor {
    fn len(&self) -> usize {
        self.dims().first().copied().unwrap_or(0)
    }
    fn d(&self) -> usize {
        self.dims().get(1).copied().unwrap_or(0)
    }
    fn gather(&self, rows: &[u32], device: &Device) -> Result<Tensor> {
        if self.rank() != 2 {
            return Err(Error::Input(format!(
                "activations must be (n, d), got {:?}",
                self.dims()
            )));
        }
        let idx = Tensor::from_slice(rows, rows.len(), self.device())?;
        Ok(self
            .index_select(&idx, 0)?
            .to_dtype(DType::F32)?
            .to_device(device)?)
    }
}

/// The deterministic batch sequence of a training run: step `s` always gets the same rows for
/// the same seed, so a resumed run sees exactly the batches an uninterrupted one would.
pub struct BatchPlan {
    n: usize,
    batch_size: usize,
    seed: u64,
    cached: Option<(u64, Vec<u32>)>,
}

impl BatchPlan {
    pub fn new(n: usize, batch_size: usize, seed: u64) -> Self {
        Self {
            n,
            batch_size: batch_size.clamp(1, n.max(1)),
            seed,
            cached: None,
        }
    }

    /// Rows per batch (the last batch of an epoch may be shorter).
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// Batches per epoch (the last one may be short).
    pub fn batches_per_epoch(&self) -> u64 {
        self.n.div_ceil(self.batch_size) as u64
    }

    /// Row indices of step `step`.
    pub fn rows(&mut self, step: u64) -> &[u32] {
        let per_epoch = self.batches_per_epoch();
        let (epoch, i) = (step / per_epoch, (step % per_epoch) as usize);
        if self.cached.as_ref().map(|(e, _)| *e) != Some(epoch) {
            self.cached = Some((epoch, permutation(self.n, self.seed, epoch)));
        }
        let order = &self.cached.as_ref().expect("cached above").1;
        let start = i * self.batch_size;
        &order[start..(start + self.batch_size).min(self.n)]
    }
}
