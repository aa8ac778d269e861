//! Several SAEs trained in step on one [`ActivationStream`]: each step the stream makes one
//! batch per hook and every SAE on that hook takes its step on it. The folder of a job holds
//! `stream.json` and one SAE folder per run (`<hook>/<name>`), each resumable on its own.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::Device;

use super::stream::{ActivationStream, HookFeed, SharedStream, StreamStats};
use super::{TrainConfig, Trainer};
use crate::hooks::HookPoint;
use crate::progress::Progress;
use crate::sae::SaeConfig;
use crate::{io, Error, Result};

/// The stream's log inside a job folder.
pub const STREAM_LOG: &str = "stream.json";

/// One SAE of a job.
pub struct JobRun<'m> {
    /// The hook whose activations it trains on.
    pub hook: HookPoint,
    /// Its folder, when the job saves.
    pub dir: Option<PathBuf>,
    /// Its trainer, holding the SAE and its metrics.
    pub trainer: Trainer<'m>,
}

/// SAEs sharing one stream of activations (see the module docs).
pub struct StreamJob<'m> {
    stream: SharedStream<'m>,
    runs: Vec<JobRun<'m>>,
    device: Device,
}

impl<'m> StreamJob<'m> {
    /// A job on a fresh stream; with `out`, the stream logs into `out/stream.json`.
    pub fn new(stream: ActivationStream<'m>, out: Option<&Path>, device: &Device) -> Result<Self> {
        if let Some(dir) = out {
            io::create_dir(dir)?;
        }
        let stream = match out {
            Some(dir) => stream.log_to(&dir.join(STREAM_LOG)),
            None => stream,
        };
        Ok(Self {
            stream: SharedStream::new(stream.into()),
            runs: Vec::new(),
            device: device.clone(),
        })
    }

    /// Adds a new SAE on `hook`, saved in `dir` when given. Every SAE of a job must be added
    /// before the first step.
    pub fn add(
        &mut self,
        hook: HookPoint,
        sae: SaeConfig,
        train: TrainConfig,
        dir: Option<PathBuf>,
    ) -> Result<()> {
        let batch = self.stream.borrow().config().batch_size;
        if train.batch_size != batch {
            return Err(Error::Input(format!(
                "every SAE of a stream trains on its batches of {batch} rows (this one asks for \
                 {})",
                train.batch_size
            )));
        }
        let feed = HookFeed::new(&self.stream, hook)?;
        let trainer = Trainer::with_source(sae, train, Box::new(feed), &self.device)?;
        self.runs.push(JobRun { hook, dir, trainer });
        Ok(())
    }

    /// Continues the job saved in `out`: every `(hook, folder)` run resumes from its own
    /// checkpoint and the stream rewinds to the earliest of them (runs checkpointed later wait
    /// for it), so the result is the uninterrupted job's.
    pub fn resume(
        stream: ActivationStream<'m>,
        out: &Path,
        runs: &[(HookPoint, PathBuf)],
        device: &Device,
    ) -> Result<Self> {
        let mut steps = Vec::new();
        for (_, dir) in runs {
            steps.push(Trainer::checkpointed_step(dir)?);
        }
        let start = steps.iter().copied().min().unwrap_or(0);
        let stream = stream.resume(&out.join(STREAM_LOG), start)?;
        let stream = SharedStream::new(stream.into());
        let mut job = Self {
            stream,
            runs: Vec::new(),
            device: device.clone(),
        };
        for (hook, dir) in runs {
            let feed = HookFeed::new(&job.stream, *hook)?;
            let trainer = Trainer::resume_with_source(dir, Box::new(feed), device)?;
            job.runs.push(JobRun {
                hook: *hook,
                dir: Some(dir.clone()),
                trainer,
            });
        }
        Ok(job)
    }

    /// Its SAEs, in the order they were added.
    pub fn runs(&self) -> &[JobRun<'m>] {
        &self.runs
    }

    /// The stream's counters.
    pub fn stats(&self) -> StreamStats {
        self.stream.borrow().stats().clone()
    }

    /// Trains every SAE to its planned steps (or until `stop` is set), checkpointing each as
    /// its configuration says and saving each at the end.
    pub fn train(&mut self, stop: Option<&AtomicBool>) -> Result<()> {
        let total = self.runs.iter().map(|r| r.trainer.config().steps).max();
        self.train_to(total.unwrap_or(0), stop)
    }

    /// [`train`](Self::train), stopping once the stream has served `last` steps.
    pub fn train_to(&mut self, last: u64, stop: Option<&AtomicBool>) -> Result<()> {
        if self.runs.is_empty() {
            return Err(Error::Input("the job has no SAE to train".into()));
        }
        let start = self.stream.borrow().step();
        let batch = self.stream.borrow().config().batch_size as f64;
        let progress = Progress::new("stream-train", Some(last), "steps");
        progress.inc(start);
        for step in start..last {
            if stop.is_some_and(|s| s.load(Ordering::SeqCst)) {
                break;
            }
            for run in &mut self.runs {
                let t = &mut run.trainer;
                if t.step() != step || t.is_done() {
                    continue; // checkpointed later than the others: waits for the stream
                }
                t.train_step()?;
                if let Some(dir) = run.dir.as_deref().filter(|_| t.checkpoint_due()) {
                    record_reach(t, &self.stream);
                    t.save_checkpoint(dir)?;
                }
            }
            progress.inc(1);
            let done = (step + 1 - start) as f64 * batch;
            progress.set_message(format!(
                "{} SAEs, {:.0} rows/s",
                self.runs.len(),
                done / progress.elapsed().max(1e-9)
            ));
        }
        progress.finish();
        for run in &mut self.runs {
            if let Some(dir) = &run.dir {
                record_reach(&mut run.trainer, &self.stream);
                run.trainer.save_final(dir)?;
            }
        }
        Ok(())
    }
}

/// Records in the SAE's metadata the documents the stream has read, so `sae eval` starts
/// after them.
fn record_reach(trainer: &mut Trainer<'_>, stream: &SharedStream<'_>) {
    let docs = stream.borrow().docs_reached();
    trainer.metadata_mut().training_docs = Some(docs as usize);
}
