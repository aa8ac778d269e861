#!/usr/bin/env python3
"""Generate tiny random HF checkpoints + reference activations for sae-lib's Rust tests.

How to run (from the repository root, CPU only, takes a few seconds):

    python3 -m venv /tmp/fixenv
    /tmp/fixenv/bin/pip install -r sae-lib/scripts/requirements-fixtures.txt
    /tmp/fixenv/bin/python sae-lib/scripts/make_fixtures.py                # everything
    /tmp/fixenv/bin/python sae-lib/scripts/make_fixtures.py --only pythia  # only pythia/

Versions used to produce the committed fixtures:
    torch==2.15.0  transformers==5.24.0  tokenizers==0.23.3  safetensors==0.8.0
    (Python 3.11.7, CPU); pythia/ was generated with these same versions
    (torch 2.15.0+cu132 wheel, run on CPU) via `--only pythia`.

The script is deterministic (torch.manual_seed(0), single thread) and needs no network:
models are built from configs, the tokenizer is read from
/work/shared/data/gpt-neox-20b-tokenizer.json and the long text from
/work/shared/data/wikitext-2/valid.txt (override the folder with SAE_SHARED_DATA).
`--only pythia` needs neither; it copies the char tokenizer from
gpt_neox_parallel/tokenizer.json (written by make_char_tokenizer.py). A full run empties
gpt_neox_parallel/, gpt_neox_sequential/, gpt_neox_bin/ and llama_gqa/ first, deleting their
tokenizer.json files: run make_char_tokenizer.py afterwards to put them back.

Output (all under sae-lib/tests/fixtures/):
  gpt_neox_parallel/   config.json, model.safetensors, expected.safetensors
  gpt_neox_sequential/ config.json, model.safetensors, expected.safetensors
  gpt_neox_bin/        config.json (legacy 4.x/Hub key style: rotary_pct, rotary_emb_base),
                       pytorch_model.bin -- same weights as gpt_neox_parallel; compare
                       against gpt_neox_parallel/expected.safetensors
  llama_gqa/           config.json, model.safetensors, expected.safetensors
  tokenizer_ids.json
  pythia/              a held-out GPT-NeoX shape saved the way EleutherAI/pythia-* checkpoints
                       on the Hub are (written by transformers 4.x): d_model 64, 4 heads
                       (head_dim 16), 2 layers, d_mlp 256, vocab 96, max_pos 64,
                       rotary_pct 0.25, rotary_emb_base 10000, parallel residual, gelu,
                       untied head, seed 3.
    expected.safetensors   as below (2 layers, D 64), from the float32 model whose
                           weights are exactly the stored fp16 values (eager attention)
    safetensors/  config.json, model.safetensors, tokenizer.json
    sharded/      config.json, model.safetensors.index.json ({"metadata": {"total_size"},
                  "weight_map"}), model-00001-of-00002.safetensors (embed_in + layer 0),
                  model-00002-of-00002.safetensors (layer 1, final_layer_norm, embed_out),
                  tokenizer.json
    bin/          config.json, pytorch_model.bin (torch.save of the plain dict), tokenizer.json
    All three hold the same 34 tensors: every parameter in float16 under its checkpoint name
    (head `embed_out.weight`) plus, per layer, the buffers 4.x saved:
    gpt_neox.layers.{i}.attention.bias  BOOL [1,1,64,64] (lower-triangular causal mask),
    .attention.masked_bias  F32 [] (-1e9), .attention.rotary_emb.inv_freq  F32 [2]
    (1/10000^(arange(0,4,2)/4)). config.json uses the 4.x keys (rotary_pct, rotary_emb_base,
    "torch_dtype": "float16", "transformers_version": "4.24.0").

expected.safetensors keys (float32 unless noted; hooks use TransformerLens names):
  single.input_ids [1,7] int64, single.logits [1,7,V], single.blocks.{L}.{hook} [1,7,D]
  batch.input_ids / batch.attention_mask / batch.position_ids [3,9] int64,
  batch.logits [3,9,V], batch.blocks.{L}.{hook} [3,9,D]
  zero_mlp1.logits [1,7,V]   (single input, blocks.1.hook_mlp_out replaced by zeros)
  single.ce_loss, zero_mlp1.ce_loss, zero_mlp1.kl : float32 scalars of shape [] (rank 0)
  hooks: hook_resid_pre, hook_attn_out, hook_mlp_out, hook_resid_post
"""

