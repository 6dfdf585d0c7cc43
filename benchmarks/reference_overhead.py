"""Wall time of sampling with causal reference attention ÷ plain sampling (same frames, steps, seed).

    .venv/bin/python benchmarks/reference_overhead.py [--frames 16 --steps 20 --size 40 --repeats 3]

Tiny real models (tests/tiny_models.py) on this CPU, one thread.  The default size keeps the tiny
UNet's ratio of tokens to channels at its first level close to real SD1.5 at 512² (4096 tokens /
320 channels ≈ 12.8; here (40/2)² = 400 tokens / 32 channels = 12.5), so attention's share of the
*flops* — which is what the reference adds to — is like the real model's.  Its share of the *time* is not:
the test UNet's heads are 4 channels wide, and PyTorch's CPU attention kernel runs about 7× fewer flops per
second on them than on SD1.5's 40-channel heads (benchmarks/attention_heads.py).  Goal: ≤ 1.15×.

``--width-mult K`` (AnimateDiff only) swaps in a UNet + motion module of the same classes and layout
with K× the channels (random weights; speed does not depend on them): 8 heads of 4·K channels.  Raise
``--size`` with it (K = 2: 56 px) to keep the tokens-to-channels ratio.

``--realsize`` builds the real SD1.5 UNet + AnimateDiff v2 motion module (or SVD-xt) from models/backbones/configs with random
weights (benchmarks/gpu_realsize.build) and times it on this CPU in fp32.  A full 16-frame, 25-step run would take hours
here, so it runs few frames and steps (defaults 4 and 4): that gives the one reference pass a far larger share of the
run than in real use, so the ratio it reports is an upper bound on the real one.
"""
from __future__ import annotations

import argparse
import statistics
import time

from _common import setup, write_result


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, help="default 16 (--realsize: 4)")
    ap.add_argument("--steps", type=int, help="default 20 (--realsize: 4)")
    ap.add_argument("--size", type=int, help="default 40 (--realsize: 512)")
    ap.add_argument("--repeats", type=int, help="default 3 (--realsize: 1)")
    ap.add_argument("--backbone", choices=["animatediff", "svd"], default="animatediff")
    ap.add_argument("--width-mult", type=int, default=1)
    ap.add_argument("--realsize", action="store_true", help="real SD1.5 + motion module / SVD-xt sizes (random weights)")
    a = ap.parse_args()
    # --realsize defaults fit this CPU: 512 px, 4 frames, 4 steps, one timed repeat; explicit flags win
    for k, tiny, real in (("frames", 16, 4), ("steps", 20, 4), ("size", 40, 512), ("repeats", 3, 1)):
        if getattr(a, k) is None:
            setattr(a, k, real if a.realsize else tiny)
    paths = setup(models=not a.realsize)  # --realsize builds its own models
    import torch

    from performer_pkg.models.backbones.loaders import load_backbone, with_motion_module
    from performer_pkg.models.attention.reference import ReferenceState
    from performer_pkg.models.sampling.sampler import VideoSettings, encode_reference, sample_video

    if a.realsize:
        from gpu_realsize import build

        bb = build(a.backbone, torch.device("cpu"), torch.float32, tiny=False)
        cfg = 2.5 if a.backbone == "svd" else 7.5
    elif a.backbone == "svd":
        bb = load_backbone(paths["svd_file"])
        cfg = 2.5
    else:
        bb = load_backbone(paths["sd15_file"], tokenizer_dirs=[paths["tokenizer"]])
        if a.width_mult > 1:
            from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel

            torch.manual_seed(0)
            ch = [c * a.width_mult for c in bb.unet.config.block_out_channels]
            unet2d = UNet2DConditionModel.from_config({**bb.unet.config, "block_out_channels": ch})
            adapter = MotionAdapter(block_out_channels=ch, motion_layers_per_block=bb.unet.config.layers_per_block,
                                    motion_num_attention_heads=8, motion_norm_num_groups=32, motion_max_seq_length=32)
            bb = bb.with_parts(unet=UNetMotionModel.from_unet2d(unet2d, adapter).eval(), motion_adapter=adapter)
        else:
            bb = with_motion_module(bb, paths["mm_file"])
        cfg = 7.5
    g = torch.Generator().manual_seed(0)
    ref = encode_reference(bb, torch.rand(1, a.size, a.size, 3, generator=g), face="off")
    s = VideoSettings(frames=a.frames, width=a.size, height=a.size, steps=a.steps, cfg=cfg, seed=0, prompt="a person")
    times = {"plain": [], "reference": []}
    st = ReferenceState()
    sample_video(bb, VideoSettings(frames=2, width=a.size, height=a.size, steps=1, cfg=cfg), ref)  # warm-up
    for _ in range(a.repeats):
        for mode in ("plain", "reference"):
            t0 = time.perf_counter()
            sample_video(bb, s, ref, use_reference_attention=(mode == "reference"), ref_state=st)
            times[mode].append(time.perf_counter() - t0)
    plain, refd = statistics.median(times["plain"]), statistics.median(times["reference"])
    tag = a.backbone + ("_realsize" if a.realsize else f"_x{a.width_mult}" if a.width_mult > 1 else "")
    write_result(f"reference_overhead_{tag}", {
        "backbone": a.backbone, "width_mult": a.width_mult, "realsize": a.realsize, "frames": a.frames, "steps": a.steps, "size": a.size, "cfg": cfg,
        "threads": torch.get_num_threads(), "plain_s": round(plain, 3), "reference_s": round(refd, 3),
        "ratio": round(refd / plain, 3), "goal": 1.15, "reference_passes_per_run": st.writes / a.repeats,
        # the one reference pass per run, and the ratio without it (what the extended attention alone costs)
        "reference_pass_s": round(st.write_seconds / a.repeats, 3),
        "ratio_without_reference_pass": round((refd - st.write_seconds / a.repeats) / plain, 3),
        "all_times": times})


if __name__ == "__main__":
    main()
