"""SAELens' own training SAEs and trainer against `sae train`, architecture by architecture,
trained on the same stored activations, scored by one evaluator on held-out activations.

Peer: sae-lens 6.54.12 (torch 2.15.0), its training SAEs from `sae_lens.saes`:
  standard             StandardTrainingSAE            ours: relu
  topk                 TopKTrainingSAE                ours: topk
  batchtopk            BatchTopKTrainingSAE           ours: batchtopk
  jumprelu             JumpReLUTrainingSAE            ours: jumprelu
  gated                GatedTrainingSAE               ours: gated
  matryoshka_batchtopk MatryoshkaBatchTopKTrainingSAE ours: matryoshka
each driven by SAELens' own `sae_lens.training.sae_trainer.SAETrainer` (not a copy of it):
`SAETrainer(cfg=SAETrainerConfig(...), sae=..., data_provider=<iterator over our batches>)`
and `.fit()`, exactly as `LanguageModelSAETrainingRunner.run` does with its ActivationsStore
as the data provider (`sae_lens/llm_sae_training_runner.py`). So each step is SAELens':
`training_forward_pass` (MSE summed over d_in, mean over the batch, plus the variant's
losses), dead-feature tracking (`n_forward_passes_since_fired`, dead after
`dead_feature_window` = 1000 steps, fed to AuxK / pre-act losses), coefficient warm-up
schedulers (`CoefficientScheduler`), backward, `clip_grad_norm_(…, 1.0)`, Adam step, lr
scheduler step (`sae_lens/training/sae_trainer.py` `_train_step`). BatchTopK's threshold
update happens inside its `training_forward_pass`. At the end `save_inference_model` writes
the inference folder (topk folds the decoder norms; batchtopk and matryoshka become jumprelu
with `threshold`, as SAELens saves them); this save is inside the timed region.
dictionary_learning is not used: SAELens covers every architecture here.

SAELens defaults kept (LanguageModelSAERunnerConfig / the *TrainingSAEConfig classes, 6.54.12):
- init (`TrainingSAE.initialize_weights`): W_dec kaiming-uniform rows rescaled to norm 0.1
  (decoder_init_norm), W_enc = W_dec.T, b_enc = b_dec = 0 (no data-dependent b_dec init), seeded
  here with torch.manual_seed(--seed) just before construction (the runner does not seed it);
- normalize_activations "none" (no input scaling; `--normalize-activations
  expected_average_only_in` switches SAELens' own scaler on);
- Adam betas (0.9, 0.999); lr constant (lr_scheduler_name "constant", no warm-up, no decay);
- no decoder-norm constraint: the penalties multiply by ‖W_dec,i‖ (standard, gated, jumprelu
  tanh), TopK-style variants use rescale_acts_by_decoder_norm = True;
- standard: L1 of f·‖W_dec‖ (lp_norm 1), l1_warm_up_steps 0;
- topk: aux_loss_coefficient 1.0 (AuxK, k_aux = d_in // 2, scaled by min(dead / k_aux, 1));
- batchtopk: + topk_threshold_lr 0.01; matryoshka: + matryoshka_widths (here our default
  nesting d_sae/16, /8, /4, /2, d_sae, since SAELens has no default), use_matryoshka_aux_loss
  False;
- jumprelu: jumprelu_sparsity_loss_mode "step" (DeepMind L0), bandwidth 0.05, init threshold
  0.01 (--peer-init-threshold sets another), l0_warm_up_steps 0, no pre-act loss, STE to
  threshold only;
- gated: l1 on the gate path times ‖W_dec‖ plus the gate-path reconstruction loss.
Shared and passed to both: d_sae, k, lr, steps, batch size, seed, and the batches' rows per
step (common.BatchPlan mirrors ours: per-epoch permutation, short last batch).

Peer threads: torch.set_num_threads(--threads), OMP_WAIT_POLICY=PASSIVE unless set (common.py
explains why).

Ours (`sae train`, timed as a whole subprocess with RAYON_NUM_THREADS=--threads) keeps its own
recipe: inputs scaled to E‖x − x̄‖ = √d_in, free decoder norms for TopK variants (unit-norm
for the penalty variants), λ warm-up over 5% of steps, grad-norm clip 1; b_dec from the
geometric median and lr decay over the last 20% of steps, except relu's: b_dec from zero
(unless the inputs' mean outweighs their spread) and a constant lr.

Penalty-based variants (standard, gated, jumprelu): a coefficient means different things in
the two tools (ours acts on scaled inputs), so the same λ gives different L0. Pass lists:
`--l1 a,b,c` for ours and `--peer-l1 x,y,z` for SAELens (default: the same list); every run's
(L0, FVU) is reported and each of our runs is compared with the peer's FVU interpolated at our
L0 on the peer's L0–FVU curve (linear in log L0; "–" outside the peer's range), and each
peer run that two of ours bracket with ours interpolated at the peer's L0 (so one slow peer
run can be compared). JumpReLU's starting threshold: `--peer-init-threshold` for SAELens',
`--init-threshold` for ours (on our scaled inputs, so the same number is not the same start).
`--b-dec-init` sets where our b_dec starts (SAELens' starts at zero).

Run (from the repository root, stores from make_stores.sh):
  python sae-lib/scripts/bench/peers/saelens.py --arch topk \\
    --train .cache/peers/train --test .cache/peers/test --d-sae 4096 --k 32 --steps 1000 \\
    --batch-size 1024 --lr 4e-4 --threads 2 --seed 0 --sae-bin target/release/sae \\
    --json .cache/peers/results/saelens_topk.json
  ... --arch standard,jumprelu --l1 1,3,10 --peer-l1 1,3,10
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time
from importlib.metadata import version
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # SAETrainer's progress bar
# libgomp threads that sleep instead of spinning (see common.py): before torch is imported
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

OURS = {"standard": "relu", "topk": "topk", "batchtopk": "batchtopk", "jumprelu": "jumprelu",
        "gated": "gated", "matryoshka_batchtopk": "matryoshka"}
COEFF_NAME = {"standard": "l1_coefficient", "gated": "l1_coefficient",
              "jumprelu": "l0_coefficient"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_run_args(p, lr=4e-4, lr_help="both sides", out_name="saelens")
    p.add_argument("--arch", default="topk",
                   help="comma list of: " + ",".join(OURS))
    p.add_argument("--l1", type=common.floats, default=[5.0],
                   help="our sparsity coefficients (penalty variants), comma list")
    p.add_argument("--peer-l1", type=common.floats, default=None,
                   help="SAELens' coefficients (default: --l1)")
    p.add_argument("--matryoshka-widths", type=lambda s: [int(v) for v in s.split(",")],
                   default=None, help="default d_sae/16,/8,/4,/2,d_sae (ours)")
    p.add_argument("--normalize-activations", default="none",
                   choices=["none", "expected_average_only_in"])
    p.add_argument("--peer-init-threshold", type=float, default=None,
                   help="SAELens' jumprelu_init_threshold (default: SAELens' own, 0.01)")
    p.add_argument("--init-threshold", type=float, default=None,
                   help="our jumprelu --init-threshold (default: ours, 0.1 on scaled inputs)")
    p.add_argument("--b-dec-init", default=None,
                   choices=["geometric-median", "mean", "zeros", "zeros-unless-offset"],
                   help="our --b-dec-init (default: the architecture's; SAELens' b_dec "
                        "starts at zero)")
    p.add_argument("--skip-ours", action="store_true", help="peer only (development)")
    p.add_argument("--peer-from", nargs="+", default=[], metavar="JSON",
                   help="reuse the peer runs recorded in these earlier --json files (same "
                        "stores, width, k, steps, batch, lr, seed and threads; a run not "
                        "found there is trained): SAELens is deterministic under the seed and "
                        "its runs take most of a pair's time")
    args = p.parse_args(argv)
    args.arch = [a.strip() for a in args.arch.split(",") if a.strip()]
    bad = [a for a in args.arch if a not in OURS]
    if bad:
        p.error(f"unknown --arch {bad}; choose from {list(OURS)}")
    if args.peer_l1 is None:
        args.peer_l1 = list(args.l1)
    return args


def default_widths(d_sae: int) -> list[int]:
    out = []
    for div in (16, 8, 4, 2, 1):
        w = max(d_sae // div, 1)
        if not out or out[-1] != w:
            out.append(w)
    return out


def make_sae(arch: str, d_in: int, args, coeff: float | None):
    from sae_lens import saes  # noqa: PLC0415
    common_kw = dict(d_in=d_in, d_sae=args.d_sae, dtype="float32", device="cpu",
                     normalize_activations=args.normalize_activations)
    if arch == "standard":
        cfg = saes.StandardTrainingSAEConfig(**common_kw, l1_coefficient=coeff)
        return saes.StandardTrainingSAE(cfg)
    if arch == "gated":
        cfg = saes.GatedTrainingSAEConfig(**common_kw, l1_coefficient=coeff)
        return saes.GatedTrainingSAE(cfg)
    if arch == "jumprelu":
        theta = getattr(args, "peer_init_threshold", None)  # synthetic.py's args lack it
        init = {} if theta is None else {"jumprelu_init_threshold": theta}
        cfg = saes.JumpReLUTrainingSAEConfig(**common_kw, l0_coefficient=coeff, **init)
        return saes.JumpReLUTrainingSAE(cfg)
    if arch == "topk":
        return saes.TopKTrainingSAE(saes.TopKTrainingSAEConfig(**common_kw, k=args.k))
    if arch == "batchtopk":
        return saes.BatchTopKTrainingSAE(
            saes.BatchTopKTrainingSAEConfig(**common_kw, k=float(args.k)))
    if arch == "matryoshka_batchtopk":
        widths = args.matryoshka_widths or default_widths(args.d_sae)
        return saes.MatryoshkaBatchTopKTrainingSAE(saes.MatryoshkaBatchTopKTrainingSAEConfig(
            **common_kw, k=float(args.k), matryoshka_widths=list(widths)))
    raise ValueError(arch)


def train_peer(arch: str, x: torch.Tensor, args, coeff: float | None, out: Path) -> dict:
    """One SAELens training SAE trained by SAELens' SAETrainer on our batch sequence."""
    from sae_lens.config import LoggingConfig, SAETrainerConfig  # noqa: PLC0415
    from sae_lens.training.sae_trainer import SAETrainer  # noqa: PLC0415

    plan = common.BatchPlan(x.shape[0], args.batch_size, args.seed)
    # Endless, like SAELens' ActivationsStore: fit() stops after total_training_samples (our
    # steps' rows); SAELens' own input-norm estimate, if on, reads the first batches.
    batches = (x[plan.rows(s)] for s in itertools.count())
    t0 = time.perf_counter()
    torch.manual_seed(args.seed)
    sae = make_sae(arch, x.shape[1], args, coeff)
    cfg = SAETrainerConfig(
        total_training_samples=sum(plan.sizes(args.steps)),
        train_batch_size_samples=args.batch_size,
        lr=args.lr, lr_end=args.lr / 10,  # the runner's post-init default for lr_end
        device="cpu", logger=LoggingConfig(log_to_wandb=False),
        n_batches_for_norm_estimate=min(1000, args.steps))
    trainer = SAETrainer(cfg=cfg, sae=sae, data_provider=batches)
    trainer.fit()
    sae.save_inference_model(str(out))
    secs = time.perf_counter() - t0
    return {"train_s": secs, "coefficient": coeff, "steps": trainer.n_training_steps,
            "samples": trainer.n_training_samples,
            "saelens_cfg": {k: v for k, v in sae.cfg.to_dict().items() if k != "metadata"}}


