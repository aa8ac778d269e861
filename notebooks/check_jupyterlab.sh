#!/usr/bin/env bash
# Opens each notebook in JupyterLab in headless Chromium and runs it through the menus, as a
# reader would (check_jupyterlab.py says what it checks and why it serves a temporary copy).
#   bash notebooks/check_jupyterlab.sh [01_setup.ipynb ...]    → out/jupyterlab/<name>.png
# Runs on the tiny fixture model (--real: SmolLM2; SAE_MODEL set: the SAE_* settings as they
# are). Installs what is missing first: Debian's chromium; a venv (.cache/labenv) with
# JupyterLab and Playwright, which drives that chromium (it cannot download its own browser
# here); and, through setup_kernel.sh, the rust kernel with sae-lib already built, so the first
# notebook is not timed through a cold build.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
if ! command -v chromium >/dev/null; then
    if [ "$(id -u)" != 0 ]; then
        echo "check_jupyterlab: chromium is missing: sudo apt-get install chromium" >&2
        exit 1
    fi
    echo "installing Debian's chromium (apt-get install chromium)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
venv=$root/.cache/labenv
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/requirements-jupyterlab.txt"
export PATH="$venv/bin:$PATH"  # setup_kernel.sh needs jupyter_client
bash "$here/setup_kernel.sh"
# The driver shuts JupyterLab and its kernels down however it ends (Ctrl-C, SIGTERM included).
exec python "$here/check_jupyterlab.py" "$@"
