#!/usr/bin/env python3
"""Check an SAE folder written by sae-lib against SAELens itself.

Install (CPU is enough; PyPI only; no Hugging Face access needed):

    python3 -m venv /tmp/saelens-env
    /tmp/saelens-env/bin/pip install -r sae-lib/scripts/requirements-saelens.txt
    # i.e. pip install sae-lens==6.54.12 torch==2.15.0 (pulls transformer-lens 3.9.0)

Usage:

    /tmp/saelens-env/bin/python sae-lib/scripts/check_saelens.py DIR INPUTS.safetensors

DIR      a folder with cfg.json + sae_weights.safetensors, loaded unchanged with
         sae_lens.SAE.load_from_disk(DIR, device="cpu").
INPUTS   a safetensors file (computed by our Rust code) with
           x            [..., d_in]   input activations
           feature_acts [..., d_sae]  our encode(x)
           sae_out      [..., d_in]   our decode(feature_acts)
         feature_acts / sae_out are optional; whatever is present is compared.

Prints the max abs differences and exits 1 if any exceeds --tol (default 1e-4),
2 if the folder cannot be loaded by SAELens.
"""

import argparse
import sys

import torch
from safetensors.torch import load_file


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("inputs")
    ap.add_argument("--tol", type=float, default=1e-4)
    args = ap.parse_args()

    torch.set_num_threads(1)
    import sae_lens
    from sae_lens import SAE

    try:
        sae = SAE.load_from_disk(args.dir, device="cpu")
    except Exception as e:  # noqa: BLE001
        print(f"FAIL: SAE.load_from_disk({args.dir!r}) raised {type(e).__name__}: {e}")
        return 2
    sae.eval()
    print(
        f"sae_lens {sae_lens.__version__}: loaded {type(sae).__name__} "
        f"(architecture={sae.cfg.architecture()}, d_in={sae.cfg.d_in}, d_sae={sae.cfg.d_sae}, "
        f"dtype={sae.cfg.dtype}, hook_name={sae.cfg.metadata.hook_name})"
    )

    t = load_file(args.inputs)
    if "x" not in t:
        print(f"FAIL: {args.inputs} has no tensor 'x' (keys: {sorted(t)})")
        return 2
    x = t["x"]
    dtype = sae.W_dec.dtype

    with torch.no_grad():
        ref_acts = sae.encode(x.to(dtype))
        ref_out = sae.decode(ref_acts)

    ok = True
    checks = []
    if "feature_acts" in t:
        ours = t["feature_acts"].to(torch.float64)
        checks.append(("feature_acts  vs sae.encode(x)", ours, ref_acts.to(torch.float64)))
        with torch.no_grad():
            dec_ours = sae.decode(t["feature_acts"].to(dtype))
        if "sae_out" in t:
            checks.append(
                ("sae_out       vs sae.decode(our feature_acts)", t["sae_out"].to(torch.float64), dec_ours.to(torch.float64))
            )
    if "sae_out" in t:
        checks.append(("sae_out       vs sae.decode(sae.encode(x))", t["sae_out"].to(torch.float64), ref_out.to(torch.float64)))
    if not checks:
        print("FAIL: INPUTS has neither 'feature_acts' nor 'sae_out'")
        return 2

    for name, ours, ref in checks:
        if ours.shape != ref.shape:
            print(f"{name}: SHAPE MISMATCH ours {list(ours.shape)} vs saelens {list(ref.shape)}")
            ok = False
            continue
        diff = (ours - ref).abs().max().item() if ours.numel() else 0.0
        flag = "ok" if diff <= args.tol else "FAIL"
        print(f"{name}: max abs diff {diff:.3e}  [{flag}]")
        ok = ok and diff <= args.tol
    if "feature_acts" in t:
        same_support = torch.equal(t["feature_acts"] != 0, ref_acts != 0)
        print(f"active-feature pattern identical: {same_support}")

    print("PASS" if ok else f"FAIL (tol {args.tol:g})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
