//! Streaming training: the stream's rows are the store's rows, one forward feeds every hook and
//! SAE without changing any of them, and a resumed job ends with the uninterrupted weights.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use sae_lib::collect::{collect_to_store, CollectConfig, Provenance};
use sae_lib::data::{ActivationStore, CollectMode, DatasetOptions, DatasetSource};
use sae_lib::hooks::HookPoint;
use sae_lib::model::{load_tokenizer, Model, ModelSource};
use sae_lib::sae::{Architecture, SaeConfig, SaeMetadata};
use sae_lib::tokenizer::Tokenizer;
use sae_lib::train::stream::{DocIter, OpenDocs};
use sae_lib::train::{ActivationStream, StreamConfig, StreamJob, TrainConfig};

use crate::common::*;

const MODEL: &str = "gpt_neox_parallel";

fn tokenizer() -> Tokenizer {
    load_tokenizer(&ModelSource::Dir(fixture(MODEL)), &offline_hub()).unwrap()
}

/// The corpus fixture's paragraphs, opened afresh on every pass.
fn open_corpus<'m>() -> OpenDocs<'m> {
    Box::new(|| -> sae_lib::Result<DocIter<'m>> {
        let source = DatasetSource::Path(fixture("corpus.txt"));
        Ok(Box::new(
            source.documents(&DatasetOptions::default(), &offline_hub())?,
        ))
    })
}

fn hooks() -> Vec<HookPoint> {
    vec![HookPoint::mlp_out(1), HookPoint::resid_post(0)]
}

fn collect_cfg(max_docs: Option<usize>) -> CollectConfig {
    CollectConfig {
        mode: CollectMode::All,
        max_len: 48,
        batch_size: 4,
        max_docs,
        ..Default::default()
    }
}

fn stream_cfg(buffer_rows: usize, batch_size: usize) -> StreamConfig {
    StreamConfig {
        hooks: hooks(),
        collect: collect_cfg(Some(12)),
        buffer_rows,
        batch_size,
        steps: None,
        seed: 11,
    }
}

/// Rows of `t` as bit patterns, sorted: a multiset to compare exactly.
fn sorted_rows(t: &Tensor) -> Vec<Vec<u32>> {
    let mut rows: Vec<Vec<u32>> = t
        .to_vec2::<f32>()
        .unwrap()
        .into_iter()
        .map(|r| r.into_iter().map(f32::to_bits).collect())
        .collect();
    rows.sort();
    rows
}

#[test]
fn one_forward_gives_each_hook_exactly_the_rows_collect_stores() {
    stream_rows_are_store_rows(MODEL, hooks());
}

/// Hooks of different widths share a stream: Gemma 2's `attn.hook_z` (its 4 heads of 12)
/// beside its 32-wide residual stream.
#[test]
fn hooks_of_different_widths_share_one_forward() {
    stream_rows_are_store_rows("gemma2", vec![HookPoint::z(1), HookPoint::resid_post(0)]);
}

