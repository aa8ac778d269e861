//! `sae`: the command-line face of sae-lib. Each subcommand is a thin call into the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use candle_core::DType;
use clap::{Args, Parser, Subcommand, ValueEnum};
use sae_lib::collect::{collect_to_store, CollectConfig, Provenance};
use sae_lib::data::{ActivationStore, CollectMode, DatasetOptions, DatasetSource, TxtSplit};
use sae_lib::hooks::HookPoint;
use sae_lib::hub::HubOptions;
use sae_lib::model::{load_model, load_tokenizer, ModelSource};
use sae_lib::sae::{Architecture, SaeConfig, SaeMetadata, SparsityPenalty};
use sae_lib::tokenizer::Tokenizer;
use sae_lib::train::{TrainConfig, Trainer};

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
}

#[derive(Args, Clone)]
struct ModelArgs {
    /// Hub id (`org/name[@revision]`) or local directory.
    #[arg(long, default_value = "EleutherAI/pythia-70m-deduped")]
    model: String,
    /// tokenizer.json to use instead of the model's own.
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// auto, cpu, cuda[:N] or metal[:N].
    #[arg(long, default_value = "auto")]
    device: String,
    /// Model weights dtype.
    #[arg(long, value_enum, default_value_t = Precision::F32)]
    model_dtype: Precision,
}

#[derive(Args, Clone)]
struct DataArgs {
    /// Hub dataset id, or a local .parquet / .jsonl / .txt file or directory.
    #[arg(long, default_value = "NeelNanda/pile-10k")]
    dataset: String,
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
    /// Documents per forward pass.
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Leave out each document's first token (mode all).
    #[arg(long)]
    exclude_first: bool,
    /// Storage dtype of the activations.
    #[arg(long, value_enum, default_value_t = Precision::F32)]
    store_dtype: Precision,
    #[arg(long, default_value_t = 1 << 16)]
    shard_rows: usize,
    /// Output folder for the activation store.
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args)]
struct TrainArgs {
    /// Activation store made by `sae collect`.
    #[arg(long)]
    acts: PathBuf,
    #[arg(long, default_value = "relu")]
    arch: String,
    #[arg(long, default_value_t = 4096)]
    d_sae: usize,
    /// Sparsity coefficient λ.
    #[arg(long, default_value_t = 5.0)]
    l1: f64,
    #[arg(long, default_value_t = 5e-5)]
    lr: f64,
    #[arg(long, default_value_t = 2000)]
    steps: u64,
    #[arg(long, default_value_t = 4096)]
    batch_size: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// decoder-norm (Anthropic, April 2024) or l1-unit-decoder (tutorial-style).
    #[arg(long, value_enum, default_value_t = PenaltyArg::DecoderNorm)]
    penalty: PenaltyArg,
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
    #[arg(long)]
    resume: bool,
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
    }
}

fn load(args: &ModelArgs) -> Result<(sae_lib::model::Model, Tokenizer, ModelSource)> {
    let device = sae_lib::device::parse_device(&args.device)?;
    let hub = HubOptions::from_env();
    let source = ModelSource::parse(&args.model);
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
    (DatasetSource::parse(&args.dataset), opts)
}

fn collect(args: CollectArgs) -> Result<()> {
    let hook: HookPoint = args.hook.parse()?;
    let (model, tokenizer, source) = load(&args.model)?;
    let (data, opts) = dataset(&args.data);
    let docs = data.documents(&opts, &HubOptions::from_env())?;
    let cfg = CollectConfig {
        hook,
        mode: match args.mode {
            ModeArg::Middle => CollectMode::Middle,
            ModeArg::All => CollectMode::All,
        },
        max_len: args.max_len,
        batch_size: args.batch_size,
        max_docs: args.max_docs,
        exclude_first: args.exclude_first,
        shard_rows: args.shard_rows,
        dtype: args.store_dtype.dtype(),
        ..Default::default()
    };
    let provenance = Provenance {
        model: source.name(),
        revision: match &source {
            ModelSource::Hub(r) => Some(r.revision.clone()),
            ModelSource::Dir(_) => None,
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

fn train(args: TrainArgs) -> Result<()> {
    let device = sae_lib::device::parse_device(&args.device)?;
    let store = ActivationStore::open(&args.acts)?;
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        // Ctrl-C: finish the current step, save a checkpoint, exit.
        ctrlc::set_handler(move || stop.store(true, Ordering::SeqCst))
            .context("installing the Ctrl-C handler")?;
    }
    let mut trainer = if args.resume {
        Trainer::resume(&args.out, &store, &device)?
    } else {
        let meta = store.meta();
        let sae_cfg = SaeConfig {
            architecture: Architecture::parse(&args.arch)?,
            d_in: store.d(),
            d_sae: args.d_sae,
            metadata: SaeMetadata {
                model_name: meta.model.clone(),
                hook_name: meta.hook.to_string(),
                context_size: meta.context_size,
                prepend_bos: false,
                dataset_path: meta.dataset.clone(),
            },
        };
        let mut cfg = TrainConfig {
            steps: args.steps,
            batch_size: args.batch_size,
            sparsity_coefficient: args.l1,
            seed: args.seed,
            penalty: match args.penalty {
                PenaltyArg::DecoderNorm => SparsityPenalty::DecoderNorm,
                PenaltyArg::L1UnitDecoder => SparsityPenalty::L1UnitDecoder,
            },
            log_every: args.log_every,
            checkpoint_every: Some(args.checkpoint_every),
            resample_dead_every: args.resample_dead_every,
            ..Default::default()
        };
        cfg.adam.lr = args.lr;
        Trainer::new(sae_cfg, cfg, &store, &device)?
    };
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
            "step {}: loss {:.4}, FVU {:.4}, L0 {:.1}, dead {:.1}%; SAE saved in {}",
            last.step,
            last.loss,
            last.fvu,
            last.l0,
            100.0 * last.dead_frac,
            args.out.display()
        );
    }
    Ok(())
}
