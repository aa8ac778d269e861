"""PyTorch reference for examples/bench_train.rs: the same ReLU SAE (d_in 512, d_sae 4096),
the same loss (sum-over-d MSE + lambda * sum_i f_i ||W_dec,i||, Anthropic April 2024), Adam,
global grad-norm clipping at 1, batch 4096 of random activations. Prints samples/s.

Usage: [DEVICE=cuda] [DTYPE=bf16] train_torch.py THREADS [STEPS]
DTYPE=bf16 runs the forward pass and loss under torch.autocast(bfloat16) with the weights and
Adam's state in f32, as `sae train --dtype bf16` does.
"""
import json
import os
import sys
import time

import torch

from phases import breakdown


def main():
    threads = int(sys.argv[1])
    steps = int(sys.argv[2]) if len(sys.argv) > 2 else 20
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    device = os.environ.get("DEVICE", "cpu")
    dtype = os.environ.get("DTYPE", "f32")
    if dtype not in ("f32", "bf16"):
        sys.exit(f"DTYPE must be f32 or bf16, not {dtype}")
    torch.set_default_device(device)
    d_in, d_sae, batch = 512, 4096, 4096
    data = torch.randn(4 * batch, d_in)
    w_dec = torch.randn(d_sae, d_in)
    w_dec = (w_dec / w_dec.norm(dim=1, keepdim=True) * 0.1).requires_grad_()
    w_enc = w_dec.detach().t().clone().requires_grad_()
    b_enc = torch.zeros(d_sae, requires_grad=True)
    b_dec = torch.zeros(d_in, requires_grad=True)
    params = [w_enc, b_enc, w_dec, b_dec]
    opt = torch.optim.Adam(params, lr=5e-5)

    def autocast():
        return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16,
                              enabled=dtype == "bf16")

    def loss_of(x):
        with autocast():
            f = torch.relu((x - b_dec) @ w_enc + b_enc)
            x_hat = f @ w_dec + b_dec
            loss = (x_hat.float() - x).pow(2).sum(1).mean() + 5.0 * (f @ w_dec.norm(dim=1)).float().mean()
        return loss, f

    def step(i):
        x = data[(i % 4) * batch:(i % 4 + 1) * batch]
        loss, f = loss_of(x)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        # The Rust trainer reads the loss and per-feature firing counts every step.
        return loss.item(), (f > 0).sum(0)

    for i in range(2):
        step(i)
    start = time.perf_counter()
    for i in range(steps):
        step(i)
    secs = time.perf_counter() - start
    x = data[:batch]

    def encoder():
        with autocast():
            return (x - b_dec) @ w_enc + b_enc

    sync = torch.cuda.synchronize if device != "cpu" else (lambda: None)
    breakdown([("encoder matmul", encoder), ("forward", lambda: loss_of(x)),
               ("forward+backward", lambda: loss_of(x)[0].backward())], sync, secs * 1e3 / steps)
    print(json.dumps({"impl": "torch", "device": device, "work": "train", "dtype": dtype, "d_in": d_in, "d_sae": d_sae, "batch": batch,
                      "samples_per_s": round(steps * batch / secs, 1), "threads": threads,
                      "torch": torch.__version__}))


if __name__ == "__main__":
    main()
