#!/usr/bin/env python3
"""Tiny random Mistral, Qwen2 and Qwen3 checkpoints for sae-lib's Rust tests, each with
transformers' outputs as the reference.

    /tmp/fixenv/bin/pip install -r sae-lib/scripts/requirements-fixtures.txt
    /tmp/fixenv/bin/python sae-lib/scripts/make_llama_family_fixtures.py

Each is the llama_gqa shape (make_fixtures.llama_config: d_model 32, 4 heads of 8 over 2
key/value heads, 3 layers) with what its family changes, in the layout of the Hub's files
(transformers 4.x: top-level rope_theta, no layer_types):
  mistral/  sliding_window 4: every layer sees the last 4 places (the test sequences are 7
            and 9 long)
  qwen2/    biases on q, k and v (not o); use_sliding_window false beside sliding_window 4
            and max_window_layers 1, as Qwen2.5's files carry them: no layer slides
  qwen3/    q_norm and k_norm, an RMSNorm over each head before the rotation
Each folder: config.json, model.safetensors, tokenizer.json (llama_gqa's) and
expected.safetensors with make_fixtures' keys (see its docstring).

Versions: torch 2.15.0, transformers 5.25.0 (Python 3.11.7, CPU).
"""

import json
import os
import shutil

import torch
from safetensors.torch import save_file
from transformers import (
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

import make_fixtures as mf

SHAPE = dict(
    **mf.COMMON,
    num_key_value_heads=2,
    head_dim=8,
    rms_norm_eps=1e-5,
    hidden_act="silu",
    tie_word_embeddings=True,
    attn_implementation="eager",
)
FAMILIES = {
    "mistral": (MistralForCausalLM, MistralConfig(**SHAPE, sliding_window=4), 6),
    "qwen2": (
        Qwen2ForCausalLM,
        Qwen2Config(**SHAPE, use_sliding_window=False, sliding_window=4, max_window_layers=1),
        7,
    ),
    "qwen3": (Qwen3ForCausalLM, Qwen3Config(**SHAPE, attention_bias=False), 8),
}


def hub_layout(path):
    cfg = json.load(open(path))
    rope = cfg.pop("rope_parameters")
    cfg["rope_theta"] = rope["rope_theta"]
    cfg.pop("layer_types", None)
    if cfg.get("use_sliding_window") is False:
        cfg["sliding_window"] = 4  # carried but unused, as in Qwen2.5's files
    json.dump(cfg, open(path, "w"), indent=2)


@torch.no_grad()
def make(name, cls, config, seed, inputs):
    print(f"== {name}")
    torch.manual_seed(seed)
    model = cls(config).float()
    mf.rerandomise(model)
    model.eval()
    out = os.path.join(mf.FIXTURES, name)
    mf.save_model(model, out)
    hub_layout(os.path.join(out, "config.json"))
    shutil.copy(os.path.join(mf.FIXTURES, "llama_gqa", "tokenizer.json"), out)
    exp = mf.compute_expected(model, *inputs)
    save_file(exp, os.path.join(out, "expected.safetensors"), metadata={"format": "pt"})
    re = cls.from_pretrained(out, attn_implementation="eager", dtype=torch.float32).eval()
    types = lambda m: getattr(m.config, "layer_types", None)  # noqa: E731
    assert types(re) == types(model), (types(re), types(model))
    logits, _ = mf.run_with_cache(re, inputs[0])
    assert (logits - exp["single.logits"]).abs().max().item() < 1e-6
    print(f"  layer types {types(model)}")


def main():
    gen = torch.Generator().manual_seed(1234)
    inputs = mf.make_inputs(gen)
    for name, (cls, config, seed) in FAMILIES.items():
        make(name, cls, config, seed, inputs)


if __name__ == "__main__":
    main()
