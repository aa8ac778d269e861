//! Rescaled rotary frequencies (Llama 3.1 and 3.2's `llama3`, and `linear`) against
//! transformers, from the Hub's config layout, transformers 5's, and a llama.cpp GGUF file.

use candle_core::{DType, Device, Tensor};
use sae_lib::hooks::Hooks;
use sae_lib::model::rotary::{RopeScaling, Rotary};
use sae_lib::model::{load_model, Model, ModelSource, TokenBatch};

use crate::common::*;
use crate::model::check_parity_of;

const FIXTURE: &str = "llama_rope_scaling";

fn load(source: ModelSource) -> Model {
    load_model(&source, &Device::Cpu, DType::F32, &offline_hub()).unwrap()
}

fn logits(model: &Model) -> Tensor {
    let exp = expected(FIXTURE);
    let batch = TokenBatch::new(&exp["single.input_ids"], None).unwrap();
    model.forward(&batch, &mut Hooks::new()).unwrap().unwrap()
}

#[test]
fn llama3_scaling_matches_transformers_in_every_layout() {
    // The Hub's layout: `rope_scaling` beside a top-level `rope_theta`.
    check_parity_of(&load(ModelSource::Dir(fixture(FIXTURE))), FIXTURE, FIXTURE);
    // transformers 5's: both inside `rope_parameters`.
    let model = load_edited(FIXTURE, |cfg| {
        let mut rope = cfg["rope_scaling"].take();
        rope["rope_theta"] = cfg["rope_theta"].take();
        let map = cfg.as_object_mut().unwrap();
        map.remove("rope_scaling");
        map.remove("rope_theta");
        map.insert("rope_parameters".into(), rope);
    })
    .unwrap();
    check_parity_of(&model, "rope_parameters layout", FIXTURE);
    // llama.cpp's: the divisors in the `rope_freqs` tensor.
    check_parity_of(
        &load(ModelSource::Gguf(fixture(FIXTURE).join("model.gguf"))),
        "model.gguf",
        FIXTURE,
    );
    // Without the scaling the same weights answer otherwise: the fixture tells them apart.
    let plain = load_edited(FIXTURE, |cfg| cfg["rope_scaling"] = serde_json::Value::Null).unwrap();
    let exp = expected(FIXTURE);
    assert!(max_abs_diff(&logits(&plain), &exp["single.logits"]) > 0.05);
}

#[test]
fn scaled_frequencies_are_transformers_own() {
    let exp = expected(FIXTURE);
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture(FIXTURE).join("config.json")).unwrap())
            .unwrap();
    for (name, rope) in [
        ("llama3", cfg["rope_scaling"].clone()),
        (
            "linear",
            serde_json::json!({"type": "linear", "factor": 4.0}),
        ),
    ] {
        let scaling = RopeScaling::from_hf(&rope).unwrap().unwrap();
        let ours = Rotary::new(8, 10_000.).scaled(&scaling);
        let ours = Tensor::new(ours.inv_freq(), &Device::Cpu).unwrap();
        let theirs = &exp[&format!("{name}.inv_freq")];
        let d = max_abs_diff(&ours, theirs);
        assert!(d < 1e-7, "{name}: {d}");
    }
}

#[test]
fn unsupported_or_incomplete_scaling_is_one_clear_error() {
    let err = |rope: serde_json::Value| RopeScaling::from_hf(&rope).unwrap_err();
    let msg = err(serde_json::json!({"rope_type": "yarn", "factor": 4.0}));
    assert!(
        msg.contains("`yarn` is not supported") && msg.contains("llama3"),
        "{msg}"
    );
    let msg = err(serde_json::json!({"rope_type": "llama3", "factor": 8.0}));
    assert!(msg.contains("low_freq_factor"), "{msg}");
    assert_eq!(
        RopeScaling::from_hf(&serde_json::json!({"rope_type": "default"})).unwrap(),
        None
    );
    // Through the loader: the config file and the reason.
    let msg = load_edited(FIXTURE, |cfg| {
        cfg["rope_scaling"]["rope_type"] = "dynamic".into()
    })
    .unwrap_err()
    .to_string();
    assert!(
        msg.contains("config.json") && msg.contains("`dynamic` is not supported"),
        "{msg}"
    );
}
