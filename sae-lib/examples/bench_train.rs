//! SAE training throughput: d_in 512, d_sae 4096, batch 4096, Anthropic's April 2024 loss with
//! Adam and gradient clipping, on random activations. Run through `scripts/bench/train.sh`,
//! which times the same loss and optimiser in PyTorch in the same run.
//!
//! Usage: bench_train [ARCH] [STEPS] [D_SAE] [D_IN] [BATCH]   (ARCH: relu, topk, ...; TopK-style
//! use k = 32; D_IN and BATCH default to 512 and 4096; `SAE_DEVICE=cuda` trains on the GPU,
//! `SAE_DTYPE=bf16` in mixed precision). On stderr, where the step's time goes.

use std::time::Instant;

use candle_core::{Device, Tensor};
use sae_lib::sae::{Architecture, LossContext, Sae, SaeConfig, SaeMetadata};
use sae_lib::train::{Compute, TrainConfig, Trainer};

fn main() -> anyhow::Result<()> {
    sae_lib::init_cpu_runtime();
    let arch = std::env::args().nth(1).unwrap_or_else(|| "relu".into());
    let steps: u64 = std::env::args()
        .nth(2)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(20);
    let d_sae: usize = std::env::args()
        .nth(3)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(4096);
    let arg = |i: usize, default: usize| -> anyhow::Result<usize> {
        Ok(std::env::args()
            .nth(i)
            .map(|s| s.parse())
            .transpose()?
            .unwrap_or(default))
    };
    let (d_in, batch) = (arg(4, 512)?, arg(5, 4096)?);
    let data = Tensor::randn(0f32, 1.0, (4 * batch, d_in), &Device::Cpu)?;
    let arch = Architecture::parse(&arch)?;
    let cfg = SaeConfig {
        k: arch.uses_k().then_some(32),
        ..SaeConfig::new(arch, d_in, d_sae, SaeMetadata::default())
    };
    let dtype = std::env::var("SAE_DTYPE").unwrap_or_else(|_| "f32".into());
    let compute = match dtype.as_str() {
        "f32" => Compute::F32,
        "bf16" => Compute::Bf16,
        other => anyhow::bail!("SAE_DTYPE must be f32 or bf16, not {other}"),
    };
    let train = TrainConfig {
        compute,
        steps: steps + 2,
        batch_size: batch,
        log_every: 1_000_000,
        checkpoint_every: None,
        ..Default::default()
    };
    let device_name = std::env::var("SAE_DEVICE").unwrap_or_else(|_| "cpu".into());
    let device = sae_lib::device::parse_device(&device_name)?;
    // Held on the training device, as the PyTorch scripts hold theirs: each step gathers its
    // rows there instead of copying 8 MB from the host.
    let data = data.to_device(&device)?;
    let mut trainer = Trainer::new(cfg, train, &data, &device)?;
    for _ in 0..2 {
        trainer.train_step()?; // warm-up
    }
    let start = Instant::now();
    for _ in 0..steps {
        trainer.train_step()?;
    }
    device.synchronize()?;
    let secs = start.elapsed().as_secs_f64();
    let step_ms = secs * 1e3 / steps.max(1) as f64;
    let x = data.narrow(0, 0, batch)?.to_dtype(compute.dtype())?;
    eprintln!("{}", breakdown(&trainer, &x, &device, step_ms)?);
    // SAE_STOCK_OPS=1: without sae-lib's own kernels (`sae_lib::ops`)
    let impl_ = if sae_lib::ops::stock_ops() {
        "candle-stock-ops"
    } else {
        "candle"
    };
    println!(
        "{{\"impl\":\"{impl_}\",\"device\":\"{device_name}\",\"work\":\"train\",\"dtype\":\"{dtype}\",\"variant\":\"{}\",\"d_in\":{d_in},\"d_sae\":{d_sae},\"batch\":{batch},\"samples_per_s\":{:.1}}}",
        arch.name(),
        (steps as usize * batch) as f64 / secs
    );
    Ok(())
}

/// Each phase of a step timed alone, in ms, between synchronisations of the device: the dense
/// pre-activations, the top-k selection (TopK-style), the forward pass with the loss, that and
/// the backward pass, and the whole step. `train_sparsify.py` and `train_torch.py` print the
/// same line for the peers, so one GPU run shows where the two differ.
fn breakdown(
    trainer: &Trainer,
    x: &Tensor,
    device: &Device,
    step_ms: f64,
) -> anyhow::Result<String> {
    let sae = trainer.sae();
    let ctx = LossContext {
        sparsity_coefficient: 1.0,
        dead: None,
    };
    let time = |f: &dyn Fn() -> anyhow::Result<()>| -> anyhow::Result<f64> {
        const REPS: u32 = 5;
        f()?;
        device.synchronize()?;
        let start = Instant::now();
        for _ in 0..REPS {
            f()?;
        }
        device.synchronize()?;
        Ok(start.elapsed().as_secs_f64() * 1e3 / f64::from(REPS))
    };
    let pre = sae.params().pre_acts(x)?;
    let mut line = format!(
        "breakdown, ms: encoder matmul {:.3}",
        time(&|| {
            sae.params().pre_acts(x)?;
            Ok(())
        })?
    );
    if let Some(k) = sae.config().k {
        let topk = time(&|| {
            sae_lib::sae::common::topk_indices(&pre, k)?;
            Ok(())
        })?;
        line += &format!(", top-k {topk:.3}");
    }
    let forward = time(&|| {
        sae.loss(x, &ctx)?;
        Ok(())
    })?;
    let backward = time(&|| {
        sae.loss(x, &ctx)?.total.backward()?;
        Ok(())
    })?;
    Ok(format!(
        "{line}, forward {forward:.3}, forward+backward {backward:.3}, step {step_ms:.3}"
    ))
}
