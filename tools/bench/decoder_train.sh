#!/usr/bin/env bash
# Decoder training step (forward, noise MSE, backward, AdamW) on the mid-size Karlo-shaped decoder,
# unclip against diffusers on the same weights and inputs, same machine and threads, in one run.
#   tools/bench/decoder_train.sh [DIR] [PYTHON]   (DEVICE=cuda UNCLIP=path: on a GPU, with a
#   binary built with --features cuda)
set -euo pipefail
cd "$(dirname "$0")/../.."
DIR=${1:-/tmp/unclip-bench-decoder}
PY=${2:-/work/venv-oracle/bin/python}
[ -f "$DIR/bench_inputs.safetensors" ] || "$PY" tools/bench/unclip_decoder.py --save "$DIR" --threads 1 --runs 1 > /dev/null
DEVICE=${DEVICE:-cpu}
if [ -z "${UNCLIP:-}" ]; then cargo build --release -q; UNCLIP=./target/release/unclip; fi
OUT=$(mktemp)
for T in 1 2; do
  "$PY" tools/bench/decoder_train.py "$DIR" --threads "$T" --runs 3 --device "$DEVICE" >> "$OUT"
  "$UNCLIP" bench decoder-train --dir "$DIR" --threads "$T" --runs 3 --device "$DEVICE" >> "$OUT"
done
"$PY" - "$OUT" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
py = {r["threads"]: r for r in rows if r["impl"] == "pytorch"}
rs = {r["threads"]: r for r in rows if r["impl"] == "unclip"}
print(f"{'threads':>8}{'pytorch ms':>12}{'unclip ms':>12}{'ratio':>8}{'unclip img/s':>14}")
for t in sorted(rs):
    if t in py:
        p, u = py[t]["median_ms"], rs[t]["median_ms"]
        print(f"{t:>8}{p:>12.0f}{u:>12.0f}{u / p:>8.2f}{rs[t]['images_per_s']:>14.2f}")
PY
