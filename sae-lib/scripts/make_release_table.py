#!/usr/bin/env python3
"""Write sae-lib/src/sae/releases.tsv: SAELens' pretrained SAE releases that sae-lib can read.

SAELens names its published SAEs by release and id (`SAE.from_pretrained(release, sae_id)`)
and maps each pair to a Hugging Face repository folder in `pretrained_saes.yaml`, which ships
inside the `sae_lens` package. This script reads that mapping through SAELens' own
`get_pretrained_saes_directory()` and keeps the releases `sae --sae RELEASE/SAE_ID` can load:
  - the SAEs are in a format sae-lib reads (SAELens' own, no conversion function,
    dictionary_learning's `ae.pt`, conversion `dictionary_learning_1`, or Gemma Scope's
    `params.npz`, conversion `gemma_2`);
  - the model is one sae-lib runs (GPT-NeoX/Pythia, Llama, Mistral, Qwen2.5, Gemma 2).
A release whose every id is its own folder (Gemma Scope's, by layer, width and L0) is one line
with the id `*`, and one of its ids as the folder, for messages.

How to run (from the repository root, no network needed once sae-lens is installed):

    python3 -m venv /tmp/saelens-env
    /tmp/saelens-env/bin/pip install -r sae-lib/scripts/requirements-saelens.txt
    /tmp/saelens-env/bin/python sae-lib/scripts/make_release_table.py
"""

from pathlib import Path

import sae_lens
from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

READABLE = {None: "saelens", "dictionary_learning_1": "dictionary_learning", "gemma_2": "gemma_scope"}
MODELS = ("pythia", "llama", "gemma-2-", "mistral", "qwen2.5")
OUT = Path(__file__).resolve().parents[1] / "src" / "sae" / "releases.tsv"


def main() -> None:
    rows = []
    for release, info in sorted(get_pretrained_saes_directory().items()):
        if info.conversion_func not in READABLE:
            continue
        if not any(m in info.model.lower() for m in MODELS):
            continue
        saes = sorted(info.saes_map.items())
        if len(saes) > 1 and all(sae_id == path for sae_id, path in saes):
            rows.append((release, info.repo_id, "*", saes[len(saes) // 2][1]))
            continue
        for sae_id, path in saes:
            rows.append((release, info.repo_id, sae_id, path))
    header = (
        f"# SAELens' pretrained releases that sae-lib reads, from sae_lens {sae_lens.__version__}'s\n"
        "# pretrained_saes.yaml; written by sae-lib/scripts/make_release_table.py.\n"
        "# release\trepository\tSAE id (* for: the id is the folder)\tfolder (with *: an example)\n"
    )
    OUT.write_text(header + "".join("\t".join(r) + "\n" for r in rows))
    releases = sorted({r[0] for r in rows})
    print(f"{OUT}: {len(rows)} SAEs in {len(releases)} releases: {', '.join(releases)}")


if __name__ == "__main__":
    main()
