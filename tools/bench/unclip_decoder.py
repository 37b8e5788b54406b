#!/usr/bin/env python3
"""Forward time of a mid-size Karlo-shaped unCLIP decoder (diffusers UNet2DConditionModel), the
PyTorch baseline for the Rust decoder.

    /work/venv-oracle/bin/python tools/bench/unclip_decoder.py [--threads 1,2] [--runs 5]
        [--layers 2] [--size 64] [--batch 2] [--save DIR]

The model: Karlo's decoder layout scaled down: block_out_channels 64/128/192/256 (Karlo
320/640/960/1280), down ResnetDownsampleBlock2D + 3 x SimpleCrossAttnDownBlock2D, mid
UNetMidBlock2DSimpleCrossAttn, up 3 x SimpleCrossAttnUpBlock2D + ResnetUpsampleBlock2D,
layers_per_block 2 (--layers; Karlo 3), attention_head_dim 64 (as Karlo: 2/3/4 heads), cross_attention_dim
256 (Karlo 1536), class_embed_type identity, resnet_time_scale_shift scale_shift, norm 32 groups,
in 3 / out 6 channels, 64 px. Seeded random weights (+ N(0, 0.02) on every parameter).

Inputs as the unCLIP pipeline passes them for one guided image (batch 2 = uncond + cond):
sample [2,3,64,64], timestep = 0-dim int64 tensor (500), encoder_hidden_states [2,81,256] (4 extra
CLIP tokens + 77 text tokens), class_labels [2,256] (= time_embed_dim, the additive CLIP
embedding), attention_mask bool [2,81] (4 + 5 true on the uncond row, 4 + 9 on the cond row).

For each thread count T (torch.set_num_threads(T)), under torch.inference_mode(): 1 warm-up
forward, then --runs timed forwards; one JSON line per T with median / min / mean ms.

--save DIR writes DIR/decoder/ (save_pretrained: config.json with every field +
diffusion_pytorch_model.safetensors) and DIR/bench_inputs.safetensors (the inputs above, the mask as
uint8, timestep int64 [1], and `output` [2,6,64,64] computed with 1 thread) + DIR/bench_inputs.json,
so the Rust side can time (and check) the identical model.
"""

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import diffusers
from diffusers import UNet2DConditionModel
from safetensors.torch import save_file

SEED = 4321


def build(layers):
    torch.manual_seed(SEED)
    m = UNet2DConditionModel(
        sample_size=64, in_channels=3, out_channels=6,
        down_block_types=("ResnetDownsampleBlock2D",) + ("SimpleCrossAttnDownBlock2D",) * 3,
        mid_block_type="UNetMidBlock2DSimpleCrossAttn",
        up_block_types=("SimpleCrossAttnUpBlock2D",) * 3 + ("ResnetUpsampleBlock2D",),
        block_out_channels=(64, 128, 192, 256), layers_per_block=layers, attention_head_dim=64,
        cross_attention_dim=256, class_embed_type="identity", resnet_time_scale_shift="scale_shift",
        norm_num_groups=32, norm_eps=1e-5, act_fn="silu")
    g = torch.Generator().manual_seed(SEED + 1)
    with torch.no_grad():
        for _, p in sorted(m.named_parameters()):
            p.add_(torch.randn(p.shape, generator=g) * 0.02)
    return m.eval()


def inputs(batch, size, time_embed_dim):
    g = torch.Generator().manual_seed(SEED + 2)
    lens = torch.tensor([4 + 5, 4 + 9] * (batch // 2) + ([4 + 9] if batch % 2 else []))
    return dict(
        sample=torch.randn(batch, 3, size, size, generator=g),
        timestep=torch.tensor(500, dtype=torch.int64),
        encoder_hidden_states=torch.randn(batch, 81, 256, generator=g),
        class_labels=torch.randn(batch, time_embed_dim, generator=g),
        attention_mask=torch.arange(81)[None, :] < lens[:, None],
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--save", default=None)
    args = ap.parse_args()
    diffusers.utils.logging.set_verbosity_error()

    model = build(args.layers)
    n_params = sum(p.numel() for p in model.parameters())
    tdim = model.config.block_out_channels[0] * 4
    x = inputs(args.batch, args.size, tdim)

    if args.save:
        torch.set_num_threads(1)
        d = Path(args.save)
        model.save_pretrained(str(d / "decoder"))
        with torch.inference_mode():
            out = model(**x).sample
        T = {k: (v.to(torch.uint8) if k == "attention_mask" else v.reshape(1) if k == "timestep" else v).contiguous()
             for k, v in x.items()}
        T["output"] = out.contiguous()
        save_file(T, str(d / "bench_inputs.safetensors"))
        with open(d / "bench_inputs.json", "w") as f:
            json.dump({"call": "decoder(sample, timestep, encoder_hidden_states, class_labels, attention_mask).sample",
                       "timestep_note": "passed as a 0-dim int64 tensor; stored as [1]",
                       "attention_mask_note": "uint8 0/1 here; passed to the model as bool",
                       "output_threads": 1, "seed": SEED, "layers_per_block": args.layers,
                       "params": n_params, "diffusers": diffusers.__version__, "torch": torch.__version__,
                       "tensors": {k: list(v.shape) for k, v in T.items()}}, f, indent=1)
            f.write("\n")

    # Multiply-adds counted as 2 FLOPs (convolutions, matmuls, attention), once per forward.
    from torch.utils.flop_counter import FlopCounterMode
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(**x)
    gflop = counter.get_total_flops() / 1e9

    for t in [int(s) for s in args.threads.split(",")]:
        torch.set_num_threads(t)
        times = []
        with torch.inference_mode():
            model(**x)
            for _ in range(args.runs):
                t0 = time.perf_counter()
                model(**x)
                times.append(time.perf_counter() - t0)
        print(json.dumps({
            "bench": "unclip_decoder_forward", "impl": "pytorch", "threads": t, "batch": args.batch,
            "size": args.size, "layers_per_block": args.layers, "channels": [64, 128, 192, 256],
            "params": n_params, "runs": args.runs, "gflop": round(gflop, 3),
            "median_ms": round(1e3 * statistics.median(times), 2), "min_ms": round(1e3 * min(times), 2),
            "mean_ms": round(1e3 * statistics.fmean(times), 2),
            "torch": torch.__version__, "diffusers": diffusers.__version__,
        }), flush=True)


if __name__ == "__main__":
    main()
