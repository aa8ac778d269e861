//! llama.cpp's GGUF files: a model of the Llama family (architectures `llama`, `qwen2` and
//! `qwen3`), a Gemma 2 (`gemma2`) or a GPT-NeoX (`gptneox`: Pythia), weights dequantized to
//! the requested dtype, and its tokenizer (`gguf_vocab`), all from the one file.
//!
//! GGUF stores the weights under its own names (`blk.0.attn_q.weight`) and changes three
//! things the HF forward must not see: for `llama` only, the rows of `attn_q` / `attn_k` are
//! permuted within each head (llama.cpp rotates a Llama's interleaved channel pairs where HF
//! rotates halves, while its Qwen and Gemma files keep HF's halves); Gemma's RMSNorm scales
//! are stored as `1 + w`; and GPT-NeoX's fused q/k/v rows are regrouped, all queries, then
//! all keys, then all values, where HF interleaves them head by head. All are undone here,
//! so one forward per architecture serves safetensors and GGUF alike.

use std::collections::HashMap;
use std::fs::File;
use std::path::Path;

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use super::gemma2::{self, Gemma2};
use super::gguf_convert::{hf_name, interleave_qkv, neox_hf_name, unpermute_rotary_rows};
use super::gguf_vocab::GgufVocab;
use super::gpt_neox::{self, GptNeoX};
use super::llama::{self, Llama};
use super::Model;
use crate::tokenizer::Tokenizer;
use crate::{Error, Result};

/// An open GGUF file: its metadata and tensor index, not yet its tensor data.
pub struct GgufFile {
    content: Content,
    file: File,
    path: std::path::PathBuf,
}

