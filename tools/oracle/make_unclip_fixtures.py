#!/usr/bin/env python3
"""Build the unCLIP (Karlo-shaped) oracle fixtures for the Rust `unclip` crate.

    /work/venv-oracle/bin/python tools/oracle/make_unclip_fixtures.py [--out tools/oracle/fixtures]
        [--copy-shared]

Deterministic, no hub access, CPU, 1 thread. Needs the fixtures of make_clip_fixtures.py
(clip_tiny/ tokenizer files and images/image_0.png) to exist in --out.

Writes (see tools/oracle/README.md, section "unCLIP fixtures"):
  unclip_tiny/                  tiny random Karlo-shaped UnCLIPPipeline folder (diffusers layout)
  unclip_tiny_variation/        UnCLIPImageVariationPipeline folder; the shared components
                                (decoder, text_encoder, tokenizer, text_proj, super_res_*,
                                decoder_scheduler, super_res_scheduler) are relative symlinks into
                                unclip_tiny/ (copies with --copy-shared)
  unclip_components.safetensors + .json   per-model forward calls (pipeline-recorded + random)
  unclip_schedulers.safetensors + .json   UnCLIPScheduler / DDIMScheduler / DPMSolverMultistep
  unclip_case_<name>.safetensors          end-to-end runs: noise tape + every stage + every call
  unclip_cases.json                       arguments, tape layout, tensor lists, notes
"""

import argparse
import functools
import inspect
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import diffusers
import transformers
from PIL import Image
from safetensors.torch import save_file
from transformers import (
    CLIPImageProcessorPil,
    CLIPTextConfig,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
)
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    PriorTransformer,
    UNet2DConditionModel,
    UNet2DModel,
    UnCLIPScheduler,
)
from diffusers.pipelines.deprecated.unclip import (
    UnCLIPImageVariationPipeline,
    UnCLIPPipeline,
    UnCLIPTextProjModel,
)
import diffusers.utils.torch_utils as dtu

SEED = 20240801
MAX_LEN = 77
CLIP_DIM = 32          # text hidden == projection == vision projection == prior embedding_dim
DEC_CHANNELS = (16, 32)
DEC_TIME_EMBED = DEC_CHANNELS[0] * 4   # UNet2DConditionModel default time_embed_dim
DEC_CROSS = 48
SR_CHANNELS = (8, 16)
DEC_SIZE = 16
SR_SIZE = 32
OPENAI_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

# Keys present in the real Karlo config.json files (kakaobrain/karlo-v1-alpha, diffusers 0.11/0.12
# era). The tiny folders are written with exactly these keys so a loader is exercised on the
# minimal configs real checkpoints have; diffusers fills the rest with its defaults.
KARLO_DECODER_KEYS = [
    "act_fn", "attention_head_dim", "block_out_channels", "center_input_sample", "class_embed_type",
    "cross_attention_dim", "down_block_types", "downsample_padding", "dual_cross_attention",
    "flip_sin_to_cos", "freq_shift", "in_channels", "layers_per_block", "mid_block_scale_factor",
    "mid_block_type", "norm_eps", "norm_num_groups", "num_class_embeds", "only_cross_attention",
    "out_channels", "resnet_time_scale_shift", "sample_size", "up_block_types", "upcast_attention",
    "use_linear_projection",
]
KARLO_SUPER_RES_KEYS = [
    "act_fn", "add_attention", "attention_head_dim", "block_out_channels", "center_input_sample",
    "down_block_types", "downsample_padding", "flip_sin_to_cos", "freq_shift", "in_channels",
    "layers_per_block", "mid_block_scale_factor", "norm_eps", "norm_num_groups", "out_channels",
    "resnet_time_scale_shift", "sample_size", "time_embedding_type", "up_block_types",
]
KARLO_PRIOR_KEYS = ["additional_embeddings", "attention_head_dim", "dropout", "embedding_dim",
                    "num_attention_heads", "num_embeddings", "num_layers"]
KARLO_TEXT_PROJ_KEYS = ["clip_embeddings_dim", "clip_extra_context_tokens", "cross_attention_dim", "time_embed_dim"]
KARLO_SCHEDULER_KEYS = ["clip_sample", "clip_sample_range", "num_train_timesteps", "prediction_type", "variance_type"]

PRIOR_SCHED = dict(variance_type="fixed_small_log", prediction_type="sample", clip_sample=True,
                   clip_sample_range=5.0, num_train_timesteps=1000)
DECODER_SCHED = dict(variance_type="learned_range", prediction_type="epsilon", clip_sample=True,
                     clip_sample_range=1.0, num_train_timesteps=1000)
SUPER_RES_SCHED = dict(variance_type="fixed_small_log", prediction_type="epsilon", clip_sample=True,
                       clip_sample_range=1.0, num_train_timesteps=1000)

CASES = [
    dict(name="a", kind="text", prompt="a red circle", num_images_per_prompt=1,
         prior_num_inference_steps=4, prior_guidance_scale=4.0,
         decoder_num_inference_steps=4, decoder_guidance_scale=8.0,
         super_res_num_inference_steps=3, seed=SEED + 1),
    dict(name="b", kind="text", prompt=["a blue square", "two green triangles"], num_images_per_prompt=1,
         prior_num_inference_steps=3, prior_guidance_scale=2.0,
         decoder_num_inference_steps=5, decoder_guidance_scale=3.0,
         super_res_num_inference_steps=2, seed=SEED + 2),
    # guidance 1.0 for both stages: do_classifier_free_guidance is False (no uncond half at all)
    dict(name="c", kind="text", prompt="a photo of a cat", num_images_per_prompt=2,
         prior_num_inference_steps=2, prior_guidance_scale=1.0,
         decoder_num_inference_steps=2, decoder_guidance_scale=1.0,
         super_res_num_inference_steps=2, seed=SEED + 3),
    dict(name="variation", kind="variation", image="images/image_0.png", num_images_per_prompt=2,
         decoder_num_inference_steps=4, decoder_guidance_scale=6.0,
         super_res_num_inference_steps=2, seed=SEED + 4),
]
ENCODER_PROMPTS = ["", "a red circle", "a blue square", "two green triangles", "a photo of a cat"]


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
def t32(x):
    return x.detach().to(torch.float32).contiguous().clone()


def tstep(t):
    """timesteps / scalars as int64 [1] (or [B] when already a vector)."""
    t = torch.as_tensor(t)
    if t.dim() == 0:
        t = t.reshape(1)
    return t.detach().to(torch.int64).contiguous().clone()


def tmask(m):
    return m.detach().to(torch.uint8).contiguous().clone()


def write_json(path, obj):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, indent=1, allow_nan=False)
        f.write("\n")


def describe(T):
    return {k: [list(v.shape), str(v.dtype).replace("torch.", "")] for k, v in T.items()}


def save_tensors(T, path):
    for k, v in T.items():
        assert v.is_contiguous(), k
    save_file(T, str(path))  # no metadata (key order of metadata dicts is not stable)


def perturb_(model, seed, std=0.02):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(model.named_parameters()):
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * std)
    return g


def strip_config(folder, keys, filename="config.json"):
    """Rewrite a diffusers config with only the keys the real Karlo config has."""
    path = Path(folder) / filename
    cfg = json.load(open(path))
    out = {k: cfg[k] for k in ("_class_name", "_diffusers_version")}
    for k in keys:
        out[k] = cfg[k]
    with open(path, "w") as f:
        json.dump(out, f, indent=2, sort_keys=True)
        f.write("\n")
    return out


# ---------------------------------------------------------------------------------------------
# 1. tiny Karlo-shaped components
# ---------------------------------------------------------------------------------------------
def build_text_encoder(vocab_size):
    cfg = CLIPTextConfig(vocab_size=vocab_size, hidden_size=CLIP_DIM, intermediate_size=37, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=MAX_LEN, hidden_act="quick_gelu",
                         layer_norm_eps=1e-5, projection_dim=CLIP_DIM, bos_token_id=0, eos_token_id=2, pad_token_id=1)
    torch.manual_seed(SEED + 10)
    m = CLIPTextModelWithProjection(cfg)
    perturb_(m, SEED + 11)
    return m.eval()


