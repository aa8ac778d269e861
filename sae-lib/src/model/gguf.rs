//! llama.cpp's GGUF files: a model of the Llama family (architectures `llama`, `qwen2` and
//! `qwen3`; weights dequantized to the requested dtype) and its tokenizer, both from the one
//! file.
//!
//! GGUF stores the weights under its own names (`blk.0.attn_q.weight`) and, for `llama` only,
//! with the rows of `attn_q` / `attn_k` permuted within each head: llama.cpp rotates a Llama's
//! interleaved channel pairs where HF rotates halves, while its Qwen files keep HF's halves.
//! Both are undone here so the one [`Llama`] forward serves safetensors and GGUF alike.

use std::collections::HashMap;
use std::fs::File;
use std::path::Path;

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use super::llama::{self, Llama};
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
        let content = Content::read(&mut file).map_err(|e| Error::Weights {
            path: path.into(),
            message: format!("not a readable GGUF file ({e}); it may be truncated"),
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

    /// `general.architecture` (`llama`, `qwen2` or `qwen3` for the files this crate reads).
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
                "GGUF architecture `{arch}` is not supported (supported: llama, qwen2, qwen3)"
            ))),
        }
    }

    /// The model's shape as an HF Llama-family config, from the `{architecture}.*` metadata.
    pub fn llama_config(&self) -> Result<llama::Config> {
        let family = self.family()?;
        let arch = self.architecture();
        let key = |name: &str| format!("{arch}.{name}");
        let number = |name: &str| self.number(&key(name));
        let required = |name: &str| self.required(&key(name));
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
        let heads = required("attention.head_count")?;
        let hidden = required("embedding_length")?;
        let head_dim = number("attention.key_length").map_or(hidden / heads.max(1), |n| n as usize);
        if let Some(rot) = number("rope.dimension_count") {
            if rot as usize != head_dim {
                return Err(self.bad(format!(
                    "partial rotary embeddings ({rot} of {head_dim} channels) are not supported"
                )));
            }
        }
        let vocab_size = match number("vocab_size") {
            Some(n) => n as usize,
            None => self.tensor_rows("token_embd.weight")?,
        };
        let cfg = llama::Config {
            vocab_size,
            hidden_size: hidden,
            intermediate_size: required("feed_forward_length")?,
            num_hidden_layers: required("block_count")?,
            num_attention_heads: heads,
            num_key_value_heads: number("attention.head_count_kv").map(|n| n as usize),
            head_dim: Some(head_dim),
            rms_norm_eps: number("attention.layer_norm_rms_epsilon").unwrap_or(1e-5),
            rope_theta: number("rope.freq_base").unwrap_or(10_000.0),
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

    fn tensor_rows(&self, name: &str) -> Result<usize> {
        let info = self
            .content
            .tensor_infos
            .get(name)
            .ok_or_else(|| self.bad(format!("tensor `{name}` is missing")))?;
        Ok(info.shape.dims()[0])
    }

    /// Loads the model, dequantizing every tensor to `dtype` on `device`.
    pub fn load_llama(&mut self, device: &Device, dtype: DType) -> Result<Llama> {
        let cfg = self.llama_config()?;
        let permuted = cfg.family == llama::Family::Llama;
        let names: Vec<String> = self.content.tensor_infos.keys().cloned().collect();
        let mut tensors = HashMap::new();
        let mut rope_divisors = None;
        for gguf_name in names {
            let hf = hf_name(&gguf_name);
            if hf.is_none() && gguf_name != "rope_freqs.weight" {
                continue;
            }
            let q = self
                .content
                .tensor(&mut self.file, &gguf_name, &Device::Cpu)
                .map_err(|e| Error::Weights {
                    path: self.path.clone(),
                    message: format!("cannot read tensor `{gguf_name}` ({e})"),
                })?;
            let mut t = q.dequantize(&Device::Cpu)?;
            // llama.cpp's form of Llama 3's rotary scaling: a divisor per frequency.
            let Some(hf_name) = hf else {
                rope_divisors = Some(t.flatten_all()?.to_vec1::<f32>()?);
                continue;
            };
            if permuted && gguf_name.ends_with("attn_q.bias") {
                // It would need unpermuting too, and HF's Llama would need `attention_bias`.
                return Err(self.bad(format!(
                    "`{gguf_name}`: query/key biases in a `llama` GGUF are not supported"
                )));
            }
            if permuted && gguf_name.ends_with("attn_q.weight") {
                t = unpermute_rotary_rows(&t, cfg.num_attention_heads)?;
            } else if permuted && gguf_name.ends_with("attn_k.weight") {
                t = unpermute_rotary_rows(&t, cfg.kv_heads())?;
            }
            tensors.insert(hf_name, t);
        }
        let vb = VarBuilder::from_tensors(tensors, dtype, device);
        let mut model = Llama::load(vb, &cfg).map_err(|e| match e {
            Error::Candle(e) => Error::Weights {
                path: self.path.clone(),
                message: format!("do not match the metadata: {e}"),
            },
            other => other,
        })?;
        if let Some(divisors) = rope_divisors {
            model
                .divide_rotary(&divisors)
                .map_err(|e| self.bad(format!("tensor `rope_freqs`: {e}")))?;
        }
        Ok(model)
    }

    /// The tokenizer stored in the metadata (`tokenizer.ggml.*`), rebuilt as a HF tokenizer.
    /// Only byte-level BPE (`tokenizer.ggml.model = gpt2`, as SmolLM2, Llama 3 and Qwen use)
    /// is supported.
    pub fn tokenizer(&self) -> Result<Tokenizer> {
        let kind = self.string("tokenizer.ggml.model").unwrap_or("");
        if kind != "gpt2" {
            return Err(Error::Tokenizer(format!(
                "{}: GGUF tokenizer model `{kind}` is not supported (only byte-level BPE, `gpt2`); \
                 pass a tokenizer.json with --tokenizer",
                self.path.display()
            )));
        }
        let strings = |key: &str| -> Result<Vec<String>> {
            let values = self
                .get(key)
                .and_then(|v| v.to_vec().ok())
                .ok_or_else(|| self.bad(format!("metadata `{key}` is missing")))?;
            values
                .iter()
                .map(|v| v.to_string().cloned())
                .collect::<candle_core::Result<_>>()
                .map_err(|e| self.bad(format!("metadata `{key}`: {e}")))
        };
        let tokens = strings("tokenizer.ggml.tokens")?;
        let merges = strings("tokenizer.ggml.merges")?;
        let types: Vec<i64> = self
            .get("tokenizer.ggml.token_type")
            .and_then(|v| v.to_vec().ok())
            .map(|v| v.iter().map(|t| t.to_i32().map_or(1, i64::from)).collect())
            .unwrap_or_default();
        let pre = self.string("tokenizer.ggml.pre").unwrap_or("default");
        let bos = self
            .number("tokenizer.ggml.bos_token_id")
            .map(|n| n as usize)
            .filter(|_| {
                self.get("tokenizer.ggml.add_bos_token")
                    .and_then(|v| v.to_bool().ok())
                    .unwrap_or(false)
            })
            .and_then(|id| tokens.get(id).map(|t| (t.clone(), id)));
        let json = byte_level_bpe_json(&tokens, &merges, &types, pre, bos);
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

/// GGUF's name for a Llama tensor → HF's; `None` for tensors the HF model does not have.
fn hf_name(gguf: &str) -> Option<String> {
    let fixed = match gguf {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(name) = fixed {
        return Some(name.into());
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, part) = rest.split_once('.')?;
    let (module, kind) = part.rsplit_once('.')?;
    let hf = match module {
        "attn_norm" => "input_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "attn_q_norm" => "self_attn.q_norm",
        "attn_k_norm" => "self_attn.k_norm",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}.{kind}"))
}

/// Undoes llama.cpp's conversion permutation of a q/k projection `(heads·head_dim, d)`: within
/// each head GGUF stores the rows as interleaved pairs `(i, i + head_dim/2)`; HF keeps the two
/// halves apart.
fn unpermute_rotary_rows(w: &Tensor, heads: usize) -> Result<Tensor> {
    let (rows, cols) = w.dims2()?;
    let half = rows / heads / 2;
    Ok(w.reshape((heads, half, 2, cols))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((rows, cols))?)
}

/// Llama 3's split (its tokenizer.json's): case-insensitive contractions, a letter run with
/// one leading non-letter, digits in threes, punctuation runs, line breaks apart.
const LLAMA3_SPLIT: &str = concat!(
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}",
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
);

/// Qwen2's split (its tokenizer.json's, Qwen3's too): Llama 3's with every digit apart.
const QWEN2_SPLIT: &str = concat!(
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}",
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
);

/// A `tokenizer.json` for a byte-level BPE vocabulary. `pre` is llama.cpp's pre-tokenizer
/// name, which says how text was split before the merges were learned: `smollm` splits every
/// digit apart before GPT-2's regex, as SmolLM2's own tokenizer.json does; Llama 3's names
/// and Qwen's use their own regex; any other name gets GPT-2's regex alone.
fn byte_level_bpe_json(
    tokens: &[String],
    merges: &[String],
    types: &[i64],
    pre: &str,
    bos: Option<(String, usize)>,
) -> serde_json::Value {
    use serde_json::json;
    let vocab: serde_json::Map<String, serde_json::Value> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), json!(i)))
        .collect();
    // token_type 3 is llama.cpp's CONTROL (special tokens such as <|im_start|>), 4 USER_DEFINED.
    let added: Vec<_> = types
        .iter()
        .enumerate()
        .filter(|(_, t)| **t == 3 || **t == 4)
        .map(|(i, t)| {
            json!({"id": i, "content": tokens[i], "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": false, "special": *t == 3})
        })
        .collect();
    let byte_level = json!({"type": "ByteLevel", "add_prefix_space": false,
                            "trim_offsets": true, "use_regex": true});
    let split = |regex: &str| {
        json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": false},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true,
             "use_regex": false}]})
    };
    let pre_tokenizer = match pre {
        "smollm" => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true}, byte_level]}),
        "llama3" | "llama-v3" | "llama-bpe" | "smaug-bpe" | "dbrx" | "falcon3" => {
            split(LLAMA3_SPLIT)
        }
        "qwen2" | "deepseek-r1-qwen" => split(QWEN2_SPLIT),
        _ => byte_level.clone(),
    };
    let post_processor = match bos {
        Some((content, id)) => json!({"type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": content, "type_id": 0}},
                       {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": content, "type_id": 0}},
                     {"Sequence": {"id": "A", "type_id": 0}},
                     {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {content.clone(): {"id": content, "ids": [id], "tokens": [content]}}}),
        None => serde_json::Value::Null,
    };
    json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": added, "normalizer": null,
        "pre_tokenizer": pre_tokenizer, "post_processor": post_processor,
        "decoder": byte_level,
        "model": {"type": "BPE", "dropout": null, "unk_token": null,
                  "continuing_subword_prefix": null, "end_of_word_suffix": null,
                  "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                  "vocab": vocab, "merges": merges}
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gguf_names_map_to_hf_names() {
        assert_eq!(
            hf_name("blk.12.attn_output.weight").as_deref(),
            Some("model.layers.12.self_attn.o_proj.weight")
        );
        assert_eq!(
            hf_name("token_embd.weight").as_deref(),
            Some("model.embed_tokens.weight")
        );
        assert_eq!(
            hf_name("blk.0.attn_k_norm.weight").as_deref(),
            Some("model.layers.0.self_attn.k_norm.weight")
        );
        assert_eq!(hf_name("rope_freqs.weight"), None);
    }

    #[test]
    fn unpermuting_inverts_llama_cpp_permutation() {
        // llama.cpp's permute: reshape (heads, 2, half, d), swap axes 1 and 2.
        let (heads, hd, d) = (3, 8, 5);
        let hf = Tensor::arange(0f32, (heads * hd * d) as f32, &Device::Cpu)
            .unwrap()
            .reshape((heads * hd, d))
            .unwrap();
        let gguf = hf
            .reshape((heads, 2, hd / 2, d))
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .contiguous()
            .unwrap()
            .reshape((heads * hd, d))
            .unwrap();
        let back = unpermute_rotary_rows(&gguf, heads).unwrap();
        assert_eq!(
            back.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            hf.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        );
    }
}
