"""dictionary_learning's own trainers against `sae train`, trained on the same stored
activations, scored by one evaluator on held-out activations.

Peer: dictionary-learning 0.1.0 (PyPI; module `dictionary_learning`, Sam Marks, Adam Karvonen
and Aaron Mueller's library), its trainer classes from `dictionary_learning.trainers`:
  --trainer topk       TopKTrainer      / AutoEncoderTopK  (trainers/top_k.py)      ours: topk
  --trainer batchtopk  BatchTopKTrainer / BatchTopKSAE     (trainers/batch_top_k.py) ours: batchtopk
  --trainer standard   StandardTrainer  / AutoEncoder      (trainers/standard.py,
                                                            dictionary.py)           ours: relu
  --trainer matryoshka MatryoshkaBatchTopKTrainer / MatryoshkaBatchTopKSAE
                                          (trainers/matryoshka_batch_top_k.py)     ours: matryoshka
  --trainer jumprelu   JumpReluTrainer  / JumpReluAutoEncoder (trainers/jumprelu.py,
                                                            dictionary.py)           ours: jumprelu
  --trainer gated      GatedSAETrainer  / GatedAutoEncoder (trainers/gdm.py,
                                                            dictionary.py)           ours: gated
each driven by dictionary_learning's own loop, `dictionary_learning.training.trainSAE` (called,
not copied): `trainSAE(data, [config], steps, save_dir=..., device="cpu")` builds the trainer
from the config dict and calls `trainer.update(step, act)` for step 0..steps-1 on the batches
`data` yields, then writes `ae.pt` (inside the timed region). `data` here is a re-iterable
over our batches (common.BatchPlan: the same rows per step as `sae train`); wandb and verbose
logging are off, since `log_stats` calls `trainer.loss` again, which advances TopK's dead-
feature counters and threshold. The saved dictionary is read back with dictionary_learning's own
`utils.load_dictionary` (its `from_pretrained`), then converted to an SAELens folder.

What each trainer's `update` does (dictionary_learning 0.1.0, kept as it is):
- topk: seeded init (`torch.manual_seed(seed)` in the trainer): unit-norm decoder columns,
  W_enc = W_decᵀ, b_enc 0; step 0: b_dec = geometric median of the first batch; encode
  ReLU(W_enc (x − b_dec) + b_enc) then per-row top-k; loss Σ_d(x − x̂)² mean over rows +
  auxk_alpha (1/32) · AuxK (k_aux = d_in // 2, dead = not fired for 10M tokens, normalised by
  the residual's variance); gradient parallel to decoder columns removed; clip_grad_norm 1;
  Adam (0.9, 0.999); LambdaLR schedule; decoder columns renormalised to unit norm.
  threshold (a running mean of each row's smallest kept activation, EMA β 0.999 from step
  `threshold_start_step`) is learned but AutoEncoderTopK's inference `encode` does top-k
  unless asked for `use_threshold=True`, so the peer is saved as SAELens "topk".
- batchtopk: the same, with top-(k·batch) over the whole batch; its inference `encode`
  (use_threshold=True, the default) keeps ReLU activations above ONE scalar threshold θ, the
  EMA (β 0.999) of each batch's smallest kept activation from `threshold_start_step` on. It is
  saved as SAELens "jumprelu" with θ for every feature (as our BatchTopK is saved).
- standard: AutoEncoder init: W = randn(d_in, d_sae) columns at norm 0.1, W_enc = Wᵀ,
  W_dec = W, biases 0 (no data-dependent b_dec); encode ReLU(W_enc (x − b_dec) + b_enc);
  loss Σ_d(x − x̂)² mean + l1_penalty · sparsity-warm-up · ‖f‖₁ mean; ConstrainedAdam
  (Adam that removes the gradient parallel to each decoder column and renormalises the
  columns to unit norm after each step); no grad clipping; no resampling (resample_steps None).
- matryoshka: BatchTopK's encoder, init (kaiming-uniform decoder rows at unit norm, W_enc =
  W_decᵀ, biases 0; no geometric median) and scalar θ, with the dictionary cut into groups
  (group_fractions, required by the trainer: here 1/16, 1/16, 1/8, 1/4, 1/2, i.e. the
  prefixes d_sae/16, /8, /4, /2, d_sae, our default nesting); the loss sums each prefix's
  Σ_d(x − x̂)² mean with weight 1/5 (its default group_weights) + AuxK as TopK's; the rest as
  TopK's update. Saved as SAELens "jumprelu" with θ for every feature, as BatchTopK.
- jumprelu: JumpReluAutoEncoder (x not centred by b_dec: apply_b_dec_to_input False; W_dec
  rows kaiming-uniform at unit norm, W_enc = W_decᵀ, θ 0.001 for every feature); f =
  ReLU(pre · (pre > θ)), straight-through rectangle gradients of bandwidth 0.001 for θ; loss
  Σ_d(x − x̂)² mean + sparsity_penalty (1) · (L0 / target_l0 − 1)² · sparsity-warm-up (an
  L0 pulled to a target, not a coefficient on it); Adam (0, 0.999); gradient parallel to
  decoder rows removed; clip_grad_norm 1; rows renormalised to unit norm. Saved as SAELens
  "jumprelu" with b_enc + b_dec·W_enc as b_enc (SAELens subtracts b_dec from x first).
- gated: GatedAutoEncoder init (unit-norm random decoder columns, encoder = decoderᵀ, r_mag,
  biases 0); π = W_enc (x − b_dec), f = 1[π + b_gate > 0] · ReLU(exp(r_mag) π + b_mag); loss
  Σ_d(x − x̂)² mean + l1_penalty · sparsity-warm-up · ‖ReLU(π + b_gate)‖₁ mean + the gate's
  reconstruction through a detached decoder; ConstrainedAdam (0, 0.999) as Standard's. Saved
  as SAELens "gated" (the same encoding).

dictionary_learning's defaults kept on its side (they differ from ours):
- no input normalisation (trainSAE's normalize_activations=False default; `--normalize-
  activations` turns on its unit-mean-squared-norm scaling, biases rescaled before saving);
- lr warm-up: linear from 0 over warmup_steps = 1000 (all three trainers). Its
  get_lr_schedule refuses warmup_steps >= steps, so in a run of <= 1000 steps this script uses
  steps − 1, the longest it accepts: at --steps 1000 the peer warms up over the whole run and
  ends at 0.999·lr, as sparsify_topk.py's peer does with sparsify's 1000-step warm-up
  (`--warmup-steps` sets another; dictionary_learning's own end-to-end test uses 0 for TopK).
  It costs the peer: at the benchmark's settings `--warmup-steps 0` took its held-out FVU from
  0.3825 to 0.3616 (TopK) and from 0.4224 (L0 30.6) to 0.3928 (L0 35.0) (BatchTopK);
- no lr decay (decay_start None; `--decay-start` sets one);
- dead-feature threshold 10M tokens for AuxK (hard-coded in the trainers): no feature can be
  dead within 1M training tokens, so the peer's AuxK never acts at the benchmark's size (ours
  counts a feature dead after the last 10% of a run shorter than 10M inputs);
- standard, jumprelu, gated: sparsity warm-up (λ linear from 0) over sparsity_warmup_steps =
  2000, lowered to steps − 1 when longer than the run (get_sparsity_warmup_fn refuses >=
  steps), so at 1000 steps λ too reaches full strength only at the end; standard's and
  gated's l1_penalty default 0.1, jumprelu's target_l0 default 20 (`--peer-target-l0`);
- threshold_start_step: its default 1000 cannot be kept at 1000 steps: the EMA is updated only
  for step > threshold_start_step, so θ would stay at its initial −1 and BatchTopKSAE's
  inference would keep every positive pre-activation (a dense ReLU code). This script uses
  min(1000, steps // 2) (the EMA then covers the second half of the run; `--threshold-start-
  step` sets another). It changes nothing at TopK's inference (top-k, θ unused).
Shared and passed to both sides: d_sae, k, lr (lr=None would pick dictionary_learning's
2e-4/√(d_sae/2¹⁴), which is also ours and this script's default), steps, batch size, seed,
and the rows of each step.

Standard (ReLU + L1), Gated and JumpReLU at comparable L0: for Standard ours runs `--arch relu
--penalty l1-unit-decoder` (plain L1 with unit-norm decoder rows, as StandardTrainer; `--penalty
decoder-norm` runs our default April-2024 penalty instead). The coefficient means different
things in the two tools: both losses are Σ_d(x − x̂)² + λ Σ f, but ours acts on inputs scaled by
s = √d_in / E‖x − x̄‖, which scales the reconstruction term by s² and the L1 term by s, so our λ
is worth about λ/s of dictionary_learning's (s is printed and recorded; the recipes differ too,
so L0 still differs). Pass lists: `--peer-l1 a,b` (dictionary_learning's l1_penalty, default its
0.1) and `--l1 x,y,z` (ours). Every run's (L0, FVU) is reported; each peer run that two of ours
bracket is compared with ours interpolated at the peer's L0 (linear in log L0,
common.interpolate_fvu), and each of ours with the peer's curve at our L0 where two peer runs
bracket it ("–" outside). Gated likewise, with its gate's L1 (our gated keeps unit-norm decoder
rows too, so `--penalty` does not apply). JumpReLU likewise: the peer's `--peer-target-l0 a,b`
against our `--l1 x,y,z` (our L0 coefficient; ours has no target), compared at the peer's L0 the
same way.
`--peer-from` reuses peer runs recorded in an earlier --json with the same settings (its
`trainSAE` is deterministic under the seed on the CPU), so more of ours can be added to a
bracket without training the peer again.
BatchTopK and Matryoshka: ours is also scored at the peer's held-out L0 (every θ of ours
scaled by one factor, common.evaluate_folder_at_l0), as saelens.py does.

Peer threads: torch.set_num_threads(--threads), and, unlike the other peer scripts, libgomp's
own wait policy (OMP_WAIT_POLICY left unset unless the environment sets it: spin briefly, then
sleep). common.py's PASSIVE protects torch from a busy machine, but on a quiet one it makes
this peer 4x slower: every step calls `remove_gradient_parallel_to_decoder_directions`, whose
einops.einsum runs as 4,096 tiny MKL gemv calls, each waking the sleeping OpenMP threads
(566 ms a call under PASSIVE, 55 ms under ACTIVE, d_sae 4096, 2 threads; a whole TopKTrainer
step 727 ms under PASSIVE, 178 ms ACTIVE, 173 ms unset; SAELens' and sparsify's steps change
by < 10% in 40- and 100-step runs); a 1,000-step TopK run took 735 s under PASSIVE. ACTIVE
is no better: its threads spin forever, and kept two cores busy while `sae train` ran
afterwards (ours 85 s instead of 50-57 s). So run it on a quiet machine. Ours links no
OpenMP.
The peer's time covers trainer construction (init), the trainSAE loop (b_dec's geometric
median included) and its final save of ae.pt, not the one-off read of the store.

Ours: `sae train --arch topk|batchtopk|relu` with the same d_sae, k, batch size, steps, lr and
seed, RAYON_NUM_THREADS=--threads, timed as a whole subprocess, keeping its own recipe: inputs
scaled to E‖x − x̄‖ = √d_in, no warm-up, grad-norm clip 1, free decoder norms and lr decay over
the last 20% for topk/batchtopk, b_dec from the geometric median, per-feature BatchTopK
thresholds; relu at a constant lr, b_dec from zero unless the inputs' mean outweighs their
spread, λ warm-up over 5% of steps (README, "Defaults").

Both SAEs are written as SAELens folders under --out-dir and scored by `common.evaluate`
through `sae_lens.SAE.load_from_disk` on the held-out store: FVU over the whole set, L0, dead
fraction. The peer is also scored through its own `encode`/`decode` (`native_fvu`,
`native_l0` in the JSON) as a check of the conversion.

Run (from the repository root, stores from make_stores.sh):
  python sae-lib/scripts/bench/peers/dictionary_learning.py --trainer topk \\
    --train .cache/peers/train --test .cache/peers/test --d-sae 4096 --k 32 --steps 1000 \\
    --batch-size 1024 --lr 4e-4 --threads 2 --seed 0 --sae-bin target/release/sae \\
    --json .cache/peers/results/dictionary_learning_topk.json
  ... --trainer batchtopk ...
  ... --trainer standard --peer-l1 2.6,6.5 --l1 0.7,1,2,3
  ... --trainer matryoshka ...
  ... --trainer gated --peer-l1 2.6,6.5 --l1 1,2,4
  ... --trainer jumprelu --peer-target-l0 20,64 --l1 0.01,0.03,0.1,0.3

Standard's coefficients above: s = 0.769 on these stores (E‖x − x̄‖ ≈ 31), so the peer's 2.6 and
6.5 are our 2 and 5 through s (its default 0.1 would be our 0.08, a nearly dense code); a run at
these settings gave the peer held-out L0 357 and 80 and ours (l1-unit-decoder) L0 283 / 117 / 43
at λ 1 / 2 / 4, hence our list, chosen to bracket both of the peer's L0s. Gated's lists
bracket the peer's L0 354 and 180 the same way. The peer's JumpReLU ends 1,000 steps at L0
706-722 whatever its target (its warm-ups span the run and θ starts at 0.001); ours reaches
those L0s only at a small coefficient, λ 0.01-0.03.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from importlib.metadata import version
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # trainSAE's progress bar
os.environ.setdefault("WANDB_MODE", "disabled")  # never used (use_wandb=False); belt and braces
# No OMP_WAIT_POLICY of our own (libgomp's default), not common.py's PASSIVE: see the
# docstring. The environment's, if set, is kept.

import torch  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import common  # noqa: E402

# This file shares its name with the peer's package: take its folder off the path so that
# `import dictionary_learning` finds the installed library, not this script.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]

OURS = {"topk": "topk", "batchtopk": "batchtopk", "standard": "relu",
        "matryoshka": "matryoshka", "jumprelu": "jumprelu", "gated": "gated"}
PEER_CLASSES = {"topk": ("TopKTrainer", "AutoEncoderTopK"),
                "batchtopk": ("BatchTopKTrainer", "BatchTopKSAE"),
                "standard": ("StandardTrainer", "AutoEncoder"),
                "matryoshka": ("MatryoshkaBatchTopKTrainer", "MatryoshkaBatchTopKSAE"),
                "jumprelu": ("JumpReluTrainer", "JumpReluAutoEncoder"),
                "gated": ("GatedSAETrainer", "GatedAutoEncoder")}
# Trainers whose sparsity is set by a coefficient (compared along L0) rather than by k; of
# them, those whose coefficient is an L1 penalty (jumprelu's is a target L0).
PENALTY = ("standard", "gated", "jumprelu")
L1_PENALTY = ("standard", "gated")
# Scalar-θ inference: ours is also scored at the peer's L0.
THRESHOLD = ("batchtopk", "matryoshka")
# Our default Matryoshka nesting (d_sae/16, /8, /4, /2, d_sae) as dictionary_learning's groups.
MATRYOSHKA_FRACTIONS = [1 / 16, 1 / 16, 1 / 8, 1 / 4, 1 / 2]
DL_WARMUP, DL_SPARSITY_WARMUP, DL_THRESHOLD_START, DL_L1, DL_TARGET_L0 = 1000, 2000, 1000, 0.1, 20


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_run_args(p, lr=None, out_name="dl",
                        lr_help="both sides; default 2e-4/sqrt(d_sae/2^14) "
                                "(dictionary_learning's TopK default and ours)")
    p.add_argument("--trainer", choices=list(OURS), default="topk")
    p.add_argument("--warmup-steps", type=int, default=None,
                   help=f"peer lr warm-up (default its {DL_WARMUP}, or steps-1 if shorter)")
    p.add_argument("--decay-start", type=int, default=None,
                   help="peer lr decay start step (default its None: no decay)")
    p.add_argument("--threshold-start-step", type=int, default=None,
                   help=f"peer θ EMA start (default min({DL_THRESHOLD_START}, steps // 2))")
    p.add_argument("--auxk-alpha", type=float, default=1 / 32,
                   help="peer AuxK weight (its default 1/32, ours too)")
    p.add_argument("--sparsity-warmup-steps", type=int, default=None,
                   help=f"standard, gated, jumprelu: peer λ warm-up (default its "
                        f"{DL_SPARSITY_WARMUP}, or steps-1 if shorter; 0 for none)")
    p.add_argument("--peer-l1", type=common.floats, default=[DL_L1],
                   help=f"standard, gated: dictionary_learning l1_penalty list (default its "
                        f"{DL_L1})")
    p.add_argument("--peer-target-l0", type=common.floats, default=[DL_TARGET_L0],
                   help=f"jumprelu: dictionary_learning target_l0 list (default its "
                        f"{DL_TARGET_L0})")
    p.add_argument("--l1", type=common.floats, default=None,
                   help="standard, gated, jumprelu: our --l1 list (default ours: 2, 2, 3)")
    p.add_argument("--penalty", choices=["l1-unit-decoder", "decoder-norm"],
                   default="l1-unit-decoder",
                   help="standard: our --penalty (default l1-unit-decoder, StandardTrainer's)")
    p.add_argument("--normalize-activations", action="store_true",
                   help="trainSAE's normalize_activations (default off, as its default)")
    p.add_argument("--skip-ours", action="store_true", help="peer only (development)")
    p.add_argument("--skip-peer", action="store_true", help="ours only (development)")
    p.add_argument("--peer-from", nargs="+", default=[], metavar="JSON",
                   help="reuse the peer runs recorded in these earlier --json files (same "
                        "stores, trainer, sizes, steps, lr, seed, threads and peer settings; "
                        "a coefficient not found there is trained): the peer is deterministic "
                        "under the seed")
    args = p.parse_args(argv)
    if args.lr is None:
        args.lr = 2e-4 / (args.d_sae / 2 ** 14) ** 0.5
    if args.warmup_steps is None:
        args.warmup_steps = min(DL_WARMUP, args.steps - 1)
    if args.sparsity_warmup_steps is None:
        args.sparsity_warmup_steps = min(DL_SPARSITY_WARMUP, args.steps - 1)
    if args.threshold_start_step is None:
        args.threshold_start_step = min(DL_THRESHOLD_START, args.steps // 2)
    if args.trainer == "jumprelu":  # peer_l1 is the peer's coefficient list from here on
        args.peer_l1 = args.peer_target_l0
    if args.l1 is None:
        args.l1 = [3.0 if args.trainer == "jumprelu" else 2.0]
    if args.trainer not in PENALTY:
        args.peer_l1, args.l1 = [None], [None]
    return args


class Batches:
    """Our batch sequence as dictionary_learning's `data`: re-iterable from step 0 (trainSAE's
    normalize_activations reads batches once for its norm factor, then trains from the start),
    endless like its ActivationBuffer; trainSAE stops after `steps`."""

    def __init__(self, x: torch.Tensor, batch_size: int, seed: int):
        self.x, self.batch_size, self.seed = x, batch_size, seed

    def __iter__(self):
        plan = common.BatchPlan(self.x.shape[0], self.batch_size, self.seed)
        step = 0
        while True:
            yield self.x[plan.rows(step)]
            step += 1


# What must match for a recorded peer run to stand in for a new one.
SAME = ("train", "test", "trainer", "d_sae", "k", "steps", "batch_size", "lr", "threads", "seed",
        "warmup_steps", "decay_start", "threshold_start_step", "auxk_alpha",
        "sparsity_warmup_steps", "normalize_activations")


def recorded_peer_runs(args) -> dict:
    """coefficient -> a peer run from the --peer-from files made with the same settings; a
    file made with others is refused, naming the first difference."""
    return {r["coefficient"]: {**r, "from": path}
            for path, rec in common.recorded_runs(args, SAME) for r in rec["peer"]}


def peer_config(args, d_in: int, l1: float | None) -> dict:
    # The Matryoshka trainer is not re-exported by `dictionary_learning.trainers`.
    from dictionary_learning import trainers  # noqa: PLC0415
    from dictionary_learning.trainers import matryoshka_batch_top_k  # noqa: PLC0415
    trainer_name, _ = PEER_CLASSES[args.trainer]
    module = matryoshka_batch_top_k if args.trainer == "matryoshka" else trainers
    cfg = {"trainer": getattr(module, trainer_name), "steps": args.steps,
           "activation_dim": d_in, "dict_size": args.d_sae, "layer": 15,
           "lm_name": "SmolLM2-135M-Instruct", "submodule_name": "blocks.15.hook_mlp_out",
           "lr": args.lr, "warmup_steps": args.warmup_steps, "decay_start": args.decay_start,
           "seed": args.seed, "device": "cpu"}
    if args.trainer in L1_PENALTY:
        cfg.update(l1_penalty=l1, sparsity_warmup_steps=args.sparsity_warmup_steps or None)
    elif args.trainer == "jumprelu":
        cfg.update(target_l0=l1, sparsity_warmup_steps=args.sparsity_warmup_steps or None)
    else:
        cfg.update(k=args.k, auxk_alpha=args.auxk_alpha,
                   threshold_start_step=args.threshold_start_step)
    if args.trainer == "matryoshka":
        cfg.update(group_fractions=MATRYOSHKA_FRACTIONS)
    return cfg


def train_peer(x: torch.Tensor, args, l1: float | None, out: Path) -> tuple:
    """One dictionary_learning trainer driven by its own trainSAE; returns (ae, stats)."""
    from dictionary_learning.training import trainSAE  # noqa: PLC0415
    from dictionary_learning.utils import load_dictionary  # noqa: PLC0415

    cfg = peer_config(args, x.shape[1], l1)
    recorded = {k: (v.__name__ if isinstance(v, type) else v) for k, v in cfg.items()}
    t0 = time.perf_counter()
    trainSAE(Batches(x, args.batch_size, args.seed), [cfg], steps=args.steps,
             save_dir=str(out), normalize_activations=args.normalize_activations,
             device="cpu")
    secs = time.perf_counter() - t0
    ae, saved_cfg = load_dictionary(str(out / "trainer_0"), device="cpu")
    ae.eval()
    stats = {"train_s": secs, "coefficient": l1, "peer_config": recorded,
             "trainer_config": saved_cfg["trainer"]}
    if hasattr(ae, "threshold") and ae.threshold.numel() == 1:
        stats["threshold"] = float(ae.threshold)
    return ae, stats


def saelens_weights(ae, args) -> tuple[str, dict, dict | None]:
    """(SAELens architecture, tensors, extra cfg) of a trained dictionary_learning SAE.
    nn.Linear keeps encoder.weight (d_sae, d_in) and decoder.weight (d_in, d_sae); SAELens
    wants W_enc (d_in, d_sae) and W_dec (d_sae, d_in). Every class but JumpReluAutoEncoder
    subtracts b_dec from x before encoding and adds it back after decoding (SAELens'
    apply_b_dec_to_input)."""
    trainer = args.trainer
    if trainer == "jumprelu":
        # SAELens encodes x − b_dec: fold b_dec·W_enc into b_enc so it encodes the peer's x.
        assert not ae.apply_b_dec_to_input
        return "jumprelu", {"W_enc": ae.W_enc, "b_enc": ae.b_enc + ae.b_dec @ ae.W_enc,
                            "W_dec": ae.W_dec, "b_dec": ae.b_dec,
                            "threshold": ae.threshold}, None
    if trainer == "gated":  # SAELens' gated encoding is the same
        return "gated", {"W_enc": ae.encoder.weight.T, "b_gate": ae.gate_bias,
                         "r_mag": ae.r_mag, "b_mag": ae.mag_bias,
                         "W_dec": ae.decoder.weight.T, "b_dec": ae.decoder_bias}, None
    if trainer == "matryoshka":  # plain parameters, not nn.Linear
        tensors = {"W_enc": ae.W_enc, "b_enc": ae.b_enc, "W_dec": ae.W_dec, "b_dec": ae.b_dec}
    else:
        tensors = {"W_enc": ae.encoder.weight.T, "b_enc": ae.encoder.bias,
                   "W_dec": ae.decoder.weight.T,
                   "b_dec": ae.bias if trainer == "standard" else ae.b_dec}
    if trainer == "standard":
        return "standard", tensors, None
    if trainer == "topk":
        return "topk", tensors, {"k": int(ae.k), "rescale_acts_by_decoder_norm": False}
    # BatchTopK and Matryoshka at inference: ReLU(pre) · (ReLU(pre) > θ), one scalar θ.
    # SAELens' jumprelu is ReLU(pre) · (pre > θ_i): the same for θ >= 0 (and for θ < 0,
    # where both keep ReLU).
    tensors["threshold"] = torch.full((args.d_sae,), float(ae.threshold))
    return "jumprelu", tensors, None


def to_saelens(ae, args, path: Path, meta: dict) -> Path:
    """dictionary_learning's weights as an SAELens folder (`saelens_weights`)."""
    architecture, tensors, extra_cfg = saelens_weights(ae, args)
    return common.save_saelens_folder(
        path, architecture, tensors, store=meta, extra_cfg=extra_cfg,
        trained_with=f"dictionary-learning {version('dictionary-learning')} ({args.trainer})")


