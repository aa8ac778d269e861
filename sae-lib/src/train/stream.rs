//! Training straight from the model. Documents stream in, are packed and run through the model
//! up to the deepest hook asked for, and their activations fill one shuffle buffer per hook;
//! every SAE on a hook reads the same batch of a step, so any number of SAEs on any number of
//! hooks cost one forward pass per token.
//!
//! The buffer works in generations. A generation reads documents from where the last one
//! stopped until each buffer holds at least `buffer_rows` rows, shuffles them with
//! `(seed, generation)`, and serves them as whole batches; the rows past the last whole batch
//! (fewer than one batch) are dropped. Every row is used once, and a batch mixes the documents
//! of a whole buffer. A generation depends only on the document cursor it started at, so
//! resuming replays the current generation's documents (at most one buffer of forward passes)
//! instead of saving the buffer: `stream.json` logs where each generation started.

use std::cell::RefCell;
use std::iter::{Enumerate, Peekable, Take};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::source::BatchSource;
use crate::collect::{forwarded, read_pool, run_pool, CollectConfig};
use crate::data::store::permutation;
use crate::hooks::HookPoint;
use crate::model::Model;
use crate::progress::Progress;
use crate::tokenizer::Tokenizer;
use crate::{io, Error, Result};

/// A boxed stream of documents.
pub type DocIter<'m> = Box<dyn Iterator<Item = Result<String>> + 'm>;
/// Opens the dataset from its first document (called again for each pass over it).
pub type OpenDocs<'m> = Box<dyn FnMut() -> Result<DocIter<'m>> + 'm>;

/// The default shuffle buffer, in rows per hook (see BENCHMARKS.md, "Streaming").
pub const DEFAULT_BUFFER_ROWS: usize = 1 << 18;

/// What the stream reads and how it mixes it.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamConfig {
    /// Hooks to read, each with its own buffer.
    pub hooks: Vec<HookPoint>,
    /// Tokenising, packing and forward batching as `sae collect` does them (its `hook`,
    /// `shard_rows` and `dtype` are not used; `max_docs` limits each pass over the dataset).
    pub collect: CollectConfig,
    /// Rows each buffer fills to before it is shuffled and served. It fills a pool of
    /// documents at a time (eight forward batches, 32,768 tokens at the defaults), so a
    /// smaller buffer holds one pool.
    pub buffer_rows: usize,
    /// Rows per training step.
    pub batch_size: usize,
    /// Steps the stream will serve, when known: a generation then reads no more rows than the
    /// remaining steps use (a short run need not fill a whole buffer).
    pub steps: Option<u64>,
    /// Seeds the shuffle of each buffer, so a resumed stream serves the same batches.
    pub seed: u64,
}

impl StreamConfig {
    /// Everything that must be equal for a resumed stream to serve the same batches.
    fn fingerprint(&self) -> String {
        format!("{self:?}")
    }
}

/// Where the next document is: its index within pass `pass` over the dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Cursor {
    /// Passes over the dataset completed before this one.
    pub pass: u64,
    /// Index of the document within the pass, from 0.
    pub doc: u64,
}

/// One generation of the buffer, as `stream.json` logs it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Generation {
    /// Its number, from 0.
    pub index: u64,
    /// The training step its first batch serves.
    pub first_step: u64,
    /// Where its documents start.
    pub start: Cursor,
    /// Rows it holds per hook.
    pub rows: u64,
    /// The whole batches those rows make.
    pub batches: u64,
    /// Documents it read (empty ones included).
    pub docs: u64,
}

/// `stream.json`: the settings and the generations so far.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StreamLog {
    settings: String,
    generations: Vec<Generation>,
}

/// Counters of a stream, for logs and benchmarks.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StreamStats {
    /// Tokens run through the model (replays after a resume included).
    pub tokens_forwarded: u64,
    /// Documents read.
    pub docs_read: u64,
    /// Passes begun over the dataset.
    pub passes: u64,
    /// Batches served.
    pub batches: u64,
    /// The sum over served batches of the distinct documents in each (see
    /// [`mean_docs_per_batch`](Self::mean_docs_per_batch)).
    pub distinct_docs: u64,
    /// Wall time spent reading, tokenising and running the model.
    pub fill_seconds: f64,
    /// Tokens the outlier filter left out (once per token, whatever the number of hooks).
    #[serde(default)]
    pub outliers_dropped: u64,
}

