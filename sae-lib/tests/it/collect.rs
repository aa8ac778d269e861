//! Datasets, the tutorial's loop, the batched collector and the activation store, on the
//! fixture model with its character tokenizer.

use std::path::Path;

use candle_core::{DType, Device, IndexOp, Tensor};
use sae_lib::collect::{collect_to_store, tutorial_middle_tokens, CollectConfig, Provenance};
use sae_lib::data::store::{permutation, StoreWriter};
use sae_lib::data::{ActivationStore, CollectMode, DatasetOptions, DatasetSource, TokenFilter};
use sae_lib::hooks::{HookPoint, Hooks};
use sae_lib::model::{load_tokenizer, ModelSource, Padding, TokenBatch};
use sae_lib::tokenizer::Tokenizer;

use crate::common::*;

const DOCS: [&str; 5] = [
    "The cat sat on the mat.",
    "A much longer document: it has several clauses, some punctuation, and enough characters to be truncated when the limit is short.",
    "",
    "x",
    "Sparse autoencoders find features.",
];

fn tokenizer() -> Tokenizer {
    load_tokenizer(
        &ModelSource::Dir(fixture("gpt_neox_parallel")),
        &offline_hub(),
    )
    .unwrap()
}

fn docs() -> Vec<sae_lib::Result<String>> {
    DOCS.iter().map(|d| Ok(d.to_string())).collect()
}

pub(crate) fn write_parquet(path: &Path, column: &str, docs: &[&str]) {
    let docs: Vec<Option<&str>> = docs.iter().map(|d| Some(*d)).collect();
    write_parquet_with(path, column, &docs, Default::default(), None);
}

/// A parquet file written by polars (an independent writer): a text column with an integer
/// column beside it.
fn write_parquet_with(
    path: &Path,
    column: &str,
    docs: &[Option<&str>],
    compression: polars::prelude::ParquetCompression,
    row_group_rows: Option<usize>,
) {
    use polars::prelude::*;
    let mut df = DataFrame::new(
        docs.len(),
        vec![
            Column::new(column.into(), docs.to_vec()),
            Column::new("meta".into(), vec![1i64; docs.len()]),
        ],
    )
    .unwrap();
    ParquetWriter::new(std::fs::File::create(path).unwrap())
        .with_compression(compression)
        .with_row_group_size(row_group_rows)
        .finish(&mut df)
        .unwrap();
}