import argparse
import json
import math
import os
import shutil
import struct
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
    assert len(cache) == len(layers) * len(HOOKS), sorted(cache)
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
    n_layers = len(cache) // len(HOOKS)  # the model's own layer count (N_LAYERS or pythia's)
    assert sorted(cache) == sorted(f"blocks.{L}.{h}" for L in range(n_layers) for h in HOOKS)
    for L in range(n_layers):
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

    exp = compute_expected(model, single, batch, mask, pos)
    save_file(exp, os.path.join(d, "expected.safetensors"), metadata={"format": "pt"})

    # round trip: reload from disk with from_pretrained and reproduce the expected outputs
    cls = type(model)
    re = cls.from_pretrained(d, attn_implementation="eager", dtype=torch.float32).eval()
    r_logits, _ = run_with_cache(re, single)
    rt = (r_logits - exp["single.logits"]).abs().max().item()
    print(f"  reload round-trip logits diff: {rt:.3e}")
    assert rt < 1e-6

    print(f"  saved tensors ({len(names)}): {names}")
    if dropped:
        print(f"  dropped non-parameter tensors: {dropped}")
    return model, names, exp


def compute_expected(model, single, batch, mask, pos):
    """The expected.safetensors dict (see the module docstring) for `model`, with checks."""
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
    return exp


LEGACY_NEOX_CONFIG_KEYS = None  # filled in make_bin_fixture for the report


def write_legacy_neox_config(c, d, **overrides):
    """config.json in the key style transformers 4.x wrote (and Pythia on the Hub has):
    rotary_pct / rotary_emb_base at top level, torch_dtype. Returns the dict written."""
    rope = c.rope_parameters
    assert rope["rope_theta"] == 10000 and rope["partial_rotary_factor"] == 0.25, rope
    assert c.use_parallel_residual and not c.tie_word_embeddings
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
    assert set(overrides) <= set(cfg) | {"transformers_version"}, overrides
    cfg.update(overrides)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
        f.write("\n")
    return cfg


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
    cfg = write_legacy_neox_config(parallel_model.config, d)
    LEGACY_NEOX_CONFIG_KEYS = sorted(cfg)
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
# pythia: a held-out GPT-NeoX shape saved the way real Pythia checkpoints on the Hub are
# ---------------------------------------------------------------------------------------

PYTHIA_SEED = 3  # the other fixtures use 0, 1, 2
PYTHIA_SHAPE = dict(
    hidden_size=64,
    num_attention_heads=4,  # head_dim 16, rotary_dim 4
    num_hidden_layers=2,
    intermediate_size=256,
    vocab_size=VOCAB,
    max_position_embeddings=64,
)
PYTHIA_LAYOUTS = {
    "safetensors": ["config.json", "model.safetensors", "tokenizer.json"],
    "sharded": [
        "config.json",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "model.safetensors.index.json",
        "tokenizer.json",
    ],
    "bin": ["config.json", "pytorch_model.bin", "tokenizer.json"],
}
CHAR_TOKENIZER = os.path.join(FIXTURES, "gpt_neox_parallel", "tokenizer.json")


def pythia_config() -> GPTNeoXConfig:
    return GPTNeoXConfig(
        **PYTHIA_SHAPE,
        layer_norm_eps=1e-5,
        hidden_act="gelu",
        rotary_emb_base=10000,
        rotary_pct=0.25,
        use_parallel_residual=True,
        tie_word_embeddings=False,
        attn_implementation="eager",
    )


