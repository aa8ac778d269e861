//! Writes an activation store of ROWS synthetic rows of width D into OUT (documents of 128
//! tokens with ids 1..95, the fixtures' character vocabulary), to measure evaluation and
//! inspection on stores larger than a real collection here would make quickly.
//!
//! ```sh
//! cargo run --release --example synthetic_store -- ROWS D OUT
//! ```

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sae_lib::data::store::StoreWriter;
use sae_lib::data::{CollectMode, StoreMeta};
use sae_lib::hooks::HookPoint;
use sae_lib::sae::common::normal_vec;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [rows, d, out] = args.as_slice() else {
        anyhow::bail!("usage: synthetic_store ROWS D OUT");
    };
    let (rows, d): (usize, usize) = (rows.parse()?, d.parse()?);
    let meta = StoreMeta {
        model: "synthetic".into(),
        revision: None,
        hook: HookPoint::mlp_out(0),
        context_size: 128,
        dataset: "synthetic".into(),
        mode: CollectMode::All,
        rows: 0,
        d,
        dtype: String::new(),
        docs: 0,
        skipped_empty: 0,
        filter: Default::default(),
        outliers_dropped: 0,
        shards: vec![],
    };
    let mut writer = StoreWriter::create(out.as_ref(), meta, 1 << 16, candle_core::DType::F32)?;
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    // A few hundred directions, each row a sparse mix of them plus noise.
    let features = normal_vec(512 * d, &mut rng);
    let mut doc = 0u32;
    while writer.rows() < rows {
        let n = 128.min(rows - writer.rows());
        let tokens: Vec<u32> = (0..n).map(|_| rng.random_range(1..96)).collect();
        let mut acts: Vec<f32> = normal_vec(n * d, &mut rng)
            .into_iter()
            .map(|v| 0.1 * v)
            .collect();
        for r in 0..n {
            for _ in 0..4 {
                let f = rng.random_range(0..512);
                let a: f32 = rng.random_range(0.5..2.0);
                for j in 0..d {
                    acts[r * d + j] += a * features[f * d + j] / (d as f32).sqrt();
                }
            }
        }
        let positions: Vec<u32> = (0..n as u32).collect();
        writer.add_document(doc, &tokens, &positions, &acts)?;
        doc += 1;
    }
    let meta = writer.finish()?;
    println!(
        "wrote {} rows of width {d} in {} shards to {out}",
        meta.rows,
        meta.shards.len()
    );
    Ok(())
}
