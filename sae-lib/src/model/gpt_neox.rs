//! GPT-NeoX (Black et al. 2022, <https://arxiv.org/abs/2204.06745>), the architecture of the
//! Pythia suite, with TransformerLens-style hook points.
//!
//! Matches HF transformers' `GPTNeoXForCausalLM` in eval mode (parity-tested against it on
//! random checkpoints). Deviations: no KV cache and no dropout (this forward is for reading
//! activations, not generating), and it can stop at any hook point.
//!
//! Read bottom-up: `Config`, `Attention`, `Mlp`, `Layer`, `GptNeoX`.

use std::path::Path;

use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::VarBuilder;
use serde::Deserialize;

use super::attention::{attend, Scores};
use super::decoder::{decoder_api, Block, Decoder};
use super::layer_norm::LayerNorm;
use super::linear::Linear;
use super::rotary::{Rotary, RotaryAngles};
use super::Activation;
use crate::hooks::hook;
use crate::hooks::{HookPoint, Hooks};
use crate::{Error, Result};

/// The fields of HF's `config.json` this model uses.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
pub struct Config {
    /// Rows of the embedding and unembedding (`vocab_size`); may exceed the tokenizer's vocabulary.
    pub vocab_size: usize,
    /// Width of the residual stream, `d_model` (`hidden_size`).
    pub hidden_size: usize,
    /// Number of transformer blocks (`num_hidden_layers`).
    pub num_hidden_layers: usize,
    /// Attention heads per block (`num_attention_heads`).
    pub num_attention_heads: usize,
    /// Width of the MLP's hidden layer (`intermediate_size`).
    pub intermediate_size: usize,
    /// Fraction of each head's channels that get rotary embeddings.
    #[serde(alias = "partial_rotary_factor")]
    pub rotary_pct: f64,
    /// Base of the rotary embedding frequencies (`rotary_emb_base`, or `rope_theta`).
    #[serde(alias = "rope_theta")]
    pub rotary_emb_base: f64,
    /// Epsilon added to the variance before the square root in each layer norm
    /// (`layer_norm_eps`).
    pub layer_norm_eps: f64,
    /// `x + attn(ln1(x)) + mlp(ln2(x))` when true, else `h = x + attn(ln1(x)); h + mlp(ln2(h))`.
    pub use_parallel_residual: bool,
    /// Longest context the model was trained for (`max_position_embeddings`); kept, not enforced.
    pub max_position_embeddings: usize,
    /// MLP nonlinearity by its HF name (`hidden_act`: `gelu`, `gelu_new`, ...).
    pub hidden_act: String,
    /// Whether the attention projections have biases (`attention_bias`; default true).
    #[serde(default = "yes")]
    pub attention_bias: bool,
    /// Whether the unembedding is the input embedding when the checkpoint has no output head
    /// (`tie_word_embeddings`; default false).
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// Only `null` is supported; kept to reject checkpoints that need scaling.
    #[serde(default)]
    pub rope_scaling: Option<serde_json::Value>,
}

fn yes() -> bool {
    true
}

impl Config {
    /// `EleutherAI/pythia-70m-deduped`, the tutorial's model.
    pub fn pythia_70m_deduped() -> Self {
        Self {
            vocab_size: 50304,
            hidden_size: 512,
            num_hidden_layers: 6,
            num_attention_heads: 8,
            intermediate_size: 2048,
            rotary_pct: 0.25,
            rotary_emb_base: 10_000.0,
            layer_norm_eps: 1e-5,
            use_parallel_residual: true,
            max_position_embeddings: 2048,
            hidden_act: "gelu".into(),
            attention_bias: true,
            tie_word_embeddings: false,
            rope_scaling: None,
        }
    }

    /// Reads and validates a `config.json`, in either transformers 4's layout (`rotary_pct`,
    /// `rotary_emb_base` at the top, as on the Hub) or transformers 5's (`rope_parameters`).
    pub fn from_file(path: &Path) -> Result<Self> {
        let value = super::hf_config::read(
            path,
            &[
                ("partial_rotary_factor", "rotary_pct"),
                ("rope_theta", "rotary_emb_base"),
            ],
        )?;
        let bad = |message: String| Error::Config {
            path: path.into(),
            message,
        };
        let cfg: Self = serde_json::from_value(value)
            .map_err(|e| bad(format!("not a GPT-NeoX config: {e}")))?;
        cfg.validate().map_err(bad)?;
        Ok(cfg)
    }

