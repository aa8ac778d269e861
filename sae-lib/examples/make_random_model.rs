//! Writes a random GPT-NeoX checkpoint into DIR: pythia-70m-deduped's exact shape (a stand-in
//! for the real weights, which cannot be downloaded here), or a smaller one.
//!
//! ```sh
//! cargo run --release --example make_random_model -- DIR [SEED] [HIDDEN LAYERS]
//! ```

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dir = args
        .first()
        .ok_or_else(|| anyhow::anyhow!("usage: make_random_model DIR [SEED] [HIDDEN LAYERS]"))?;
    let seed = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(0);
    let mut cfg = sae_lib::model::gpt_neox::Config::pythia_70m_deduped();
    if let (Some(hidden), Some(layers)) = (args.get(2), args.get(3)) {
        cfg.hidden_size = hidden.parse()?;
        cfg.intermediate_size = 4 * cfg.hidden_size;
        cfg.num_hidden_layers = layers.parse()?;
        cfg.num_attention_heads = (cfg.hidden_size / 32).max(1);
    }
    sae_lib::model::gpt_neox::save_random_checkpoint(&cfg, dir.as_ref(), seed)?;
    println!(
        "wrote a random GPT-NeoX checkpoint (hidden {}, {} layers) to {dir}",
        cfg.hidden_size, cfg.num_hidden_layers
    );
    Ok(())
}
