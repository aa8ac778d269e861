//! Forward throughput up to `blocks.5.hook_mlp_out` on a random model with
//! pythia-70m-deduped's exact shape. Run through `scripts/bench/forward.sh`, which runs the
//! PyTorch reference on the same work in the same run and prints the ratios.
//!
//! Prints one JSON line per batch size: {"impl":"candle","device":D,"batch":B,"seq":T,"tokens_per_s":...}.
//! `SAE_DEVICE=cuda` runs it on the GPU (a `--features cuda` build).

use std::collections::HashMap;
use std::time::Instant;

use candle_core::{DType, Tensor};
use candle_nn::{VarBuilder, VarMap};
use sae_lib::hooks::{HookPoint, Hooks};
use sae_lib::model::gpt_neox::{Config, GptNeoX};
use sae_lib::model::TokenBatch;

fn main() -> anyhow::Result<()> {
    sae_lib::init_cpu_runtime();
    let seq = 128;
    let batches: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse())
        .collect::<Result<_, _>>()?;
    let batches = if batches.is_empty() {
        vec![1, 32]
    } else {
        batches
    };
    let device_name = std::env::var("SAE_DEVICE").unwrap_or_else(|_| "cpu".into());
    let device = sae_lib::device::parse_device(&device_name)?;
    let cfg = Config::pythia_70m_deduped();
    let varmap = VarMap::new();
    // The loader looks for the output head before it builds the model; an empty map has none.
    varmap.get(
        (cfg.vocab_size, cfg.hidden_size),
        "embed_out.weight",
        candle_nn::Init::Randn {
            mean: 0.0,
            stdev: 0.02,
        },
        DType::F32,
        &device,
    )?;
    GptNeoX::load(VarBuilder::from_varmap(&varmap, DType::F32, &device), &cfg)?;
    // Plain tensors, as a checkpoint gives them: a model of `Var`s would record a graph for
    // backpropagation, which the CPU's own kernels leave to stock ops.
    let weights: HashMap<String, Tensor> = varmap
        .data()
        .lock()
        .map_err(|_| anyhow::anyhow!("the VarMap's lock is poisoned"))?
        .iter()
        .map(|(name, var)| (name.clone(), var.as_tensor().detach()))
        .collect();
    let model = GptNeoX::load(VarBuilder::from_tensors(weights, DType::F32, &device), &cfg)?;
    let hook = HookPoint::mlp_out(5);
    for b in batches {
        let ids =
            Tensor::rand(0f32, cfg.vocab_size as f32, (b, seq), &device)?.to_dtype(DType::U32)?;
        let batch = TokenBatch::new(&ids, None)?;
        let run = || -> anyhow::Result<()> {
            let mut hooks = Hooks::new().capture(hook).stop_at(hook);
            model.forward(&batch, &mut hooks)?;
            Ok(())
        };
        run()?; // warm-up
                // A GPU batch takes milliseconds: more of them steady the figure.
        let iters = if device.is_cpu() {
            (256 / b).max(3)
        } else {
            20
        };
        let start = Instant::now();
        for _ in 0..iters {
            run()?;
        }
        device.synchronize()?;
        let secs = start.elapsed().as_secs_f64();
        let tokens_per_s = (iters * b * seq) as f64 / secs;
        println!("{{\"impl\":\"candle\",\"device\":\"{device_name}\",\"batch\":{b},\"seq\":{seq},\"tokens_per_s\":{tokens_per_s:.1}}}");
    }
    Ok(())
}
