"""Peak memory of windowed sampling: a 64-frame video vs a 16-frame one (same window 16, stride 8).

    .venv/bin/python benchmarks/window_memory.py [--size 64 --steps 2 --backbone animatediff]

Each run is a fresh process: after loading the tiny real models and encoding the reference, it
records the resident set size, then samples and decodes (in chunks of 8 frames), and reports the
rise of the peak resident set size (``ru_maxrss``) above that baseline.  Goal: 64 frames ≤ 1.25× 16 frames.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys

from _common import setup, write_result


def _rss_kib() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def child(frames: int, size: int, steps: int, backbone: str) -> dict:
    paths = setup()
    import torch

    from performer_pkg.models.backbones.loaders import load_backbone, with_motion_module
    from performer_pkg.models.sampling.sampler import VideoSettings, decode_latents, encode_reference, sample_video

    if backbone == "svd":
        bb = load_backbone(paths["svd_file"])
    else:
        bb = with_motion_module(load_backbone(paths["sd15_file"], tokenizer_dirs=[paths["tokenizer"]]), paths["mm_file"])
    ref = encode_reference(bb, torch.rand(1, size, size, 3, generator=torch.Generator().manual_seed(0)))
    skeleton = torch.rand(frames, size, size, 3)
    sample_video(bb, VideoSettings(frames=1, width=size, height=size, steps=1), ref)  # warm-up: lazy inits, allocator pools
    base = _rss_kib()
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    lat = sample_video(bb, VideoSettings(frames=frames, width=size, height=size, steps=steps, cfg=3.5, window=16, stride=8), ref,
                       skeleton=skeleton if bb.controlnet is not None else None)
    decode_latents(bb, lat, chunk=8)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"frames": frames, "baseline_rss_mib": round(base / 1024, 1), "peak_rss_mib": round(peak / 1024, 1),
            "peak_rise_mib": round((peak - max(base, 0)) / 1024, 1), "peak_before_mib": round(peak_before / 1024, 1)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--backbone", choices=["animatediff", "svd"], default="animatediff")
    ap.add_argument("--child", type=int, default=0)
    a = ap.parse_args()
    if a.child:
        print("RESULT " + json.dumps(child(a.child, a.size, a.steps, a.backbone)))
        return
    runs = {}
    for frames in (16, 64):
        out = subprocess.run([sys.executable, __file__, "--child", str(frames), "--size", str(a.size), "--steps", str(a.steps),
                              "--backbone", a.backbone], capture_output=True, text=True, check=True).stdout
        runs[frames] = json.loads(next(l for l in out.splitlines() if l.startswith("RESULT "))[7:])
    ratio = runs[64]["peak_rss_mib"] / runs[16]["peak_rss_mib"]
    rise = runs[64]["peak_rise_mib"] / max(runs[16]["peak_rise_mib"], 0.1)
    write_result(f"window_memory_{a.backbone}", {"backbone": a.backbone, "size": a.size, "steps": a.steps, "window": 16, "stride": 8,
                                                 "runs": runs, "peak_ratio_64_vs_16": round(ratio, 3),
                                                 "peak_rise_ratio_64_vs_16": round(rise, 3), "goal": 1.25})


if __name__ == "__main__":
    main()
