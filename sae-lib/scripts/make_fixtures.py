#!/usr/bin/env python3
"""Generate tiny random HF checkpoints + reference activations for sae-lib's Rust tests.

How to run (from the repository root, CPU only, takes a few seconds):

    python3 -m venv /tmp/fixenv
    /tmp/fixenv/bin/pip install -r sae-lib/scripts/requirements-fixtures.txt
    /tmp/fixenv/bin/python sae-lib/scripts/make_fixtures.py

Versions used to produce the committed fixtures:
    torch==2.15.0  transformers==5.24.0  tokenizers==0.23.3  safetensors==0.8.0
    (Python 3.11.7, CPU)

The script is deterministic (torch.manual_seed(0), single thread) and needs no network:
models are built from configs, the tokenizer is read from
/work/shared/data/gpt-neox-20b-tokenizer.json and the long text from
/work/shared/data/wikitext-2/valid.txt (override the folder with SAE_SHARED_DATA).

Output (all under sae-lib/tests/fixtures/):
  gpt_neox_parallel/   config.json, model.safetensors, expected.safetensors
  gpt_neox_sequential/ config.json, model.safetensors, expected.safetensors
  gpt_neox_bin/        config.json (legacy 4.x/Hub key style: rotary_pct, rotary_emb_base),
                       pytorch_model.bin -- same weights as gpt_neox_parallel; compare
                       against gpt_neox_parallel/expected.safetensors
  llama_gqa/           config.json, model.safetensors, expected.safetensors
  tokenizer_ids.json

expected.safetensors keys (float32 unless noted; hooks use TransformerLens names):
  single.input_ids [1,7] int64, single.logits [1,7,V], single.blocks.{L}.{hook} [1,7,D]
  batch.input_ids / batch.attention_mask / batch.position_ids [3,9] int64,
  batch.logits [3,9,V], batch.blocks.{L}.{hook} [3,9,D]
  zero_mlp1.logits [1,7,V]   (single input, blocks.1.hook_mlp_out replaced by zeros)
  single.ce_loss, zero_mlp1.ce_loss, zero_mlp1.kl : float32 scalars of shape [] (rank 0)
  hooks: hook_resid_pre, hook_attn_out, hook_mlp_out, hook_resid_post
"""

import json
import math
import os
import shutil
import sys

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

import tokenizers
import transformers
from transformers import (
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
)

torch.set_num_threads(1)

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.normpath(os.path.join(HERE, "..", "tests", "fixtures"))
SHARED_DATA = os.environ.get("SAE_SHARED_DATA", "/work/shared/data")

N_LAYERS = 3
HOOKS = ["hook_resid_pre", "hook_attn_out", "hook_mlp_out", "hook_resid_post"]
VOCAB = 96
D_MODEL = 32

COMMON = dict(
    hidden_size=D_MODEL,
    num_attention_heads=4,
    num_hidden_layers=N_LAYERS,
    intermediate_size=64,
    vocab_size=VOCAB,
    max_position_embeddings=64,
)


# ---------------------------------------------------------------------------------------
# model construction
# ---------------------------------------------------------------------------------------


def neox_config(parallel: bool) -> GPTNeoXConfig:
    return GPTNeoXConfig(
        **COMMON,
        layer_norm_eps=1e-5,
        hidden_act="gelu",
        rotary_emb_base=10000,
        rotary_pct=0.25 if parallel else 0.5,
        use_parallel_residual=parallel,
        tie_word_embeddings=False,
        attn_implementation="eager",
    )


def llama_config() -> LlamaConfig:
    return LlamaConfig(
        **COMMON,
        num_key_value_heads=2,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        hidden_act="silu",
        tie_word_embeddings=True,
        attn_implementation="eager",
    )