impl StreamStats {
    /// Mean number of distinct documents in a batch: how well the buffer mixes (a batch of
    /// consecutive tokens would hold a handful; a true shuffle, nearly one per row when the
    /// dataset is large).
    pub fn mean_docs_per_batch(&self) -> f64 {
        self.distinct_docs as f64 / self.batches.max(1) as f64
    }
}

type Docs<'m> = Peekable<Enumerate<Take<DocIter<'m>>>>;

/// Activations of one or more hooks, streamed from a model over a dataset into shuffle
/// buffers and served one step's batch at a time (see the module docs).
pub struct ActivationStream<'m> {
    model: &'m Model,
    tokenizer: &'m Tokenizer,
    open: OpenDocs<'m>,
    cfg: StreamConfig,
    docs: Option<Docs<'m>>,
    cursor: Cursor,
    pass_rows: u64,
    /// Documents in one pass over the dataset, once a pass has ended.
    pass_docs: Option<u64>,
    /// Per hook, the generation's rows, row-major.
    buffers: Vec<Vec<f32>>,
    /// Per row, the serial number of its document (for the mixing statistic).
    row_doc: Vec<u64>,
    order: Vec<u32>,
    generation: Option<Generation>,
    /// Batches of the current generation served so far.
    served: u64,
    /// The next step to serve, and the last batch served (one tensor per hook, on the CPU).
    step: u64,
    current: Option<(u64, Vec<Tensor>)>,
    log: Vec<Generation>,
    log_path: Option<PathBuf>,
    stats: StreamStats,
}

impl<'m> ActivationStream<'m> {
    /// A stream at step 0. `open` is called once per pass over the dataset.
    pub fn new(
        model: &'m Model,
        tokenizer: &'m Tokenizer,
        open: OpenDocs<'m>,
        cfg: StreamConfig,
    ) -> Result<Self> {
        cfg.collect.validate()?;
        if cfg.hooks.is_empty() {
            return Err(Error::Input("streaming needs at least one hook".into()));
        }
        for (i, hook) in cfg.hooks.iter().enumerate() {
            hook.check(model.n_layers())?;
            if cfg.hooks[..i].contains(hook) {
                return Err(Error::Input(format!("hook {hook} is given twice")));
            }
        }
        if cfg.batch_size == 0 || cfg.buffer_rows < cfg.batch_size {
            return Err(Error::Input(format!(
                "the shuffle buffer ({} rows) must hold at least one batch ({} rows); raise \
                 --buffer-rows",
                cfg.buffer_rows, cfg.batch_size
            )));
        }
        Ok(Self {
            buffers: vec![Vec::new(); cfg.hooks.len()],
            model,
            tokenizer,
            open,
            cfg,
            docs: None,
            cursor: Cursor::default(),
            pass_rows: 0,
            pass_docs: None,
            row_doc: Vec::new(),
            order: Vec::new(),
            generation: None,
            served: 0,
            step: 0,
            current: None,
            log: Vec::new(),
            log_path: None,
            stats: StreamStats::default(),
        })
    }

    /// Logs each generation to `path` (`stream.json`) as it starts, so that a run can resume.
    pub fn log_to(mut self, path: &Path) -> Self {
        self.log_path = Some(path.to_path_buf());
        self
    }

