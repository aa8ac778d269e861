#!/usr/bin/env python3
"""References from llama.cpp itself, an implementation independent of sae-lib's.

1. Token ids for texts llama.cpp's own test set leaves out.

llama.cpp's test files (scripts/fetch_llama_cpp_vocabs.sh) hold 46 texts per vocabulary,
mostly English, code and spacing. Several pre-tokenizer splits agree with simpler ones on all
of them: DeepSeek Coder's with "digits apart", Qwen 3.5's with Qwen2's. The texts here reach
what tells them apart: combining marks, Greek, Cyrillic, Armenian, Georgian and Cherokee
letters (DeepSeek LLM lists their ranges), CJK, kana and Hangul runs, full-width punctuation,
ASCII symbols against punctuation, letter-like symbols (µ, the Kelvin and Ohm signs),
trailing blanks, digit runs. Each vocabulary's ids come from llama.cpp's own tokenizer
(llama-cpp-python, vocabulary only, no special-token parsing, no BOS), an implementation
independent of sae-lib's, and are written to tests/fixtures/llama_cpp_tokenizer_ids.json.

2. Token ids for splits llama.cpp's test set has no vocabulary for (Mistral's `tekken`,
ByteDance's `seed-coder`): the Llama 3 vocabulary relabelled with each pre-tokenizer name, over llama.cpp's Llama 3 texts and
the texts above. llama.cpp approximates Tekken's regex (its letter classes leave out combining
marks), so the Rust test names the text where that shows.

3. A check that llama.cpp reads tests/fixtures/pythia_gguf/model.gguf (written by
make_gguf_fixtures.py as llama.cpp's converter writes GPT-NeoX) as the model transformers ran
for pythia/expected.safetensors: its logits on the same tokens agree within what llama.cpp's
tanh-approximated GELU and F16 matrix products allow. Nothing is written for this one; the
Rust test compares sae-lib's reading of the file with expected.safetensors directly.

    python3 -m venv /tmp/lcpp && /tmp/lcpp/bin/pip install llama-cpp-python==0.3.36 \
        safetensors==0.8.0
    bash sae-lib/scripts/fetch_llama_cpp_vocabs.sh
    /tmp/lcpp/bin/python sae-lib/scripts/make_llama_cpp_references.py [VOCAB_DIR]

llama-cpp-python 0.3.36 builds llama.cpp from its source package (CPU, about 15 minutes on
two cores); it vendors the same llama.cpp as the test files.
"""

import json
import os
import sys

import tempfile

import gguf
import numpy as np
from llama_cpp import Llama
from safetensors.numpy import load_file

HERE = os.path.dirname(os.path.abspath(__file__))
VOCAB_DIR = (sys.argv[1] if len(sys.argv) > 1
             else os.path.join(HERE, "../../.cache/models/llama-cpp-vocab"))
FIXTURES = os.path.join(HERE, "../tests/fixtures")
OUT = os.path.join(FIXTURES, "llama_cpp_tokenizer_ids.json")

NAMES = ["llama-spm", "phi-3", "llama-bpe", "qwen2", "qwen35", "gpt-2", "mpt", "starcoder",
         "refact", "command-r", "falcon", "deepseek-llm", "deepseek-coder"]

TEXTS = [
    # Combining marks: decomposed accents, Devanagari vowel signs, Thai, Arabic harakat.
    "cafe\u0301 nai\u0308ve re\u0301sume\u0301",
    "नमस्ते दुनिया, आप कैसे हैं?",
    "สวัสดีครับ ภาษาไทย",
    "مَرْحَبًا بِالْعَالَمِ",
    # Scripts DeepSeek LLM names, and one it does not (Hebrew).
    "Καλημέρα κόσμε, ἄνθρωπος",
    "Привет, мир! Ёжик в тумане.",
    "Բարեւ աշխարհ",
    "გამარჯობა მსოფლიო",
    "ᏣᎳᎩ ᎦᏬᏂᎯᏍᏗ",
    "שלום עולם",
    # CJK, kana, Hangul, full-width forms.
    "日本語のテキストと漢字、ひらがな。",
    "中文文本，包括标点符号！还有“引号”。",
    "안녕하세요 세계 한국어",
    "ＡＢＣ ａｂｃ！？（全角）１２３",
    # Symbols against punctuation, code.
    "a+b=c; x<y>z ^ ~w | `q` $5 @home #tag %20",
    "fn main() { let v: Vec<u8> = vec![1, 2, 3]; println!(\"{v:?}\"); }",
    "if (x >= 10 && y != -3) { return a->b[i++] << 2; }",
    "def f(x):\n\treturn x ** 2  # square\r\n",
    # Letter-like symbols and ligatures.
    "µs, 5 \u212a, 3 \u2126, \ufb01ne \ufb02ow, \u2102 \u211d",
    "𝐁𝐨𝐥𝐝 𝑖𝑡𝑎𝑙𝑖𝑐 text",
    # Digits: runs, mixed with letters, non-ASCII digits.
    "1234567890 12,345.67 v2.0.1 abc123def 0x1F",
    "٣٤٥ ۱۲۳ १२३ ①②③ ½",
    # Blanks: trailing, runs, tabs, lines.
    "trailing blanks   ",
    "  two leading and\n\n\nthree breaks \t\t tabs",
    "line\r\nbreaks\rand\u2028separators\u00a0nbsp",
    # Contractions, case and emoji.
    "I'M SURE they'LL say it's 'fine', won't they?",
    "emoji 🙂👍🏽 and ZWJ 👩‍💻 flags 🇫🇷",
    "Ünïcödé Çàsè ẞtraße ǅ ǈ",
]


