"""Shared pieces of the peer benchmarks (sparsify_topk.py, saelens.py).

- `load_store`: an sae-lib activation store (`sae collect`) as one float32 torch tensor.
- `BatchPlan`: the batch sequence the peers train on, built like ours (sae-lib
  `train/source.rs` BatchPlan): a fresh seeded permutation of all rows every epoch, batches
  taken in order, the epoch's last batch short. Only the permutation differs (torch's RNG,
  not ChaCha8), so both sides see the same number of steps and the same rows per step.
- `evaluate`: the ONE evaluator used for both sides, on the held-out store:
  FVU = Σ‖x − x̂‖² / Σ‖x − mean(x)‖² over the whole set, L0 = mean number of active features
  per row, dead = fraction of features that never fire on the whole set.
- `load_saelens_folder`: an SAE folder in SAELens' format (what `sae train` writes, what the
  peers are converted to) loaded with SAELens' own `SAE.load_from_disk`, so it is encoded and
  decoded exactly as SAELens does for that architecture.
- `save_saelens_folder`: writes raw weights as an SAELens-format folder (cfg.json +
  sae_weights.safetensors) that `sae eval` / `sae_lens.SAE.load_from_disk` both read.
- `run_ours`: runs `sae train` as a timed subprocess with every hyperparameter explicit.
- `markdown_table` and friends: the printed report.

Threads: the peers run torch with `torch.set_num_threads(--threads)` and, unless the
environment says otherwise, OMP_WAIT_POLICY=PASSIVE (set by each script before torch is
imported). On this 2-core machine shared with other work, libgomp's default spin-waiting made a
2-thread torch 100x slower on small element-wise ops (0.14 ms -> 15.5 ms for a 300k-element
multiply-add) and sparsify's training step 4.5x slower (0.78 s -> 0.17 s at d_sae 4096, batch
1024) whenever a third runnable thread was around; our side's thread pool already limits its
spinning (CANDLE_BARRIER_POOL_SPIN_LIMIT, set by `sae`). Set OMP_WAIT_POLICY=ACTIVE to measure
torch's default.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parents[4]
DEFAULT_BIN = ROOT / "target" / "release" / "sae"
DEFAULT_STORES = ROOT / ".cache" / "peers"


# ----------------------------------------------------------------------------- data

def store_meta(path: str | Path) -> dict:
    with open(Path(path) / "meta.json") as f:
        return json.load(f)


def load_store(path: str | Path) -> torch.Tensor:
    """Every row of an sae-lib store, in store order, as a (rows, d) float32 tensor."""
    path = Path(path)
    meta = store_meta(path)
    parts = []
    for shard in meta["shards"]:
        t = load_file(str(path / shard["file"]))["activations"]
        if tuple(t.shape) != (shard["rows"], meta["d"]):
            raise ValueError(f"{shard['file']}: shape {tuple(t.shape)}, meta.json says "
                             f"{(shard['rows'], meta['d'])}")
        parts.append(t.to(torch.float32))
    x = torch.cat(parts).contiguous()
    if x.shape[0] != meta["rows"]:
        raise ValueError(f"{path}: {x.shape[0]} rows, meta.json says {meta['rows']}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{path}: non-finite activations")
    return x


class BatchPlan:
    """Row indices of each step, like sae-lib's BatchPlan: per-epoch seeded permutation,
    batches in order, the last batch of an epoch short (so no row is seen twice per epoch)."""

    def __init__(self, n: int, batch_size: int, seed: int):
        self.n, self.batch_size, self.seed = n, max(1, min(batch_size, n)), seed
        self.per_epoch = math.ceil(n / self.batch_size)
        self._epoch, self._order = None, None

    def rows(self, step: int) -> torch.Tensor:
        epoch, i = divmod(step, self.per_epoch)
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._epoch, self._order = epoch, torch.randperm(self.n, generator=g)
        return self._order[i * self.batch_size:(i + 1) * self.batch_size]

    def sizes(self, steps: int) -> list[int]:
        return [min(self.batch_size, self.n - (s % self.per_epoch) * self.batch_size)
                for s in range(steps)]


# ----------------------------------------------------------------------------- evaluation

@torch.no_grad()
def evaluate(encode, decode, x: torch.Tensor, d_sae: int, chunk: int = 2048) -> dict:
    """FVU, L0 and dead fraction of one SAE on the held-out rows `x` (raw model units).
    `encode(x) -> f (rows, d_sae)` and `decode(f) -> x̂`. Sums in float64."""
    mean = x.double().mean(0)
    err = var = l0 = 0.0
    fired = torch.zeros(d_sae, dtype=torch.bool)
    for i in range(0, x.shape[0], chunk):
        xb = x[i:i + chunk]
        f = encode(xb)
        if f.is_sparse:
            f = f.to_dense()
        xh = decode(f)
        err += (xb.double() - xh.double()).pow(2).sum().item()
        var += (xb.double() - mean).pow(2).sum().item()
        active = f != 0
        l0 += active.sum().item()
        fired |= active.any(0)
    return {"fvu": err / var, "l0": l0 / x.shape[0],
            "dead_frac": 1.0 - fired.float().mean().item(), "rows": x.shape[0]}


def load_saelens_folder(path: str | Path):
    """The SAE in `path` (SAELens format) as SAELens' own inference SAE."""
    from sae_lens import SAE  # noqa: PLC0415 (heavy import, only when needed)
    return SAE.load_from_disk(str(path), device="cpu")