/// A Hub dataset is read from its parquet files, else its `.jsonl`, else its `.txt` (one
/// format, never its README), the split's files when any name it and all of them otherwise,
/// each downloaded when its documents are reached; one with none of them is an error that
/// points at the Hub's parquet conversion.
#[test]
fn hub_datasets_are_read_from_parquet_else_jsonl_else_txt() {
    use crate::mock_hub::MockHub;
    let dir = tempfile::tempdir().unwrap();
    let pq = dir.path().join("train.parquet");
    write_parquet(&pq, "text", &["parquet one", "parquet two"]);
    let jsonl = |docs: &[&str]| -> Vec<u8> {
        docs.iter()
            .map(|d| format!("{}\n", serde_json::json!({ "text": d })))
            .collect::<String>()
            .into_bytes()
    };
    let readme = ("README.md".to_string(), b"# a dataset".to_vec());
    let server = MockHub::serve_all(vec![
        (
            "datasets/org/both".into(),
            vec![
                ("raw/train.jsonl".into(), jsonl(&["json twin"])),
                (
                    "data/train-00000-of-00001.parquet".into(),
                    std::fs::read(&pq).unwrap(),
                ),
                readme.clone(),
            ],
        ),
        (
            "datasets/org/lines".into(),
            vec![
                ("val.jsonl".into(), jsonl(&["val one", "val two"])),
                ("test.jsonl".into(), jsonl(&["test one"])),
                ("notes.txt".into(), b"not read".to_vec()),
                readme.clone(),
            ],
        ),
        (
            "datasets/org/shards".into(),
            vec![
                (
                    "data/train-00000-of-00002.parquet".into(),
                    std::fs::read(&pq).unwrap(),
                ),
                (
                    "data/train-00001-of-00002.parquet".into(),
                    std::fs::read(&pq).unwrap(),
                ),
            ],
        ),
        ("datasets/org/none".into(), vec![readme]),
    ]);
    let hub = server.options(&dir.path().join("hub"));
    let docs = |id: &str, split: &str| {
        let opts = DatasetOptions {
            split: split.into(),
            ..Default::default()
        };
        DatasetSource::parse(id)
            .documents(&opts, &hub)
            .map(|d| d.collect::<sae_lib::Result<Vec<String>>>())
    };
    assert_eq!(
        docs("org/both", "train").unwrap().unwrap(),
        ["parquet one", "parquet two"]
    );
    assert_eq!(
        docs("org/lines", "val").unwrap().unwrap(),
        ["val one", "val two"]
    );
    assert_eq!(
        docs("org/lines", "train").unwrap().unwrap(),
        ["test one", "val one", "val two"]
    );
    // A large dataset's later files are fetched only when its documents reach them.
    let mut shards = DatasetSource::parse("org/shards")
        .documents(&Default::default(), &hub)
        .unwrap();
    assert_eq!(shards.next().unwrap().unwrap(), "parquet one");
    assert_eq!(
        server.downloaded().last().unwrap(),
        "data/train-00000-of-00002.parquet"
    );
    assert_eq!(shards.count(), 3);
    assert_eq!(
        server.downloaded().last().unwrap(),
        "data/train-00001-of-00002.parquet"
    );
    let err = docs("org/none", "train").err().unwrap().to_string();
    assert!(
        err.contains("--dataset org/none@refs/convert/parquet"),
        "{err}"
    );
    assert!(!server
        .downloaded()
        .iter()
        .any(|f| f.ends_with(".md") || f.ends_with(".txt")));
}

#[test]
fn parquet_reads_every_row_group_codec_and_null() {
    use polars::prelude::ParquetCompression;
    let dir = tempfile::tempdir().unwrap();
    // Long documents over several row groups, with a null (read as an empty document).
    let long: Vec<String> = (0..300)
        .map(|i| format!("document {i}: {}", "the quick brown fox ".repeat(i % 17)))
        .collect();
    let mut docs: Vec<Option<&str>> = long.iter().map(|d| Some(d.as_str())).collect();
    docs[7] = None;
    let expected: Vec<String> = docs.iter().map(|d| d.unwrap_or("").to_string()).collect();
    let codecs = [
        ("snappy", ParquetCompression::Snappy),
        ("zstd", ParquetCompression::Zstd(None)),
        ("lz4", ParquetCompression::Lz4Raw),
        ("gzip", ParquetCompression::Gzip(None)),
        ("none", ParquetCompression::Uncompressed),
    ];
    for (name, codec) in codecs {
        let path = dir.path().join(format!("{name}.parquet"));
        write_parquet_with(&path, "text", &docs, codec, Some(64));
        let got = sae_lib::data::dataset::read_file(&path, &DatasetOptions::default()).unwrap();
        assert_eq!(got, expected, "{name}");
    }
    // A number column is refused, naming the column and what to do.
    let opts = DatasetOptions {
        column: "meta".into(),
        ..Default::default()
    };
    let err = sae_lib::data::dataset::read_file(&dir.path().join("zstd.parquet"), &opts)
        .unwrap_err()
        .to_string();
    assert!(err.contains("`meta`") && err.contains("not text"), "{err}");
    // A codec left out of the build is one clear error, not a panic.
    let path = dir.path().join("brotli.parquet");
    write_parquet_with(&path, "text", &docs, ParquetCompression::Brotli(None), None);
    let err = sae_lib::data::dataset::read_file(&path, &DatasetOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("re-save the file with snappy or zstd"),
        "{err}"
    );
}

