//! Writes a random checkpoint with pythia-70m-deduped's exact shape into DIR (a stand-in for
//! the real weights, which cannot be downloaded here).

fn main() -> anyhow::Result<()> {
    let dir = std::env::args()
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("usage: make_random_model DIR [SEED]"))?;
    let seed = std::env::args()
        .nth(2)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(0);
    let cfg = sae_lib::model::gpt_neox::Config::pythia_70m_deduped();
    sae_lib::model::gpt_neox::save_random_checkpoint(&cfg, dir.as_ref(), seed)?;
    println!("wrote a random pythia-70m-deduped-shaped checkpoint to {dir}");
    Ok(())
}