def build_image_encoder():
    cfg = CLIPVisionConfig(hidden_size=CLIP_DIM, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                           image_size=32, patch_size=8, num_channels=3, hidden_act="quick_gelu",
                           layer_norm_eps=1e-5, projection_dim=CLIP_DIM)
    torch.manual_seed(SEED + 20)
    m = CLIPVisionModelWithProjection(cfg)
    perturb_(m, SEED + 21)
    return m.eval()


def build_prior():
    torch.manual_seed(SEED + 30)
    m = PriorTransformer(num_attention_heads=2, attention_head_dim=16, num_layers=2, embedding_dim=CLIP_DIM,
                         num_embeddings=MAX_LEN, additional_embeddings=4, dropout=0.0)
    g = perturb_(m, SEED + 31)
    with torch.no_grad():
        # zero-initialised in diffusers (and trained to real values in Karlo): give them magnitude
        m.positional_embedding.add_(torch.randn(m.positional_embedding.shape, generator=g) * 0.2)
        m.prd_embedding.add_(torch.randn(m.prd_embedding.shape, generator=g) * 0.2)
        m.clip_mean.add_(torch.randn(m.clip_mean.shape, generator=g) * 0.2)
        m.clip_std.copy_((1.0 + 0.2 * torch.randn(m.clip_std.shape, generator=g)).abs())
    return m.eval()


def build_text_proj():
    torch.manual_seed(SEED + 40)
    m = UnCLIPTextProjModel(clip_extra_context_tokens=4, clip_embeddings_dim=CLIP_DIM,
                            time_embed_dim=DEC_TIME_EMBED, cross_attention_dim=DEC_CROSS)
    g = perturb_(m, SEED + 41)
    with torch.no_grad():
        m.learned_classifier_free_guidance_embeddings.add_(
            torch.randn(m.learned_classifier_free_guidance_embeddings.shape, generator=g) * 0.5)
    return m.eval()


def build_decoder():
    torch.manual_seed(SEED + 50)
    m = UNet2DConditionModel(
        sample_size=DEC_SIZE, in_channels=3, out_channels=6, center_input_sample=False,
        flip_sin_to_cos=True, freq_shift=0,
        down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
        mid_block_type="UNetMidBlock2DSimpleCrossAttn",
        up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
        only_cross_attention=False, block_out_channels=DEC_CHANNELS, layers_per_block=2,
        downsample_padding=1, mid_block_scale_factor=1, act_fn="silu", norm_num_groups=8, norm_eps=1e-5,
        cross_attention_dim=DEC_CROSS, attention_head_dim=8, dual_cross_attention=False,
        use_linear_projection=False, class_embed_type="identity", num_class_embeds=None,
        upcast_attention=False, resnet_time_scale_shift="scale_shift")
    perturb_(m, SEED + 51)
    return m.eval()


def build_super_res(seed, sample_size):
    torch.manual_seed(seed)
    m = UNet2DModel(
        sample_size=sample_size, in_channels=6, out_channels=3, center_input_sample=False,
        time_embedding_type="positional", freq_shift=0, flip_sin_to_cos=True,
        down_block_types=("ResnetDownsampleBlock2D",) * 2, up_block_types=("ResnetUpsampleBlock2D",) * 2,
        block_out_channels=SR_CHANNELS, layers_per_block=2, mid_block_scale_factor=1, downsample_padding=1,
        act_fn="silu", attention_head_dim=8, norm_num_groups=4, norm_eps=1e-5,
        resnet_time_scale_shift="default", add_attention=False)
    perturb_(m, seed + 1)
    return m.eval()


