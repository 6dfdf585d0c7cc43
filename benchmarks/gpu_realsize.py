"""Seconds per frame for real-size SD1.5 + AnimateDiff motion module and SVD architectures, with and without causal
reference attention (random weights: speed does not depend on them).  Goal (reference-sampling issue): ≤ 0.25 s/frame
at 512×512, bf16, 25 steps, on an H100.

    python benchmarks/gpu_realsize.py                       # both backbones, 512², 16 / 14 frames, 25 steps, bf16, CUDA
    python benchmarks/gpu_realsize.py --tiny                # the same code on the CPU at a toy size (a smoke run)

The architectures come from models/backbones/configs/*.json (the real SD1.5 UNet / VAE / CLIP-L text encoder, AnimateDiff v2
motion adapter, SVD-xt UNet / temporal VAE / ViT-H image encoder); the tokenizer from assets/demo_models (OpenAI CLIP
BPE).  Timed: ``sample_video`` (denoising, with the reference pass when on), and the chunked VAE decode separately;
each mode once for warm-up, then the median of ``--repeats``.  Writes out/benchmarks/gpu_realsize.json.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

from _common import REPO, write_result


def build(backbone: str, device, dtype, tiny: bool):
    import torch
    from performer_pkg.models.backbones.loaders import Backbone, load_clip_tokenizer, reference_config

    def cfg(name, **over):
        c = {k: v for k, v in reference_config(name).items() if not k.startswith("_")}
        c.update(over)
        return c

    torch.manual_seed(0)
    if backbone == "animatediff":
        from diffusers import AutoencoderKL, MotionAdapter, UNet2DConditionModel, UNetMotionModel
        from transformers import CLIPTextConfig, CLIPTextModel

        small = dict(block_out_channels=[32, 64, 64, 64], cross_attention_dim=32, attention_head_dim=8) if tiny else {}
        unet2d = UNet2DConditionModel.from_config(cfg("sd15_unet.json", **small))
        ad = MotionAdapter.from_config(cfg("motion_adapter.json", **({"block_out_channels": [32, 64, 64, 64],
                                                                        "motion_norm_num_groups": 32} if tiny else {})))
        unet = UNetMotionModel.from_unet2d(unet2d, ad)
        vae = AutoencoderKL.from_config(cfg("sd15_vae.json", **({"block_out_channels": [32, 32, 64, 64]} if tiny else {})))
        tc = cfg("sd15_text_encoder.json", **({"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4,
                                               "num_hidden_layers": 2, "projection_dim": 32} if tiny else {}))
        text = CLIPTextModel(CLIPTextConfig(**tc))
        tok = load_clip_tokenizer([os.path.join(REPO, "assets", "demo_models", "sd15", "tokenizer")])
        parts = dict(family="sd15", unet=unet, vae=vae, text_encoder=text, tokenizer=tok, motion_adapter=ad,
                     scheduler_config=reference_config("sd15_scheduler.json"))
    else:
        from diffusers import AutoencoderKLTemporalDecoder, UNetSpatioTemporalConditionModel
        from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

        from performer_pkg.models.backbones import convert_svd

        small = dict(block_out_channels=[32, 64, 64, 64], cross_attention_dim=32, num_attention_heads=[2, 4, 4, 4]) if tiny else {}
        unet = UNetSpatioTemporalConditionModel.from_config(cfg("svd_unet.json", **small))
        vae = AutoencoderKLTemporalDecoder.from_config(cfg("svd_vae.json", **({"block_out_channels": [32, 32, 64, 64]} if tiny else {})))
        vc = cfg("svd_image_encoder.json", **({"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4,
                                               "num_hidden_layers": 2, "projection_dim": 32, "patch_size": 14} if tiny else {}))
        enc = CLIPVisionModelWithProjection(CLIPVisionConfig(**vc))
        parts = dict(family="svd", unet=unet, vae=vae, image_encoder=enc, feature_extractor=convert_svd.default_image_processor(),
                     scheduler_config=reference_config("svd_scheduler.json"))
    for k in ("unet", "vae", "text_encoder", "image_encoder", "motion_adapter"):
        if parts.get(k) is not None:
            parts[k] = parts[k].to(device, dtype).eval().requires_grad_(False)
    return Backbone(dtype=dtype, device=device, **parts)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backbone", choices=["animatediff", "svd", "both"], default="both")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--frames", type=int, default=0, help="0: 16 for AnimateDiff, 14 for SVD")
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default="bf16")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--tiny", action="store_true", help="CPU smoke run at 64 px, 4 frames, 2 steps, toy widths")
    a = ap.parse_args()
    import sys

    sys.path.insert(0, os.path.join(REPO, "tests"))
    import pack_alias

    pack_alias.register_package()
    import torch

    from performer_pkg.models.sampling.sampler import VideoSettings, decode_latents, encode_reference, sample_video

    if a.tiny:
        a.size, a.steps, a.repeats, a.dtype = 64, 2, 1, "fp32"
    device = torch.device("cuda" if torch.cuda.is_available() and not a.tiny else "cpu")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[a.dtype]
    out = {"device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu", "size": a.size, "steps": a.steps,
           "dtype": a.dtype, "tiny": a.tiny, "goal_s_per_frame": 0.25, "results": {}}

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    for backbone in (["animatediff", "svd"] if a.backbone == "both" else [a.backbone]):
        frames = a.frames or (4 if a.tiny else 16 if backbone == "animatediff" else 14)
        bb = build(backbone, device, dtype, a.tiny)
        g = torch.Generator().manual_seed(0)
        ref = encode_reference(bb, torch.rand(1, a.size, a.size, 3, generator=g), face="off")
        s = VideoSettings(frames=frames, width=a.size, height=a.size, steps=a.steps, seed=0, prompt="a person dancing",
                          cfg=7.5 if backbone == "animatediff" else 2.5)
        res = {"frames": frames}
        for mode in ("plain", "reference"):
            times = []
            for i in range(a.repeats + 1):
                sync()
                t0 = time.perf_counter()
                lat = sample_video(bb, s, ref, use_reference_attention=(mode == "reference"))
                sync()
                if i:  # the first run warms up kernels and allocator
                    times.append(time.perf_counter() - t0)
            t = statistics.median(times)
            res[mode] = {"seconds": round(t, 3), "s_per_frame": round(t / frames, 4)}
        sync()
        t0 = time.perf_counter()
        decode_latents(bb, lat, chunk=8)
        sync()
        res["decode_s_per_frame"] = round((time.perf_counter() - t0) / frames, 4)
        res["reference_ratio"] = round(res["reference"]["seconds"] / res["plain"]["seconds"], 3)
        if device.type == "cuda":
            res["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2 ** 30, 2)
            torch.cuda.reset_peak_memory_stats()
        out["results"][backbone] = res
        del bb
    write_result("gpu_realsize" + ("_tiny" if a.tiny else ""), out)


if __name__ == "__main__":
    main()
