#!/usr/bin/env python3
"""GGUF fixtures for sae-lib's Llama tests, with transformers' GGUF loader as the reference.

    /tmp/fixenv/bin/pip install -r sae-lib/scripts/requirements-fixtures.txt gguf==0.19.0 accelerate \
        sentencepiece==0.2.3 protobuf
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
3. SentencePiece vocabularies, which GGUF stores as tokens, scores and types without merges:
   tests/fixtures/llama_spm_gguf/vocab.gguf is a vocabulary-only file as llama.cpp writes
   Llama 2's (a `▁` prefix, `<0xNN>` byte tokens, BOS added), and tests/fixtures/gemma2_gguf/
   a random tiny Gemma 2 with a Gemma-style vocabulary (no prefix, runs of blanks as
   user-defined tokens spelled with spaces, norms stored as 1 + w, as llama.cpp writes them).
   Both vocabularies are trained here by sentencepiece on tests/fixtures/corpus.txt, and the
   expected ids are sentencepiece's own, so the test checks the rebuilt tokenizer against the
   real one. Gemma's hooks and logits are transformers' GGUF loader's.
4. tests/fixtures/pythia_gguf/model.gguf: the `pythia` fixture as llama.cpp's converter
   writes GPT-NeoX (see write_pythia_gguf). transformers' GGUF loader does not read
   `gptneox`, so its reference is pythia/expected.safetensors, transformers' run of the same
   fp16 weights; make_llama_cpp_references.py checks llama.cpp's reading of the file.
5. With the SmolLM2 GGUF (scripts/fetch_smollm2.sh fetches it): tests/fixtures/smollm2/
   holds transformers' token ids for a few texts and, for one WikiText passage, hook
   outputs at layers 0, 15 and 29 and a slice of the logits. The weights are not committed.

Versions: torch 2.15.0, transformers 5.24.0, gguf 0.19.0, sentencepiece 0.2.3, numpy 2.x (Python 3.11.7, CPU).
"""

import json
import os
import sys

import numpy as np
import torch
import gguf
from gguf import GGMLQuantizationType, GGUFWriter
from gguf.quants import quantize
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

import make_fixtures as mf
import make_gemma2_fixtures as mg
import sentencepiece as spm
from transformers import Gemma2Config, Gemma2ForCausalLM

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


def gguf_name(hf, names=GGUF_NAMES):
    """llama.cpp's name for the HF tensor `hf`; `names` maps a layer's modules."""
    if hf == "model.embed_tokens.weight":
        return "token_embd.weight"
    if hf == "model.norm.weight":
        return "output_norm.weight"
    if hf == "lm_head.weight":
        return "output.weight"
    _, _, layer, rest = hf.split(".", 3)
    module, kind = rest.rsplit(".", 1)
    return f"blk.{layer}.{names[module]}.{kind}"


def add_ascii_vocab(w, pre):
    """A byte-level BPE vocabulary of the 96 printable ASCII bytes (space is 'Ġ'), a few
    merges. `pre` is the pre-tokenizer's name; any other than `default` gets merges across
    digits and punctuation as well."""
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


