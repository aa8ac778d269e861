//! The training loop: seeded batches, schedules, Adam with clipping, metrics, dead-feature
//! tracking and resampling, checkpoints that resume bit-identically, and a NaN guard.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::{DType, Device, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::optim::{Adam, AdamParams};
use super::schedule;
use super::source::{ActivationSource, BatchSource, StoreBatches};
use crate::eval::metrics;
use crate::plot::{Table, Values};
use crate::progress::Progress;
use crate::sae::common::geometric_median;
use crate::sae::{
    format, AnySae, Architecture, Init, LossContext, Sae, SaeConfig, SaeMetadata, SparsityPenalty,
    VariantDefaults,
};
use crate::{io, Error, Result};

/// How `b_dec` starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BDecInit {
    /// Geometric median of a sample (robust to outliers).
    #[default]
    GeometricMedian,
    /// Mean of a sample.
    Mean,
    /// Zero.
    Zeros,
    /// Zero (as SAELens) unless the inputs' mean is longer than their typical distance from
    /// it, `‖x̄‖ > E‖x − x̄‖`; then the geometric median. From zero, a large shared offset
    /// reaches every pre-activation and the encoder spends the run undoing it (ReLU: FVU 0.87
    /// on the defaults' isotropic cloud with a mean three times its spread).
    ZerosUnlessOffset,
}

/// The dtype a training step computes in. The weights and Adam's moments stay f32 either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Compute {
    /// Every step in f32.
    #[default]
    F32,
    /// Mixed precision: the batch is rounded to bf16, the encoder, the decoder and the
    /// variant's losses run in bf16 on bf16 copies of the weights, the losses are reduced in
    /// f32, and the gradients reach the f32 weights through the casts (PyTorch's autocast
    /// with f32 master weights). Halves the memory traffic of a step on a GPU; on the CPU,
    /// candle widens bf16 matmuls to f32, so it is slower there.
    Bf16,
}

impl Compute {
    /// The dtype a step's matrix products run in.
    pub fn dtype(self) -> DType {
        match self {
            Self::F32 => DType::F32,
            Self::Bf16 => DType::BF16,
        }
    }
}

/// Training hyperparameters. `Default` is the shared recipe at 4,096 features with ReLU's λ
/// (`for_architecture` gives any architecture's own, ReLU's included): Anthropic's April 2024
/// recipe (decoder-norm penalty with warm-up, lr decay over the last 20%, clip at 1) at the
/// learning rate and sparsity coefficient our sweep chose for default-length runs
/// (BENCHMARKS.md), batch 4096. A variant may change the decay and `b_dec`'s start
/// ([`VariantDefaults`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Optimiser steps.
    pub steps: u64,
    /// Inputs per step.
    pub batch_size: usize,
    /// Adam's learning rate and moments.
    pub adam: AdamParams,
    /// Target sparsity coefficient λ.
    pub sparsity_coefficient: f64,
    /// Fraction of steps over which λ warms up from 0.
    pub sparsity_warmup_frac: f64,
    /// Fraction of steps at the end over which the learning rate decays to 0.
    pub lr_decay_frac: f64,
    /// Global gradient-norm clip.
    pub grad_clip: Option<f64>,
    /// Seeds the initial weights and the order of the batches, so a CPU run is reproducible.
    pub seed: u64,
    /// The ReLU SAE's penalty (other variants ignore it).
    pub penalty: SparsityPenalty,
    /// JumpReLU's starting threshold θ₀ (`None`: [`crate::sae::jumprelu::INIT_THRESHOLD`]).
    #[serde(default)]
    pub init_threshold: Option<f64>,
    /// Scale inputs so `E‖x − x̄‖ = √d_in` (folded back into the weights when saved).
    pub normalize_inputs: bool,
    /// How `b_dec` starts.
    pub b_dec_init: BDecInit,
    /// Rows sampled for the scale and `b_dec` initialisation.
    pub init_sample: usize,
    /// Steps between metric rows.
    pub log_every: u64,
    /// Steps between checkpoints (when an output folder is given).
    pub checkpoint_every: Option<u64>,
    /// A feature that has not fired in this many inputs is dead (capped at a tenth of the
    /// run; see [`Trainer::dead_window`]).
    pub dead_window: u64,
    /// Resample dead features every this many steps (Anthropic 2023); off by default.
    pub resample_dead_every: Option<u64>,
    /// A feature firing on more than this fraction of inputs is dense.
    pub dense_above: f64,
    /// The dtype of each step's arithmetic (checkpoints from before it existed train in f32).
    #[serde(default)]
    pub compute: Compute,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self::with_defaults(&VariantDefaults::shared(4096, crate::sae::relu::DEFAULT_L1))
    }
}

