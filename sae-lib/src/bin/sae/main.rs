//! `sae`: the command-line face of sae-lib. Each subcommand is a thin call into the library.

mod eval;
mod report;
mod stream;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use candle_core::DType;
use clap::{Args, Parser, Subcommand, ValueEnum};
use sae_lib::collect::{collect_to_store, CollectConfig, Provenance};
use sae_lib::data::{
    ActivationStore, CollectMode, DatasetOptions, DatasetSource, TokenFilter, TxtSplit,
};
use sae_lib::hooks::HookPoint;
use sae_lib::hub::HubOptions;
use sae_lib::model::{load_model, load_tokenizer, ModelSource};
use sae_lib::output::{self, OutputLock};
use sae_lib::sae::{Architecture, Sae, SaeConfig, SaeMetadata, SparsityPenalty};
use sae_lib::tokenizer::Tokenizer;
use sae_lib::train::{BDecInit, Compute, TrainConfig, Trainer};

#[derive(Parser)]
#[command(
    name = "sae",
    version,
    about = "Sparse autoencoders for mechanistic interpretability"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a model over a dataset and store activations at a hook point.
    Collect(CollectArgs),
    /// Train an SAE on stored activations.
    Train(TrainArgs),
    /// Evaluate an SAE spliced into the model: CE loss recovered, KL.
    Eval(eval::EvalArgs),
    /// Show one feature: top activating contexts, activation histogram, logit lens.
    Inspect(eval::InspectArgs),
    /// The whole tutorial headless: collect, train, evaluate, report.
    Walkthrough(WalkthroughArgs),
    /// Train every SAE variant over several sparsity levels and compare them.
    Sweep(SweepArgs),
    /// The model's own next-token loss on a dataset, against a unigram baseline.
    LmLoss(LmLossArgs),
    /// Score an SAE on stored activations (held out, say): FVU, L0, dead features.
    Score(ScoreArgs),
}

#[derive(Args)]
struct ScoreArgs {
    /// SAE folder, written by `sae train`, SAELens, sparsify (one hookpoint's folder) or
    /// dictionary_learning: on disk, a Hugging Face Hub repository's folder as
    /// `org/name[@revision]/folder`, or SAELens' `release/sae_id` as `SAE.from_pretrained`
    /// takes them (`pythia-70m-deduped-mlp-sm/blocks.5.hook_mlp_out`).
    #[arg(long)]
    sae: PathBuf,
    /// Activation store to score it on.
    #[arg(long)]
    acts: PathBuf,
    #[arg(long, default_value = "auto")]
    device: String,
    /// Also write the scores as JSON here.
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Args)]
struct LmLossArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Dataset to evaluate on.
    #[command(flatten)]
    data: DataArgs,
    /// Dataset the unigram baseline counts tokens in (another split of the same corpus).
    #[arg(long)]
    unigram_dataset: String,
    /// Documents to evaluate on.
    #[arg(long, default_value_t = 200)]
    max_docs: usize,
    #[arg(long, default_value_t = 128)]
    max_len: usize,
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
}

#[derive(Args)]
struct SweepArgs {
    /// Activation store made by `sae collect`.
    #[arg(long)]
    acts: PathBuf,
    /// Comma-separated architectures.
    #[arg(
        long,
        default_value = "relu,topk,batchtopk,jumprelu,gated,matryoshka",
        value_delimiter = ','
    )]
    archs: Vec<String>,
    #[arg(long, default_value_t = 4096)]
    d_sae: usize,
    /// k values for topk, batchtopk and matryoshka [default: half, once and twice the default
    /// k].
    #[arg(long, value_delimiter = ',')]
    ks: Option<Vec<usize>>,
    /// L1 coefficients for relu and gated [default: half, once and twice each one's default].
    #[arg(long, value_delimiter = ',')]
    l1: Option<Vec<f64>>,
    /// L0 coefficients for jumprelu [default: half, once and twice its default].
    #[arg(long, value_delimiter = ',')]
    l0: Option<Vec<f64>>,
    #[arg(long, default_value_t = 2000)]
    steps: u64,
    #[arg(long, default_value_t = 4096)]
    batch_size: usize,
    /// Learning rate for every run [default: each architecture's own].
    #[arg(long)]
    lr: Option<f64>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, default_value = "auto")]
    device: String,
    /// Rows every SAE is measured on: the store's last, which none trains on (at most a
    /// tenth of the store; 0 measures on the training rows).
    #[arg(long, default_value_t = sae_lib::sweep::DEFAULT_EVAL_ROWS)]
    eval_rows: usize,
    /// Output folder: sweep.json and pareto_fvu.png / .svg.
    #[arg(long, default_value = "sweep")]
    out: PathBuf,
    /// Replace a sweep already in --out.
    #[arg(long)]
    overwrite: bool,
}

