#!/usr/bin/env bash
# Screenshots every HTML tutorial that run_notebooks.py exported, with headless Chromium
# (Debian: apt-get install chromium), to look at the rendered charts without a browser.
#   bash notebooks/screenshot.sh [out/notebooks]      → out/notebooks/<name>.png
set -euo pipefail
dir=${1:-out/notebooks}
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
for html in "$dir"/*.html; do
    # The flags keep Chromium off this machine's closed network.
    chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
        --disable-background-networking --disable-component-update --disable-sync \
        --user-data-dir="$profile" --hide-scrollbars --window-size=1100,4200 \
        --screenshot="${html%.html}.png" "file://$(realpath "$html")" 2>/dev/null
    echo "${html%.html}.png"
done
