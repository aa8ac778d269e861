//! Llama (Touvron et al. 2023, <https://arxiv.org/abs/2302.13971>) and the many models that
//! share its shape (SmolLM2, TinyLlama), with the same TransformerLens-style hook points as
//! [`super::GptNeoX`]. Three relatives differ only in their attention ([`Family`]): Mistral
//! attends through a sliding window, Qwen2 gives its query, key and value projections biases,
//! and Qwen3 normalises each query and key head before the rotation.
//!
//! Matches HF transformers' `LlamaForCausalLM` in eval mode (parity-tested on a random
//! checkpoint with grouped-query attention, and on one of each relative). Weights come from HF
//! safetensors or, through [`super::gguf`], from a llama.cpp GGUF file. No KV cache: this
//! forward reads activations.
//!
//! Read bottom-up: `Config`, `Attention`, `Mlp`, `Layer`, `Llama`.

use std::path::Path;

use candle_core::{Module, Tensor};
use candle_nn::{RmsNorm, VarBuilder};
use serde::Deserialize;

use super::attention::{attend, Scores};
use super::batch::windowed;
use super::decoder::{decoder_api, Block, Decoder};
use super::linear::Linear;
use super::rotary::{RopeScaling, Rotary, RotaryAngles};
use super::Activation;
use crate::hooks::{hook, HookPoint, Hooks};
use crate::{Error, Result};

/// The members of the Llama family, by HF `model_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    /// `llama`.
    #[default]
    Llama,
    /// `mistral`: every layer attends through `sliding_window`, when set.
    Mistral,
    /// `qwen2`: biases on the query, key and value projections (not the output's).
    Qwen2,
    /// `qwen3`: an RMSNorm over each query and key head (`q_norm`, `k_norm`).
    Qwen3,
}

impl Family {
    /// The family a `model_type` names, if it is one.
    pub fn from_model_type(model_type: &str) -> Option<Self> {
        serde_json::from_value(model_type.into()).ok()
    }

    /// Its HF `model_type`.
    pub fn model_type(self) -> &'static str {
        match self {
            Self::Llama => "llama",
            Self::Mistral => "mistral",
            Self::Qwen2 => "qwen2",
            Self::Qwen3 => "qwen3",
        }
    }
}

/// The fields of HF's `config.json` this model uses.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
pub struct Config {
    /// Which member of the family (`model_type`; default `llama`).
    #[serde(default, rename = "model_type")]
    pub family: Family,
    /// Rows of the embedding and unembedding (`vocab_size`).
    pub vocab_size: usize,
    /// Width of the residual stream, `d_model` (`hidden_size`).
    pub hidden_size: usize,
    /// Width of the MLP's gate and up projections (`intermediate_size`).
    pub intermediate_size: usize,
    /// Number of transformer blocks (`num_hidden_layers`).
    pub num_hidden_layers: usize,
    /// Query heads per block (`num_attention_heads`).
    pub num_attention_heads: usize,
    /// Fewer than `num_attention_heads` means grouped-query attention; absent means as many.
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    /// Absent means `hidden_size / num_attention_heads`.
    #[serde(default)]
    pub head_dim: Option<usize>,
    /// Epsilon added to the mean square before the square root in each RMSNorm
    /// (`rms_norm_eps`).
    pub rms_norm_eps: f64,
    /// Base of the rotary embedding frequencies (`rope_theta`; default 10,000).
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f64,
    /// MLP nonlinearity by its HF name (`hidden_act`; default `silu`).
    #[serde(default = "default_act")]
    pub hidden_act: String,
    /// Whether the unembedding is the input embedding (`tie_word_embeddings`; default false);
    /// an `lm_head` in the checkpoint is still used when present.
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// Whether the q, k, v and o projections have biases (`attention_bias`; default false).
    #[serde(default)]
    pub attention_bias: bool,
    /// Whether the MLP's gate, up and down projections have biases (`mlp_bias`; default false).
    #[serde(default)]
    pub mlp_bias: bool,
    /// How the rotary frequencies are rescaled (`rope_scaling`: `linear`, or Llama 3.1's
    /// `llama3`; absent or `null` for none).
    #[serde(default)]
    pub rope_scaling: Option<serde_json::Value>,
    /// How many places back a sliding layer's queries see, themselves included
    /// (`sliding_window`; Mistral's and Qwen's).
    #[serde(default)]
    pub sliding_window: Option<usize>,
    /// Qwen: whether any layer slides (`use_sliding_window`; default false)...
    #[serde(default)]
    pub use_sliding_window: bool,
    /// ...and from which layer on (`max_window_layers`).
    #[serde(default)]
    pub max_window_layers: Option<usize>,
    /// Per layer, `sliding_attention` or `full_attention` (transformers 5 writes it); it
    /// overrides the rules above.
    #[serde(default)]
    pub layer_types: Option<Vec<String>>,
}

fn default_rope_theta() -> f64 {
    10_000.0
}