impl TrainConfig {
    /// The defaults with `arch`'s own learning rate, sparsity coefficient, learning-rate
    /// decay and `b_dec` start for a dictionary of `d_sae` features
    /// ([`Architecture::defaults`]).
    pub fn for_architecture(arch: Architecture, d_sae: usize) -> Self {
        Self::with_defaults(&arch.defaults(d_sae))
    }

    fn with_defaults(d: &VariantDefaults) -> Self {
        let mut cfg = Self {
            steps: 2000,
            batch_size: 4096,
            adam: AdamParams::default(),
            sparsity_coefficient: 0.0,
            sparsity_warmup_frac: 0.05,
            lr_decay_frac: 0.0,
            grad_clip: Some(1.0),
            seed: 0,
            penalty: SparsityPenalty::DecoderNorm,
            init_threshold: None,
            normalize_inputs: true,
            b_dec_init: BDecInit::default(),
            init_sample: 4096,
            log_every: 50,
            checkpoint_every: Some(500),
            dead_window: 10_000_000,
            resample_dead_every: None,
            dense_above: 0.1,
            compute: Compute::F32,
        };
        cfg.take_defaults(d);
        cfg
    }

    /// Takes a variant's learning rate, sparsity coefficient, learning-rate decay and `b_dec`
    /// start; everything else stays.
    pub fn take_defaults(&mut self, d: &VariantDefaults) {
        self.adam.lr = d.lr;
        self.sparsity_coefficient = d.sparsity_coefficient;
        self.lr_decay_frac = d.lr_decay_frac;
        self.b_dec_init = d.b_dec_init;
    }
}

/// `value` must be a finite number above 0.
pub(crate) fn positive(what: &str, value: f64) -> Result<()> {
    if value.is_finite() && value > 0.0 {
        Ok(())
    } else {
        Err(Error::Input(format!(
            "{what} must be a finite number above 0 (got {value})"
        )))
    }
}

/// `value` must be a fraction in [0, 1].
fn fraction(what: &str, value: f64) -> Result<()> {
    if (0.0..=1.0).contains(&value) {
        Ok(())
    } else {
        Err(Error::Input(format!(
            "{what} must be between 0 and 1 (got {value})"
        )))
    }
}

/// `value` must be at least `min`.
fn at_least(what: &str, value: u64, min: u64, why: &str) -> Result<()> {
    if value >= min {
        Ok(())
    } else {
        Err(Error::Input(format!(
            "{what} must be at least {min} (got {value}){why}"
        )))
    }
}

impl TrainConfig {
    /// Checks every number before any work starts, with one readable line for the first bad
    /// one. `sparsity` says whether the sparsity coefficient is used (penalty variants).
    pub fn validate(&self, penalty_used: bool) -> Result<()> {
        at_least("steps", self.steps, 1, "")?;
        at_least(
            "batch size",
            self.batch_size as u64,
            2,
            ": the FVU of a batch needs its variance",
        )?;
        positive("the learning rate", self.adam.lr)?;
        if penalty_used {
            positive("the sparsity coefficient", self.sparsity_coefficient)?;
        }
        fraction("the sparsity warm-up fraction", self.sparsity_warmup_frac)?;
        fraction("the learning-rate decay fraction", self.lr_decay_frac)?;
        fraction("Adam's beta1", self.adam.beta1)?;
        fraction("Adam's beta2", self.adam.beta2)?;
        positive("Adam's eps", self.adam.eps)?;
        if let Some(clip) = self.grad_clip {
            positive("the gradient clip", clip)?;
        }
        at_least("log every", self.log_every, 1, "")?;
        if let Some(every) = self.checkpoint_every {
            at_least("checkpoint every", every, 1, "")?;
        }
        if let Some(every) = self.resample_dead_every {
            at_least("resample dead every", every, 1, "")?;
        }
        if let Some(theta) = self.init_threshold {
            positive("the initial threshold", theta)?;
        }
        at_least("the dead-feature window", self.dead_window, 1, "")?;
        at_least("the initialisation sample", self.init_sample as u64, 1, "")?;
        positive("the dense threshold", self.dense_above)
    }
}