def evaluate_folder(path: str | Path, x: torch.Tensor) -> dict:
    """Scores the SAELens-format folder `path` on `x` with SAELens' encode/decode."""
    sae = load_saelens_folder(path)
    sae.eval()
    out = evaluate(sae.encode, sae.decode, x, sae.cfg.d_sae)
    out["architecture"] = sae.cfg.architecture()
    return out


def evaluate_folder_at_l0(path: str | Path, x: torch.Tensor, target_l0: float,
                          iters: int = 40) -> dict | None:
    """Scores a threshold SAE (SAELens "jumprelu": BatchTopK, Matryoshka, JumpReLU) at a given
    held-out L0: every θ is multiplied by one factor, found by bisection, until L0 on `x` is
    `target_l0`, as one would calibrate a threshold to a sparsity budget. Two such SAEs can then
    be compared at equal L0. None for an SAE without thresholds."""
    sae = load_saelens_folder(path)
    sae.eval()
    theta = getattr(sae, "threshold", None)
    if theta is None:
        return None
    base = theta.data.clone()

    def at(scale: float) -> dict:
        theta.data = base * scale
        return evaluate(sae.encode, sae.decode, x, sae.cfg.d_sae)

    lo, hi = 0.0, 1.0  # L0 falls as the factor grows
    while at(hi)["l0"] > target_l0 and hi < 1e6:
        lo, hi = hi, hi * 2
    for _ in range(iters):
        mid = (lo + hi) / 2
        if at(mid)["l0"] > target_l0:
            lo = mid
        else:
            hi = mid
    out = at(hi)
    out["theta_scale"] = hi
    return out


def save_saelens_folder(path: str | Path, architecture: str, tensors: dict, *,
                        store: dict | None = None, extra_cfg: dict | None = None,
                        trained_with: str = "") -> Path:
    """Writes `tensors` (W_enc (d_in, d_sae), b_enc, W_dec (d_sae, d_in), b_dec, plus the
    architecture's extras) as an SAELens inference folder. `store` (a meta.json) fills the
    metadata `sae eval` needs to splice the SAE into the model."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    d_sae, d_in = tensors["W_dec"].shape
    store = store or {}
    from importlib.metadata import version  # noqa: PLC0415
    cfg = {
        "architecture": architecture, "d_in": d_in, "d_sae": d_sae,
        "dtype": "float32", "device": "cpu", "apply_b_dec_to_input": True,
        "normalize_activations": "none", "reshape_activations": "none",
        "metadata": {
            "sae_lens_version": version("sae-lens"),
            "sae_lens_training_version": version("sae-lens"),
            "model_name": store.get("model", ""), "hook_name": str(store.get("hook", "")),
            "hook_head_index": None, "context_size": store.get("context_size", 0),
            "prepend_bos": False, "dataset_path": store.get("dataset", ""),
            "model_from_pretrained_kwargs": {}, "trained_with": trained_with,
        },
        **(extra_cfg or {}),
    }
    save_file({k: v.detach().to(torch.float32).contiguous() for k, v in tensors.items()},
              str(path / "sae_weights.safetensors"))
    with open(path / "cfg.json", "w") as f:
        json.dump(cfg, f, indent=1)
    return path


# ----------------------------------------------------------------------------- running

@contextmanager
def timer(out: dict, key: str):
    t = time.perf_counter()
    try:
        yield
    finally:
        out[key] = time.perf_counter() - t


def set_threads(threads: int):
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(threads)
    except RuntimeError:
        pass  # already set


def run_ours(sae_bin: str | Path, train_dir: str | Path, out_dir: str | Path, *, arch: str,
             d_sae: int, steps: int, batch_size: int, lr: float, seed: int, threads: int,
             k: int | None = None, l1: float | None = None, extra: list[str] | None = None,
             log: Path | None = None) -> dict:
    """`sae train` as a subprocess, timed whole (process start, store open, init, training,
    final save). Checkpoints only at the end (the peers save nothing mid-run either)."""
    cmd = [str(sae_bin), "train", "--acts", str(train_dir), "--out", str(out_dir),
           "--arch", arch, "--d-sae", str(d_sae), "--lr", repr(lr), "--steps", str(steps),
           "--batch-size", str(batch_size), "--seed", str(seed), "--device", "cpu",
           "--checkpoint-every", str(steps), "--log-every", "50"]
    if k is not None:
        cmd += ["--k", str(k)]
    if l1 is not None:
        cmd += ["--l1", repr(l1)]
    cmd += extra or []
    # A fresh folder: `sae train` refuses to overwrite a run (or resumes) otherwise.
    shutil.rmtree(out_dir, ignore_errors=True)
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads))
    t = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    secs = time.perf_counter() - t
    if log is not None:
        log.write_text(" ".join(cmd) + "\n\n" + proc.stdout + "\n" + proc.stderr)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
        raise RuntimeError(f"sae train failed ({proc.returncode}): {' '.join(cmd)}")
    return {"cmd": cmd, "train_s": secs, "stdout": proc.stdout.strip().splitlines()[-1:]}


def sae_version(sae_bin: str | Path) -> str:
    try:
        return subprocess.run([str(sae_bin), "--version"], capture_output=True,
                              text=True).stdout.strip()
    except OSError:
        return "?"


def machine_load() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "?"


# ----------------------------------------------------------------------------- report

def fmt(v, spec=".4f"):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return format(v, spec)


def markdown_table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |",
             "| " + " | ".join("---" for _ in headers) + " |"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def interpolate_fvu(curve: list[tuple[float, float]], l0: float) -> float | None:
    """FVU at `l0` on a (L0, FVU) curve, linear in log L0 between the two neighbouring
    points; None outside the curve's L0 range."""
    pts = sorted((a, b) for a, b in curve if a > 0)
    if not pts or l0 <= 0:
        return None
    for (a0, f0), (a1, f1) in zip(pts, pts[1:]):
        if a0 <= l0 <= a1:
            if a1 == a0:
                return (f0 + f1) / 2
            t = (math.log(l0) - math.log(a0)) / (math.log(a1) - math.log(a0))
            return f0 + t * (f1 - f0)
    if len(pts) == 1 and abs(pts[0][0] - l0) <= 1e-9 * max(1.0, l0):
        return pts[0][1]
    return None


