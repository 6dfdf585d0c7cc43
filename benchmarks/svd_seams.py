"""Seams of a long SVD video sampled in context windows, with and without frame-0 anchoring (issue 18).

    .venv/bin/python benchmarks/svd_seams.py [--frames 25 --window 8 --stride 6 --steps 6 --size 64 --seeds 3]

The tiny SVD pipe (random weights, tests/tiny_models), a seeded reference image; each seed samples the same video
twice: plain windows and anchored windows (frame 0 in every window, MimicMotion's tiling; `anchor_first_frame`).
Seam metric, per video: the mean absolute difference between consecutive decoded frames across the window boundaries
(the first frame of each window after the first, and the frame after each window's last) divided by the median of
the same difference over all other consecutive pairs.  1 = no seam.  Reported per seed and as the mean; on random
tiny weights this checks the mechanism and the measurement, not the look of a trained model.
"""
from __future__ import annotations

import argparse
import statistics

from _common import setup, write_result


def seam_ratio(frames, windows):
    """(boundary mean / median elsewhere) of |frame[i] - frame[i-1]| over i = 1 … F-1."""
    import torch

    diffs = (frames[1:].float() - frames[:-1].float()).abs().mean(dim=(1, 2, 3))  # transition i-1 → i at index i-1
    bounds = set()
    for k, w in enumerate(windows):
        inner = [i for i in w if i != 0] if all(v[0] == 0 for v in windows) else w
        if k > 0:
            bounds.add(inner[0])
        if inner[-1] + 1 < frames.shape[0]:
            bounds.add(inner[-1] + 1)
    at = [diffs[i - 1] for i in sorted(bounds) if i >= 1]
    rest = [diffs[i - 1] for i in range(1, frames.shape[0]) if i not in bounds]
    return float(torch.stack(at).mean() / torch.stack(rest).median()), sorted(bounds)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=25)
    ap.add_argument("--window", type=int, default=8)
    ap.add_argument("--stride", type=int, default=6)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--seeds", type=int, default=3)
    a = ap.parse_args()
    paths = setup()
    import torch

    from performer_pkg.models.backbones.loaders import load_backbone
    from performer_pkg.models.sampling.sampler import VideoSettings, decode_latents, encode_reference, sample_video
    from performer_pkg.models.sampling.windows import plan_windows

    bb = load_backbone(paths["svd_file"])
    out = {"spec": vars(a), "windows": {}, "seeds": []}
    for anchor in (False, True):
        out["windows"]["anchored" if anchor else "plain"] = plan_windows(a.frames, a.window, a.stride, anchor=anchor)
    if len(out["windows"]["plain"]) < 3:
        raise SystemExit("Use a video of at least 3 windows (more frames or a smaller window).")
    for seed in range(a.seeds):
        g = torch.Generator().manual_seed(100 + seed)
        ref = encode_reference(bb, torch.rand(1, a.size, a.size, 3, generator=g), noise_aug=0.02)
        row = {"seed": seed}
        for anchor in (False, True):
            s = VideoSettings(frames=a.frames, width=a.size, height=a.size, steps=a.steps, cfg=2.5, seed=seed,
                              window=a.window, stride=a.stride, anchor_first_frame=anchor)
            frames = decode_latents(bb, sample_video(bb, s, ref), chunk=8)
            key = "anchored" if anchor else "plain"
            row[key], row[f"{key}_boundaries"] = seam_ratio(frames, out["windows"][key])
            row[key] = round(row[key], 3)
        out["seeds"].append(row)
    for key in ("plain", "anchored"):
        out[f"mean_{key}"] = round(statistics.mean(r[key] for r in out["seeds"]), 3)
    write_result("svd_seams", out)


if __name__ == "__main__":
    main()