/// One row of the metrics table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricsRow {
    /// Steps taken.
    pub step: u64,
    /// Inputs (activation rows) read so far, repeats included.
    pub tokens: u64,
    /// The step's total loss, on scaled inputs.
    pub loss: f64,
    /// Mean squared reconstruction error per input, in the model's units.
    pub mse: f64,
    /// Fraction of variance unexplained on the step's batch (0 is perfect, 1 is no better
    /// than the batch mean).
    pub fvu: f64,
    /// `1 − fvu`.
    pub explained_variance: f64,
    /// Mean number of features active per input, on the step's batch.
    pub l0: f64,
    /// Mean sum of feature activations per input, on the step's batch.
    pub l1: f64,
    /// Fraction of features that have not fired within the dead window
    /// ([`Trainer::dead_window`]).
    pub dead_frac: f64,
    /// Fraction of features firing on more than `dense_above` of the step's batch.
    pub dense_frac: f64,
    /// Learning rate at this step.
    pub lr: f64,
    /// Sparsity coefficient at this step (after warm-up).
    pub sparsity_coefficient: f64,
}

impl MetricsRow {
    /// How many times, on average, the run so far has read each of a source's `rows` rows.
    pub fn passes(&self, rows: usize) -> f64 {
        self.tokens as f64 / rows.max(1) as f64
    }
}

/// `metrics.json` of a finished run: its last logged metrics and what is wrong with it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainReport {
    /// Steps taken.
    pub step: u64,
    /// The last metric row logged.
    pub final_metrics: Option<MetricsRow>,
    /// One message per problem, each saying what to change (empty when healthy).
    pub warnings: Vec<String>,
    /// What the check of the activations at the start found (also among `warnings`; see
    /// [`Trainer::outliers`]).
    #[serde(default)]
    pub outliers: Option<String>,
}

/// What a checkpoint's `trainer.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct TrainerState {
    sae: SaeConfig,
    train: TrainConfig,
    step: u64,
    scale: f64,
    samples_seen: u64,
    metrics: Vec<MetricsRow>,
    /// What `diagnose_outliers` found at the start (absent from older checkpoints).
    #[serde(default)]
    outliers: Option<String>,
    /// The tensors of this step (`trainer_state-<step>.safetensors`).
    state_file: String,
}

/// The `trainer.json` of the run checkpointed in `dir`.
fn read_state(dir: &Path) -> Result<TrainerState> {
    io::read_json(&dir.join("trainer.json"))
}

/// Trains one SAE on one source of batches (a store, or a model streaming activations).
pub struct Trainer<'a> {
    sae: AnySae,
    opt: Adam,
    cfg: TrainConfig,
    source: Box<dyn BatchSource + 'a>,
    device: Device,
    step: u64,
    /// Inputs are multiplied by this before the SAE sees them.
    scale: f64,
    samples_seen: u64,
    /// Per feature: inputs since it last fired.
    since_fired: Vec<u64>,
    /// Per feature: firings since the start (for `sparsity.safetensors`).
    fired_total: Vec<f32>,
    metrics: Vec<MetricsRow>,
    /// What [`super::diagnose_outliers`] found in the initialisation sample.
    outliers: Option<String>,
}

/// The mean of the rows' L2 norms.
fn mean_norm(x: &Tensor) -> Result<f64> {
    Ok(x.sqr()?.sum(1)?.sqrt()?.mean_all()?.to_scalar::<f32>()? as f64)
}

/// The norm of the rows' mean (their shared offset) and the rows' mean norm about it (their
/// spread).
fn offset_and_spread(x: &Tensor) -> Result<(f64, f64)> {
    let mean = x.mean_keepdim(0)?;
    Ok((mean_norm(&mean)?, mean_norm(&x.broadcast_sub(&mean)?)?))
}

/// The factor that brings inputs to `E‖x − x̄‖ = √d_in`, measured on `sample`. The mean is
/// left out (unlike SAELens' `expected_average_only_in`): `b_dec` absorbs it, and a sparsity
/// coefficient then means the same whether the activations carry a large shared offset (a
/// random model's residual stream) or none. Rows all equal fall back to the raw norm.
fn input_scale(sample: &Tensor, d_in: usize) -> Result<f64> {
    let (_, centred) = offset_and_spread(sample)?;
    let raw = mean_norm(sample)?;
    let norm = if centred > 1e-6 * raw { centred } else { raw };
    if !(norm.is_finite() && norm > 0.0) {
        return Err(Error::Training(format!(
            "cannot normalise inputs: their mean norm is {norm} (all-zero or non-finite \
             activations?)"
        )));
    }
    Ok((d_in as f64).sqrt() / norm)
}

