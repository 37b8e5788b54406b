#!/usr/bin/env python3
"""Throughput of transformers CLIP text and image embedding (the PyTorch baseline for `unclip`).

    /work/venv-oracle/bin/python tools/bench/clip_embed.py [--model DIR] [--save DIR]
        [--threads 1,2] [--batch 16] [--min-time 3] [--attn sdpa|eager]

Without --model it builds a random "small" CLIP from a config (text: hidden 256, 4 layers, 4 heads,
MLP 1024, vocab 49408, 77 positions; vision: hidden 256, 4 layers, 4 heads, MLP 1024, image 64,
patch 8; projection 256; quick_gelu), seeded, so every run measures the same model.
--save DIR writes that model as a CLIPModel folder (config.json + model.safetensors, plus the real
CLIP tokenizer files from tools/oracle/fixtures/tokenizer and a preprocessor_config.json, plus
bench_inputs.json with the prompts) so the Rust side can benchmark the identical config/weights.

For each thread count T (torch.set_num_threads(T)) it times, under torch.inference_mode():
  clip_text : model.get_text_features(input_ids [B, 77])   (tokenisation not timed)
  clip_image: model.get_image_features(pixel_values [B, 3, S, S])   (preprocessing not timed)
and prints one JSON line per measurement: items_per_s (= batch / median batch time),
items_per_s_mean, and the median / min ms per batch.
"""

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import transformers
from transformers import CLIPConfig, CLIPModel

REPO = Path(__file__).resolve().parents[2]
TOKENIZER_FIXTURE = REPO / "tools" / "oracle" / "fixtures" / "tokenizer"
SEED = 1234

PROMPTS = [
    "a photo of a cat", "an astronaut riding a horse on mars", "a bowl of soup that looks like a monster",
    "a red cube on top of a blue sphere", "a teddy bear on a skateboard in times square",
    "an oil painting of a lighthouse in a storm, dramatic lighting", "a corgi wearing sunglasses",
    "a watercolor of a fox in a snowy forest", "a cozy cabin at night with warm light in the windows",
    "a close-up photo of a dew drop on a leaf", "a futuristic city skyline at sunset, highly detailed",
    "two robots playing chess in a park", "a plate of sushi on a wooden table",
    "an armchair in the shape of an avocado", "a minimalist logo of a mountain and a sun",
    "a very long prompt " + " ".join(["with many many words"] * 20),
]


def small_config():
    common = dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024,
                  hidden_act="quick_gelu", layer_norm_eps=1e-5, projection_dim=256)
    return CLIPConfig(
        text_config=dict(common, vocab_size=49408, max_position_embeddings=77,
                         bos_token_id=49406, eos_token_id=49407, pad_token_id=49407),
        vision_config=dict(common, image_size=64, patch_size=8, num_channels=3),
        projection_dim=256,
    )


def build_inputs(model, model_dir, batch):
    """input_ids from the real tokenizer when available (else random ids + EOS), random pixels."""
    tcfg, vcfg = model.config.text_config, model.config.vision_config
    g = torch.Generator().manual_seed(SEED)
    texts = [PROMPTS[i % len(PROMPTS)] for i in range(batch)]
    tok = None
    for d in [model_dir, TOKENIZER_FIXTURE]:
        if d and any((Path(d) / f).exists() for f in ("tokenizer.json", "vocab.json")):
            from transformers import CLIPTokenizer
            cand = CLIPTokenizer.from_pretrained(str(d))
            if len(cand) <= tcfg.vocab_size:
                tok = cand
                break
    if tok is not None:
        ids = tok(texts, padding="max_length", max_length=tcfg.max_position_embeddings, truncation=True,
                  return_tensors="pt")["input_ids"]
        src = "tokenizer"
    else:
        L = tcfg.max_position_embeddings
        ids = torch.randint(0, tcfg.vocab_size - 2, (batch, L), generator=g)
        ends = torch.randint(2, L, (batch,), generator=g)
        for i, e in enumerate(ends.tolist()):
            ids[i, e:] = tcfg.eos_token_id if tcfg.eos_token_id != 2 else tcfg.vocab_size - 1
        src = "random"
    S = vcfg.image_size
    pixels = torch.randn(batch, 3, S, S, generator=g)
    return texts, ids, pixels, src