#[test]
fn every_dataset_format_yields_the_same_documents() {
    let dir = tempfile::tempdir().unwrap();
    let docs: Vec<&str> = DOCS.iter().copied().filter(|d| !d.is_empty()).collect();
    std::fs::write(dir.path().join("a.txt"), docs.join("\n\n")).unwrap();
    let jsonl: Vec<String> = docs
        .iter()
        .map(|d| serde_json::json!({"id": 1, "text": d}).to_string())
        .collect();
    std::fs::write(dir.path().join("b.jsonl"), jsonl.join("\n")).unwrap();
    write_parquet(&dir.path().join("c.parquet"), "text", &docs);
    let opts = DatasetOptions::default();
    for f in ["a.txt", "b.jsonl", "c.parquet"] {
        let got: Vec<String> = DatasetSource::parse(dir.path().join(f).to_str().unwrap())
            .documents(&opts, &offline_hub())
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(got, docs, "{f}");
    }
    let all = DatasetSource::Path(dir.path().into())
        .documents(&opts, &offline_hub())
        .unwrap()
        .count();
    assert_eq!(all, 3 * docs.len());
}

#[test]
fn a_missing_column_lists_the_columns_that_exist() {
    let dir = tempfile::tempdir().unwrap();
    write_parquet(&dir.path().join("c.parquet"), "content", &["a", "b"]);
    std::fs::write(dir.path().join("b.jsonl"), "{\"content\": \"a\"}\n").unwrap();
    let opts = DatasetOptions::default();
    for f in ["c.parquet", "b.jsonl"] {
        let err = DatasetSource::Path(dir.path().join(f))
            .documents(&opts, &offline_hub())
            .unwrap()
            .next()
            .unwrap()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("no column `text`") || err.contains("no field `text`"),
            "{err}"
        );
        assert!(err.contains("content"), "{err}");
    }
    let err = DatasetSource::parse("./no/such/data.txt")
        .files(&opts, &offline_hub())
        .unwrap_err()
        .to_string();
    assert!(err.contains("no such file"), "{err}");
}

#[test]
fn middle_token_rows_equal_a_direct_forward() {
    let model = load_fixture_model("gpt_neox_parallel");
    let tok = tokenizer();
    let hook = HookPoint::mlp_out(1);
    let got = tutorial_middle_tokens(&model, &tok, docs(), hook, 64, None).unwrap();
    assert_eq!(got.skipped_empty, 1);
    assert_eq!(got.doc_indices, vec![0, 1, 3, 4]);
    for (row, &i) in got.doc_indices.iter().enumerate() {
        let ids = tok.encode(DOCS[i], Some(64)).unwrap();
        let batch =
            TokenBatch::from_sequences(std::slice::from_ref(&ids), Padding::Right, 0, &Device::Cpu)
                .unwrap();
        let mut hooks = Hooks::new().capture(hook);
        model.forward(&batch, &mut hooks).unwrap();
        let direct = hooks.get(hook).unwrap().i((0, ids.len() / 2)).unwrap();
        let d = max_abs_diff(&got.activations.i(row).unwrap(), &direct);
        // The loop runs only the prefix up to the middle token, so matrix products of other
        // shapes sum in another order: rounding, not a difference in what is computed.
        assert!(d < 1e-5, "document {i}: {d}");
    }
}

fn provenance() -> Provenance {
    Provenance {
        model: "fixture".into(),
        revision: None,
        dataset: "inline".into(),
    }
}

