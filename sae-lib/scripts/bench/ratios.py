"""Reads JSON lines from ours (impl != "torch") and the reference (impl == "torch") on stdin,
pairs them by every key except the measurement, and prints a Markdown table of ratios."""
import json
import sys

MEASURES = ("tokens_per_s", "samples_per_s")
rows = [json.loads(l) for l in sys.stdin if l.strip().startswith("{")]
ref = [r for r in rows if r["impl"] == "torch"]


def key(r):
    return tuple(sorted((k, v) for k, v in r.items() if k not in MEASURES + ("impl", "threads", "torch")))


print("| case | ours | PyTorch | ratio |\n|---|---|---|---|")
for r in rows:
    if r["impl"] == "torch":
        continue
    m = next(k for k in MEASURES if k in r)
    for t in ref:
        if key(t) == key(r) or key(t) == tuple(kv for kv in key(r) if kv[0] != "variant"):
            case = ", ".join(f"{k}={v}" for k, v in key(r))
            print(f"| {r['impl']} {case} | {r[m]:.0f} {m} | {t[m]:.0f} | {r[m] / t[m]:.2f}x |")
