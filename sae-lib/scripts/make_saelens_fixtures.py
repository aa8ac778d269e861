#!/usr/bin/env python3
"""Generate tiny SAELens-format SAEs + reference outputs for sae-lib's Rust tests.

How to run (from the repository root, CPU only, a few seconds, no network):

    python3 -m venv /tmp/saelens-env
    /tmp/saelens-env/bin/pip install -r sae-lib/scripts/requirements-saelens.txt
    /tmp/saelens-env/bin/python sae-lib/scripts/make_saelens_fixtures.py

Versions used to produce the committed fixtures:
    sae-lens==6.54.12  torch==2.15.0  safetensors==0.8.0  (transformer-lens 3.9.0, Python 3.11.7)

Every SAE is written by SAELens' own save code, then re-loaded with
`SAE.load_from_disk` and the reference outputs are computed from the re-loaded SAE.

Output (all under sae-lib/tests/fixtures/saelens/):
  standard/      StandardSAE.save_model                    -> architecture "standard"
  topk/          TopKSAE.save_model (k=4)                  -> architecture "topk"
  topk_rescale/  TopKSAE.save_model (k=4, rescale_acts_by_decoder_norm=True, W_dec rows
                 NOT unit norm: exercises the rescale path; this is what a TopK training
                 checkpoint looks like before W_dec-norm folding)
  jumprelu/      JumpReLUSAE.save_model                    -> architecture "jumprelu"
  gated/         GatedSAE.save_model                       -> architecture "gated"
  batchtopk/     BatchTopKTrainingSAE.save_inference_model (the call the training runner
                 makes at the end of training) -> architecture "jumprelu" with a uniform
                 threshold = topk_threshold, W_dec rows folded to unit norm; plus
                 sparsity.safetensors written exactly as the training runner does
                 ({"sparsity": log10(feature_freq + 1e-10)}).
  legacy_standard/  a StandardSAE's weights under a cfg.json as SAELens 3.x wrote it (flat,
                 `hook_point`, no `architecture`, `apply_b_dec_to_input` or `prepend_bos`),
                 as most SAEs published on the Hub before SAELens 6 still are
  legacy_topk/   a TopKSAE's weights under a SAELens 5.x cfg.json (flat, architecture
                 "standard" with `activation_fn_str` "topk" and `activation_fn_kwargs.k`)
                 The reference outputs of both come from SAELens 6 loading the old cfg.json
                 (`SAE.load_from_disk`, which upgrades it).
Each folder: cfg.json, sae_weights.safetensors, expected.safetensors
  expected.safetensors: x [5,8] f32 input, feature_acts [5,16] = sae.encode(x),
                        sae_out [5,8] = sae.decode(feature_acts) (== sae(x); asserted).
"""

import json
import os
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

import sae_lens
from sae_lens import SAE
from sae_lens.saes import (
    BatchTopKTrainingSAE,
    BatchTopKTrainingSAEConfig,
    GatedSAE,
    GatedSAEConfig,
    JumpReLUSAE,
    JumpReLUSAEConfig,
    StandardSAE,
    StandardSAEConfig,
    TopKSAE,
    TopKSAEConfig,
)
from sae_lens.saes.sae import SAEMetadata
from sae_lens.training.sae_trainer import _log_feature_sparsity

D_IN = 8
D_SAE = 16
N = 5
K = 4

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "saelens"


def metadata() -> SAEMetadata:
    # Same keys the training runner sets (LanguageModelSAETrainingRunner._set_sae_metadata);
    # sae_lens_version / sae_lens_training_version are filled in by SAEMetadata itself.
    return SAEMetadata(
        model_name="tiny",
        model_class_name="HookedTransformer",
        hook_name="blocks.1.hook_mlp_out",
        hook_head_index=None,
        context_size=128,
        prepend_bos=True,
        dataset_path="tiny-dataset",
        seqpos_slice=[None],
        model_from_pretrained_kwargs={},
        exclude_special_tokens=False,
        sequence_separator_token="bos",
        disable_concat_sequences=False,
    )


def uniform(shape, lo, hi):
    return torch.rand(*shape) * (hi - lo) + lo


@torch.no_grad()
def fill_common(sae):
    sae.W_enc.copy_(torch.randn(D_IN, D_SAE) / D_IN**0.5)
    sae.W_dec.copy_(torch.randn(D_SAE, D_IN) * 0.3)
    sae.b_dec.copy_(torch.randn(D_IN) * 0.1)


@torch.no_grad()
def make_standard():
    sae = StandardSAE(StandardSAEConfig(d_in=D_IN, d_sae=D_SAE, metadata=metadata()))
    fill_common(sae)
    sae.b_enc.copy_(uniform([D_SAE], -0.3, 0.3))
    return sae


@torch.no_grad()
def make_topk(rescale: bool):
    sae = TopKSAE(
        TopKSAEConfig(
            d_in=D_IN,
            d_sae=D_SAE,
            k=K,
            rescale_acts_by_decoder_norm=rescale,
            metadata=metadata(),
        )
    )
    fill_common(sae)
    # Mostly negative biases so that some rows have < k positive pre-activations
    # (exercises "ReLU after topk": selected-but-negative values become 0).
    sae.b_enc.copy_(uniform([D_SAE], -1.2, 0.2))
    return sae


@torch.no_grad()
def make_jumprelu():
    sae = JumpReLUSAE(JumpReLUSAEConfig(d_in=D_IN, d_sae=D_SAE, metadata=metadata()))
    fill_common(sae)
    sae.b_enc.copy_(uniform([D_SAE], -0.2, 0.4))
    sae.threshold.copy_(uniform([D_SAE], 0.05, 0.3))
    return sae