def pythia_state_dict(model):
    """The state dict transformers 4.x (e.g. 4.24, which wrote Pythia) saved for `model`.

    Parameters in float16 under their checkpoint names (head: `embed_out.weight`), in 4.x's
    module order, plus the per-layer buffers 4.x registered as persistent:
      attention.bias               bool (1, 1, max_pos, max_pos), lower-triangular causal mask
      attention.masked_bias        float32 scalar (shape []), -1e9
      attention.rotary_emb.inv_freq float32 (rotary_dim/2,)
    """
    c = model.config
    max_pos = c.max_position_embeddings
    head_dim = c.hidden_size // c.num_attention_heads
    rotary_dim = int(head_dim * c.rope_parameters["partial_rotary_factor"])
    base = c.rope_parameters["rope_theta"]
    # exactly 4.24's RotaryEmbedding: 1.0 / (base ** (torch.arange(0, dim, 2).float() / dim))
    inv_freq = 1.0 / (base ** (torch.arange(0, rotary_dim, 2).float() / rotary_dim))
    assert torch.allclose(inv_freq, model.gpt_neox.rotary_emb.inv_freq), (inv_freq, model.gpt_neox.rotary_emb.inv_freq)
    causal = torch.tril(torch.ones((max_pos, max_pos), dtype=torch.bool)).view(1, 1, max_pos, max_pos)

    params = dict(model.named_parameters())
    assert "lm_head.weight" in params and "embed_out.weight" not in params

    def p16(name):
        t = params.pop(name)
        assert t.dtype == torch.float32
        return t.detach().half().contiguous().clone()

    sd = {"gpt_neox.embed_in.weight": p16("gpt_neox.embed_in.weight")}
    for i in range(c.num_hidden_layers):
        pre = f"gpt_neox.layers.{i}."
        for ln in ["input_layernorm", "post_attention_layernorm"]:
            for wb in ["weight", "bias"]:
                sd[f"{pre}{ln}.{wb}"] = p16(f"{pre}{ln}.{wb}")
        sd[f"{pre}attention.bias"] = causal.clone()
        sd[f"{pre}attention.masked_bias"] = torch.tensor(-1e9, dtype=torch.float32)
        sd[f"{pre}attention.rotary_emb.inv_freq"] = inv_freq.clone()
        for lin in ["attention.query_key_value", "attention.dense", "mlp.dense_h_to_4h", "mlp.dense_4h_to_h"]:
            for wb in ["weight", "bias"]:
                sd[f"{pre}{lin}.{wb}"] = p16(f"{pre}{lin}.{wb}")
    for wb in ["weight", "bias"]:
        sd[f"gpt_neox.final_layer_norm.{wb}"] = p16(f"gpt_neox.final_layer_norm.{wb}")
    sd["embed_out.weight"] = p16("lm_head.weight")
    assert not params, sorted(params)  # every parameter was saved exactly once
    return sd


def safetensors_header(path):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(n))


def check_pythia_tensors(sd, where, n_layers):
    """dtypes/shapes per name: {name: (dtype, shape)} from a safetensors header or a .bin."""
    for name, (dtype, shape) in sd.items():
        if name.endswith(".attention.bias"):
            assert dtype in ("BOOL", torch.bool) and shape[:2] == [1, 1], (where, name, dtype, shape)
        elif name.endswith(".attention.masked_bias"):
            assert dtype in ("F32", torch.float32) and shape == [], (where, name, dtype, shape)
        elif name.endswith(".rotary_emb.inv_freq"):
            assert dtype in ("F32", torch.float32) and len(shape) == 1, (where, name, dtype, shape)
        else:
            assert dtype in ("F16", torch.float16), (where, name, dtype, shape)
    for i in range(n_layers):
        for b in ["attention.bias", "attention.masked_bias", "attention.rotary_emb.inv_freq"]:
            assert f"gpt_neox.layers.{i}.{b}" in sd, (where, i, b)
    assert "embed_out.weight" in sd and "lm_head.weight" not in sd, where