def pair_row(label: str, peer: dict, ours: dict) -> list:
    """One table row: peer and ours side by side, ours/peer FVU and peer/ours time."""
    return [label,
            fmt(peer["l0"], ".1f"), fmt(peer["fvu"]), fmt(100 * peer["dead_frac"], ".1f"),
            fmt(peer["train_s"], ".1f"),
            fmt(ours["l0"], ".1f"), fmt(ours["fvu"]), fmt(100 * ours["dead_frac"], ".1f"),
            fmt(ours["train_s"], ".1f"),
            fmt(ours["fvu"] / peer["fvu"], ".3f"),
            fmt(peer["train_s"] / ours["train_s"], ".2f")]


PAIR_HEADERS = ["run", "peer L0", "peer FVU", "peer dead %", "peer s",
                "ours L0", "ours FVU", "ours dead %", "ours s",
                "FVU ours/peer", "speed (peer s / ours s)"]


def write_json(path: str | Path | None, obj: dict):
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w") as f:
            json.dump(obj, f, indent=1, default=str)


def read_json(path: str | Path) -> dict:
    with open(path) as f:
        return json.load(f)


def floats(s: str) -> list[float]:
    """A comma list of numbers, as the coefficient flags take them."""
    return [float(v) for v in s.split(",") if v.strip()]


def add_run_args(p, *, lr: float | None, lr_help: str, out_name: str):
    """The flags every peer script takes: the stores, the SAE's size, the run's length and
    learning rate (default `lr`), threads, seed, our binary, and where results go."""
    p.add_argument("--train", default=str(DEFAULT_STORES / "train"))
    p.add_argument("--test", default=str(DEFAULT_STORES / "test"))
    p.add_argument("--d-sae", type=int, default=4096)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--lr", type=float, default=lr, help=lr_help)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sae-bin", default=str(DEFAULT_BIN))
    p.add_argument("--json", default=None)
    p.add_argument("--out-dir", default=None,
                   help=f"where the SAEs are written (default .cache/peers/runs/{out_name}-...)")


def open_run(args, name: str) -> tuple[Path, str, torch.Tensor, torch.Tensor]:
    """The opening every peer script shares: torch's threads set, the run's output folder
    (--out-dir, or one named after `name` and the settings) made, the machine's load noted
    before any work, and the training and held-out rows read."""
    set_threads(args.threads)
    out_dir = Path(args.out_dir or DEFAULT_STORES / "runs" /
                   f"{name}-{args.d_sae}-k{args.k}-s{args.steps}-b{args.batch_size}")
    out_dir.mkdir(parents=True, exist_ok=True)
    load_before = machine_load()
    t = time.perf_counter()
    x_train, x_test = load_store(args.train), load_store(args.test)
    print(f"stores: train {tuple(x_train.shape)}, test {tuple(x_test.shape)} "
          f"({time.perf_counter() - t:.1f}s to read)", file=sys.stderr)
    return out_dir, load_before, x_train, x_test


def recorded_runs(args, same: tuple[str, ...]) -> list[tuple[str, dict]]:
    """The --peer-from records, each with its path; one made with other settings (any key of
    `same`) ends the script, naming the first difference."""
    found = []
    for path in args.peer_from:
        rec = read_json(path)
        for key in same:
            if rec["args"].get(key) != getattr(args, key):
                sys.exit(f"--peer-from {path}: it was run with {key} = "
                         f"{rec['args'].get(key)!r}, this run has {getattr(args, key)!r}")
        found.append((str(path), rec))
    return found