/// Builds a freshly initialised SAE of `cfg.architecture`.
pub fn new_sae(
    cfg: &SaeConfig,
    train: &TrainConfig,
    rng: &mut ChaCha8Rng,
    device: &Device,
) -> Result<AnySae> {
    AnySae::init(
        cfg.clone(),
        &mut Init {
            rng,
            dtype: DType::F32,
            device,
            penalty: train.penalty,
            init_threshold: train.init_threshold,
        },
    )
}

impl<'a> Trainer<'a> {
    /// A new run on `data` in its seeded shuffle ([`StoreBatches`]).
    pub fn new(
        sae_cfg: SaeConfig,
        cfg: TrainConfig,
        data: &'a dyn ActivationSource,
        device: &Device,
    ) -> Result<Self> {
        let source = StoreBatches::new(data, cfg.batch_size, cfg.seed)?;
        Self::with_source(sae_cfg, cfg, Box::new(source), device)
    }

    /// A new run on any source of batches: estimates the input scale and `b_dec` from a
    /// sample, then initialises the SAE from `cfg.seed`.
    pub fn with_source(
        sae_cfg: SaeConfig,
        cfg: TrainConfig,
        mut source: Box<dyn BatchSource + 'a>,
        device: &Device,
    ) -> Result<Self> {
        sae_cfg.validate()?;
        cfg.validate(!sae_cfg.architecture.uses_k())?;
        if source.d() != sae_cfg.d_in {
            return Err(Error::Training(format!(
                "the activations have width {} but the SAE's d_in is {}",
                source.d(),
                sae_cfg.d_in
            )));
        }
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        let sample = source.sample(cfg.init_sample, cfg.seed, device)?;
        let outliers = super::diagnose_outliers(&sample)?;
        let scale = if cfg.normalize_inputs {
            input_scale(&sample, sae_cfg.d_in)?
        } else {
            1.0
        };
        let sae = new_sae(&sae_cfg, &cfg, &mut rng, device)?;
        let sample = (sample * scale)?;
        let b_dec = match cfg.b_dec_init {
            BDecInit::GeometricMedian => Some(geometric_median(&sample, 100)?),
            BDecInit::Mean => Some(sample.mean(0)?),
            BDecInit::Zeros => None,
            BDecInit::ZerosUnlessOffset => {
                let (offset, spread) = offset_and_spread(&sample)?;
                (offset > spread)
                    .then(|| geometric_median(&sample, 100))
                    .transpose()?
            }
        };
        if let Some(b) = b_dec {
            sae.params().b_dec.set(&b.to_device(device)?)?;
        }
        let opt = Adam::new(sae.vars(), cfg.adam)?.with_lr_scales(&sae.lr_scales(cfg.adam.lr))?;
        let d_sae = sae_cfg.d_sae;
        Ok(Self {
            source,
            sae,
            opt,
            cfg,
            device: device.clone(),
            step: 0,
            scale,
            samples_seen: 0,
            since_fired: vec![0; d_sae],
            fired_total: vec![0.0; d_sae],
            metrics: Vec::new(),
            outliers,
        })
    }

    /// Continues the run checkpointed in `dir` (same data source expected).
    pub fn resume(dir: &Path, data: &'a dyn ActivationSource, device: &Device) -> Result<Self> {
        let train = Self::checkpointed_config(dir)?;
        let source = StoreBatches::new(data, train.batch_size, train.seed)?;
        Self::resume_with_source(dir, Box::new(source), device)
    }

    /// The training configuration of the run checkpointed in `dir`.
    pub fn checkpointed_config(dir: &Path) -> Result<TrainConfig> {
        Ok(read_state(dir)?.train)
    }

    /// The step the run checkpointed in `dir` reached.
    pub fn checkpointed_step(dir: &Path) -> Result<u64> {
        Ok(read_state(dir)?.step)
    }