@torch.no_grad()
def rerandomise(model: torch.nn.Module) -> None:
    """HF's N(0, 0.02) init makes every output near-trivial; use O(1) activations instead.

    Linear weights ~ N(0, (1.5/sqrt(fan_in))^2), embeddings ~ N(0, 0.5^2), biases ~ N(0, 0.1^2),
    LayerNorm/RMSNorm weights 1 + N(0, 0.1^2), LayerNorm biases N(0, 0.1^2).
    Tied parameters are visited once (named_parameters de-duplicates).
    """
    for name, p in model.named_parameters():
        if "norm" in name:  # input_layernorm, post_attention_layernorm, final_layer_norm, norm
            if name.endswith(".weight"):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            else:
                p.copy_(0.1 * torch.randn_like(p))
        elif name.endswith(".bias"):
            p.copy_(0.1 * torch.randn_like(p))
        elif "embed" in name:
            p.copy_(0.5 * torch.randn_like(p))
        elif p.dim() == 2:
            fan_in = p.shape[1]
            p.copy_((1.5 / math.sqrt(fan_in)) * torch.randn_like(p))
        else:
            raise RuntimeError(f"unhandled parameter {name} {tuple(p.shape)}")


def build(kind: str):
    if kind == "gpt_neox_parallel":
        model = GPTNeoXForCausalLM(neox_config(True))
    elif kind == "gpt_neox_sequential":
        model = GPTNeoXForCausalLM(neox_config(False))
    elif kind == "llama_gqa":
        model = LlamaForCausalLM(llama_config())
    else:
        raise ValueError(kind)
    model = model.float()
    rerandomise(model)
    model.eval()
    return model


def parts(model):
    """(decoder layers, attention module getter, mlp getter)."""
    if isinstance(model, GPTNeoXForCausalLM):
        layers = model.gpt_neox.layers
        return layers, (lambda l: l.attention), (lambda l: l.mlp)
    layers = model.model.layers
    return layers, (lambda l: l.self_attn), (lambda l: l.mlp)


# ---------------------------------------------------------------------------------------
# running with hooks
# ---------------------------------------------------------------------------------------


def _first(x):
    return x[0] if isinstance(x, (tuple, list)) else x


@torch.no_grad()
def run_with_cache(model, input_ids, attention_mask=None, position_ids=None, zero_mlp_layer=None):
    """Returns (logits, {tl_hook_name: tensor})."""
    layers, attn_of, mlp_of = parts(model)
    cache = {}
    handles = []

    for L, layer in enumerate(layers):

        def pre(mod, args, kwargs, L=L):
            hs = args[0] if len(args) > 0 else kwargs["hidden_states"]
            cache[f"blocks.{L}.hook_resid_pre"] = hs.detach().clone()

        def post(mod, args, kwargs, out, L=L):
            cache[f"blocks.{L}.hook_resid_post"] = _first(out).detach().clone()

        def attn_hook(mod, args, out, L=L):
            cache[f"blocks.{L}.hook_attn_out"] = _first(out).detach().clone()

        def mlp_hook(mod, args, out, L=L):
            if zero_mlp_layer == L:
                out = torch.zeros_like(out)
                cache[f"blocks.{L}.hook_mlp_out"] = out.clone()
                return out
            cache[f"blocks.{L}.hook_mlp_out"] = out.detach().clone()
            return None

        handles.append(layer.register_forward_pre_hook(pre, with_kwargs=True))
        handles.append(layer.register_forward_hook(post, with_kwargs=True))
        handles.append(attn_of(layer).register_forward_hook(attn_hook))
        handles.append(mlp_of(layer).register_forward_hook(mlp_hook))
    try:
        out = model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=False,
        )
    finally:
        for h in handles:
            h.remove()
    assert len(cache) == N_LAYERS * len(HOOKS), sorted(cache)
    return out.logits.detach().clone(), cache


def next_token_ce(logits, ids):
    # mean over positions 0..T-2 predicting tokens 1..T-1
    return F.cross_entropy(logits[0, :-1], ids[0, 1:], reduction="mean")


def mean_kl(clean_logits, other_logits):
    lp = F.log_softmax(clean_logits[0, :-1].double(), dim=-1)
    lq = F.log_softmax(other_logits[0, :-1].double(), dim=-1)
    return (lp.exp() * (lp - lq)).sum(-1).mean().float()


# ---------------------------------------------------------------------------------------
# inputs
# ---------------------------------------------------------------------------------------


