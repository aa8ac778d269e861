//! Collection throughput on WikiText with the real tokenizer and a random model of
//! pythia-70m-deduped's shape: (a) the tutorial's loop (one document at a time, middle token),
//! (b) the batched collector into an activation store (every token) and (c) the same in the
//! tutorial's middle-token mode, as `sae walkthrough` runs it. Tokens/s counts each document's
//! truncated tokens in every case (the middle-token cases run only the first half). Run through
//! `scripts/bench/collect.sh`, which times the PyTorch tutorial loop on the same documents.
//!
//! Usage: bench_collect MODEL_DIR TOKENIZER TEXT N_DOCS

use std::time::Instant;

use candle_core::{DType, Device};
use sae_lib::collect::{collect_to_store, tutorial_middle_tokens, CollectConfig, Provenance};
use sae_lib::data::{CollectMode, DatasetOptions, DatasetSource};
use sae_lib::hooks::HookPoint;
use sae_lib::hub::HubOptions;
use sae_lib::model::{load_model, ModelSource};
use sae_lib::tokenizer::Tokenizer;

fn main() -> anyhow::Result<()> {
    sae_lib::init_cpu_runtime();
    let args: Vec<String> = std::env::args().collect();
    let [_, model_dir, tokenizer, text, n] = &args[..] else {
        anyhow::bail!("usage: bench_collect MODEL_DIR TOKENIZER TEXT N_DOCS");
    };
    let n: usize = n.parse()?;
    let hub = HubOptions::from_env();
    let model = load_model(
        &ModelSource::Dir(model_dir.into()),
        &Device::Cpu,
        DType::F32,
        &hub,
    )?;
    let tok = Tokenizer::from_file(tokenizer.as_ref())?;
    let docs: Vec<String> = DatasetSource::parse(text)
        .documents(&DatasetOptions::default(), &hub)?
        .take(n)
        .collect::<Result<_, _>>()?;
    let tokens: usize = docs
        .iter()
        .map(|d| tok.encode(d, Some(128)).map(|t| t.len()))
        .sum::<Result<usize, _>>()?;
    let hook = HookPoint::mlp_out(5);

    let start = Instant::now();
    tutorial_middle_tokens(
        &model,
        &tok,
        docs.iter().map(|d| Ok(d.clone())),
        hook,
        128,
        None,
    )?;
    let secs = start.elapsed().as_secs_f64();
    println!("{{\"impl\":\"candle tutorial loop\",\"work\":\"collect\",\"docs\":{n},\"tokens_per_s\":{:.1}}}", tokens as f64 / secs);

    for (mode, name) in [
        (CollectMode::All, "candle batched store"),
        (CollectMode::Middle, "candle batched store, middle token"),
    ] {
        let out = tempfile::tempdir()?;
        let cfg = CollectConfig {
            hook,
            mode,
            batch_size: 32,
            ..Default::default()
        };
        let start = Instant::now();
        collect_to_store(
            &model,
            &tok,
            docs.iter().map(|d| Ok(d.clone())),
            &cfg,
            &Provenance::default(),
            out.path(),
        )?;
        let secs = start.elapsed().as_secs_f64();
        println!(
            "{{\"impl\":\"{name}\",\"work\":\"collect\",\"docs\":{n},\"tokens_per_s\":{:.1}}}",
            tokens as f64 / secs
        );
    }
    Ok(())
}
