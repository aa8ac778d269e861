"""PyTorch + transformers reference for examples/bench_forward.rs: the same random
pythia-70m-deduped-shaped GPT-NeoX, run up to blocks.5.hook_mlp_out (a forward hook on
gpt_neox.layers[5].mlp that stops the forward, so neither side computes later layers or logits).

Prints one JSON line per batch size, like the Rust side. DEVICE=cuda runs it on the GPU.
"""
import json
import os
import sys
import time

import torch
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM


class Stop(Exception):
    pass


def main():
    torch.manual_seed(0)
    threads = int(sys.argv[1]) if len(sys.argv) > 1 else torch.get_num_threads()
    torch.set_num_threads(threads)
    batches = [int(b) for b in sys.argv[2:]] or [1, 32]
    seq = 128
    cfg = GPTNeoXConfig(
        vocab_size=50304, hidden_size=512, num_hidden_layers=6, num_attention_heads=8,
        intermediate_size=2048, rotary_pct=0.25, rotary_emb_base=10000,
        max_position_embeddings=2048, use_parallel_residual=True, hidden_act="gelu",
    )
    device = os.environ.get("DEVICE", "cpu")
    model = GPTNeoXForCausalLM(cfg).eval().to(device)
    captured = []

    def hook(_module, _inp, out):
        captured.append(out)
        raise Stop

    model.gpt_neox.layers[5].mlp.register_forward_hook(hook)

    def run(ids):
        captured.clear()
        try:
            model(input_ids=ids)
        except Stop:
            pass
        assert captured

    with torch.inference_mode():
        for b in batches:
            ids = torch.randint(0, cfg.vocab_size, (b, seq), device=device)
            run(ids)  # warm-up
            iters = max(256 // b, 3) if device == "cpu" else 20  # as bench_forward.rs
            start = time.perf_counter()
            for _ in range(iters):
                run(ids)
            if device != "cpu":
                torch.cuda.synchronize()
            secs = time.perf_counter() - start
            print(json.dumps({"impl": "torch", "device": device, "batch": b, "seq": seq,
                              "tokens_per_s": round(iters * b * seq / secs, 1),
                              "threads": threads, "torch": torch.__version__}))


if __name__ == "__main__":
    main()