#[derive(Args)]
struct WalkthroughArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    data: DataArgs,
    #[arg(long, default_value = "blocks.5.hook_mlp_out")]
    hook: String,
    #[arg(long, value_enum, default_value_t = ModeArg::Middle)]
    mode: ModeArg,
    #[arg(long, default_value_t = 128)]
    max_len: usize,
    #[command(flatten)]
    filter: FilterArgs,
    /// Training documents (default: all but the held-out ones, which are then the dataset's
    /// last).
    #[arg(long)]
    max_docs: Option<usize>,
    /// Held-out documents for the evaluation, after the training ones (without --max-docs, at
    /// most a tenth of the dataset).
    #[arg(long, default_value_t = 100)]
    eval_docs: usize,
    #[command(flatten)]
    sae: SaeArgs,
    /// Report folder. Stages already there with the same settings are reused.
    #[arg(long, default_value = "walkthrough")]
    out: PathBuf,
    /// Recompute stages already in --out that were made with other settings.
    #[arg(long)]
    overwrite: bool,
}

#[derive(Args, Clone)]
struct ModelArgs {
    /// Hub id (`org/name[@revision]`), local directory, or llama.cpp `.gguf` file [default:
    /// for eval and inspect the SAE's own model (its cfg.json), otherwise
    /// EleutherAI/pythia-70m-deduped].
    #[arg(long)]
    model: Option<String>,
    /// tokenizer.json to use instead of the model's own.
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// auto, cpu, cuda or cuda:N, metal or metal:N.
    #[arg(long, default_value = "auto")]
    device: String,
    /// Model weights dtype.
    #[arg(long, value_enum, default_value_t = Precision::F32)]
    model_dtype: Precision,
}

impl ModelArgs {
    fn model(&self) -> &str {
        self.model.as_deref().unwrap_or(sae_lib::TUTORIAL_MODEL)
    }
}

#[derive(Args, Clone)]
struct DataArgs {
    /// Hub dataset id, or a local .parquet / .jsonl / .txt file or directory [default: for
    /// eval and inspect the SAE's own dataset (its cfg.json), otherwise NeelNanda/pile-10k].
    #[arg(long)]
    dataset: Option<String>,
    /// Hub split.
    #[arg(long, default_value = "train")]
    split: String,
    /// Text column (parquet) or field (jsonl).
    #[arg(long, default_value = "text")]
    column: String,
    /// How .txt files split into documents.
    #[arg(long, value_enum, default_value_t = TxtSplitArg::BlankLines)]
    txt_split: TxtSplitArg,
}

impl DataArgs {
    fn dataset(&self) -> &str {
        self.dataset.as_deref().unwrap_or(sae_lib::TUTORIAL_DATASET)
    }
}

/// Tokens to leave out of the activations.
#[derive(Args, Debug, Clone)]
struct FilterArgs {
    /// Leave out each document's first token (mode all).
    #[arg(long)]
    exclude_first: bool,
    /// Leave out tokens whose activation norm is over RATIO times the median of their forward
    /// batch (attention sinks, often each document's first few tokens); RATIO defaults to 10.
    /// Recorded with the SAE, so that `sae eval` leaves these tokens alone too.
    #[arg(long, value_name = "RATIO", num_args = 0..=1, default_missing_value = "10")]
    drop_outliers: Option<f32>,
}

impl FilterArgs {
    fn filter(&self) -> TokenFilter {
        TokenFilter {
            exclude_first: self.exclude_first,
            outlier_norm: self.drop_outliers,
        }
    }
}

