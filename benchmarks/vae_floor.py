"""The VAE's floor: how much of the truth survives the demo model's VAE alone (encode, decode), scored as the sampled
videos are.  No sampled video can beat it on part colour or PSNR, so a goal such as issue 19's "half the part-colour
distance of plain sampling" is reachable only when this floor is well below that half.

    .venv/bin/python benchmarks/vae_floor.py [--models assets/demo_models --frames 8]

Evaluation-range performers only (identities, backgrounds and motions no training step saw); the first is the one
``benchmarks/reference_effect.py`` and the demo use.  The VAE runs through the pack's own ``encode_video`` /
``decode_latents``, as sampling does.
"""
from __future__ import annotations

import argparse
import os

from _common import REPO, setup, write_result

PERFORMERS = ((1_000_011, 1_000_002, "dance"), (1_000_011, 1_000_005, "dance"), (1_000_023, 1_000_007, "wave"),
              (1_000_031, 1_000_013, "walk"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default=os.path.join(REPO, "assets", "demo_models"))
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--performers", type=int, default=len(PERFORMERS), help=f"how many of the {len(PERFORMERS)} to score")
    a = ap.parse_args()
    setup(models=False)
    import numpy as np
    import torch

    from performer import load_demo_pipe
    from performer_pkg.models.evaluate import metrics as M
    from performer_pkg.models.evaluate.performer import PerformerSpec, generate, split_of
    from performer_pkg.models.sampling.sampler import decode_latents, encode_video

    bb = load_demo_pipe(a.models)
    rows = []
    for seed, character, motion in PERFORMERS[:a.performers]:
        assert split_of(seed, character) == "eval"
        g = generate(PerformerSpec(seed=seed, character=character, motion=motion, frames=a.frames, size=64))
        with torch.no_grad():
            rt = decode_latents(bb, encode_video(bb, torch.from_numpy(g["rgb"]).float() / 255)).float().clamp(0, 1).numpy()
        m = M.compute(rt, g["rgb"], material=g["material"])
        rows.append({"seed": seed, "character": character, "motion": motion, "psnr": round(m["psnr"], 2),
                     "part_colour": round(m["part_colour"], 3)})
    write_result("vae_floor", {"spec": vars(a), "performers": rows,
                               "mean_psnr": round(float(np.mean([r["psnr"] for r in rows])), 2),
                               "mean_part_colour": round(float(np.mean([r["part_colour"] for r in rows])), 3)})


if __name__ == "__main__":
    main()
