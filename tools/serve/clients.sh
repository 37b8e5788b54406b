#!/usr/bin/env bash
# `unclip serve` as outside clients see it, on loopback with the tiny fixture pipeline:
#   1. the official `openai` Python client (tools/serve/openai_client_check.py), with an API key:
#      generations, variations and edits;
#   2. the web page in headless Chromium: it generates from ?prompt=, displays the images, then
#      (?edit=) paints a mask on the first one in its editor and displays the edited images.
# Needs a release `unclip` binary, a Python with `openai` and Debian's chromium; .ci/run installs
# the last two and runs this. Override with UNCLIP_BIN, UNCLIP_PYTHON, CHROMIUM.
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${UNCLIP_BIN:-${CARGO_TARGET_DIR:-target}/release/unclip}
PYTHON=${UNCLIP_PYTHON:-python3}
CHROMIUM=${CHROMIUM:-$(command -v chromium || command -v chromium-browser || true)}
[ -x "$BIN" ] || { echo "clients.sh: no unclip binary at $BIN (cargo build --release first)" >&2; exit 1; }
"$PYTHON" -c "import openai" || { echo "clients.sh: $PYTHON has no openai package (pip install openai)" >&2; exit 1; }
[ -n "$CHROMIUM" ] || { echo "clients.sh: no chromium (apt-get install chromium)" >&2; exit 1; }

WORK=$(mktemp -d)
SERVER_PID=""
cleanup() {
  if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

# One folder with both the text-to-image and the variation parts of the tiny fixtures.
FIX=$PWD/tools/oracle/fixtures
MODEL=$WORK/unclip_tiny_full
mkdir -p "$MODEL"
for part in "$FIX"/unclip_tiny/*; do ln -s "$part" "$MODEL/"; done
ln -s "$FIX/unclip_tiny_variation/image_encoder" "$FIX/unclip_tiny_variation/feature_extractor" "$MODEL/"

free_port() { "$PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

start_server() {  # start_server PORT [extra flags...]
  local port=$1; shift
  "$BIN" serve --model "$MODEL" --addr "127.0.0.1:$port" --prior-steps 3 --decoder-steps 3 \
    --super-res-steps 2 "$@" >"$WORK/server.log" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 100); do
    if "$PYTHON" -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:$port/healthz', timeout=1)" 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  cat "$WORK/server.log" >&2; echo "clients.sh: the server did not come up" >&2; exit 1
}

stop_server() {
  kill -TERM "$SERVER_PID"; wait "$SERVER_PID" || true; SERVER_PID=""
}

passed=0
echo "sk-clients-test" > "$WORK/keys"
PORT=$(free_port)
start_server "$PORT" --api-key-file "$WORK/keys"
"$PYTHON" tools/serve/openai_client_check.py --base-url "http://127.0.0.1:$PORT/v1" \
  --api-key sk-clients-test --size 32x32
passed=$((passed + 1))
stop_server

PORT=$(free_port)
start_server "$PORT"
# Virtual time does not advance while a fetch is pending, so the budget covers generation.
timeout 120 "$CHROMIUM" --headless --no-sandbox --disable-gpu --disable-dev-shm-usage \
  --disable-background-networking --disable-component-update --disable-sync --no-first-run --disable-quic \
  --user-data-dir="$WORK/chromium" --virtual-time-budget=30000 --window-size=1000,800 \
  --dump-dom "http://127.0.0.1:$PORT/?prompt=a+red+circle&edit=a+blue+square" >"$WORK/dom.html" 2>"$WORK/chromium.log" || {
  cat "$WORK/chromium.log" >&2; echo "clients.sh: chromium failed" >&2; exit 1; }
if grep -q 'data-generate="shown"' "$WORK/dom.html" && [ "$(grep -o 'data-loaded="true"' "$WORK/dom.html" | wc -l)" -ge 2 ]; then
  echo "chromium: the page generated and displayed the images"
  passed=$((passed + 1))
else
  echo "clients.sh: the page did not display generated images; its DOM:" >&2
  head -c 4000 "$WORK/dom.html" >&2
  exit 1
fi
metrics=$("$PYTHON" -c "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:$PORT/metrics', timeout=5).read().decode())")
if grep -q 'data-edit="shown"' "$WORK/dom.html" && grep -q 'route="/v1/images/edits",status="200"' <<<"$metrics"; then
  echo "chromium: the page painted a mask, edited an image and displayed the edits"
  passed=$((passed + 1))
else
  echo "clients.sh: the page did not display edited images; its DOM:" >&2
  head -c 4000 "$WORK/dom.html" >&2
  exit 1
fi
if [ -n "${SCREENSHOT:-}" ]; then
  timeout 120 "$CHROMIUM" --headless --no-sandbox --disable-gpu --user-data-dir="$WORK/chromium2" \
    --virtual-time-budget=30000 --window-size=1000,800 --screenshot="$SCREENSHOT" \
    "http://127.0.0.1:$PORT/?prompt=a+red+circle" 2>/dev/null
fi
stop_server
grep -q "shutting down" "$WORK/server.log"
echo "$passed passed, 0 failed"
