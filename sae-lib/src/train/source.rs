//! Where training batches come from. The trainer asks a [`BatchSource`] for the rows of step
//! `s` and nothing else: [`StoreBatches`] reads them from an on-disk activation store or an
//! in-memory tensor (the tutorial's middle-token activations) in a seeded shuffle, and
//! [`super::stream`] makes them from a model running over a dataset.

use candle_core::{DType, Device, Tensor};

use crate::data::store::{permutation, ActivationStore};
use crate::{Error, Result};

/// Rows of activations that can be gathered by index.
pub trait ActivationSource {
    /// Number of rows.
    fn len(&self) -> usize;
    /// Whether there are no rows.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
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

/// Rows `range` of another source, as a source of their own: a store's first rows to train on
/// and its last to measure on, say.
pub struct RowRange<'a> {
    data: &'a dyn ActivationSource,
    start: u32,
    len: usize,
}

impl<'a> RowRange<'a> {
    /// Rows `range` of `data`; the range must lie within it.
    pub fn new(data: &'a dyn ActivationSource, range: std::ops::Range<usize>) -> Result<Self> {
        if range.start > range.end || range.end > data.len() {
            return Err(Error::Input(format!(
                "rows {range:?} are not within the source's {} rows",
                data.len()
            )));
        }
        Ok(Self {
            data,
            start: range.start as u32,
            len: range.len(),
        })
    }

    fn shifted(&self, rows: &[u32]) -> Vec<u32> {
        rows.iter().map(|r| r + self.start).collect()
    }
}

impl ActivationSource for RowRange<'_> {
    fn len(&self) -> usize {
        self.len
    }
    fn d(&self) -> usize {
        self.data.d()
    }
    fn gather(&self, rows: &[u32], device: &Device) -> Result<Tensor> {
        self.data.gather(&self.shifted(rows), device)
    }
    fn gather_once(&self, rows: &[u32], device: &Device) -> Result<Tensor> {
        self.data.gather_once(&self.shifted(rows), device)
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

/// What a trainer reads: the rows of each step, and a sample for its initialisation. Step `s`
/// must always get the same rows for the same settings, so a resumed run is exact.
pub trait BatchSource {
    /// Width of a row.
    fn d(&self) -> usize;
    /// Rows per step (a store's last batch of an epoch may be shorter).
    fn batch_size(&self) -> usize;
    /// The rows of step `step`, unscaled, as an f32 tensor `(rows, d)` on `device`.
    fn batch(&mut self, step: u64, device: &Device) -> Result<Tensor>;
    /// Up to `n` rows drawn with `seed`, for the input scale and `b_dec`'s initialisation.
    fn sample(&mut self, n: usize, seed: u64, device: &Device) -> Result<Tensor>;
}

/// Batches of an [`ActivationSource`] in the seeded shuffle of a [`BatchPlan`].
pub struct StoreBatches<'a> {
    data: &'a dyn ActivationSource,
    plan: BatchPlan,
}

impl<'a> StoreBatches<'a> {
    /// Batches of `batch_size` rows of `data`, shuffled by `seed`; an empty source is an error.
    pub fn new(data: &'a dyn ActivationSource, batch_size: usize, seed: u64) -> Result<Self> {
        if data.is_empty() {
            return Err(Error::Training("no activations to train on".into()));
        }
        Ok(Self {
            plan: BatchPlan::new(data.len(), batch_size, seed),
            data,
        })
    }
}

impl BatchSource for StoreBatches<'_> {
    fn d(&self) -> usize {
        self.data.d()
    }
    fn batch_size(&self) -> usize {
        self.plan.batch_size()
    }
    fn batch(&mut self, step: u64, device: &Device) -> Result<Tensor> {
        let rows = self.plan.rows(step).to_vec();
        self.data.gather(&rows, device)
    }
    fn sample(&mut self, n: usize, seed: u64, device: &Device) -> Result<Tensor> {
        // Its own permutation (epoch u64::MAX), apart from the training order.
        let order = permutation(self.data.len(), seed, u64::MAX);
        self.data.gather(&order[..n.min(order.len())], device)
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
    /// The plan for `n` rows in batches of `batch_size` (at least 1, at most `n`).
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
