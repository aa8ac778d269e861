//! `sae train --model M --dataset D --hook H [--hook H2 ...] --tokens N`: SAEs trained straight
//! from the model, every hook and every `--sae` configuration from one forward pass.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use anyhow::{bail, Context, Result};
use clap::Args;
use sae_lib::collect::CollectConfig;
use sae_lib::hooks::HookPoint;
use sae_lib::hub::HubOptions;
use sae_lib::sae::{SaeConfig, SaeMetadata};
use sae_lib::train::stream::{DocIter, DEFAULT_BUFFER_ROWS};
use sae_lib::train::{ActivationStream, StreamConfig, StreamJob, TrainConfig};

use super::{dataset, load, mode, DataArgs, ModeArg, ModelArgs, SaeArgs, TrainArgs};

/// Streaming flags of `sae train` (used when `--model` is given instead of `--acts`).
#[derive(Args)]
pub struct StreamArgs {
    /// Train straight from this model (Hub id, directory or .gguf) instead of a store.
    #[arg(long, conflicts_with = "acts")]
    pub model: Option<String>,
    /// tokenizer.json to use instead of the model's own.
    #[arg(long, requires = "model")]
    tokenizer: Option<PathBuf>,
    #[command(flatten)]
    data: DataArgs,
    /// Hook to train on; repeat for several, all read from one forward pass.
    #[arg(long = "hook", requires = "model")]
    hooks: Vec<String>,
    /// Tokens to train on (sets --steps to tokens / batch size).
    #[arg(long, requires = "model")]
    tokens: Option<u64>,
    /// An SAE configuration, `key=value,...` over arch, d_sae, k, l1, lr (the other flags
    /// give the rest); repeat for several SAEs on every hook [default: the flags alone].
    #[arg(long = "sae", requires = "model")]
    saes: Vec<String>,
    /// Rows each hook's shuffle buffer fills to before it is shuffled and served (at least
    /// one pool of eight forward batches).
    #[arg(long, default_value_t = DEFAULT_BUFFER_ROWS)]
    buffer_rows: usize,
    /// Tokens kept per document.
    #[arg(long, default_value_t = 128)]
    max_len: usize,
    /// Rows of up to max-len tokens per forward pass.
    #[arg(long, default_value_t = 32)]
    forward_batch: usize,
    /// `all` tokens (the default here) or the tutorial's `middle` token per document.
    #[arg(long, value_enum, default_value_t = ModeArg::All)]
    mode: ModeArg,
    #[command(flatten)]
    filter: super::FilterArgs,
    /// Read only the first N documents of each pass over the dataset.
    #[arg(long)]
    max_docs: Option<usize>,
    #[arg(long, value_enum, default_value_t = super::Precision::F32)]
    model_dtype: super::Precision,
}

/// One SAE of the job: its folder name and configuration.
struct Planned {
    name: String,
    sae: SaeArgs,
}

/// `key=value,...` over the SAE flags.
fn parse_spec(spec: &str, base: &SaeArgs) -> Result<SaeArgs> {
    let mut sae = base.clone();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) = part
            .split_once('=')
            .with_context(|| format!("--sae `{spec}`: `{part}` is not key=value"))?;
        let bad = |e: &dyn std::fmt::Display| anyhow::anyhow!("--sae `{spec}`: {key}: {e}");
        match key.replace('-', "_").as_str() {
            "arch" => sae.arch = value.into(),
            "d_sae" => sae.d_sae = value.parse().map_err(|e| bad(&e))?,
            "k" => sae.k = Some(value.parse().map_err(|e| bad(&e))?),
            "l1" => sae.l1 = Some(value.parse().map_err(|e| bad(&e))?),
            "lr" => sae.lr = Some(value.parse().map_err(|e| bad(&e))?),
            _ => bail!("--sae `{spec}`: unknown key `{key}` (arch, d_sae, k, l1 or lr)"),
        }
    }
    Ok(sae)
}

fn plan(args: &TrainArgs) -> Result<Vec<Planned>> {
    let specs = if args.stream.saes.is_empty() {
        vec![String::new()]
    } else {
        args.stream.saes.clone()
    };
    let mut planned: Vec<Planned> = Vec::new();
    for spec in &specs {
        let sae = parse_spec(spec, &args.sae)?;
        let (arch, k, cfg) = sae.resolve()?;
        let level = match k {
            Some(k) => format!("k{k}"),
            None => format!("l{}", cfg.sparsity_coefficient),
        };
        let name = format!("{}-{}-{level}", arch.name(), sae.d_sae);
        if planned.iter().any(|p| p.name == name) {
            bail!("two --sae configurations are both {name}");
        }
        planned.push(Planned { name, sae });
    }
    Ok(planned)
}