impl GgufFile {
    /// Opens `path` and reads its header; a missing or corrupt file says so.
    pub fn open(path: &Path) -> Result<Self> {
        let mut file = File::open(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::MissingFile {
                    what: "GGUF model file",
                    path: path.into(),
                    hint: "fetch one first (scripts/fetch_smollm2.sh fetches SmolLM2-135M)".into(),
                }
            } else {
                Error::io("opening", path, e)
            }
        })?;
        let content = Content::read(&mut file).map_err(|e| {
            // The first line: candle appends a backtrace under RUST_BACKTRACE.
            let e = e.to_string();
            let cause = e.lines().next().unwrap_or_default();
            let unknown = cause.strip_prefix("unknown dtype for tensor ");
            let message = match unknown.and_then(|id| id.trim().parse().ok()) {
                Some(id) => format!(
                    "holds tensors of GGML type {} ({id}), which candle cannot read; take a \
                     file quantized to F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 or a K-quant \
                     (Q2_K to Q6_K), or re-quantize this one with llama.cpp's llama-quantize",
                    ggml_type_name(id)
                ),
                None => format!("not a readable GGUF file ({cause}); it may be truncated"),
            };
            Error::Weights {
                path: path.into(),
                message,
            }
        })?;
        Ok(Self {
            content,
            file,
            path: path.into(),
        })
    }

    fn bad(&self, message: String) -> Error {
        Error::Config {
            path: self.path.clone(),
            message,
        }
    }

    fn get(&self, key: &str) -> Option<&Value> {
        self.content.metadata.get(key)
    }

    fn string(&self, key: &str) -> Option<&str> {
        self.get(key)
            .and_then(|v| v.to_string().ok())
            .map(String::as_str)
    }

    fn number(&self, key: &str) -> Option<f64> {
        let v = self.get(key)?;
        v.to_u64()
            .map(|n| n as f64)
            .or_else(|_| v.to_u32().map(f64::from))
            .or_else(|_| v.to_f32().map(f64::from))
            .or_else(|_| v.to_f64())
            .or_else(|_| v.to_i32().map(f64::from))
            .ok()
    }

    fn required(&self, key: &str) -> Result<usize> {
        self.number(key)
            .map(|n| n as usize)
            .ok_or_else(|| self.bad(format!("metadata `{key}` is missing")))
    }

    /// `general.architecture` (`llama`, `qwen2`, `qwen3` or `gemma2` for the files this crate
    /// reads).
    pub fn architecture(&self) -> &str {
        self.string("general.architecture").unwrap_or("")
    }

    /// The member of the Llama family the architecture names; llama.cpp's names are HF's
    /// `model_type`s for these three.
    fn family(&self) -> Result<llama::Family> {
        match self.architecture() {
            arch @ ("llama" | "qwen2" | "qwen3") => {
                Ok(llama::Family::from_model_type(arch).expect("a family's model_type"))
            }
            arch => Err(self.bad(format!(
                "GGUF architecture `{arch}` is not supported (supported: llama, qwen2, qwen3, \
                 gemma2, gptneox)"
            ))),
        }
    }

    /// The model's shape as an HF Llama-family config, from the `{architecture}.*` metadata.
    pub fn llama_config(&self) -> Result<llama::Config> {
        let family = self.family()?;
        let arch = self.architecture();
        let key = |name: &str| format!("{arch}.{name}");
        let number = |name: &str| self.number(&key(name));
        // Linear scaling is in the metadata; Llama 3's is in the `rope_freqs` tensor, read
        // with the weights.
        let rope_scaling = match self.string(&key("rope.scaling.type")) {
            None | Some("none") => None,
            Some("linear") => Some(serde_json::json!({
                "rope_type": "linear",
                "factor": number("rope.scaling.factor"),
            })),
            Some(kind) => {
                return Err(self.bad(format!(
                    "rope scaling `{kind}` is not supported (supported: linear, and Llama 3's \
                     `rope_freqs`)"
                )))
            }
        };
        let shape = self.shape()?;
        let head_dim = shape.head_dim;
        if let Some(rot) = number("rope.dimension_count") {
            if rot as usize != head_dim {
                return Err(self.bad(format!(
                    "partial rotary embeddings ({rot} of {head_dim} channels) are not supported"
                )));
            }
        }
        let cfg = llama::Config {
            vocab_size: shape.vocab,
            hidden_size: shape.hidden,
            intermediate_size: shape.ffn,
            num_hidden_layers: shape.layers,
            num_attention_heads: shape.heads,
            num_key_value_heads: shape.kv_heads,
            head_dim: Some(head_dim),
            rms_norm_eps: shape.rms_eps.unwrap_or(1e-5),
            rope_theta: shape.rope_theta,
            hidden_act: "silu".into(),
            tie_word_embeddings: !self.content.tensor_infos.contains_key("output.weight"),
            attention_bias: false,
            mlp_bias: false,
            rope_scaling,
            family,
            sliding_window: None,
            use_sliding_window: false,
            max_window_layers: None,
            layer_types: None,
        };
        cfg.validate().map_err(|m| self.bad(m))?;
        Ok(cfg)
    }

    /// The transformer's shape, read alike for every architecture from `{arch}.*`.
    fn shape(&self) -> Result<Shape> {
        let arch = self.architecture();
        let number = |name: &str| self.number(&format!("{arch}.{name}"));
        let required = |name: &str| self.required(&format!("{arch}.{name}"));
        let heads = required("attention.head_count")?;
        let hidden = required("embedding_length")?;
        // A file may leave out the vocabulary size: the embedding's rows then say it.
        let vocab = match number("vocab_size") {
            Some(n) => n as usize,
            None => {
                let name = "token_embd.weight";
                let info = self
                    .content
                    .tensor_infos
                    .get(name)
                    .ok_or_else(|| self.bad(format!("tensor `{name}` is missing")))?;
                info.shape.dims()[0]
            }
        };
        Ok(Shape {
            vocab,
            hidden,
            ffn: required("feed_forward_length")?,
            layers: required("block_count")?,
            heads,
            kv_heads: number("attention.head_count_kv").map(|n| n as usize),
            head_dim: number("attention.key_length").map_or(hidden / heads.max(1), |n| n as usize),
            rms_eps: number("attention.layer_norm_rms_epsilon"),
            rope_theta: number("rope.freq_base").unwrap_or(10_000.0),
        })
    }

    /// Loads the model the architecture names, dequantizing every tensor to `dtype` on
    /// `device`.
    pub fn load(&mut self, device: &Device, dtype: DType) -> Result<Model> {
        if self.content.tensor_infos.is_empty() {
            return Err(self.bad(
                "holds no tensors: a vocabulary-only file carries a tokenizer, not a model".into(),
            ));
        }
        Ok(match self.architecture() {
            "gemma2" => Model::Gemma2(self.load_gemma2(device, dtype)?),
            "gptneox" => Model::GptNeoX(self.load_gpt_neox(device, dtype)?),
            _ => Model::Llama(self.load_llama(device, dtype)?),
        })
    }

    /// One tensor, dequantized to f32 on the CPU.
    fn read_tensor(&mut self, name: &str) -> Result<Tensor> {
        let q = self
            .content
            .tensor(&mut self.file, name, &Device::Cpu)
            .map_err(|e| Error::Weights {
                path: self.path.clone(),
                message: format!("cannot read tensor `{name}` ({e})"),
            })?;
        Ok(q.dequantize(&Device::Cpu)?)
    }

    /// Every tensor `hf_name` has an HF name for, under that name, after `fix` (given the
    /// GGUF name) undoes what llama.cpp's converter changed.
    fn hf_tensors(
        &mut self,
        hf_name: impl Fn(&str) -> Option<String>,
        fix: impl Fn(&str, Tensor) -> candle_core::Result<Tensor>,
    ) -> Result<HashMap<String, Tensor>> {
        let names: Vec<String> = self.content.tensor_infos.keys().cloned().collect();
        let mut tensors = HashMap::new();
        for gguf_name in names {
            let Some(hf) = hf_name(&gguf_name) else {
                continue;
            };
            let t = self.read_tensor(&gguf_name)?;
            let t = fix(&gguf_name, t).map_err(|e| self.mismatch(e.into()))?;
            tensors.insert(hf, t);
        }
        Ok(tensors)
    }

    /// A shape error from building the model: the tensors disagree with the metadata.
    fn mismatch(&self, e: Error) -> Error {
        match e {
            Error::Candle(e) => Error::Weights {
                path: self.path.clone(),
                message: format!("do not match the metadata: {e}"),
            },
            other => other,
        }
    }

    /// A Gemma 2's config from the `gemma2.*` metadata. GGUF has no key for the attention
    /// scale: llama.cpp divides scores by √head_dim, except in the 27B (46 layers), where it
    /// divides by √(d_model / heads), as the HF configs' `query_pre_attn_scalar` say.
    pub fn gemma2_config(&self) -> Result<gemma2::Config> {
        if self.architecture() != "gemma2" {
            return Err(self.bad(format!(
                "architecture `{}` is not gemma2",
                self.architecture()
            )));
        }
        let number = |name: &str| self.number(&format!("gemma2.{name}"));
        let shape = self.shape()?;
        let scalar = if shape.layers == 46 {
            shape.hidden / shape.heads.max(1)
        } else {
            shape.head_dim
        };
        let cfg = gemma2::Config {
            vocab_size: shape.vocab,
            hidden_size: shape.hidden,
            intermediate_size: shape.ffn,
            num_hidden_layers: shape.layers,
            num_attention_heads: shape.heads,
            num_key_value_heads: shape.kv_heads,
            head_dim: shape.head_dim,
            rms_norm_eps: shape.rms_eps.unwrap_or(1e-6),
            rope_theta: shape.rope_theta,
            hidden_activation: "gelu_pytorch_tanh".into(),
            query_pre_attn_scalar: scalar as f64,
            // llama.cpp's defaults where a file leaves them out.
            attn_logit_softcapping: Some(number("attn_logit_softcapping").unwrap_or(50.0)),
            final_logit_softcapping: Some(number("final_logit_softcapping").unwrap_or(30.0)),
            sliding_window: Some(number("attention.sliding_window").map_or(4096, |n| n as usize)),
            layer_types: None,
            attention_bias: false,
            rope_scaling: None,
            use_bidirectional_attention: None,
        };
        cfg.validate().map_err(|m| self.bad(m))?;
        Ok(cfg)
    }

    /// Loads a Gemma 2, its RMSNorm scales back from llama.cpp's `1 + w` to HF's `w`.
    pub fn load_gemma2(&mut self, device: &Device, dtype: DType) -> Result<Gemma2> {
        let cfg = self.gemma2_config()?;
        let tensors = self.hf_tensors(
            |name| hf_name(name, true),
            |name, t| match name.ends_with("norm.weight") {
                true => t - 1.0,
                false => Ok(t),
            },
        )?;
        let vb = VarBuilder::from_tensors(tensors, dtype, device);
        Gemma2::load(vb, &cfg).map_err(|e| self.mismatch(e))
    }

    /// A GPT-NeoX's config from the `gptneox.*` metadata. GGUF does not name the activation;
    /// Pythia's is exact GELU (llama.cpp computes the tanh approximation).
    pub fn gpt_neox_config(&self) -> Result<gpt_neox::Config> {
        let shape = self.shape()?;
        let number = |name: &str| self.number(&format!("gptneox.{name}"));
        let rotary = number("rope.dimension_count").map_or(shape.head_dim, |n| n as usize);
        let cfg = gpt_neox::Config {
            vocab_size: shape.vocab,
            hidden_size: shape.hidden,
            num_hidden_layers: shape.layers,
            num_attention_heads: shape.heads,
            intermediate_size: shape.ffn,
            rotary_pct: rotary as f64 / shape.head_dim.max(1) as f64,
            rotary_emb_base: shape.rope_theta,
            layer_norm_eps: number("attention.layer_norm_epsilon").unwrap_or(1e-5),
            use_parallel_residual: self
                .get("gptneox.use_parallel_residual")
                .and_then(|v| v.to_bool().ok())
                .unwrap_or(true),
            max_position_embeddings: number("context_length").map_or(2048, |n| n as usize),
            hidden_act: "gelu".into(),
            attention_bias: true,
            tie_word_embeddings: !self.content.tensor_infos.contains_key("output.weight"),
            rope_scaling: None,
        };
        if shape.kv_heads.is_some_and(|kv| kv != shape.heads) {
            return Err(
                self.bad("grouped-query attention in a `gptneox` file is not supported".into())
            );
        }
        cfg.validate().map_err(|m| self.bad(m))?;
        Ok(cfg)
    }

    /// Loads a GPT-NeoX, its fused q/k/v rows put back in HF's order.
    pub fn load_gpt_neox(&mut self, device: &Device, dtype: DType) -> Result<GptNeoX> {
        let cfg = self.gpt_neox_config()?;
        let heads = cfg.num_attention_heads;
        let tensors =
            self.hf_tensors(neox_hf_name, |name, t| match name.contains(".attn_qkv.") {
                true => interleave_qkv(&t, heads),
                false => Ok(t),
            })?;
        let vb = VarBuilder::from_tensors(tensors, dtype, device);
        GptNeoX::load(vb, &cfg).map_err(|e| self.mismatch(e))
    }

    /// Loads the model, dequantizing every tensor to `dtype` on `device`.
    pub fn load_llama(&mut self, device: &Device, dtype: DType) -> Result<Llama> {
        let cfg = self.llama_config()?;
        let permuted = cfg.family == llama::Family::Llama;
        let q_bias = self
            .content
            .tensor_infos
            .keys()
            .find(|n| n.ends_with("attn_q.bias"));
        if let Some(name) = q_bias.filter(|_| permuted) {
            // It would need unpermuting too, and HF's Llama would need `attention_bias`.
            return Err(self.bad(format!(
                "`{name}`: query/key biases in a `llama` GGUF are not supported"
            )));
        }
        // llama.cpp's form of Llama 3's rotary scaling: a divisor per frequency.
        let rope_divisors = match self.content.tensor_infos.contains_key("rope_freqs.weight") {
            true => Some(
                self.read_tensor("rope_freqs.weight")?
                    .flatten_all()?
                    .to_vec1::<f32>()?,
            ),
            false => None,
        };
        let (heads, kv_heads) = (cfg.num_attention_heads, cfg.kv_heads());
        let tensors = self.hf_tensors(
            |name| hf_name(name, false),
            |name, t| match permuted {
                true if name.ends_with("attn_q.weight") => unpermute_rotary_rows(&t, heads),
                true if name.ends_with("attn_k.weight") => unpermute_rotary_rows(&t, kv_heads),
                _ => Ok(t),
            },
        )?;
        let vb = VarBuilder::from_tensors(tensors, dtype, device);
        let mut model = Llama::load(vb, &cfg).map_err(|e| self.mismatch(e))?;
        if let Some(divisors) = rope_divisors {
            model
                .divide_rotary(&divisors)
                .map_err(|e| self.bad(format!("tensor `rope_freqs`: {e}")))?;
        }
        Ok(model)
    }

    /// The tokenizer stored in the metadata (`tokenizer.ggml.*`), rebuilt as a HF tokenizer:
    /// byte-level BPE (`gpt2`: SmolLM2, Llama 3, Qwen) or SentencePiece BPE (`llama`: Llama 2,
    /// Mistral, Phi-3, Gemma).
    pub fn tokenizer(&self) -> Result<Tokenizer> {
        let kind = self.string("tokenizer.ggml.model").unwrap_or("");
        if kind != "gpt2" && kind != "llama" {
            return Err(Error::Tokenizer(format!(
                "{}: GGUF tokenizer model `{kind}` is not supported (only byte-level BPE, `gpt2`, \
                 and SentencePiece BPE, `llama`); pass a tokenizer.json with --tokenizer",
                self.path.display()
            )));
        }
        let strings = |key: &str| -> Result<Vec<String>> {
            let Some(values) = self.get(key) else {
                return Ok(Vec::new());
            };
            values
                .to_vec()
                .and_then(|v| v.iter().map(|v| v.to_string().cloned()).collect())
                .map_err(|e| self.bad(format!("metadata `{key}`: {e}")))
        };
        let tokens = strings("tokenizer.ggml.tokens")?;
        if tokens.is_empty() {
            return Err(self.bad("metadata `tokenizer.ggml.tokens` is missing".into()));
        }
        let merges = strings("tokenizer.ggml.merges")?;
        if kind == "gpt2" && merges.is_empty() {
            return Err(self.bad("metadata `tokenizer.ggml.merges` is missing".into()));
        }
        let flag = |key: &str, default: bool| {
            self.get(key)
                .and_then(|v| v.to_bool().ok())
                .unwrap_or(default)
        };
        let vocab = GgufVocab {
            types: self
                .get("tokenizer.ggml.token_type")
                .and_then(|v| v.to_vec().ok())
                .map(|v| v.iter().map(|t| t.to_i32().map_or(1, i64::from)).collect())
                .unwrap_or_default(),
            merges,
            scores: self
                .get("tokenizer.ggml.scores")
                .and_then(|v| v.to_vec().ok())
                .map(|v| v.iter().map(|s| s.to_f32().unwrap_or(0.0)).collect())
                .unwrap_or_default(),
            by_order: self.architecture().starts_with("gemma"),
            pre: self
                .string("tokenizer.ggml.pre")
                .unwrap_or("default")
                .into(),
            // llama.cpp adds a BOS to SentencePiece text unless told not to.
            bos: self
                .number("tokenizer.ggml.bos_token_id")
                .map(|n| n as usize)
                .filter(|&id| id < tokens.len())
                .filter(|_| flag("tokenizer.ggml.add_bos_token", kind == "llama")),
            add_space_prefix: flag("tokenizer.ggml.add_space_prefix", true),
            tokens,
        };
        let json = match kind {
            "gpt2" => vocab.byte_level_json().map_err(|e| {
                Error::Tokenizer(format!(
                    "{}: {e}; pass a tokenizer.json with --tokenizer",
                    self.path.display()
                ))
            })?,
            _ => vocab.sentencepiece_json(),
        };
        let inner =
            tokenizers::Tokenizer::from_bytes(json.to_string().as_bytes()).map_err(|e| {
                Error::Tokenizer(format!(
                    "{}: cannot build the tokenizer from GGUF metadata: {e}",
                    self.path.display()
                ))
            })?;
        Ok(Tokenizer::new(inner))
    }
}

/// ggml's name for a tensor type candle does not read (`ggml.h`'s `ggml_type`).
fn ggml_type_name(id: u32) -> &'static str {
    match id {
        16 => "IQ2_XXS",
        17 => "IQ2_XS",
        18 => "IQ3_XXS",
        19 => "IQ1_S",
        20 => "IQ4_NL",
        21 => "IQ3_S",
        22 => "IQ2_S",
        23 => "IQ4_XS",
        24 => "I8",
        25 => "I16",
        26 => "I32",
        27 => "I64",
        28 => "F64",
        29 => "IQ1_M",
        34 => "TQ1_0",
        35 => "TQ2_0",
        39 => "MXFP4",
        _ => "unknown",
    }
}

/// What every architecture's metadata says of the transformer's shape.
struct Shape {
    vocab: usize,
    hidden: usize,
    ffn: usize,
    layers: usize,
    heads: usize,
    kv_heads: Option<usize>,
    head_dim: usize,
    rms_eps: Option<f64>,
    rope_theta: f64,
}
