//! The hookable GPT-NeoX against HF transformers' outputs on random checkpoints
//! (made by `scripts/make_fixtures.py`), plus the loader's error paths.

use crate::common::*;
use candle_core::{DType, Device, Tensor};
use sae_lib::hooks::{HookPoint, Hooks};
use sae_lib::model::{load_model, Model, ModelSource, Padding, TokenBatch};

const TOL: f32 = 1e-4;

fn run_all_hooks(model: &Model, batch: &TokenBatch) -> (Tensor, Hooks<'static>) {
    let mut hooks = HookPoint::all(model.n_layers())
        .into_iter()
        .fold(Hooks::new(), |h, p| h.capture(p));
    let logits = model
        .forward(batch, &mut hooks)
        .unwrap()
        .expect("no stop point set");
    (logits, hooks)
}

pub fn check_parity(model_dir: &str, expected_dir: &str) {
    check_parity_of(&load_fixture_model(model_dir), model_dir, expected_dir);
}

/// [`check_parity`] of a model already loaded, `model_dir` naming it in messages.
pub fn check_parity_of(model: &Model, model_dir: &str, expected_dir: &str) {
    let exp = expected(expected_dir);
    // Unpadded single sequence: every position.
    let batch = TokenBatch::new(&exp["single.input_ids"], None).unwrap();
    let (logits, hooks) = run_all_hooks(model, &batch);
    for p in HookPoint::all(model.n_layers()) {
        let d = max_abs_diff(hooks.get(p).unwrap(), &exp[&format!("single.{p}")]);
        assert!(d < TOL, "{model_dir} single {p}: max abs diff {d}");
    }
    let d = max_abs_diff(&logits, &exp["single.logits"]);
    assert!(d < TOL, "{model_dir} single logits: max abs diff {d}");
    // Padded batch (one full row, one right-padded, one left-padded): real positions only.
    let mask = &exp["batch.attention_mask"];
    let batch = TokenBatch::new(&exp["batch.input_ids"], Some(mask)).unwrap();
    let (logits, hooks) = run_all_hooks(model, &batch);
    for p in HookPoint::all(model.n_layers()) {
        let d = masked_max_abs_diff(hooks.get(p).unwrap(), &exp[&format!("batch.{p}")], mask);
        assert!(d < TOL, "{model_dir} batch {p}: max abs diff {d}");
    }
    let d = masked_max_abs_diff(&logits, &exp["batch.logits"], mask);
    assert!(d < TOL, "{model_dir} batch logits: max abs diff {d}");
}

#[test]
fn parallel_residual_matches_transformers() {
    check_parity("gpt_neox_parallel", "gpt_neox_parallel");
}

#[test]
fn sequential_residual_matches_transformers() {
    check_parity("gpt_neox_sequential", "gpt_neox_sequential");
}

#[test]
fn pytorch_bin_fallback_matches_transformers() {
    assert!(!fixture("gpt_neox_bin/model.safetensors").exists());
    check_parity("gpt_neox_bin", "gpt_neox_parallel");
}

/// Pythia as people download it (transformers 4.x files): fp16 weights, `embed_out`, and per
/// layer a BOOL causal-mask buffer, `masked_bias` and `rotary_emb.inv_freq`, as one
/// `model.safetensors`, as two shards with an index, and as `pytorch_model.bin`.
#[test]
fn pythia_files_load_in_every_layout_and_match_transformers() {
    for layout in ["safetensors", "sharded", "bin"] {
        check_parity(&format!("pythia/{layout}"), "pythia");
    }
}

