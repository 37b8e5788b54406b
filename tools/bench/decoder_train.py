#!/usr/bin/env python3
"""One decoder training step (forward, MSE on the noise, backward, AdamW) in PyTorch/diffusers on
the folder `unclip_decoder.py --save DIR` wrote: the PyTorch side of `unclip bench decoder-train`.

    /work/venv-oracle/bin/python tools/bench/decoder_train.py DIR [--threads 1,2] [--runs 5] [--device cuda]

Prints one JSON line per thread count with the median step time and images per second.
"""
import argparse, json, statistics, time
from pathlib import Path

import torch
from diffusers import UNet2DConditionModel
from safetensors.torch import load_file


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (each timed step then waits for the GPU)")
    args = ap.parse_args()
    dev = torch.device(args.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    d = Path(args.dir)
    x = {k: v.to(dev) for k, v in load_file(str(d / "bench_inputs.safetensors")).items()}
    for t in [int(s) for s in args.threads.split(",")]:
        torch.set_num_threads(t)
        model = UNet2DConditionModel.from_pretrained(str(d / "decoder")).train().to(dev)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0)
        sample = x["sample"]
        b = sample.shape[0]
        noise = torch.randn_like(sample)
        kwargs = dict(timestep=x["timestep"].expand(b).float(),
                      encoder_hidden_states=x["encoder_hidden_states"], class_labels=x["class_labels"],
                      attention_mask=x["attention_mask"].bool())
        def step():
            opt.zero_grad(set_to_none=True)
            out = model(sample, **kwargs).sample
            loss = torch.nn.functional.mse_loss(out[:, :3], noise)
            loss.backward()
            opt.step()
            sync()
        step()
        times = []
        for _ in range(args.runs):
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
        med = statistics.median(times)
        print(json.dumps({"impl": "pytorch", "bench": "decoder_train_step", "threads": t, "batch": b,
                          "median_ms": round(1e3 * med, 1), "images_per_s": round(b / med, 2),
                          "device": args.device}), flush=True)


if __name__ == "__main__":
    main()
