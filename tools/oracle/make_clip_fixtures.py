#!/usr/bin/env python3
"""Build the CLIP oracle fixtures for the Rust `unclip` crate (deterministic, no hub access).

    /work/venv-oracle/bin/python tools/oracle/make_clip_fixtures.py [--out tools/oracle/fixtures]

Writes (see tools/oracle/README.md for the full description):
  fixtures/tokenizer/          real OpenAI CLIP BPE vocabulary in the layout of
                               openai/clip-vit-large-patch14 + cases.json (reference token ids)
  fixtures/tokenizer_json/     tokenizer.json (+ tokenizer_config.json) alone, only if tokenizer.json
                               is too big to sit beside vocab.json/merges.txt (> 3 MB)
  fixtures/images/             4 small PNGs (RGB, RGBA, RGB, L)
  fixtures/clip_tiny/          tiny random CLIPModel checkpoint (quick_gelu, eos = real eos id)
        text_with_projection/  CLIPTextModelWithProjection from the same weights
        vision_with_projection/ CLIPVisionModelWithProjection from the same weights
  fixtures/clip_tiny_legacy/   tiny random CLIPModel, Karlo-era config (eos_token_id = 2, gelu)
  fixtures/<model>_outputs.safetensors   reference tensors
  fixtures/<model>_prompts.json          prompts, image list, versions, ids, notes

The OpenAI BPE file (bpe_simple_vocab_16e6.txt.gz, MIT, (c) 2021 OpenAI) is taken from the
installed open-clip-torch (or clip-anytorch) wheel, or from --bpe PATH.
"""

import argparse
import gzip
import html
import importlib.util
import json
import os
import shutil
import sys
from functools import lru_cache
from pathlib import Path

import numpy as np
import regex as re
import torch

import transformers
from PIL import Image
from safetensors.torch import save_file
from transformers import (
    CLIPConfig,
    CLIPImageProcessorPil,
    CLIPModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    CLIPVisionModelWithProjection,
)

try:
    import ftfy
except ImportError:  # the OpenAI reference tokenizer needs it
    ftfy = None

SEED = 20240601
MAX_LEN = 77
OPENAI_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
SOT = "<|startoftext|>"
EOT = "<|endoftext|>"
N_FULL_MERGES = 49152 - 256 - 2  # 48894
N_TINY_MERGES = 500

LONG_TEXT = (
    "In the quiet village at the edge of the northern forest there lived an old clockmaker "
    "who spent every evening repairing tiny brass gears by candlelight, while outside the snow "
    "fell softly on the crooked roofs and the frozen river, and children pressed their noses "
    "against his frosted window to watch the delicate mechanisms come alive, ticking and "
    "whirring like small silver insects, until one winter night a stranger in a long green "
    "coat knocked at the door carrying a broken music box that had not played a single note "
    "for more than a hundred years, asking whether anyone in the whole wide world could make "
    "it sing again before the first light of the new year arrived over the distant mountains."
)

TOKENIZER_TEXTS = [
    "",
    "a photo of a cat",
    "A Photo OF a CAT!!!",
    "hello, world... (it's) [ok]? yes; no: 'maybe' \"quoted\" -- done!",
    "café naïve résumé",
    "i ❤️ 🐱 and 🍕",
    "東京タワー 夜景",
    "  lots   of\t\twhitespace \n here ",
    "3 red cubes and 12 blue spheres 2022",
    "don't won't it's we'll they've I'd",
    "rock &amp; roll",
    LONG_TEXT,
    # extras
    "cafe\u0301 (decomposed e + combining acute: NFC matters)",
    "<|startoftext|>special tokens typed in text<|endoftext|>",
    "THE DOG'S BALL'S COLOUR IS RED",
    "an astronaut riding a horse on mars, trending on artstation, 4k, hd",
]

TINY_PROMPTS = [
    "",
    "a photo of a cat",
    "A small RED cube, on the table!!",
    LONG_TEXT,
]
LOSS_PROMPTS = ["a red square", "a dog in the snow", "two blue spheres"]