/// Copies `pythia/safetensors` into a temporary folder, rewriting `model.safetensors` through
/// `edit` (name, dtype, shape, bytes) with every tensor kept in its stored dtype.
fn edited_pythia(
    edit: impl Fn(
        &str,
        safetensors::Dtype,
        Vec<usize>,
        Vec<u8>,
    ) -> Option<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)>,
) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(fixture("pythia/safetensors").join(f), dir.path().join(f)).unwrap();
    }
    let bytes = std::fs::read(fixture("pythia/safetensors/model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut kept = Vec::new();
    for (name, view) in st.tensors() {
        if let Some(t) = edit(
            &name,
            view.dtype(),
            view.shape().to_vec(),
            view.data().to_vec(),
        ) {
            kept.push(t);
        }
    }
    let views: Vec<(String, safetensors::tensor::TensorView)> = kept
        .iter()
        .map(|(n, dt, shape, data)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(*dt, shape.clone(), data).unwrap(),
            )
        })
        .collect();
    let out = safetensors::serialize(views, None).unwrap();
    std::fs::write(dir.path().join("model.safetensors"), out).unwrap();
    dir
}

fn load_dir(dir: &std::path::Path) -> sae_lib::Result<Model> {
    load_model(
        &ModelSource::Dir(dir.into()),
        &Device::Cpu,
        DType::F32,
        &offline_hub(),
    )
}

#[test]
fn the_head_may_be_called_lm_head_and_errors_name_the_real_cause() {
    // Newer transformers save GPT-NeoX's head as `lm_head`.
    let renamed = edited_pythia(|n, dt, s, d| {
        let n = if n == "embed_out.weight" {
            "lm_head.weight"
        } else {
            n
        };
        Some((n.into(), dt, s, d))
    });
    let exp = expected("pythia");
    let batch = TokenBatch::new(&exp["single.input_ids"], None).unwrap();
    let logits = load_dir(renamed.path())
        .unwrap()
        .forward(&batch, &mut Hooks::new())
        .unwrap()
        .unwrap();
    assert!(max_abs_diff(&logits, &exp["single.logits"]) < TOL);

    // A missing tensor is named, with the file.
    let missing = edited_pythia(|n, dt, s, d| {
        (n != "gpt_neox.layers.1.mlp.dense_h_to_4h.weight").then(|| (n.into(), dt, s, d))
    });
    let msg = load_dir(missing.path()).unwrap_err().to_string();
    assert!(
        msg.contains("`gpt_neox.layers.1.mlp.dense_h_to_4h.weight` is missing")
            && msg.contains("model.safetensors"),
        "{msg}"
    );
    assert!(!msg.contains("BOOL") && !msg.contains("corrupt"), "{msg}");

    // No head at all, and no tying.
    let headless =
        edited_pythia(|n, dt, s, d| (n != "embed_out.weight").then(|| (n.into(), dt, s, d)));
    let msg = load_dir(headless.path()).unwrap_err().to_string();
    assert!(
        msg.contains("embed_out.weight") && msg.contains("lm_head.weight"),
        "{msg}"
    );

    // A weight the model needs stored as BOOL says so, not "truncated".
    let boolean = edited_pythia(|n, dt, s, d| {
        if n == "gpt_neox.layers.0.attention.bias" {
            return None;
        }
        if n == "gpt_neox.layers.0.input_layernorm.bias" {
            return Some((
                n.into(),
                safetensors::Dtype::BOOL,
                s.clone(),
                vec![1u8; s[0]],
            ));
        }
        Some((n.into(), dt, s, d))
    });
    let msg = load_dir(boolean.path()).unwrap_err().to_string();
    assert!(
        msg.contains("input_layernorm.bias") && msg.contains("BOOL"),
        "{msg}"
    );
}

#[test]
fn truncated_shards_and_archives_say_truncated() {
    for (layout, file) in [
        ("sharded", "model-00002-of-00002.safetensors"),
        ("bin", "pytorch_model.bin"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        for entry in std::fs::read_dir(fixture("pythia").join(layout)).unwrap() {
            let p = entry.unwrap().path();
            std::fs::copy(&p, dir.path().join(p.file_name().unwrap())).unwrap();
        }
        let p = dir.path().join(file);
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() * 2 / 3]).unwrap();
        let msg = load_dir(dir.path()).unwrap_err().to_string();
        assert!(
            msg.contains(file) && msg.contains("truncated"),
            "{layout}: {msg}"
        );
    }
}

