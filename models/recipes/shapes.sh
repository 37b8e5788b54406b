#!/usr/bin/env bash
# Retrains models/shapes from scratch on 2 CPU cores: the shapes world (50,000 scenes; 10% of
# the grammar held out for `unclip eval shapes`), CLIP, the prior, the 32 px decoder (trained, then
# fine-tuned five times: longer, Min-SNR, placement, corners twice), and the shared
# 32 -> 64 px upsampler (upsampler.sh) fine-tuned on shapes, assembled with f16 weights, and a
# second CLIP fine-tuned with hard negatives that ranks 4 decoder samples per image (ranker/).
# Each stage writes checkpoints; rerun a killed stage with --resume added to its line.
# Usage: bash models/recipes/shapes.sh   (env: UNCLIP binary, WORK folder, RAYON_NUM_THREADS)
set -euo pipefail
cd "$(dirname "$0")/../.."
UNCLIP=${UNCLIP:-target/release/unclip}
WORK=${WORK:-runs}
R=models/recipes
export RAYON_NUM_THREADS=${RAYON_NUM_THREADS:-1}
[ -x "$UNCLIP" ] || cargo build --release
W=$WORK/shapes
[ -d "$W/data/006" ] || "$UNCLIP" data shapes --n 50000 --out "$W/data" --seed 1
# CLIP: the schedule is laid out for 3,000 steps; the built-in model stops at 1,000.
"$UNCLIP" train clip --data "$W/data" --out "$W/clip" --config $R/clip-shapes.json \
  --max-steps 3000 --stop-at 1000 --checkpoint-every 500 --workers 1
"$UNCLIP" embed-dataset --clip "$W/clip" --data "$W/data" --out "$W/embeddings.safetensors"
"$UNCLIP" train prior --data "$W/data" --embeddings "$W/embeddings.safetensors" --clip "$W/clip" \
  --out "$W/prior" --config $R/prior-shapes.json --max-steps 1200 --checkpoint-every 400 --workers 1
# The decoder: 6,000 steps. The committed weights come from a run in three sessions whose
# learning-rate schedule was lengthened on each --resume: steps 0-2,250 on a 3,000-step schedule,
# 2,250-2,750 on an 8,500-step one, 2,750-6,000 on a 6,000-step one (a resume may change
# --max-steps; the schedule then continues from the step reached).
"$UNCLIP" train decoder --data "$W/data" --clip "$W/clip" --out "$W/decoder" \
  --config $R/decoder-shapes.json --max-steps 6000 --checkpoint-every 250 --workers 1
# Then 7,000 fine-tuning steps from those weights (4 December 2026, one session, one thread, 1 h
# 50 min): a new 9,000-step schedule at half the learning rate, stopped at 7,000; its step-7,000
# weights (overall 0.30 -> 0.37 on eval-prompts.txt) are where the Min-SNR runs below start.
"$UNCLIP" train decoder --data "$W/data" --clip "$W/clip" --out "$W/decoder-more" \
  --config $R/decoder-shapes.json --init-from "$W/decoder" --lr 0.0003 --max-steps 9000 \
  --stop-at 7000 --checkpoint-every 500 --workers 1
# Then 6,000 steps from the step-7,000 weights with Min-SNR-gamma 5 loss weighting (5 December 2026,
# one thread, 1 h 55 min beside another run): plain x0 MSE under-weights the low-noise steps,
# where corners and edges are drawn. Overall 0.37 -> 0.39 (seed 0) and 0.34 -> 0.37 (seed 1);
# 10^-4 instead of 3*10^-4 scored 0.36. Then 5,000 more the same way on a fresh schedule (1 h 50
# min): 0.39 -> 0.43 (seed 0), 0.37 -> 0.41 (seed 1). The committed decoder is that run's end.
"$UNCLIP" train decoder --data "$W/data" --clip "$W/clip" --out "$W/decoder-snr" \
  --config $R/decoder-shapes.json --set min_snr_gamma=5 --init-from "$W/decoder-more" --lr 0.0003 \
  --max-steps 6000 --checkpoint-every 500 --workers 1
"$UNCLIP" train decoder --data "$W/data" --clip "$W/clip" --out "$W/decoder-snr2" \
  --config $R/decoder-shapes.json --set min_snr_gamma=5 --init-from "$W/decoder-snr" --lr 0.0003 \
  --max-steps 5000 --checkpoint-every 500 --workers 1
# Placement (6-7 December 2026, 2 cores, about 2 h 15 min in all): its own text encoder, position
# codes at attention and extra high-noise steps (decoder-shapes-placement.json). First taught on
# 8 prompts that differ only in the relation word (500 images each): 500 steps at all
# timesteps (EMA 0.99, so the weights are the trained ones), 250 at t >= 900, 2,000 at t >= 800.
P=$W/placement
[ -d "$P/data/000" ] || "$UNCLIP" data shapes --prompts $R/placement-prompts.txt --n 500 \
  --out "$P/data" --seed 5
"$UNCLIP" train decoder --data "$P/data" --clip "$W/clip" --out "$P/all-t" \
  --config $R/decoder-shapes-placement.json --set train.ema_decay=0.99 --set high_noise=null \
  --init-from "$W/decoder-snr2" --lr 0.0003 --max-steps 3000 --stop-at 500 --workers 1
