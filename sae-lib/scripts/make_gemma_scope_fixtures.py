#!/usr/bin/env python3
"""A tiny Gemma Scope SAE (params.npz, as Google publishes them) with SAELens' reading of it
as the reference, for sae-lib's Rust tests.

    /tmp/saelens-env/bin/pip install -r sae-lib/scripts/requirements-saelens.txt
    /tmp/saelens-env/bin/python sae-lib/scripts/make_gemma_scope_fixtures.py

Gemma Scope's folders hold only `params.npz` (W_enc [d_in, d_sae], W_dec [d_sae, d_in],
b_enc, b_dec, threshold; float32, np.savez), so what an SAE reads is told by the repository
and folder names. This writes two, each under its repository's own name:

  tests/fixtures/gemma_scope/gemma-scope-2b-pt-res/layer_1/width_64/average_l0_5/
    params.npz            d_in 32 (the gemma2 fixture's d_model), d_sae 64, random weights,
                          positive thresholds near the pre-activations' scale
  tests/fixtures/gemma_scope/gemma-scope-2b-pt-att/layer_1/width_64/average_l0_5/
    the same for an attention SAE, d_in 48 (the gemma2 fixture's heads · head_dim, its
    attn.hook_z width); each folder also holds:
    expected.safetensors  x [6,32], feature_acts [6,64] and sae_out [6,32] from SAELens'
                          JumpReLU SAE as SAELens' own Gemma 2 loader builds it
    expected.json         the loader's model_name, hook_name, context_size, prepend_bos,
                          dataset_path

SAELens reads the file through `hf_hub_download`, here from a throwaway Hub cache with
HF_HUB_OFFLINE=1; its sizes come from its table of Gemma 2 widths, overridden to the
fixture's (d_in 32, d_sae 64), which it allows. The rest is SAELens' `from_pretrained` path.

Versions: sae-lens 6.54.12, torch 2.15.0, numpy 2.x (Python 3.11.7, CPU).
"""

import json
import os
import tempfile
from pathlib import Path

import numpy as np

CACHE = tempfile.mkdtemp()
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_CACHE"] = CACHE

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from sae_lens import SAE  # noqa: E402
from sae_lens.loading.pretrained_sae_loaders import (  # noqa: E402
    gemma_2_sae_huggingface_loader,
    handle_config_defaulting,
)

FOLDER = "layer_1/width_64/average_l0_5"
D_SAE, N = 64, 6
HERE = Path(__file__).resolve().parent
COMMIT = "0" * 40


def make(repo, d_in, seed):
    out = HERE.parent / "tests" / "fixtures" / "gemma_scope" / repo.split("/")[1] / FOLDER
    rng = np.random.default_rng(seed)
    params = {
        "W_enc": (rng.standard_normal((d_in, D_SAE)) / np.sqrt(d_in)).astype(np.float32),
        "W_dec": (rng.standard_normal((D_SAE, d_in)) / np.sqrt(D_SAE)).astype(np.float32),
        "b_enc": (0.1 * rng.standard_normal(D_SAE)).astype(np.float32),
        "b_dec": (0.5 * rng.standard_normal(d_in)).astype(np.float32),
        "threshold": rng.uniform(0.2, 1.0, D_SAE).astype(np.float32),
    }
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / "params.npz", **params)

    # The Hub cache hf_hub_download reads offline: refs/main and the snapshot's file.
    repo_dir = Path(CACHE) / f"models--{repo.replace('/', '--')}"
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(COMMIT)
    snap = repo_dir / "snapshots" / COMMIT / FOLDER
    snap.mkdir(parents=True)
    (snap / "params.npz").write_bytes((out / "params.npz").read_bytes())

    cfg, state, _ = gemma_2_sae_huggingface_loader(
        repo_id=repo,
        folder_name=FOLDER,
        device="cpu",
        cfg_overrides={"d_in": d_in, "d_sae": D_SAE},
    )
    cfg = handle_config_defaulting(cfg)
    sae_cfg = SAE.get_sae_config_class_for_architecture(cfg["architecture"]).from_dict(cfg)
    sae = SAE.get_sae_class_for_architecture(sae_cfg.architecture())(sae_cfg)
    sae.process_state_dict_for_loading(state)
    sae.load_state_dict(state)
    sae.eval()

    torch.manual_seed(0)
    x = 2.0 * torch.randn(N, d_in)
    # A hook_z SAE takes (..., heads, head_dim), as TransformerLens' hook gives it, and
    # flattens it itself: the gemma2 fixture's 4 heads of 12.
    heads = (N, 4, d_in // 4) if sae.cfg.metadata.hook_name.endswith("hook_z") else (N, d_in)
    with torch.no_grad():
        acts = sae.encode(x.reshape(heads))
        recon = sae.decode(acts).reshape(N, d_in)
    live = (acts > 0).sum(-1).float()
    meta = sae.cfg.metadata
    print(f"{sae_cfg.architecture()} {meta.hook_name} on {meta.model_name}: L0 per row {live.tolist()}")
    assert 0 < live.mean() < D_SAE / 2
    save_file(
        {"x": x.contiguous(), "feature_acts": acts.contiguous(), "sae_out": recon.contiguous()},
        out / "expected.safetensors",
    )
    keys = ["model_name", "hook_name", "context_size", "prepend_bos", "dataset_path"]
    (out / "expected.json").write_text(json.dumps({k: getattr(meta, k) for k in keys}, indent=1) + "\n")


def main():
    make("google/gemma-scope-2b-pt-res", 32, 7)
    make("google/gemma-scope-2b-pt-att", 48, 8)


if __name__ == "__main__":
    main()
