//! Gemma 2 (Gemma Team 2024, <https://arxiv.org/abs/2408.00118>), the model Gemma Scope's
//! SAEs read, as the differences from [`super::llama`]: embeddings scaled by `√d_model`,
//! RMSNorm weights stored as offsets from 1, a norm after each sublayer as well as before,
//! attention scaled by `query_pre_attn_scalar` and soft-capped, every other layer attending
//! through a sliding window, and soft-capped logits. The attention and GeGLU MLP are Llama's.
//!
//! Hook points follow TransformerLens: `hook_attn_out` and `hook_mlp_out` are what each
//! sublayer adds to the residual stream, after its closing norm (what Gemma Scope's MLP SAEs
//! read). Matches HF transformers' `Gemma2ForCausalLM` in eval mode (parity-tested on a random
//! checkpoint whose window is shorter than its test sequences).
//!
//! Read bottom-up: `Config`, `norm`, `Layer`, `Gemma2`.

use std::path::Path;

use candle_core::{DType, Module, Tensor};
use candle_nn::{RmsNorm, VarBuilder};
use serde::Deserialize;

use super::attention::Scores;
use super::batch::windowed;
use super::decoder::{decoder_api, Block, Decoder};
use super::linear::Linear;
use super::llama::{self, Attention, Mlp};
use super::rotary::{Rotary, RotaryAngles};
use crate::hooks::{hook, HookPoint, Hooks};
use crate::{Error, Result};

/// The fields of HF's `config.json` this model uses (defaults: Gemma 2's own).
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
pub struct Config {
    /// Rows of the embedding and unembedding.
    pub vocab_size: usize,
    /// Width of the residual stream, `d_model`.
    pub hidden_size: usize,
    /// Width of the MLP's gate and up projections.
    pub intermediate_size: usize,
    /// Number of transformer blocks.
    pub num_hidden_layers: usize,
    /// Query heads per block.
    pub num_attention_heads: usize,
    /// Key/value heads per block (grouped-query attention); absent means as many.
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    /// Channels per head (256 in every Gemma 2).
    #[serde(default = "default_head_dim")]
    pub head_dim: usize,
    /// Epsilon of every RMSNorm.
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    /// Base of the rotary embedding frequencies.
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f64,
    /// MLP nonlinearity by its HF name (`gelu_pytorch_tanh`).
    #[serde(default = "default_act")]
    pub hidden_activation: String,
    /// Scores are `q·k / √query_pre_attn_scalar`.
    #[serde(default = "default_head_dim_f64")]
    pub query_pre_attn_scalar: f64,
    /// `cap · tanh(score / cap)` on attention scores; `null` for none.
    #[serde(default = "default_attn_cap")]
    pub attn_logit_softcapping: Option<f64>,
    /// `cap · tanh(logit / cap)` on the logits; `null` for none.
    #[serde(default = "default_final_cap")]
    pub final_logit_softcapping: Option<f64>,
    /// How many places back a sliding layer's queries see (themselves included).
    #[serde(default = "default_window")]
    pub sliding_window: Option<usize>,
    /// Per layer, `sliding_attention` or `full_attention` (transformers 5); absent means
    /// every even-numbered layer slides, as Gemma 2 does.
    #[serde(default)]
    pub layer_types: Option<Vec<String>>,
    /// Whether the q, k, v and o projections have biases.
    #[serde(default)]
    pub attention_bias: bool,
    /// Only `null` is supported.
    #[serde(default)]
    pub rope_scaling: Option<serde_json::Value>,
    /// Only absent, `null` or false is supported (causal attention).
    #[serde(default)]
    pub use_bidirectional_attention: Option<bool>,
}

fn default_head_dim() -> usize {
    256
}
fn default_head_dim_f64() -> f64 {
    256.0
}
fn default_eps() -> f64 {
    1e-6
}
fn default_rope_theta() -> f64 {
    10_000.0
}
fn default_act() -> String {
    "gelu_pytorch_tanh".into()
}
fn default_attn_cap() -> Option<f64> {
    Some(50.0)
}
fn default_final_cap() -> Option<f64> {
    Some(30.0)
}
fn default_window() -> Option<usize> {
    Some(4096)
}

impl Config {
    /// Reads and validates a `config.json` (transformers 4 or 5 layout).
    pub fn from_file(path: &Path) -> Result<Self> {
        let value = super::hf_config::read(path, &[("rope_theta", "rope_theta")])?;
        let bad = |message: String| Error::Config {
            path: path.into(),
            message,
        };
        let cfg: Self =
            serde_json::from_value(value).map_err(|e| bad(format!("not a Gemma 2 config: {e}")))?;
        cfg.validate().map_err(bad)?;
        Ok(cfg)
    }