#[test]
fn batched_collection_equals_the_tutorial_loop_and_a_direct_forward() {
    let model = load_fixture_model("gpt_neox_sequential");
    let tok = tokenizer();
    let hook = HookPoint::resid_post(2);
    let tutorial = tutorial_middle_tokens(&model, &tok, docs(), hook, 64, None).unwrap();
    for padding in [Padding::Right, Padding::Left] {
        let dir = tempfile::tempdir().unwrap();
        let cfg = CollectConfig {
            hook,
            max_len: 64,
            batch_size: 3,
            padding,
            ..Default::default()
        };
        let meta = collect_to_store(&model, &tok, docs(), &cfg, &provenance(), dir.path()).unwrap();
        assert_eq!((meta.rows, meta.skipped_empty, meta.docs), (4, 1, 4));
        let store = ActivationStore::open(dir.path()).unwrap();
        let d = max_abs_diff(
            &store.to_tensor(&Device::Cpu).unwrap(),
            &tutorial.activations,
        );
        assert!(d < 1e-5, "{padding:?}: batched middle rows differ by {d}");
    }
    // All tokens: every row equals the direct forward at its (document, position).
    let dir = tempfile::tempdir().unwrap();
    let cfg = CollectConfig {
        hook,
        mode: CollectMode::All,
        max_len: 40,
        batch_size: 2,
        shard_rows: 30,
        ..Default::default()
    };
    let meta = collect_to_store(&model, &tok, docs(), &cfg, &provenance(), dir.path()).unwrap();
    let expected_rows: usize = DOCS.iter().map(|d| d.len().min(40)).sum();
    assert_eq!(meta.rows, expected_rows);
    assert!(meta.shards.len() > 1);
    let store = ActivationStore::open(dir.path()).unwrap();
    let all = store.to_tensor(&Device::Cpu).unwrap();
    for row in 0..store.len() {
        let r = store.row_ref(row);
        let tokens = store.document_tokens(r.doc_index).unwrap();
        assert_eq!(
            tokens,
            tok.encode(DOCS[r.doc_index as usize], Some(40)).unwrap()
        );
        let batch = TokenBatch::from_sequences(&[tokens], Padding::Right, 0, &Device::Cpu).unwrap();
        let mut hooks = Hooks::new().capture(hook);
        model.forward(&batch, &mut hooks).unwrap();
        let direct = hooks
            .get(hook)
            .unwrap()
            .i((0, r.position as usize))
            .unwrap();
        let d = max_abs_diff(&all.i(row).unwrap(), &direct);
        assert!(d < 1e-5, "row {row}: {d}");
    }
}

/// With every document in one forward batch, the outlier filter keeps exactly the unfiltered
/// rows whose norm is at most the ratio times their median, with their positions, and counts
/// the rest; with the first token left out too, no row is at position 0.
#[test]
fn the_outlier_filter_leaves_out_exactly_the_rows_over_the_ratio() {
    let model = load_fixture_model("gpt_neox_sequential");
    let tok = tokenizer();
    let cfg = CollectConfig {
        hook: HookPoint::resid_post(2),
        mode: CollectMode::All,
        max_len: 64,
        batch_size: 16,
        ..Default::default()
    };
    let collect = |filter: TokenFilter| {
        let dir = tempfile::tempdir().unwrap();
        let cfg = CollectConfig {
            filter,
            ..cfg.clone()
        };
        let meta = collect_to_store(&model, &tok, docs(), &cfg, &provenance(), dir.path()).unwrap();
        (dir, meta)
    };
    let (all_dir, _) = collect(TokenFilter::default());
    let all = ActivationStore::open(all_dir.path()).unwrap();
    let norms: Vec<f32> = row_norms(&all.to_tensor(&Device::Cpu).unwrap())
        .to_vec1()
        .unwrap();
    let median_of = |rows: &[usize]| {
        let mut sorted: Vec<f32> = rows.iter().map(|&i| norms[i]).collect();
        sorted.sort_by(f32::total_cmp);
        (sorted[sorted.len() / 2], sorted[sorted.len() - 1])
    };
    for exclude_first in [false, true] {
        // The rows the filter weighs: all, or all but each document's first.
        let candidates: Vec<usize> = (0..all.len())
            .filter(|&i| !(exclude_first && all.row_ref(i).position == 0))
            .collect();
        let (median, max) = median_of(&candidates);
        // A ratio between the median and the largest norm, so that some rows go, most stay.
        let ratio = (1.0 + max / median) / 2.0;
        let filter = TokenFilter {
            exclude_first,
            outlier_norm: Some(ratio),
        };
        let (dir, meta) = collect(filter);
        let expected: Vec<(u32, u32)> = candidates
            .iter()
            .filter(|&&i| norms[i] <= ratio * median)
            .map(|&i| (all.row_ref(i).doc_index, all.row_ref(i).position))
            .collect();
        assert!(
            meta.outliers_dropped > 0 && !expected.is_empty(),
            "{meta:?}"
        );
        assert_eq!(meta.outliers_dropped, candidates.len() - expected.len());
        let store = ActivationStore::open(dir.path()).unwrap();
        let got: Vec<(u32, u32)> = (0..store.len())
            .map(|i| store.row_ref(i))
            .map(|r| (r.doc_index, r.position))
            .collect();
        assert_eq!(got, expected, "exclude_first {exclude_first}");
        assert_eq!(meta.filter, filter);
    }
}

