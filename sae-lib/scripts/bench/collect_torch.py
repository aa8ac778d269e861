"""The tutorial's own collection loop in PyTorch + transformers, as the reference for
examples/bench_collect.rs: a random pythia-70m-deduped-shaped GPT-NeoX, one document at a
time, truncated to 128 tokens, full forward with a forward hook on gpt_neox.layers[5].mlp,
keeping the middle token. Documents are WikiText paragraphs split on blank lines, exactly as
sae-lib splits .txt files.

Usage: collect_torch.py THREADS TOKENIZER TEXT N_DOCS
"""
import json
import sys
import time

import torch
from tokenizers import Tokenizer
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM


def paragraphs(path):
    docs, cur = [], []
    for line in open(path, encoding="utf-8").read().splitlines():
        if line.strip():
            cur.append(line)
        elif cur:
            docs.append("\n".join(cur))
            cur = []
    if cur:
        docs.append("\n".join(cur))
    return docs


def main():
    threads, tok_path, text, n = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    tok = Tokenizer.from_file(tok_path)
    docs = paragraphs(text)[:n]
    cfg = GPTNeoXConfig(vocab_size=50304, hidden_size=512, num_hidden_layers=6, num_attention_heads=8,
                        intermediate_size=2048, rotary_pct=0.25, rotary_emb_base=10000,
                        max_position_embeddings=2048, use_parallel_residual=True, hidden_act="gelu")
    model = GPTNeoXForCausalLM(cfg).eval()
    stored = []
    model.gpt_neox.layers[5].mlp.register_forward_hook(lambda m, i, o: stored.append(o.detach().cpu()))
    ids = [tok.encode(d).ids[:128] for d in docs]
    tokens = sum(len(i) for i in ids)
    acts = []
    start = time.perf_counter()
    with torch.no_grad():
        for i in ids:
            if not i:
                continue
            stored.clear()
            model(input_ids=torch.tensor([i]))
            a = stored[0][0]
            acts.append(a[a.shape[0] // 2])
    secs = time.perf_counter() - start
    print(json.dumps({"impl": "torch", "work": "collect", "docs": n, "tokens_per_s": round(tokens / secs, 1),
                      "threads": threads, "torch": torch.__version__}))


if __name__ == "__main__":
    main()
