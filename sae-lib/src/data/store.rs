//! The on-disk activation store: safetensors shards plus a `meta.json`.
//!
//! Each shard `shard-NNNNN.safetensors` holds
//! - `activations` `(rows, d)` f32 or bf16,
//! - `doc_index` `(rows,)` u32 and `position` `(rows,)` u32: where each row came from,
//! - `tokens` (flat u32) and `token_offsets` `(docs + 1,)` u32: the token ids of every document
//!   whose rows are in the shard (a shard always ends on a document boundary), so the top
//!   activating contexts of a feature can be shown later.
//!
//! The reader memory-maps the shards and serves batches in a true shuffle: a permutation of
//! all rows, different for every (seed, epoch), each row exactly once per epoch. (A store read
//! in order trains worse; SAELens once shipped a cache that was never shuffled, its PR #612.)

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use memmap2::Mmap;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::TokenFilter;
use crate::hooks::HookPoint;
use crate::io;
use crate::{Error, Result};

/// Which tokens of each document were kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum CollectMode {
    /// One row per document: the middle token (`len / 2`), as the tutorial does.
    #[default]
    Middle,
    /// Every real token of every document.
    All,
}

/// One shard's entry in `meta.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardMeta {
    /// File name of the shard inside the store folder (`shard-NNNNN.safetensors`).
    pub file: String,
    /// Rows (activations) in this shard.
    pub rows: usize,
    /// `doc_index` of the first document with rows in this shard.
    pub first_doc: u32,
    /// Documents with rows in this shard.
    pub docs: u32,
}

/// `meta.json`: what the store holds and how it was made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoreMeta {
    /// Hub id, local directory or .gguf path of the model the activations came from, as given.
    pub model: String,
    /// Hub revision of the model (branch, tag or commit sha); `None` for a local model.
    pub revision: Option<String>,
    /// Hook point the activations were read at.
    pub hook: HookPoint,
    /// Tokens kept per document (longer documents were truncated).
    pub context_size: usize,
    /// Hub id (`@revision` unless `main`) or local path of the dataset the documents came from.
    pub dataset: String,
    /// Which tokens of each document became rows.
    pub mode: CollectMode,
    /// Rows (activations) in the store.
    pub rows: usize,
    /// Width of each activation.
    pub d: usize,
    /// `f32` or `bf16`.
    pub dtype: String,
    /// Documents that produced rows.
    pub docs: usize,
    /// Empty documents that were skipped.
    pub skipped_empty: usize,
    /// Tokens left out (each document's first, outliers by norm).
    #[serde(flatten)]
    pub filter: TokenFilter,
    /// Rows the filter's outlier rule left out.
    #[serde(default)]
    pub outliers_dropped: usize,
    /// The shards, in row order.
    pub shards: Vec<ShardMeta>,
}

impl StoreMeta {
    /// The documents collection read from the dataset's start: those that gave rows and the
    /// empty ones skipped on the way.
    pub fn docs_read(&self) -> usize {
        self.docs + self.skipped_empty
    }
}

fn dtype_name(dtype: DType) -> Result<&'static str> {
    match dtype {
        DType::F32 => Ok("f32"),
        DType::BF16 => Ok("bf16"),
        other => Err(Error::Input(format!(
            "activation store dtype must be f32 or bf16, not {other:?}"
        ))),
    }
}

/// Streams rows into shards; memory holds at most one shard.
pub struct StoreWriter {
    dir: PathBuf,
    meta: StoreMeta,
    shard_rows: usize,
    dtype: DType,
    acts: Vec<f32>,
    doc_index: Vec<u32>,
    position: Vec<u32>,
    tokens: Vec<u32>,
    token_offsets: Vec<u32>,
    first_doc: Option<u32>,
    docs_in_shard: u32,
}

impl StoreWriter {
    /// Starts a store in `dir`. `meta` supplies the description; its counts and shards are
    /// filled in as rows arrive. A shard is closed at the first document boundary after
    /// `shard_rows` rows.
    pub fn create(
        dir: &Path,
        mut meta: StoreMeta,
        shard_rows: usize,
        dtype: DType,
    ) -> Result<Self> {
        io::create_dir(dir)?;
        meta.dtype = dtype_name(dtype)?.into();
        meta.rows = 0;
        meta.docs = 0;
        meta.shards.clear();
        Ok(Self {
            dir: dir.to_path_buf(),
            meta,
            shard_rows: shard_rows.max(1),
            dtype,
            acts: Vec::new(),
            doc_index: Vec::new(),
            position: Vec::new(),
            tokens: Vec::new(),
            token_offsets: vec![0],
            first_doc: None,
            docs_in_shard: 0,
        })
    }

