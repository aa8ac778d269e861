#!/usr/bin/env python3
"""Runs the notebooks the way a reader does: in JupyterLab, in a browser, through the menus.

    bash notebooks/check_jupyterlab.sh [01_setup.ipynb ...]   # installs what is missing first

run_notebooks.py talks to the kernel directly; this goes through what it cannot see: the
JupyterLab server starting the registered "rust" kernel beside the notebook, the notebook
opening, Run > Run All Cells, and the outputs as JupyterLab renders them. For each notebook it
opens a tab in headless Chromium, runs all cells, waits until the kernel is idle and no cell
shows [*], and fails when a cell did not run, an output is an error or stderr or reads like a
panic, or no chart image rendered. It saves a screenshot of the whole notebook to
out/jupyterlab/<name>.png and prints one line per notebook; it also times the first notebook
from opening to its first code cell's result (the wait a reader has after setup_kernel.sh).

JupyterLab serves a temporary copy of notebooks/ (with ../sae-lib and the other top-level
entries linked beside it), so nothing it writes, autosave included, reaches the repository.
The notebooks run on the tiny fixture model (run_notebooks.fixture_env), on SmolLM2 with
--real (run_notebooks.real_env), or, when SAE_MODEL is already set, with the SAE_* variables
passed through untouched.
"""

import argparse
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

from playwright.sync_api import sync_playwright

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from run_notebooks import FAILURE_TEXT, fixture_env, real_env  # noqa: E402

# JupyterLab settings for this server only (JUPYTERLAB_SETTINGS_DIR): every cell in the DOM
# (the default windowing leaves off-screen cells out, which would hide their outputs from the
# checks and the screenshot), no autosave, no news prompt over the outputs.
SETTINGS = {
    "notebook-extension/tracker": {"windowingMode": "none"},
    "docmanager-extension/plugin": {"autosave": False},
    "apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
}

# What the page shows, read in one go: prompts ("[ ]:", "[*]:", "[3]:"), the kernel status,
# open dialogs, and per output whether it is stderr/error, its text, and whether it holds a
# drawn image (an <img> that loaded or an <svg> with a size).
PANEL = ".jp-NotebookPanel:not(.lm-mod-hidden)"
STATE_JS = """() => {
  const panel = document.querySelector('%s');
  const cells = panel ? [...panel.querySelectorAll('.jp-CodeCell')] : [];
  return {
    kernel: panel?.querySelector('.jp-KernelName')?.innerText.trim() || '',
    status: panel?.querySelector('.jp-Notebook-ExecutionIndicator')?.dataset.status || '',
    dialogs: [...document.querySelectorAll('.jp-Dialog')].map(d => d.innerText),
    cells: cells.map(c => ({
      prompt: c.querySelector('.jp-InputArea-prompt')?.innerText.trim() || '',
      outputs: [...c.querySelectorAll('.jp-OutputArea-output')].map(o => ({
        stderr: o.matches('[data-mime-type="application/vnd.jupyter.stderr"]'),
        text: o.innerText,
        chart: [...o.querySelectorAll('img')].some(i => i.complete && i.naturalWidth > 0)
          || [...o.querySelectorAll('svg')].some(s => s.getBoundingClientRect().width > 20),
      })),
    })),
  };
}""" % PANEL


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def chromium():
    """Debian's chromium (its real binary, not the /usr/bin shell wrapper), or $CHROMIUM."""
    for path in (os.environ.get("CHROMIUM"), "/usr/lib/chromium/chromium",
                 shutil.which("chromium")):
        if path and os.path.exists(path):
            return path
    sys.exit("check_jupyterlab: no chromium (apt-get install chromium, or set CHROMIUM=path)")