#[derive(Args)]
struct CollectArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    data: DataArgs,
    #[arg(long, default_value = "blocks.5.hook_mlp_out")]
    hook: String,
    /// `middle`: the tutorial's middle token per document; `all`: every token.
    #[arg(long, value_enum, default_value_t = ModeArg::Middle)]
    mode: ModeArg,
    /// Tokens kept per document.
    #[arg(long, default_value_t = 128)]
    max_len: usize,
    /// Stop after this many documents.
    #[arg(long)]
    max_docs: Option<usize>,
    /// Rows of up to max-len tokens per forward pass (short documents are packed together).
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// One document per row instead of packing short ones together.
    #[arg(long)]
    no_pack: bool,
    #[command(flatten)]
    filter: FilterArgs,
    /// Storage dtype of the activations.
    #[arg(long, value_enum, default_value_t = Precision::F32)]
    store_dtype: Precision,
    #[arg(long, default_value_t = 1 << 16)]
    shard_rows: usize,
    /// Output folder for the activation store.
    #[arg(long)]
    out: PathBuf,
    /// Replace a store already in --out.
    #[arg(long)]
    overwrite: bool,
}

#[derive(Args)]
struct TrainArgs {
    /// Activation store made by `sae collect` (or train from a model with --model).
    #[arg(long, required_unless_present = "model")]
    acts: Option<PathBuf>,
    #[command(flatten)]
    stream: stream::StreamArgs,
    #[command(flatten)]
    sae: SaeArgs,
    #[arg(long, default_value_t = 50)]
    log_every: u64,
    #[arg(long, default_value_t = 500)]
    checkpoint_every: u64,
    /// Resample dead features every N steps.
    #[arg(long)]
    resample_dead_every: Option<u64>,
    #[arg(long, default_value = "auto")]
    device: String,
    /// Output folder (SAELens format plus the training state).
    #[arg(long)]
    out: PathBuf,
    /// Continue the run checkpointed in --out.
    #[arg(long, conflicts_with = "overwrite")]
    resume: bool,
    /// Replace a run already in --out (its SAE, checkpoints and metrics are deleted).
    #[arg(long)]
    overwrite: bool,
}

/// The SAE and its training, shared by `train` and `walkthrough`. Unset values take the
/// architecture's defaults (README, "Defaults").
#[derive(Args, Clone)]
struct SaeArgs {
    /// relu, topk, batchtopk, jumprelu, gated or matryoshka.
    #[arg(long, default_value = "relu")]
    arch: String,
    #[arg(long, default_value_t = 4096)]
    d_sae: usize,
    /// Active features per input (topk, batchtopk, matryoshka) [default: 32, at most d_sae/8].
    #[arg(long)]
    k: Option<usize>,
    /// Sparsity coefficient λ: L1 for relu and gated, L0 for jumprelu [default: 2 for relu
    /// and gated, 3 for jumprelu].
    #[arg(long)]
    l1: Option<f64>,
    /// Adam's learning rate [default: 2e-4 / sqrt(d_sae / 16384), 4e-4 at 4,096 features].
    #[arg(long)]
    lr: Option<f64>,
    #[arg(long, default_value_t = 2000)]
    steps: u64,
    #[arg(long, default_value_t = 4096)]
    batch_size: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// decoder-norm (Anthropic, April 2024) or l1-unit-decoder (tutorial-style).
    #[arg(long, value_enum, default_value_t = PenaltyArg::DecoderNorm)]
    penalty: PenaltyArg,
    /// Fraction of the steps at the end over which the learning rate decays linearly to 0
    /// [default: the architecture's; README, "Defaults"].
    #[arg(long)]
    lr_decay: Option<f64>,
    /// How b_dec starts [default: the architecture's; README, "Defaults"].
    #[arg(long, value_enum)]
    b_dec_init: Option<BDecInitArg>,
    /// JumpReLU's starting threshold θ₀, on inputs scaled to E‖x − x̄‖ = √d_in [default:
    /// 0.1]. Higher starts most features below θ: fewer stay alive, and on a small store
    /// (many passes) those few generalise better (BENCHMARKS.md).
    #[arg(long)]
    init_threshold: Option<f64>,
    /// Training arithmetic: f32, or bf16 with the weights and Adam's state in f32 (mixed
    /// precision, for GPUs; slower on the CPU, where candle widens bf16 matmuls to f32).
    #[arg(long, value_enum, default_value_t = ComputeArg::F32)]
    dtype: ComputeArg,
}

#[derive(Clone, Copy, ValueEnum)]
enum BDecInitArg {
    /// The geometric median of a sample of the (scaled) inputs.
    GeometricMedian,
    /// Their mean.
    Mean,
    /// Zero.
    Zeros,
    /// Zero unless the inputs' mean is longer than their typical distance from it.
    ZerosUnlessOffset,
}