@torch.no_grad()
def native_eval(ae, x: torch.Tensor, d_sae: int) -> dict:
    """The peer scored through its own encode/decode (checks the SAELens conversion)."""
    return common.evaluate(ae.encode, ae.decode, x, d_sae)


def input_scale(x: torch.Tensor) -> float:
    """s = √d_in / E‖x − x̄‖: the factor our `sae train` scales inputs by."""
    d = x.shape[1]
    return d ** 0.5 / (x - x.mean(0)).norm(dim=1).mean().item()


def main(argv=None):
    args = parse_args(argv)
    out_dir, load_before, x_train, x_test = common.open_run(args, f"dl-{args.trainer}")
    meta = common.store_meta(args.train)
    scale = input_scale(x_train)
    print(f"our input scale s = {scale:.4f}", file=sys.stderr)

    result = {"bench": f"dictionary_learning_{args.trainer}", "args": vars(args),
              "versions": {"dictionary-learning": version("dictionary-learning"),
                           "sae-lens": version("sae-lens"), "torch": torch.__version__,
                           "sae": common.sae_version(args.sae_bin)},
              "train_rows": x_train.shape[0], "test_rows": x_test.shape[0],
              "d_in": x_train.shape[1], "threads": args.threads, "our_input_scale": scale,
              "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "unset (libgomp default)"),
              "load_before": load_before, "peer": [], "ours": []}
    recorded = recorded_peer_runs(args)
    if not args.skip_peer:
        for c in args.peer_l1:
            tag = "peer" + (f"-l{c:g}" if c is not None else "")
            if c in recorded:
                r = recorded[c]
                print(f"{tag}: from {r['from']}: {r['train_s']:.1f}s, FVU {r['fvu']:.4f}, "
                      f"L0 {r['l0']:.1f}", file=sys.stderr)
                result["peer"].append(r)
                continue
            ae, r = train_peer(x_train, args, c, out_dir / f"{tag}-native")
            folder = to_saelens(ae, args, out_dir / tag, meta)
            r.update(common.evaluate_folder(folder, x_test))
            native = native_eval(ae, x_test, args.d_sae)
            r["native_fvu"], r["native_l0"] = native["fvu"], native["l0"]
            r["native_dead_frac"] = native["dead_frac"]
            print(f"{tag}: {r['train_s']:.1f}s, FVU {r['fvu']:.4f} (native "
                  f"{r['native_fvu']:.4f}), L0 {r['l0']:.1f} (native {r['native_l0']:.1f})"
                  + (f", θ {r['threshold']:.4g}" if "threshold" in r else ""), file=sys.stderr)
            if args.trainer in THRESHOLD and r.get("threshold", 0) < 0:
                print(f"warning: the peer's θ was never learned (threshold_start_step "
                      f"{args.threshold_start_step} >= steps - 1): its inference is ReLU",
                      file=sys.stderr)
            result["peer"].append(r)
    if not args.skip_ours:
        for c in args.l1:
            tag = "ours" + (f"-l{c:g}" if c is not None else "")
            extra = ["--penalty", args.penalty] if args.trainer == "standard" else None
            r = common.run_ours(
                args.sae_bin, args.train, out_dir / tag, arch=OURS[args.trainer],
                d_sae=args.d_sae, k=None if args.trainer in PENALTY else args.k, l1=c,
                steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                threads=args.threads, log=out_dir / f"{tag}.log", extra=extra)
            r["coefficient"] = c
            r.update(common.evaluate_folder(out_dir / tag, x_test))
            print(f"{tag}: {r['train_s']:.1f}s, FVU {r['fvu']:.4f}, L0 {r['l0']:.1f}",
                  file=sys.stderr)
            if args.trainer in THRESHOLD and result["peer"]:
                r["at_peer_l0"] = common.evaluate_folder_at_l0(
                    out_dir / tag, x_test, result["peer"][0]["l0"])
            result["ours"].append(r)
    result["load_after"] = common.machine_load()
    common.write_json(args.json, result)
    print(report(result, args))