def stage(tmp):
    """notebooks/ copied to tmp/notebooks, everything else at the top level linked beside it, so
    `../sae-lib` resolves (evcxr canonicalises it back to the repository's sae-lib, the path
    setup_kernel.sh built, so nothing rebuilds)."""
    skip = shutil.ignore_patterns("__pycache__", ".ipynb_checkpoints", "walkthrough", "rendered")
    shutil.copytree(HERE, os.path.join(tmp, "notebooks"), ignore=skip)
    for name in os.listdir(ROOT):
        if name not in ("notebooks", ".git"):
            os.symlink(os.path.join(ROOT, name), os.path.join(tmp, name))
    settings = os.path.join(tmp, "settings")
    for plugin, values in SETTINGS.items():
        path = os.path.join(settings, "@jupyterlab", plugin + ".jupyterlab-settings")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        json.dump(values, open(path, "w"))
    return os.path.join(tmp, "notebooks"), settings


def start_lab(root_dir, settings, env, log):
    port, token = free_port(), secrets.token_hex(16)
    env = dict(env, JUPYTERLAB_SETTINGS_DIR=settings,
               JUPYTERLAB_WORKSPACES_DIR=os.path.join(os.path.dirname(settings), "workspaces"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", "--ip=127.0.0.1",
         f"--port={port}", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root_dir}"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    return proc, f"http://127.0.0.1:{port}", token


def wait_for_lab(proc, base, token, log):
    for _ in range(240):
        if proc.poll() is not None:
            sys.exit(f"check_jupyterlab: JupyterLab exited ({proc.returncode}); log: {log.name}")
        try:
            urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2)
            return
        except OSError:
            time.sleep(0.5)
    sys.exit(f"check_jupyterlab: JupyterLab did not answer within 2 minutes; log: {log.name}")


def stop_lab(proc, base, token):
    """Ends the server and its kernels: /api/shutdown first, since jupyter_client starts each
    kernel in a session of its own, out of reach of a signal to the server's process group."""
    if proc.poll() is None:
        try:
            api(base, token, "/api/shutdown", "POST")
            proc.wait(30)
        except Exception:  # no answer: signal the server (and whatever it started in its group)
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


def api(base, token, path, method="GET"):
    req = urllib.request.Request(f"{base}{path}?token={token}", method=method)
    with urllib.request.urlopen(req, timeout=30) as r:
        body = r.read()
        return json.loads(body) if body else None


def shut_down_kernels(base, token):
    for s in api(base, token, "/api/sessions"):
        api(base, token, f"/api/sessions/{s['id']}", "DELETE")


def click_menu(page, menu, item):
    page.get_by_role("menuitem", name=menu, exact=True).first.click()
    page.get_by_role("menuitem", name=re.compile("^" + re.escape(item))).first.click()


def wait_for_kernel(page, base, token, start, log, notes):
    """Seconds from `start` until the notebook's kernel is idle. The notebooks name the rust
    kernel; JupyterLab asks only when it cannot find it. Run All waits for the kernel, as a
    reader does: clicked while the toolbar still says "No Kernel" (whose status also reads
    idle), it opens the kernel chooser. A kernel that has not answered after 90 s (in `.ci/run`
    a kernel has sat at status "unknown" for minutes beside the CUDA compile, once in a run,
    while the next one started in seconds) is shut down and the page reloaded, as a reader
    would; that is reported as a note with the server log's last lines, and a second stall
    fails the notebook."""
    for attempt in (1, 2):
        deadline = time.time() + 90
        while True:
            state = page.evaluate(STATE_JS)
            if any("Select Kernel" in d for d in state["dialogs"]):
                page.locator(".jp-Dialog select").select_option(label="Rust")
                page.locator(".jp-Dialog").get_by_role("button", name="Select").click()
            elif state["kernel"] not in ("", "No Kernel") and state["status"] == "idle":
                return time.time() - start
            if time.time() > deadline:
                break
            time.sleep(0.25)
        stall = (f"kernel not ready after 90 s: {state['kernel']} {state['status']}"
                 + "".join(f"; dialog: {' '.join(d.split())[:120]}" for d in state["dialogs"]))
        if attempt == 2:
            raise TimeoutError(stall + " (twice)")
        log.flush()
        tail = open(log.name, errors="replace").read().splitlines()[-8:]
        notes.append(stall + "; shut it down and reloaded the page. Server log before:\n"
                     + "\n".join("        " + line[:200] for line in tail))
        shut_down_kernels(base, token)
        page.reload(timeout=120_000)
        page.wait_for_selector(f"{PANEL} .jp-CodeCell", timeout=120_000)