def write_tokenizer(out, tdir):
    """clip_tiny's truncated vocabulary (1,014 tokens) with Karlo's tokenizer settings (pad "!")."""
    src = out / "clip_tiny"
    tdir.mkdir(parents=True, exist_ok=True)
    for f in ("vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copyfile(src / f, tdir / f)
    cfg = json.load(open(tdir / "tokenizer_config.json"))
    cfg["pad_token"] = "!"
    cfg["name_or_path"] = "unclip-fixtures/unclip_tiny/tokenizer"
    with open(tdir / "tokenizer_config.json", "w") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")
    stm = json.load(open(tdir / "special_tokens_map.json"))
    stm["pad_token"] = "!"
    with open(tdir / "special_tokens_map.json", "w") as f:
        json.dump(stm, f, indent=2)
        f.write("\n")
    vocab = json.load(open(tdir / "vocab.json"))
    return len(vocab), vocab["!"]


def write_feature_extractor(folder, size):
    folder.mkdir(parents=True, exist_ok=True)
    cfg = {
        "crop_size": {"height": size, "width": size},
        "do_center_crop": True,
        "do_convert_rgb": True,
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "feature_extractor_type": "CLIPFeatureExtractor",
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


def save_scheduler(folder, kw):
    s = UnCLIPScheduler(**kw)
    s.save_pretrained(str(folder))
    strip_config(folder, KARLO_SCHEDULER_KEYS, "scheduler_config.json")


MODEL_INDEX_TEXT = {
    "_class_name": "UnCLIPPipeline",
    "decoder": ["diffusers", "UNet2DConditionModel"],
    "decoder_scheduler": ["diffusers", "UnCLIPScheduler"],
    "prior": ["diffusers", "PriorTransformer"],
    "prior_scheduler": ["diffusers", "UnCLIPScheduler"],
    "super_res_first": ["diffusers", "UNet2DModel"],
    "super_res_last": ["diffusers", "UNet2DModel"],
    "super_res_scheduler": ["diffusers", "UnCLIPScheduler"],
    "text_encoder": ["transformers", "CLIPTextModelWithProjection"],
    "text_proj": ["unclip", "UnCLIPTextProjModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
}
MODEL_INDEX_VARIATION = {
    "_class_name": "UnCLIPImageVariationPipeline",
    "decoder": ["diffusers", "UNet2DConditionModel"],
    "decoder_scheduler": ["diffusers", "UnCLIPScheduler"],
    "feature_extractor": ["transformers", "CLIPImageProcessor"],
    "image_encoder": ["transformers", "CLIPVisionModelWithProjection"],
    "super_res_first": ["diffusers", "UNet2DModel"],
    "super_res_last": ["diffusers", "UNet2DModel"],
    "super_res_scheduler": ["diffusers", "UnCLIPScheduler"],
    "text_encoder": ["transformers", "CLIPTextModelWithProjection"],
    "text_proj": ["unclip", "UnCLIPTextProjModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
}
SHARED_COMPONENTS = ["decoder", "decoder_scheduler", "super_res_first", "super_res_last", "super_res_scheduler",
                     "text_encoder", "text_proj", "tokenizer"]


def write_model_index(folder, index):
    idx = {"_class_name": index["_class_name"], "_diffusers_version": diffusers.__version__}
    idx.update({k: v for k, v in index.items() if k != "_class_name"})
    with open(folder / "model_index.json", "w") as f:
        json.dump(idx, f, indent=2, sort_keys=True)
        f.write("\n")


def build_folders(out, copy_shared):
    root = out / "unclip_tiny"
    var = out / "unclip_tiny_variation"
    for d in (root, var):
        if d.is_symlink() or d.is_file():
            d.unlink()
        elif d.exists():
            shutil.rmtree(d)
    root.mkdir(parents=True)

    vocab_size, pad_id = write_tokenizer(out, root / "tokenizer")
    te = build_text_encoder(vocab_size)
    te.save_pretrained(str(root / "text_encoder"))
    pr = build_prior()
    pr.save_pretrained(str(root / "prior"))
    strip_config(root / "prior", KARLO_PRIOR_KEYS)
    tp = build_text_proj()
    tp.save_pretrained(str(root / "text_proj"))
    strip_config(root / "text_proj", KARLO_TEXT_PROJ_KEYS)
    dec = build_decoder()
    dec.save_pretrained(str(root / "decoder"))
    strip_config(root / "decoder", KARLO_DECODER_KEYS)
    srf = build_super_res(SEED + 60, SR_SIZE)
    srf.save_pretrained(str(root / "super_res_first"))
    strip_config(root / "super_res_first", KARLO_SUPER_RES_KEYS)
    # Karlo's super_res_last/config.json has "sample_size": null; the pipeline only reads
    # super_res_first.config.sample_size.
    srl = build_super_res(SEED + 70, None)
    srl.save_pretrained(str(root / "super_res_last"))
    strip_config(root / "super_res_last", KARLO_SUPER_RES_KEYS)
    save_scheduler(root / "prior_scheduler", PRIOR_SCHED)
    save_scheduler(root / "decoder_scheduler", DECODER_SCHED)
    save_scheduler(root / "super_res_scheduler", SUPER_RES_SCHED)
    write_model_index(root, MODEL_INDEX_TEXT)

    var.mkdir(parents=True)
    for c in SHARED_COMPONENTS:
        if copy_shared:
            shutil.copytree(root / c, var / c)
        else:
            os.symlink(os.path.join("..", "unclip_tiny", c), var / c, target_is_directory=True)
    ie = build_image_encoder()
    ie.save_pretrained(str(var / "image_encoder"))
    write_feature_extractor(var / "feature_extractor", 32)
    write_model_index(var, MODEL_INDEX_VARIATION)
    return root, var, pad_id


def load_components(root, var):
    C = {}
    C["tokenizer"] = CLIPTokenizer.from_pretrained(str(root / "tokenizer"))
    C["text_encoder"] = CLIPTextModelWithProjection.from_pretrained(str(root / "text_encoder"),
                                                                    attn_implementation="eager").eval()
    C["prior"] = PriorTransformer.from_pretrained(str(root / "prior")).eval()
    C["text_proj"] = UnCLIPTextProjModel.from_pretrained(str(root / "text_proj")).eval()
    C["decoder"] = UNet2DConditionModel.from_pretrained(str(root / "decoder")).eval()
    C["super_res_first"] = UNet2DModel.from_pretrained(str(root / "super_res_first")).eval()
    C["super_res_last"] = UNet2DModel.from_pretrained(str(root / "super_res_last")).eval()
    for s in ("prior_scheduler", "decoder_scheduler", "super_res_scheduler"):
        C[s] = UnCLIPScheduler.from_pretrained(str(root / s))
    C["image_encoder"] = CLIPVisionModelWithProjection.from_pretrained(str(var / "image_encoder"),
                                                                       attn_implementation="eager").eval()
    # CLIPImageProcessor in transformers 5 is the torchvision backend (not installed): the PIL one
    C["feature_extractor"] = CLIPImageProcessorPil.from_pretrained(str(var / "feature_extractor"))
    return C


def text_pipe(C):
    p = UnCLIPPipeline(prior=C["prior"], decoder=C["decoder"], text_encoder=C["text_encoder"],
                       tokenizer=C["tokenizer"], text_proj=C["text_proj"], super_res_first=C["super_res_first"],
                       super_res_last=C["super_res_last"], prior_scheduler=C["prior_scheduler"],
                       decoder_scheduler=C["decoder_scheduler"], super_res_scheduler=C["super_res_scheduler"])
    p.set_progress_bar_config(disable=True)
    return p


def variation_pipe(C):
    p = UnCLIPImageVariationPipeline(decoder=C["decoder"], text_encoder=C["text_encoder"],
                                     tokenizer=C["tokenizer"], text_proj=C["text_proj"],
                                     feature_extractor=C["feature_extractor"], image_encoder=C["image_encoder"],
                                     super_res_first=C["super_res_first"], super_res_last=C["super_res_last"],
                                     decoder_scheduler=C["decoder_scheduler"],
                                     super_res_scheduler=C["super_res_scheduler"])
    p.set_progress_bar_config(disable=True)
    return p


# ---------------------------------------------------------------------------------------------
# noise tape (randn_tensor monkeypatch) and call recorder
# ---------------------------------------------------------------------------------------------
ORIG_RANDN = dtu.randn_tensor


class Tape:
    def __init__(self):
        self.mode = "off"
        self.draws = []
        self.info = []
        self.pos = 0
        self.stage = None

    def start_record(self):
        self.mode, self.draws, self.info, self.pos = "record", [], [], 0

    def start_replay(self, draws):
        self.mode, self.draws, self.info, self.pos = "replay", list(draws), [], 0

    def stop(self):
        self.mode = "off"

    def randn(self, shape, generator=None, device=None, dtype=None, layout=None):
        caller = sys._getframe(1).f_code.co_name
        if self.mode == "replay":
            t = self.draws[self.pos]
            assert tuple(t.shape) == tuple(shape), (self.pos, t.shape, shape)
            self.pos += 1
            self.info.append(dict(shape=list(shape), caller=caller, stage=self.stage))
            return t.clone().to(dtype=dtype or t.dtype)
        t = ORIG_RANDN(shape, generator=generator, device=device, dtype=dtype, layout=layout)
        if self.mode == "record":
            self.draws.append(t.detach().clone())
            self.info.append(dict(shape=list(shape), caller=caller, stage=self.stage))
        return t


TAPE = Tape()


def install_randn_patch():
    """Replace randn_tensor in every loaded module that imported it by name."""
    patched = []
    for name, mod in list(sys.modules.items()):
        if mod is None or not name.startswith("diffusers"):
            continue
        if getattr(mod, "randn_tensor", None) is ORIG_RANDN:
            setattr(mod, "randn_tensor", TAPE.randn)
            patched.append(name)
    return sorted(patched)


class Recorder:
    def __init__(self):
        self.events = []
        self.active = False


REC = Recorder()


def _clone(x):
    if torch.is_tensor(x):
        return x.detach().clone()
    return x


def wrap_module(module, name):
    orig = module.forward

    def fwd(*args, **kwargs):
        out = orig(*args, **kwargs)
        if REC.active:
            REC.events.append(dict(kind="call", name=name, args=[_clone(a) for a in args],
                                   kwargs={k: _clone(v) for k, v in kwargs.items()}, out=out))
        return out

    module.forward = fwd


def wrap_scheduler(sched, stage):
    orig = sched.step

    def step(model_output, timestep, sample, prev_timestep=None, generator=None, return_dict=True):
        TAPE.stage = stage
        out = orig(model_output, timestep, sample, prev_timestep=prev_timestep, generator=generator,
                   return_dict=return_dict)
        if REC.active:
            REC.events.append(dict(kind="step", name=stage, model_output=_clone(model_output),
                                   timestep=_clone(timestep), sample=_clone(sample),
                                   prev_timestep=_clone(prev_timestep), prev_sample=_clone(out.prev_sample),
                                   pred_original_sample=_clone(out.pred_original_sample)))
        return out

    sched.step = step


def wrap_prepare_latents(pipe, sched_names):
    orig = pipe.prepare_latents

    def prep(shape, dtype, device, generator, latents, scheduler):
        for attr, stage in sched_names.items():
            if getattr(pipe, attr, None) is scheduler:
                TAPE.stage = stage
        out = orig(shape, dtype, device, generator, latents, scheduler)
        if REC.active:
            REC.events.append(dict(kind="latents", name=TAPE.stage, latents=_clone(out)))
        return out

    pipe.prepare_latents = prep


def wrap_prior_post(prior):
    orig = prior.post_process_latents

    def post(x):
        y = orig(x)
        if REC.active:
            REC.events.append(dict(kind="post_process", name="prior", inp=_clone(x), out=_clone(y)))
        return y

    prior.post_process_latents = post


ORIG_INTERP = F.interpolate


@functools.wraps(ORIG_INTERP)  # keeps inspect.signature: the pipeline checks it for "antialias"
def interp_spy(*args, **kwargs):
    y = ORIG_INTERP(*args, **kwargs)
    if REC.active:
        REC.events.append(dict(kind="interpolate", inp=_clone(args[0]), out=_clone(y),
                               kwargs={k: v for k, v in kwargs.items()}))
    return y


def instrument(C, tp, vp):
    for n in ("text_encoder", "image_encoder", "prior", "text_proj", "decoder", "super_res_first", "super_res_last"):
        wrap_module(C[n], n)
    wrap_scheduler(C["prior_scheduler"], "prior")
    wrap_scheduler(C["decoder_scheduler"], "decoder")
    wrap_scheduler(C["super_res_scheduler"], "super_res")
    names = {"prior_scheduler": "prior", "decoder_scheduler": "decoder", "super_res_scheduler": "super_res"}
    wrap_prepare_latents(tp, names)
    wrap_prepare_latents(vp, names)
    wrap_prior_post(C["prior"])
    # F inside the pipeline modules is torch.nn.functional itself: spy on interpolate there only
    import diffusers.pipelines.deprecated.unclip.pipeline_unclip as pu
    import diffusers.pipelines.deprecated.unclip.pipeline_unclip_image_variation as pv

    class FProxy:
        def __getattr__(self, k):
            return interp_spy if k == "interpolate" else getattr(F, k)

    pu.F = FProxy()
    pv.F = FProxy()
    assert "antialias" in inspect.signature(pu.F.interpolate).parameters


# ---------------------------------------------------------------------------------------------
# 4. end-to-end cases
# ---------------------------------------------------------------------------------------------
def run_case(case, tp, vp, out):
    g = torch.Generator().manual_seed(case["seed"])
    if case["kind"] == "text":
        kwargs = dict(prompt=case["prompt"], num_images_per_prompt=case["num_images_per_prompt"],
                      prior_num_inference_steps=case["prior_num_inference_steps"],
                      decoder_num_inference_steps=case["decoder_num_inference_steps"],
                      super_res_num_inference_steps=case["super_res_num_inference_steps"],
                      prior_guidance_scale=case["prior_guidance_scale"],
                      decoder_guidance_scale=case["decoder_guidance_scale"], output_type="np")
        pipe = tp
    else:
        image = Image.open(out / case["image"])
        kwargs = dict(image=image, num_images_per_prompt=case["num_images_per_prompt"],
                      decoder_num_inference_steps=case["decoder_num_inference_steps"],
                      super_res_num_inference_steps=case["super_res_num_inference_steps"],
                      decoder_guidance_scale=case["decoder_guidance_scale"], output_type="np")
        pipe = vp

    REC.events, REC.active = [], True
    TAPE.start_record()
    TAPE.stage = None
    images = pipe(generator=g, **kwargs).images
    REC.active = False
    TAPE.stop()
    draws, info = TAPE.draws, TAPE.info
    events = REC.events

    # replay: a different generator, the recorded draws must be all that matters
    TAPE.start_replay(draws)
    images2 = pipe(generator=torch.Generator().manual_seed(987654321), **kwargs).images
    assert TAPE.pos == len(draws), "replay consumed a different number of draws"
    TAPE.stop()
    replay_exact = bool(np.array_equal(images, images2))
    assert replay_exact, "replaying the noise tape did not reproduce the images bit for bit"
    return images, draws, info, events, kwargs


def case_tensors(case, images, draws, info, events):
    T = {}
    notes = {}
    for i, d in enumerate(draws):
        T[f"noise.{i:03d}"] = t32(d)

    calls = {}
    steps = {}
    for ev in events:
        if ev["kind"] == "call":
            calls.setdefault(ev["name"], []).append(ev)
        elif ev["kind"] == "step":
            steps.setdefault(ev["name"], []).append(ev)

    # text encoder calls: [prompt, uncond] (uncond only when guided)
    for i, ev in enumerate(calls.get("text_encoder", [])):
        ids = ev["args"][0] if ev["args"] else ev["kwargs"]["input_ids"]
        T[f"text_encoder.call{i}.input_ids"] = ids.to(torch.int64).contiguous()
        T[f"text_encoder.call{i}.text_embeds"] = t32(ev["out"].text_embeds)
        T[f"text_encoder.call{i}.last_hidden_state"] = t32(ev["out"].last_hidden_state)
    for i, ev in enumerate(calls.get("image_encoder", [])):
        T[f"image_encoder.call{i}.pixel_values"] = t32(ev["args"][0])
        T[f"image_encoder.call{i}.image_embeds"] = t32(ev["out"].image_embeds)

    def const(name, evs, get, conv):
        first = get(evs[0])
        for e in evs[1:]:
            v = get(e)
            assert torch.equal(v, first), f"{name} changes between calls"
        T[name] = conv(first)

    for ev in events:
        if ev["kind"] == "latents":
            # init_noise_sigma is 1.0: the initial latents are the stage's first tape draw and its
            # scheduler step0.sample (asserted), so they are not stored again
            first = [i for i, d in enumerate(info) if d["stage"] == ev["name"]][0]
            assert torch.equal(ev["latents"], draws[first]) and torch.equal(ev["latents"], steps[ev["name"]][0]["sample"])
            notes[f"{ev['name']}_initial_latents"] = f"noise.{first:03d}"
        elif ev["kind"] == "post_process":
            T["prior.final_latents"] = t32(ev["inp"])
            T["prior.image_embeddings"] = t32(ev["out"])
        elif ev["kind"] == "interpolate":
            assert ev["kwargs"].get("antialias") is True and ev["kwargs"].get("mode") == "bicubic", ev["kwargs"]
            T["image_small"] = t32(ev["inp"])
            T["image_upscaled"] = t32(ev["out"])
            notes["interpolate_kwargs"] = {k: (list(v) if isinstance(v, (list, tuple)) else v)
                                           for k, v in ev["kwargs"].items()}

    if "prior" in calls:
        ev = calls["prior"]
        const("prior.proj_embedding", ev, lambda e: e["kwargs"]["proj_embedding"], t32)
        const("prior.encoder_hidden_states", ev, lambda e: e["kwargs"]["encoder_hidden_states"], t32)
        const("prior.attention_mask", ev, lambda e: e["kwargs"]["attention_mask"], tmask)
        for i, e in enumerate(ev):
            T[f"prior.call{i}.hidden_states"] = t32(e["args"][0])
            T[f"prior.call{i}.timestep"] = tstep(e["kwargs"]["timestep"])
            T[f"prior.call{i}.output"] = t32(e["out"].predicted_image_embedding)

    ev = calls["text_proj"]
    assert len(ev) == 1
    e = ev[0]
    T["text_proj.in.image_embeddings"] = t32(e["kwargs"]["image_embeddings"])
    T["text_proj.in.prompt_embeds"] = t32(e["kwargs"]["prompt_embeds"])
    T["text_proj.in.text_encoder_hidden_states"] = t32(e["kwargs"]["text_encoder_hidden_states"])
    T["text_proj.out.text_encoder_hidden_states"] = t32(e["out"][0])
    T["text_proj.out.additive_clip_time_embeddings"] = t32(e["out"][1])
    notes["text_proj_do_classifier_free_guidance"] = bool(e["kwargs"]["do_classifier_free_guidance"])

    ev = calls["decoder"]
    # encoder_hidden_states / class_labels passed to every decoder call are exactly text_proj's outputs
    for e in ev:
        assert torch.equal(e["kwargs"]["encoder_hidden_states"], T["text_proj.out.text_encoder_hidden_states"])
        assert torch.equal(e["kwargs"]["class_labels"], T["text_proj.out.additive_clip_time_embeddings"])
    const("decoder.attention_mask", ev, lambda e: e["kwargs"]["attention_mask"], tmask)
    notes["decoder_attention_mask_dtype_as_passed"] = str(ev[0]["kwargs"]["attention_mask"].dtype)
    guided = notes["text_proj_do_classifier_free_guidance"]
    for i, e in enumerate(ev):
        # the model input is cat([latents] * 2) when guided, else latents = decoder_scheduler.step<i>.sample
        lat = steps["decoder"][i]["sample"]
        assert torch.equal(e["kwargs"]["sample"], torch.cat([lat] * 2) if guided else lat)
        T[f"decoder.call{i}.timestep"] = tstep(e["kwargs"]["timestep"])
        T[f"decoder.call{i}.output"] = t32(e["out"].sample)
    notes["decoder_timestep_dtype_as_passed"] = str(ev[0]["kwargs"]["timestep"].dtype)

    sr_calls = [e for e in events if e["kind"] == "call" and e["name"] in ("super_res_first", "super_res_last")]
    notes["super_res_unet_per_step"] = [e["name"] for e in sr_calls]
    for i, e in enumerate(sr_calls):
        st = steps["super_res"][i]
        # model input = cat([latents, image_upscaled], dim=1); no guidance: step model_output == unet output
        assert torch.equal(e["kwargs"]["sample"], torch.cat([st["sample"], T["image_upscaled"]], dim=1))
        assert torch.equal(st["model_output"], e["out"].sample)
        T[f"super_res.call{i}.timestep"] = tstep(e["kwargs"]["timestep"])
        T[f"super_res.call{i}.output"] = t32(e["out"].sample)

    for stage, evs in steps.items():
        for i, e in enumerate(evs):
            p = f"{stage}_scheduler.step{i}"
            if stage != "super_res":
                T[f"{p}.model_output"] = t32(e["model_output"])
            T[f"{p}.timestep"] = tstep(e["timestep"])
            T[f"{p}.prev_timestep"] = tstep(-1 if e["prev_timestep"] is None else e["prev_timestep"])
            T[f"{p}.sample"] = t32(e["sample"])
            if i + 1 < len(evs):
                assert torch.equal(e["prev_sample"], evs[i + 1]["sample"])
            else:
                T[f"{p}.prev_sample"] = t32(e["prev_sample"])
        T[f"{stage}_scheduler.timesteps"] = torch.stack([tstep(e["timestep"])[0] for e in evs]).contiguous()

    T["images"] = torch.from_numpy(np.ascontiguousarray(images)).to(torch.float32).contiguous()

    # full inputs of single calls, for unclip_components (not stored per case: they are redundant there)
    side = {}
    if "prior" in calls:
        e = calls["prior"][0]
        side.update({"prior.hidden_states": t32(e["args"][0]), "prior.timestep": tstep(e["kwargs"]["timestep"]),
                     "prior.proj_embedding": t32(e["kwargs"]["proj_embedding"]),
                     "prior.encoder_hidden_states": t32(e["kwargs"]["encoder_hidden_states"]),
                     "prior.attention_mask": tmask(e["kwargs"]["attention_mask"]),
                     "prior.output": t32(e["out"].predicted_image_embedding)})
    e = calls["decoder"][0]
    side.update({"decoder.sample": t32(e["kwargs"]["sample"]), "decoder.timestep": tstep(e["kwargs"]["timestep"]),
                 "decoder.encoder_hidden_states": t32(e["kwargs"]["encoder_hidden_states"]),
                 "decoder.class_labels": t32(e["kwargs"]["class_labels"]),
                 "decoder.attention_mask": tmask(e["kwargs"]["attention_mask"]),
                 "decoder.output": t32(e["out"].sample)})
    for which in ("super_res_first", "super_res_last"):
        e = [x for x in sr_calls if x["name"] == which][0]
        side.update({f"{which}.sample": t32(e["kwargs"]["sample"]), f"{which}.timestep": tstep(e["kwargs"]["timestep"]),
                     f"{which}.output": t32(e["out"].sample)})
    for k in list(T):
        if k.startswith("text_proj.") or k in ("image_small", "image_upscaled"):
            side[k] = T[k]
    return T, notes, {k: len(v) for k, v in calls.items()}, side


def expected_draws(case):
    n = 0
    parts = {}
    if case["kind"] == "text":
        parts["prior"] = 1 + (case["prior_num_inference_steps"] - 1)
    parts["decoder"] = 1 + (case["decoder_num_inference_steps"] - 1)
    parts["super_res"] = 1 + (case["super_res_num_inference_steps"] - 1)
    n = sum(parts.values())
    return n, parts


# ---------------------------------------------------------------------------------------------
# 2. component fixtures
# ---------------------------------------------------------------------------------------------
def component_tensors(C, case_a_T, out):
    T = {}
    g = torch.Generator().manual_seed(SEED + 500)
    rn = lambda *s, scale=1.0: torch.randn(*s, generator=g) * scale

    # -- text encoder on prompts
    tok = C["tokenizer"]
    enc = tok(ENCODER_PROMPTS, padding="max_length", max_length=MAX_LEN, truncation=True, return_tensors="pt")
    with torch.no_grad():
        o = C["text_encoder"](enc.input_ids)
    T["text_encoder.input_ids"] = enc.input_ids.to(torch.int64).contiguous()
    T["text_encoder.attention_mask"] = enc.attention_mask.to(torch.int64).contiguous()
    T["text_encoder.text_embeds"] = t32(o.text_embeds)
    T["text_encoder.last_hidden_state"] = t32(o.last_hidden_state)

    # -- image encoder on image_0..2
    imgs = [Image.open(out / "images" / f"image_{i}.png") for i in range(3)]
    pv = C["feature_extractor"](images=imgs, return_tensors="pt").pixel_values.to(torch.float32)
    with torch.no_grad():
        ie = C["image_encoder"](pv)
    T["image_encoder.pixel_values"] = t32(pv)
    T["image_encoder.image_embeds"] = t32(ie.image_embeds)

    with torch.no_grad():
        # -- prior: as the pipeline called it (case a, first call) and random
        for k in ("hidden_states", "timestep", "proj_embedding", "encoder_hidden_states", "attention_mask", "output"):
            T[f"prior.pipe.{k}"] = case_a_T[f"prior.{k}"]
        B = 3
        hs, pe, ehs = rn(B, CLIP_DIM), rn(B, CLIP_DIM), rn(B, MAX_LEN, CLIP_DIM)
        lens = torch.tensor([1, 6, MAX_LEN])
        mask = torch.arange(MAX_LEN)[None, :] < lens[:, None]
        ts = torch.tensor([999, 500, 0], dtype=torch.int64)
        y = C["prior"](hs, timestep=ts, proj_embedding=pe, encoder_hidden_states=ehs,
                       attention_mask=mask).predicted_image_embedding
        T.update({"prior.rand.hidden_states": t32(hs), "prior.rand.timestep": tstep(ts),
                  "prior.rand.proj_embedding": t32(pe), "prior.rand.encoder_hidden_states": t32(ehs),
                  "prior.rand.attention_mask": tmask(mask), "prior.rand.output": t32(y)})
        y2 = C["prior"](hs, timestep=torch.tensor(321), proj_embedding=pe, encoder_hidden_states=ehs,
                        attention_mask=None).predicted_image_embedding
        T["prior.rand_nomask.timestep"] = tstep(321)
        T["prior.rand_nomask.output"] = t32(y2)
        x = rn(B, CLIP_DIM)
        T["prior.post_process.input"] = t32(x)
        T["prior.post_process.output"] = t32(C["prior"].post_process_latents(x))

        # -- text_proj
        for k in ("image_embeddings", "prompt_embeds", "text_encoder_hidden_states"):
            T[f"text_proj.pipe.in.{k}"] = case_a_T[f"text_proj.in.{k}"]
        for k in ("text_encoder_hidden_states", "additive_clip_time_embeddings"):
            T[f"text_proj.pipe.out.{k}"] = case_a_T[f"text_proj.out.{k}"]
        ie_, pe_, th_ = rn(2, CLIP_DIM), rn(2, CLIP_DIM), rn(2, MAX_LEN, CLIP_DIM)
        a, b = C["text_proj"](image_embeddings=ie_, prompt_embeds=pe_, text_encoder_hidden_states=th_,
                              do_classifier_free_guidance=False)
        T.update({"text_proj.rand_nocfg.in.image_embeddings": t32(ie_), "text_proj.rand_nocfg.in.prompt_embeds": t32(pe_),
                  "text_proj.rand_nocfg.in.text_encoder_hidden_states": t32(th_),
                  "text_proj.rand_nocfg.out.text_encoder_hidden_states": t32(a),
                  "text_proj.rand_nocfg.out.additive_clip_time_embeddings": t32(b)})
        pe4, th4 = rn(4, CLIP_DIM), rn(4, MAX_LEN, CLIP_DIM)
        a, b = C["text_proj"](image_embeddings=ie_, prompt_embeds=pe4, text_encoder_hidden_states=th4,
                              do_classifier_free_guidance=True)
        T.update({"text_proj.rand_cfg.in.image_embeddings": t32(ie_), "text_proj.rand_cfg.in.prompt_embeds": t32(pe4),
                  "text_proj.rand_cfg.in.text_encoder_hidden_states": t32(th4),
                  "text_proj.rand_cfg.out.text_encoder_hidden_states": t32(a),
                  "text_proj.rand_cfg.out.additive_clip_time_embeddings": t32(b)})

        # -- decoder
        for k in ("sample", "timestep", "encoder_hidden_states", "class_labels", "attention_mask", "output"):
            T[f"decoder.pipe.{k}"] = case_a_T[f"decoder.{k}"]
        B = 2
        smp, ehs, cl = rn(B, 3, DEC_SIZE, DEC_SIZE), rn(B, MAX_LEN + 4, DEC_CROSS), rn(B, DEC_TIME_EMBED)
        lens = torch.tensor([4 + 3, 4 + 20])
        mask = torch.arange(MAX_LEN + 4)[None, :] < lens[:, None]
        ts = torch.tensor([871, 13], dtype=torch.int64)
        y = C["decoder"](sample=smp, timestep=ts, encoder_hidden_states=ehs, class_labels=cl,
                         attention_mask=mask).sample
        T.update({"decoder.rand.sample": t32(smp), "decoder.rand.timestep": tstep(ts),
                  "decoder.rand.encoder_hidden_states": t32(ehs), "decoder.rand.class_labels": t32(cl),
                  "decoder.rand.attention_mask": tmask(mask), "decoder.rand.output": t32(y)})
        y = C["decoder"](sample=smp, timestep=torch.tensor(500), encoder_hidden_states=ehs, class_labels=cl,
                         attention_mask=None).sample
        T["decoder.rand_nomask.timestep"] = tstep(500)
        T["decoder.rand_nomask.output"] = t32(y)

        # -- super-res (pipeline: case a, first and last step)
        for which in ("super_res_first", "super_res_last"):
            for k in ("sample", "timestep", "output"):
                T[f"{which}.pipe.{k}"] = case_a_T[f"{which}.{k}"]
            smp = rn(1, 6, SR_SIZE, SR_SIZE)
            ts = torch.tensor([250], dtype=torch.int64)
            y = C[which](sample=smp, timestep=ts).sample
            T[f"{which}.rand.sample"] = t32(smp)
            T[f"{which}.rand.timestep"] = tstep(ts)
            T[f"{which}.rand.output"] = t32(y)

        # -- bicubic resampling exactly as the pipeline calls it (antialias=True)
        up_in = case_a_T["image_small"]
        T["bicubic.pipe.input"] = up_in
        T["bicubic.pipe.output"] = case_a_T["image_upscaled"]
        x = (torch.rand(2, 3, 16, 16, generator=g) * 2 - 1)
        T["bicubic.up_16_32.input"] = t32(x)
        T["bicubic.up_16_32.output"] = t32(F.interpolate(x, size=[32, 32], mode="bicubic", align_corners=False,
                                                         antialias=True))
        T["bicubic.up_16_32.output_no_antialias"] = t32(F.interpolate(x, size=[32, 32], mode="bicubic",
                                                                      align_corners=False, antialias=False))
        T["bicubic.up_16x12_27x40.output"] = t32(F.interpolate(x[:, :, :, :12], size=[27, 40], mode="bicubic",
                                                               align_corners=False, antialias=True))
        x = (torch.rand(1, 3, 32, 32, generator=g) * 2 - 1)
        T["bicubic.down_32_20.input"] = t32(x)
        T["bicubic.down_32_20.output"] = t32(F.interpolate(x, size=[20, 20], mode="bicubic", align_corners=False,
                                                           antialias=True))
        T["bicubic.down_32_20.output_no_antialias"] = t32(F.interpolate(x, size=[20, 20], mode="bicubic",
                                                                        align_corners=False, antialias=False))
    return T


# ---------------------------------------------------------------------------------------------
# 3. schedulers
# ---------------------------------------------------------------------------------------------
def scheduler_tensors():
    T = {}
    meta = {"unclip": {}, "ddim": {}, "dpm": {}}
    g = torch.Generator().manual_seed(SEED + 700)
    shapes = {"prior": (2, CLIP_DIM), "decoder": (2, 3, 4, 4), "super_res": (2, 3, 4, 4)}
    cfgs = {"prior": PRIOR_SCHED, "decoder": DECODER_SCHED, "super_res": SUPER_RES_SCHED}
    base = UnCLIPScheduler(**PRIOR_SCHED)
    T["unclip.betas"] = t32(base.betas)
    T["unclip.alphas_cumprod"] = t32(base.alphas_cumprod)
    for name, kw in cfgs.items():
        s = UnCLIPScheduler(**kw)
        wrap_scheduler(s, f"sched_{name}")
        info = {"config": dict(s.config), "sample_shape": list(shapes[name]), "loops": {}}
        shp = shapes[name]
        for n in (25, 7, 4, 2):
            s.set_timesteps(n)
            ts = s.timesteps.clone()
            T[f"unclip.{name}.n{n}.timesteps"] = tstep(ts)
            sample = torch.randn(*shp, generator=g)
            TAPE.start_record()
            for i, t in enumerate(ts):
                prev = None if i + 1 == len(ts) else ts[i + 1]
                if name == "prior":
                    mo = torch.randn(*shp, generator=g) * 3.0      # prediction "sample", exceeds clip 5 sometimes
                elif name == "decoder":
                    eps = torch.randn(*shp, generator=g)
                    var = torch.rand(*shp, generator=g) * 2 - 1    # learned_range input in [-1, 1]
                    mo = torch.cat([eps, var], dim=1)
                else:
                    mo = torch.randn(*shp, generator=g)
                before = len(TAPE.draws)
                out = s.step(mo, t, sample, prev_timestep=prev, generator=g)
                p = f"unclip.{name}.n{n}.step{i}"
                T[f"{p}.model_output"] = t32(mo)
                T[f"{p}.sample"] = t32(sample)
                T[f"{p}.timestep"] = tstep(t)
                T[f"{p}.prev_timestep"] = tstep(-1 if prev is None else prev)
                if len(TAPE.draws) > before:
                    T[f"{p}.noise"] = t32(TAPE.draws[-1])
                else:
                    assert int(t) == 0
                T[f"{p}.prev_sample"] = t32(out.prev_sample)
                T[f"{p}.pred_original_sample"] = t32(out.pred_original_sample)
                sample = out.prev_sample
            TAPE.stop()
            info["loops"][f"n{n}"] = {"timesteps": [int(x) for x in ts],
                                      "steps_with_noise": [i for i, t in enumerate(ts) if int(t) > 0]}
        # single steps with prev_timestep=None at t > 0 (uses the precomputed betas[t] path)
        for t in (500, 1):
            sample = torch.randn(*shp, generator=g)
            mo = torch.randn(*shp, generator=g)
            if name == "decoder":
                mo = torch.cat([mo, torch.rand(*shp, generator=g) * 2 - 1], dim=1)
            TAPE.start_record()
            out = s.step(mo, torch.tensor(t), sample, prev_timestep=None, generator=g)
            TAPE.stop()
            p = f"unclip.{name}.single_t{t}_prevnone"
            T[f"{p}.model_output"] = t32(mo)
            T[f"{p}.sample"] = t32(sample)
            T[f"{p}.noise"] = t32(TAPE.draws[-1])
            T[f"{p}.prev_sample"] = t32(out.prev_sample)
        # _get_variance
        pv = torch.rand(*shp, generator=g) * 2 - 1
        T[f"unclip.{name}.variance.predicted_variance"] = t32(pv)
        var_cases = []
        for t, prev in ((0, None), (487, None), (999, None), (487, 320), (999, 666), (1, 0)):
            v = s._get_variance(t, prev_timestep=prev, predicted_variance=pv if name == "decoder" else None)
            key = f"unclip.{name}.variance.t{t}_prev{'none' if prev is None else prev}"
            T[key] = t32(torch.as_tensor(v).reshape(-1) if torch.as_tensor(v).dim() == 0 else v)
            var_cases.append(key)
        info["variance_keys"] = var_cases
        info["variance_note"] = ("_get_variance(t, prev_timestep, predicted_variance): fixed_small_log returns the "
                                 "STD exp(0.5*log(max(var,1e-20))) as shape [1]; learned_range returns the LOG "
                                 "variance frac*log(beta)+(1-frac)*log(var) with frac=(pv+1)/2, shape of pv (step() "
                                 "then uses exp(0.5*that)). t=0, prev=None: var=0, so fixed_small_log gives 1e-10 "
                                 "and learned_range gives -inf.")
        meta["unclip"][name] = info

    # DDIM
    ddim_cases = [
        dict(name="eps_eta0_leading", prediction_type="epsilon", eta=0.0, timestep_spacing="leading", clip_sample=False),
        dict(name="eps_eta07_trailing", prediction_type="epsilon", eta=0.7, timestep_spacing="trailing", clip_sample=True),
        dict(name="eps_eta0_linspace", prediction_type="epsilon", eta=0.0, timestep_spacing="linspace", clip_sample=False),
        dict(name="sample_eta0_leading", prediction_type="sample", eta=0.0, timestep_spacing="leading", clip_sample=False),
        dict(name="sample_eta07_leading", prediction_type="sample", eta=0.7, timestep_spacing="leading", clip_sample=True),
    ]
    shp = (2, 3, 4, 4)
    for c in ddim_cases:
        s = DDIMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2",
                          prediction_type=c["prediction_type"], timestep_spacing=c["timestep_spacing"],
                          clip_sample=c["clip_sample"])
        s.set_timesteps(6)
        ts = s.timesteps.clone()
        pfx = f"ddim.{c['name']}"
        T[f"{pfx}.timesteps"] = tstep(ts)
        sample = torch.randn(*shp, generator=g)
        T[f"{pfx}.initial_sample"] = t32(sample)
        for i, t in enumerate(ts):
            mo = torch.randn(*shp, generator=g)
            noise = torch.randn(*shp, generator=g) if c["eta"] > 0 else None
            out = s.step(mo, t, sample, eta=c["eta"], variance_noise=noise)
            T[f"{pfx}.step{i}.model_output"] = t32(mo)
            if noise is not None:
                T[f"{pfx}.step{i}.variance_noise"] = t32(noise)
            T[f"{pfx}.step{i}.prev_sample"] = t32(out.prev_sample)
            sample = out.prev_sample
        if c["name"] == "eps_eta0_leading":
            T["ddim.alphas_cumprod"] = t32(s.alphas_cumprod)
        meta["ddim"][c["name"]] = {"config": dict(s.config), "eta": c["eta"], "num_inference_steps": 6,
                                   "timesteps": [int(x) for x in ts], "sample_shape": list(shp),
                                   "final_alpha_cumprod": float(s.final_alpha_cumprod)}

    # DPM-Solver++ (2M)
    dpm_cases = [dict(name="pp2_eps", prediction_type="epsilon", steps=6),
                 dict(name="pp2_eps_n10", prediction_type="epsilon", steps=10),
                 dict(name="pp2_sample", prediction_type="sample", steps=6)]
    for c in dpm_cases:
        s = DPMSolverMultistepScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2",
                                        algorithm_type="dpmsolver++", solver_order=2,
                                        prediction_type=c["prediction_type"])
        s.set_timesteps(c["steps"])
        ts = s.timesteps.clone()
        pfx = f"dpm.{c['name']}"
        T[f"{pfx}.timesteps"] = tstep(ts)
        T[f"{pfx}.sigmas"] = t32(s.sigmas)
        sample = torch.randn(*shp, generator=g)
        T[f"{pfx}.initial_sample"] = t32(sample)
        for i, t in enumerate(ts):
            mo = torch.randn(*shp, generator=g)
            out = s.step(mo, t, sample)
            T[f"{pfx}.step{i}.model_output"] = t32(mo)
            T[f"{pfx}.step{i}.prev_sample"] = t32(out.prev_sample)
            sample = out.prev_sample
        meta["dpm"][c["name"]] = {"config": dict(s.config), "num_inference_steps": c["steps"],
                                  "timesteps": [int(x) for x in ts], "sample_shape": list(shp)}
    return T, meta


def jsonable(o):
    """Plain JSON: no NaN/Infinity literals (strings "inf", "-inf", "nan" instead), no diffusers
    bookkeeping keys (_use_default_values is built from a set: its order is not stable)."""
    if isinstance(o, dict):
        return {k: jsonable(v) for k, v in o.items() if k != "_use_default_values"}
    if isinstance(o, float) and not np.isfinite(o):
        return "nan" if np.isnan(o) else ("inf" if o > 0 else "-inf")
    if isinstance(o, (list, tuple)):
        return [jsonable(v) for v in o]
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return jsonable(float(o))
    if isinstance(o, np.ndarray):
        return o.tolist()
    return o


# ---------------------------------------------------------------------------------------------
def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "fixtures"))
    ap.add_argument("--copy-shared", action="store_true",
                    help="copy the shared components into unclip_tiny_variation/ instead of symlinking")
    args = ap.parse_args()

    torch.set_num_threads(1)
    torch.manual_seed(SEED)
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.set_verbosity_error()
    out = Path(args.out)
    assert (out / "clip_tiny" / "vocab.json").exists(), "run make_clip_fixtures.py first"

    root, var, pad_id = build_folders(out, args.copy_shared)
    patched = install_randn_patch()
    C = load_components(root, var)
    tp, vp = text_pipe(C), variation_pipe(C)
    instrument(C, tp, vp)

    # tokenizer sanity: Karlo pads with "!" (id 0); eos 1013 is the largest id -> argmax pooling finds it
    enc = C["tokenizer"]("a red circle", padding="max_length", max_length=MAX_LEN)
    assert enc["input_ids"][-1] == pad_id == 0, enc["input_ids"]
    assert C["tokenizer"].pad_token == "!"

    versions = {"torch": torch.__version__, "transformers": transformers.__version__,
                "diffusers": diffusers.__version__, "numpy": np.__version__}

    # ---- end-to-end cases
    cases_json = {"versions": versions, "seed": SEED, "pipeline_dirs": {"text": "unclip_tiny",
                                                                         "variation": "unclip_tiny_variation"},
                  "randn_tensor_patched_in": patched, "cases": []}
    case_a_T = None
    for case in CASES:
        images, draws, info, events, kwargs = run_case(case, tp, vp, out)
        exp_n, exp_parts = expected_draws(case)
        got_parts = {}
        for d in info:
            got_parts[d["stage"]] = got_parts.get(d["stage"], 0) + 1
        assert len(draws) == exp_n and got_parts == exp_parts, (case["name"], len(draws), exp_n, got_parts)
        T, notes, ncalls, side = case_tensors(case, images, draws, info, events)
        if case["name"] == "a":
            case_a_T = side
        fname = f"unclip_case_{case['name']}.safetensors"
        save_tensors(T, out / fname)
        entry = dict(case)
        entry.update({
            "file": fname,
            "call_kwargs": {k: v for k, v in kwargs.items() if k != "image"},
            "generator": f"torch.Generator('cpu').manual_seed({case['seed']}) (irrelevant when replaying the tape)",
            "batch_size": int(T["images"].shape[0]),
            "noise_tape": {"count": len(draws), "expected_count": exp_n, "per_stage": got_parts,
                           "draws": [dict(name=f"noise.{i:03d}", **d) for i, d in enumerate(info)]},
            "replay_bit_exact": True,
            "model_calls": ncalls,
            "notes": notes,
            "image_stats": {"min": float(images.min()), "max": float(images.max()), "mean": float(images.mean())},
            "tensors": describe(T),
        })
        cases_json["cases"].append(entry)
        print(f"case {case['name']}: {len(draws)} draws {got_parts}, images {tuple(images.shape)}, "
              f"replay bit-exact, {(out / fname).stat().st_size / 1e3:.0f} kB")
    cases_json["tensor_naming"] = {
        "noise.NNN": "the noise tape: every randn_tensor result in call order (f32). Replaying these in order "
                     "(pipeline latents, then scheduler variance noise) reproduces `images` bit for bit.",
        "initial latents": "prepare_latents output = the stage's first tape draw (init_noise_sigma 1.0), see "
            "notes.<stage>_initial_latents; also = <stage>_scheduler.step0.sample",
        "text_encoder.callK.*": "K=0: the prompts, K=1: [''] * batch_size (only when guided); input_ids int64 [b,77]",
        "image_encoder.call0.*": "variation only: pixel_values from CLIPImageProcessor (PIL backend), image_embeds",
        "prior.{proj_embedding,encoder_hidden_states,attention_mask}": "identical for every prior call; mask uint8 "
            "0/1 [2B,77] (uncond rows first), the tokenizer attention mask as bool",
        "prior.callK.{hidden_states,timestep,output}": "latent_model_input (cat([latents]*2) when guided), t int64 [1], "
                                                       "predicted_image_embedding (before guidance)",
        "<stage>_scheduler.stepK.*": "scheduler.step of stage prior / decoder / super_res: model_output AFTER "
            "guidance (decoder: 6 channels = guided eps + the text half's predicted variance; not stored for "
            "super_res where it equals super_res.callK.output), timestep, prev_timestep (-1 = None was passed: "
            "the last step), sample (= the stage's latents at step K; step0.sample = initial_latents). "
            "prev_sample only for the last step: stepK.prev_sample == step{K+1}.sample (asserted).",
        "<stage>_scheduler.timesteps": "int64 timesteps of the loop (set_timesteps(n))",
        "prior.final_latents / prior.image_embeddings": "before / after post_process_latents (x*clip_std+clip_mean)",
        "text_proj.in.* / text_proj.out.*": "the single text_proj call",
        "decoder.attention_mask": "constant over the decoder calls; uint8 [2B,81] (bool as passed) = "
            "F.pad(text_mask, (4,0), value=True)",
        "decoder.callK.{timestep,output}": "model input sample = cat([decoder_scheduler.stepK.sample]*2) when guided "
            "(asserted), encoder_hidden_states = text_proj.out.text_encoder_hidden_states, class_labels = "
            "text_proj.out.additive_clip_time_embeddings (asserted); output: 6 channels, both halves",
        "image_small": "decoder result after clamp(-1,1)",
        "image_upscaled": "F.interpolate(image_small, size=[32,32], mode='bicubic', align_corners=False, antialias=True)",
        "super_res.callK.{timestep,output}": "model input = cat([super_res_scheduler.stepK.sample, image_upscaled], 1) "
            "(asserted); which UNet: notes.super_res_unet_per_step",
        "images": "pipeline output, output_type='np': [N,H,W,3] float32 in [0,1]",
    }
    write_json(out / "unclip_cases.json", jsonable(cases_json))

    # ---- component fixtures
    CT = component_tensors(C, case_a_T, out)
    save_tensors(CT, out / "unclip_components.safetensors")
    comp_json = {
        "versions": versions, "seed": SEED, "pipeline_dir": "unclip_tiny",
        "variation_dir": "unclip_tiny_variation",
        "encoder_prompts": ENCODER_PROMPTS,
        "encoder_images": [f"images/image_{i}.png" for i in range(3)],
        "configs": {c: json.load(open(root / c / "config.json")) for c in
                    ("prior", "text_proj", "decoder", "super_res_first", "super_res_last", "text_encoder")},
        "image_encoder_config": json.load(open(var / "image_encoder" / "config.json")),
        "notes": [
            "*.pipe.*: recorded from case a's first call of that model (super_res_last: its only call); "
            "*.rand*.*: random inputs (seeded), outputs from the same reloaded modules. *.pipe.sample are the full "
            "model inputs (decoder: cat([latents]*2); super-res: cat([latents, image_upscaled], 1)).",
            "Masks are uint8 0/1 (1 = attend). prior masks are [B,77] over the text tokens; decoder masks [B,81] "
            "over the 4 extra CLIP tokens + 77 text tokens.",
            "Timesteps are int64: shape [1] for a scalar timestep (the pipeline passes a 0-dim int64 tensor), "
            "or [B] for per-sample timesteps (rand cases).",
            "prior.rand: per-sample timesteps [999,500,0], text lengths 1/6/77; prior.rand_nomask: same inputs, "
            "timestep 321, attention_mask=None (causal mask only).",
            "text_proj.rand_cfg: do_classifier_free_guidance=True with 2 image embeddings and 4 prompt rows "
            "(the module prepends the learned guidance embedding rows itself).",
            "decoder.rand: text mask lengths 7/24 of 81; decoder.rand_nomask: attention_mask=None, timestep 500.",
            "bicubic.*: F.interpolate(x, size, mode='bicubic', align_corners=False, antialias=True); "
            "*output_no_antialias with antialias=False for contrast. up_16x12_27x40 uses "
            "bicubic.up_16_32.input[:, :, :, :12].",
            "text_encoder.*: tokenizer with pad '!' (id 0), called without attention_mask like the pipeline.",
        ],
        "tensors": describe(CT),
    }
    write_json(out / "unclip_components.json", jsonable(comp_json))
    print(f"components: {len(CT)} tensors, {(out / 'unclip_components.safetensors').stat().st_size / 1e3:.0f} kB")

    # ---- scheduler fixtures
    ST, smeta = scheduler_tensors()
    save_tensors(ST, out / "unclip_schedulers.safetensors")
    smeta = {"versions": versions, "seed": SEED, **smeta,
             "naming": {
                 "unclip.<cfg>.n<N>.timesteps": "set_timesteps(N) (int64)",
                 "unclip.<cfg>.n<N>.step<i>.*": "one step(model_output, t, sample, prev_timestep=prev, generator) "
                     "of a full loop; sample of step i+1 = prev_sample of step i; prev_timestep -1 means None "
                     "was passed (last step, as the pipeline does); noise = the variance noise drawn (absent "
                     "when t == 0)",
                 "unclip.<cfg>.single_t<t>_prevnone.*": "a lone step with prev_timestep=None (t-1 path)",
                 "unclip.<cfg>.variance.*": "_get_variance values (see variance_note)",
                 "ddim.<case>.*": "DDIMScheduler, set_timesteps(6), step(model_output, t, sample, eta, "
                     "variance_noise=step<i>.variance_noise when eta > 0); sample of step 0 = initial_sample",
                 "dpm.<case>.*": "DPMSolverMultistepScheduler dpmsolver++ order 2, step(model_output, t, sample) "
                     "in a full loop from initial_sample (the solver keeps the previous model output internally)",
             },
             "tensors": describe(ST)}
    write_json(out / "unclip_schedulers.json", jsonable(smeta))
    print(f"schedulers: {len(ST)} tensors, {(out / 'unclip_schedulers.safetensors').stat().st_size / 1e3:.0f} kB")

    def du(p):
        return sum(f.stat().st_size for f in Path(p).rglob("*") if f.is_file() and not f.is_symlink())

    new = [root, var] + sorted(out.glob("unclip_*.safetensors")) + sorted(out.glob("unclip_*.json"))
    total = sum(du(p) if p.is_dir() else p.stat().st_size for p in new)
    print(f"unclip fixtures total: {total / 1e6:.2f} MB (shared variation components "
          f"{'copied' if args.copy_shared else 'symlinked'})")


if __name__ == "__main__":
    main()
