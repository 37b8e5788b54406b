#!/usr/bin/env bash
# The CPU-speed benchmark: unclip against PyTorch/diffusers on the same weights, inputs and thread
# counts, in one run, on this machine. Prints one table of ratios (unclip / PyTorch; below 1.0
# unclip is faster) and the achieved FLOP/s against the CPU's nominal peak.
#   decoder forward at 32 and 64 px (guided batch of 2, the mid-size Karlo-shaped decoder),
#   one decoder training step (64 px, AdamW), and a whole `generate` on MODEL (when given),
#   each at 1 and 2 threads.
#   tools/bench/cpu_speed.sh [MODEL_DIR] [PYTHON]
# REPEAT=N (default 1) runs the whole set N times, PyTorch and unclip in turn each time, and
# prints the median of each time and of the per-round ratios: on a shared host whose speed drifts
# by a third within minutes, one round's ratio can be off by 0.2 either way.
set -euo pipefail
cd "$(dirname "$0")/../.."
MODEL=${1:-}
PY=${2:-/work/venv-oracle/bin/python}
RUNS=${RUNS:-5}
REPEAT=${REPEAT:-1}
# bf16 convolution products (`--precision bf16`) also run where this CPU has AVX-512 BF16; their
# rows are ratios against PyTorch's f32 run, with the output's largest difference from PyTorch.
BF16=0
grep -q avx512_bf16 /proc/cpuinfo && BF16=1
D64=/tmp/unclip-bench-decoder
D32=/tmp/unclip-bench-decoder-32
[ -f "$D64/bench_inputs.safetensors" ] || "$PY" tools/bench/unclip_decoder.py --save "$D64" --threads 1 --runs 1 > /dev/null
[ -f "$D32/bench_inputs.safetensors" ] || "$PY" tools/bench/unclip_decoder.py --save "$D32" --size 32 --threads 1 --runs 1 > /dev/null
cargo build --release -q
BIN=./target/release/unclip
OUT=$(mktemp)
for ROUND in $(seq "$REPEAT"); do
  for T in 1 2; do
    for S in 32 64; do
      DIR=$D64; [ "$S" = 32 ] && DIR=$D32
      "$PY" tools/bench/unclip_decoder.py --size "$S" --threads "$T" --runs "$RUNS" >> "$OUT"
      $BIN bench decoder --dir "$DIR" --threads "$T" --runs "$RUNS" >> "$OUT"
      if [ "$BF16" = 1 ]; then
        $BIN bench decoder --dir "$DIR" --threads "$T" --runs "$RUNS" --precision bf16 >> "$OUT"
      fi
    done
    "$PY" tools/bench/decoder_train.py "$D64" --threads "$T" --runs 3 >> "$OUT"
    $BIN bench decoder-train --dir "$D64" --threads "$T" --runs 3 >> "$OUT"
    if [ -n "$MODEL" ]; then
      "$PY" tools/bench/generate.py "$MODEL" --threads "$T" --runs 3 >> "$OUT"
      $BIN bench generate --model "$MODEL" --threads "$T" --runs 3 >> "$OUT"
      if [ "$BF16" = 1 ]; then
        $BIN bench generate --model "$MODEL" --threads "$T" --runs 3 --precision bf16 >> "$OUT"
      fi
    fi
  done
done
"$PY" - "$OUT" <<'PY'
import json, os, re, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
def key(r):
    name = {"unclip_decoder_forward": "decoder forward", "decoder_train_step": "train step"}.get(r["bench"], r["bench"])
    name += f" {r['size']}px" if r["bench"] == "unclip_decoder_forward" else ""
    return (name + (" bf16" if r.get("precision") == "bf16" else ""), r["threads"])
# Rows come in rounds, PyTorch then unclip for each key: pair them in order.
py, rs = {}, {}
for r in rows:
    (py if r["impl"] == "pytorch" else rs).setdefault(key(r), []).append(r)
gflop = {r["size"]: r["gflop"] for r in rows if r["impl"] == "pytorch" and "gflop" in r}
# Nominal peak per core: clock x f32 FLOPs per cycle of two FMA pipes of this CPU's width. AMD's
# Zen 4 (family 25) runs AVX-512 on 256-bit pipes, so it peaks as an AVX2 core does.
flags = open("/proc/cpuinfo").read()
mhz = float(re.search(r"cpu MHz\s*:\s*([\d.]+)", flags).group(1))
amd_family = re.search(r"cpu family\s*:\s*(\d+)", flags)
zen4 = "AuthenticAMD" in flags and amd_family is not None and int(amd_family.group(1)) == 25
per_cycle = 64 if " avx512f" in flags and not zen4 else 32 if " fma" in flags else 8
print(f"nominal peak per core: {mhz / 1e3 * per_cycle:.0f} GFLOP/s ({mhz:.0f} MHz x {per_cycle} FLOP/cycle)")
rounds = max(len(v) for v in rs.values())
if rounds > 1:
    print(f"{rounds} rounds: median times, median of the per-round ratios (min-max)")
print(f"{'bench':<26}{'threads':>8}{'pytorch ms':>12}{'unclip ms':>12}{'ratio':>8}{'unclip GFLOP/s':>16}{'of peak':>9}")
for k in sorted(rs):
    f32_key = (k[0].removesuffix(" bf16"), k[1])
    if f32_key not in py:
        continue
    pairs = list(zip(py[f32_key], rs[k]))
    p = statistics.median(a["median_ms"] for a, _ in pairs)
    u = statistics.median(b["median_ms"] for _, b in pairs)
    ratios = [b["median_ms"] / a["median_ms"] for a, b in pairs]
    ratio = statistics.median(ratios)
    spread = f" ({min(ratios):.2f}-{max(ratios):.2f})" if len(ratios) > 1 else ""
    extra = ""
    size = rs[k][0].get("size")
    if rs[k][0]["bench"] == "unclip_decoder_forward" and size in gflop:
        rate = gflop[size] / (u / 1e3)
        peak = mhz / 1e3 * per_cycle * k[1]
        extra = f"{rate:>16.1f}{rate / peak:>9.0%}"
    if k[0].endswith(" bf16") and "max_abs_diff_vs_pytorch" in rs[k][0]:
        spread += f" max diff {rs[k][0]['max_abs_diff_vs_pytorch']:.2g}"
    print(f"{k[0]:<26}{k[1]:>8}{p:>12.1f}{u:>12.1f}{ratio:>8.2f}{extra}{spread}")
PY