def check(page, base, token, name, timeout, out, log, notes):
    """Opens, runs and inspects one notebook; returns (seconds, first_open, problems, charts)."""
    start = time.time()
    # A workspace of its own, so JupyterLab does not reopen (and start kernels for) the tabs of
    # the notebooks before.
    workspace = "check-" + re.sub(r"\W", "-", name)
    page.goto(f"{base}/lab/workspaces/{workspace}/tree/{name}?token={token}", timeout=120_000)
    page.wait_for_selector(f"{PANEL} .jp-CodeCell", timeout=120_000)
    kernel_ready = wait_for_kernel(page, base, token, start, log, notes)
    # Fold the file browser away, as a reader would, so the notebook gets the page's width.
    files_tab = page.locator(".jp-SideBar.jp-mod-left .lm-TabBar-tab.lm-mod-current")
    if files_tab.count():
        files_tab.first.click()
    click_menu(page, "Run", "Run All Cells")

    problems, first_open, quiet_since = [], None, None
    begun = time.time()
    deadline = begun + timeout
    while True:
        state = page.evaluate(STATE_JS)
        prompts = [c["prompt"] for c in state["cells"]]
        if first_open is None and prompts and re.match(r"\[\d+\]", prompts[0]):
            first_open = (time.time() - start, kernel_ready)
        for d in state["dialogs"]:  # "Kernel Restarting", "Kernel died", ...
            problems.append("dialog: " + " ".join(d.split())[:200])
            page.keyboard.press("Escape")
        # Done once the kernel has been idle with nothing queued for 2 s: evcxr relays a
        # program's stderr from another thread, so it can land just after the cell's reply.
        started = any(p != "[ ]:" for p in prompts)
        busy = not started or state["status"] != "idle" or any("*" in p for p in prompts)
        quiet_since = None if busy else (quiet_since or time.time())
        if problems or quiet_since and time.time() - quiet_since > 2:
            break
        if not started and time.time() > begun + 60:
            problems.append("Run > Run All Cells started nothing within a minute")
            break
        if time.time() > deadline:
            problems.append(f"still running after {timeout} s (kernel {state['status']})")
            break
        time.sleep(0.25)

    charts = 0
    for i, cell in enumerate(state["cells"]):
        if not re.match(r"\[\d+\]", cell["prompt"]):
            problems.append(f"code cell {i + 1} did not run ({cell['prompt']})")
        for o in cell["outputs"]:
            charts += o["chart"]
            first = (o["text"].strip().splitlines() or [""])[0]
            m = FAILURE_TEXT.search(o["text"])
            if o["stderr"]:
                problems.append(f"code cell {i + 1}: error or stderr output: {first[:200]}")
            elif m:
                problems.append(f"code cell {i + 1}: {o['text'][m.start():].splitlines()[0][:200]}")
    if not charts:
        problems.append("no chart image in any output")
    screenshot(page, png_path(out, name))
    return time.time() - start, first_open, problems, charts


def png_path(out, name):
    return os.path.join(out, os.path.splitext(os.path.basename(name))[0] + ".png")


def screenshot(page, path):
    """The whole notebook: JupyterLab scrolls inside a fixed-height page, so the window is made
    as tall as the notebook's cells first (Chromium caps a capture at 16,384 px)."""
    # Everything outside the notebook's scroller (menus, toolbar, status bar) plus the cells.
    height = page.evaluate("""() => {
      const outer = document.querySelector('%s .jp-WindowedPanel-outer');
      const cells = document.querySelectorAll('%s .jp-Cell');
      if (!outer || !cells.length) return window.innerHeight;
      const content = cells[cells.length - 1].getBoundingClientRect().bottom
        - outer.getBoundingClientRect().top + outer.scrollTop;
      return window.innerHeight - outer.clientHeight + content;
    }""" % (PANEL, PANEL))
    page.set_viewport_size({"width": 1280, "height": min(int(height) + 40, 16000)})
    page.evaluate(f"() => document.querySelector('{PANEL} .jp-WindowedPanel-outer')"
                  "?.scrollTo(0, 0)")
    page.wait_for_timeout(1000)
    page.screenshot(path=path)
    page.set_viewport_size({"width": 1280, "height": 900})


