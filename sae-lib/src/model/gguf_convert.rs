//! What llama.cpp's converter changes in a checkpoint, undone: GGUF's tensor names mapped
//! back to HF's, and the row orders it rewrites (a Llama's q/k rows, GPT-NeoX's fused q/k/v).

use candle_core::{Result, Tensor};

/// GGUF's name for a tensor → HF's, for the Llama family or (`gemma`) Gemma 2, whose two
/// extra norms take the names a Llama's use; `None` for tensors the HF model does not have.
pub(super) fn hf_name(gguf: &str, gemma: bool) -> Option<String> {
    let fixed = [
        ("token_embd.weight", "model.embed_tokens.weight"),
        ("output_norm.weight", "model.norm.weight"),
        ("output.weight", "lm_head.weight"),
    ];
    map_name(gguf, &fixed, "model.layers", |module| {
        Some(match module {
            "attn_norm" => "input_layernorm",
            "ffn_norm" if gemma => "pre_feedforward_layernorm",
            "post_attention_norm" if gemma => "post_attention_layernorm",
            "post_ffw_norm" if gemma => "post_feedforward_layernorm",
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
        })
    })
}

/// GGUF's name for a GPT-NeoX tensor → HF's; `None` for tensors the HF model does not have.
pub(super) fn neox_hf_name(gguf: &str) -> Option<String> {
    let fixed = [
        ("token_embd.weight", "gpt_neox.embed_in.weight"),
        ("output_norm.weight", "gpt_neox.final_layer_norm.weight"),
        ("output_norm.bias", "gpt_neox.final_layer_norm.bias"),
        ("output.weight", "embed_out.weight"),
    ];
    map_name(gguf, &fixed, "gpt_neox.layers", |module| {
        Some(match module {
            "attn_norm" => "input_layernorm",
            "attn_qkv" => "attention.query_key_value",
            "attn_output" => "attention.dense",
            "ffn_norm" => "post_attention_layernorm",
            "ffn_up" => "mlp.dense_h_to_4h",
            "ffn_down" => "mlp.dense_4h_to_h",
            _ => return None,
        })
    })
}

/// A GGUF name through an architecture's tables: whole names (`fixed`), or a layer's module
/// (`blk.{i}.{module}.{kind}` → `{layers}.{i}.{hf module}.{kind}`).
fn map_name(
    gguf: &str,
    fixed: &[(&str, &str)],
    layers: &str,
    module: impl Fn(&str) -> Option<&'static str>,
) -> Option<String> {
    if let Some((_, hf)) = fixed.iter().find(|(name, _)| *name == gguf) {
        return Some(hf.to_string());
    }
    let (layer, part) = gguf.strip_prefix("blk.")?.split_once('.')?;
    let (name, kind) = part.rsplit_once('.')?;
    Some(format!("{layers}.{layer}.{}.{kind}", module(name)?))
}

/// Undoes llama.cpp's regrouping of GPT-NeoX's fused projection `(3·d, ...)`: GGUF stores
/// every head's query rows, then the keys, then the values; HF keeps each head's q, k and v
/// together.
pub(super) fn interleave_qkv(w: &Tensor, heads: usize) -> Result<Tensor> {
    let dims = w.dims();
    let mut split = vec![3, heads, dims[0] / (3 * heads.max(1))];
    split.extend_from_slice(&dims[1..]);
    w.reshape(split)?
        .transpose(0, 1)?
        .contiguous()?
        .reshape(dims)
}

/// Undoes llama.cpp's conversion permutation of a q/k projection `(heads·head_dim, d)`: within
/// each head GGUF stores the rows as interleaved pairs `(i, i + head_dim/2)`; HF keeps the two
/// halves apart.
pub(super) fn unpermute_rotary_rows(w: &Tensor, heads: usize) -> Result<Tensor> {
    let (rows, cols) = w.dims2()?;
    let half = rows / heads / 2;
    w.reshape((heads, half, 2, cols))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((rows, cols))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn gguf_names_map_to_hf_names() {
        assert_eq!(
            hf_name("blk.12.attn_output.weight", false).as_deref(),
            Some("model.layers.12.self_attn.o_proj.weight")
        );
        assert_eq!(
            hf_name("token_embd.weight", false).as_deref(),
            Some("model.embed_tokens.weight")
        );
        assert_eq!(
            hf_name("blk.0.attn_k_norm.weight", false).as_deref(),
            Some("model.layers.0.self_attn.k_norm.weight")
        );
        assert_eq!(hf_name("rope_freqs.weight", false), None);
        // Gemma 2's four norms: ffn_norm comes before its MLP, not after attention.
        let gemma = |n: &str| hf_name(&format!("blk.3.{n}.weight"), true).unwrap();
        assert_eq!(
            gemma("ffn_norm"),
            "model.layers.3.pre_feedforward_layernorm.weight"
        );
        assert_eq!(
            gemma("post_attention_norm"),
            "model.layers.3.post_attention_layernorm.weight"
        );
        assert_eq!(
            gemma("post_ffw_norm"),
            "model.layers.3.post_feedforward_layernorm.weight"
        );
        assert_eq!(hf_name("blk.3.post_ffw_norm.weight", false), None);
    }

    #[test]
    fn interleaving_inverts_llama_cpp_qkv_regrouping() {
        // HF rows: head 0 (q0, k0, v0), head 1 (q1, k1, v1), one row each; GGUF keeps
        // q0 q1 k0 k1 v0 v1.
        let gguf = Tensor::new(&[[0f32], [1.], [10.], [11.], [20.], [21.]], &Device::Cpu).unwrap();
        let hf = interleave_qkv(&gguf, 2).unwrap();
        let rows: Vec<f32> = hf.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(rows, [0., 10., 20., 1., 11., 21.]);
        let bias = interleave_qkv(&gguf.flatten_all().unwrap(), 2).unwrap();
        assert_eq!(bias.to_vec1::<f32>().unwrap(), rows);
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