def make_inputs(gen):
    single = torch.randint(1, VOCAB, (1, 7), generator=gen, dtype=torch.int64)
    real = torch.randint(1, VOCAB, (3, 9), generator=gen, dtype=torch.int64)
    mask = torch.ones(3, 9, dtype=torch.int64)
    mask[1, 5:] = 0  # 5 real tokens then 4 pads (right padding)
    mask[2, :3] = 0  # 3 pads then 6 real tokens (left padding)
    batch = torch.where(mask.bool(), real, torch.zeros_like(real))  # pad id 0
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    return single, batch, mask, pos


# ---------------------------------------------------------------------------------------
# per model
# ---------------------------------------------------------------------------------------


def clean_dir(d):
    if os.path.isdir(d):
        shutil.rmtree(d)
    os.makedirs(d)


def save_model(model, d):
    clean_dir(d)
    model.save_pretrained(d)  # safetensors is the only format transformers 5.x writes
    gc = os.path.join(d, "generation_config.json")
    if os.path.exists(gc):
        os.remove(gc)
    path = os.path.join(d, "model.safetensors")
    sd = load_file(path)
    # transformers 5.x writes the *original* checkpoint names (save_original_format=True):
    # for GPT-NeoX the head is saved as `embed_out.weight` (as in Pythia checkpoints on the
    # Hub), not as the in-memory `lm_head.weight`. So only drop names that are buffers.
    buffers = set(n for n, _ in model.named_buffers())
    extra = [k for k in sd if k in buffers or "rotary" in k or "inv_freq" in k or k.endswith(".masked_bias")]
    if extra:  # drop non-parameter buffers, if any got saved
        for k in extra:
            del sd[k]
        save_file(sd, path, metadata={"format": "pt"})
    leftover = sorted(os.listdir(d))
    assert leftover == ["config.json", "model.safetensors"], leftover
    return sorted(sd), extra


def report_stats(tag, logits, cache):
    print(f"  [{tag}] logits std {logits.std():.3f} absmax {logits.abs().max():.3f}")
    for L in range(N_LAYERS):
        s = "  ".join(
            f"{h[5:]} {cache[f'blocks.{L}.{h}'].std():.2f}/{cache[f'blocks.{L}.{h}'].abs().max():.1f}"
            for h in HOOKS
        )
        print(f"    L{L} std/absmax: {s}")
    for k, v in cache.items():
        assert torch.isfinite(v).all(), k
        assert v.abs().max() < 100, (k, v.abs().max())
    assert torch.isfinite(logits).all()
    assert 0.3 < logits.std() < 10, logits.std()


def padding_check(model, batch, mask, pos, b_logits, b_cache):
    worst = 0.0
    for r in range(batch.shape[0]):
        idx = mask[r].nonzero().squeeze(-1)
        alone_ids = batch[r : r + 1, idx]
        a_logits, a_cache = run_with_cache(model, alone_ids)
        worst = max(worst, (b_logits[r, idx] - a_logits[0]).abs().max().item())
        for k in a_cache:
            worst = max(worst, (b_cache[k][r, idx] - a_cache[k][0]).abs().max().item())
    return worst


