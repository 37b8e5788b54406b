#!/usr/bin/env bash
# Trains the shared 32 -> 64 px upsampler: models/emoji uses it as it is, and shapes.sh fine-tunes
# it on shapes scenes for models/shapes. (Within each model super_res_first/ and super_res_last/
# are the same weights, so git stores them once.) It learns from a mix of the two worlds: the
# emoji training split and 7,000 shapes scenes.
# Usage: bash models/recipes/upsampler.sh   (env: UNCLIP binary, WORK folder, RAYON_NUM_THREADS)
set -euo pipefail
cd "$(dirname "$0")/../.."
UNCLIP=${UNCLIP:-target/release/unclip}
WORK=${WORK:-runs}
export RAYON_NUM_THREADS=${RAYON_NUM_THREADS:-1}
[ -x "$UNCLIP" ] || cargo build --release
mix=$WORK/upsampler-data
if [ ! -d "$mix/shapes" ]; then
  [ -f "$WORK/emoji/data/train-000000.tar" ] || "$UNCLIP" data emoji --out "$WORK/emoji/data"
  [ -d "$WORK/shapes/data/006" ] || "$UNCLIP" data shapes --n 50000 --out "$WORK/shapes/data" --seed 1
  mkdir -p "$mix/emoji" "$mix/shapes"
  for shard in "$WORK"/emoji/data/train-*.tar; do tar xf "$shard" -C "$mix/emoji"; done
  cp -r "$WORK"/shapes/data/00{0..6} "$mix/shapes/"
fi
"$UNCLIP" train upsampler --data "$mix" --out "$WORK/upsampler" \
  --config models/recipes/upsampler.json --max-steps 800 --stop-at 400 --checkpoint-every 200 --workers 1 "$@"
