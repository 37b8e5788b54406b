#!/usr/bin/env python3
"""Check a CLIP checkpoint folder (e.g. written by the Rust side) against transformers.

    check_checkpoint.py DIR [--text T ...] [--image PNG ...] [--embed-json FILE] [--tol 1e-4]

Loads DIR with transformers `CLIPModel.from_pretrained` (and `CLIPTokenizer` / the PIL
`CLIPImageProcessorPil` from DIR when their files exist, else --tokenizer DIR / defaults),
runs the text and image towers and prints a JSON object with input_ids, text_embeds and
image_embeds (L2-normalised, as CLIPModel.forward returns them, plus the unnormalised ones).

With --embed-json FILE (the output of `unclip embed --json ...` run with the same --text/--image
arguments: {"input_ids": [[...]], "text_embeds": [[...]], "image_embeds": [[...]]}) it compares:
  * input_ids exactly (if present in FILE and texts were given);
  * text_embeds / image_embeds by max abs diff. Whether FILE holds normalised or raw projections
    is detected from the vector norms (override with --normalized yes|no).
If texts are not given but FILE has input_ids, those ids are fed to the model.
Exit status: 0 when everything matches within --tol, 1 when not, 2 on usage errors.
"""

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch


def load_tokenizer(model_dir, tok_dir):
    from transformers import CLIPTokenizer

    for d in [tok_dir, model_dir]:
        if d and any((Path(d) / f).exists() for f in ("tokenizer.json", "vocab.json")):
            return CLIPTokenizer.from_pretrained(str(d)), str(d)
    return None, None


def load_processor(model_dir, image_size):
    from transformers import CLIPImageProcessorPil

    if (Path(model_dir) / "preprocessor_config.json").exists():
        return CLIPImageProcessorPil.from_pretrained(str(model_dir)), "preprocessor_config.json"
    proc = CLIPImageProcessorPil(size={"shortest_edge": image_size},
                                 crop_size={"height": image_size, "width": image_size})
    return proc, f"defaults (OpenAI mean/std, bicubic, shortest_edge={image_size})"


