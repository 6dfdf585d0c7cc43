"""Wall time of sampling with causal reference attention ÷ plain sampling (same frames, steps, seed).

    .venv/bin/python benchmarks/reference_overhead.py [--frames 16 --steps 20 --size 40 --repeats 3]

Tiny real models (tests/tiny_models.py) on this CPU, one thread.  The default size keeps the tiny
UNet's ratio of tokens to channels at its first level close to real SD1.5 at 512² (4096 tokens /
320 channels ≈ 12.8; here (40/2)² = 400 tokens / 32 channels = 12.5), so attention's share of the
work — which is what the reference adds to — is like the real model's.  Goal: ≤ 1.15×.
"""
from __future__ import annotations

import argparse
import statistics
import time

from _common import setup, write_result


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--size", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--backbone", choices=["animatediff", "svd"], default="animatediff")
    a = ap.parse_args()
    paths = setup()
    import torch

    from performer_pkg.models.backbones import load_backbone, with_motion_module
    from performer_pkg.models.reference_attention import ReferenceState
    from performer_pkg.models.sampling import VideoSettings, encode_reference, sample_video

    if a.backbone == "svd":
        bb = load_backbone(paths["svd_file"])
        cfg = 2.5
    else:
        bb = with_motion_module(load_backbone(paths["sd15_file"], tokenizer_dirs=[paths["tokenizer"]]), paths["mm_file"])
        cfg = 7.5
    g = torch.Generator().manual_seed(0)
    ref = encode_reference(bb, torch.rand(1, a.size, a.size, 3, generator=g))
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
    write_result(f"reference_overhead_{a.backbone}", {
        "backbone": a.backbone, "frames": a.frames, "steps": a.steps, "size": a.size, "cfg": cfg,
        "threads": torch.get_num_threads(), "plain_s": round(plain, 3), "reference_s": round(refd, 3),
        "ratio": round(refd / plain, 3), "goal": 1.15, "reference_passes_per_run": st.writes / a.repeats,
        "all_times": times})


if __name__ == "__main__":
    main()