# What must match for a recorded peer run to stand in for a new one.
SAME = ("train", "test", "d_sae", "k", "steps", "batch_size", "lr", "threads", "seed",
        "matryoshka_widths", "normalize_activations", "peer_init_threshold")


def recorded_peer_runs(args) -> dict:
    """(arch, coefficient) -> a peer run from the --peer-from files made with the same
    settings; a file made with others is refused, naming the first difference."""
    return {(arch, r["coefficient"]): {**r, "from": path}
            for path, rec in common.recorded_runs(args, SAME)
            for arch, runs in rec["runs"].items() for r in runs["peer"]}


def main(argv=None):
    args = parse_args(argv)
    out_dir, load_before, x_train, x_test = common.open_run(args, "saelens")

    result = {"bench": "saelens", "args": vars(args),
              "versions": {"sae-lens": version("sae-lens"), "torch": torch.__version__,
                           "sae": common.sae_version(args.sae_bin)},
              "train_rows": x_train.shape[0], "test_rows": x_test.shape[0],
              "d_in": x_train.shape[1], "threads": args.threads,
              "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "load_before": load_before,
              "runs": {}}
    recorded = recorded_peer_runs(args)
    for arch in args.arch:
        penalty = arch in COEFF_NAME
        peer_coeffs = args.peer_l1 if penalty else [None]
        our_coeffs = args.l1 if penalty else [None]
        runs = {"peer": [], "ours": []}
        for c in peer_coeffs:
            tag = f"{arch}" + (f"-l{c:g}" if c is not None else "")
            r = recorded.get((arch, c))
            if r is None:
                r = train_peer(arch, x_train, args, c, out_dir / f"peer-{tag}")
                r.update(common.evaluate_folder(out_dir / f"peer-{tag}", x_test))
            print(f"peer {tag}: {r['train_s']:.1f}s, FVU {r['fvu']:.4f}, L0 {r['l0']:.1f}"
                  + (f" (from {r['from']})" if "from" in r else ""), file=sys.stderr)
            runs["peer"].append(r)
        if not args.skip_ours:
            for c in our_coeffs:
                tag = f"{OURS[arch]}" + (f"-l{c:g}" if c is not None else "")
                r = common.run_ours(
                    args.sae_bin, args.train, out_dir / f"ours-{tag}", arch=OURS[arch],
                    d_sae=args.d_sae, k=None if penalty else args.k, l1=c, steps=args.steps,
                    batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                    threads=args.threads, log=out_dir / f"ours-{tag}.log",
                    extra=our_extra(arch, args))
                r["coefficient"] = c
                r.update(common.evaluate_folder(out_dir / f"ours-{tag}", x_test))
                print(f"ours {tag}: {r['train_s']:.1f}s, FVU {r['fvu']:.4f}, "
                      f"L0 {r['l0']:.1f}", file=sys.stderr)
                if not penalty:  # BatchTopK-style: also at the peer's L0 (θ scaled)
                    r["at_peer_l0"] = common.evaluate_folder_at_l0(
                        out_dir / f"ours-{tag}", x_test, runs["peer"][0]["l0"])
                runs["ours"].append(r)
        result["runs"][arch] = runs
    result["load_after"] = common.machine_load()
    common.write_json(args.json, result)
    print(report(result, args))


