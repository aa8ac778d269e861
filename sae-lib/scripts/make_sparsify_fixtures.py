#!/usr/bin/env python3
"""Generate a tiny sparsify run (EleutherAI's own SparseCoder and RunConfig code) and reference
outputs for sae-lib's Rust tests.

How to run (from the repository root, CPU only, a few seconds, no network):

    python3 -m venv /tmp/sparsify-env
    /tmp/sparsify-env/bin/pip install eai-sparsify==1.3.3 torch safetensors
    /tmp/sparsify-env/bin/python sae-lib/scripts/make_sparsify_fixtures.py

Versions used to produce the committed fixtures:
    eai-sparsify==1.3.3  torch==2.15.0  safetensors==0.8.0  (Python 3.11.7)

Output, under sae-lib/tests/fixtures/sparsify/run/ (the layout sparsify's trainer writes):
  config.json              RunConfig.save_json: model, dataset, ctx_len, hookpoints, the SAE
                           config
  layers.1.mlp/cfg.json    SparseCoder.save_to_disk (d_in 32, the fixture models' width;
  layers.1.mlp/sae.safetensors   64 latents, k 4)
  layers.1.mlp/expected.safetensors
      x [6,32] f32 input, feature_acts [6,64] (encode's top-k values scattered densely),
      sae_out [6,32] = the SparseCoder's forward on x, all from the re-loaded SAE.
"""

import os
import shutil
from pathlib import Path

# On a machine without a GPU, sparsify's own eager decoder instead of its Triton kernel.
os.environ["SPARSIFY_DISABLE_TRITON"] = "1"

import torch
from safetensors.torch import save_file

from sparsify import SparseCoder, SparseCoderConfig
from sparsify.__main__ import RunConfig

D_IN = 32
LATENTS = 64
K = 4
N = 6
HOOKPOINT = "layers.1.mlp"

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "sparsify" / "run"


@torch.no_grad()
def main():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    shutil.rmtree(OUT, ignore_errors=True)  # a fresh run folder, as sparsify's trainer makes
    OUT.mkdir(parents=True)
    cfg = SparseCoderConfig(k=K, num_latents=LATENTS)
    RunConfig(
        sae=cfg,
        model="EleutherAI/pythia-70m-deduped",
        dataset="NeelNanda/pile-10k",
        ctx_len=64,
        hookpoints=[HOOKPOINT],
    ).save_json(OUT / "config.json")

    sae = SparseCoder(D_IN, cfg)
    sae.b_dec.copy_(torch.randn(D_IN) * 0.1)
    # Mostly negative biases, so that some rows have fewer than k positive pre-activations.
    sae.encoder.bias.copy_(torch.rand(LATENTS) - 1.6)
    folder = OUT / HOOKPOINT
    sae.save_to_disk(folder)

    sae = SparseCoder.load_from_disk(folder)
    x = torch.randn(N, D_IN)
    top_acts, top_indices, _ = sae.encode(x)
    dense = torch.zeros(N, LATENTS).scatter(1, top_indices, top_acts)
    sae_out = sae(x).sae_out
    save_file(
        {"x": x, "feature_acts": dense, "sae_out": sae_out.contiguous()},
        folder / "expected.safetensors",
    )
    print(f"{HOOKPOINT}: l0 per row {(dense != 0).sum(-1).tolist()}")


if __name__ == "__main__":
    main()