"$UNCLIP" train decoder --data "$P/data" --clip "$W/clip" --out "$P/t900" \
  --config $R/decoder-shapes-placement.json --set train.ema_decay=0.99 \
  --set 'high_noise={"min_timestep":900,"share":1.0}' --init-from "$P/all-t" --lr 0.0003 \
  --max-steps 3000 --stop-at 250 --workers 1
"$UNCLIP" train decoder --data "$P/data" --clip "$W/clip" --out "$P/t800" \
  --config $R/decoder-shapes-placement.json --set train.ema_decay=0.99 \
  --set 'high_noise={"min_timestep":800,"share":1.0}' --init-from "$P/t900" --lr 0.0003 \
  --max-steps 3000 --stop-at 2000 --workers 1
# Then the whole world: 2,500 steps with half of each batch at t >= 800, then 4,000 steps with
# 20,000 relation-only scenes added and 70% at t >= 800.
"$UNCLIP" train decoder --data "$W/data" --clip "$W/clip" --out "$P/world" \
  --config $R/decoder-shapes-placement.json --init-from "$P/t800" --lr 0.0003 \
  --max-steps 4500 --stop-at 2500 --checkpoint-every 500 --workers 1
mkdir -p "$P/mix" && ln -sfn "$(realpath "$W/data")" "$P/mix/world"
[ -d "$P/mix/relations/000" ] || "$UNCLIP" data shapes --forms relation --n 20000 \
  --out "$P/mix/relations" --seed 4
RAYON_NUM_THREADS=2 "$UNCLIP" train decoder --data "$P/mix" --clip "$W/clip" --out "$P/world-relations" \
  --config $R/decoder-shapes-placement.json --set 'high_noise={"min_timestep":800,"share":0.7}' \
  --init-from "$P/world" --lr 0.0003 --max-steps 4000 --checkpoint-every 500 --workers 1
# Then 3,000 steps with Min-SNR-gamma 5 weighting floored at 1 (min_snr_floor): the clean end,
# where corners are drawn, weighs up to 5 times the plain loss while the high-noise steps keep
# theirs (7 December 2026, one thread beside other runs, 63 min). With the shapes upsampler below:
# overall 0.498 -> 0.538 (seed 0) and 0.474 -> 0.515 (seed 1).
"$UNCLIP" train decoder --data "$P/mix" --clip "$W/clip" --out "$P/corners" \
  --config $R/decoder-shapes-placement.json --set min_snr_gamma=5 --set min_snr_floor=1 \
  --init-from "$P/world-relations" --lr 0.0002 --max-steps 3000 --checkpoint-every 500 --workers 1
# Then 4,000 more the same way with gamma 20 (7 December 2026, one thread beside another run, 68
# min): the clean end weighs up to 20 times the plain loss. With the shapes upsampler, stored f16:
# 0.546 -> 0.559, 0.512 -> 0.523 and 0.468 -> 0.501 at seeds 0, 1 and 2. The committed decoder is
# its end.
"$UNCLIP" train decoder --data "$P/mix" --clip "$W/clip" --out "$P/corners-20" \
  --config $R/decoder-shapes-placement.json --set min_snr_gamma=20 --set min_snr_floor=1 \
  --init-from "$P/corners" --lr 0.0002 --max-steps 4000 --checkpoint-every 500 --workers 1
[ -d "$WORK/upsampler/super_res_first" ] || WORK=$WORK bash $R/upsampler.sh
# The shapes upsampler: the shared one fine-tuned on the shapes world alone, 2,000 steps of a
# 4,000-step schedule (7 December 2026, 2 threads beside a decoder run, 43 min). Scenes shrunk to 32 px (a perfect
# decoder) come back through it at 1.00 (`eval shapes --start decoder-sample`), through the shared
# one at 0.85: it drew squares with soft, rounded corners that the checker reads as circles.
"$UNCLIP" train upsampler --data "$W/data" --out "$W/upsampler" --config $R/upsampler.json \
  --init-from "$WORK/upsampler" --lr 0.0003 --max-steps 4000 --stop-at 2000 \
  --checkpoint-every 500 --workers 1
# The model's sampling.json (decoder guidance 2, chosen by `unclip eval shapes`) goes with it.
"$UNCLIP" assemble --clip "$W/clip" --prior "$W/prior" --decoder "$P/corners-20" \
  --upsampler "$W/upsampler" --sampling models/shapes/sampling.json --dtype f16 --out "$W/pipeline"
# The ranking CLIP (ranker/, 7 December 2026, 2 cores): the pipeline's CLIP fine-tuned with the
# shapes grammar's hard negatives, 1,000 steps (18.6 min). The sampling file then asks for 16 image
# candidates per image (8 December): 0.56 / 0.52 / 0.50 -> 0.69 / 0.74 / 0.73 at seeds 0 / 1 / 2
# (4 candidates: 0.60 / 0.66 / 0.66; 8: 0.68 / 0.66 at seeds 0 / 1).
"$UNCLIP" train clip --data "$W/data" --init-from "$W/pipeline" --out "$W/ranker" \
  --config $R/clip-shapes-negatives.json --lr 0.0005 --max-steps 1000 --checkpoint-every 250
"$UNCLIP" assemble --clip "$W/pipeline" --prior "$W/pipeline" --decoder "$W/pipeline" \
  --upsampler "$W/pipeline" --sampling models/shapes/sampling.json --ranker "$W/ranker" \
  --dtype f16 --out "$W/pipeline-ranked"
# models/shapes also holds eval-prompts.txt, so the pipeline's parts are copied in beside it.
cp -r "$W"/pipeline-ranked/* models/shapes/
