#!/usr/bin/env python3
"""Builds sae-lib and its dependencies into the notebook kernel's build folder ahead of time.

    python notebooks/warm_kernel.py      # setup_kernel.sh runs it after registering the kernel

Otherwise the first cell of the first notebook a reader opens sits at [*] for the whole build
(about 16 minutes on 2 cores) with no sign of progress. This starts the registered "rust" kernel
in notebooks/ (where evcxr.toml sets the cell optimisation level, and where `../sae-lib`
resolves), runs the `:dep` lines of 01_setup.ipynb's first code cell (read from the notebook,
so the build matches what the notebooks ask for), prints the elapsed time every 15 s, then
shuts the kernel down. When the build folder is already warm this takes seconds.
"""

import json
import os
import queue
import sys
import time

from jupyter_client.manager import KernelManager

HERE = os.path.dirname(os.path.abspath(__file__))
EVERY = 15  # seconds between progress lines


def dep_lines(path):
    nb = json.load(open(path))
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            source = "".join(cell["source"])
            return [l for l in source.splitlines() if l.strip().startswith(":dep")]
    return []


def minutes(seconds):
    return f"{int(seconds) // 60}m{int(seconds) % 60:02d}s"


def main():
    deps = dep_lines(os.path.join(HERE, "01_setup.ipynb"))
    if not deps:
        sys.exit("warm_kernel.py: no `:dep` line in 01_setup.ipynb's first code cell")
    km = KernelManager(kernel_name="rust")
    km.start_kernel(cwd=HERE)
    kc = km.client()
    kc.start_channels()
    start = time.time()
    try:
        kc.wait_for_ready(timeout=120)
        msg_id = kc.execute("\n".join(deps))
        while True:
            try:
                reply = kc.get_shell_msg(timeout=EVERY)
            except queue.Empty:
                if not km.is_alive():
                    sys.exit("warm_kernel.py: the rust kernel died while building")
                print(f"building sae-lib and its dependencies for the notebook kernel: "
                      f"{minutes(time.time() - start)} ...", flush=True)
                continue
            if reply["parent_header"].get("msg_id") == msg_id:
                break
        # What the kernel printed: cargo's errors arrive as stderr or an error message.
        errors = []
        while True:
            try:
                msg = kc.get_iopub_msg(timeout=1)
            except queue.Empty:
                break
            c = msg["content"]
            if msg["msg_type"] == "error":
                errors.append(f"{c.get('ename')}: {c.get('evalue')}")
            elif msg["msg_type"] == "stream" and c.get("name") == "stderr":
                errors.append(c["text"])
        if reply["content"]["status"] != "ok" or errors:
            print("".join(errors) or reply["content"], file=sys.stderr)
            sys.exit("warm_kernel.py: building the notebooks' dependencies failed: "
                     + "; ".join(deps))
        print(f"notebook kernel ready: sae-lib and its dependencies built "
              f"({minutes(time.time() - start)})", flush=True)
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=False)


if __name__ == "__main__":
    main()