fn default_act() -> String {
    "silu".into()
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
            serde_json::from_value(value).map_err(|e| bad(format!("not a Llama config: {e}")))?;
        cfg.validate().map_err(bad)?;
        Ok(cfg)
    }

    /// Rejects values this implementation does not support, saying which.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let (heads, kv) = (self.num_attention_heads, self.kv_heads());
        if heads == 0 || kv == 0 || heads % kv != 0 {
            return Err(format!(
                "num_attention_heads {heads} must be a positive multiple of num_key_value_heads {kv}"
            ));
        }
        if self.head_dim.is_none() && !self.hidden_size.is_multiple_of(heads) {
            return Err(format!(
                "hidden_size {} is not divisible by num_attention_heads {heads}",
                self.hidden_size
            ));
        }
        if !self.head_dim().is_multiple_of(2) {
            return Err(format!("head_dim {} must be even", self.head_dim()));
        }
        self.scaling()?;
        super::batch::check_layer_types(self.layer_types.as_deref(), self.num_hidden_layers)?;
        if self.num_hidden_layers == 0 || self.vocab_size == 0 || self.intermediate_size == 0 {
            return Err("num_hidden_layers, vocab_size and intermediate_size must be > 0".into());
        }
        Activation::from_hf_name(&self.hidden_act).map(|_| ())
    }

    /// The rotary scaling `rope_scaling` describes, if any.
    pub fn scaling(&self) -> std::result::Result<Option<RopeScaling>, String> {
        self.rope_scaling
            .as_ref()
            .map_or(Ok(None), RopeScaling::from_hf)
    }

    /// The rotary embedding: `head_dim` channels at base `rope_theta`, rescaled as
    /// `rope_scaling` says.
    fn rotary(&self) -> Result<Rotary> {
        let rotary = Rotary::new(self.head_dim(), self.rope_theta);
        Ok(match self.scaling().map_err(Error::Input)? {
            Some(scaling) => rotary.scaled(&scaling),
            None => rotary,
        })
    }

    /// The window layer `index` attends through, if it slides.
    pub fn window(&self, index: usize) -> Option<usize> {
        let slides = match (&self.layer_types, self.family) {
            (Some(types), _) => types[index] == "sliding_attention",
            (None, Family::Mistral) => true,
            (None, Family::Qwen2 | Family::Qwen3) => {
                self.use_sliding_window && index >= self.max_window_layers.unwrap_or(0)
            }
            (None, Family::Llama) => false,
        };
        self.sliding_window.filter(|_| slides)
    }

    /// Key/value heads per block: `num_key_value_heads`, else `num_attention_heads`.
    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    /// Channels per attention head: `head_dim`, else `hidden_size / num_attention_heads`.
    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }
}

/// Grouped-query attention: `num_key_value_heads` key/value heads, each shared by
/// `num_attention_heads / num_key_value_heads` query heads.
#[derive(Debug, Clone)]
pub(super) struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    /// Qwen3's norms over each query and key head.
    qk_norms: Option<(RmsNorm, RmsNorm)>,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    scores: Scores,
}

impl Attention {
    pub(super) fn load(vb: VarBuilder, cfg: &Config) -> Result<Self> {
        let (d, hd, bias) = (cfg.hidden_size, cfg.head_dim(), cfg.attention_bias);
        let (heads, kv_heads) = (cfg.num_attention_heads, cfg.kv_heads());
        let qkv_bias = bias || cfg.family == Family::Qwen2;
        let norm = |name| candle_nn::rms_norm(hd, cfg.rms_norm_eps, vb.pp(name));
        Ok(Self {
            q_proj: Linear::load(vb.pp("q_proj"), d, heads * hd, qkv_bias)?,
            k_proj: Linear::load(vb.pp("k_proj"), d, kv_heads * hd, qkv_bias)?,
            v_proj: Linear::load(vb.pp("v_proj"), d, kv_heads * hd, qkv_bias)?,
            o_proj: Linear::load(vb.pp("o_proj"), heads * hd, d, bias)?,
            qk_norms: match cfg.family {
                Family::Qwen3 => Some((norm("q_norm")?, norm("k_norm")?)),
                _ => None,
            },
            heads,
            kv_heads,
            head_dim: hd,
            scores: Scores::standard(hd),
        })
    }

    /// The same attention with scores made as `scores` says.
    pub(super) fn with_scores(self, scores: Scores) -> Self {
        Self { scores, ..self }
    }

    /// The sublayer's output, or `None` when the hooks stopped at `attn.hook_z` (the heads'
    /// outputs, the output projection's input).
    pub(super) fn forward(
        &self,
        x: &Tensor,
        rotary: &RotaryAngles,
        bias: &Tensor,
        hooks: &mut Hooks,
        layer: usize,
    ) -> Result<Option<Tensor>> {
        let (b, t, _) = x.dims3()?;
        // (b, t, n·hd) → (b, n, t, hd), a strided view; the rotation returns it contiguous.
        let heads = |proj: &Linear, n: usize, norm: Option<&RmsNorm>| -> Result<Tensor> {
            let h = proj.forward(x)?.reshape((b, t, n, self.head_dim))?;
            let h = match norm {
                Some(norm) => norm.forward(&h)?,
                None => h,
            };
            Ok(h.transpose(1, 2)?)
        };
        let (q_norm, k_norm) = match &self.qk_norms {
            Some((q, k)) => (Some(q), Some(k)),
            None => (None, None),
        };
        let q = rotary.apply(&heads(&self.q_proj, self.heads, q_norm)?)?;
        let k = rotary.apply(&heads(&self.k_proj, self.kv_heads, k_norm)?)?;
        let v = heads(&self.v_proj, self.kv_heads, None)?.contiguous()?;
        let z = attend(&q, &k, &v, bias, self.scores)?;
        let z = hook!(hooks, HookPoint::z(layer), z);
        Ok(Some(z.apply(&self.o_proj)?))
    }
}

