#!/usr/bin/env bash
# CLIP embedding throughput, unclip against transformers on the identical model, same machine,
# same thread counts, in one run. Prints each measurement and the ratio
# unclip_time / pytorch_time (below 1.0: unclip is faster).
#   tools/bench/clip_embed.sh [MODEL_DIR] [PYTHON]
set -euo pipefail
cd "$(dirname "$0")/../.."
MODEL=${1:-/tmp/unclip-bench-clip-small}
PY=${2:-/work/venv-oracle/bin/python}
[ -f "$MODEL/model.safetensors" ] || "$PY" tools/bench/clip_embed.py --save "$MODEL" --threads 1 --min-time 0.1 > /dev/null
cargo build --release -q
OUT=$(mktemp)
for T in 1 2; do
  "$PY" tools/bench/clip_embed.py --model "$MODEL" --threads "$T" --min-time 3 >> "$OUT"
  ./target/release/unclip bench clip --model "$MODEL" --threads "$T" --min-time 3 >> "$OUT"
done
"$PY" - "$OUT" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip().startswith("{")]
def key(r): return (r.get("bench"), int(r.get("threads", 0)))
py = {key(r): r for r in rows if "impl" not in r}
rs = {key(r): r for r in rows if r.get("impl") == "unclip"}
print(f"{'bench':<12}{'threads':>8}{'pytorch ms':>12}{'unclip ms':>12}{'ratio':>8}")
for k in sorted(rs):
    if k in py:
        p, u = py[k]["ms_per_batch_median"], rs[k]["median_ms"]
        print(f"{k[0]:<12}{k[1]:>8}{p:>12.2f}{u:>12.2f}{u / p:>8.2f}")
PY
