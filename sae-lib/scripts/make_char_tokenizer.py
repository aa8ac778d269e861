"""Writes tokenizer.json for the fixture models (vocab 96): one token per printable ASCII
character (ids 1..95, space included) and [UNK] = 0 for everything else, so any text --
WikiText included -- tokenizes into ids the tiny models accept.

    python scripts/make_char_tokenizer.py   # needs `tokenizers` (scripts/requirements-fixtures.txt)
"""
from pathlib import Path

from tokenizers import Tokenizer, models

vocab = {"[UNK]": 0}
for c in range(32, 127):
    vocab[chr(c)] = len(vocab)
assert len(vocab) == 96
tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="[UNK]"))
root = Path(__file__).resolve().parent.parent / "tests" / "fixtures"
for name in ["gpt_neox_parallel", "gpt_neox_sequential", "gpt_neox_bin", "llama_gqa"]:
    tok.save(str(root / name / "tokenizer.json"))
print(tok.encode("Hi there!").ids)