    /// Continues the run checkpointed in `dir` on `source`, which must give the batches the
    /// interrupted run had.
    pub fn resume_with_source(
        dir: &Path,
        source: Box<dyn BatchSource + 'a>,
        device: &Device,
    ) -> Result<Self> {
        let state = read_state(dir)?;
        let tensors_path = dir.join(&state.state_file);
        let tensors =
            candle_core::safetensors::load(&tensors_path, device).map_err(|e| Error::Weights {
                path: tensors_path.clone(),
                message: format!("cannot read checkpoint ({e})"),
            })?;
        let mut trainer = Self::new_from_state(&state, source, device)?;
        for (name, var) in trainer.sae.vars() {
            let t = tensors.get(&format!("sae.{name}")).ok_or_else(|| {
                Error::Training(format!(
                    "checkpoint {} lacks `sae.{name}`",
                    tensors_path.display()
                ))
            })?;
            var.set(t)?;
        }
        trainer.opt.load_state(&tensors, state.step)?;
        let host = |k: &str| -> Result<Vec<f32>> {
            let t = tensors
                .get(k)
                .ok_or_else(|| Error::Training(format!("checkpoint lacks `{k}`")))?;
            Ok(t.to_dtype(DType::F64)?
                .to_vec1::<f64>()?
                .into_iter()
                .map(|v| v as f32)
                .collect())
        };
        trainer.since_fired = tensors
            .get("since_fired")
            .ok_or_else(|| Error::Training("checkpoint lacks `since_fired`".into()))?
            .to_vec1::<f64>()?
            .into_iter()
            .map(|v| v as u64)
            .collect();
        trainer.fired_total = host("fired_total")?;
        Ok(trainer)
    }

    fn new_from_state(
        state: &TrainerState,
        source: Box<dyn BatchSource + 'a>,
        device: &Device,
    ) -> Result<Self> {
        let mut rng = ChaCha8Rng::seed_from_u64(state.train.seed);
        let sae = new_sae(&state.sae, &state.train, &mut rng, device)?;
        let opt = Adam::new(sae.vars(), state.train.adam)?
            .with_lr_scales(&sae.lr_scales(state.train.adam.lr))?;
        Ok(Self {
            source,
            sae,
            opt,
            cfg: state.train.clone(),
            device: device.clone(),
            step: state.step,
            scale: state.scale,
            samples_seen: state.samples_seen,
            since_fired: vec![0; state.sae.d_sae],
            fired_total: vec![0.0; state.sae.d_sae],
            metrics: state.metrics.clone(),
            outliers: state.outliers.clone(),
        })
    }

    /// The SAE being trained (on scaled inputs; see [`Trainer::scale`]).
    pub fn sae(&self) -> &AnySae {
        &self.sae
    }

    /// What the SAE records of its provenance, saved with it (to amend as training learns it).
    pub fn metadata_mut(&mut self) -> &mut SaeMetadata {
        &mut self.sae.config_mut().metadata
    }

    /// Steps taken so far.
    pub fn step(&self) -> u64 {
        self.step
    }

    /// The factor inputs are scaled by during training.
    pub fn scale(&self) -> f64 {
        self.scale
    }

    /// The training settings.
    pub fn config(&self) -> &TrainConfig {
        &self.cfg
    }

    /// Metric rows logged so far.
    pub fn metrics(&self) -> &[MetricsRow] {
        &self.metrics
    }

    /// Trains up to `cfg.steps` (or until `stop` is set), checkpointing into `out` when given,
    /// and writing `metrics.json` there ([`TrainReport`]) when the run is complete. A
    /// non-finite loss stops with an error; the last checkpoint is left as it was.
    pub fn train(&mut self, out: Option<&Path>, stop: Option<&AtomicBool>) -> Result<()> {
        if let Some(dir) = out {
            io::create_dir(dir)?;
        }
        let total = self.cfg.steps;
        let progress = Progress::new("train", Some(total), "steps");
        progress.inc(self.step);
        while self.step < total {
            if stop.is_some_and(|s| s.load(Ordering::SeqCst)) {
                break;
            }
            let row = self.train_step()?;
            progress.inc(1);
            if let Some(row) = row {
                progress.set_message(format!(
                    "loss {:.4} L0 {:.1} FVU {:.3}",
                    row.loss, row.l0, row.fvu
                ));
            }
            if let Some(dir) = out.filter(|_| self.checkpoint_due()) {
                self.save_checkpoint(dir)?;
            }
        }
        progress.finish();
        if let Some(dir) = out {
            self.save_final(dir)?;
        }
        Ok(())
    }

    /// Whether the step just taken is one to checkpoint at (`cfg.checkpoint_every`; the last
    /// step is saved by [`save_final`](Self::save_final)).
    pub fn checkpoint_due(&self) -> bool {
        self.cfg
            .checkpoint_every
            .is_some_and(|every| self.step.is_multiple_of(every) && self.step < self.cfg.steps)
    }

