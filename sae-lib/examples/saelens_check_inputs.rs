//! Writes the inputs of `scripts/check_saelens.py` for an SAE saved by sae-lib: random `x`
//! `(n, d_in)` at the scale of the SAE's decoder bias, with our `feature_acts` and `sae_out`.
//!
//! Usage: saelens_check_inputs SAE_DIR OUT.safetensors [N]

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use sae_lib::sae::{format, Sae};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (Some(dir), Some(out)) = (args.get(1), args.get(2)) else {
        anyhow::bail!("usage: saelens_check_inputs SAE_DIR OUT.safetensors [N]");
    };
    let n: usize = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(64);
    let sae = format::load(dir.as_ref(), &Device::Cpu)?;
    let d_in = sae.config().d_in;
    let x = Tensor::randn(0f32, 1.0, (n, d_in), &Device::Cpu)?
        .broadcast_add(sae.b_dec().as_tensor())?;
    let feature_acts = sae.encode(&x)?;
    let sae_out = sae.decode(&feature_acts)?;
    let tensors = HashMap::from([
        ("x".to_string(), x),
        ("feature_acts".to_string(), feature_acts),
        ("sae_out".to_string(), sae_out),
    ]);
    candle_core::safetensors::save(&tensors, out)?;
    println!("wrote {out}");
    Ok(())
}