/// A stream over `hooks` of the fixture model `name` serves exactly the rows `sae collect`
/// stores at each hook alone.
fn stream_rows_are_store_rows(name: &str, hooks: Vec<HookPoint>) {
    let model = load_fixture_model(name);
    let tok = load_tokenizer(&ModelSource::Dir(fixture(name)), &offline_hub()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let max_docs = Some(30);
    let mut stores = Vec::new();
    for &hook in &hooks {
        let out = dir.path().join(hook.to_string());
        let docs = open_corpus()().unwrap();
        let cfg = CollectConfig {
            hook,
            ..collect_cfg(max_docs)
        };
        collect_to_store(&model, &tok, docs, &cfg, &Provenance::default(), &out).unwrap();
        stores.push(ActivationStore::open(&out).unwrap());
    }
    let rows = stores[0].len();
    assert!(rows > 100, "the fixture gave only {rows} rows");
    // A buffer of exactly one pass: the first generation is the whole of it.
    let cfg = StreamConfig {
        collect: collect_cfg(max_docs),
        hooks: hooks.clone(),
        ..stream_cfg(rows, 16)
    };
    let mut stream = ActivationStream::new(&model, &tok, open_corpus(), cfg).unwrap();
    for (i, store) in stores.iter().enumerate() {
        let all: Vec<u32> = (0..rows as u32).collect();
        let stored = store.gather(&all, &Device::Cpu).unwrap();
        let streamed = stream.sample(i, usize::MAX, 5).unwrap();
        assert_eq!(streamed.dim(1).unwrap(), model.width(hooks[i]));
        assert_eq!(
            sorted_rows(&streamed),
            sorted_rows(&stored),
            "hook {}",
            hooks[i]
        );
    }
    assert_eq!(stream.generations()[0].rows as usize, rows);
    // Each row is served once per generation: its batches hold distinct rows.
    let b0 = stream.batch(0).unwrap()[0].clone();
    let b1 = stream.batch(1).unwrap()[0].clone();
    let both = sorted_rows(&Tensor::cat(&[&b0, &b1], 0).unwrap());
    let mut distinct = both.clone();
    distinct.dedup();
    assert_eq!(distinct.len(), both.len());
    assert!(stream.batch(0).is_err(), "a stream cannot go back");
}

fn sae_cfg(arch: Architecture, k: Option<usize>, hook: HookPoint) -> SaeConfig {
    SaeConfig {
        architecture: arch,
        d_in: 32,
        d_sae: 64,
        k,
        prefixes: None,
        metadata: SaeMetadata {
            hook_name: hook.to_string(),
            ..Default::default()
        },
    }
}

fn train_cfg(arch: Architecture, steps: u64) -> TrainConfig {
    TrainConfig {
        steps,
        batch_size: 64,
        checkpoint_every: Some(5),
        log_every: 2,
        seed: 4,
        ..TrainConfig::for_architecture(arch, 64)
    }
}

/// The job's SAEs: TopK and ReLU on the first hook, BatchTopK on the second.
fn runs() -> Vec<(HookPoint, Architecture, Option<usize>, &'static str)> {
    let h = hooks();
    vec![
        (h[0], Architecture::TopK, Some(4), "a"),
        (h[0], Architecture::Relu, None, "b"),
        (h[1], Architecture::BatchTopK, Some(4), "c"),
    ]
}

/// Buffers of 200 rows over the corpus' first 12 documents: a generation every few steps and
/// several passes.
const BUFFER: usize = 200;
const STEPS: u64 = 23;

fn new_job<'m>(model: &'m Model, tok: &'m Tokenizer, out: &Path, which: &[usize]) -> StreamJob<'m> {
    let stream = ActivationStream::new(model, tok, open_corpus(), stream_cfg(BUFFER, 64)).unwrap();
    let mut job = StreamJob::new(stream, Some(out), &Device::Cpu).unwrap();
    for &i in which {
        let (hook, arch, k, name) = runs()[i];
        job.add(
            hook,
            sae_cfg(arch, k, hook),
            train_cfg(arch, STEPS),
            Some(out.join(name)),
        )
        .unwrap();
    }
    job
}

fn resume_job<'m>(model: &'m Model, tok: &'m Tokenizer, out: &Path) -> StreamJob<'m> {
    let stream = ActivationStream::new(model, tok, open_corpus(), stream_cfg(BUFFER, 64)).unwrap();
    let dirs: Vec<(HookPoint, PathBuf)> = runs().iter().map(|r| (r.0, out.join(r.3))).collect();
    StreamJob::resume(stream, out, &dirs, &Device::Cpu).unwrap()
}

fn weights(dir: &Path) -> Vec<u8> {
    std::fs::read(dir.join("sae_weights.safetensors")).unwrap()
}

#[test]
fn many_saes_on_one_forward_each_train_as_if_alone() {
    let (model, tok) = (load_fixture_model(MODEL), tokenizer());
    let dir = tempfile::tempdir().unwrap();
    let together = dir.path().join("together");
    let mut job = new_job(&model, &tok, &together, &[0, 1, 2]);
    job.train(None).unwrap();
    let shared = job.stats();
    assert!(shared.passes >= 3, "the test should wrap the corpus");
    assert!(job.runs().iter().all(|r| r.trainer.step() == STEPS));
    for i in [1, 2] {
        let alone = dir.path().join(format!("alone{i}"));
        let mut job = new_job(&model, &tok, &alone, &[i]);
        job.train(None).unwrap();
        // The same tokens went through the model, once, whatever the number of SAEs.
        assert_eq!(job.stats().tokens_forwarded, shared.tokens_forwarded);
        let name = runs()[i].3;
        assert!(
            weights(&together.join(name)) == weights(&alone.join(name)),
            "{name} differs when it shares the stream"
        );
    }
    assert!(shared.mean_docs_per_batch() > 2.0);
}

#[test]
fn a_resumed_job_ends_with_the_uninterrupted_weights() {
    let (model, tok) = (load_fixture_model(MODEL), tokenizer());
    let dir = tempfile::tempdir().unwrap();
    let whole = dir.path().join("whole");
    new_job(&model, &tok, &whole, &[0, 1, 2])
        .train(None)
        .unwrap();

    // Stopped mid-generation at step 7, resumed to 12, and the second run's folder then
    // put back to its step-7 checkpoint: a kill between two runs' checkpoints leaves them
    // at different steps, and the stream must rewind to the earliest.
    let part = dir.path().join("part");
    new_job(&model, &tok, &part, &[0, 1, 2])
        .train_to(7, None)
        .unwrap();
    let saved = dir.path().join("b-at-7");
    copy_dir(&part.join("b"), &saved);
    resume_job(&model, &tok, &part).train_to(12, None).unwrap();
    std::fs::remove_dir_all(part.join("b")).unwrap();
    copy_dir(&saved, &part.join("b"));
    let mut job = resume_job(&model, &tok, &part);
    let steps: Vec<u64> = job.runs().iter().map(|r| r.trainer.step()).collect();
    assert_eq!(steps, vec![12, 7, 12]);
    job.train(None).unwrap();
    for (_, _, _, name) in runs() {
        assert!(
            weights(&whole.join(name)) == weights(&part.join(name)),
            "{name} differs after the resumes"
        );
    }
}

#[test]
fn a_resume_with_other_settings_is_refused() {
    let (model, tok) = (load_fixture_model(MODEL), tokenizer());
    let dir = tempfile::tempdir().unwrap();
    new_job(&model, &tok, dir.path(), &[0])
        .train_to(3, None)
        .unwrap();
    let stream =
        ActivationStream::new(&model, &tok, open_corpus(), stream_cfg(BUFFER * 2, 64)).unwrap();
    let dirs = vec![(hooks()[0], dir.path().join("a"))];
    let err = StreamJob::resume(stream, dir.path(), &dirs, &Device::Cpu)
        .err()
        .expect("other buffer size")
        .to_string();
    assert!(err.contains("other stream settings"), "{err}");
}

#[test]
fn bad_stream_settings_are_refused() {
    let (model, tok) = (load_fixture_model(MODEL), tokenizer());
    let cases = [
        (stream_cfg(10, 64), "must hold at least one batch"),
        (
            StreamConfig {
                hooks: vec![],
                ..stream_cfg(BUFFER, 64)
            },
            "at least one hook",
        ),
        (
            StreamConfig {
                hooks: vec![HookPoint::mlp_out(9)],
                ..stream_cfg(BUFFER, 64)
            },
            "does not exist",
        ),
    ];
    for (cfg, want) in cases {
        let err = ActivationStream::new(&model, &tok, open_corpus(), cfg)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains(want), "{err}");
    }
    let empty: OpenDocs = Box::new(|| -> sae_lib::Result<DocIter> {
        Ok(Box::new((0..3).map(|_| Ok(String::new()))))
    });
    let mut stream = ActivationStream::new(&model, &tok, empty, stream_cfg(BUFFER, 64)).unwrap();
    let err = stream.batch(0).err().unwrap().to_string();
    assert!(err.contains("no non-empty documents"), "{err}");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

/// `sae train` streaming from the fixture model over the corpus: two hooks, two SAEs each.
fn cli_args<'a>(out: &'a Path, tokens: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "train",
        "--model",
        fixture_str(MODEL),
        "--dataset",
        corpus_str(),
        "--hook",
        "blocks.1.hook_mlp_out",
        "--hook",
        "blocks.0.hook_resid_post",
        "--sae",
        "arch=topk,k=8",
        "--sae",
        "arch=relu,l1=1",
        "--d-sae",
        "64",
        "--batch-size",
        "128",
        "--tokens",
        tokens,
        "--buffer-rows",
        "1000",
        "--max-len",
        "48",
        "--device",
        "cpu",
        "--out",
        crate::cli::s(out),
    ];
    args.extend_from_slice(extra);
    args
}