def our_extra(arch: str, args) -> list[str] | None:
    """Flags of ours beyond the shared ones: relu's penalty as SAELens' standard has it,
    JumpReLU's starting threshold and b_dec's start when given."""
    extra = ["--penalty", "decoder-norm"] if arch == "standard" else []
    if arch == "jumprelu" and args.init_threshold is not None:
        extra += ["--init-threshold", f"{args.init_threshold:g}"]
    if args.b_dec_init is not None:
        extra += ["--b-dec-init", args.b_dec_init]
    return extra or None


def report(result: dict, args) -> str:
    lines = [f"SAELens {result['versions']['sae-lens']} vs sae, d_in {result['d_in']}, "
             f"d_sae {args.d_sae}, {args.steps} steps x batch {args.batch_size}, lr {args.lr:g}, "
             f"{args.threads} threads; train {result['train_rows']} rows, held-out "
             f"{result['test_rows']} rows; load {result['load_before']} -> "
             f"{result['load_after']}", ""]
    pair_rows, curve_rows = [], []
    for arch, runs in result["runs"].items():
        if arch not in COEFF_NAME:
            if runs["ours"]:
                pair_rows.append(common.pair_row(f"{arch} (k {args.k}) vs {OURS[arch]}",
                                                 runs["peer"][0], runs["ours"][0]))
            else:
                p = runs["peer"][0]
                pair_rows.append([f"{arch} (k {args.k})", common.fmt(p["l0"], ".1f"),
                                  common.fmt(p["fvu"]), common.fmt(100 * p["dead_frac"], ".1f"),
                                  common.fmt(p["train_s"], ".1f")] + ["–"] * 6)
            continue
        curve = [(p["l0"], p["fvu"]) for p in runs["peer"]]
        peer_s = sum(p["train_s"] for p in runs["peer"]) / len(runs["peer"])
        for p in runs["peer"]:
            curve_rows.append([f"{arch} SAELens", f"{p['coefficient']:g}",
                               common.fmt(p["l0"], ".1f"), common.fmt(p["fvu"]),
                               common.fmt(100 * p["dead_frac"], ".1f"),
                               common.fmt(p["train_s"], ".1f"), "", "", ""])
        for o in runs["ours"]:
            at = common.interpolate_fvu(curve, o["l0"])
            curve_rows.append([f"{OURS[arch]} ours", f"{o['coefficient']:g}",
                               common.fmt(o["l0"], ".1f"), common.fmt(o["fvu"]),
                               common.fmt(100 * o["dead_frac"], ".1f"),
                               common.fmt(o["train_s"], ".1f"), common.fmt(at),
                               common.fmt(o["fvu"] / at if at else None, ".3f"),
                               common.fmt(peer_s / o["train_s"], ".2f")])
    if pair_rows:
        lines.append(common.markdown_table(common.PAIR_HEADERS, pair_rows))
        lines.append("")
    for arch, runs in result["runs"].items():  # ours at the peer's L0, where the runs allow
        if arch not in COEFF_NAME:  # θ scaled (BatchTopK-style)
            at = runs["ours"][0].get("at_peer_l0") if runs["ours"] else None
            if at:
                lines += [f"{arch}: ours at the peer's L0 (every θ × {at['theta_scale']:.3f}): "
                          f"L0 {at['l0']:.1f}, FVU {at['fvu']:.4f} against the peer's "
                          f"{runs['peer'][0]['fvu']:.4f}", ""]
            continue
        ours_curve = [(o["l0"], o["fvu"]) for o in runs["ours"]]
        for p in runs["peer"]:  # a peer run bracketed by two of ours
            at = common.interpolate_fvu(ours_curve, p["l0"])
            if at:
                lines += [f"{arch} λ {p['coefficient']:g}: ours interpolated at the peer's "
                          f"L0 {p['l0']:.1f}: FVU {at:.4f} against the peer's {p['fvu']:.4f} "
                          f"(ours/peer {at / p['fvu']:.3f})", ""]
    if curve_rows:
        lines.append(common.markdown_table(
            ["run", "λ", "L0", "FVU", "dead %", "train s", "peer FVU @ this L0",
             "FVU ours/peer @ L0", "speed (mean peer s / ours s)"], curve_rows))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