def write_pythia_layouts(sd, config, root, tokenizer_bytes):
    """The same tensors as model.safetensors, as 2 shards + index, and as pytorch_model.bin."""
    total_size = sum(t.numel() * t.element_size() for t in sd.values())
    meta = {"format": "pt"}  # what 4.x's save_pretrained put in the safetensors header
    for layout in PYTHIA_LAYOUTS:
        d = os.path.join(root, layout)
        clean_dir(d)
        write_legacy_neox_config(
            config, d, eos_token_id=0, torch_dtype="float16", transformers_version="4.24.0"
        )
        with open(os.path.join(d, "tokenizer.json"), "wb") as f:
            f.write(tokenizer_bytes)
        if layout == "safetensors":
            save_file(sd, os.path.join(d, "model.safetensors"), metadata=meta)
        elif layout == "sharded":
            first = lambda k: k.startswith(("gpt_neox.embed_in.", "gpt_neox.layers.0."))
            shards = {
                "model-00001-of-00002.safetensors": {k: v for k, v in sd.items() if first(k)},
                "model-00002-of-00002.safetensors": {k: v for k, v in sd.items() if not first(k)},
            }
            weight_map = {}
            for fname, part in shards.items():
                save_file(part, os.path.join(d, fname), metadata=meta)
                weight_map.update({k: fname for k in part})
            assert sorted(weight_map) == sorted(sd)
            index = {"metadata": {"total_size": total_size}, "weight_map": dict(sorted(weight_map.items()))}
            with open(os.path.join(d, "model.safetensors.index.json"), "w") as f:
                json.dump(index, f, indent=2, sort_keys=True)
                f.write("\n")
            sizes = {f: sum(t.numel() * t.element_size() for t in p.values()) for f, p in shards.items()}
            print(f"  shard tensor bytes: {sizes}  total_size {total_size}")
        else:  # 4.x save_pretrained(safe_serialization=False): torch.save of the plain dict
            torch.save(sd, os.path.join(d, "pytorch_model.bin"))
        assert sorted(os.listdir(d)) == PYTHIA_LAYOUTS[layout], (layout, sorted(os.listdir(d)))
    return total_size