fn fixture_str(name: &str) -> &'static str {
    Box::leak(
        fixture(name)
            .to_string_lossy()
            .into_owned()
            .into_boxed_str(),
    )
}

fn corpus_str() -> &'static str {
    fixture_str("corpus.txt")
}

const CLI_RUNS: [&str; 4] = [
    "blocks.1.hook_mlp_out/topk-64-k8",
    "blocks.1.hook_mlp_out/relu-64-l1",
    "blocks.0.hook_resid_post/topk-64-k8",
    "blocks.0.hook_resid_post/relu-64-l1",
];

#[test]
fn cli_kill_9_mid_stream_then_resume_ends_with_the_uninterrupted_weights() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = "64000"; // 500 steps
    let whole = dir.path().join("whole");
    let o = crate::cli::sae(&cli_args(&whole, tokens, &["--checkpoint-every", "7"]));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert_eq!(stdout.matches("step 500, FVU").count(), 4, "{stdout}");

    let killed = dir.path().join("killed");
    let args = cli_args(&killed, tokens, &["--checkpoint-every", "7"]);
    crate::cli::kill_9_after_checkpoint(&args, &killed.join(CLI_RUNS[3]), 30);
    let at: Vec<Option<u64>> = CLI_RUNS
        .iter()
        .map(|r| crate::cli::checkpoint_step(&killed.join(r)))
        .collect();
    assert!(
        at.iter().all(|s| s.unwrap() < 500),
        "killed after the end: {at:?}"
    );
    let o = crate::cli::sae(&cli_args(
        &killed,
        tokens,
        &["--checkpoint-every", "7", "--resume"],
    ));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for run in CLI_RUNS {
        for f in ["sae_weights.safetensors", "sparsity.safetensors"] {
            assert!(
                std::fs::read(whole.join(run).join(f)).unwrap()
                    == std::fs::read(killed.join(run).join(f)).unwrap(),
                "{run}/{f} differs after kill -9 at steps {at:?} and --resume"
            );
        }
    }
    // A second start without --resume or --overwrite is refused, naming the job.
    let o = crate::cli::sae(&cli_args(&killed, tokens, &[]));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && stderr.contains("streaming training job"),
        "{stderr}"
    );
}