def write_pythia_gguf():
    """tests/fixtures/pythia_gguf/model.gguf: the `pythia` fixture (fp16 weights, 4.x buffers)
    as llama.cpp's converter writes GPT-NeoX: matrices in F16 as stored, norms and biases in
    F32, tensor names from gguf-py's own table, the fused q/k/v rows regrouped (every head's
    queries, then keys, then values), the causal-mask, masked_bias and inv_freq buffers left
    out. Its outputs must be pythia/expected.safetensors (transformers' run of the same
    weights); make_llama_cpp_references.py checks that llama.cpp reads it so too."""
    src = os.path.join(mf.FIXTURES, "pythia", "safetensors")
    cfg = json.load(open(os.path.join(src, "config.json")))
    sd = load_file(os.path.join(src, "model.safetensors"))
    heads, d, layers = cfg["num_attention_heads"], cfg["hidden_size"], cfg["num_hidden_layers"]
    out = os.path.join(mf.FIXTURES, "pythia_gguf")
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, "model.gguf")
    w = GGUFWriter(path, "gptneox")
    w.add_name("sae-lib tiny pythia fixture")
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(d)
    w.add_block_count(layers)
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_rope_dimension_count(int(cfg["rotary_pct"] * (d // heads)))
    w.add_head_count(heads)
    w.add_parallel_residual(cfg["use_parallel_residual"])
    w.add_layer_norm_eps(cfg["layer_norm_eps"])
    add_ascii_vocab(w, "default")
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.GPTNEOX, layers)
    for name, t in sd.items():
        if name.endswith((".attention.bias", ".masked_bias", ".inv_freq")):
            continue
        a = t.float()
        if "query_key_value" in name:
            a = a.reshape(heads, 3, d // heads, *a.shape[1:]).transpose(0, 1).reshape(a.shape)
        a = a.numpy().astype(np.float16 if a.ndim == 2 else np.float32)
        w.add_tensor(names.get_name(name, try_suffixes=(".weight", ".bias")), a)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(f"wrote {path} ({os.path.getsize(path)} bytes)")


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
    add_ascii_vocab(w, pre)
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


# What SentencePiece tests: the wiki text, and blanks, digits, accents and characters
# outside the vocabulary (byte fallback).
SPM_TEXTS = [
    "In 1995, the café's 12345 visitors said: “naïve — 日本語” 🙂",
    "  leading blanks\n\n\ttabs,  two   three    four blanks ",
    "line one\nline two\r\nthe end.",
    "",
]


def train_sentencepiece(prefix, gemma):
    """A BPE vocabulary of 400 trained on the corpus, with Llama 2's settings (identity
    normalization, blanks kept, byte fallback, digits apart) and, for `gemma`, Gemma's: no
    dummy prefix, special ids pad 0 / eos 1 / bos 2 / unk 3, and runs of 2 to 4 blanks as
    user-defined pieces."""
    extra = dict(add_dummy_prefix=False, pad_id=0, eos_id=1, bos_id=2, unk_id=3,
                 user_defined_symbols=["\u2581" * n for n in range(2, 5)]) if gemma else dict(
                 add_dummy_prefix=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1)
    spm.SentencePieceTrainer.train(
        input=os.path.join(mf.FIXTURES, "corpus.txt"), model_prefix=prefix, vocab_size=400,
        model_type="bpe", byte_fallback=True, normalization_rule_name="identity",
        remove_extra_whitespaces=False, split_digits=True, character_coverage=1.0,
        num_threads=1, minloglevel=2, hard_vocab_limit=False, **extra)
    return spm.SentencePieceProcessor(model_file=prefix + ".model")


def add_sentencepiece_vocab(w, sp, gemma):
    """The vocabulary as llama.cpp's converter writes a SentencePiece one: tokens, scores and
    types (user-defined pieces with their `▁` spelled as spaces), no merges."""
    tokens, scores, types = [], [], []
    for i in range(sp.get_piece_size()):
        piece, kind = sp.id_to_piece(i), 1
        if sp.is_unknown(i):
            kind = 2
        elif sp.is_control(i):
            kind = 3
        elif sp.is_byte(i):
            kind = 6
        elif sp.is_unused(i):
            kind = 5
        elif gemma and i in range(4, 7):  # the user-defined runs of blanks
            kind, piece = 4, piece.replace("\u2581", " ")
        tokens.append(piece)
        scores.append(sp.get_score(i))
        types.append(kind)
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(sp.bos_id())
    w.add_eos_token_id(sp.eos_id())
    w.add_unk_token_id(sp.unk_id())
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    w.add_add_space_prefix(not gemma)


def sentencepiece_ids(sp, texts):
    return [[sp.bos_id()] + sp.encode(t) for t in texts]


def write_llama_spm_vocab(texts):
    """A vocabulary-only Llama file (llama.cpp ships such files to test its tokenizers)."""
    out = os.path.join(mf.FIXTURES, "llama_spm_gguf")
    os.makedirs(out, exist_ok=True)
    sp = train_sentencepiece("/tmp/llama_spm", gemma=False)
    path = os.path.join(out, "vocab.gguf")
    w = GGUFWriter(path, "llama")
    w.add_name("sae-lib Llama 2 style SentencePiece vocabulary")
    add_sentencepiece_vocab(w, sp, gemma=False)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.close()
    ids = sentencepiece_ids(sp, texts)
    json.dump({"texts": texts, "ids": ids}, open(os.path.join(out, "tokenizer_ids.json"), "w"),
              indent=1)
    print(f"wrote {path}: {sp.get_piece_size()} pieces; ids of the first text {ids[0]}")


GEMMA2_GGUF_NAMES = dict(GGUF_NAMES, **{
    "post_attention_layernorm": "post_attention_norm",
    "pre_feedforward_layernorm": "ffn_norm",
    "post_feedforward_layernorm": "post_ffw_norm",
})


def write_gemma2_gguf(texts):
    """A random tiny Gemma 2 (sliding window 4, soft-capping at 50 and 30, scores over
    √head_dim as llama.cpp computes Gemma 2's), as llama.cpp writes the architecture."""
    out = os.path.join(mf.FIXTURES, "gemma2_gguf")
    os.makedirs(out, exist_ok=True)
    sp = train_sentencepiece("/tmp/gemma_spm", gemma=True)
    torch.manual_seed(7)
    cfg = Gemma2Config(vocab_size=sp.get_piece_size(), hidden_size=32, intermediate_size=64,
                       num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                       head_dim=8, query_pre_attn_scalar=8, sliding_window=4,
                       max_position_embeddings=64, attn_logit_softcapping=50.0,
                       final_logit_softcapping=30.0, pad_token_id=0, eos_token_id=1,
                       bos_token_id=2)
    model = Gemma2ForCausalLM(cfg).eval()
    with torch.no_grad():  # norms away from 0 (their init), so the +1 shows
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.normal_(0.0, 0.3)
    path = os.path.join(out, "model.gguf")
    w = GGUFWriter(path, "gemma2")
    w.add_name("sae-lib tiny gemma2 fixture")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_key_length(cfg.head_dim)
    w.add_value_length(cfg.head_dim)
    w.add_attn_logit_softcapping(cfg.attn_logit_softcapping)
    w.add_final_logit_softcapping(cfg.final_logit_softcapping)
    w.add_sliding_window(cfg.sliding_window)
    add_sentencepiece_vocab(w, sp, gemma=True)
    for name, t in sorted(model.state_dict().items()):
        if name == "lm_head.weight":  # tied to the embedding
            continue
        a = t.float().numpy()
        if name.endswith("norm.weight"):  # llama.cpp stores Gemma's RMSNorm scale as 1 + w
            a = a + 1.0
        w.add_tensor(gguf_name(name, GEMMA2_GGUF_NAMES), a)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    ids = sentencepiece_ids(sp, texts)
    # The forward runs on the wiki text's first 32 tokens; transformers does not read
    # query_pre_attn_scalar (llama.cpp has no key for it) and would take 256.
    parts, mf.parts = mf.parts, mg.gemma_parts  # hooks after Gemma's closing norms
    try:
        _, exp = reference(path, texts[:1], 32, [0, 1, 2], 96, ids[0][:32],
                           query_pre_attn_scalar=8)
    finally:
        mf.parts = parts
    save_file(exp, os.path.join(out, "expected.safetensors"))
    json.dump({"texts": texts, "ids": ids}, open(os.path.join(out, "tokenizer_ids.json"), "w"),
              indent=1)
    hf_ids = AutoTokenizer.from_pretrained(out, gguf_file="model.gguf")(texts).input_ids
    print(f"wrote {path}; transformers' tokenizer agrees with sentencepiece on",
          f"{sum(a == b for a, b in zip(hf_ids, ids))} of {len(ids)} texts")


def reference(gguf_path, texts, n_tokens, layers, logit_cols, input_ids=None, **config):
    """transformers' tokenizer ids for `texts`, and hooks/logits on the first text (or on
    `input_ids`). `config` overrides what transformers reads from the file's metadata."""
    d, f = os.path.split(gguf_path)
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32,
                                                 **config).eval()
    ids = [tok(t).input_ids for t in texts]
    x = torch.tensor([input_ids or ids[0][:n_tokens]])
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
        src_cfg = json.load(open(os.path.join(mf.FIXTURES, arch, "config.json")))
        head_dim = {"head_dim": src_cfg["head_dim"]} if arch == "qwen3" else {}
        ids, exp = reference(path, texts, 32, [0, 1, 2], 96, **head_dim)
        save_file(exp, os.path.join(out, "expected.safetensors"))
        json.dump({"texts": texts, "ids": ids}, open(os.path.join(out, "tokenizer_ids.json"), "w"),
                  indent=1)
        print(arch, "ids", ids, "nll", exp["next_token_nll"].mean().item())
    write_pythia_gguf()
    wiki = open(os.path.join(mf.SHARED_DATA, "wikitext-2", "test.txt")).read()
    passage = wiki[wiki.index(" Robert <unk> is"):][:600].strip()
    # WikiText's "<unk>" would be the unknown token's text, which llama.cpp and HF match
    # whole where sentencepiece spells it out.
    spm_texts = [passage.replace("<unk>", "Smith")] + SPM_TEXTS
    write_llama_spm_vocab(spm_texts)
    write_gemma2_gguf(spm_texts)
    if len(sys.argv) > 1:
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
