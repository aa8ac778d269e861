#!/usr/bin/env python3
"""GGUF fixtures for sae-lib's Llama tests, with transformers' GGUF loader as the reference.

    /tmp/fixenv/bin/pip install -r sae-lib/scripts/requirements-fixtures.txt gguf==0.19.0 accelerate
    /tmp/fixenv/bin/python sae-lib/scripts/make_gguf_fixtures.py [SmolLM2-135M-Instruct.Q4_1.gguf]

1. tests/fixtures/llama_gguf/model.gguf: the random `llama_gqa` checkpoint written as
   llama.cpp writes Llama files (GGUF tensor names, q/k rows permuted for interleaved
   rotary, 2-D weights quantized to Q8_0, a byte-level BPE tokenizer of the 96 printable
   ASCII characters in the metadata). expected.safetensors holds what transformers computes
   from that GGUF (it dequantizes and un-permutes with its own code), so the Rust test checks
   sae-lib's GGUF reading against an independent implementation, not against this script.
2. tests/fixtures/{qwen2,qwen3}_gguf/: the random `qwen2` and `qwen3` checkpoints as
   llama.cpp writes those architectures: `qwen2.*` / `qwen3.*` metadata, q/k rows NOT
   permuted (llama.cpp rotates Qwen's halves as HF does), Qwen2's q/k/v biases and Qwen3's
   per-head q/k norms, weights in F32. Their tokenizers add merges across digits and
   punctuation, so the pre-tokenizer split shows in the ids: `qwen2` (every digit apart) in
   the Qwen2 file, `llama-bpe` (Llama 3's digits in threes) in the Qwen3 one. Both expected
   files are again transformers' own GGUF loader's outputs.
3. With the SmolLM2 GGUF (scripts/fetch_smollm2.sh fetches it): tests/fixtures/smollm2/
   holds transformers' token ids for a few texts and, for one WikiText passage, hook
   outputs at layers 0, 15 and 29 and a slice of the logits. The weights are not committed.

Versions: torch 2.15.0, transformers 5.24.0, gguf 0.19.0, numpy 2.x (Python 3.11.7, CPU).
"""

import json
import os
import sys

import numpy as np
import torch
from gguf import GGMLQuantizationType, GGUFWriter
from gguf.quants import quantize
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

import make_fixtures as mf

torch.set_num_threads(1)
SRC = os.path.join(mf.FIXTURES, "llama_gqa")
OUT = os.path.join(mf.FIXTURES, "llama_gguf")


def bytes_to_unicode():
    """GPT-2's byte → printable character table (the alphabet of byte-level BPE)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def permute(w, heads):
    """llama.cpp's convert_hf_to_gguf permutation of q/k rows (rotate-half → interleaved)."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