    /// Whether every planned step has been taken.
    pub fn is_done(&self) -> bool {
        self.step >= self.cfg.steps
    }

    /// Saves a checkpoint into `dir` and, when the run is complete, `metrics.json`
    /// ([`TrainReport`]).
    pub fn save_final(&self, dir: &Path) -> Result<()> {
        self.save_checkpoint(dir)?;
        if self.is_done() {
            io::write_json(
                &dir.join("metrics.json"),
                &TrainReport {
                    step: self.step,
                    final_metrics: self.metrics.last().cloned(),
                    warnings: self.warnings(),
                    outliers: self.outliers.clone(),
                },
            )?;
        }
        Ok(())
    }

    /// One optimiser step; returns a metrics row when this step is logged.
    pub fn train_step(&mut self) -> Result<Option<MetricsRow>> {
        let (step, total) = (self.step, self.cfg.steps);
        let x = (self.source.batch(step, &self.device)? * self.scale)?;
        let lr = schedule::learning_rate(step, total, self.cfg.adam.lr, self.cfg.lr_decay_frac);
        let coefficient = schedule::sparsity_coefficient(
            step,
            total,
            self.cfg.sparsity_coefficient,
            self.cfg.sparsity_warmup_frac,
        );
        let window = self.dead_window();
        let dead: Vec<f32> = self
            .since_fired
            .iter()
            .map(|&s| f32::from(self.samples_seen > 0 && s >= window))
            .collect();
        // On the host: AuxK chooses its columns there, and reading it back from a GPU would
        // make the host wait for the GPU in the middle of the forward pass.
        let dead = Tensor::from_vec(dead, self.since_fired.len(), &Device::Cpu)?;
        let ctx = LossContext {
            sparsity_coefficient: coefficient,
            dead: Some(dead),
        };
        let out = self
            .sae
            .loss(&x.to_dtype(self.cfg.compute.dtype())?, &ctx)?;
        let loss = out.total.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        if !loss.is_finite() {
            return Err(Error::Training(format!(
                "the loss became {loss} at step {step}: training stopped and the last good checkpoint \
                 was kept. Lower the learning rate (--lr) or check the activations for NaN/inf."
            )));
        }
        // Read with the loss, while the GPU (if any) has nothing queued, rather than after the
        // backward pass, which would make the host wait for the GPU twice a step.
        let counts = out.feature_acts.firing_counts()?;
        let grads = crate::sae::grads::backward(&out.total)?;
        self.opt.params.lr = lr;
        self.opt.step_clipped(&grads, self.cfg.grad_clip)?;
        self.sae.after_step()?;

        let batch = x.dim(0)? as u64;
        for (i, &c) in counts.iter().enumerate() {
            self.since_fired[i] = if c > 0.0 {
                0
            } else {
                self.since_fired[i] + batch
            };
            self.fired_total[i] += c;
        }
        self.samples_seen += batch;
        self.step += 1;

        if let Some(every) = self.cfg.resample_dead_every {
            if self.step.is_multiple_of(every) && self.step < total {
                self.resample_dead(&x, &out.sae_out.to_dtype(DType::F32)?)?;
            }
        }
        let logged =
            self.step.is_multiple_of(self.cfg.log_every.max(1)) || self.step == total || step == 0;
        if !logged {
            return Ok(None);
        }
        let window = self.dead_window();
        let dead = self.since_fired.iter().filter(|&&s| s >= window).count() as f64
            / self.since_fired.len() as f64;
        let dense = counts
            .iter()
            .filter(|&&c| c as f64 / batch as f64 > self.cfg.dense_above)
            .count() as f64
            / counts.len() as f64;
        let mse_scaled = out.terms[0].1.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        let fvu = metrics::fvu(&x, &out.sae_out)?;
        let row = MetricsRow {
            step: self.step,
            tokens: self.samples_seen,
            loss,
            mse: mse_scaled / (self.scale * self.scale),
            fvu,
            explained_variance: 1.0 - fvu,
            l0: out.feature_acts.l0()?,
            l1: out.feature_acts.l1()?,
            dead_frac: dead,
            dense_frac: dense,
            lr,
            sparsity_coefficient: coefficient,
        };
        self.metrics.push(row.clone());
        Ok(Some(row))
    }