/// The Pythia-shaped checkpoint as people download it (BOOL buffers, `embed_out`, fp16), in
/// each of its three file layouts: collected rows equal transformers' activations.
#[test]
fn collection_from_every_pythia_layout_equals_transformers() {
    let exp = expected("pythia");
    let ids: Vec<u32> = exp["single.input_ids"]
        .flatten_all()
        .unwrap()
        .to_dtype(DType::U32)
        .unwrap()
        .to_vec1()
        .unwrap();
    // The fixtures' character tokenizer: id i is the printable character 31 + i.
    let text: String = ids.iter().map(|&i| char::from(31 + i as u8)).collect();
    for layout in ["safetensors", "sharded", "bin"] {
        let source = ModelSource::Dir(fixture("pythia").join(layout));
        let model =
            sae_lib::model::load_model(&source, &Device::Cpu, DType::F32, &offline_hub()).unwrap();
        let tok = load_tokenizer(&source, &offline_hub()).unwrap();
        assert_eq!(tok.encode(&text, None).unwrap(), ids);
        for hook in [HookPoint::mlp_out(1), HookPoint::resid_post(0)] {
            let dir = tempfile::tempdir().unwrap();
            let cfg = CollectConfig {
                hook,
                mode: CollectMode::All,
                max_len: 64,
                ..Default::default()
            };
            let docs = vec![Ok(text.clone())];
            collect_to_store(&model, &tok, docs, &cfg, &provenance(), dir.path()).unwrap();
            let rows = ActivationStore::open(dir.path())
                .unwrap()
                .to_tensor(&Device::Cpu)
                .unwrap();
            let want = exp[&format!("single.{hook}")].squeeze(0).unwrap();
            let d = max_abs_diff(&rows, &want);
            assert!(d < 1e-4, "{layout} {hook}: collected rows differ by {d}");
            // The middle token, from a forward that stops there.
            let middle =
                tutorial_middle_tokens(&model, &tok, vec![Ok(text.clone())], hook, 64, None)
                    .unwrap()
                    .activations;
            let d = max_abs_diff(
                &middle.i(0).unwrap(),
                &want.i(ids.len().min(64) / 2).unwrap(),
            );
            assert!(d < 1e-4, "{layout} {hook}: middle row differs by {d}");
        }
    }
}