def make_pythia_fixture(single, batch, mask, pos, tokenizer_bytes):
    """tests/fixtures/pythia/: a held-out shape (d_model 64, 2 layers, d_mlp 256) stored like
    EleutherAI/pythia-*: float16 weights, 4.x config keys, per-layer attention.bias (bool),
    attention.masked_bias and attention.rotary_emb.inv_freq buffers, `embed_out.weight`;
    as model.safetensors, as 2 safetensors shards + index, and as pytorch_model.bin.
    expected.safetensors comes from the float32 model holding exactly the fp16 weights."""
    print("== pythia")
    torch.manual_seed(PYTHIA_SEED)
    model = GPTNeoXForCausalLM(pythia_config()).float()
    rerandomise(model)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.half().float())  # the float32 reference uses exactly the stored fp16 values
    model.eval()
    assert len(model.gpt_neox.layers) == PYTHIA_SHAPE["num_hidden_layers"]

    root = os.path.join(FIXTURES, "pythia")
    clean_dir(root)
    exp = compute_expected(model, single, batch, mask, pos)
    save_file(exp, os.path.join(root, "expected.safetensors"), metadata={"format": "pt"})

    sd = pythia_state_dict(model)
    total_size = write_pythia_layouts(sd, model.config, root, tokenizer_bytes)
    n_layers = model.config.num_hidden_layers

    # what is on disk: BOOL masks, F32 buffers, F16 weights, every name in every layout
    for layout, files in PYTHIA_LAYOUTS.items():
        d = os.path.join(root, layout)
        got = {}
        for fname in files:
            path = os.path.join(d, fname)
            if fname.endswith(".safetensors"):
                h = safetensors_header(path)
                assert h.pop("__metadata__") == {"format": "pt"}, fname
                assert any(v["dtype"] == "BOOL" for v in h.values()), f"{fname} has no BOOL tensor"
                got.update({k: (v["dtype"], v["shape"]) for k, v in h.items()})
                for k, t in load_file(path).items():
                    assert torch.equal(t, sd[k]), (layout, k)
            elif fname == "pytorch_model.bin":
                pt = torch.load(path, map_location="cpu", weights_only=True)
                assert list(pt) == list(sd), (list(pt), list(sd))
                assert any(t.dtype == torch.bool for t in pt.values()), ".bin has no bool tensor"
                for k, t in pt.items():
                    assert t.dtype == sd[k].dtype and torch.equal(t, sd[k]), (layout, k)
                got.update({k: (t.dtype, list(t.shape)) for k, t in pt.items()})
        assert sorted(got) == sorted(sd), (layout, sorted(set(got) ^ set(sd)))
        check_pythia_tensors(got, layout, n_layers)
    with open(os.path.join(root, "sharded", "model.safetensors.index.json")) as f:
        assert json.load(f)["metadata"]["total_size"] == total_size

    # transformers loads each layout (ignoring the 4.x buffers) and reproduces `expected`
    diffs = {}
    for layout in PYTHIA_LAYOUTS:
        d = os.path.join(root, layout)
        re = GPTNeoXForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="eager").eval()
        assert re.config.rope_parameters["partial_rotary_factor"] == 0.25
        assert re.config.num_hidden_layers == n_layers and re.config.hidden_size == 64
        for n, p in re.named_parameters():
            assert p.dtype == torch.float32, (n, p.dtype)
        diff = 0.0
        r_logits, r_cache = run_with_cache(re, single)
        diff = max(diff, (r_logits - exp["single.logits"]).abs().max().item())
        for k, v in r_cache.items():
            diff = max(diff, (v - exp[f"single.{k}"]).abs().max().item())
        r_logits, r_cache = run_with_cache(re, batch, attention_mask=mask, position_ids=pos)
        diff = max(diff, (r_logits - exp["batch.logits"]).abs().max().item())
        for k, v in r_cache.items():
            diff = max(diff, (v - exp[f"batch.{k}"]).abs().max().item())
        z_logits, _ = run_with_cache(re, single, zero_mlp_layer=1)
        diff = max(diff, (z_logits - exp["zero_mlp1.logits"]).abs().max().item())
        diffs[layout] = diff
        print(f"  from_pretrained({layout}/) vs expected (logits + every hook): max abs diff {diff:.3e}")
        assert diff < 1e-5, (layout, diff)

    size = sum(os.path.getsize(os.path.join(a, f)) for a, _, fs in os.walk(root) for f in fs)
    print(f"  pythia/ total {size} bytes")
    assert size < 1_000_000, size
    print(f"  saved tensors ({len(sd)}): {list(sd)}")
    return diffs


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
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--only",
        choices=["pythia"],
        help="regenerate only this fixture (pythia/), leaving every other file untouched",
    )
    args = ap.parse_args()
    print(
        f"torch {torch.__version__}  transformers {transformers.__version__}  "
        f"tokenizers {tokenizers.__version__}  python {sys.version.split()[0]}"
    )
    # read before anything is regenerated (make_model_fixture empties gpt_neox_parallel/)
    with open(CHAR_TOKENIZER, "rb") as f:
        char_tokenizer = f.read()
    torch.manual_seed(0)
    os.makedirs(FIXTURES, exist_ok=True)
    gen = torch.Generator().manual_seed(1234)
    single, batch, mask, pos = make_inputs(gen)
    print(f"single ids {single.tolist()}\nbatch ids {batch.tolist()}\nposition_ids {pos.tolist()}")

    if args.only != "pythia":
        results = {}
        for kind in ["gpt_neox_parallel", "gpt_neox_sequential", "llama_gqa"]:
            torch.manual_seed({"gpt_neox_parallel": 0, "gpt_neox_sequential": 1, "llama_gqa": 2}[kind])
            results[kind] = make_model_fixture(kind, single, batch, mask, pos)

        par_model, _, par_exp = results["gpt_neox_parallel"]
        make_bin_fixture(par_model, single, par_exp)
        make_tokenizer_fixture()
    make_pythia_fixture(single, batch, mask, pos, char_tokenizer)
    print("done")


if __name__ == "__main__":
    main()
