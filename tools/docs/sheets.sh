#!/usr/bin/env bash
# Regenerates the pictures in docs/images/ from the built-in models: generated emoji for 16
# validation captions, variations, the shapes checker's verdicts, and the paper's manipulations
# (inversion, interpolation, text diff, inpainting). A few minutes on 2 CPU cores.
# Usage: bash tools/docs/sheets.sh VAL_SHARD   (the emoji validation shard that
#        `unclip data emoji --out DIR` writes as DIR/val-000000.tar)
set -euo pipefail
cd "$(dirname "$0")/../.."
UNCLIP=${UNCLIP:-target/release/unclip}
VAL=${1:?usage: tools/docs/sheets.sh DIR/val-000000.tar}
E=models/emoji
S=models/shapes
D=docs/images
mkdir -p "$D"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
tar xf "$VAL" -C "$tmp"

# 16 validation captions, every 25th file of the split.
mapfile -t picked < <(ls "$tmp"/*.txt | sort | awk 'NR % 25 == 1' | head -16)
args=()
: > "$D/emoji-generated.txt"
for f in "${picked[@]}"; do
  caption=$(cat "$f")
  args+=(--prompt "$caption")
  echo "$caption" >> "$D/emoji-generated.txt"
done
"$UNCLIP" generate --model "$E" "${args[@]}" --seed 0 --grid --output "$D/emoji-generated.png"

# Variations: 4 validation images, 4 variations each (one row per image).
inputs=()
for k in 0 4 8 12; do
  png=${picked[$k]%.txt}.png
  cp "$png" "$D/vary-input-$k.png"
  inputs+=(--image "$png")
done
"$UNCLIP" vary --model "$E" "${inputs[@]}" --n 4 --seed 0 --grid --output "$D/emoji-variations.png"

# The paper's manipulations on the same inputs.
a=${picked[0]%.txt}.png
b=${picked[8]%.txt}.png
"$UNCLIP" invert --model "$E" --image "$a" --output "$D/invert-recon.png" | tee "$D/invert.txt"
"$UNCLIP" interpolate --model "$E" --from "$a" --to "$b" --frames 8 --output "$tmp/interp"
cp "$tmp/interp/sheet.png" "$D/interpolate.png"
cp "$tmp/interp/"*.gif "$D/interpolate.gif"
"$UNCLIP" textdiff --model "$E" --image "$b" --from "a twitter-style emoji" --to "a google-style emoji" \
  --frames 6 --output "$tmp/textdiff.png"
cp "$tmp/textdiff.png" "$D/textdiff.png"
"$UNCLIP" edit --model "$E" --image "$a" --mask "$D/mask-right-half.png" \
  --prompt "red heart, a twitter-style emoji" --n 4 --seed 0 --output "$tmp/edit.png"
for k in 0 1 2 3; do cp "$tmp/edit-$k.png" "$D/edit-$k.png"; done

# The shapes checker's verdicts: the first 4 held-out prompts of each form, 4 images each.
"$UNCLIP" eval shapes --model "$S" --prompts docs/images/shapes-sheet-prompts.txt \
  --images-per-prompt 4 --save-dir "$tmp/verdicts"
cp "$tmp/verdicts/sheet.png" "$D/shapes-verdicts.png"
echo "wrote the pictures in $D"