    /// Continues a stream logged at `path` so that its next batch is step `step`'s. The
    /// settings must be the logged run's; the generation holding `step` is rebuilt by running
    /// its documents again.
    pub fn resume(mut self, path: &Path, step: u64) -> Result<Self> {
        let log: StreamLog = io::read_json(path)?;
        if log.settings != self.cfg.fingerprint() {
            return Err(Error::Input(format!(
                "{} was written with other stream settings (hooks, buffer, batch, seed, \
                 tokenisation): resume with the flags of the interrupted run\n  logged: {}\n  \
                 now:    {}",
                path.display(),
                log.settings,
                self.cfg.fingerprint()
            )));
        }
        self.log = log.generations;
        self.pass_docs = pass_length(&self.log);
        self.log_path = Some(path.to_path_buf());
        let Some(g) = self
            .log
            .iter()
            .rev()
            .find(|g| g.first_step <= step)
            .cloned()
        else {
            return Ok(self); // nothing was served yet
        };
        self.fill(g.index, g.first_step, g.start)?;
        self.served = step - g.first_step;
        self.step = step;
        Ok(self)
    }

    /// Width of a row of the stream's `hook`-th hook (the model's `d_model`, but at
    /// `attn.hook_z`).
    pub fn width(&self, hook: usize) -> usize {
        self.model.width(self.cfg.hooks[hook])
    }

    /// The hooks it serves rows of.
    pub fn hooks(&self) -> &[HookPoint] {
        &self.cfg.hooks
    }

    /// Its settings.
    pub fn config(&self) -> &StreamConfig {
        &self.cfg
    }

    /// The next step to be served.
    pub fn step(&self) -> u64 {
        self.step
    }

    /// Its counters so far.
    pub fn stats(&self) -> &StreamStats {
        &self.stats
    }

    /// How many of the dataset's first documents the stream has read (the whole pass once it
    /// has begun another): the most an SAE trained on it has seen, so evaluation can start
    /// after them. It counts a generation's documents as it fills, before all its rows train.
    pub fn docs_reached(&self) -> u64 {
        match self.pass_docs {
            Some(n) if self.cursor.pass > 0 => n,
            _ => self.cursor.doc,
        }
    }

    /// The generations so far.
    pub fn generations(&self) -> &[Generation] {
        &self.log
    }

    /// The batch of step `step`, one `(batch_size, d)` tensor per hook. Steps are served in
    /// order; the last one is kept, so every SAE of a step reads the same rows.
    pub fn batch(&mut self, step: u64) -> Result<&[Tensor]> {
        let cached = self.current.as_ref().is_some_and(|(s, _)| *s == step);
        if !cached {
            if step != self.step {
                return Err(Error::Training(format!(
                    "the stream is at step {} and cannot serve step {step}: every SAE of a \
                     stream must train in step with it",
                    self.step
                )));
            }
            self.ensure_generation()?;
            let b = self.cfg.batch_size;
            let start = self.served as usize * b;
            let rows = &self.order[start..start + b];
            let mut docs: Vec<u64> = rows.iter().map(|&r| self.row_doc[r as usize]).collect();
            docs.sort_unstable();
            docs.dedup();
            self.stats.distinct_docs += docs.len() as u64;
            self.stats.batches += 1;
            let tensors = self
                .buffers
                .iter()
                .enumerate()
                .map(|(hook, buf)| gather_rows(buf, rows, self.width(hook)))
                .collect::<Result<Vec<_>>>()?;
            self.served += 1;
            self.step += 1;
            self.current = Some((step, tensors));
        }
        Ok(&self.current.as_ref().expect("set above").1)
    }

    /// Up to `n` rows of hook `hook` from the first generation, drawn with `seed`: the
    /// initialisation sample of an SAE that starts with the stream.
    pub fn sample(&mut self, hook: usize, n: usize, seed: u64) -> Result<Tensor> {
        if self.step != 0 {
            return Err(Error::Training(format!(
                "a new SAE can only join a stream before its first step (it is at step {})",
                self.step
            )));
        }
        self.ensure_generation()?;
        let order = permutation(self.row_doc.len(), seed, u64::MAX);
        gather_rows(
            &self.buffers[hook],
            &order[..n.min(order.len())],
            self.width(hook),
        )
    }

    /// Starts the next generation when the current one is used up (or none has started).
    fn ensure_generation(&mut self) -> Result<()> {
        let next = match &self.generation {
            Some(g) if self.served < g.batches => return Ok(()),
            Some(g) => g.index + 1,
            None => 0,
        };
        self.fill(next, self.step, self.cursor)?;
        Ok(())
    }