#[test]
fn the_store_round_trips_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let d = 6;
    let mut w = StoreWriter::create(dir.path(), empty_meta(d), 7, DType::F32).unwrap();
    let mut expected = Vec::new();
    for doc in 0..10u32 {
        let n = 1 + doc as usize % 4;
        let acts: Vec<f32> = (0..n * d)
            .map(|k| (doc as f32 + 1.0) * 0.37 + k as f32 * 1e-3)
            .collect();
        let tokens: Vec<u32> = (0..n as u32 + 2).map(|t| t + doc).collect();
        let positions: Vec<u32> = (0..n as u32).collect();
        w.add_document(doc, &tokens, &positions, &acts).unwrap();
        expected.extend(acts);
    }
    let meta = w.finish().unwrap();
    let store = ActivationStore::open(dir.path()).unwrap();
    assert_eq!(store.meta(), &meta);
    assert_eq!(
        store
            .to_tensor(&Device::Cpu)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap(),
        expected
    );
    // A one-pass read (which drops the pages it read) gives the same rows, across shards,
    // and leaves the store readable.
    let rows: Vec<u32> = vec![3, 0, 12, 7, 22];
    let once = store.gather_once(&rows, &Device::Cpu).unwrap();
    let again = store.gather(&rows, &Device::Cpu).unwrap();
    let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let want: Vec<f32> = rows
        .iter()
        .flat_map(|&r| expected[r as usize * d..(r as usize + 1) * d].to_vec())
        .collect();
    assert_eq!(flat(&once), want);
    assert_eq!(flat(&again), want);
    // Document 9 had 1 + 9 % 4 = 2 rows and 2 + 2 tokens.
    assert_eq!(
        store.document_tokens(9).unwrap(),
        (9..9 + 4).collect::<Vec<u32>>()
    );
    // Non-finite activations are refused with a clear message.
    let mut w = StoreWriter::create(dir.path(), empty_meta(2), 7, DType::F32).unwrap();
    let err = w
        .add_document(0, &[1], &[0], &[1.0, f32::NAN])
        .unwrap_err()
        .to_string();
    assert!(err.contains("NaN") && err.contains("non-finite"), "{err}");
}

#[test]
fn bf16_store_is_close() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = StoreWriter::create(dir.path(), empty_meta(4), 100, DType::BF16).unwrap();
    w.add_document(
        0,
        &[1, 2],
        &[0, 1],
        &[0.1, -2.5, 3.75, 100.0, 1e-3, 7.0, -0.3, 0.0],
    )
    .unwrap();
    w.finish().unwrap();
    let t = ActivationStore::open(dir.path())
        .unwrap()
        .to_tensor(&Device::Cpu)
        .unwrap();
    let want = Tensor::new(
        &[[0.1f32, -2.5, 3.75, 100.0], [1e-3, 7.0, -0.3, 0.0]],
        &Device::Cpu,
    )
    .unwrap();
    assert!(max_abs_diff(&t, &want) < 0.5);
    assert_eq!(t.i((0, 1)).unwrap().to_scalar::<f32>().unwrap(), -2.5);
}

#[test]
fn the_shuffle_is_a_true_permutation_per_epoch() {
    let n = 1000;
    let sorted = |mut v: Vec<u32>| {
        v.sort();
        v
    };
    let e0 = permutation(n, 7, 0);
    let e1 = permutation(n, 7, 1);
    let s1 = permutation(n, 8, 0);
    for p in [&e0, &e1, &s1] {
        assert_eq!(sorted(p.clone()), (0..n as u32).collect::<Vec<_>>());
    }
    assert_ne!(e0, e1);
    assert_ne!(e0, s1);
    assert_eq!(e0, permutation(n, 7, 0));
    assert_ne!(e0, (0..n as u32).collect::<Vec<_>>());
    // Batches of a store cover every row exactly once, for any number of epochs.
    let dir = tempfile::tempdir().unwrap();
    let mut w = StoreWriter::create(dir.path(), empty_meta(1), 16, DType::F32).unwrap();
    for doc in 0..50u32 {
        w.add_document(
            doc,
            &[0, 1],
            &[0, 1],
            &[doc as f32 * 2.0, doc as f32 * 2.0 + 1.0],
        )
        .unwrap();
    }
    w.finish().unwrap();
    let store = ActivationStore::open(dir.path()).unwrap();
    let mut orders = Vec::new();
    for epoch in 0..3 {
        let mut seen: Vec<u32> = Vec::new();
        for b in store.batches(32, 1, epoch, 0, &Device::Cpu) {
            seen.extend(
                b.unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()
                    .iter()
                    .map(|v| *v as u32),
            );
        }
        assert_eq!(sorted(seen.clone()), (0..100).collect::<Vec<u32>>());
        orders.push(seen);
    }
    assert_ne!(orders[0], orders[1]);
}