    /// Rejects values this implementation does not support, saying which.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.num_attention_heads == 0
            || !self.hidden_size.is_multiple_of(self.num_attention_heads)
        {
            return Err(format!(
                "hidden_size {} is not divisible by num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        let rotary_ok = self.rotary_pct > 0.0 && self.rotary_pct <= 1.0;
        if !(rotary_ok && self.rotary_dim().is_multiple_of(2)) {
            return Err(format!(
                "rotary_pct {} must be in (0, 1] and give an even number of rotary channels \
                 (head_dim {})",
                self.rotary_pct,
                self.head_dim()
            ));
        }
        if self.rope_scaling.as_ref().is_some_and(|v| !v.is_null()) {
            return Err("rope_scaling is not supported (only plain rotary embeddings)".into());
        }
        if self.num_hidden_layers == 0 || self.vocab_size == 0 || self.intermediate_size == 0 {
            return Err("num_hidden_layers, vocab_size and intermediate_size must be > 0".into());
        }
        self.activation().map(|_| ())
    }

    /// Channels per attention head: `hidden_size / num_attention_heads`.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// Channels per head that get rotary embeddings (HF: `int(head_dim * rotary_pct)`).
    pub fn rotary_dim(&self) -> usize {
        (self.head_dim() as f64 * self.rotary_pct) as usize
    }

    fn activation(&self) -> std::result::Result<Activation, String> {
        Activation::from_hf_name(&self.hidden_act)
    }
}

/// Self-attention with a fused `query_key_value` projection, laid out per head as
/// `[q | k | v]` (GPT-NeoX's layout, unlike GPT-2's `[q... | k... | v...]`).
#[derive(Debug, Clone)]
struct Attention {
    query_key_value: Linear,
    dense: Linear,
    num_heads: usize,
    head_dim: usize,
}

impl Attention {
    fn load(vb: VarBuilder, cfg: &Config) -> Result<Self> {
        let d = cfg.hidden_size;
        Ok(Self {
            query_key_value: Linear::load(vb.pp("query_key_value"), d, 3 * d, cfg.attention_bias)?,
            dense: Linear::load(vb.pp("dense"), d, d, cfg.attention_bias)?,
            num_heads: cfg.num_attention_heads,
            head_dim: cfg.head_dim(),
        })
    }

    /// The sublayer's output, or `None` when the hooks stopped at `attn.hook_z` (the heads'
    /// outputs, the dense projection's input).
    fn forward(
        &self,
        x: &Tensor,
        rotary: &RotaryAngles,
        bias: &Tensor,
        hooks: &mut Hooks,
        layer: usize,
    ) -> Result<Option<Tensor>> {
        let (b, t, _) = x.dims3()?;
        let qkv = self.query_key_value.forward(x)?; // (b, t, 3d)
        let qkv = qkv.reshape((b, t, self.num_heads, 3 * self.head_dim))?; // (b, t, heads, 3 hd)
        let split = |i: usize| -> Result<Tensor> {
            // (b, heads, t, hd), a strided view
            Ok(qkv
                .narrow(D::Minus1, i * self.head_dim, self.head_dim)?
                .transpose(1, 2)?)
        };
        // The rotation reads its view in place and returns a contiguous tensor.
        let (q, k, v) = (
            rotary.apply(&split(0)?)?,
            rotary.apply(&split(1)?)?,
            split(2)?.contiguous()?,
        );
        let z = attend(&q, &k, &v, bias, Scores::standard(self.head_dim))?;
        let z = hook!(hooks, HookPoint::z(layer), z);
        Ok(Some(z.apply(&self.dense)?))
    }
}

#[derive(Debug, Clone)]
struct Mlp {
    dense_h_to_4h: Linear,
    dense_4h_to_h: Linear,
    act: Activation,
}

impl Mlp {
    fn load(vb: VarBuilder, cfg: &Config) -> Result<Self> {
        let (d, i) = (cfg.hidden_size, cfg.intermediate_size);
        Ok(Self {
            dense_h_to_4h: Linear::load(vb.pp("dense_h_to_4h"), d, i, true)?,
            dense_4h_to_h: Linear::load(vb.pp("dense_4h_to_h"), i, d, true)?,
            act: cfg.activation().map_err(Error::Input)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.act.forward(&self.dense_h_to_4h.forward(x)?)?;
        Ok(self.dense_4h_to_h.forward(&h)?)
    }
}

#[derive(Debug, Clone)]
struct Layer {
    input_layernorm: LayerNorm,
    post_attention_layernorm: LayerNorm,
    attention: Attention,
    mlp: Mlp,
    use_parallel_residual: bool,
    index: usize,
}

impl Layer {
    fn load(vb: VarBuilder, cfg: &Config, index: usize) -> Result<Self> {
        let ln = |name| LayerNorm::load(vb.pp(name), cfg.hidden_size, cfg.layer_norm_eps);
        Ok(Self {
            input_layernorm: ln("input_layernorm")?,
            post_attention_layernorm: ln("post_attention_layernorm")?,
            attention: Attention::load(vb.pp("attention"), cfg)?,
            mlp: Mlp::load(vb.pp("mlp"), cfg)?,
            use_parallel_residual: cfg.use_parallel_residual,
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
        let attn = self.input_layernorm.forward(&x)?;
        let Some(attn_out) = self.attention.forward(&attn, rotary, bias, hooks, l)? else {
            return Ok(None);
        };
        let attn_out = hook!(hooks, HookPoint::attn_out(l), attn_out);
        let out = if self.use_parallel_residual {
            let mlp_out = self
                .mlp
                .forward(&self.post_attention_layernorm.forward(&x)?)?;
            let mlp_out = hook!(hooks, HookPoint::mlp_out(l), mlp_out);
            ((x + attn_out)? + mlp_out)?
        } else {
            let h = (x + attn_out)?;
            let mlp_out = self
                .mlp
                .forward(&self.post_attention_layernorm.forward(&h)?)?;
            let mlp_out = hook!(hooks, HookPoint::mlp_out(l), mlp_out);
            (h + mlp_out)?
        };
        Ok(Some(hook!(hooks, HookPoint::resid_post(l), out)))
    }
}

/// `GPTNeoXForCausalLM`: embeddings, blocks, final layer norm, unembedding.
#[derive(Debug, Clone)]
pub struct GptNeoX {
    decoder: Decoder<Layer, LayerNorm>,
    cfg: Config,
}

impl GptNeoX {
    /// Loads from a VarBuilder over HF's tensor names (`gpt_neox.layers.0.attention...`).
    pub fn load(vb: VarBuilder, cfg: &Config) -> Result<Self> {
        let base = vb.pp("gpt_neox");
        let embed_in = candle_nn::embedding(cfg.vocab_size, cfg.hidden_size, base.pp("embed_in"))?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            layers.push(Layer::load(base.pp("layers").pp(i), cfg, i)?);
        }
        let final_layer_norm = LayerNorm::load(
            base.pp("final_layer_norm"),
            cfg.hidden_size,
            cfg.layer_norm_eps,
        )?;
        // Pythia's files (transformers 4) name the head `embed_out`; files saved by newer
        // transformers may say `lm_head`. A tied checkpoint may carry a copy or nothing.
        let head = ["embed_out", "lm_head"]
            .into_iter()
            .find(|h| vb.contains_tensor(&format!("{h}.weight")));
        let embed_out = match head {
            Some(h) => Linear::load(vb.pp(h), cfg.hidden_size, cfg.vocab_size, false)?,
            None if cfg.tie_word_embeddings => Linear::new(embed_in.embeddings(), None)?,
            None => {
                return Err(candle_core::Error::Msg(
                    "the checkpoint has no output head: neither `embed_out.weight` nor \
                     `lm_head.weight`, and config.json does not tie it to the embeddings"
                        .into(),
                )
                .into())
            }
        };
        Ok(Self {
            decoder: Decoder {
                embed: embed_in,
                embed_scale: None,
                blocks: layers,
                rotary: Rotary::new(cfg.rotary_dim(), cfg.rotary_emb_base),
                final_norm: final_layer_norm,
                unembed: embed_out,
                logit_softcap: None,
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

/// Writes a randomly initialised checkpoint (`config.json` + `model.safetensors`) with `cfg`'s
/// shape into `dir`: a stand-in for real weights in benchmarks and offline runs (for example
/// pythia-70m-deduped's exact shape, where the weights cannot be downloaded).
pub fn save_random_checkpoint(cfg: &Config, dir: &Path, seed: u64) -> Result<()> {
    use rand::SeedableRng;
    crate::io::create_dir(dir)?;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let (d, i, v) = (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size);
    let mut tensors = std::collections::HashMap::new();
    let mut normal = |name: String, shape: &[usize], std: f64| -> Result<(String, Tensor)> {
        let n = shape.iter().product();
        let t = Tensor::from_vec(
            crate::sae::common::normal_vec(n, &mut rng),
            shape,
            &Device::Cpu,
        )?;
        Ok((name, (t * std)?))
    };
    tensors.extend([
        normal("gpt_neox.embed_in.weight".into(), &[v, d], 0.02)?,
        normal("embed_out.weight".into(), &[v, d], 0.02)?,
    ]);
    for l in 0..cfg.num_hidden_layers {
        let p = format!("gpt_neox.layers.{l}");
        for (name, shape) in [
            ("attention.query_key_value", [3 * d, d]),
            ("attention.dense", [d, d]),
            ("mlp.dense_h_to_4h", [i, d]),
            ("mlp.dense_4h_to_h", [d, i]),
        ] {
            tensors.extend([
                normal(format!("{p}.{name}.weight"), &shape, 0.02)?,
                normal(format!("{p}.{name}.bias"), &shape[..1], 0.01)?,
            ]);
        }
        for ln in ["input_layernorm", "post_attention_layernorm"] {
            tensors.insert(
                format!("{p}.{ln}.weight"),
                Tensor::ones(d, DType::F32, &Device::Cpu)?,
            );
            tensors.insert(
                format!("{p}.{ln}.bias"),
                Tensor::zeros(d, DType::F32, &Device::Cpu)?,
            );
        }
    }
    tensors.insert(
        "gpt_neox.final_layer_norm.weight".into(),
        Tensor::ones(d, DType::F32, &Device::Cpu)?,
    );
    tensors.insert(
        "gpt_neox.final_layer_norm.bias".into(),
        Tensor::zeros(d, DType::F32, &Device::Cpu)?,
    );
    crate::io::save_safetensors(&dir.join("model.safetensors"), &tensors)?;
    let mut config = serde_json::to_value(cfg).map_err(|e| Error::Json {
        path: dir.join("config.json"),
        source: e,
    })?;
    config["model_type"] = "gpt_neox".into();
    crate::io::write_json(&dir.join("config.json"), &config)
}
