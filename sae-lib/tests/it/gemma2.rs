//! Gemma 2 against transformers: every hook and the logits, in the Hub's config layout and
//! transformers 5's, with the sliding window, both soft caps and the query scale engaged.

use sae_lib::hooks::{HookPoint, Hooks};
use sae_lib::model::TokenBatch;

use crate::common::*;
use crate::model::{check_parity, check_parity_of};

#[test]
fn gemma2_matches_transformers_in_both_config_layouts() {
    assert_eq!(load_fixture_model("gemma2").architecture(), "gemma2");
    check_parity("gemma2", "gemma2");
    // transformers 5: rope_theta inside rope_parameters, the windows named per layer.
    let model = load_edited("gemma2", |cfg| {
        let theta = cfg.as_object_mut().unwrap().remove("rope_theta").unwrap();
        cfg["rope_parameters"] = serde_json::json!({"rope_type": "default", "rope_theta": theta});
        cfg["layer_types"] =
            serde_json::json!(["sliding_attention", "full_attention", "sliding_attention"]);
    })
    .unwrap();
    check_parity_of(&model, "transformers 5 layout", "gemma2");
}

/// hook_mlp_out is the sublayer's output after its closing norm: zeroing it there is what
/// transformers computes with the post-feedforward norm's output zeroed.
#[test]
fn zeroing_gemma2_mlp_out_matches_transformers() {
    let model = load_fixture_model("gemma2");
    let exp = expected("gemma2");
    let batch = TokenBatch::new(&exp["single.input_ids"], None).unwrap();
    let mut hooks = Hooks::new().write(HookPoint::mlp_out(1), |x| Ok(x.zeros_like()?));
    let logits = model.forward(&batch, &mut hooks).unwrap().unwrap();
    assert!(max_abs_diff(&logits, &exp["zero_mlp1.logits"]) < 1e-4);
    assert!(max_abs_diff(&logits, &exp["single.logits"]) > 1e-2);
}

/// Each Gemma 2 part is needed to match: without the window, a cap or the query scale the
/// same weights give other logits.
#[test]
fn every_gemma2_part_matters() {
    let exp = expected("gemma2");
    let mask = &exp["batch.attention_mask"];
    let batch = TokenBatch::new(&exp["batch.input_ids"], Some(mask)).unwrap();
    for (what, key, value) in [
        ("the window", "sliding_window", serde_json::json!(64)),
        (
            "the score cap",
            "attn_logit_softcapping",
            serde_json::Value::Null,
        ),
        (
            "the logit cap",
            "final_logit_softcapping",
            serde_json::Value::Null,
        ),
        (
            "the query scale",
            "query_pre_attn_scalar",
            serde_json::json!(8),
        ),
    ] {
        let model = load_edited("gemma2", |cfg| cfg[key] = value).unwrap();
        let logits = model.forward(&batch, &mut Hooks::new()).unwrap().unwrap();
        let d = masked_max_abs_diff(&logits, &exp["batch.logits"], mask);
        assert!(d > 1e-2, "without {what} the logits moved by only {d}");
    }
}

/// `attn.hook_z`, the heads' outputs side by side before the output projection (4 heads of
/// 12: wider than d_model, as in Gemma 2), matches the input transformers' o_proj receives,
/// in a padded batch too.
#[test]
fn hook_z_matches_transformers() {
    let model = load_fixture_model("gemma2");
    assert_eq!((model.width(HookPoint::z(0)), model.d_model()), (48, 32));
    let exp = expected("gemma2");
    let mask = &exp["batch.attention_mask"];
    for (tag, batch) in [
        (
            "single",
            TokenBatch::new(&exp["single.input_ids"], None).unwrap(),
        ),
        (
            "batch",
            TokenBatch::new(&exp["batch.input_ids"], Some(mask)).unwrap(),
        ),
    ] {
        let mut hooks = (0..3).fold(Hooks::new(), |h, l| h.capture(HookPoint::z(l)));
        model.forward(&batch, &mut hooks).unwrap();
        for l in 0..3 {
            let want = &exp[&format!("{tag}.blocks.{l}.attn.hook_z")];
            let got = hooks.get(HookPoint::z(l)).unwrap();
            let d = match tag {
                "single" => max_abs_diff(got, want),
                _ => masked_max_abs_diff(got, want, mask),
            };
            assert!(d < 1e-4, "{tag} layer {l}: {d}");
        }
    }
}