    /// Adds one document's rows: `acts` is `(positions.len(), d)` row-major, `tokens` the
    /// document's (truncated) token ids. Documents must arrive in increasing `doc_index`; a
    /// document with no rows is not stored.
    pub fn add_document(
        &mut self,
        doc_index: u32,
        tokens: &[u32],
        positions: &[u32],
        acts: &[f32],
    ) -> Result<()> {
        let d = self.meta.d;
        if positions.is_empty() {
            return Ok(());
        }
        if acts.len() != positions.len() * d {
            return Err(Error::Input(format!(
                "store expects {} values for {} rows of width {d}, got {}",
                positions.len() * d,
                positions.len(),
                acts.len()
            )));
        }
        if let Some(bad) = acts.iter().position(|v| !v.is_finite()) {
            return Err(Error::Input(format!(
                "activation at {} of document {doc_index} (position {}) is {}: the model produced \
                 non-finite values (corrupt weights, or overflow in half precision: try --dtype f32)",
                self.meta.hook,
                positions[bad / d],
                acts[bad]
            )));
        }
        self.first_doc.get_or_insert(doc_index);
        self.acts.extend_from_slice(acts);
        self.doc_index
            .extend(std::iter::repeat_n(doc_index, positions.len()));
        self.position.extend_from_slice(positions);
        self.tokens.extend_from_slice(tokens);
        self.token_offsets.push(self.tokens.len() as u32);
        self.docs_in_shard += 1;
        self.meta.docs += 1;
        if self.position.len() >= self.shard_rows {
            self.flush()?;
        }
        Ok(())
    }

    /// Records rows the outlier filter left out.
    pub fn drop_outliers(&mut self, rows: usize) {
        self.meta.outliers_dropped += rows;
    }

    /// Records a skipped empty document.
    pub fn skip_empty(&mut self) {
        self.meta.skipped_empty += 1;
    }

    /// Rows written or buffered so far.
    pub fn rows(&self) -> usize {
        self.meta.rows + self.position.len()
    }

    fn flush(&mut self) -> Result<()> {
        let rows = self.position.len();
        if rows == 0 {
            return Ok(());
        }
        let dev = Device::Cpu;
        let file = format!("shard-{:05}.safetensors", self.meta.shards.len());
        let u32_tensor = |v: &mut Vec<u32>| {
            let v = std::mem::take(v);
            let n = v.len();
            Tensor::from_vec(v, (n,), &dev)
        };
        let acts = Tensor::from_vec(std::mem::take(&mut self.acts), (rows, self.meta.d), &dev)?
            .to_dtype(self.dtype)?;
        let mut map = HashMap::new();
        map.insert("activations".to_string(), acts);
        map.insert("doc_index".to_string(), u32_tensor(&mut self.doc_index)?);
        map.insert("position".to_string(), u32_tensor(&mut self.position)?);
        map.insert("tokens".to_string(), u32_tensor(&mut self.tokens)?);
        map.insert(
            "token_offsets".to_string(),
            u32_tensor(&mut self.token_offsets)?,
        );
        io::save_safetensors(&self.dir.join(&file), &map)?;
        self.meta.shards.push(ShardMeta {
            file,
            rows,
            first_doc: self.first_doc.take().unwrap_or(0),
            docs: self.docs_in_shard,
        });
        self.meta.rows += rows;
        self.token_offsets = vec![0];
        self.docs_in_shard = 0;
        Ok(())
    }

    /// Writes the last shard and `meta.json`; removes shards of an older store in `dir`.
    pub fn finish(mut self) -> Result<StoreMeta> {
        self.flush()?;
        if self.meta.rows == 0 {
            return Err(Error::Input(format!(
                "no activations were collected ({} empty documents skipped): the dataset is empty",
                self.meta.skipped_empty
            )));
        }
        for entry in std::fs::read_dir(&self.dir)
            .map_err(|e| Error::io("listing", &self.dir, e))?
            .flatten()
        {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("shard-") && !self.meta.shards.iter().any(|s| s.file == name) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        io::write_json(&self.dir.join("meta.json"), &self.meta)?;
        Ok(self.meta)
    }
}

/// A memory-mapped shard.
struct Shard {
    map: Mmap,
    acts_offset: usize,
    doc_index: Vec<u32>,
    position: Vec<u32>,
}

/// Where a row came from: which document, which token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowRef {
    /// Index of the document in the order the collector read them, counting from 0 (empty
    /// documents included).
    pub doc_index: u32,
    /// Position of the token within its document, counting from 0.
    pub position: u32,
}

/// A read-only, memory-mapped activation store.
pub struct ActivationStore {
    dir: PathBuf,
    meta: StoreMeta,
    shards: Vec<Shard>,
    /// First global row of each shard, plus the total at the end.
    row_starts: Vec<usize>,
    elem_bytes: usize,
}

