"""TopK training throughput of EleutherAI sparsify's own SparseCoder, the peer of
`examples/bench_train.rs topk STEPS 16384`: d_in 512, k 32, batch 4096 of random
activations, Adam, sparsify's training step (`sparsify/trainer.py`: unit-norm decoder before
the forward, FVU loss, gradient parallel to the decoder rows removed, Adam step). On CUDA
sparsify decodes with its Triton kernels (unless SPARSIFY_DISABLE_TRITON is set). Prints one
JSON line of samples/s that `ratios.py` pairs with ours.

Usage: [DEVICE=cuda] train_sparsify.py THREADS [STEPS] [D_SAE]
"""
import json
import os
import sys
import time
from importlib.metadata import version

import torch
import torch.nn.functional as F

from phases import breakdown


def sparse_coder():
    """sparsify's SparseCoder and its config. Where `import sparsify` fails because its trainer
    needs packages this machine lacks (`datasets`, `schedulefree`: the GPU image has neither
    and cannot download them), its model modules are imported alone, unchanged."""
    try:
        from sparsify import SparseCoder, SparseCoderConfig
    except ImportError as e:
        import importlib.util
        import types
        spec = importlib.util.find_spec("sparsify")
        if spec is None:
            raise
        print(f"import sparsify failed ({e}); importing its SparseCoder alone", file=sys.stderr)
        pkg = types.ModuleType("sparsify")
        pkg.__path__ = list(spec.submodule_search_locations)
        sys.modules["sparsify"] = pkg
        from sparsify.config import SparseCoderConfig
        from sparsify.sparse_coder import SparseCoder
    return SparseCoder, SparseCoderConfig


def main():
    threads = int(sys.argv[1])
    steps = int(sys.argv[2]) if len(sys.argv) > 2 else 20
    d_sae = int(sys.argv[3]) if len(sys.argv) > 3 else 16384
    device = os.environ.get("DEVICE", "cpu")
    if device == "cpu":
        os.environ.setdefault("SPARSIFY_DISABLE_TRITON", "1")
    SparseCoder, SparseCoderConfig = sparse_coder()  # after the Triton switch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    d_in, k, batch = 512, 32, 4096
    data = torch.randn(4 * batch, d_in, device=device)
    sae = SparseCoder(d_in, SparseCoderConfig(num_latents=d_sae, k=k), device=device)
    opt = torch.optim.Adam(sae.parameters(), lr=2e-4)
    since_fired = torch.zeros(d_sae, dtype=torch.long, device=device)

    def step(i):
        x = data[(i % 4) * batch:(i % 4 + 1) * batch]
        if i == 0:
            sae.b_dec.data = x.mean(0)
        sae.set_decoder_norm_to_unit_norm()
        out = sae(x, y=x, dead_mask=None)
        out.fvu.backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        opt.step()
        opt.zero_grad(set_to_none=True)
        # Its trainer tracks firing every step, as ours does.
        fired = torch.zeros(d_sae, dtype=torch.bool, device=device)
        fired[out.latent_indices.flatten()] = True
        since_fired.add_(batch).masked_fill_(fired, 0)
        return out.fvu.item()

    sync = torch.cuda.synchronize if device != "cpu" else (lambda: None)
    step(0), step(1), sync()  # warm-up
    start = time.perf_counter()
    for i in range(steps):
        step(i)
    sync()
    secs = time.perf_counter() - start
    x = data[:batch]
    encoder = lambda: F.linear(x - sae.b_dec, sae.encoder.weight, sae.encoder.bias)
    pre = encoder()
    breakdown([("encoder matmul", encoder),
               ("top-k", lambda: torch.topk(pre, k, dim=-1, sorted=False)),
               ("forward", lambda: sae(x, y=x, dead_mask=None)),
               ("forward+backward", lambda: sae(x, y=x, dead_mask=None).fvu.backward())],
              sync, secs * 1e3 / steps)
    print(json.dumps({"impl": "torch", "device": device, "work": "train", "dtype": "f32",
                      "variant": "topk", "d_in": d_in, "d_sae": d_sae, "batch": batch,
                      "samples_per_s": round(steps * batch / secs, 1), "threads": threads,
                      "torch": f"{torch.__version__}, sparsify {version('eai-sparsify')}"}))


if __name__ == "__main__":
    main()