#[test]
fn llama_with_grouped_query_attention_matches_transformers() {
    let model = load_fixture_model("llama_gqa");
    assert_eq!(model.architecture(), "llama");
    check_parity("llama_gqa", "llama_gqa");
}

fn check_zero_mlp_intervention(name: &str) {
    let model = load_fixture_model(name);
    let exp = expected(name);
    let batch = TokenBatch::new(&exp["single.input_ids"], None).unwrap();
    let mut hooks = Hooks::new().write(HookPoint::mlp_out(1), |x| Ok(x.zeros_like()?));
    let logits = model.forward(&batch, &mut hooks).unwrap().unwrap();
    let d = max_abs_diff(&logits, &exp["zero_mlp1.logits"]);
    assert!(d < TOL, "{name} zero-ablated logits: max abs diff {d}");
    // And the intervention really changed something.
    assert!(max_abs_diff(&logits, &exp["single.logits"]) > 1e-2);
}

#[test]
fn zeroing_mlp_out_matches_the_same_intervention_in_transformers() {
    check_zero_mlp_intervention("gpt_neox_sequential");
    check_zero_mlp_intervention("llama_gqa");
}

#[test]
fn sequences_alone_equal_sequences_in_a_padded_batch() {
    let model = load_fixture_model("gpt_neox_parallel");
    let seqs: Vec<Vec<u32>> = vec![(1..12).collect(), vec![5, 9, 3], (20..27).collect()];
    for padding in [Padding::Left, Padding::Right] {
        let batch = TokenBatch::from_sequences(&seqs, padding, 0, &Device::Cpu).unwrap();
        let (_, batched) = run_all_hooks(&model, &batch);
        let t = batch.dims().1;
        for (i, s) in seqs.iter().enumerate() {
            let alone =
                TokenBatch::from_sequences(std::slice::from_ref(s), padding, 0, &Device::Cpu)
                    .unwrap();
            let (_, single) = run_all_hooks(&model, &alone);
            let start = if padding == Padding::Left {
                t - s.len()
            } else {
                0
            };
            for p in HookPoint::all(model.n_layers()) {
                let row = batched
                    .get(p)
                    .unwrap()
                    .narrow(0, i, 1)
                    .unwrap()
                    .narrow(1, start, s.len())
                    .unwrap();
                let d = max_abs_diff(&row, single.get(p).unwrap());
                assert!(d < 1e-5, "{padding:?} row {i} {p}: {d}");
            }
        }
    }
}

#[test]
fn stopping_at_a_hook_skips_the_rest() {
    let model = load_fixture_model("gpt_neox_parallel");
    let exp = expected("gpt_neox_parallel");
    let batch = TokenBatch::new(&exp["single.input_ids"], None).unwrap();
    let hook = HookPoint::mlp_out(1);
    let mut hooks = Hooks::new()
        .capture(hook)
        .capture(HookPoint::resid_post(1))
        .stop_at(hook);
    assert!(model.forward(&batch, &mut hooks).unwrap().is_none());
    assert!(
        max_abs_diff(
            hooks.get(hook).unwrap(),
            &exp["single.blocks.1.hook_mlp_out"]
        ) < TOL
    );
    assert!(
        hooks.get(HookPoint::resid_post(1)).is_none(),
        "resid_post runs after the stop"
    );
}

#[test]
fn half_precision_loads_and_stays_close() {
    let exp = expected("gpt_neox_parallel");
    for dtype in [DType::F16, DType::BF16] {
        let model = load_model(
            &ModelSource::Dir(fixture("gpt_neox_parallel")),
            &Device::Cpu,
            dtype,
            &offline_hub(),
        )
        .unwrap();
        assert_eq!(model.dtype(), dtype);
        let batch = TokenBatch::new(&exp["single.input_ids"], None).unwrap();
        let logits = model.forward(&batch, &mut Hooks::new()).unwrap().unwrap();
        let scale = exp["single.logits"]
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let d = max_abs_diff(&logits, &exp["single.logits"]);
        assert!(d < 0.1 * scale.max(1.0), "{dtype:?}: {d} vs scale {scale}");
    }
}