impl ActivationStore {
    /// Opens the store in `dir`, checking every shard against `meta.json`.
    pub fn open(dir: &Path) -> Result<Self> {
        let meta_path = dir.join("meta.json");
        if !meta_path.is_file() {
            return Err(Error::MissingFile {
                what: "activation store (meta.json)",
                path: dir.into(),
                hint: "make one with `sae collect --out DIR`".into(),
            });
        }
        let meta: StoreMeta = io::read_json(&meta_path)?;
        let elem_bytes = match meta.dtype.as_str() {
            "f32" => 4,
            "bf16" => 2,
            other => {
                return Err(Error::Input(format!(
                    "{}: unknown dtype {other}",
                    meta_path.display()
                )))
            }
        };
        let mut shards = Vec::with_capacity(meta.shards.len());
        let mut row_starts = vec![0];
        for s in &meta.shards {
            let path = dir.join(&s.file);
            let corrupt = |m: String| Error::Weights {
                path: path.clone(),
                message: m,
            };
            let file = File::open(&path).map_err(|e| Error::io("opening", &path, e))?;
            // SAFETY: shards are written once, atomically, and never modified in place.
            let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io("mapping", &path, e))?;
            let st = safetensors::SafeTensors::deserialize(&map)
                .map_err(|e| corrupt(format!("corrupt or truncated shard ({e}); collect again")))?;
            let acts = st
                .tensor("activations")
                .map_err(|e| corrupt(e.to_string()))?;
            if acts.shape() != [s.rows, meta.d] {
                return Err(corrupt(format!(
                    "activations have shape {:?}, meta.json says {:?}",
                    acts.shape(),
                    [s.rows, meta.d]
                )));
            }
            let acts_offset = acts.data().as_ptr() as usize - map.as_ptr() as usize;
            let u32s = |name: &str| -> Result<Vec<u32>> {
                let t = st.tensor(name).map_err(|e| corrupt(e.to_string()))?;
                Ok(t.data()
                    .chunks_exact(4)
                    .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect())
            };
            let (doc_index, position) = (u32s("doc_index")?, u32s("position")?);
            drop(st);
            shards.push(Shard {
                map,
                acts_offset,
                doc_index,
                position,
            });
            row_starts.push(row_starts.last().unwrap() + s.rows);
        }
        Ok(Self {
            dir: dir.into(),
            meta,
            shards,
            row_starts,
            elem_bytes,
        })
    }

    /// The store's description, as read from `meta.json`.
    pub fn meta(&self) -> &StoreMeta {
        &self.meta
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.meta.rows
    }

    /// Whether the store has no rows.
    pub fn is_empty(&self) -> bool {
        self.meta.rows == 0
    }

    /// Width of each row.
    pub fn d(&self) -> usize {
        self.meta.d
    }

    fn locate(&self, row: usize) -> (usize, usize) {
        let shard = self.row_starts.partition_point(|&s| s <= row) - 1;
        (shard, row - self.row_starts[shard])
    }

    /// Appends row `row` to `out` as f32.
    fn read_row(&self, row: usize, out: &mut Vec<f32>) {
        let (s, r) = self.locate(row);
        let d = self.meta.d;
        let start = self.shards[s].acts_offset + r * d * self.elem_bytes;
        let bytes = &self.shards[s].map[start..start + d * self.elem_bytes];
        if self.elem_bytes == 4 {
            out.extend(
                bytes
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            );
        } else {
            out.extend(
                bytes
                    .chunks_exact(2)
                    .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()),
            );
        }
    }

    /// The rows `rows` as an f32 tensor `(rows.len(), d)`.
    pub fn gather(&self, rows: &[u32], device: &Device) -> Result<Tensor> {
        let mut data = Vec::with_capacity(rows.len() * self.meta.d);
        for &r in rows {
            if r as usize >= self.len() {
                return Err(Error::Input(format!(
                    "row {r} out of range: the store has {} rows",
                    self.len()
                )));
            }
            self.read_row(r as usize, &mut data);
        }
        Ok(Tensor::from_vec(data, (rows.len(), self.meta.d), device)?)
    }

    /// [`gather`](Self::gather) for a pass that will not come back to these rows soon (scoring,
    /// inspection): the pages read are then dropped from this process's memory, so a pass over
    /// a store larger than RAM keeps its resident set at one chunk, not the whole store (the
    /// kernel keeps them in its page cache while memory allows).
    pub fn gather_once(&self, rows: &[u32], device: &Device) -> Result<Tensor> {
        let t = self.gather(rows, device)?;
        #[cfg(unix)]
        {
            // Per shard, the byte span from the first to the last row read.
            let mut spans = std::collections::BTreeMap::<usize, (usize, usize)>::new();
            for &r in rows {
                let (s, r) = self.locate(r as usize);
                let span = spans.entry(s).or_insert((r, r));
                *span = (span.0.min(r), span.1.max(r));
            }
            let row_bytes = self.meta.d * self.elem_bytes;
            for (s, (first, last)) in spans {
                let shard = &self.shards[s];
                // SAFETY: the rows were copied into `t` above and nothing borrows the map:
                // MADV_DONTNEED on a read-only file mapping only makes later reads fault the
                // pages back in from the file. Advice is a hint, so a failure is ignored.
                let _ = unsafe {
                    shard.map.unchecked_advise_range(
                        memmap2::UncheckedAdvice::DontNeed,
                        shard.acts_offset + first * row_bytes,
                        (last + 1 - first) * row_bytes,
                    )
                };
            }
        }
        Ok(t)
    }

    /// Every row, in order, as one f32 tensor (for stores that fit in memory).
    pub fn to_tensor(&self, device: &Device) -> Result<Tensor> {
        let rows: Vec<u32> = (0..self.len() as u32).collect();
        self.gather(&rows, device)
    }

    /// Where row `row` came from.
    pub fn row_ref(&self, row: usize) -> RowRef {
        let (s, r) = self.locate(row);
        RowRef {
            doc_index: self.shards[s].doc_index[r],
            position: self.shards[s].position[r],
        }
    }

    /// The stored token ids of document `doc_index`.
    pub fn document_tokens(&self, doc_index: u32) -> Result<Vec<u32>> {
        let (i, s) = self
            .meta
            .shards
            .iter()
            .enumerate()
            .find(|(_, s)| doc_index >= s.first_doc && doc_index < s.first_doc + s.docs)
            .ok_or_else(|| Error::Input(format!("document {doc_index} is not in this store")))?;
        let path = self.dir.join(&s.file);
        let st = safetensors::SafeTensors::deserialize(&self.shards[i].map).map_err(|e| {
            Error::Weights {
                path: path.clone(),
                message: e.to_string(),
            }
        })?;
        let read = |name: &str| -> Result<Vec<u32>> {
            let t = st.tensor(name).map_err(|e| Error::Weights {
                path: path.clone(),
                message: e.to_string(),
            })?;
            Ok(t.data()
                .chunks_exact(4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect())
        };
        let (tokens, offsets) = (read("tokens")?, read("token_offsets")?);
        // Every stored document has rows, so the shard's distinct doc indices (in row order)
        // line up with its token offsets.
        let mut docs: Vec<u32> = self.shards[i].doc_index.clone();
        docs.dedup();
        let k = docs.iter().position(|&d| d == doc_index).ok_or_else(|| {
            Error::Input(format!(
                "document {doc_index} produced no rows in this store"
            ))
        })?;
        Ok(tokens[offsets[k] as usize..offsets[k + 1] as usize].to_vec())
    }

    /// Shuffled batches of `batch_size` rows for `epoch` (the last batch may be smaller),
    /// starting at batch `start` (to resume mid-epoch).
    pub fn batches(
        &self,
        batch_size: usize,
        seed: u64,
        epoch: u64,
        start: usize,
        device: &Device,
    ) -> ShuffledBatches<'_> {
        let order = permutation(self.len(), seed, epoch);
        ShuffledBatches {
            store: self,
            order,
            batch_size: batch_size.max(1),
            next: start,
            device: device.clone(),
        }
    }
}