GGUF_NAMES = {
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "self_attn.q_norm": "attn_q_norm",
    "self_attn.k_norm": "attn_k_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def gguf_name(hf):
    if hf == "model.embed_tokens.weight":
        return "token_embd.weight"
    if hf == "model.norm.weight":
        return "output_norm.weight"
    if hf == "lm_head.weight":
        return "output.weight"
    _, _, layer, rest = hf.split(".", 3)
    module, kind = rest.rsplit(".", 1)
    return f"blk.{layer}.{GGUF_NAMES[module]}.{kind}"


def write_tiny_gguf(src=SRC, out=OUT, quantized=True, rope_freqs=None, arch="llama",
                    pre="default"):
    """`src`'s checkpoint as llama.cpp writes it, into `out`/model.gguf: 2-D weights in Q8_0
    (or F32 when not `quantized`), and `rope_freqs` (llama.cpp's per-frequency divisors for
    Llama 3's rotary scaling) as the `rope_freqs.weight` tensor when given. `arch` names the
    architecture; only `llama` has its q/k rows permuted. `pre` is the pre-tokenizer's name; any
    other than `default` gets merges across digits and punctuation as well."""
    cfg = json.load(open(os.path.join(src, "config.json")))
    sd = load_file(os.path.join(src, "model.safetensors"))
    heads, kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    rope_theta = cfg.get("rope_theta") or cfg["rope_parameters"]["rope_theta"]
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, "model.gguf")
    w = GGUFWriter(path, arch)
    w.add_name(f"sae-lib tiny {arch} fixture")
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_rope_freq_base(rope_theta)
    w.add_rope_dimension_count(cfg["head_dim"])
    if arch != "llama":
        w.add_key_length(cfg["head_dim"])
        w.add_value_length(cfg["head_dim"])
    w.add_vocab_size(cfg["vocab_size"])
    # Tokenizer: the 96 printable ASCII bytes (space is 'Ġ' in byte-level BPE), a few merges.
    table = bytes_to_unicode()
    tokens = [table[b] for b in range(32, 128)]
    merges = ["Ġ t", "h e", "Ġt he"]  # need their results in the vocab: replace the tail
    if pre != "default":  # the tail is then 'z' to DEL: texts leave them out
        merges += ["1 2", "12 3", "( t", "Ġ 1"]
    for i, merged in enumerate(["Ġt", "he", "Ġthe", "12", "123", "(t", "Ġ1"][:len(merges)]):
        tokens[-1 - i] = merged
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types([1] * len(tokens))
    w.add_token_merges(merges)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    for name, t in sorted(sd.items()):
        a = t.float().numpy()
        if arch == "llama" and name.endswith("q_proj.weight"):
            a = permute(a, heads)
        elif arch == "llama" and name.endswith("k_proj.weight"):
            a = permute(a, kv)
        if a.ndim == 2 and quantized:
            w.add_tensor(gguf_name(name), quantize(a, GGMLQuantizationType.Q8_0),
                         raw_dtype=GGMLQuantizationType.Q8_0)
        else:
            w.add_tensor(gguf_name(name), a)
    if rope_freqs is not None:
        w.add_tensor("rope_freqs.weight", np.asarray(rope_freqs, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(f"wrote {path} ({os.path.getsize(path)} bytes)")
    return path


def reference(gguf_path, texts, n_tokens, layers, logit_cols, **config):
    """transformers' tokenizer ids for `texts`, and hooks/logits on the first text. `config`
    overrides what transformers reads from the file's metadata."""
    d, f = os.path.split(gguf_path)
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32,
                                                 **config).eval()
    ids = [tok(t).input_ids for t in texts]
    x = torch.tensor([ids[0][:n_tokens]])
    mf.N_LAYERS = model.config.num_hidden_layers
    logits, cache = mf.run_with_cache(model, x)
    exp = {"input_ids": x, "logits_head": logits[..., :logit_cols].contiguous()}
    for L in layers:
        for h in ["hook_mlp_out", "hook_resid_post"]:
            exp[f"blocks.{L}.{h}"] = cache[f"blocks.{L}.{h}"]
    lp = torch.log_softmax(logits[0, :-1].double(), -1)
    exp["next_token_nll"] = -lp.gather(1, x[0, 1:, None])[:, 0].float()
    return ids, exp


def main():
    tiny = write_tiny_gguf()
    ids, exp = reference(tiny, ["the theory then, the end"], 32, [0, 1, 2], 96)
    save_file(exp, os.path.join(OUT, "expected.safetensors"))
    json.dump({"texts": ["the theory then, the end"], "ids": ids},
              open(os.path.join(OUT, "tokenizer_ids.json"), "w"), indent=1)
    print("tiny ids", ids, "nll", exp["next_token_nll"].mean().item())
    # Texts where the three splits differ: digit runs, "(the", contractions, line breaks.
    texts = ["the 12345 then (the end) 123 1", "THE'S the'll\n\n  the\t12 (12)"]
    for arch, pre in [("qwen2", "qwen2"), ("qwen3", "llama-bpe")]:
        out = os.path.join(mf.FIXTURES, f"{arch}_gguf")
        path = write_tiny_gguf(os.path.join(mf.FIXTURES, arch), out, False, arch=arch, pre=pre)
        # transformers 5.24 does not read `qwen3.attention.key_length` (it takes Qwen3's
        # default head_dim, 128), so the file's value is passed; the weights are still its own.
        head_dim = {"head_dim": 8} if arch == "qwen3" else {}
        ids, exp = reference(path, texts, 32, [0, 1, 2], 96, **head_dim)
        save_file(exp, os.path.join(out, "expected.safetensors"))
        json.dump({"texts": texts, "ids": ids}, open(os.path.join(out, "tokenizer_ids.json"), "w"),
                  indent=1)
        print(arch, "ids", ids, "nll", exp["next_token_nll"].mean().item())
    if len(sys.argv) > 1:
        wiki = open(os.path.join(mf.SHARED_DATA, "wikitext-2", "test.txt")).read()
        passage = wiki[wiki.index(" Robert <unk> is"):][:600].strip()
        texts = [passage, "In 1995, the café's 12345 visitors said: “naïve — 日本語” 🙂",
                 "<|im_start|>user\nHello!<|im_end|>", "  leading spaces\n\n\ttabs"]
        ids, exp = reference(sys.argv[1], texts, 24, [0, 15, 29], 512)
        out = os.path.join(mf.FIXTURES, "smollm2")
        os.makedirs(out, exist_ok=True)
        save_file(exp, os.path.join(out, "expected.safetensors"))
        json.dump({"texts": texts, "ids": ids}, open(os.path.join(out, "tokenizer_ids.json"), "w"))
        print("smollm2 nll per token", exp["next_token_nll"].mean().item())


if __name__ == "__main__":
    main()