fn peak_rss(out: &Path) -> f64 {
    let text = std::fs::read_to_string(out.join("stream_summary.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["peak_rss_bytes"]
        .as_f64()
        .expect("peak RSS is reported on Linux")
}

#[test]
fn cli_streaming_memory_does_not_grow_with_the_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let mut peaks = Vec::new();
    for tokens in ["25600", "256000"] {
        let out = dir.path().join(tokens);
        let o = crate::cli::sae(&cli_args(&out, tokens, &[]));
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        peaks.push(peak_rss(&out));
    }
    // Ten times the tokens (about 50 passes over the corpus): the same buffers, SAEs and model.
    assert!(
        peaks[1] < peaks[0] * 1.15,
        "peak RSS grew from {:.1} MB to {:.1} MB with ten times the tokens",
        peaks[0] / 1e6,
        peaks[1] / 1e6
    );
}

#[test]
fn a_short_run_reads_only_the_rows_it_uses() {
    let (model, tok) = (load_fixture_model(MODEL), tokenizer());
    let cfg = StreamConfig {
        steps: Some(2),
        collect: CollectConfig {
            batch_size: 1,
            ..collect_cfg(None)
        },
        ..stream_cfg(100_000, 64)
    };
    let mut stream = ActivationStream::new(&model, &tok, open_corpus(), cfg).unwrap();
    stream.batch(0).unwrap();
    let rows = stream.generations()[0].rows;
    // Two batches of 64, plus at most one pool of 8 forward rows of 48 tokens.
    assert!((128..128 + 8 * 48).contains(&rows), "{rows} rows read");
}

#[test]
fn a_streamed_sae_is_as_good_as_one_trained_from_the_store() {
    let (model, tok) = (load_fixture_model(MODEL), tokenizer());
    let dir = tempfile::tempdir().unwrap();
    let collect = |docs: DocIter, out: &Path| {
        let cfg = CollectConfig {
            hook: hooks()[0],
            ..collect_cfg(None)
        };
        collect_to_store(&model, &tok, docs, &cfg, &Provenance::default(), out).unwrap();
        ActivationStore::open(out).unwrap()
    };
    let train_docs = 32;
    let train = collect(
        Box::new(open_corpus()().unwrap().take(train_docs)),
        &dir.path().join("train"),
    );
    let held_out = collect(
        Box::new(open_corpus()().unwrap().skip(train_docs)),
        &dir.path().join("held-out"),
    );
    assert!(held_out.len() > 200);
    let arch = Architecture::TopK;
    let steps = 3 * train.len() as u64 / 64; // three passes
    let cfg = TrainConfig {
        checkpoint_every: None,
        ..train_cfg(arch, steps)
    };
    // A buffer of a third of the data: batches mix a third of the documents at a time.
    let (from_store, streamed) = store_and_stream(
        &model,
        &tok,
        &train,
        cfg,
        train_docs,
        train.len() / 3,
        dir.path(),
    );
    let score = |dir: &Path| {
        let sae = sae_lib::sae::format::load(dir, &Device::Cpu).unwrap();
        sae_lib::eval::score(&held_out, &sae, &Device::Cpu, &mut |_| {}).unwrap()
    };
    let (a, b) = (score(&from_store), score(&streamed));
    let gap = (b.fvu - a.fvu) / a.fvu;
    assert!(
        gap.abs() < 0.05,
        "held-out FVU: store {:.4}, stream {:.4} ({:+.1}%)",
        a.fvu,
        b.fvu,
        100.0 * gap
    );
    assert!(
        a.fvu < 0.5,
        "the SAEs should have learned something ({:.3})",
        a.fvu
    );
    println!("held-out FVU: store {:.4}, stream {:.4}", a.fvu, b.fvu);
}

#[test]
fn one_pass_through_a_buffer_that_holds_it_all_is_the_stores_run_bit_for_bit() {
    let (model, tok) = (load_fixture_model(MODEL), tokenizer());
    let dir = tempfile::tempdir().unwrap();
    let cfg = CollectConfig {
        hook: hooks()[0],
        ..collect_cfg(Some(32))
    };
    let out = dir.path().join("train");
    let docs = open_corpus()().unwrap();
    collect_to_store(&model, &tok, docs, &cfg, &Provenance::default(), &out).unwrap();
    let train = ActivationStore::open(&out).unwrap();
    let arch = Architecture::TopK;
    let train_cfg = train_cfg(arch, train.len() as u64 / 64); // one pass, whole batches
    let (from_store, streamed) =
        store_and_stream(&model, &tok, &train, train_cfg, 32, train.len(), dir.path());
    assert!(weights(&from_store) == weights(&streamed));
}

/// A TopK SAE trained with `cfg` from `train` (the store of the corpus' first `docs`
/// documents) and streamed from the same documents through a buffer of `buffer_rows`: the
/// folders of the two.
fn store_and_stream(
    model: &Model,
    tok: &Tokenizer,
    train: &ActivationStore,
    cfg: TrainConfig,
    docs: usize,
    buffer_rows: usize,
    dir: &Path,
) -> (PathBuf, PathBuf) {
    let sae = sae_cfg(Architecture::TopK, Some(8), hooks()[0]);
    let from_store = dir.join("from-store");
    sae_lib::train::Trainer::new(sae.clone(), cfg.clone(), train, &Device::Cpu)
        .unwrap()
        .train(Some(&from_store), None)
        .unwrap();
    let stream_cfg = StreamConfig {
        hooks: vec![hooks()[0]],
        collect: collect_cfg(Some(docs)),
        buffer_rows,
        batch_size: cfg.batch_size,
        steps: Some(cfg.steps),
        seed: cfg.seed,
    };
    let stream = ActivationStream::new(model, tok, open_corpus(), stream_cfg).unwrap();
    let streamed = dir.join("streamed");
    let mut job = StreamJob::new(stream, Some(&streamed), &Device::Cpu).unwrap();
    job.add(hooks()[0], sae, cfg, Some(streamed.join("a")))
        .unwrap();
    job.train(None).unwrap();
    (from_store, streamed.join("a"))
}

/// Each SAE's cfg.json records how many of the dataset's first documents the stream read
/// (for `sae eval` to start after them): those of `stream.json`'s generations within the first
/// pass, or all of a pass once the stream wrapped (`--max-docs 5`).
#[test]
fn cli_streaming_records_the_documents_it_read() {
    let dir = tempfile::tempdir().unwrap();
    for (max_docs, tokens) in [(Some("5"), "2560"), (None, "1280")] {
        let out = dir.path().join(max_docs.unwrap_or("all"));
        // Outliers left out too where the stream wraps, so every document gives fewer rows.
        let extra: Vec<&str> = max_docs
            .map(|n| vec!["--max-docs", n, "--drop-outliers", "1.2"])
            .unwrap_or_default();
        let o = crate::cli::sae(&cli_args(&out, tokens, &extra));
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let log: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join("stream.json")).unwrap()).unwrap();
        let generations = log["generations"].as_array().unwrap();
        let wrapped = generations.iter().any(|g| g["start"]["pass"] != 0);
        let want = match max_docs {
            Some(n) => {
                assert!(
                    wrapped,
                    "the stream should pass over 5 documents more than once"
                );
                n.parse::<u64>().unwrap()
            }
            None => {
                assert!(!wrapped, "the stream should stay within the corpus: {log}");
                generations
                    .iter()
                    .map(|g| g["docs"].as_u64().unwrap())
                    .sum()
            }
        };
        for run in CLI_RUNS {
            let cfg: serde_json::Value =
                serde_json::from_slice(&std::fs::read(out.join(run).join("cfg.json")).unwrap())
                    .unwrap();
            assert_eq!(cfg["metadata"]["training_docs"], want, "{run}: {cfg}");
            let ratio = cfg["metadata"]["outlier_norm"].as_f64();
            assert_eq!(ratio.map(|r| (r * 10.0).round()), max_docs.map(|_| 12.0));
        }
        let summary: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join("stream_summary.json")).unwrap())
                .unwrap();
        let dropped = summary["stats"]["outliers_dropped"].as_u64().unwrap();
        assert_eq!(dropped > 0, max_docs.is_some(), "{summary}");
    }
}