    /// Inputs a feature may go without firing before it counts as dead: `cfg.dead_window`, or
    /// a tenth of the planned run when that is shorter, so that a short run's dead fraction
    /// (and AuxK, which feeds on it) means something; at least one batch, and never more than
    /// the inputs seen so far (a feature that has never fired is dead).
    pub fn dead_window(&self) -> u64 {
        let batch = self.source.batch_size() as u64;
        let run = self.cfg.steps.saturating_mul(batch);
        self.cfg
            .dead_window
            .min((run / 10).max(batch))
            .min(self.samples_seen.max(1))
    }

    /// Dead features get a fresh direction: a badly reconstructed input of the current batch
    /// (chosen with probability ∝ squared error, Anthropic 2023), at the mean live decoder norm
    /// and 0.2× the mean live encoder norm (1× for the TopK family, where a feature fires only
    /// among an input's k largest and at 0.2× rarely gets there), with zeroed bias, the
    /// variant's own per-feature tensors reset, and zeroed optimiser moments.
    fn resample_dead(&mut self, x: &Tensor, x_hat: &Tensor) -> Result<()> {
        let window = self.dead_window();
        let dead: Vec<u32> = (0..self.since_fired.len() as u32)
            .filter(|&i| self.since_fired[i as usize] >= window)
            .collect();
        if dead.is_empty() || dead.len() == self.since_fired.len() {
            return Ok(());
        }
        let err = (x - x_hat)?.sqr()?.sum(1)?.to_vec1::<f32>()?;
        let inputs = x.to_vec2::<f32>()?;
        let mut rng = ChaCha8Rng::seed_from_u64(self.cfg.seed ^ self.step);
        let weights = rand::distr::weighted::WeightedIndex::new(err.iter().map(|e| e.max(1e-12)))
            .map_err(|e| Error::Training(format!("cannot resample: {e}")))?;
        let p = self.sae.params().clone();
        let mut w_dec = p.w_dec.as_tensor().to_vec2::<f32>()?;
        let mut w_enc = p.w_enc_t.as_tensor().to_vec2::<f32>()?; // (d_sae, d_in)
        let mut b_enc = p.b_enc.as_tensor().to_vec1::<f32>()?;
        let norm = |v: &[f32]| v.iter().map(|a| a * a).sum::<f32>().sqrt();
        let is_dead = |i: usize| self.since_fired[i] >= window;
        let alive: Vec<usize> = (0..w_dec.len()).filter(|&i| !is_dead(i)).collect();
        let dec_norm = alive.iter().map(|&i| norm(&w_dec[i])).sum::<f32>() / alive.len() as f32;
        let enc_norm = alive.iter().map(|&i| norm(&w_enc[i])).sum::<f32>() / alive.len() as f32;
        let enc_norm = enc_norm
            * if self.sae.config().architecture.uses_k() {
                1.0
            } else {
                0.2
            };
        for &f in &dead {
            use rand::distr::Distribution;
            let v = &inputs[weights.sample(&mut rng)];
            let n = norm(v).max(1e-8);
            w_dec[f as usize] = v.iter().map(|a| a / n * dec_norm).collect();
            w_enc[f as usize] = v.iter().map(|a| a / n * enc_norm).collect();
            b_enc[f as usize] = 0.0;
            self.since_fired[f as usize] = 0;
        }
        let dev = &self.device;
        let (d_sae, d_in) = (w_dec.len(), inputs[0].len());
        p.w_dec
            .set(&Tensor::from_vec(w_dec.concat(), (d_sae, d_in), dev)?)?;
        p.w_enc_t
            .set(&Tensor::from_vec(w_enc.concat(), (d_sae, d_in), dev)?)?;
        p.b_enc.set(&Tensor::from_vec(b_enc, d_sae, dev)?)?;
        self.opt.reset_rows(&p.w_dec, 0, &dead)?;
        self.opt.reset_rows(&p.w_enc_t, 0, &dead)?;
        self.opt.reset_rows(&p.b_enc, 0, &dead)?;
        for (var, value) in self.sae.feature_vars() {
            let mut v = var.as_tensor().to_vec1::<f32>()?;
            for &f in &dead {
                v[f as usize] = value as f32;
            }
            var.set(&Tensor::from_vec(v, d_sae, dev)?)?;
            self.opt.reset_rows(&var, 0, &dead)?;
        }
        Ok(())
    }

    /// The logged metrics as a table, one row per logged step (columns as [`MetricsRow`]'s
    /// fields).
    pub fn metrics_table(&self) -> Table {
        metrics_table(&self.metrics)
    }

    /// The logged metrics as a polars table, one row per logged step.
    #[cfg(feature = "polars")]
    pub fn metrics_frame(&self) -> Result<polars::prelude::DataFrame> {
        metrics_frame(&self.metrics)
    }