    /// Rejects values this implementation does not support, saying which.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.rope_scaling.as_ref().is_some_and(|v| !v.is_null()) {
            return Err("rope_scaling is not supported for Gemma 2".into());
        }
        if self.use_bidirectional_attention == Some(true) {
            return Err("use_bidirectional_attention is not supported (causal only)".into());
        }
        super::batch::check_layer_types(self.layer_types.as_deref(), self.num_hidden_layers)?;
        self.as_llama().validate()
    }

    /// The shape Gemma 2 shares with Llama: its attention and MLP are built from it.
    fn as_llama(&self) -> llama::Config {
        llama::Config {
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_hidden_layers: self.num_hidden_layers,
            num_attention_heads: self.num_attention_heads,
            num_key_value_heads: self.num_key_value_heads,
            head_dim: Some(self.head_dim),
            rms_norm_eps: self.rms_norm_eps,
            rope_theta: self.rope_theta,
            hidden_act: self.hidden_activation.clone(),
            tie_word_embeddings: true,
            attention_bias: self.attention_bias,
            mlp_bias: false,
            rope_scaling: None,
            family: llama::Family::Llama,
            sliding_window: None,
            use_sliding_window: false,
            max_window_layers: None,
            layer_types: None,
        }
    }

    /// The window layer `index` attends through, if it slides.
    fn window(&self, index: usize) -> Option<usize> {
        let slides = match &self.layer_types {
            Some(types) => types[index] == "sliding_attention",
            None => index.is_multiple_of(2),
        };
        self.sliding_window.filter(|_| slides)
    }
}

/// Gemma's RMSNorm: the checkpoint stores `w` and the norm scales by `1 + w`, in f32.
fn norm(vb: VarBuilder, cfg: &Config) -> Result<RmsNorm> {
    let offset = vb.get(cfg.hidden_size, "weight")?;
    let weight = (offset.to_dtype(DType::F32)? + 1.0)?.to_dtype(offset.dtype())?;
    Ok(RmsNorm::new(weight, cfg.rms_norm_eps))
}

/// `h = x + norm(attn(norm(x))); h + norm(mlp(norm(h)))`, the attention windowed or not.
#[derive(Debug, Clone)]
struct Layer {
    input_layernorm: RmsNorm,
    post_attention_layernorm: RmsNorm,
    pre_feedforward_layernorm: RmsNorm,
    post_feedforward_layernorm: RmsNorm,
    self_attn: Attention,
    mlp: Mlp,
    window: Option<usize>,
    index: usize,
}

impl Layer {
    fn load(vb: VarBuilder, cfg: &Config, index: usize) -> Result<Self> {
        let shape = cfg.as_llama();
        let scores = Scores {
            scale: 1.0 / cfg.query_pre_attn_scalar.sqrt(),
            softcap: cfg.attn_logit_softcapping,
        };
        Ok(Self {
            input_layernorm: norm(vb.pp("input_layernorm"), cfg)?,
            post_attention_layernorm: norm(vb.pp("post_attention_layernorm"), cfg)?,
            pre_feedforward_layernorm: norm(vb.pp("pre_feedforward_layernorm"), cfg)?,
            post_feedforward_layernorm: norm(vb.pp("post_feedforward_layernorm"), cfg)?,
            self_attn: Attention::load(vb.pp("self_attn"), &shape)?.with_scores(scores),
            mlp: Mlp::load(vb.pp("mlp"), &shape)?,
            window: cfg.window(index),
            index,
        })
    }
}

impl Block for Layer {
    fn forward(
        &self,
        x: Tensor,
        rotary: &RotaryAngles,
        bias: &Tensor,
        hooks: &mut Hooks,
    ) -> Result<Option<Tensor>> {
        let l = self.index;
        let x = hook!(hooks, HookPoint::resid_pre(l), x);
        let bias = windowed(bias, self.window)?;
        let attn = self.input_layernorm.forward(&x)?;
        let Some(attn) = self.self_attn.forward(&attn, rotary, &bias, hooks, l)? else {
            return Ok(None);
        };
        let attn_out = self.post_attention_layernorm.forward(&attn)?;
        let attn_out = hook!(hooks, HookPoint::attn_out(l), attn_out);
        let h = (x + attn_out)?;
        let mlp = self
            .mlp
            .forward(&self.pre_feedforward_layernorm.forward(&h)?)?;
        let mlp_out = self.post_feedforward_layernorm.forward(&mlp)?;
        let mlp_out = hook!(hooks, HookPoint::mlp_out(l), mlp_out);
        Ok(Some(hook!(hooks, HookPoint::resid_post(l), (h + mlp_out)?)))
    }
}

/// `Gemma2ForCausalLM`: scaled embeddings, blocks, final norm, tied unembedding, capped
/// logits.
#[derive(Debug, Clone)]
pub struct Gemma2 {
    decoder: Decoder<Layer, RmsNorm>,
    cfg: Config,
}

impl Gemma2 {
    /// Loads from a VarBuilder over HF's tensor names (`model.layers.0.self_attn.q_proj...`).
    pub fn load(vb: VarBuilder, cfg: &Config) -> Result<Self> {
        let base = vb.pp("model");
        let embed_tokens =
            candle_nn::embedding(cfg.vocab_size, cfg.hidden_size, base.pp("embed_tokens"))?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| Layer::load(base.pp("layers").pp(i), cfg, i))
            .collect::<Result<Vec<_>>>()?;
        // The head is the embedding, whether or not the checkpoint carries a copy.
        let lm_head = if vb.contains_tensor("lm_head.weight") {
            Linear::load(vb.pp("lm_head"), cfg.hidden_size, cfg.vocab_size, false)?
        } else {
            Linear::new(embed_tokens.embeddings(), None)?
        };
        Ok(Self {
            decoder: Decoder {
                embed: embed_tokens,
                embed_scale: Some((cfg.hidden_size as f64).sqrt()),
                blocks: layers,
                rotary: Rotary::new(cfg.head_dim, cfg.rope_theta),
                final_norm: norm(base.pp("norm"), cfg)?,
                unembed: lm_head,
                logit_softcap: cfg.final_logit_softcapping,
            },
            cfg: cfg.clone(),
        })
    }

    /// The config the model was built from.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    decoder_api!();
}
