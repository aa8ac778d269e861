#!/usr/bin/env python3
"""A tiny Llama with Llama 3's rotary scaling, for sae-lib's Rust tests, checked by transformers.

    /tmp/fixenv/bin/pip install -r sae-lib/scripts/requirements-fixtures.txt gguf==0.19.0
    /tmp/fixenv/bin/python sae-lib/scripts/make_rope_scaling_fixtures.py

Llama 3.1 and 3.2 scale their rotary frequencies (`rope_type: llama3`): the low frequencies
are divided by `factor`, the high ones kept, and those between blended. Writes
tests/fixtures/llama_rope_scaling/:
  config.json        the llama_gqa shape (head_dim 8, rope_theta 10000) with
                     rope_scaling {llama3, factor 8, low_freq_factor 1, high_freq_factor 4,
                     original_max_position_embeddings 128}, in the layout of the Hub's
                     Llama 3.2 files (transformers 4.x: `rope_scaling`, top-level
                     `rope_theta`); 128 puts a frequency in each of the three bands.
  model.safetensors  random weights (make_fixtures.rerandomise), seed 4.
  tokenizer.json     llama_gqa's.
  expected.safetensors  make_fixtures' hooks and logits (see its docstring), plus
                     `llama3.inv_freq` (the model's own rotary buffer) and `linear.inv_freq`
                     (transformers' `linear` scaling, factor 4, on the same shape).
  model.gguf         the same weights as llama.cpp writes a Llama 3 file: F32 tensors and
                     `rope_freqs.weight`, the divisors of the unscaled frequencies (taken
                     from transformers' buffer, so they mean what llama.cpp's do).

Versions: torch 2.15.0, transformers 5.25.0, gguf 0.19.0 (Python 3.11.7, CPU).
"""

import json
import os
import shutil

import torch
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

import make_fixtures as mf
import make_gguf_fixtures as mgf

OUT = os.path.join(mf.FIXTURES, "llama_rope_scaling")
LLAMA3 = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 128,
}


def config(rope_scaling) -> LlamaConfig:
    cfg = mf.llama_config()
    cfg.max_position_embeddings = 1024  # above the original context, as in Llama 3.2
    cfg.rope_parameters = {"rope_theta": 10000.0, **rope_scaling}
    return cfg


def hub_layout(path):
    """Rewrites config.json as the Hub's Llama 3 files have it (transformers 4.x)."""
    cfg = json.load(open(path))
    rope = cfg.pop("rope_parameters")
    cfg["rope_theta"] = rope.pop("rope_theta")
    cfg["rope_scaling"] = rope
    json.dump(cfg, open(path, "w"), indent=2)


@torch.no_grad()
def main():
    torch.manual_seed(4)
    gen = torch.Generator().manual_seed(1234)
    single, batch, mask, pos = mf.make_inputs(gen)
    model = LlamaForCausalLM(config(LLAMA3)).float()
    mf.rerandomise(model)
    model.eval()
    mf.save_model(model, OUT)
    hub_layout(os.path.join(OUT, "config.json"))
    shutil.copy(os.path.join(mf.FIXTURES, "llama_gqa", "tokenizer.json"), OUT)

    exp = mf.compute_expected(model, single, batch, mask, pos)
    scaled = model.model.rotary_emb.inv_freq.float()
    head_dim = model.config.head_dim
    plain = 1.0 / (10000.0 ** (torch.arange(0, head_dim, 2, dtype=torch.float) / head_dim))
    linear, _ = ROPE_INIT_FUNCTIONS["linear"](config({"rope_type": "linear", "factor": 4.0}), "cpu")
    exp["llama3.inv_freq"] = scaled.contiguous()
    exp["linear.inv_freq"] = linear.float().contiguous()
    ratios = plain / scaled
    r = ratios
    bands = [(r < 1 + 1e-6).sum().item(), ((r > 1 + 1e-6) & (r < 8 - 1e-4)).sum().item(),
             (r > 8 - 1e-4).sum().item()]
    print(f"divisors {ratios.tolist()} (kept, blended, divided: {bands})")
    assert all(n > 0 for n in bands), "each band needs a frequency"
    save_file(exp, os.path.join(OUT, "expected.safetensors"), metadata={"format": "pt"})

    # transformers reads the Hub layout back to the same model
    re = LlamaForCausalLM.from_pretrained(OUT, attn_implementation="eager", dtype=torch.float32)
    assert torch.equal(re.model.rotary_emb.inv_freq, model.model.rotary_emb.inv_freq)
    logits, _ = mf.run_with_cache(re.eval(), single)
    assert (logits - exp["single.logits"]).abs().max().item() < 1e-6

    # without the scaling the outputs differ: the fixture tests something
    plain_model = LlamaForCausalLM(config({"rope_type": "default"})).float().eval()
    plain_model.load_state_dict(model.state_dict())
    logits, _ = mf.run_with_cache(plain_model, single)
    diff = (logits - exp["single.logits"]).abs().max().item()
    print(f"logits without the scaling differ by {diff:.3f}")
    assert diff > 0.05

    mgf.write_tiny_gguf(src=OUT, out=OUT, quantized=False, rope_freqs=ratios.numpy())


if __name__ == "__main__":
    main()