/// SwiGLU: `down(act(gate(x)) * up(x))`.
#[derive(Debug, Clone)]
pub(super) struct Mlp {
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
    act: Activation,
}

impl Mlp {
    pub(super) fn load(vb: VarBuilder, cfg: &Config) -> Result<Self> {
        let (d, i, bias) = (cfg.hidden_size, cfg.intermediate_size, cfg.mlp_bias);
        Ok(Self {
            gate_proj: Linear::load(vb.pp("gate_proj"), d, i, bias)?,
            up_proj: Linear::load(vb.pp("up_proj"), d, i, bias)?,
            down_proj: Linear::load(vb.pp("down_proj"), i, d, bias)?,
            act: Activation::from_hf_name(&cfg.hidden_act).map_err(Error::Input)?,
        })
    }

    pub(super) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let gate = self.act.forward(&self.gate_proj.forward(x)?)?;
        Ok(self
            .down_proj
            .forward(&(gate * self.up_proj.forward(x)?)?)?)
    }
}

/// A pre-norm block: `h = x + attn(norm1(x)); h + mlp(norm2(h))`.
#[derive(Debug, Clone)]
struct Layer {
    input_layernorm: RmsNorm,
    post_attention_layernorm: RmsNorm,
    self_attn: Attention,
    mlp: Mlp,
    window: Option<usize>,
    index: usize,
}

impl Layer {
    fn load(vb: VarBuilder, cfg: &Config, index: usize) -> Result<Self> {
        let norm = |name| candle_nn::rms_norm(cfg.hidden_size, cfg.rms_norm_eps, vb.pp(name));
        Ok(Self {
            input_layernorm: norm("input_layernorm")?,
            post_attention_layernorm: norm("post_attention_layernorm")?,
            self_attn: Attention::load(vb.pp("self_attn"), cfg)?,
            mlp: Mlp::load(vb.pp("mlp"), cfg)?,
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
        let Some(attn_out) = self.self_attn.forward(&attn, rotary, &bias, hooks, l)? else {
            return Ok(None);
        };
        let attn_out = hook!(hooks, HookPoint::attn_out(l), attn_out);
        let h = (x + attn_out)?;
        let mlp_out = self
            .mlp
            .forward(&self.post_attention_layernorm.forward(&h)?)?;
        let mlp_out = hook!(hooks, HookPoint::mlp_out(l), mlp_out);
        Ok(Some(hook!(hooks, HookPoint::resid_post(l), (h + mlp_out)?)))
    }
}

/// `LlamaForCausalLM`: embeddings, blocks, final RMSNorm, unembedding.
#[derive(Debug, Clone)]
pub struct Llama {
    decoder: Decoder<Layer, RmsNorm>,
    cfg: Config,
}

impl Llama {
    /// Loads from a VarBuilder over HF's tensor names (`model.layers.0.self_attn.q_proj...`).
    pub fn load(vb: VarBuilder, cfg: &Config) -> Result<Self> {
        let base = vb.pp("model");
        let embed_tokens =
            candle_nn::embedding(cfg.vocab_size, cfg.hidden_size, base.pp("embed_tokens"))?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| Layer::load(base.pp("layers").pp(i), cfg, i))
            .collect::<Result<Vec<_>>>()?;
        let norm = candle_nn::rms_norm(cfg.hidden_size, cfg.rms_norm_eps, base.pp("norm"))?;
        // Some tied checkpoints still carry a copy of the head; use it when present.
        let lm_head = if cfg.tie_word_embeddings && !vb.contains_tensor("lm_head.weight") {
            Linear::new(embed_tokens.embeddings(), None)?
        } else {
            Linear::load(vb.pp("lm_head"), cfg.hidden_size, cfg.vocab_size, false)?
        };
        Ok(Self {
            decoder: Decoder {
                embed: embed_tokens,
                embed_scale: None,
                blocks: layers,
                rotary: cfg.rotary()?,
                final_norm: norm,
                unembed: lm_head,
                logit_softcap: None,
            },
            cfg: cfg.clone(),
        })
    }

    /// Divides each rotary frequency by its entry of `divisors`, one per pair of channels of
    /// a head (llama.cpp's `rope_freqs`, its form of Llama 3's scaling).
    pub fn divide_rotary(&mut self, divisors: &[f32]) -> Result<()> {
        let rotary = &mut self.decoder.rotary;
        *rotary = rotary.clone().divided_by(divisors).map_err(Error::Input)?;
        Ok(())
    }

    /// The config the model was built from.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    decoder_api!();
}