@torch.no_grad()
def make_gated():
    sae = GatedSAE(GatedSAEConfig(d_in=D_IN, d_sae=D_SAE, metadata=metadata()))
    fill_common(sae)
    sae.b_gate.copy_(uniform([D_SAE], -0.3, 0.3))
    sae.r_mag.copy_(torch.randn(D_SAE) * 0.3)
    # b_mag partly negative so gate-open-but-magnitude-negative (-> 0) also occurs
    sae.b_mag.copy_(uniform([D_SAE], -0.3, 0.3))
    return sae


@torch.no_grad()
def make_batchtopk_training():
    cfg = BatchTopKTrainingSAEConfig(
        d_in=D_IN, d_sae=D_SAE, k=float(K), metadata=metadata()
    )
    sae = BatchTopKTrainingSAE(cfg)
    fill_common(sae)
    sae.b_enc.copy_(uniform([D_SAE], -0.2, 0.4))
    sae.topk_threshold = torch.tensor(0.15, dtype=torch.double)
    return sae


def write_expected(folder: Path, x: torch.Tensor):
    sae = SAE.load_from_disk(str(folder), device="cpu")
    with torch.no_grad():
        feature_acts = sae.encode(x)
        sae_out = sae.decode(feature_acts)
        fwd = sae(x)
    assert torch.equal(fwd, sae_out), "sae(x) != decode(encode(x))"
    l0 = (feature_acts != 0).sum(-1).tolist()
    save_file(
        {
            "x": x.contiguous(),
            "feature_acts": feature_acts.contiguous(),
            "sae_out": sae_out.contiguous(),
        },
        folder / "expected.safetensors",
    )
    print(f"{folder.name:13s} {type(sae).__name__:12s} l0 per row: {l0}")


def main():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)

    builders = [
        ("standard", make_standard),
        ("topk", lambda: make_topk(False)),
        ("topk_rescale", lambda: make_topk(True)),
        ("jumprelu", make_jumprelu),
        ("gated", make_gated),
    ]
    for name, build in builders:
        sae = build()
        folder = OUT / name
        sae.save_model(str(folder))
        x = torch.randn(N, D_IN)
        write_expected(folder, x)

    # BatchTopK: only a training architecture; the training runner saves it for
    # inference as a JumpReLU SAE (save_inference_model), plus sparsity.safetensors.
    sae = make_batchtopk_training()
    folder = OUT / "batchtopk"
    sae.save_inference_model(str(folder))
    feature_freq = torch.rand(D_SAE) * 0.5
    feature_freq[3] = 0.0  # a dead feature -> log10(1e-10) = -10
    save_file({"sparsity": _log_feature_sparsity(feature_freq)}, folder / "sparsity.safetensors")
    x = torch.randn(N, D_IN)
    write_expected(folder, x)

    # Pre-6.0 cfg.json files, written here by hand as the old versions wrote them (their
    # keys are the old SAEConfig's fields) around weights SAELens 6 saved.
    legacy_meta = {
        "model_name": "pythia-70m-deduped",
        "context_size": 128,
        "dataset_path": "NeelNanda/pile-10k",
        "d_in": D_IN,
        "d_sae": D_SAE,
        "dtype": "torch.float32",
        "device": "cpu",
    }
    legacy = [
        (
            "legacy_standard",
            make_standard,
            {
                **legacy_meta,
                "hook_point": "blocks.1.hook_mlp_out",
                "hook_point_layer": 1,
                "hook_point_head_index": None,
                "is_dataset_tokenized": False,
                "expansion_factor": D_SAE // D_IN,
                "l1_coefficient": 8e-05,
                "lr": 0.0004,
                "seed": 42,
            },
        ),
        (
            "legacy_topk",
            lambda: make_topk(False),
            {
                **legacy_meta,
                "architecture": "standard",
                "activation_fn_str": "topk",
                "activation_fn_kwargs": {"k": K},
                "apply_b_dec_to_input": True,
                "finetuning_scaling_factor": False,
                "hook_name": "blocks.1.hook_mlp_out",
                "hook_layer": 1,
                "hook_head_index": None,
                "prepend_bos": True,
                "dataset_trust_remote_code": True,
                "normalize_activations": "none",
                "sae_lens_training_version": "5.5.0",
                "neuronpedia_id": None,
                "model_from_pretrained_kwargs": {},
                "seqpos_slice": [None],
            },
        ),
    ]
    for name, build, cfg in legacy:
        sae = build()
        folder = OUT / name
        sae.save_model(str(folder))
        (folder / "cfg.json").write_text(json.dumps(cfg, indent=2))
        x = torch.randn(N, D_IN)
        write_expected(folder, x)

    for folder in sorted(OUT.iterdir()):
        cfg = json.loads((folder / "cfg.json").read_text())
        print(folder.name, "architecture =", cfg.get("architecture"), "files =", sorted(os.listdir(folder)))
    print("sae_lens", sae_lens.__version__, "torch", torch.__version__, file=sys.stderr)


if __name__ == "__main__":
    # TrainingSAEConfig.get_inference_sae_cfg_dict builds cfg.json from a *set* of field
    # names, so its key order depends on the string hash seed: pin it for byte-stable output.
    if os.environ.get("PYTHONHASHSEED") != "0":
        os.environ["PYTHONHASHSEED"] = "0"
        os.execv(sys.executable, [sys.executable, *sys.argv])
    main()