#[test]
fn a_dataset_much_larger_than_a_shard_streams_with_bounded_buffers() {
    // 400 documents of up to 32 tokens into shards of 64 rows: memory holds one shard (plus a
    // batch) at a time, whatever the dataset size.
    let model = load_fixture_model("gpt_neox_parallel");
    let tok = tokenizer();
    let dir = tempfile::tempdir().unwrap();
    let text: Vec<String> = (0..400)
        .map(|i| format!("document number {i} says something {}", i * 7))
        .collect();
    let cfg = CollectConfig {
        hook: HookPoint::mlp_out(0),
        mode: CollectMode::All,
        max_len: 32,
        batch_size: 16,
        shard_rows: 64,
        ..Default::default()
    };
    let meta = collect_to_store(
        &model,
        &tok,
        text.iter().map(|t| Ok(t.clone())),
        &cfg,
        &provenance(),
        dir.path(),
    )
    .unwrap();
    assert_eq!(meta.docs, 400);
    assert!(meta.rows > 20 * 64 && meta.shards.len() > 20);
    for s in &meta.shards {
        assert!(
            s.rows < 64 + 32,
            "a shard grew past its bound: {} rows",
            s.rows
        );
    }
    // Re-collecting into the same folder with fewer rows removes the stale shards.
    let cfg = CollectConfig {
        max_docs: Some(3),
        ..cfg
    };
    let small = collect_to_store(
        &model,
        &tok,
        text.iter().map(|t| Ok(t.clone())),
        &cfg,
        &provenance(),
        dir.path(),
    )
    .unwrap();
    let shards = std::fs::read_dir(dir.path())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("shard-")
        })
        .count();
    assert_eq!(shards, small.shards.len());
    assert_eq!(ActivationStore::open(dir.path()).unwrap().len(), small.rows);
}

#[test]
fn an_empty_dataset_is_a_clear_error() {
    let model = load_fixture_model("gpt_neox_parallel");
    let dir = tempfile::tempdir().unwrap();
    let empty = vec![Ok(String::new()), Ok(String::new())];
    let err = collect_to_store(
        &model,
        &tokenizer(),
        empty,
        &CollectConfig {
            hook: HookPoint::mlp_out(0),
            ..Default::default()
        },
        &provenance(),
        dir.path(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("2 empty documents skipped") && err.contains("dataset is empty"),
        "{err}"
    );
    let err = tutorial_middle_tokens(
        &model,
        &tokenizer(),
        vec![Ok(String::new())],
        HookPoint::mlp_out(0),
        8,
        None,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("no non-empty documents"), "{err}");
}

#[test]
fn sae_collect_runs_on_wikitext_with_the_real_tokenizer_and_a_pythia_shaped_model() {
    let (Some(text), Some(tokenizer)) = (
        shared_data("wikitext-2/valid.txt"),
        shared_data("gpt-neox-20b-tokenizer.json"),
    ) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let model_dir = dir.path().join("pythia-70m-shaped");
    sae_lib::model::gpt_neox::save_random_checkpoint(
        &sae_lib::model::gpt_neox::Config::pythia_70m_deduped(),
        &model_dir,
        0,
    )
    .unwrap();
    let out = dir.path().join("acts");
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_sae"))
        .args([
            "collect",
            "--model",
            model_dir.to_str().unwrap(),
            "--tokenizer",
            tokenizer.to_str().unwrap(),
        ])
        .args([
            "--dataset",
            text.to_str().unwrap(),
            "--hook",
            "blocks.5.hook_mlp_out",
            "--mode",
            "all",
        ])
        .args([
            "--max-len",
            "128",
            "--max-docs",
            "64",
            "--device",
            "cpu",
            "--out",
            out.to_str().unwrap(),
        ])
        .status()
        .unwrap();
    assert!(status.success());
    let store = ActivationStore::open(&out).unwrap();
    assert_eq!(store.d(), 512);
    assert_eq!(store.meta().hook, HookPoint::mlp_out(5));
    assert!(store.len() > 1000, "{} rows", store.len());
}