    /// Fills generation `index` from `start` and checks it against (or adds it to) the log.
    fn fill(&mut self, index: u64, first_step: u64, start: Cursor) -> Result<()> {
        let began = std::time::Instant::now();
        self.seek(start)?;
        self.buffers.iter_mut().for_each(Vec::clear);
        self.row_doc.clear();
        self.current = None;
        let mut docs = 0;
        let remaining = self.cfg.steps.map_or(u64::MAX, |total| {
            total.saturating_sub(first_step).max(1) * self.cfg.batch_size as u64
        });
        let target = (self.cfg.buffer_rows as u64).min(remaining) as usize;
        let progress = Progress::new(&format!("buffer {index}"), Some(target as u64), "rows");
        let mut shown = 0;
        while self.row_doc.len() < target {
            let iter = self.docs.as_mut().expect("seek opened the dataset");
            if iter.peek().is_none() {
                if self.pass_rows == 0 {
                    return Err(Error::Input(
                        "the dataset gave no activations in a whole pass: it has no non-empty \
                         documents"
                            .into(),
                    ));
                }
                self.pass_docs = Some(self.cursor.doc);
                self.seek(Cursor {
                    pass: self.cursor.pass + 1,
                    doc: 0,
                })?;
                continue;
            }
            let pool = read_pool(iter, self.tokenizer, &self.cfg.collect)?;
            let read = (pool.docs.len() + pool.skipped_empty) as u64;
            let rows = run_pool(
                self.model,
                self.tokenizer,
                &pool.docs,
                &self.cfg.hooks,
                &self.cfg.collect,
            )?;
            for ((i, ids), row) in pool.docs.iter().zip(rows) {
                let serial = (self.cursor.pass << 40) | *i as u64;
                self.row_doc
                    .extend(std::iter::repeat_n(serial, row.positions.len()));
                for (buf, values) in self.buffers.iter_mut().zip(row.values) {
                    buf.extend_from_slice(&values);
                }
                self.stats.tokens_forwarded += forwarded(ids, self.cfg.collect.mode).len() as u64;
                self.pass_rows += row.positions.len() as u64;
                self.stats.outliers_dropped += row.outliers as u64;
            }
            self.cursor.doc += read;
            self.stats.docs_read += read;
            docs += read;
            let now = self.row_doc.len().min(target) as u64;
            progress.inc(now - shown);
            shown = now;
        }
        progress.finish();
        let rows = self.row_doc.len() as u64;
        let g = Generation {
            index,
            first_step,
            start,
            rows,
            batches: rows / self.cfg.batch_size as u64,
            docs,
        };
        match self.log.iter().find(|l| l.index == index) {
            Some(logged) if *logged != g => {
                return Err(Error::Input(format!(
                    "replaying generation {index} of the stream gave {rows} rows from {docs} \
                     documents, but the interrupted run logged {} from {}: the dataset, model \
                     or tokenizer changed since the run began",
                    logged.rows, logged.docs
                )))
            }
            Some(_) => {}
            None => {
                self.log.push(g.clone());
                self.write_log()?;
            }
        }
        self.order = permutation(rows as usize, self.cfg.seed, index);
        self.generation = Some(g);
        self.served = 0;
        self.stats.fill_seconds += began.elapsed().as_secs_f64();
        Ok(())
    }

    /// Positions the document reader at `to`, reopening the dataset when needed.
    fn seek(&mut self, to: Cursor) -> Result<()> {
        if self.docs.is_some() && self.cursor == to {
            return Ok(());
        }
        let limit = self.cfg.collect.max_docs.unwrap_or(usize::MAX);
        let mut docs = (self.open)()?.take(limit).enumerate().peekable();
        for _ in 0..to.doc {
            match docs.next() {
                Some((_, Err(e))) => return Err(e),
                Some(_) => {}
                None => {
                    return Err(Error::Input(format!(
                        "the dataset ended before document {} of pass {}: it changed since \
                         the run began",
                        to.doc, to.pass
                    )))
                }
            }
        }
        self.docs = Some(docs);
        self.cursor = to;
        // Rows this pass has given: a pass resumed midway gave some before.
        self.pass_rows = to.doc;
        self.stats.passes += 1;
        Ok(())
    }