def time_fn(fn, min_time, min_iters, warmup):
    for _ in range(warmup):
        fn()
    times = []
    t_start = time.perf_counter()
    while len(times) < min_iters or time.perf_counter() - t_start < min_time:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def save_model_folder(model, out_dir, texts):
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    if model.config.text_config.vocab_size == 49408 and TOKENIZER_FIXTURE.exists():
        for f in ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"):
            shutil.copy(TOKENIZER_FIXTURE / f, out / f)
    S = model.config.vision_config.image_size
    with open(out / "preprocessor_config.json", "w") as f:
        json.dump({"crop_size": {"height": S, "width": S}, "do_center_crop": True, "do_convert_rgb": True,
                   "do_normalize": True, "do_rescale": True, "do_resize": True,
                   "image_mean": [0.48145466, 0.4578275, 0.40821073],
                   "image_processor_type": "CLIPImageProcessor",
                   "image_std": [0.26862954, 0.26130258, 0.27577711], "resample": 3,
                   "rescale_factor": 1 / 255, "size": {"shortest_edge": S}}, f, indent=2)
    with open(out / "bench_inputs.json", "w") as f:
        json.dump({"texts": texts, "note": "image inputs are random N(0,1) pixel_values [B,3,S,S]"}, f, indent=1)
    print(json.dumps({"saved": str(out)}), file=sys.stderr)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="CLIP folder (config.json [+ model.safetensors]); default: built-in small config")
    ap.add_argument("--save", help="write the (random) benchmark model folder here")
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--min-time", type=float, default=3.0, help="seconds per measurement (at least)")
    ap.add_argument("--min-iters", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"])
    ap.add_argument("--only", choices=["text", "image"], help="run only one tower")
    args = ap.parse_args()

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    torch.manual_seed(SEED)

    if args.model:
        mdir = Path(args.model)
        if any(mdir.glob("*.safetensors")) or any(mdir.glob("*.bin")):
            model = CLIPModel.from_pretrained(str(mdir), attn_implementation=args.attn)
            name = str(mdir)
        else:
            model = CLIPModel._from_config(CLIPConfig.from_pretrained(str(mdir)), attn_implementation=args.attn)
            name = f"{mdir} (config only, random weights)"
    else:
        mdir = None
        config = small_config()
        config._attn_implementation = args.attn
        model = CLIPModel(config)
        name = "small (built-in)"
    model.eval()

    texts, ids, pixels, id_src = build_inputs(model, mdir, args.batch)
    if args.save:
        save_model_folder(model, args.save, texts)

    tc, vc = model.config.text_config, model.config.vision_config
    common = {
        "model": name, "batch": args.batch, "attn": args.attn,
        "torch": torch.__version__, "transformers": transformers.__version__,
        "text": f"h{tc.hidden_size} L{tc.num_hidden_layers} heads{tc.num_attention_heads} mlp{tc.intermediate_size}",
        "vision": f"h{vc.hidden_size} L{vc.num_hidden_layers} img{vc.image_size} patch{vc.patch_size}",
        "cpu_count": os.cpu_count(),
    }
    for T in [int(t) for t in args.threads.split(",") if t]:
        torch.set_num_threads(T)
        with torch.inference_mode():
            jobs = []
            if args.only in (None, "text"):
                jobs.append(("clip_text", lambda: model.get_text_features(input_ids=ids),
                             {"seq": ids.shape[1], "input_ids": id_src}))
            if args.only in (None, "image"):
                jobs.append(("clip_image", lambda: model.get_image_features(pixel_values=pixels),
                             {"image_size": vc.image_size}))
            for bench, fn, extra in jobs:
                times = time_fn(fn, args.min_time, args.min_iters, args.warmup)
                rec = {"bench": bench, "threads": T, **extra,
                       # median-based (robust to a busy machine); mean-based alongside
                       "items_per_s": round(args.batch / statistics.median(times), 2),
                       "items_per_s_mean": round(args.batch * len(times) / sum(times), 2),
                       "ms_per_batch_median": round(1000 * statistics.median(times), 3),
                       "ms_per_batch_min": round(1000 * min(times), 3),
                       "iters": len(times), **common}
                print(json.dumps(rec), flush=True)


if __name__ == "__main__":
    main()
