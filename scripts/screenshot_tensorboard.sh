#!/usr/bin/env bash
# Screenshot of bnexp's TensorBoard dashboard (the Custom Scalars page) over a set of runs,
# taken with headless Chromium (Debian package `chromium`), on loopback only.
#
#   bash scripts/screenshot_tensorboard.sh LOGDIR OUT.png [PAGE]
#   PAGE: custom_scalars (default), scalars, hparams
set -euo pipefail
logdir=$1 out=$2 page=${3:-custom_scalars}
tensorboard=${TENSORBOARD:-$(command -v tensorboard || echo .venv/bin/tensorboard)}
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$tensorboard" --logdir "$logdir" --host 127.0.0.1 --port "$port" >/dev/null 2>&1 &
tb=$!
trap 'kill $tb 2>/dev/null' EXIT
for _ in $(seq 120); do
  curl -sf "http://127.0.0.1:$port/data/runs" | grep -q '"' && break
  sleep 0.5
done
profile=$(mktemp -d)
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking \
  --disable-component-update --disable-sync --user-data-dir="$profile" --hide-scrollbars \
  --window-size=1600,1200 --virtual-time-budget=20000 --screenshot="$out" \
  "http://127.0.0.1:$port/#$page" 2>/dev/null
rm -rf "$profile"
echo "wrote $out"
