#!/usr/bin/env bash
# Decoder U-Net forward (mid-size Karlo shape: 64/128/192/256 channels, 64 px, guided batch of 2),
# unclip against diffusers on the identical weights and inputs, same machine and thread counts,
# in one run. Prints each side and the ratio unclip_ms / pytorch_ms (below 1.0: unclip is faster).
#   tools/bench/decoder.sh [DIR] [PYTHON]
set -euo pipefail
cd "$(dirname "$0")/../.."
DIR=${1:-/tmp/unclip-bench-decoder}
PY=${2:-/work/venv-oracle/bin/python}
[ -f "$DIR/bench_inputs.safetensors" ] || "$PY" tools/bench/unclip_decoder.py --save "$DIR" --threads 1 --runs 1 > /dev/null
cargo build --release -q
OUT=$(mktemp)
for T in 1 2; do
  "$PY" tools/bench/unclip_decoder.py --threads "$T" --runs 5 >> "$OUT"
  ./target/release/unclip bench decoder --dir "$DIR" --threads "$T" --runs 5 >> "$OUT"
done
"$PY" - "$OUT" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
py = {r["threads"]: r for r in rows if r["impl"] == "pytorch"}
rs = {r["threads"]: r for r in rows if r["impl"] == "unclip"}
print(f"{'threads':>8}{'pytorch ms':>12}{'unclip ms':>12}{'ratio':>8}{'max |diff|':>12}")
for t in sorted(rs):
    if t in py:
        p, u = py[t]["median_ms"], rs[t]["median_ms"]
        print(f"{t:>8}{p:>12.1f}{u:>12.1f}{u / p:>8.2f}{rs[t]['max_abs_diff_vs_pytorch']:>12.2e}")
PY
