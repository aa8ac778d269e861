#!/usr/bin/env python3
"""A tiny random Gemma 2 for sae-lib's Rust tests, with transformers' outputs as the reference.

    /tmp/fixenv/bin/pip install -r sae-lib/scripts/requirements-fixtures.txt
    /tmp/fixenv/bin/python sae-lib/scripts/make_gemma2_fixtures.py

Writes tests/fixtures/gemma2/: config.json, model.safetensors, tokenizer.json (llama_gqa's
character tokenizer) and expected.safetensors with make_fixtures' keys (see its docstring).
The shape is small but every Gemma 2 part is live: d_model 32, 4 heads of 12 over 2
key/value heads (so, as in Gemma 2, heads · head_dim = 48 is not d_model), 3 layers,
query_pre_attn_scalar 16 (not head_dim), attention scores capped at 3 and
logits at 5 (both engage at these activations), and a sliding window of 4 on layers 0 and 2
(the test sequences are 7 and 9 long). config.json is in the layout of the Hub's Gemma 2
files (transformers 4.x: top-level rope_theta, no layer_types, hidden_act beside
hidden_activation).

Hooks are TransformerLens': hook_attn_out and hook_mlp_out are the outputs of the
post-attention and post-feedforward norms, what each sublayer adds to the residual stream.
expected.safetensors also holds `single.blocks.{L}.attn.hook_z` and `batch.blocks.{L}.attn.hook_z`
[.., seq, heads · head_dim]: the input of each layer's o_proj, the heads' outputs side by side.

Versions: torch 2.15.0, transformers 5.25.0 (Python 3.11.7, CPU).
"""

import json
import os
import shutil

import torch
from transformers import Gemma2Config, Gemma2ForCausalLM
from safetensors.torch import save_file

import make_fixtures as mf

OUT = os.path.join(mf.FIXTURES, "gemma2")


def gemma_parts(model):
    """The modules whose outputs are TransformerLens' hook_attn_out and hook_mlp_out."""
    layers = model.model.layers
    return layers, (lambda l: l.post_attention_layernorm), (lambda l: l.post_feedforward_layernorm)


def hook_z(model, **inputs):
    """Each layer's o_proj input (TransformerLens' attn.hook_z, heads side by side)."""
    zs, handles = {}, []
    for L, layer in enumerate(model.model.layers):
        def grab(mod, args, L=L):
            zs[L] = args[0].detach().clone().contiguous()
        handles.append(layer.self_attn.o_proj.register_forward_pre_hook(grab))
    try:
        model(**inputs, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return zs


def config() -> Gemma2Config:
    return Gemma2Config(
        vocab_size=mf.VOCAB,
        hidden_size=mf.D_MODEL,
        intermediate_size=64,
        num_hidden_layers=mf.N_LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=12,
        max_position_embeddings=64,
        rms_norm_eps=1e-6,
        hidden_activation="gelu_pytorch_tanh",
        query_pre_attn_scalar=16,
        attn_logit_softcapping=3.0,
        final_logit_softcapping=5.0,
        sliding_window=4,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        tie_word_embeddings=True,
        attn_implementation="eager",
    )


def hub_layout(path):
    cfg = json.load(open(path))
    cfg["rope_theta"] = cfg.pop("rope_parameters")["rope_theta"]
    layer_types = cfg.pop("layer_types")
    assert layer_types == ["sliding_attention", "full_attention", "sliding_attention"], layer_types
    cfg["hidden_act"] = cfg["hidden_activation"]
    json.dump(cfg, open(path, "w"), indent=2)


@torch.no_grad()
def main():
    mf.parts = gemma_parts
    torch.manual_seed(5)
    gen = torch.Generator().manual_seed(1234)
    single, batch, mask, pos = mf.make_inputs(gen)
    model = Gemma2ForCausalLM(config()).float()
    mf.rerandomise(model)
    for name, p in model.named_parameters():
        if "norm" in name:  # Gemma stores the norm's scale as an offset from 1
            p.copy_(0.1 * torch.randn_like(p))
    model.eval()
    mf.save_model(model, OUT)
    hub_layout(os.path.join(OUT, "config.json"))
    shutil.copy(os.path.join(mf.FIXTURES, "llama_gqa", "tokenizer.json"), OUT)

    exp = mf.compute_expected(model, single, batch, mask, pos)
    for tag, kwargs in [("single", dict(input_ids=single)),
                        ("batch", dict(input_ids=batch, attention_mask=mask, position_ids=pos))]:
        for L, z in hook_z(model, **kwargs).items():
            exp[f"{tag}.blocks.{L}.attn.hook_z"] = z
    save_file(exp, os.path.join(OUT, "expected.safetensors"), metadata={"format": "pt"})

    # transformers reads the Hub layout back to the same model, windows included
    re = Gemma2ForCausalLM.from_pretrained(OUT, attn_implementation="eager", dtype=torch.float32)
    assert re.config.layer_types == model.config.layer_types
    logits, _ = mf.run_with_cache(re.eval(), single)
    assert (logits - exp["single.logits"]).abs().max().item() < 1e-6

    # each Gemma 2 part changes the outputs, so the fixture tests it
    for what, change in [
        ("no window", dict(sliding_window=64)),
        ("no score cap", dict(attn_logit_softcapping=None)),
        ("no logit cap", dict(final_logit_softcapping=None)),
        ("head_dim scaling", dict(query_pre_attn_scalar=12)),
    ]:
        cfg = config()
        for k, v in change.items():
            setattr(cfg, k, v)
        other = Gemma2ForCausalLM(cfg).float().eval()
        other.load_state_dict(model.state_dict())
        logits, _ = mf.run_with_cache(other, batch, attention_mask=mask, position_ids=pos)
        diff = ((logits - exp["batch.logits"]) * mask[..., None]).abs().max().item()
        print(f"  {what}: batch logits differ by {diff:.3f}")
        assert diff > 0.01, what


if __name__ == "__main__":
    main()