def max_abs(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        return float("inf"), f"shape mismatch {list(a.shape)} vs {list(b.shape)}"
    return float(np.abs(a - b).max()) if a.size else 0.0, None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dir", help="checkpoint folder (config.json + model.safetensors)")
    ap.add_argument("--text", action="append", default=[], help="prompt (repeatable)")
    ap.add_argument("--image", action="append", default=[], help="image file (repeatable)")
    ap.add_argument("--embed-json", help="JSON written by `unclip embed --json` to compare against")
    ap.add_argument("--tokenizer", help="tokenizer folder if DIR has no tokenizer files")
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--normalized", choices=["auto", "yes", "no"], default="auto",
                    help="whether --embed-json embeddings are L2-normalised (default: detect)")
    ap.add_argument("--max-length", type=int, default=None,
                    help="padded length; default: the text config's max_position_embeddings")
    ap.add_argument("--quiet", action="store_true", help="do not print the embeddings")
    args = ap.parse_args()

    import transformers
    from PIL import Image
    from transformers import CLIPModel

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))

    rust = None
    if args.embed_json:
        with open(args.embed_json) as f:
            rust = json.load(f)

    model = CLIPModel.from_pretrained(args.dir, attn_implementation="eager").eval()
    tcfg = model.config.text_config
    pooling = "argmax(input_ids)" if tcfg.eos_token_id == 2 else f"first input_ids == {tcfg.eos_token_id}"
    report = {
        "dir": args.dir,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "text_pooling": pooling,
        "logit_scale": float(model.logit_scale.item()),
    }
    failures = []

    # ---- text tower ----
    ids = None
    rust_ids = rust.get("input_ids") if rust else None
    if args.text:
        tok, tok_src = load_tokenizer(args.dir, args.tokenizer)
        if tok is None:
            print("no tokenizer files in DIR; pass --tokenizer", file=sys.stderr)
            return 2
        report["tokenizer"] = f"{type(tok).__name__} from {tok_src}"
        max_length = args.max_length or model.config.text_config.max_position_embeddings
        enc = tok(args.text, padding="max_length", max_length=max_length, truncation=True,
                  return_tensors="pt")
        ids = enc["input_ids"].to(torch.int64)
        report["input_ids"] = ids.tolist()
        if rust_ids is not None:
            same = np.array_equal(np.asarray(rust_ids), ids.numpy())
            report["input_ids_match"] = bool(same)
            if not same:
                failures.append("input_ids differ")
                r = np.asarray(rust_ids)
                if r.shape == tuple(ids.shape):
                    rows = [i for i in range(r.shape[0]) if not np.array_equal(r[i], ids[i].numpy())]
                    report["input_ids_mismatch_rows"] = rows
    elif rust_ids is not None:
        ids = torch.tensor(rust_ids, dtype=torch.int64)
        report["input_ids"] = "from --embed-json"

    def text_embeds(i):
        with torch.no_grad():
            raw = model.get_text_features(input_ids=i)
            raw = getattr(raw, "pooler_output", raw)  # transformers 5 returns a ModelOutput
        return raw, raw / raw.norm(dim=-1, keepdim=True)

    def image_embeds(pv):
        with torch.no_grad():
            raw = model.get_image_features(pixel_values=pv)
            raw = getattr(raw, "pooler_output", raw)
        return raw, raw / raw.norm(dim=-1, keepdim=True)

    def compare(kind, py_raw, py_norm):
        if not rust or rust.get(kind) is None:
            return
        r = np.asarray(rust[kind], dtype=np.float64)
        if args.normalized == "auto":
            norms = np.linalg.norm(r, axis=-1) if r.ndim == 2 and r.size else np.array([])
            is_norm = bool(norms.size) and bool(np.all(np.abs(norms - 1) < 1e-3))
        else:
            is_norm = args.normalized == "yes"
        ref = py_norm if is_norm else py_raw
        d, err = max_abs(r, ref.numpy())
        report[f"{kind}_compared_as"] = "normalized" if is_norm else "unnormalized"
        report[f"{kind}_max_abs_diff"] = d
        if err:
            report[f"{kind}_error"] = err
        if not (d <= args.tol):
            failures.append(f"{kind} max abs diff {d:.3g} > {args.tol:g}" + (f" ({err})" if err else ""))

    if ids is not None:
        raw, norm = text_embeds(ids)
        report["text_embeds"] = norm.tolist()
        report["text_embeds_unnormalized"] = raw.tolist()
        compare("text_embeds", raw, norm)
        if args.text and rust_ids is not None and not report.get("input_ids_match", True) \
                and rust.get("text_embeds") is not None:
            # separate tokenizer errors from model errors: run the model on the Rust ids too
            try:
                r_raw, r_norm = text_embeds(torch.tensor(rust_ids, dtype=torch.int64))
                ref = r_norm if report.get("text_embeds_compared_as") == "normalized" else r_raw
                d, _ = max_abs(rust["text_embeds"], ref.numpy())
                report["text_embeds_max_abs_diff_on_rust_ids"] = d
            except Exception as e:  # noqa: BLE001
                report["text_embeds_on_rust_ids_error"] = repr(e)
    elif rust and rust.get("text_embeds") is not None:
        failures.append("text_embeds in --embed-json but no --text and no input_ids to reproduce them")

    # ---- image tower ----
    if args.image:
        proc, proc_src = load_processor(args.dir, model.config.vision_config.image_size)
        report["image_processor"] = f"{type(proc).__name__} from {proc_src}"
        images = [Image.open(p) for p in args.image]
        pv = proc(images=images, return_tensors="pt")["pixel_values"].to(torch.float32)
        raw, norm = image_embeds(pv)
        report["image_embeds"] = norm.tolist()
        report["image_embeds_unnormalized"] = raw.tolist()
        compare("image_embeds", raw, norm)
    elif rust and rust.get("image_embeds"):
        failures.append("image_embeds in --embed-json but no --image given")

    if args.quiet:
        for k in ("text_embeds", "text_embeds_unnormalized", "image_embeds", "image_embeds_unnormalized"):
            report.pop(k, None)
    if rust is not None:
        report["ok"] = not failures
        report["failures"] = failures
    # one top-level key per line, values compact (ids / embeddings stay one row per line)
    lines = []
    for k, v in report.items():
        if isinstance(v, list) and v and isinstance(v[0], list):
            rows = ",\n   ".join(json.dumps(r) for r in v)
            lines.append(f" {json.dumps(k)}: [\n   {rows}]")
        else:
            lines.append(f" {json.dumps(k)}: {json.dumps(v)}")
    print("{\n" + ",\n".join(lines) + "\n}")
    if rust is not None:
        print(("OK" if not failures else "FAIL: " + "; ".join(failures)), file=sys.stderr)
        return 0 if not failures else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
