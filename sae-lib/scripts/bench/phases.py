"""Where a training step's time goes: each phase timed alone between synchronisations of the
device, printed on stderr in the line examples/bench_train.rs prints for ours (the ratio
scripts read stdout only)."""
import sys
import time


def breakdown(phases, sync, step_ms, reps=5):
    """phases: (name, function) pairs, each run once to warm up, then `reps` times."""
    parts = []
    for name, fn in phases:
        fn()
        sync()
        start = time.perf_counter()
        for _ in range(reps):
            fn()
        sync()
        parts.append(f"{name} {(time.perf_counter() - start) * 1e3 / reps:.3f}")
    print(f"breakdown, ms: {', '.join(parts)}, step {step_ms:.3f}", file=sys.stderr)