#[test]
fn a_hook_past_the_last_layer_names_the_valid_range() {
    let model = load_fixture_model("gpt_neox_parallel");
    let batch =
        TokenBatch::from_sequences(&[vec![1, 2, 3]], Padding::Right, 0, &Device::Cpu).unwrap();
    let mut hooks = Hooks::new().capture(HookPoint::mlp_out(3));
    let msg = model.forward(&batch, &mut hooks).unwrap_err().to_string();
    assert!(
        msg.contains("blocks.3.hook_mlp_out")
            && msg.contains("3 layers")
            && msg.contains("blocks.0 to blocks.2"),
        "{msg}"
    );
}

/// Copies a fixture into a temp dir, applying `edit` to it, and returns the load error.
fn load_error(edit: impl FnOnce(&std::path::Path)) -> String {
    let dir = tempfile::tempdir().unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture("gpt_neox_parallel").join(f), dir.path().join(f)).unwrap();
    }
    edit(dir.path());
    load_model(
        &ModelSource::Dir(dir.path().into()),
        &Device::Cpu,
        DType::F32,
        &offline_hub(),
    )
    .unwrap_err()
    .to_string()
}

fn edit_config(dir: &std::path::Path, key: &str, value: serde_json::Value) {
    let p = dir.join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    cfg[key] = value;
    std::fs::write(p, cfg.to_string()).unwrap();
}

#[test]
fn loader_errors_say_what_is_wrong() {
    let msg = load_error(|d| std::fs::remove_file(d.join("config.json")).unwrap());
    assert!(msg.contains("config.json not found"), "{msg}");

    let msg = load_error(|d| std::fs::remove_file(d.join("model.safetensors")).unwrap());
    assert!(
        msg.contains("model weights not found") && msg.contains("pytorch_model.bin"),
        "{msg}"
    );

    let msg = load_error(|d| {
        let p = d.join("model.safetensors");
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    });
    assert!(
        msg.contains("model.safetensors") && msg.contains("truncated") && msg.contains("download"),
        "{msg}"
    );

    let msg = load_error(|d| {
        // Swap in a tensor of the wrong shape.
        let p = d.join("model.safetensors");
        let mut ts = candle_core::safetensors::load(&p, &Device::Cpu).unwrap();
        ts.insert(
            "gpt_neox.layers.1.mlp.dense_h_to_4h.weight".into(),
            Tensor::zeros((3, 5), DType::F32, &Device::Cpu).unwrap(),
        );
        candle_core::safetensors::save(&ts, &p).unwrap();
    });
    assert!(
        msg.contains("dense_h_to_4h") && msg.contains("shape"),
        "{msg}"
    );

    let msg = load_error(|d| edit_config(d, "hidden_act", "mish".into()));
    assert!(msg.contains("hidden_act `mish` is not supported"), "{msg}");

    let msg = load_error(|d| {
        edit_config(
            d,
            "rope_scaling",
            serde_json::json!({"type": "linear", "factor": 2.0}),
        )
    });
    assert!(msg.contains("rope_scaling"), "{msg}");

    let msg = load_error(|d| edit_config(d, "model_type", "mamba".into()));
    assert!(msg.contains("model_type `mamba` is not supported"), "{msg}");

    let msg = load_error(|d| std::fs::write(d.join("config.json"), "{ not json").unwrap());
    assert!(msg.contains("config.json") && msg.contains("JSON"), "{msg}");
}