def make_model_fixture(kind, single, batch, mask, pos):
    print(f"== {kind}")
    model = build(kind)
    d = os.path.join(FIXTURES, kind)
    names, dropped = save_model(model, d)

    exp = {}
    s_logits, s_cache = run_with_cache(model, single)
    report_stats("single", s_logits, s_cache)
    exp["single.input_ids"] = single
    exp["single.logits"] = s_logits
    for k, v in s_cache.items():
        exp[f"single.{k}"] = v

    b_logits, b_cache = run_with_cache(model, batch, attention_mask=mask, position_ids=pos)
    exp["batch.input_ids"] = batch
    exp["batch.attention_mask"] = mask
    exp["batch.position_ids"] = pos
    exp["batch.logits"] = b_logits
    for k, v in b_cache.items():
        exp[f"batch.{k}"] = v
    assert torch.isfinite(b_logits).all()

    # batch row 0 must equal the single-sequence path exactly in spirit; check padding too
    pad_diff = padding_check(model, batch, mask, pos, b_logits, b_cache)
    print(f"  padding check max abs diff: {pad_diff:.3e}")
    assert pad_diff < 1e-4, pad_diff

    z_logits, z_cache = run_with_cache(model, single, zero_mlp_layer=1)
    assert (z_cache["blocks.1.hook_mlp_out"] == 0).all()
    exp["zero_mlp1.logits"] = z_logits

    ce = next_token_ce(s_logits, single)
    zce = next_token_ce(z_logits, single)
    kl = mean_kl(s_logits, z_logits)
    exp["single.ce_loss"] = ce.reshape(())
    exp["zero_mlp1.ce_loss"] = zce.reshape(())
    exp["zero_mlp1.kl"] = kl.reshape(())
    print(f"  ce {ce:.4f}  zero_mlp1 ce {zce:.4f}  kl {kl:.4f}  (ln V = {math.log(VOCAB):.4f})")
    assert kl > 1e-3, "zero-ablating MLP 1 should change the outputs noticeably"

    exp = {k: v.contiguous() for k, v in exp.items()}
    for k, v in exp.items():
        want = torch.int64 if k.endswith(("input_ids", "attention_mask", "position_ids")) else torch.float32
        assert v.dtype == want, (k, v.dtype)
    save_file(exp, os.path.join(d, "expected.safetensors"), metadata={"format": "pt"})

    # round trip: reload from disk with from_pretrained and reproduce the expected outputs
    cls = type(model)
    re = cls.from_pretrained(d, attn_implementation="eager", dtype=torch.float32).eval()
    r_logits, _ = run_with_cache(re, single)
    rt = (r_logits - s_logits).abs().max().item()
    print(f"  reload round-trip logits diff: {rt:.3e}")
    assert rt < 1e-6

    print(f"  saved tensors ({len(names)}): {names}")
    if dropped:
        print(f"  dropped non-parameter tensors: {dropped}")
    return model, names, exp


LEGACY_NEOX_CONFIG_KEYS = None  # filled in make_bin_fixture for the report


def make_bin_fixture(parallel_model, single, expected):
    """pytorch_model.bin with the parallel model's weights, config.json in legacy key style.

    transformers 5.x can no longer *write* .bin files (save_pretrained has no
    safe_serialization flag), so we do what 4.x's save_pretrained(safe_serialization=False)
    did: torch.save a plain dict {name: tensor.contiguous()} of the state dict.
    config.json uses the key names real Pythia checkpoints on the Hub use
    (rotary_pct / rotary_emb_base at top level, written by transformers 4.x) so the
    Rust config parser is exercised on both the 4.x and the 5.x (rope_parameters) style.
    """
    global LEGACY_NEOX_CONFIG_KEYS
    print("== gpt_neox_bin")
    d = os.path.join(FIXTURES, "gpt_neox_bin")
    clean_dir(d)
    c = parallel_model.config
    cfg = {
        "architectures": ["GPTNeoXForCausalLM"],
        "bos_token_id": 0,
        "eos_token_id": 2,
        "hidden_act": c.hidden_act,
        "hidden_size": c.hidden_size,
        "initializer_range": 0.02,
        "intermediate_size": c.intermediate_size,
        "layer_norm_eps": c.layer_norm_eps,
        "max_position_embeddings": c.max_position_embeddings,
        "model_type": "gpt_neox",
        "num_attention_heads": c.num_attention_heads,
        "num_hidden_layers": c.num_hidden_layers,
        "rotary_emb_base": 10000,
        "rotary_pct": 0.25,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "use_cache": True,
        "use_parallel_residual": True,
        "vocab_size": c.vocab_size,
    }
    LEGACY_NEOX_CONFIG_KEYS = sorted(cfg)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
        f.write("\n")
    # same tensor names (incl. `embed_out.weight`, as in Pythia's .bin files) and values as
    # gpt_neox_parallel/model.safetensors
    st = load_file(os.path.join(FIXTURES, "gpt_neox_parallel", "model.safetensors"))
    sd = {k: st[k].clone().contiguous() for k in sorted(st)}
    torch.save(sd, os.path.join(d, "pytorch_model.bin"))
    assert sorted(os.listdir(d)) == ["config.json", "pytorch_model.bin"]

    # the .bin must hold exactly the parallel fixture's safetensors weights
    pt = torch.load(os.path.join(d, "pytorch_model.bin"), map_location="cpu", weights_only=True)
    assert sorted(st) == sorted(pt), (sorted(st), sorted(pt))
    for k in st:
        assert torch.equal(st[k], pt[k]), k

    # and transformers must load it (legacy config + .bin) to the same outputs
    re = GPTNeoXForCausalLM.from_pretrained(d, attn_implementation="eager", dtype=torch.float32).eval()
    assert re.config.rope_parameters["partial_rotary_factor"] == 0.25
    r_logits, r_cache = run_with_cache(re, single)
    diff = (r_logits - expected["single.logits"]).abs().max().item()
    for k, v in r_cache.items():
        diff = max(diff, (v - expected[f"single.{k}"]).abs().max().item())
    print(f"  .bin + legacy config reload vs gpt_neox_parallel expected: max abs diff {diff:.3e}")
    assert diff < 1e-6
    print(f"  saved tensors ({len(pt)}): {sorted(pt)}")