/// Runs a streaming job for `sae train`.
pub fn train(args: &TrainArgs, stop: &AtomicBool) -> Result<()> {
    let s = &args.stream;
    let hooks: Vec<HookPoint> = if s.hooks.is_empty() {
        vec!["blocks.5.hook_mlp_out".parse()?]
    } else {
        s.hooks
            .iter()
            .map(|h| h.parse())
            .collect::<sae_lib::Result<_>>()?
    };
    let planned = plan(args)?;
    let batch_size = args.sae.batch_size;
    let steps = match s.tokens {
        Some(t) if t < batch_size as u64 => {
            bail!("--tokens {t} is less than one batch ({batch_size} rows)")
        }
        Some(t) => t / batch_size as u64,
        None => args.sae.steps,
    };
    let model_args = ModelArgs {
        model: s.model.clone(),
        tokenizer: s.tokenizer.clone(),
        device: args.device.clone(),
        model_dtype: s.model_dtype,
    };
    let dirs: Vec<(HookPoint, PathBuf, &Planned)> = hooks
        .iter()
        .flat_map(|h| {
            planned
                .iter()
                .map(move |p| (*h, args.out.join(h.to_string()).join(&p.name), p))
        })
        .collect();
    let _lock = if args.resume {
        sae_lib::output::OutputLock::acquire(&args.out)?
    } else {
        let lock = super::take_output(&args.out, args.overwrite)?;
        for (_, dir, _) in &dirs {
            sae_lib::output::refuse_existing(dir, args.overwrite)?;
            if args.overwrite {
                sae_lib::output::clear_run(dir)?;
            }
        }
        lock
    };
    let (model, tokenizer, source) = load(&model_args)?;
    let (data, opts) = dataset(&s.data);
    let dataset_path = data.name();
    let hub = HubOptions::from_env();
    let cfg = StreamConfig {
        hooks: hooks.clone(),
        collect: CollectConfig {
            mode: mode(s.mode),
            max_len: s.max_len,
            batch_size: s.forward_batch,
            max_docs: s.max_docs,
            filter: s.filter.filter(),
            ..Default::default()
        },
        buffer_rows: s.buffer_rows,
        batch_size,
        steps: Some(steps),
        seed: args.sae.seed,
    };
    let open: sae_lib::train::stream::OpenDocs<'_> =
        Box::new(move || -> sae_lib::Result<DocIter<'_>> {
            Ok(Box::new(data.documents(&opts, &hub)?))
        });
    let stream = ActivationStream::new(&model, &tokenizer, open, cfg)?;
    let device = model.device().clone();
    let mut job = if args.resume {
        let runs: Vec<(HookPoint, PathBuf)> =
            dirs.iter().map(|(h, d, _)| (*h, d.clone())).collect();
        for (_, dir) in &runs {
            if !dir.join("trainer.json").is_file() {
                bail!(
                    "nothing to resume in {}: it holds no checkpoint; start the job without \
                     --resume, or give the --hook and --sae flags of the interrupted one",
                    dir.display()
                );
            }
        }
        StreamJob::resume(stream, &args.out, &runs, &device)?
    } else {
        let mut job = StreamJob::new(stream, Some(&args.out), &device)?;
        for (hook, dir, p) in &dirs {
            let (architecture, k, train) = p.sae.resolve()?;
            let train = TrainConfig {
                steps,
                log_every: args.log_every,
                checkpoint_every: Some(args.checkpoint_every),
                resample_dead_every: args.resample_dead_every,
                ..train
            };
            let sae_cfg = SaeConfig {
                architecture,
                d_in: model.width(*hook),
                d_sae: p.sae.d_sae,
                k,
                prefixes: None,
                metadata: SaeMetadata {
                    model_name: source.name(),
                    hook_name: hook.to_string(),
                    context_size: s.max_len,
                    prepend_bos: false,
                    dataset_path: dataset_path.clone(),
                    // The job records the documents the stream has read with each save.
                    training_docs: None,
                    filter: s.filter.filter(),
                },
            };
            job.add(*hook, sae_cfg, train, Some(dir.clone()))?;
        }
        job
    };
    // Known from each SAE's initialisation sample: said now, not only after the run. SAEs
    // on one hook share the sample's rows, so once per hook.
    let mut told = Vec::new();
    for run in job.runs() {
        if let Some(w) = run.trainer.outliers().filter(|_| !told.contains(&run.hook)) {
            eprintln!("warning: {}: {w}", run.hook);
            told.push(run.hook);
        }
    }
    job.train(Some(stop))?;
    report(&job, &args.out)
}

/// Prints each SAE's last metrics and the stream's figures, and writes them to
/// `out/stream_summary.json`.
fn report(job: &StreamJob, out: &Path) -> Result<()> {
    let stats = job.stats();
    let peak = sae_lib::io::peak_rss_bytes();
    for run in job.runs() {
        let t = &run.trainer;
        if let (Some(last), Some(dir)) = (t.metrics().last(), &run.dir) {
            println!(
                "{}: step {}, FVU {:.4}, L0 {:.1}, dead {:.1}% -> {}",
                run.hook,
                last.step,
                last.fvu,
                last.l0,
                100.0 * last.dead_frac,
                dir.display()
            );
        }
        super::warn_all(&t.warnings());
    }
    println!(
        "stream: {} tokens through the model in {:.1} s, {} documents, {:.1} distinct documents \
         per batch, peak RSS {}",
        stats.tokens_forwarded,
        stats.fill_seconds,
        stats.docs_read,
        stats.mean_docs_per_batch(),
        peak.map_or("unknown".into(), |b| format!("{:.0} MB", b as f64 / 1e6))
    );
    if stats.outliers_dropped > 0 {
        println!(
            "stream: {} outlier tokens left out (--drop-outliers)",
            stats.outliers_dropped
        );
    }
    sae_lib::io::write_json(
        &out.join("stream_summary.json"),
        &serde_json::json!({
            "stats": stats,
            "mean_docs_per_batch": stats.mean_docs_per_batch(),
            "peak_rss_bytes": peak,
        }),
    )?;
    Ok(())
}