#[test]
fn a_missing_directory_and_an_unreachable_hub_are_clear() {
    let msg = load_model(
        &ModelSource::parse("./no/such/model"),
        &Device::Cpu,
        DType::F32,
        &offline_hub(),
    )
    .unwrap_err()
    .to_string();
    assert!(msg.contains("model directory not found"), "{msg}");
    let mut hub = offline_hub();
    hub.offline = false;
    let cache = tempfile::tempdir().unwrap();
    hub.cache_dir = cache.path().into();
    let msg = load_model(
        &ModelSource::parse("EleutherAI/pythia-70m-deduped"),
        &Device::Cpu,
        DType::F32,
        &hub,
    )
    .unwrap_err()
    .to_string();
    assert!(
        msg.contains("EleutherAI/pythia-70m-deduped") && msg.contains("local model directory"),
        "{msg}"
    );
}

#[test]
fn loads_from_a_hub_cache_offline() {
    // Lay the fixture out as hf-hub's cache does and load it by repo id, offline.
    let cache = tempfile::tempdir().unwrap();
    let files =
        ["config.json", "model.safetensors"].map(|f| (f, fixture("gpt_neox_parallel").join(f)));
    cache_repo(cache.path(), "tiny/neox", &[], &files);
    let mut hub = offline_hub();
    hub.cache_dir = cache.path().into();
    let model = load_model(
        &ModelSource::parse("tiny/neox"),
        &Device::Cpu,
        DType::F32,
        &hub,
    )
    .unwrap();
    let exp = expected("gpt_neox_parallel");
    let batch = TokenBatch::new(&exp["single.input_ids"], None).unwrap();
    let logits = model.forward(&batch, &mut Hooks::new()).unwrap().unwrap();
    assert!(max_abs_diff(&logits, &exp["single.logits"]) < TOL);
    // The cache holds no tokenizer for it: offline, that is what the error says.
    let msg = sae_lib::model::load_tokenizer(&ModelSource::parse("tiny/neox"), &hub)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("tokenizer.json") && msg.contains("HF_HUB_OFFLINE is set and the Hub cache"),
        "{msg}"
    );
}

/// `attn.hook_z` is what the output projection reads: projecting it with the checkpoint's own
/// weights gives `hook_attn_out`, in GPT-NeoX and Llama; a forward stopped there returns
/// nothing further.
#[test]
fn hook_z_projects_to_attn_out() {
    for (name, weight, bias) in [
        (
            "gpt_neox_parallel",
            "gpt_neox.layers.1.attention.dense.weight",
            Some("gpt_neox.layers.1.attention.dense.bias"),
        ),
        ("llama_gqa", "model.layers.1.self_attn.o_proj.weight", None),
    ] {
        let model = load_fixture_model(name);
        let weights =
            candle_core::safetensors::load(fixture(name).join("model.safetensors"), &Device::Cpu)
                .unwrap();
        let exp = expected(name);
        let batch = TokenBatch::new(&exp["single.input_ids"], None).unwrap();
        let mut hooks = Hooks::new()
            .capture(HookPoint::z(1))
            .capture(HookPoint::attn_out(1));
        model.forward(&batch, &mut hooks).unwrap();
        let z = hooks.get(HookPoint::z(1)).unwrap();
        assert_eq!(z.dim(2).unwrap(), model.width(HookPoint::z(1)));
        let mut projected = z.broadcast_matmul(&weights[weight].t().unwrap()).unwrap();
        if let Some(b) = bias {
            projected = projected.broadcast_add(&weights[b]).unwrap();
        }
        let d = max_abs_diff(&projected, hooks.get(HookPoint::attn_out(1)).unwrap());
        assert!(d < 1e-4, "{name}: {d}");
        let mut stop = Hooks::new()
            .capture(HookPoint::z(1))
            .stop_at(HookPoint::z(1));
        assert!(model.forward(&batch, &mut stop).unwrap().is_none());
        assert!(stop.get(HookPoint::z(1)).is_some());
    }
}