def run_one(browser, base, token, name, timeout, out, log, notes):
    """check() in a tab of its own; a page that never loads or a menu that never opens counts
    as a failure of that notebook, and its kernel is shut down whatever happened, since two
    kernels would contend for the one build folder."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    start = time.time()
    try:
        return check(page, base, token, name, timeout, out, log, notes)
    except Exception as e:  # playwright's TimeoutError, or our own
        page.screenshot(path=png_path(out, name))
        return time.time() - start, None, [f"{type(e).__name__}: {str(e).splitlines()[0]}"], 0
    finally:
        shut_down_kernels(base, token)
        page.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("notebooks", nargs="*", help="default: notebooks/[0-9]*.ipynb")
    ap.add_argument("--out", default=os.path.join(ROOT, "out", "jupyterlab"))
    ap.add_argument("--timeout", type=int, default=1800, help="seconds per notebook")
    ap.add_argument("--real", action="store_true",
                    help="SmolLM2 on WikiText-2, as run_notebooks.py --real (minutes a notebook)")
    ap.add_argument("--max-first-open", type=float, default=0, metavar="SECONDS",
                    help="fail when the first notebook's first cell takes longer (default: "
                         "only report it; a busy 2-core machine doubles it)")
    args = ap.parse_args()
    # Paths inside notebooks/ as JupyterLab serves them (tests/error_cell.ipynb works too).
    names = [os.path.relpath(os.path.abspath(n), HERE) if os.path.exists(n) else n
             for n in args.notebooks] or sorted(
        f for f in os.listdir(HERE) if re.match(r"\d.*\.ipynb$", f))
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    env = dict(os.environ)
    if args.real:
        env.update(real_env(out))
    elif "SAE_MODEL" in env:  # the reader's own settings; keep what the notebooks save
        env.setdefault("SAE_OUT", os.path.join(HERE, "walkthrough"))
    else:
        env.update(fixture_env(out))
    # SIGTERM/SIGHUP end the run through the `finally` below, like Ctrl-C does.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda *_: sys.exit(130))

    tmp = tempfile.mkdtemp(prefix="sae-jupyterlab-")
    log = open(os.path.join(out, "jupyterlab.log"), "w")
    lab, base, token, failed, begun = None, "", "", 0, time.time()
    try:
        root_dir, settings = stage(tmp)
        lab, base, token = start_lab(root_dir, settings, env, log)
        wait_for_lab(lab, base, token, log)
        print(f"JupyterLab at {base} serving a copy of notebooks/ (log: {log.name})", flush=True)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium())
            for n, name in enumerate(names):
                if not os.path.exists(os.path.join(root_dir, name)):
                    print(f"{name}: FAILED: no such notebook in notebooks/")
                    failed += 1
                    continue
                notes = []
                seconds, first_open, problems, charts = run_one(
                    browser, base, token, name, args.timeout, out, log, notes)
                limit = args.max_first_open
                if n == 0 and first_open and limit and first_open[0] > limit:
                    problems.append(f"first open took over {limit} s")
                print(f"{name}: {'FAILED' if problems else 'ok'} in {seconds:.0f} s, "
                      f"{charts} chart{'s' * (charts != 1)}", flush=True)
                if n == 0 and first_open is not None:
                    print(f"    first open: {first_open[0]:.1f} s from opening {name} to its first "
                          f"code cell's result (the page and an idle kernel after "
                          f"{first_open[1]:.1f} s; the target is under 30 s)", flush=True)
                for note in notes:
                    print(f"    note: {note}")
                for problem in problems:
                    print(f"    {problem}")
                failed += bool(problems)
            browser.close()
    finally:
        if lab is not None:
            stop_lab(lab, base, token)
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"screenshots in {out}; {time.time() - begun:.0f} s in all")
    print(f"jupyterlab: {len(names) - failed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