RELABELLED = {"tekken": "llama-bpe", "seed-coder": "llama-bpe"}


def relabelled(src, pre, out):
    """`src`'s vocabulary with `pre` as its pre-tokenizer name, and the few hyperparameters
    llama.cpp asks for even when it reads only the vocabulary."""
    r = gguf.GGUFReader(src)
    field = lambda k: r.fields[k].contents()
    w = gguf.GGUFWriter(out, "llama")
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(field("tokenizer.ggml.tokens"))
    w.add_token_types(field("tokenizer.ggml.token_type"))
    w.add_token_merges(field("tokenizer.ggml.merges"))
    w.add_bos_token_id(field("tokenizer.ggml.bos_token_id"))
    w.add_block_count(1)
    w.add_context_length(64)
    w.add_embedding_length(8)
    w.add_feed_forward_length(8)
    w.add_head_count(1)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_texts(name):
    """llama.cpp's own test texts for the vocabulary `name` (its .inp file)."""
    with open(os.path.join(VOCAB_DIR, f"ggml-vocab-{name}.gguf.inp"), encoding="utf-8") as f:
        return f.read().split("\n__ggml_vocab_test__\n")[:-1]


def relabelled_ids():
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for pre, vocab in RELABELLED.items():
            path = os.path.join(tmp, f"{pre}.gguf")
            relabelled(os.path.join(VOCAB_DIR, f"ggml-vocab-{vocab}.gguf"), pre, path)
            llm = Llama(model_path=path, vocab_only=True, verbose=False)
            texts = test_texts(vocab) + TEXTS
            out[pre] = {"vocab": vocab, "ids": [
                llm.tokenize(t.encode("utf-8"), add_bos=False, special=False) for t in texts]}
            print(pre, "on", vocab, sum(map(len, out[pre]["ids"])), "tokens")
    return out


def check_pythia_gguf():
    exp = load_file(os.path.join(FIXTURES, "pythia/expected.safetensors"))
    ids = exp["single.input_ids"][0].tolist()
    want = exp["single.logits"][0]
    llm = Llama(model_path=os.path.join(FIXTURES, "pythia_gguf/model.gguf"), n_ctx=64,
                logits_all=True, verbose=False)
    llm.eval(ids)
    got = np.asarray(llm.scores[:len(ids)])
    diff = np.abs(got - want).max()
    scale = np.abs(want).max()
    print(f"pythia_gguf: llama.cpp's logits vs transformers': max abs diff {diff:.2e} "
          f"(logits up to {scale:.2f})")
    assert diff < 1e-2 * scale, "llama.cpp reads the Pythia GGUF otherwise than transformers"


def main():
    out = {"texts": TEXTS, "ids": {}}
    for name in NAMES:
        path = os.path.join(VOCAB_DIR, f"ggml-vocab-{name}.gguf")
        llm = Llama(model_path=path, vocab_only=True, verbose=False)
        out["ids"][name] = [llm.tokenize(t.encode("utf-8"), add_bos=False, special=False)
                            for t in TEXTS]
        print(name, sum(map(len, out["ids"][name])), "tokens")
    out["relabelled"] = relabelled_ids()
    with open(OUT, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False)
        f.write("\n")
    print("wrote", OUT)
    check_pythia_gguf()


if __name__ == "__main__":
    main()