/// A uniformly random permutation of `0..n`, fixed by `(seed, epoch)`.
pub fn permutation(n: usize, seed: u64, epoch: u64) -> Vec<u32> {
    let mut order: Vec<u32> = (0..n as u32).collect();
    // Mix the epoch into the seed so every epoch has its own order.
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    order.shuffle(&mut rng);
    order
}

/// Iterator over one epoch's shuffled batches.
pub struct ShuffledBatches<'a> {
    store: &'a ActivationStore,
    order: Vec<u32>,
    batch_size: usize,
    next: usize,
    device: Device,
}

impl ShuffledBatches<'_> {
    /// Index of the next batch within the epoch.
    pub fn position(&self) -> usize {
        self.next
    }

    /// Number of batches in the epoch.
    pub fn n_batches(&self) -> usize {
        self.order.len().div_ceil(self.batch_size)
    }
}

impl Iterator for ShuffledBatches<'_> {
    type Item = Result<Tensor>;

    fn next(&mut self) -> Option<Self::Item> {
        let start = self.next * self.batch_size;
        if start >= self.order.len() {
            return None;
        }
        let end = (start + self.batch_size).min(self.order.len());
        self.next += 1;
        Some(
            self.store
                .gather_once(&self.order[start..end], &self.device),
        )
    }
}
