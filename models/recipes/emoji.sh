#!/usr/bin/env bash
# Retrains models/emoji from scratch on 2 CPU cores: the emoji data (`unclip data emoji`:
# Twemoji and Noto art, 7,170 training and 402 validation images, needs npm), CLIP, the prior,
# the 32 px decoder, and the shared 32 -> 64 px upsampler (upsampler.sh), with f16 weights.
# Each stage writes checkpoints; rerun a killed stage with --resume added to its line.
# Usage: bash models/recipes/emoji.sh   (env: UNCLIP binary, WORK folder, RAYON_NUM_THREADS)
set -euo pipefail
cd "$(dirname "$0")/../.."
UNCLIP=${UNCLIP:-target/release/unclip}
WORK=${WORK:-runs}
R=models/recipes
export RAYON_NUM_THREADS=${RAYON_NUM_THREADS:-1}
[ -x "$UNCLIP" ] || cargo build --release
W=$WORK/emoji
[ -f "$W/data/val-000000.tar" ] || "$UNCLIP" data emoji --out "$W/data"
TRAIN="$W/data/train-{000000..000007}.tar"
VAL="$W/data/val-000000.tar"
# CLIP: 3,600 distinct emoji overfit quickly: validation loss 2.28 at step 250, 2.79 at 500
# (training loss 1.25 -> 0.53). The built-in model stops at 500 of a 1,500-step schedule;
# --stop-at 250 with --checkpoint-every 250 is the next thing to try.
"$UNCLIP" train clip --data "$TRAIN" --val-data "$VAL" --out "$W/clip" --config $R/clip-emoji.json \
  --max-steps 1500 --stop-at 500 --checkpoint-every 500 --validate-every 250 --workers 1
"$UNCLIP" embed-dataset --clip "$W/clip" --data "$TRAIN" --out "$W/embeddings.safetensors"
"$UNCLIP" train prior --data "$TRAIN" --embeddings "$W/embeddings.safetensors" --clip "$W/clip" \
  --out "$W/prior" --config $R/prior-emoji.json --max-steps 1000 --checkpoint-every 500 --workers 1
"$UNCLIP" train decoder --data "$TRAIN" --val-data "$VAL" --clip "$W/clip" --out "$W/decoder" \
  --config $R/decoder-emoji.json --max-steps 3000 --checkpoint-every 250 --workers 1
[ -d "$WORK/upsampler/super_res_first" ] || WORK=$WORK bash $R/upsampler.sh
"$UNCLIP" assemble --clip "$W/clip" --prior "$W/prior" --decoder "$W/decoder" \
  --upsampler "$WORK/upsampler" --dtype f16 --out models/emoji
# Decoder guidance 2 instead of Karlo's 8 (measured with `unclip eval captions`, README).
printf '{\n  "decoder_guidance": 2.0\n}\n' > models/emoji/sampling.json
