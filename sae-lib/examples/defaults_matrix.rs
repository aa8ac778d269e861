//! Every architecture trained with nothing set but the architecture, on the kinds of
//! activations a user meets first: sparse structure or none, a large shared mean or none,
//! norms from 0.1 to 100, 40 rows (the tutorial's middle token of 40 prompts) to 10,000,
//! d_in 64 to 2048. Prints held-out FVU, L0 and dead fraction per case.
//!
//! ```sh
//! cargo run --release --example defaults_matrix -- [STEPS] [D_SAE] [ARCHS] [LR] [COEFF] [CASES]
//! ```
//! STEPS, D_SAE, LR and COEFF (the sparsity coefficient) default to the trainer's own
//! defaults (`-` keeps a default); CASES is a comma list of case numbers. `cargo test` runs a
//! smaller copy (`defaults::` in tests/it).

use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sae_lib::sae::common::normal_vec;
use sae_lib::sae::{Architecture, SaeConfig, SaeMetadata};
use sae_lib::train::{TrainConfig, Trainer};

/// A kind of activations: `n` rows of width `d` (plus 500 held out), `sparse` true features
/// (or isotropic Gaussian when 0), a shared mean `mean` times the typical norm, scaled so the
/// mean row norm is `norm`.
struct Case {
    name: &'static str,
    d: usize,
    n: usize,
    sparse: usize,
    mean: f32,
    norm: f32,
}

fn data(c: &Case, seed: u64) -> (Tensor, Tensor) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let rows = c.n + 500;
    let mut x = if c.sparse > 0 {
        let feats = normal_vec(c.sparse * c.d, &mut rng);
        let mut x = vec![0f32; rows * c.d];
        for r in 0..rows {
            for _ in 0..5 {
                let f = rng.random_range(0..c.sparse);
                let a: f32 = rng.random_range(0.5..2.0);
                for j in 0..c.d {
                    x[r * c.d + j] += a * feats[f * c.d + j] / (c.d as f32).sqrt();
                }
            }
        }
        x
    } else {
        normal_vec(rows * c.d, &mut rng)
            .into_iter()
            .map(|v| v / (c.d as f32).sqrt())
            .collect()
    };
    let mean = normal_vec(c.d, &mut rng);
    let mean_norm = mean.iter().map(|v| v * v).sum::<f32>().sqrt();
    for r in 0..rows {
        for j in 0..c.d {
            x[r * c.d + j] += c.mean * mean[j] / mean_norm;
        }
    }
    let avg = (0..rows)
        .map(|r| {
            x[r * c.d..(r + 1) * c.d]
                .iter()
                .map(|v| v * v)
                .sum::<f32>()
                .sqrt()
        })
        .sum::<f32>()
        / rows as f32;
    let x: Vec<f32> = x.into_iter().map(|v| v * c.norm / avg).collect();
    let all = Tensor::from_vec(x, (rows, c.d), &Device::Cpu).unwrap();
    (
        all.narrow(0, 0, c.n).unwrap(),
        all.narrow(0, c.n, 500).unwrap(),
    )
}

fn main() -> anyhow::Result<()> {
    sae_lib::init_cpu_runtime();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let steps: Option<u64> = args.first().map(|s| s.parse()).transpose()?;
    let d_sae: usize = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(4096);
    let archs: Vec<Architecture> = match args.get(2) {
        Some(a) => a
            .split(',')
            .map(Architecture::parse)
            .collect::<Result<_, _>>()?,
        None => Architecture::ALL.to_vec(),
    };
    let given = |i: usize| args.get(i).filter(|a| *a != "-");
    let lr: Option<f64> = given(3).map(|s| s.parse()).transpose()?;
    let coeff: Option<f64> = given(4).map(|s| s.parse()).transpose()?;
    let only: Option<Vec<usize>> = given(5)
        .map(|s| s.split(',').map(|c| c.parse()).collect())
        .transpose()?;
    let cases = [
        Case {
            name: "40 middle-token rows",
            d: 512,
            n: 40,
            sparse: 2048,
            mean: 1.0,
            norm: 1.0,
        },
        Case {
            name: "isotropic, mean 3x",
            d: 96,
            n: 1800,
            sparse: 0,
            mean: 3.0,
            norm: 1.0,
        },
        Case {
            name: "sparse, d 64, norm 0.1",
            d: 64,
            n: 3000,
            sparse: 256,
            mean: 0.5,
            norm: 0.1,
        },
        Case {
            name: "sparse, d 2048, norm 100",
            d: 2048,
            n: 3000,
            sparse: 4096,
            mean: 0.5,
            norm: 100.0,
        },
        Case {
            name: "isotropic, 10k rows",
            d: 256,
            n: 10_000,
            sparse: 0,
            mean: 0.0,
            norm: 10.0,
        },
    ];
    println!("| data | d_in | rows | arch | lr | λ | held-out FVU | L0 | dead |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for (i, c) in cases.iter().enumerate() {
        if only.as_ref().is_some_and(|o| !o.contains(&i)) {
            continue;
        }
        let (train, test) = data(c, i as u64);
        for &arch in &archs {
            let d = arch.defaults(d_sae);
            let mut cfg = TrainConfig::for_architecture(arch, d_sae);
            if let Some(s) = steps {
                cfg.steps = s;
            }
            if let Some(lr) = lr {
                cfg.adam.lr = lr;
            }
            if let Some(c) = coeff {
                cfg.sparsity_coefficient = c;
            }
            cfg.checkpoint_every = None;
            let sae_cfg = SaeConfig {
                k: d.k,
                ..SaeConfig::new(arch, c.d, d_sae, SaeMetadata::default())
            };
            let mut trainer = Trainer::new(sae_cfg, cfg, &train, &Device::Cpu)?;
            if let (Ok(theta), sae_lib::sae::AnySae::JumpRelu(s)) =
                (std::env::var("THETA"), trainer.sae())
            {
                let t = s.threshold().as_tensor();
                s.threshold()
                    .set(&(t.ones_like()? * theta.parse::<f64>()?)?)?;
            }
            trainer.train(None, None)?;
            let sae = trainer.sae();
            // 40 rows cannot teach features that generalise: score those on what they were
            // trained on, as the walkthrough reports them; everything else on held-out rows.
            let eval = if c.n < 100 { &train } else { &test };
            let x = (eval * trainer.scale())?;
            use sae_lib::sae::Sae;
            let f = sae.encode(&x)?;
            let x_hat = sae.decode(&f)?;
            let counts = sae_lib::eval::metrics::firing_counts(&f)?;
            let (lr, c_used) = (
                trainer.config().adam.lr,
                trainer.config().sparsity_coefficient,
            );
            println!(
                "| {} | {} | {} | {} | {lr:.1e} | {c_used} | {:.3} | {:.1} | {:.1}% |",
                c.name,
                c.d,
                c.n,
                arch.name(),
                sae_lib::eval::metrics::fvu(&x, &x_hat)?,
                sae_lib::eval::metrics::l0(&f)?,
                100.0 * counts.iter().filter(|&&v| v == 0.0).count() as f64 / d_sae as f64
            );
        }
    }
    Ok(())
}