# ---------------------------------------------------------------------------------------
# tokenizer
# ---------------------------------------------------------------------------------------


def make_tokenizer_fixture():
    print("== tokenizer_ids.json")
    tok = tokenizers.Tokenizer.from_file(os.path.join(SHARED_DATA, "gpt-neox-20b-tokenizer.json"))
    with open(os.path.join(SHARED_DATA, "wikitext-2", "valid.txt"), encoding="utf-8") as f:
        wiki = f.read()
    start = wiki.index(" = Homarus gammarus = ")
    long_text = wiki[start : start + 3000]
    texts = [
        "The quick brown fox jumps over the lazy dog.",
        "   leading spaces, trailing spaces   ",
        "multiple   internal    spaces\n\nand blank lines\n\n\n  indented line\r\nCRLF end\n",
        "Café naïve résumé — “quotes” … 東京は日本の首都です。 中文测试 한국어 🦀🚀👩‍💻 e\u0301 n\u0303 Ω≈ç√",
        "def f(x):\n\tif x > 0:\n\t\treturn x ** 2  # square\n\treturn -x\n",
        "Numbers: 0 7 42 123 2024 3.14159 1,000,000 -17 1e-5 0x1F 99999999999",
        "<|endoftext|>special token in text<|endoftext|> and\u00a0nbsp",
        long_text,
    ]
    cases = [{"text": t, "ids": tok.encode(t).ids} for t in texts]
    for c in cases:
        assert tok.decode(c["ids"]) is not None
        print(f"  {len(c['text']):5d} chars -> {len(c['ids']):4d} ids")
    out = {
        "tokenizers_version": tokenizers.__version__,
        "tokenizer_file": "gpt-neox-20b-tokenizer.json",
        "cases": cases,
    }
    with open(os.path.join(FIXTURES, "tokenizer_ids.json"), "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, indent=1)
        f.write("\n")


def main():
    print(
        f"torch {torch.__version__}  transformers {transformers.__version__}  "
        f"tokenizers {tokenizers.__version__}  python {sys.version.split()[0]}"
    )
    torch.manual_seed(0)
    os.makedirs(FIXTURES, exist_ok=True)
    gen = torch.Generator().manual_seed(1234)
    single, batch, mask, pos = make_inputs(gen)
    print(f"single ids {single.tolist()}\nbatch ids {batch.tolist()}\nposition_ids {pos.tolist()}")

    results = {}
    for kind in ["gpt_neox_parallel", "gpt_neox_sequential", "llama_gqa"]:
        torch.manual_seed({"gpt_neox_parallel": 0, "gpt_neox_sequential": 1, "llama_gqa": 2}[kind])
        results[kind] = make_model_fixture(kind, single, batch, mask, pos)

    par_model, _, par_exp = results["gpt_neox_parallel"]
    make_bin_fixture(par_model, single, par_exp)
    make_tokenizer_fixture()
    print("done")


if __name__ == "__main__":
    main()
