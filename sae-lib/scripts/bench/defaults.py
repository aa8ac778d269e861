#!/usr/bin/env python3
"""The sweep behind each architecture's default learning rate and sparsity coefficient.

Trains every (architecture, lr, coefficient) of a small grid with the real `sae train` on the
activation stores a user meets first, scores each SAE on held-out activations with `sae score`,
and prints one table per store: held-out FVU, L0 and dead fraction. A default must give a
working SAE (0 < L0 well below d_sae, FVU clearly below 1) on every store.

Stores (made once under .cache/defaults/, from WikiText-2 valid for training and test for
held-out rows, both in ../shared/data):
  random96-all    a random GPT-NeoX with d_model 96, every token (~1,800 rows): small, isotropic
  pythia-middle   a random pythia-70m-shaped model, the tutorial's middle token per document
  smollm2-all     SmolLM2-135M layer 15 MLP output, every token (a real pretrained model; needs
                  `bash sae-lib/scripts/fetch_smollm2.sh`)

    python3 sae-lib/scripts/bench/defaults.py [--archs relu,gated,jumprelu] [--steps 2000]
        [--d-sae 4096] [--lrs 5e-5,2e-4,1e-3] [--coefficients 1,2,5] [--stores a,b]

Only the Python standard library is needed.
"""
import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", ".."))
SAE = os.path.join(ROOT, "target", "release", "sae")
MAKE_MODEL = os.path.join(ROOT, "target", "release", "examples", "make_random_model")
DATA = os.environ.get("SHARED_DATA", os.path.join(ROOT, "..", "shared", "data"))
CACHE = os.path.join(ROOT, ".cache", "defaults")
TOKENIZER = os.path.join(DATA, "gpt-neox-20b-tokenizer.json")
SMOLLM2 = os.path.join(ROOT, ".cache", "models", "SmolLM2-135M-Instruct.Q4_1.gguf")


def run(args, **kw):
    p = subprocess.run(args, capture_output=True, text=True, **kw)
    if p.returncode != 0:
        sys.exit(f"failed: {' '.join(args)}\n{p.stderr}")
    return p


def model_for(name):
    if name == "smollm2-all":
        if not os.path.exists(SMOLLM2):
            return None
        return SMOLLM2, []
    d = os.path.join(CACHE, f"model-{name}")
    if not os.path.exists(os.path.join(d, "config.json")):
        shape = ["96", "2"] if name == "random96-all" else []
        run([MAKE_MODEL, d, "0", *shape])
    return d, ["--tokenizer", TOKENIZER]


STORES = {
    # name: (hook, mode, train docs, held-out docs)
    "random96-all": ("blocks.1.hook_mlp_out", "all", 24, 8),
    "pythia-middle": ("blocks.5.hook_mlp_out", "middle", 3000, 800),
    "smollm2-all": ("blocks.15.hook_mlp_out", "all", 600, 120),
}


def store(name, split):
    out = os.path.join(CACHE, f"{name}-{split}")
    if os.path.exists(os.path.join(out, "meta.json")):
        return out
    got = model_for(name)
    if got is None:
        return None
    model, extra = got
    hook, mode, train_docs, test_docs = STORES[name]
    text = os.path.join(DATA, "wikitext-2", "valid.txt" if split == "train" else "test.txt")
    docs = train_docs if split == "train" else test_docs
    run([SAE, "collect", "--model", model, *extra, "--dataset", text, "--hook", hook,
         "--mode", mode, "--max-len", "128", "--max-docs", str(docs), "--device", "cpu",
         "--out", out])
    return out


def train_and_score(train, test, arch, lr, coefficient, steps, d_sae):
    out = os.path.join(CACHE, "runs", f"{os.path.basename(train)}-{arch}-{lr}-{coefficient}-{steps}-{d_sae}")
    args = [SAE, "train", "--acts", train, "--out", out, "--overwrite", "--arch", arch,
            "--steps", str(steps), "--d-sae", str(d_sae), "--device", "cpu"]
    if lr is not None:
        args += ["--lr", str(lr)]
    if coefficient is not None:
        args += ["--l1", str(coefficient)]
    start = time.time()
    run(args)
    secs = time.time() - start
    score = json.loads(run([SAE, "score", "--sae", out, "--acts", test, "--device", "cpu"]).stdout)
    return score, secs


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--archs", default="relu,gated,jumprelu")
    ap.add_argument("--stores", default=",".join(STORES))
    ap.add_argument("--lrs", default="default", help="comma list, or 'default'")
    ap.add_argument("--coefficients", default="default", help="comma list, or 'default'")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--d-sae", type=int, default=4096)
    a = ap.parse_args()
    os.makedirs(CACHE, exist_ok=True)
    parse = lambda s: [None] if s == "default" else [float(v) for v in s.split(",")]
    print(f"| store | rows | arch | lr | λ | held-out FVU | L0 | dead | train s |")
    print(f"|---|---|---|---|---|---|---|---|---|")
    for name in a.stores.split(","):
        train, test = store(name, "train"), store(name, "test")
        if train is None:
            print(f"(skipping {name}: its model is missing)", file=sys.stderr)
            continue
        rows = json.load(open(os.path.join(train, "meta.json")))["rows"]
        for arch in a.archs.split(","):
            for lr in parse(a.lrs):
                for c in parse(a.coefficients) if arch in ("relu", "gated", "jumprelu") else [None]:
                    s, secs = train_and_score(train, test, arch, lr, c, a.steps, a.d_sae)
                    print(f"| {name} | {rows} | {arch} | {lr or 'default'} | {c or 'default'} | "
                          f"{s['fvu']:.3f} | {s['l0']:.1f} | {100 * s['dead_fraction']:.1f}% | {secs:.0f} |",
                          flush=True)


if __name__ == "__main__":
    main()