def report(result: dict, args) -> str:
    peer_name = f"dictionary_learning {result['versions']['dictionary-learning']}"
    lines = [f"{peer_name} {args.trainer} vs sae {OURS[args.trainer]}, d_in {result['d_in']}, "
             f"d_sae {args.d_sae}" + (f", k {args.k}" if args.trainer not in PENALTY else "")
             + f", {args.steps} steps x batch {args.batch_size}, lr {args.lr:g}, "
             f"{args.threads} threads; train {result['train_rows']} rows, held-out "
             f"{result['test_rows']} rows; load {result['load_before']} -> "
             f"{result['load_after']}", ""]
    peers, ours = result["peer"], result["ours"]
    if args.trainer not in PENALTY:
        if peers and ours:
            lines.append(common.markdown_table(common.PAIR_HEADERS, [common.pair_row(
                f"{peer_name} {args.trainer} vs sae {OURS[args.trainer]}", peers[0], ours[0])]))
            at = ours[0].get("at_peer_l0")
            if at:
                lines += ["", f"ours at the peer's L0 (every θ × {at['theta_scale']:.3f}): L0 "
                          f"{at['l0']:.1f}, FVU {at['fvu']:.4f} against the peer's "
                          f"{peers[0]['fvu']:.4f} (ours/peer {at['fvu'] / peers[0]['fvu']:.3f})"]
        elif peers:
            p = peers[0]
            lines.append(f"peer: FVU {p['fvu']:.4f}, L0 {p['l0']:.1f}, dead "
                         f"{100 * p['dead_frac']:.1f}%, {p['train_s']:.1f}s")
        elif ours:
            o = ours[0]
            lines.append(f"ours: FVU {o['fvu']:.4f}, L0 {o['l0']:.1f}, dead "
                         f"{100 * o['dead_frac']:.1f}%, {o['train_s']:.1f}s")
        for p in peers:
            lines += ["", f"(peer through its own encode/decode: FVU {p['native_fvu']:.4f}, "
                      f"L0 {p['native_l0']:.1f}; SAELens-evaluated FVU {p['fvu']:.4f}, "
                      f"|Δ| {abs(p['native_fvu'] - p['fvu']):.2e}"
                      + (f"; θ {p['threshold']:.4g}" if args.trainer in THRESHOLD else "")
                      + ")"]
        return "\n".join(lines)
    peer_curve = [(p["l0"], p["fvu"]) for p in peers]
    our_curve = [(o["l0"], o["fvu"]) for o in ours]
    peer_s = sum(p["train_s"] for p in peers) / len(peers) if peers else None
    peer_coef = "target L0" if args.trainer == "jumprelu" else "λ"
    ours_label = (f"relu ours ({args.penalty})" if args.trainer == "standard"
                  else f"{OURS[args.trainer]} ours")
    rows = []
    for p in peers:
        rows.append([f"{args.trainer} {peer_name} ({peer_coef})", f"{p['coefficient']:g}",
                     common.fmt(p["l0"], ".1f"), common.fmt(p["fvu"]),
                     common.fmt(100 * p["dead_frac"], ".1f"), common.fmt(p["train_s"], ".1f"),
                     "", "", ""])
    for o in ours:
        at = common.interpolate_fvu(peer_curve, o["l0"])
        rows.append([ours_label, f"{o['coefficient']:g}",
                     common.fmt(o["l0"], ".1f"), common.fmt(o["fvu"]),
                     common.fmt(100 * o["dead_frac"], ".1f"), common.fmt(o["train_s"], ".1f"),
                     common.fmt(at), common.fmt(o["fvu"] / at if at else None, ".3f"),
                     common.fmt(peer_s / o["train_s"] if peer_s else None, ".2f")])
    lines.append(common.markdown_table(
        ["run", "λ", "L0", "FVU", "dead %", "train s", "peer FVU @ this L0",
         "FVU ours/peer @ L0", "speed (mean peer s / ours s)"], rows))
    for p in peers:
        at = common.interpolate_fvu(our_curve, p["l0"])
        lines += ["", f"peer {peer_coef} {p['coefficient']:g}: " + (
            f"ours interpolated at the peer's L0 {p['l0']:.1f}: FVU {at:.4f} against the "
            f"peer's {p['fvu']:.4f} (ours/peer {at / p['fvu']:.3f})" if at else
            f"L0 {p['l0']:.1f} is outside our runs' L0 range")
            + f"; through its own encode/decode FVU {p['native_fvu']:.4f} "
              f"(|Δ| {abs(p['native_fvu'] - p['fvu']):.2e})"]
    if args.trainer in L1_PENALTY:
        lines += ["", f"(our λ acts on inputs scaled by s = {result['our_input_scale']:.3f}: "
                      f"ours λ ≈ dictionary_learning's λ·s)"]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
