"""Tiny U-Nets exercising the non-Karlo paths (DownBlock2D/UpBlock2D, per-block head dims,
only_cross_attention, skip_time_act, out scale factors, time_embedding_act_fn, timestep_post_act,
class_embeddings_concat, conv kernels, freq_shift, center_input_sample, mid-block self-attention
with and without group norm), with diffusers 0.42.1. Usage: python make_unet_variants.py OUT_DIR"""
import sys, os, torch
from safetensors.torch import save_file
from diffusers import UNet2DConditionModel, UNet2DModel

out = sys.argv[1]
os.makedirs(out, exist_ok=True)
torch.manual_seed(1234)

def nudge(m):
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return m.eval()

tensors = {}
def cond(only_cross):
    return nudge(UNet2DConditionModel(
        sample_size=16, in_channels=3, out_channels=6, center_input_sample=True,
        flip_sin_to_cos=False, freq_shift=1,
        down_block_types=("DownBlock2D", "SimpleCrossAttnDownBlock2D", "ResnetDownsampleBlock2D"),
        mid_block_type="UNetMidBlock2DSimpleCrossAttn",
        up_block_types=("ResnetUpsampleBlock2D", "SimpleCrossAttnUpBlock2D", "UpBlock2D"),
        only_cross_attention=only_cross, block_out_channels=(16, 32, 48),
        layers_per_block=[1, 2, 1], downsample_padding=0, mid_block_scale_factor=1.2,
        norm_num_groups=8, cross_attention_dim=24, attention_head_dim=[8, 16, 8],
        class_embed_type="identity", class_embeddings_concat=True,
        resnet_time_scale_shift="default", resnet_skip_time_act=True, resnet_out_scale_factor=1.5,
        time_embedding_dim=40, time_embedding_act_fn="silu", timestep_post_act="silu",
        conv_in_kernel=5, conv_out_kernel=1,
    ))

B, S = 2, 7
x = torch.randn(B, 3, 12, 20)
t = torch.tensor([17, 803])
ehs = torch.randn(B, S, 24)
labels = torch.randn(B, 40)
mask = torch.tensor([[1, 1, 1, 0, 0, 0, 0], [1] * 7], dtype=torch.uint8)
tensors.update({"a.sample": x, "a.timestep": t, "a.class_labels": labels,
                "a.attention_mask": mask, "a.encoder_hidden_states": ehs})
# a: text and pixel keys, masked text. o: text keys only (diffusers cannot mask this case).
a = cond(False)
a.save_pretrained(f"{out}/cond_a", safe_serialization=True)
o = cond([False, True, True])
o.save_pretrained(f"{out}/cond_o", safe_serialization=True)
with torch.no_grad():
    tensors["a.output"] = a(x, t, ehs, class_labels=labels, attention_mask=mask).sample
    tensors["o.output"] = o(x, t, ehs, class_labels=labels).sample

for name, shift in [("b", "default"), ("c", "scale_shift")]:
    m = nudge(UNet2DModel(
        sample_size=16, in_channels=6, out_channels=3, center_input_sample=True,
        time_embedding_dim=24, freq_shift=1, flip_sin_to_cos=False,
        down_block_types=("DownBlock2D", "ResnetDownsampleBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "ResnetUpsampleBlock2D", "UpBlock2D"),
        block_out_channels=(8, 16, 24), layers_per_block=1, mid_block_scale_factor=1.5,
        attention_head_dim=8 if name == "b" else None, norm_num_groups=4,
        resnet_time_scale_shift=shift, add_attention=True, class_embed_type="identity",
    ))
    m.save_pretrained(f"{out}/plain_{name}", safe_serialization=True)
    xs = torch.randn(2, 6, 16, 12)
    ts = torch.tensor([999, 4])
    lab = torch.randn(2, 24)
    with torch.no_grad():
        y = m(xs, ts, class_labels=lab).sample
    tensors.update({f"{name}.sample": xs, f"{name}.timestep": ts, f"{name}.class_labels": lab,
                    f"{name}.output": y})

save_file({k: v.contiguous() for k, v in tensors.items()}, f"{out}/io.safetensors")
print("wrote", out, {k: tuple(v.shape) for k, v in tensors.items()})
