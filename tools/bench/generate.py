#!/usr/bin/env python3
"""A whole text-to-image generation with diffusers' UnCLIPPipeline on a pipeline folder, the
PyTorch side of `unclip bench generate` (same folder, steps, guidance and threads).

    /work/venv-oracle/bin/python tools/bench/generate.py MODEL_DIR [--threads 1,2] [--runs 3]
        [--prompt "..."] [--prior-steps 25] [--decoder-steps 25] [--super-res-steps 7]

The model is loaded once; one warm-up generation, then --runs timed ones (Karlo's guidance 4 / 8,
DDPM as the folder's schedulers say). One JSON line per thread count.
"""

import argparse
import json
import statistics
import time

import torch
import diffusers
from pathlib import Path

from diffusers import PriorTransformer, UNet2DConditionModel, UNet2DModel, UnCLIPScheduler
from diffusers.pipelines.deprecated.unclip import UnCLIPPipeline, UnCLIPTextProjModel
from transformers import CLIPTextModelWithProjection, CLIPTokenizer


def fixed_variance_decoder(pipe):
    """UnCLIPPipeline splits the guided decoder output into noise and a learned variance (Karlo's
    6 channels) and fails on a 3-channel, fixed-variance decoder (the built-in models). Such a
    decoder's output is doubled before that split and the scheduler step reads the first half,
    which is the same arithmetic; Karlo-shaped folders are left alone."""
    decoder, scheduler = pipe.decoder, pipe.decoder_scheduler
    if decoder.config.out_channels != decoder.config.in_channels:
        return
    forward, step = decoder.forward, scheduler.step

    def doubled(*a, **k):
        out = forward(*a, **k)
        out.sample = torch.cat([out.sample, out.sample], dim=1)
        return out

    def first_half(model_output, *a, **k):
        sample = k.get("sample", a[1] if len(a) > 1 else None)
        if sample is not None and model_output.shape[1] == 2 * sample.shape[1]:
            model_output = model_output[:, : sample.shape[1]]
        return step(model_output, *a, **k)

    decoder.forward = doubled
    scheduler.step = first_half


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--prompt", default="a red circle above a blue square")
    ap.add_argument("--prior-steps", type=int, default=25)
    ap.add_argument("--decoder-steps", type=int, default=25)
    ap.add_argument("--super-res-steps", type=int, default=7)
    args = ap.parse_args()
    diffusers.utils.logging.set_verbosity_error()
    # Karlo's model_index.json names text_proj's library "unclip" (a module of the pipeline
    # package), which UnCLIPPipeline.from_pretrained refuses to import: load each component.
    root = Path(args.model)
    unet = lambda name: UNet2DModel.from_pretrained(str(root / name)).eval()
    pipe = UnCLIPPipeline(
        tokenizer=CLIPTokenizer.from_pretrained(str(root / "tokenizer")),
        text_encoder=CLIPTextModelWithProjection.from_pretrained(str(root / "text_encoder")).eval(),
        prior=PriorTransformer.from_pretrained(str(root / "prior")).eval(),
        text_proj=UnCLIPTextProjModel.from_pretrained(str(root / "text_proj")).eval(),
        decoder=UNet2DConditionModel.from_pretrained(str(root / "decoder")).eval(),
        super_res_first=unet("super_res_first"),
        super_res_last=unet("super_res_last") if (root / "super_res_last").is_dir() else unet("super_res_first"),
        prior_scheduler=UnCLIPScheduler.from_pretrained(str(root / "prior_scheduler")),
        decoder_scheduler=UnCLIPScheduler.from_pretrained(str(root / "decoder_scheduler")),
        super_res_scheduler=UnCLIPScheduler.from_pretrained(str(root / "super_res_scheduler")),
    )
    # The built-in models store f16 weights; unclip computes in f32, and so must the reference.
    pipe = pipe.to(torch.float32)
    pipe.set_progress_bar_config(disable=True)
    fixed_variance_decoder(pipe)

    def run():
        pipe(args.prompt, num_images_per_prompt=1,
             prior_num_inference_steps=args.prior_steps,
             decoder_num_inference_steps=args.decoder_steps,
             super_res_num_inference_steps=args.super_res_steps,
             generator=torch.Generator().manual_seed(0), output_type="np")

    for t in [int(s) for s in args.threads.split(",")]:
        torch.set_num_threads(t)
        with torch.inference_mode():
            run()
            times = []
            for _ in range(args.runs):
                t0 = time.perf_counter()
                run()
                times.append(time.perf_counter() - t0)
        print(json.dumps({
            "impl": "pytorch", "bench": "generate", "threads": t, "runs": args.runs,
            "steps": [args.prior_steps, args.decoder_steps, args.super_res_steps],
            "median_ms": round(1e3 * statistics.median(times), 2), "min_ms": round(1e3 * min(times), 2),
            "torch": torch.__version__, "diffusers": diffusers.__version__,
        }), flush=True)


if __name__ == "__main__":
    main()