#[derive(Clone, Copy, ValueEnum)]
enum ComputeArg {
    F32,
    Bf16,
}

impl SaeArgs {
    /// The architecture, its `k` and the training configuration, with the architecture's
    /// defaults for whatever was not given.
    fn resolve(&self) -> Result<(Architecture, Option<usize>, TrainConfig)> {
        let arch = Architecture::parse(&self.arch)?;
        let defaults = arch.defaults(self.d_sae);
        let k = match (arch.uses_k(), self.k) {
            (true, k) => k.or(defaults.k),
            (false, None) => None,
            (false, Some(_)) => anyhow::bail!(
                "--k applies to topk, batchtopk and matryoshka; {} sets its sparsity with --l1",
                arch.name()
            ),
        };
        let mut cfg = TrainConfig {
            steps: self.steps,
            batch_size: self.batch_size,
            seed: self.seed,
            penalty: match self.penalty {
                PenaltyArg::DecoderNorm => SparsityPenalty::DecoderNorm,
                PenaltyArg::L1UnitDecoder => SparsityPenalty::L1UnitDecoder,
            },
            compute: match self.dtype {
                ComputeArg::F32 => Compute::F32,
                ComputeArg::Bf16 => Compute::Bf16,
            },
            ..TrainConfig::for_architecture(arch, self.d_sae)
        };
        if let Some(l1) = self.l1 {
            cfg.sparsity_coefficient = l1;
        }
        if let Some(lr) = self.lr {
            cfg.adam.lr = lr;
        }
        if let Some(frac) = self.lr_decay {
            cfg.lr_decay_frac = frac;
        }
        if let Some(theta) = self.init_threshold {
            if arch != Architecture::JumpRelu {
                anyhow::bail!(
                    "--init-threshold applies to jumprelu; {} has no learned threshold to start",
                    arch.name()
                );
            }
            cfg.init_threshold = Some(theta);
        }
        if let Some(init) = self.b_dec_init {
            cfg.b_dec_init = match init {
                BDecInitArg::GeometricMedian => BDecInit::GeometricMedian,
                BDecInitArg::Mean => BDecInit::Mean,
                BDecInitArg::Zeros => BDecInit::Zeros,
                BDecInitArg::ZerosUnlessOffset => BDecInit::ZerosUnlessOffset,
            };
        }
        Ok((arch, k, cfg))
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum Precision {
    F32,
    F16,
    Bf16,
}

impl Precision {
    fn dtype(self) -> DType {
        match self {
            Precision::F32 => DType::F32,
            Precision::F16 => DType::F16,
            Precision::Bf16 => DType::BF16,
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum ModeArg {
    Middle,
    All,
}

#[derive(Clone, Copy, ValueEnum)]
enum TxtSplitArg {
    BlankLines,
    WholeFile,
}

#[derive(Clone, Copy, ValueEnum)]
enum PenaltyArg {
    DecoderNorm,
    L1UnitDecoder,
}

fn main() -> ExitCode {
    sae_lib::init_cpu_runtime();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Collect(args) => collect(args),
        Command::Train(args) => train(args),
        Command::Eval(args) => eval::eval(args),
        Command::Inspect(args) => eval::inspect(args),
        Command::Walkthrough(args) => walkthrough(args),
        Command::Sweep(args) => sweep(args),
        Command::LmLoss(args) => lm_loss(args),
        Command::Score(args) => score(args),
    }
}

/// The folder `--sae` names, fetched from the Hub when it names a repository's folder.
fn sae_folder(spec: &Path) -> Result<PathBuf> {
    Ok(sae_lib::sae::locate(
        &spec.to_string_lossy(),
        &HubOptions::from_env(),
    )?)
}

fn load(args: &ModelArgs) -> Result<(sae_lib::model::Model, Tokenizer, ModelSource)> {
    let device = sae_lib::device::parse_device(&args.device)?;
    let hub = HubOptions::from_env();
    let source = ModelSource::parse(args.model());
    let model = load_model(&source, &device, args.model_dtype.dtype(), &hub)?;
    let tokenizer = match &args.tokenizer {
        Some(path) => Tokenizer::from_file(path)?,
        None => load_tokenizer(&source, &hub)?,
    };
    Ok((model, tokenizer, source))
}

fn dataset(args: &DataArgs) -> (DatasetSource, DatasetOptions) {
    let opts = DatasetOptions {
        column: args.column.clone(),
        split: args.split.clone(),
        txt_split: match args.txt_split {
            TxtSplitArg::BlankLines => TxtSplit::BlankLines,
            TxtSplitArg::WholeFile => TxtSplit::WholeFile,
        },
    };
    (DatasetSource::parse(args.dataset()), opts)
}

fn mode(m: ModeArg) -> CollectMode {
    match m {
        ModeArg::Middle => CollectMode::Middle,
        ModeArg::All => CollectMode::All,
    }
}

fn collect(args: CollectArgs) -> Result<()> {
    let hook: HookPoint = args.hook.parse()?;
    let cfg = CollectConfig {
        hook,
        mode: mode(args.mode),
        max_len: args.max_len,
        batch_size: args.batch_size,
        pack: !args.no_pack,
        max_docs: args.max_docs,
        filter: args.filter.filter(),
        shard_rows: args.shard_rows,
        dtype: args.store_dtype.dtype(),
        ..Default::default()
    };
    cfg.validate()?;
    let _lock = take_output(&args.out, args.overwrite)?;
    let (model, tokenizer, source) = load(&args.model)?;
    let (data, opts) = dataset(&args.data);
    let docs = data.documents(&opts, &HubOptions::from_env())?;
    let provenance = Provenance {
        model: source.name(),
        revision: match &source {
            ModelSource::Hub(r) => Some(r.revision.clone()),
            ModelSource::Dir(_) | ModelSource::Gguf(_) => None,
        },
        dataset: data.name(),
    };
    let meta = collect_to_store(&model, &tokenizer, docs, &cfg, &provenance, &args.out)?;
    println!(
        "stored {} activations of width {} from {} documents ({} empty skipped) in {}",
        meta.rows,
        meta.d,
        meta.docs,
        meta.skipped_empty,
        args.out.display()
    );
    Ok(())
}

/// Prints each warning of a finished run on stderr, loudly.
fn warn_all<S: AsRef<str>>(warnings: &[S]) {
    for w in warnings {
        eprintln!("warning: {}", w.as_ref());
    }
}

/// Takes `out` for this run: the lock, then the refusal to replace a finished or checkpointed
/// run there unless `overwrite` (which clears it).
fn take_output(out: &Path, overwrite: bool) -> Result<OutputLock> {
    let lock = OutputLock::acquire(out)?;
    output::refuse_existing(out, overwrite)?;
    if overwrite {
        output::clear_run(out)?;
    }
    Ok(lock)
}

fn train(args: TrainArgs) -> Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        // Ctrl-C: finish the current step, save a checkpoint, exit.
        ctrlc::set_handler(move || stop.store(true, Ordering::SeqCst))
            .context("installing the Ctrl-C handler")?;
    }
    if args.stream.model.is_some() {
        stream::train(&args, &stop)?;
        if stop.load(Ordering::SeqCst) {
            eprintln!(
                "interrupted: checkpoints saved in {}; continue with the same command and --resume",
                args.out.display()
            );
        }
        return Ok(());
    }
    let acts = args
        .acts
        .as_deref()
        .context("--acts or --model is required")?;
    let device = sae_lib::device::parse_device(&args.device)?;
    // Every number is checked before any work starts.
    let fresh = if args.resume {
        None
    } else {
        let (architecture, k, train) = args.sae.resolve()?;
        sae_lib::sae::validate_shape(architecture, args.sae.d_sae, k)?;
        let cfg = TrainConfig {
            log_every: args.log_every,
            checkpoint_every: Some(args.checkpoint_every),
            resample_dead_every: args.resample_dead_every,
            ..train
        };
        cfg.validate(!architecture.uses_k())?;
        Some((architecture, k, cfg))
    };
    let store = ActivationStore::open(acts)?;
    let _lock = match fresh {
        None => {
            let lock = OutputLock::acquire(&args.out)?;
            if !args.out.join("trainer.json").is_file() {
                anyhow::bail!(
                    "nothing to resume in {}: it holds no checkpoint (trainer.json); start a new \
                     run without --resume",
                    args.out.display()
                );
            }
            lock
        }
        Some(_) => take_output(&args.out, args.overwrite)?,
    };
    let mut trainer = match fresh {
        None => Trainer::resume(&args.out, &store, &device)?,
        Some((architecture, k, cfg)) => {
            let meta = store.meta();
            let sae_cfg = SaeConfig {
                architecture,
                d_in: store.d(),
                d_sae: args.sae.d_sae,
                k,
                prefixes: None,
                metadata: SaeMetadata::of_store(meta),
            };
            Trainer::new(sae_cfg, cfg, &store, &device)?
        }
    };
    // Known from the initialisation sample: said now, not only after the run.
    warn_all(trainer.outliers().as_slice());
    trainer.train(Some(&args.out), Some(&stop))?;
    if stop.load(Ordering::SeqCst) {
        eprintln!(
            "interrupted at step {}: checkpoint saved in {}; continue with --resume",
            trainer.step(),
            args.out.display()
        );
        return Ok(());
    }
    if let Some(last) = trainer.metrics().last() {
        println!(
            "step {}: loss {:.4}, FVU {:.4}, L0 {:.1}, dead {:.1}% (on training rows); SAE saved \
             in {}",
            last.step,
            last.loss,
            last.fvu,
            last.l0,
            100.0 * last.dead_frac,
            args.out.display()
        );
        let passes = last.passes(store.len());
        if passes >= REPEAT_NOTE_PASSES {
            eprintln!(
                "note: the run read each of the store's {} rows about {passes:.0} times, so the \
                 FVU above can be well below the FVU on rows it never saw; score a held-out store \
                 with `sae score --sae {} --acts <store>`, or collect more rows",
                store.len(),
                args.out.display()
            );
            let jumprelu = trainer.sae().config().architecture == Architecture::JumpRelu;
            if jumprelu && trainer.config().init_threshold.is_none() {
                eprintln!(
                    "note: on so few rows a JumpReLU started as SAELens' sparse runs start, \
                     from a higher threshold and b_dec at zero (--init-threshold 0.7 \
                     --b-dec-init zeros), keeps a few hundred features alive and those \
                     generalise better than every feature alive; the dead-feature warning \
                     will then be expected (README, \"Defaults\")"
                );
            }
        }
    }
    warn_all(&trainer.warnings());
    Ok(())
}

/// Passes over a store from which `sae train` points at held-out scoring: at 20 passes a
/// 16,384-feature JumpReLU scored FVU 0.09 on its 49,390 training rows and 0.29 held out
/// (BENCHMARKS.md, JumpReLU against SAELens).
const REPEAT_NOTE_PASSES: f64 = 10.0;

fn score(args: ScoreArgs) -> Result<()> {
    let device = sae_lib::device::parse_device(&args.device)?;
    let store = ActivationStore::open(&args.acts)?;
    let sae = sae_lib::sae::format::load(&sae_folder(&args.sae)?, &device)?;
    let progress = sae_lib::progress::Progress::new("score", Some(store.len() as u64), "rows");
    let scored = sae_lib::eval::score(&store, &sae, &device, &mut |n| progress.inc(n as u64))?;
    progress.finish();
    let json = serde_json::to_string(&scored)?;
    println!("{json}");
    if let Some(out) = &args.out {
        sae_lib::io::write_json(out, &scored)?;
    }
    Ok(())
}

fn lm_loss(args: LmLossArgs) -> Result<()> {
    let (model, tokenizer, _) = load(&args.model)?;
    let tokenize = |data: &DataArgs, max_docs: usize| -> Result<Vec<Vec<u32>>> {
        let (source, opts) = dataset(data);
        Ok(source
            .documents(&opts, &HubOptions::from_env())?
            .take(max_docs)
            .map(|d| tokenizer.encode(&d?, Some(args.max_len)))
            .collect::<sae_lib::Result<Vec<_>>>()?)
    };
    let sequences = tokenize(&args.data, args.max_docs)?;
    let unigram_data = DataArgs {
        dataset: Some(args.unigram_dataset.clone()),
        ..args.data.clone()
    };
    let fit = tokenize(&unigram_data, usize::MAX)?;
    let loss = sae_lib::eval::lm_loss(&model, &sequences, &fit, args.batch_size)?;
    println!(
        "next-token CE {:.4} nats/token, unigram baseline {:.4} nats/token ({} tokens)",
        loss.ce_loss, loss.unigram_ce_loss, loss.tokens
    );
    Ok(())
}

fn walkthrough(args: WalkthroughArgs) -> Result<()> {
    use report::run;
    use sae_lib::walkthrough::WalkthroughConfig;
    let (_, opts) = dataset(&args.data);
    let (architecture, k, train) = args.sae.resolve()?;
    let train = TrainConfig {
        checkpoint_every: None,
        ..train
    };
    let m = mode(args.mode);
    let cfg = WalkthroughConfig {
        model: args.model.model().to_string(),
        tokenizer: args.model.tokenizer.clone(),
        dataset: args.data.dataset().to_string(),
        dataset_options: opts,
        collect: CollectConfig {
            hook: args.hook.parse()?,
            mode: m,
            max_len: args.max_len,
            max_docs: args.max_docs,
            // The faithful middle-token collection runs one prompt at a time, as the tutorial does.
            batch_size: if m == CollectMode::Middle { 1 } else { 32 },
            pack: m != CollectMode::Middle,
            filter: args.filter.filter(),
            ..Default::default()
        },
        architecture,
        d_sae: args.sae.d_sae,
        k,
        train,
        eval_docs: args.eval_docs,
        inspect_features: 4,
        device: sae_lib::device::parse_device(&args.model.device)?,
        model_dtype: args.model.model_dtype.dtype(),
        out: args.out.clone(),
    };
    cfg.validate()?;
    let _lock = OutputLock::acquire(&cfg.out)?;
    match sae_lib::walkthrough::conflicts(&cfg) {
        Some(what) if !args.overwrite => {
            return Err(sae_lib::Error::OutputExists {
                path: cfg.out.clone(),
                what,
            }
            .into())
        }
        Some(_) => sae_lib::walkthrough::forget_stages(&cfg),
        None => {}
    }
    let report = run(&cfg)?;
    let held_out = report.held_out.as_ref().map_or(String::new(), |h| {
        format!("held out: FVU {:.4}, L0 {:.2}; ", h.fvu, h.l0)
    });
    println!(
        "{held_out}training rows: FVU {:.4}, L0 {:.2}, dead {:.1}%; CE loss recovered {:.4}; \
         report in {}/index.html",
        report.fvu,
        report.l0,
        100.0 * report.dead_fraction,
        report.splice.ce_loss_score,
        args.out.display()
    );
    if report.splice.ce_loss_score > 1.0 {
        println!("note: {}", sae_lib::eval::CE_ABOVE_ONE);
    }
    warn_all(&report.warnings);
    Ok(())
}

fn sweep(args: SweepArgs) -> Result<()> {
    use sae_lib::sweep::{pareto_chart, run_sweep, sweep_frame, SweepConfig};
    let device = sae_lib::device::parse_device(&args.device)?;
    let train = TrainConfig {
        steps: args.steps,
        batch_size: args.batch_size,
        seed: args.seed,
        checkpoint_every: None,
        ..Default::default()
    };
    let cfg = SweepConfig {
        architectures: args
            .archs
            .iter()
            .map(|a| Architecture::parse(a))
            .collect::<sae_lib::Result<_>>()?,
        d_sae: args.d_sae,
        ks: args.ks,
        l1_coefficients: args.l1,
        l0_coefficients: args.l0,
        lr: args.lr,
        train,
        eval_rows: args.eval_rows,
        ..Default::default()
    };
    cfg.validate()?;
    let store = ActivationStore::open(&args.acts)?;
    let _lock = take_output(&args.out, args.overwrite)?;
    let meta = store.meta();
    let cfg = SweepConfig {
        metadata: SaeMetadata::of_store(meta),
        ..cfg
    };
    let points = run_sweep(&store, &cfg, None, &device)?;
    println!("{}", sweep_frame(&points)?);
    match sae_lib::sweep::held_out_rows(store.len(), cfg.eval_rows) {
        0 => println!("L0, FVU and dead: on the training rows (too few to hold any out)"),
        held => println!("L0, FVU and dead: on the store's last {held} rows, held out of training"),
    }
    for p in &points {
        for w in &p.warnings {
            eprintln!("warning: {} at {}: {w}", p.architecture, p.sparsity_setting);
        }
    }
    sae_lib::io::write_json(&args.out.join("sweep.json"), &points)?;
    let chart = pareto_chart(&points, sae_lib::plot::ParetoMetric::Fvu);
    chart.save_png(&args.out.join("pareto_fvu.png"))?;
    chart.save_svg(&args.out.join("pareto_fvu.svg"))?;
    println!("wrote {}/sweep.json and pareto_fvu.png", args.out.display());
    Ok(())
}
