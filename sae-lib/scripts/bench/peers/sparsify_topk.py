"""TopK SAE: EleutherAI sparsify's own SparseCoder and training step against `sae train --arch
topk`, trained on the same stored activations, scored by one evaluator on held-out activations.

Peer: eai-sparsify 1.3.3 (module `sparsify`), class `sparsify.SparseCoder`
(`sparsify/sparse_coder.py`: TopK via `fused_encoder.FusedEncoder`, a custom autograd
Function whose backward is index_add/embedding_bag; decoder `utils.eager_decode`, i.e.
`F.embedding_bag(..., mode="sum")`; triton's decoder is disabled with
SPARSIFY_DISABLE_TRITON=1 since this is CPU), config `sparsify.SparseCoderConfig(num_latents,
k)`, everything else at its defaults (activation "topk", normalize_decoder True, no
multi_topk, no skip connection). torch 2.15.0.

The training step is sparsify's `Trainer.fit` (`sparsify/trainer.py`, v1.3.3) minus the LM:
its forward hook receives the activations, which here come from the store instead.
Reproduced per step, in its order:
- init: `torch.manual_seed(seed)` then `SparseCoder(d_in, cfg, "cpu", dtype=float32)`
  (nn.Linear default init for the encoder, bias 0, W_dec = encoder weight cloned and
  normalised to unit rows);
- step 0 only: `b_dec.data = batch.mean(0)` ("ensure the preactivations are centred");
- every step before the forward: `set_decoder_norm_to_unit_norm()`;
- dead mask = `num_tokens_since_fired > dead_feature_threshold` (10_000_000 tokens,
  TrainConfig default), passed only when `auxk_alpha > 0`;
- `total_variance = (y - y.mean(0)).pow(2).sum()` of the batch (micro_acc_steps 1);
- forward `sae(x, y=x, dead_mask, total_variance)` -> fvu = Σe²/total_variance, and AuxK
  (k_aux = d_in // 2, scale = min(num_dead / k_aux, 1), residual target detached, no b_dec);
- loss = fvu + auxk_alpha * auxk_loss + multi_topk_fvu / 8 (0 here), backward;
- `remove_gradient_parallel_to_decoder_directions()`, `optimizer.step()`, `zero_grad()`,
  lr scheduler step;
- `num_tokens_since_fired += tokens in step; [did_fire] = 0`;
- after the loop, `save_to_disk` (the trainer's final save; inside the timed region).
No input normalisation, no gradient clipping (sparsify has neither).

Optimiser. sparsify 1.3.3's TrainConfig default is `optimizer="signum"`: SignSGD wrapped in
schedulefree's ScheduleFreeWrapper(momentum 0.95), lr 5e-3 / sqrt(num_latents / 2**14), no
schedule: fundamentally different from Adam. This script uses its `optimizer="adam"` path by
default (`--optimizer signum` runs the default one, with its own lr unless --peer-lr is given):
torch.optim.Adam (bitsandbytes' Adam8bit is not installed, so sparsify would fall back to
this one too), lr = --lr (sparsify's own default for Adam is 2e-4 / sqrt(num_latents / 2**14),
which is also this script's default, and `sae train` gets the same value), and
`transformers.get_linear_schedule_with_warmup(adam, lr_warmup_steps, num_batches)` with
sparsify's lr_warmup_steps default of 1000: the lr rises linearly over the first 1000 steps,
then falls linearly to 0 at the last step. NOTE: at --steps 1000 the peer is still warming up
at the end, as sparsify itself would be for a 1000-batch dataset; --lr-warmup-steps changes it.

AuxK: sparsify's TrainConfig default is auxk_alpha = 0.0 (off); this script defaults to
1/32, the paper's value and what `sae train --arch topk` uses, so both sides have AuxK. With a
10M-token dead threshold (both tools) no feature can be dead within 1M training tokens, so
AuxK is inactive on both sides at the default benchmark size anyway.

Peer threads: torch.set_num_threads(--threads), OMP_WAIT_POLICY=PASSIVE unless set (common.py
explains why).

Ours: `sae train --arch topk` with the same d_sae, k, batch size, steps, lr and seed, run with
RAYON_NUM_THREADS=--threads, timed as a whole subprocess (process start, store open, its own
init with input-norm scaling and a geometric-median b_dec, training, final save). Our recipe
differs from sparsify's where each tool has its own: ours scales inputs to E‖x − x̄‖ = √d_in,
clips the global grad norm at 1, decays the lr linearly over the last 20% of steps, no
warm-up. The peer's time covers SparseCoder init, the step loop and its final save, not the
one-off read of the store into RAM.

Both SAEs are written as SAELens folders (`<out-dir>/peer`, `<out-dir>/ours`) and scored by
`common.evaluate` through `sae_lens.SAE.load_from_disk` on the held-out store: FVU over the
whole set, L0, dead fraction. The peer is also scored through its own encode/decode as a check
of the conversion (`peer.native_fvu` in the JSON). `sae eval --sae <out-dir>/peer` can score
CE-loss recovery of the converted peer on the spliced model.

Run (from the repository root, stores from make_stores.sh):
  python sae-lib/scripts/bench/peers/sparsify_topk.py \\
    --train .cache/peers/train --test .cache/peers/test --d-sae 4096 --k 32 --steps 1000 \\
    --batch-size 1024 --lr 4e-4 --threads 2 --seed 0 --sae-bin target/release/sae \\
    --json .cache/peers/results/sparsify_topk.json
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from importlib.metadata import version
from pathlib import Path

os.environ.setdefault("SPARSIFY_DISABLE_TRITON", "1")  # before sparsify is imported
# libgomp threads that sleep instead of spinning (see common.py): before torch is imported
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_run_args(p, lr=None, out_name="sparsify",
                        lr_help="both sides; default sparsify's Adam lr 2e-4/sqrt(d_sae/2^14)")
    p.add_argument("--optimizer", choices=["adam", "signum"], default="adam")
    p.add_argument("--peer-lr", type=float, default=None,
                   help="peer lr if not --lr (default: --lr for adam, sparsify's own for signum)")
    p.add_argument("--lr-warmup-steps", type=int, default=1000, help="sparsify's default 1000")
    p.add_argument("--auxk-alpha", type=float, default=1 / 32)
    p.add_argument("--dead-feature-threshold", type=int, default=10_000_000)
    p.add_argument("--skip-ours", action="store_true", help="peer only (development)")
    return p.parse_args(argv)


def train_sparsify(x: torch.Tensor, args, lr: float, out_dir: Path) -> tuple:
    """sparsify's SparseCoder trained with sparsify's Trainer step; returns (sae, stats)."""
    from schedulefree import ScheduleFreeWrapper  # noqa: PLC0415
    from sparsify import SparseCoder, SparseCoderConfig  # noqa: PLC0415
    from sparsify.sign_sgd import SignSGD  # noqa: PLC0415
    from transformers import get_linear_schedule_with_warmup  # noqa: PLC0415

    n, d_in = x.shape
    plan = common.BatchPlan(n, args.batch_size, args.seed)
    stats = {}
    t0 = time.perf_counter()
    torch.manual_seed(args.seed)
    cfg = SparseCoderConfig(num_latents=args.d_sae, k=args.k)
    sae = SparseCoder(d_in, cfg, device="cpu", dtype=torch.float32)
    if args.optimizer == "adam":
        opt = torch.optim.Adam([dict(params=sae.parameters(), lr=lr)])
        schedulers = [get_linear_schedule_with_warmup(opt, args.lr_warmup_steps, args.steps)]
    else:
        opt = ScheduleFreeWrapper(SignSGD([dict(params=sae.parameters(), lr=lr)]),
                                  momentum=0.95)
        opt.train()
        schedulers = []
    since_fired = torch.zeros(sae.num_latents, dtype=torch.long)
    did_fire = torch.zeros(sae.num_latents, dtype=torch.bool)
    fvus = []
    for step in range(args.steps):
        batch = x[plan.rows(step)]
        if step == 0:
            sae.b_dec.data = batch.mean(0).to(sae.dtype)
        if sae.cfg.normalize_decoder:
            sae.set_decoder_norm_to_unit_norm()
        dead_mask = since_fired > args.dead_feature_threshold if args.auxk_alpha > 0 else None
        total_variance = (batch - batch.mean(0)).pow(2).sum()
        out = sae(x=batch, y=batch, dead_mask=dead_mask, total_variance=total_variance)
        did_fire[out.latent_indices.flatten()] = True
        loss = out.fvu + args.auxk_alpha * out.auxk_loss + out.multi_topk_fvu / 8
        loss.backward()
        if sae.cfg.normalize_decoder:
            sae.remove_gradient_parallel_to_decoder_directions()
        opt.step()
        opt.zero_grad()
        for s in schedulers:
            s.step()
        with torch.no_grad():
            since_fired += batch.shape[0]
            since_fired[did_fire] = 0
            did_fire.zero_()
        if step % 50 == 0 or step == args.steps - 1:
            fvus.append((step, out.fvu.item()))
    if args.optimizer == "signum":
        opt.eval()  # sparsify's checkpoint switches schedule-free to its averaged weights
    sae.save_to_disk(out_dir / "peer_native")
    stats["train_s"] = time.perf_counter() - t0
    stats["train_fvu_log"] = fvus
    stats["dead_at_end"] = float((since_fired > args.dead_feature_threshold).float().mean())
    return sae, stats


@torch.no_grad()
def native_eval(sae, x: torch.Tensor) -> dict:
    """The peer scored through its own encode/decode (checks the SAELens conversion)."""
    def encode(xb):
        acts, idx, _ = sae.encode(xb)
        return torch.zeros(xb.shape[0], sae.num_latents).scatter_(1, idx, acts)

    def decode(f):
        acts, idx = f.topk(sae.cfg.k, dim=1, sorted=False)
        return sae.decode(acts, idx)
    return common.evaluate(encode, decode, x, sae.num_latents)


def main(argv=None):
    args = parse_args(argv)
    lr = args.lr if args.lr is not None else 2e-4 / (args.d_sae / 2 ** 14) ** 0.5
    peer_lr = args.peer_lr if args.peer_lr is not None else (
        lr if args.optimizer == "adam" else 5e-3 / (args.d_sae / 2 ** 14) ** 0.5)
    if args.optimizer == "adam" and args.lr_warmup_steps >= args.steps:
        print(f"note: sparsify's lr warm-up ({args.lr_warmup_steps} steps) spans the whole "
              f"{args.steps}-step run", file=sys.stderr)
    out_dir, load_before, x_train, x_test = common.open_run(args, "sparsify")
    meta = common.store_meta(args.train)

    sae, peer = train_sparsify(x_train, args, peer_lr, out_dir)
    print(f"peer trained in {peer['train_s']:.1f}s", file=sys.stderr)
    peer_dir = common.save_saelens_folder(
        out_dir / "peer", "topk",
        {"W_enc": sae.encoder.weight.T, "b_enc": sae.encoder.bias, "W_dec": sae.W_dec,
         "b_dec": sae.b_dec},
        store=meta, extra_cfg={"k": args.k, "rescale_acts_by_decoder_norm": False},
        trained_with=f"eai-sparsify {version('eai-sparsify')} ({args.optimizer})")
    peer.update(common.evaluate_folder(peer_dir, x_test))
    peer["native_fvu"] = native_eval(sae, x_test)["fvu"]

    result = {
        "bench": "sparsify_topk", "args": vars(args), "lr": lr, "peer_lr": peer_lr,
        "versions": {"eai-sparsify": version("eai-sparsify"), "sae-lens": version("sae-lens"),
                     "torch": torch.__version__, "sae": common.sae_version(args.sae_bin)},
        "train_rows": x_train.shape[0], "test_rows": x_test.shape[0], "d_in": x_train.shape[1],
        "threads": args.threads, "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "load_before": load_before, "peer": peer,
    }
    if not args.skip_ours:
        ours = common.run_ours(args.sae_bin, args.train, out_dir / "ours", arch="topk",
                               d_sae=args.d_sae, k=args.k, steps=args.steps,
                               batch_size=args.batch_size, lr=lr, seed=args.seed,
                               threads=args.threads, log=out_dir / "ours.log")
        print(f"ours trained in {ours['train_s']:.1f}s", file=sys.stderr)
        ours.update(common.evaluate_folder(out_dir / "ours", x_test))
        result["ours"] = ours
    result["load_after"] = common.machine_load()

    print(f"\nTopK SAE, d_in {x_train.shape[1]}, d_sae {args.d_sae}, k {args.k}, "
          f"{args.steps} steps x batch {args.batch_size}, lr {lr:g} (peer {peer_lr:g}, "
          f"{args.optimizer}), {args.threads} threads; train {x_train.shape[0]} rows, "
          f"held-out {x_test.shape[0]} rows; load {load_before} -> {result['load_after']}\n")
    if "ours" in result:
        print(common.markdown_table(common.PAIR_HEADERS, [common.pair_row(
            f"sparsify {version('eai-sparsify')} vs sae topk", peer, result["ours"])]))
    else:
        print(f"peer: FVU {peer['fvu']:.4f} (native {peer['native_fvu']:.4f}), "
              f"L0 {peer['l0']:.1f}, dead {100 * peer['dead_frac']:.1f}%, "
              f"{peer['train_s']:.1f}s")
    print(f"\n(peer FVU through its own encode/decode: {peer['native_fvu']:.4f})")
    common.write_json(args.json, result)


if __name__ == "__main__":
    main()