    fn write_log(&self) -> Result<()> {
        let Some(path) = &self.log_path else {
            return Ok(());
        };
        io::write_json(
            path,
            &StreamLog {
                settings: self.cfg.fingerprint(),
                generations: self.log.clone(),
            },
        )
    }
}

/// Documents in one pass, from the first logged generation that ran into a later pass: from
/// document `d` of its pass it read `docs` and the next starts at document `d'` of `k` passes
/// on, so `docs = k·len - d + d'`.
fn pass_length(log: &[Generation]) -> Option<u64> {
    log.windows(2).find_map(|w| {
        let crossed = w[1].start.pass.saturating_sub(w[0].start.pass);
        (crossed > 0).then(|| (w[0].docs + w[0].start.doc).saturating_sub(w[1].start.doc) / crossed)
    })
}

/// Rows `rows` of a row-major buffer of width `d`, as a CPU tensor.
fn gather_rows(buf: &[f32], rows: &[u32], d: usize) -> Result<Tensor> {
    let mut out = Vec::with_capacity(rows.len() * d);
    for &r in rows {
        let start = r as usize * d;
        out.extend_from_slice(&buf[start..start + d]);
    }
    Ok(Tensor::from_vec(out, (rows.len(), d), &Device::Cpu)?)
}

/// A stream shared by the SAEs that read it.
pub type SharedStream<'m> = Rc<RefCell<ActivationStream<'m>>>;

/// One hook of a shared stream, as a trainer's [`BatchSource`].
pub struct HookFeed<'m> {
    stream: SharedStream<'m>,
    hook: usize,
    d: usize,
    batch_size: usize,
}

impl<'m> HookFeed<'m> {
    /// The feed of `hook`, which must be one of the stream's hooks.
    pub fn new(stream: &SharedStream<'m>, hook: HookPoint) -> Result<Self> {
        let s = stream.borrow();
        let index = s.hooks().iter().position(|h| *h == hook).ok_or_else(|| {
            Error::Input(format!(
                "the stream does not read {hook} (it reads {:?})",
                s.hooks().iter().map(|h| h.to_string()).collect::<Vec<_>>()
            ))
        })?;
        Ok(Self {
            hook: index,
            d: s.width(index),
            batch_size: s.config().batch_size,
            stream: stream.clone(),
        })
    }
}

impl BatchSource for HookFeed<'_> {
    fn d(&self) -> usize {
        self.d
    }
    fn batch_size(&self) -> usize {
        self.batch_size
    }
    fn batch(&mut self, step: u64, device: &Device) -> Result<Tensor> {
        Ok(self.stream.borrow_mut().batch(step)?[self.hook].to_device(device)?)
    }
    fn sample(&mut self, n: usize, seed: u64, device: &Device) -> Result<Tensor> {
        Ok(self
            .stream
            .borrow_mut()
            .sample(self.hook, n, seed)?
            .to_device(device)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn generation(pass: u64, doc: u64, docs: u64) -> Generation {
        Generation {
            index: 0,
            first_step: 0,
            start: Cursor { pass, doc },
            rows: 0,
            batches: 0,
            docs,
        }
    }

    #[test]
    fn the_pass_length_follows_from_a_generation_that_crossed_passes() {
        // A pass of 12 documents: from document 3 of pass 0, 25 documents (9, then 12, then
        // 4) end at document 4 of pass 2.
        let log = [
            generation(0, 0, 3),
            generation(0, 3, 25),
            generation(2, 4, 5),
        ];
        assert_eq!(pass_length(&log), Some(12));
        assert_eq!(pass_length(&log[..2]), None);
        // A generation that ended at the pass' end leaves the next to start the new pass.
        assert_eq!(
            pass_length(&[generation(0, 12, 4), generation(1, 4, 5)]),
            Some(12)
        );
    }
}