# ---------------------------------------------------------------------------------------------
# BPE vocabulary (exactly as OpenAI's simple_tokenizer.py builds it)
# ---------------------------------------------------------------------------------------------
@lru_cache()
def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(2**8):
        if b not in bs:
            bs.append(b)
            cs.append(2**8 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def find_bpe_file(explicit):
    if explicit:
        return Path(explicit)
    for pkg in ("open_clip", "clip"):
        spec = importlib.util.find_spec(pkg)  # does not import the package
        if spec and spec.submodule_search_locations:
            for loc in spec.submodule_search_locations:
                p = Path(loc) / "bpe_simple_vocab_16e6.txt.gz"
                if p.exists():
                    return p
    sys.exit("bpe_simple_vocab_16e6.txt.gz not found: pip install --no-deps open-clip-torch==3.3.0, or pass --bpe")


def load_merges(bpe_path):
    lines = gzip.open(bpe_path).read().decode("utf-8").split("\n")
    merges = lines[1 : N_FULL_MERGES + 1]
    merges = [tuple(m.split()) for m in merges]
    assert len(merges) == N_FULL_MERGES and all(len(m) == 2 for m in merges)
    return merges


def build_vocab(merges):
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    for m in merges:
        vocab.append("".join(m))
    vocab.extend([SOT, EOT])
    assert len(set(vocab)) == len(vocab), "duplicate tokens in vocabulary"
    return {tok: i for i, tok in enumerate(vocab)}


class OpenAIReferenceTokenizer:
    """Port of openai/CLIP clip/simple_tokenizer.py (MIT) + clip.tokenize(truncate=True).

    Differences to transformers' CLIPTokenizer: ftfy.fix_text + html.unescape (twice) before
    whitespace collapsing and lowercasing; pads with 0 instead of <|endoftext|>."""

    def __init__(self, encoder, merges):
        self.byte_encoder = bytes_to_unicode()
        self.encoder = encoder
        self.bpe_ranks = dict(zip(merges, range(len(merges))))
        self.cache = {SOT: SOT, EOT: EOT}
        self.pat = re.compile(
            r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
            re.IGNORECASE,
        )

    def bpe(self, token):
        if token in self.cache:
            return self.cache[token]
        word = tuple(token[:-1]) + (token[-1] + "</w>",)
        pairs = set(zip(word, word[1:]))
        if not pairs:
            return token + "</w>"
        while True:
            bigram = min(pairs, key=lambda p: self.bpe_ranks.get(p, float("inf")))
            if bigram not in self.bpe_ranks:
                break
            first, second = bigram
            new_word, i = [], 0
            while i < len(word):
                try:
                    j = word.index(first, i)
                    new_word.extend(word[i:j])
                    i = j
                except ValueError:
                    new_word.extend(word[i:])
                    break
                if word[i] == first and i < len(word) - 1 and word[i + 1] == second:
                    new_word.append(first + second)
                    i += 2
                else:
                    new_word.append(word[i])
                    i += 1
            word = tuple(new_word)
            if len(word) == 1:
                break
            pairs = set(zip(word, word[1:]))
        word = " ".join(word)
        self.cache[token] = word
        return word

    def encode(self, text):
        text = ftfy.fix_text(text)
        text = html.unescape(html.unescape(text)).strip()
        text = re.sub(r"\s+", " ", text).strip().lower()
        ids = []
        for token in re.findall(self.pat, text):
            token = "".join(self.byte_encoder[b] for b in token.encode("utf-8"))
            ids.extend(self.encoder[t] for t in self.bpe(token).split(" "))
        return ids

    def __call__(self, text, context_length=MAX_LEN):
        toks = [self.encoder[SOT]] + self.encode(text) + [self.encoder[EOT]]
        if len(toks) > context_length:
            toks = toks[:context_length]
            toks[-1] = self.encoder[EOT]
        return toks + [0] * (context_length - len(toks))


# ---------------------------------------------------------------------------------------------
# Tokenizer folder writers (layout of openai/clip-vit-large-patch14)
# ---------------------------------------------------------------------------------------------
def added_token(content):
    return {"__type": "AddedToken", "content": content, "lstrip": False, "normalized": True,
            "rstrip": False, "single_word": False}


def write_tokenizer_files(folder, encoder, merges, name_or_path):
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "vocab.json", "w", encoding="utf-8") as f:
        json.dump(encoder, f, ensure_ascii=False)
    with open(folder / "merges.txt", "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
        for a, b in merges:
            f.write(f"{a} {b}\n")
    write_tokenizer_configs(folder, name_or_path)


def write_tokenizer_configs(folder, name_or_path):
    cfg = {
        "add_prefix_space": False,
        "bos_token": added_token(SOT),
        "clean_up_tokenization_spaces": True,
        "do_lower_case": True,
        "eos_token": added_token(EOT),
        "errors": "replace",
        "model_max_length": MAX_LEN,
        "name_or_path": name_or_path,
        "pad_token": EOT,
        "special_tokens_map_file": "./special_tokens_map.json",
        "tokenizer_class": "CLIPTokenizer",
        "unk_token": added_token(EOT),
    }
    with open(folder / "tokenizer_config.json", "w") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")
    plain = lambda c: {"content": c, "lstrip": False, "normalized": True, "rstrip": False, "single_word": False}
    stm = {"bos_token": plain(SOT), "eos_token": plain(EOT), "pad_token": EOT, "unk_token": plain(EOT)}
    with open(folder / "special_tokens_map.json", "w") as f:
        json.dump(stm, f, indent=2)
        f.write("\n")


def save_tokenizer_json(tok, dest):
    """Save the tokenizers-backend serialisation (tokenizer.json) of a loaded CLIPTokenizer."""
    tok.backend_tokenizer.save(str(dest), pretty=False)  # compact: 1.7 MB instead of 3.6 MB


def tokenize_batch(tok, texts):
    enc = tok(texts, padding="max_length", max_length=MAX_LEN, truncation=True, return_tensors="pt")
    return enc["input_ids"].to(torch.int64), enc["attention_mask"].to(torch.int64)


# ---------------------------------------------------------------------------------------------
# Part A: real tokenizer
# ---------------------------------------------------------------------------------------------
def make_tokenizer_fixtures(out, merges, encoder):
    tdir = out / "tokenizer"
    if tdir.exists():
        shutil.rmtree(tdir)
    write_tokenizer_files(tdir, encoder, merges, "openai/clip-vit-large-patch14")
    assert encoder[SOT] == 49406 and encoder[EOT] == 49407 and len(encoder) == 49408

    tok_files = CLIPTokenizer.from_pretrained(str(tdir))  # from vocab.json + merges.txt only
    # tokenizer.json goes into its own folder so each layout can be tested alone:
    #   tokenizer/       vocab.json + merges.txt (+ configs)   -- the "slow" file layout
    #   tokenizer_json/  tokenizer.json (+ configs)            -- the fast/tokenizers layout
    jdir = out / "tokenizer_json"
    if jdir.exists():
        shutil.rmtree(jdir)
    jdir.mkdir(parents=True)
    save_tokenizer_json(tok_files, jdir / "tokenizer.json")
    write_tokenizer_configs(jdir, "openai/clip-vit-large-patch14")
    json_size = (jdir / "tokenizer.json").stat().st_size
    json_layout = "tokenizer_json/"
    tok_json = CLIPTokenizer.from_pretrained(str(jdir))
    assert not (jdir / "vocab.json").exists()

    auto_cls = type(transformers.AutoTokenizer.from_pretrained(str(tdir))).__name__
    slow_cls = None
    try:
        slow = transformers.AutoTokenizer.from_pretrained(str(tdir), use_fast=False)
        slow_cls = type(slow).__name__
        if slow_cls == type(tok_files).__name__:
            slow = None  # no separate python implementation in this transformers version
    except Exception as e:  # noqa: BLE001
        slow = None
        slow_cls = f"unavailable: {e!r}"

    ref = OpenAIReferenceTokenizer(encoder, merges) if ftfy is not None else None
    cases = []
    n_json_diff = n_openai_diff = 0
    for text in TOKENIZER_TEXTS:
        enc = tok_files(text, padding="max_length", max_length=MAX_LEN, truncation=True)
        ids, mask = list(enc["input_ids"]), list(enc["attention_mask"])
        assert len(ids) == MAX_LEN and ids[0] == 49406
        n = sum(mask)
        assert ids[n - 1] == 49407, "eos must be the last unmasked token"
        case = {"text": text, "input_ids": ids, "attention_mask": mask,
                "num_tokens": n,
                "tokens": tok_files.convert_ids_to_tokens(ids[:n])}
        enc_j = tok_json(text, padding="max_length", max_length=MAX_LEN, truncation=True)
        if list(enc_j["input_ids"]) != ids:
            n_json_diff += 1
            case["tokenizer_json_input_ids"] = list(enc_j["input_ids"])
        if slow is not None:
            s_ids = list(slow(text, padding="max_length", max_length=MAX_LEN, truncation=True)["input_ids"])
            case["slow_input_ids"] = s_ids
            case["slow_differs"] = s_ids != ids
        if ref is not None:
            o_ids = ref(text)
            case["openai_input_ids"] = o_ids
            # compare the real tokens (OpenAI pads with 0, HF with 49407)
            case["openai_differs"] = o_ids[:n] != ids[:n] or any(o_ids[n:])
            n_openai_diff += case["openai_differs"]
        cases.append(case)
    assert cases[-5]["num_tokens"] == MAX_LEN  # LONG_TEXT truncated

    meta = {
        "transformers": transformers.__version__,
        "tokenizers": __import__("tokenizers").__version__,
        "torch": torch.__version__,
        "ftfy": getattr(ftfy, "__version__", None) if ftfy else None,
        "tokenizer_class": type(tok_files).__name__,
        "auto_tokenizer_class": auto_cls,
        "slow_tokenizer_class": slow_cls,
        "slow_tokenizer_note": (
            "transformers 5.x has no separate pure-python CLIP tokenizer: CLIPTokenizer is the "
            "tokenizers-backed (fast) one; use_fast=False gives the same class, so no slow ids are "
            "recorded. openai_input_ids are from a port of OpenAI's simple_tokenizer.py instead."
        ) if slow is None else None,
        "call": "tok(text, padding='max_length', max_length=77, truncation=True)",
        "vocab_size": len(encoder),
        "num_merges": len(merges),
        "bos_token_id": 49406,
        "eos_token_id": 49407,
        "pad_token_id": tok_files.pad_token_id,
        "unk_token": EOT,
        "pad_note": "HF pads with <|endoftext|> (49407) and attention_mask 0; OpenAI's clip.tokenize pads with 0",
        "hf_normalizer": "NFC, collapse \\s+ to ' ', lowercase (no ftfy, no html.unescape)",
        "openai_normalizer": "ftfy.fix_text, html.unescape x2, strip, collapse whitespace, lowercase",
        "tokenizer_json_layout": json_layout,
        "tokenizer_json_bytes": json_size,
        "num_cases_tokenizer_json_differs": n_json_diff,
        "num_cases_openai_differs": n_openai_diff,
    }
    with open(tdir / "cases.json", "w", encoding="utf-8") as f:
        json.dump({"meta": meta, "cases": cases}, f, ensure_ascii=False, indent=1)
        f.write("\n")
    return meta


# ---------------------------------------------------------------------------------------------
# Part B: tiny random CLIP models
# ---------------------------------------------------------------------------------------------
def make_images(out):
    rng = np.random.default_rng(SEED)
    idir = out / "images"
    idir.mkdir(parents=True, exist_ok=True)
    paths = []

    def grad(h, w, c):
        y = np.linspace(0, 1, h)[:, None, None]
        x = np.linspace(0, 1, w)[None, :, None]
        ch = np.arange(c)[None, None, :]
        base = 255 * (0.5 + 0.5 * np.sin(6.0 * x * (ch + 1) + 4.0 * y * (2 - ch % 3) + ch))
        return base

    # image_0: 40 wide x 52 high RGB, gradient + noise (portrait: shortest edge = width)
    a = grad(52, 40, 3) + rng.normal(0, 25, (52, 40, 3))
    Image.fromarray(np.clip(a, 0, 255).astype(np.uint8), "RGB").save(idir / "image_0.png")
    # image_1: 64 wide x 48 high RGBA with an alpha ramp (0 .. 255), composited onto white by convert_rgb
    a = grad(48, 64, 3) + rng.normal(0, 25, (48, 64, 3))
    alpha = np.tile(np.linspace(0, 255, 64)[None, :], (48, 1))
    alpha[:8, :] = 0  # fully transparent band
    rgba = np.concatenate([np.clip(a, 0, 255), alpha[..., None]], -1).astype(np.uint8)
    Image.fromarray(rgba, "RGBA").save(idir / "image_1.png")
    # image_2: 30x30 RGB checkerboard + noise
    yy, xx = np.mgrid[0:30, 0:30]
    chk = ((yy // 5 + xx // 5) % 2)[..., None] * np.array([200, 60, 120])[None, None, :]
    a = chk + rng.normal(0, 20, (30, 30, 3)) + 20
    Image.fromarray(np.clip(a, 0, 255).astype(np.uint8), "RGB").save(idir / "image_2.png")
    # image_3 (extra, preprocessing only): 17 wide x 33 high grayscale "L"
    a = grad(33, 17, 1)[..., 0] + rng.normal(0, 30, (33, 17))
    Image.fromarray(np.clip(a, 0, 255).astype(np.uint8), "L").save(idir / "image_3.png")
    for i in range(4):
        paths.append(idir / f"image_{i}.png")
    return paths


def tiny_vocab(merges):
    m = merges[:N_TINY_MERGES]
    return build_vocab(m), m


def model_spec(name, vocab_size):
    bos, eos = vocab_size - 2, vocab_size - 1
    if name == "clip_tiny":
        act, proj, img, patch = "quick_gelu", 24, 30, 6
        text_ids = dict(bos_token_id=bos, eos_token_id=eos, pad_token_id=eos)
    elif name == "clip_tiny_legacy":
        act, proj, img, patch = "gelu", 32, 32, 8
        # Karlo / openai-era config values: eos_token_id == 2 switches HF to argmax(input_ids) pooling
        text_ids = dict(bos_token_id=0, eos_token_id=2, pad_token_id=1)
    else:
        raise ValueError(name)
    common = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                  hidden_act=act, layer_norm_eps=1e-5, projection_dim=proj)
    text_config = dict(common, vocab_size=vocab_size, max_position_embeddings=MAX_LEN, **text_ids)
    vision_config = dict(common, image_size=img, patch_size=patch, num_channels=3)
    return CLIPConfig(text_config=text_config, vision_config=vision_config, projection_dim=proj,
                      logit_scale_init_value=2.3)


def write_preprocessor_config(folder, size):
    cfg = {
        "crop_size": {"height": size, "width": size},
        "do_center_crop": True,
        "do_convert_rgb": True,
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": OPENAI_CLIP_MEAN,
        "image_processor_type": "CLIPImageProcessor",
        "image_std": OPENAI_CLIP_STD,
        "resample": 3,
        "rescale_factor": 1 / 255,
        "size": {"shortest_edge": size},
    }
    with open(folder / "preprocessor_config.json", "w") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")


def perturb_(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(model.named_parameters()):
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.02)
        model.logit_scale.fill_(2.3)


def make_model_fixtures(out, name, merges_full, image_paths, seed):
    encoder, merges = tiny_vocab(merges_full)
    V = len(encoder)
    mdir = out / name
    if mdir.exists():
        shutil.rmtree(mdir)
    mdir.mkdir(parents=True)

    # tokenizer files in the model folder
    write_tokenizer_files(mdir, encoder, merges, f"unclip-fixtures/{name}")
    tok = CLIPTokenizer.from_pretrained(str(mdir))
    save_tokenizer_json(tok, mdir / "tokenizer.json")
    tok = CLIPTokenizer.from_pretrained(str(mdir))  # now with tokenizer.json present
    assert tok.eos_token_id == V - 1 and tok.bos_token_id == V - 2 and tok.pad_token_id == V - 1

    config = model_spec(name, V)
    torch.manual_seed(seed)
    model = CLIPModel(config)
    perturb_(model, seed + 1)
    model.eval()
    model.save_pretrained(str(mdir))
    img_size = config.vision_config.image_size
    write_preprocessor_config(mdir, img_size)

    # reload everything from disk so the outputs describe what was saved
    model = CLIPModel.from_pretrained(str(mdir), attn_implementation="eager").eval()
    assert abs(model.logit_scale.item() - 2.3) < 1e-6

    sub = {}
    if name == "clip_tiny":
        tm = CLIPTextModelWithProjection.from_pretrained(str(mdir), attn_implementation="eager")
        vm = CLIPVisionModelWithProjection.from_pretrained(str(mdir), attn_implementation="eager")
        tm.save_pretrained(str(mdir / "text_with_projection"))
        vm.save_pretrained(str(mdir / "vision_with_projection"))
        tm = CLIPTextModelWithProjection.from_pretrained(str(mdir / "text_with_projection"),
                                                         attn_implementation="eager").eval()
        vm = CLIPVisionModelWithProjection.from_pretrained(str(mdir / "vision_with_projection"),
                                                           attn_implementation="eager").eval()
        sub = {"text": tm, "vision": vm}
    else:
        # same classes, not saved as sub-folders for the legacy model
        sub = {
            "text": CLIPTextModelWithProjection.from_pretrained(str(mdir), attn_implementation="eager").eval(),
            "vision": CLIPVisionModelWithProjection.from_pretrained(str(mdir), attn_implementation="eager").eval(),
        }

    proc = CLIPImageProcessorPil.from_pretrained(str(mdir))
    images = [Image.open(p) for p in image_paths]
    pv = proc(images=images[:3], return_tensors="pt")["pixel_values"].to(torch.float32)
    pv_extra = proc(images=images[3:], return_tensors="pt")["pixel_values"].to(torch.float32)
    # resized (pre-crop) sizes, as (height, width), for documentation
    from transformers.image_transforms import get_resize_output_image_size
    resized = [list(get_resize_output_image_size(np.array(im.convert("RGB")), img_size, default_to_square=False,
                                                 input_data_format="channels_last")) for im in images]

    ids, mask = tokenize_batch(tok, TINY_PROMPTS)
    loss_ids, loss_mask = tokenize_batch(tok, LOSS_PROMPTS)
    T = {}
    with torch.no_grad():
        t_out = model.text_model(input_ids=ids, output_hidden_states=True)
        t_out_m = model.text_model(input_ids=ids, attention_mask=mask)
        v_out = model.vision_model(pixel_values=pv, output_hidden_states=True)
        c_out = model(input_ids=ids, pixel_values=pv)
        l_out = model(input_ids=loss_ids, pixel_values=pv, return_loss=True)
        t_proj = sub["text"](input_ids=ids).text_embeds
        v_proj = sub["vision"](pixel_values=pv).image_embeds
        t_proj_m = sub["text"](input_ids=ids, attention_mask=mask).text_embeds

        # self-consistency checks
        assert torch.allclose(t_proj, model.text_projection(t_out.pooler_output), atol=1e-6)
        assert torch.allclose(t_proj, t_proj_m, atol=1e-6)  # causal: padding after EOS can't affect pooling
        assert torch.allclose(c_out.text_embeds, t_proj / t_proj.norm(dim=-1, keepdim=True), atol=1e-6)
        assert torch.allclose(c_out.image_embeds, v_proj / v_proj.norm(dim=-1, keepdim=True), atol=1e-6)
        n = mask.sum(-1)
        real = torch.arange(MAX_LEN)[None, :] < n[:, None]
        assert torch.allclose(t_out.last_hidden_state[real], t_out_m.last_hidden_state[real], atol=1e-5)

    T["input_ids"] = ids
    T["attention_mask"] = mask
    T["text_last_hidden_state"] = t_out.last_hidden_state
    T["text_pooler_output"] = t_out.pooler_output
    T["text_last_hidden_state_masked"] = t_out_m.last_hidden_state
    T["text_pooler_output_masked"] = t_out_m.pooler_output
    T["text_embeds"] = c_out.text_embeds
    T["text_embeds_unnormalized"] = t_proj
    for i, h in enumerate(t_out.hidden_states):
        T[f"text_hidden_state_{i}"] = h
    T["pixel_values"] = pv
    T["pixel_values_extra"] = pv_extra
    T["vision_last_hidden_state"] = v_out.last_hidden_state
    T["vision_pooler_output"] = v_out.pooler_output
    T["image_embeds"] = c_out.image_embeds
    T["image_embeds_unnormalized"] = v_proj
    for i, h in enumerate(v_out.hidden_states):
        T[f"vision_hidden_state_{i}"] = h
    T["logits_per_image"] = c_out.logits_per_image
    T["logits_per_text"] = c_out.logits_per_text
    T["loss_input_ids"] = loss_ids
    T["loss_attention_mask"] = loss_mask
    T["loss_logits_per_text"] = l_out.logits_per_text
    T["loss"] = l_out.loss.reshape(1)
    T["logit_scale"] = model.logit_scale.detach().reshape(1)

    T = {k: (v.to(torch.int64) if k in ("input_ids", "attention_mask", "loss_input_ids", "loss_attention_mask")
             else v.detach().to(torch.float32)).contiguous().clone() for k, v in T.items()}
    out_file = out / f"{name}_outputs.safetensors"
    save_file(T, str(out_file))  # no metadata: its key order is not stable (versions are in the json)

    pooling = ("argmax(input_ids) (eos_token_id == 2 legacy path)" if config.text_config.eos_token_id == 2
               else f"first position where input_ids == eos_token_id ({config.text_config.eos_token_id})")
    info = {
        "model": name,
        "model_dir": name,
        "outputs": out_file.name,
        "prompts": TINY_PROMPTS,
        "loss_prompts": LOSS_PROMPTS,
        "images": [f"images/{p.name}" for p in image_paths[:3]],
        "images_extra": [f"images/{p.name}" for p in image_paths[3:]],
        "image_modes": [im.mode for im in images],
        "image_sizes_wh": [list(im.size) for im in images],
        "resized_hw_before_crop": resized,
        "image_size": img_size,
        "image_processor_class": type(proc).__name__,
        "vocab_size": V,
        "num_merges": len(merges),
        "bos_token_id": tok.bos_token_id,
        "eos_token_id_tokenizer": tok.eos_token_id,
        "pad_token_id_tokenizer": tok.pad_token_id,
        "text_config_eos_token_id": config.text_config.eos_token_id,
        "text_pooling": pooling,
        "hidden_act": config.text_config.hidden_act,
        "projection_dim": config.projection_dim,
        "logit_scale": float(model.logit_scale.item()),
        "attn_implementation": "eager",
        "seed": seed,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "tensors": {k: [list(v.shape), str(v.dtype).replace("torch.", "")] for k, v in T.items()},
        "notes": [
            "text_* and text_embeds / logits / loss: text tower called WITHOUT attention_mask "
            "(as unCLIP does); *_masked: called with attention_mask. Only padded positions "
            "(after the first EOS) differ; pooled outputs are identical (causal mask).",
            "text_embeds / image_embeds are L2-normalised (CLIPModel.forward); *_unnormalized are the "
            "projections from CLIPTextModelWithProjection / CLIPVisionModelWithProjection.",
            "text_hidden_state_0 = embeddings, text_hidden_state_i = output of layer i (before "
            "final_layer_norm); text_last_hidden_state = final_layer_norm(text_hidden_state_L). "
            "vision_hidden_state_0 = pre_layrnorm(embeddings); vision_last_hidden_state == "
            "vision_hidden_state_L (no final norm on the sequence); vision_pooler_output = "
            "post_layernorm(vision_last_hidden_state[:, 0]).",
            "loss = CLIP contrastive loss for LOSS_PROMPTS x the 3 images (matched on the diagonal), "
            "shape [1]; logit_scale is the raw parameter (logits use exp(logit_scale)).",
            "pixel_values_extra: preprocessing only, for images_extra (grayscale L image).",
        ],
    }
    with open(out / f"{name}_prompts.json", "w", encoding="utf-8") as f:
        json.dump(info, f, ensure_ascii=False, indent=1)
        f.write("\n")
    return info


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "fixtures"))
    ap.add_argument("--bpe", default=None, help="path to bpe_simple_vocab_16e6.txt.gz")
    args = ap.parse_args()

    torch.set_num_threads(1)
    torch.manual_seed(SEED)
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    bpe = find_bpe_file(args.bpe)
    merges = load_merges(bpe)
    encoder = build_vocab(merges)

    meta = make_tokenizer_fixtures(out, merges, encoder)
    print("tokenizer:", json.dumps({k: meta[k] for k in ("tokenizer_class", "auto_tokenizer_class",
                                                           "slow_tokenizer_class", "tokenizer_json_layout",
                                                           "tokenizer_json_bytes", "num_cases_openai_differs",
                                                           "num_cases_tokenizer_json_differs")}))
    image_paths = make_images(out)
    for i, name in enumerate(["clip_tiny", "clip_tiny_legacy"]):
        info = make_model_fixtures(out, name, merges, image_paths, SEED + 100 * i)
        print(name, json.dumps({k: info[k] for k in ("vocab_size", "text_pooling", "logit_scale",
                                                     "resized_hw_before_crop", "image_processor_class")}))
    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"total fixture size: {total / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
