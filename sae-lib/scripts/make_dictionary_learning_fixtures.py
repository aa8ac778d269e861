#!/usr/bin/env python3
"""Generate tiny SAEs saved as dictionary_learning saves them, + reference outputs, for
sae-lib's Rust tests.

How to run (from the repository root, CPU only, a few seconds, no network):

    python3 -m venv /tmp/dl-env
    /tmp/dl-env/bin/pip install dictionary-learning==0.1.0 torch==2.15.0 safetensors==0.8.0
    /tmp/dl-env/bin/python sae-lib/scripts/make_dictionary_learning_fixtures.py

Each SAE comes from one of dictionary_learning's own trainers (its constructor builds the
dictionary and its `config` is what `trainSAE` writes to config.json), with random weights
and biases put in so that every term matters. It is saved as `trainSAE` saves a finished run:
`ae.pt` (`torch.save` of the state dict) and `config.json` (`{"trainer": trainer.config,
"buffer": ActivationBuffer.config}`). The reference outputs come from the SAE re-loaded with
`dictionary_learning.utils.load_dictionary`, its default `encode` and `decode`.

Output (under sae-lib/tests/fixtures/dictionary_learning/), one folder per dictionary class:
  standard/     StandardTrainer            -> AutoEncoder (decoder rows not unit norm:
                                              load_dictionary folds their norms in)
  gated/        GatedSAETrainer            -> GatedAutoEncoder
  jumprelu/     JumpReluTrainer            -> JumpReluAutoEncoder (does not subtract b_dec
                                              before encoding)
  topk/         TopKTrainer (k=4)          -> AutoEncoderTopK (a threshold buffer is set;
                                              its default encode does not use it)
  batchtopk/    BatchTopKTrainer (k=4)     -> BatchTopKSAE (encodes by its threshold)
  matryoshka/   MatryoshkaBatchTopKTrainer -> MatryoshkaBatchTopKSAE (by its threshold)
Each folder: ae.pt, config.json, expected.safetensors
  expected.safetensors: x [5,8] f32 input, feature_acts [5,16] = encode(x),
                        sae_out [5,8] = decode(feature_acts) (== ae(x); asserted).
"""

import json
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from dictionary_learning.trainers import (
    BatchTopKTrainer,
    GatedSAETrainer,
    JumpReluTrainer,
    StandardTrainer,
    TopKTrainer,
)
from dictionary_learning.trainers.matryoshka_batch_top_k import MatryoshkaBatchTopKTrainer
from dictionary_learning.utils import load_dictionary

D_IN = 8
D_SAE = 16
N = 5
K = 4
LM = "EleutherAI/pythia-70m-deduped"
BUFFER = {
    "d_submodule": D_IN,
    "io": "out",
    "n_ctxs": 100,
    "ctx_len": 64,
    "refresh_batch_size": 8,
    "out_batch_size": 32,
    "device": "cpu",
}

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "dictionary_learning"


def common(submodule: str, layer: int) -> dict:
    return dict(
        steps=5000,
        activation_dim=D_IN,
        dict_size=D_SAE,
        layer=layer,
        lm_name=LM,
        device="cpu",
        submodule_name=submodule,
    )


@torch.no_grad()
def randomise(ae):
    for name, p in ae.named_parameters():
        if p.dim() == 2:
            p.copy_(torch.randn_like(p) * 0.4)
        elif name == "threshold":
            p.copy_(torch.rand_like(p) * 0.25 + 0.05)
        else:
            p.copy_(torch.rand_like(p) * 0.6 - 0.3)
    if hasattr(ae, "threshold") and ae.threshold.dim() == 0:
        ae.threshold.fill_(0.15)


def trainers():
    yield "standard", StandardTrainer(**common("resid_post_layer_1", 1))
    yield "gated", GatedSAETrainer(**common("mlp_out_layer_1", 1))
    yield "jumprelu", JumpReluTrainer(**common("resid_post_layer_1", 1))
    yield "topk", TopKTrainer(k=K, **common("mlp_out_layer_1", 1))
    yield "batchtopk", BatchTopKTrainer(k=K, **common("attn_out_layer_1", 1))
    yield "matryoshka", MatryoshkaBatchTopKTrainer(
        k=K, group_fractions=[0.25, 0.75], **common("resid_post_layer_0", 0)
    )


def main():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True)
    for name, trainer in trainers():
        folder = OUT / name
        folder.mkdir()
        randomise(trainer.ae)
        # What trainSAE writes at the start of a run and at its end.
        config = {"trainer": trainer.config, "buffer": BUFFER}
        (folder / "config.json").write_text(json.dumps(config, indent=4))
        final = {k: v.cpu() for k, v in trainer.ae.state_dict().items()}
        torch.save(final, folder / "ae.pt")

        ae, _ = load_dictionary(str(folder), "cpu")
        x = torch.randn(N, D_IN)
        with torch.no_grad():
            f = ae.encode(x)
            x_hat = ae.decode(f)
            assert torch.allclose(ae(x), x_hat), "ae(x) != decode(encode(x))"
        save_file(
            {"x": x, "feature_acts": f.contiguous(), "sae_out": x_hat.contiguous()},
            folder / "expected.safetensors",
        )
        l0 = (f != 0).sum(-1).tolist()
        print(f"{name:11s} {type(ae).__name__:22s} l0 per row: {l0} {sorted(final)}")
    print("torch", torch.__version__, file=sys.stderr)


if __name__ == "__main__":
    main()