    /// The run's health as its last logged step measured it (see [`super::health`]).
    pub fn summary(&self) -> Option<super::RunSummary> {
        let last = self.metrics.last()?;
        Some(super::RunSummary {
            architecture: self.sae.config().architecture,
            d_sae: self.sae.config().d_sae,
            l0: last.l0,
            fvu: last.fvu,
            dead_fraction: last.dead_frac,
            sparsity_coefficient: self.cfg.sparsity_coefficient,
            lr: self.cfg.adam.lr,
        })
    }

    /// Problems with the run so far, each saying what to change (empty when healthy).
    pub fn warnings(&self) -> Vec<String> {
        let mut out: Vec<String> = self.outliers.iter().cloned().collect();
        out.extend(
            self.summary()
                .map(|s| super::diagnose(&s))
                .unwrap_or_default(),
        );
        out
    }

    /// What [`super::diagnose_outliers`] found in the activations at the start (also among
    /// [`warnings`](Self::warnings)): known before the first step, so worth showing then.
    pub fn outliers(&self) -> Option<&str> {
        self.outliers.as_deref()
    }

    /// Per-feature firing frequency over the whole run.
    pub fn feature_frequencies(&self) -> Vec<f64> {
        let n = self.samples_seen.max(1) as f64;
        self.fired_total.iter().map(|&c| c as f64 / n).collect()
    }

    /// Writes the SAE in SAELens' format (scale folded in) plus everything needed to resume.
    pub fn save_checkpoint(&self, dir: &Path) -> Result<()> {
        io::create_dir(dir)?;
        let density = metrics::log10_density(&self.fired_total, self.samples_seen as f64);
        format::save(&self.sae, self.scale, Some(&density), dir)?;
        let mut tensors = self.opt.state()?;
        for (name, var) in self.sae.vars() {
            tensors.insert(format!("sae.{name}"), var.as_tensor().clone());
        }
        let since: Vec<f64> = self.since_fired.iter().map(|&s| s as f64).collect();
        tensors.insert(
            "since_fired".into(),
            Tensor::new(since.as_slice(), &Device::Cpu)?,
        );
        tensors.insert(
            "fired_total".into(),
            Tensor::new(self.fired_total.as_slice(), &Device::Cpu)?,
        );
        // The state goes to a file named by its step and trainer.json, written last, points at
        // it: a kill at any moment leaves trainer.json naming a complete, consistent state.
        let state_file = format!("trainer_state-{:09}.safetensors", self.step);
        io::save_safetensors(&dir.join(&state_file), &tensors)?;
        let state = TrainerState {
            sae: self.sae.config().clone(),
            train: self.cfg.clone(),
            step: self.step,
            scale: self.scale,
            samples_seen: self.samples_seen,
            metrics: self.metrics.clone(),
            outliers: self.outliers.clone(),
            state_file: state_file.clone(),
        };
        io::write_json(&dir.join("trainer.json"), &state)?;
        for entry in std::fs::read_dir(dir)
            .map_err(|e| Error::io("listing", dir, e))?
            .flatten()
        {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("trainer_state-") && name != state_file {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(())
    }
}

/// Metric rows as a table, one column per [`MetricsRow`] field.
pub fn metrics_table(rows: &[MetricsRow]) -> Table {
    let int = |get: fn(&MetricsRow) -> u64| Values::Int(rows.iter().map(get).collect());
    let float = |get: fn(&MetricsRow) -> f64| Values::Float(rows.iter().map(get).collect());
    Table::default()
        .with("step", int(|r| r.step))
        .with("tokens", int(|r| r.tokens))
        .with("loss", float(|r| r.loss))
        .with("mse", float(|r| r.mse))
        .with("fvu", float(|r| r.fvu))
        .with("explained_variance", float(|r| r.explained_variance))
        .with("l0", float(|r| r.l0))
        .with("l1", float(|r| r.l1))
        .with("dead_frac", float(|r| r.dead_frac))
        .with("dense_frac", float(|r| r.dense_frac))
        .with("lr", float(|r| r.lr))
        .with("sparsity_coefficient", float(|r| r.sparsity_coefficient))
}

/// Metric rows as a polars table, one column per [`MetricsRow`] field.
#[cfg(feature = "polars")]
pub fn metrics_frame(rows: &[MetricsRow]) -> Result<polars::prelude::DataFrame> {
    metrics_table(rows).frame()
}