/// How far a stream has read is the same after a resume at any step as when the uninterrupted
/// stream got there, within the first pass and after it wrapped.
#[test]
fn a_resumed_stream_knows_how_many_documents_it_has_read() {
    let (model, tok) = (load_fixture_model(MODEL), tokenizer());
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("stream.json");
    // The whole corpus in each pass, read a pool of 8 documents at a time: generations start
    // and end within a pass, so a resumed one must learn the pass's length from the log.
    let cfg = StreamConfig {
        collect: CollectConfig {
            batch_size: 1,
            ..collect_cfg(None)
        },
        ..stream_cfg(BUFFER, 64)
    };
    let new = || ActivationStream::new(&model, &tok, open_corpus(), cfg.clone()).unwrap();
    let docs = open_corpus()().unwrap().count() as u64;
    let steps = 80;
    let mut stream = new().log_to(&log);
    let mut reached = Vec::new();
    for step in 0..steps {
        stream.batch(step).unwrap();
        reached.push(stream.docs_reached());
    }
    assert!(stream.generations().iter().any(|g| g.start.pass > 0));
    assert!(
        reached[0] < docs && reached.last() == Some(&docs),
        "{docs}: {reached:?}"
    );
    for step in 1..steps {
        let resumed = new().resume(&log, step).unwrap();
        assert_eq!(
            resumed.docs_reached(),
            reached[step as usize],
            "resumed at step {step}"
        );
    }
}
