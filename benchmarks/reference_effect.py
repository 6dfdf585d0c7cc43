"""Does the demo model use its reference?  Sampling the same evaluation-range performer with the reference, without
it, and with another identity's frame as the reference, plus the VAE round trip of the true frames (the floor).

    .venv/bin/python benchmarks/reference_effect.py [--models assets/demo_models --frames 8 --steps 20]

A model that copies appearance from its reference gives a large difference between "its own reference" and "another
identity's reference", and a part-colour distance well below plain sampling's."""
from __future__ import annotations

import argparse
import os

from _common import REPO, setup, write_result


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default=os.path.join(REPO, "assets", "demo_models"))
    ap.add_argument("--seed", type=int, default=1_000_011)
    ap.add_argument("--character", type=int, default=1_000_002)
    ap.add_argument("--other", type=int, default=1_000_005, help="the other identity used as a wrong reference")
    ap.add_argument("--motion", default="dance")
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--cfg", type=float, default=1.0, help="guidance on the reference: the unconditional row does not "
                                                            "read it (reference_uncond drop) when > 1")
    a = ap.parse_args()
    setup(models=False)
    import numpy as np
    import torch

    from performer import load_demo_pipe
    from performer_pkg.models.evaluate import metrics as M
    from performer_pkg.models.evaluate.performer import PerformerSpec, generate, split_of
    from performer_pkg.models.pose.sequence import draw
    from performer_pkg.models.sampling.sampler import (VideoSettings, decode_latents, encode_reference, encode_video,
                                               sample_video)

    if split_of(a.seed, a.character) != "eval" or split_of(a.seed, a.other) != "eval":
        raise SystemExit("use evaluation-range seeds (>= 1000000)")
    bb = load_demo_pipe(a.models)
    g = generate(PerformerSpec(seed=a.seed, character=a.character, motion=a.motion, frames=a.frames, size=64))
    o = generate(PerformerSpec(seed=a.seed, character=a.other, motion=a.motion, frames=a.frames, size=64))
    sk = torch.from_numpy(draw(g["pose"], 64, 64, stick_width=1)).float() / 255
    s = VideoSettings(frames=a.frames, width=64, height=64, steps=a.steps, cfg=a.cfg, seed=0, window=16, stride=8,
                      reference_uncond="drop")
    videos, scores = {}, {}
    for name, img, use in (("plain", g["rgb"][:1], False), ("own reference", g["rgb"][:1], True),
                           ("other identity as reference", o["rgb"][:1], True)):
        ref = encode_reference(bb, torch.from_numpy(img).float() / 255, noise_aug=0.0, face="off")
        v = decode_latents(bb, sample_video(bb, s, ref, skeleton=sk, use_reference_attention=use)).float().clamp(0, 1).numpy()
        videos[name] = v
        m = M.compute(v, g["rgb"], material=g["material"])
        scores[name] = {"psnr": round(m["psnr"], 2), "part_colour": round(m["part_colour"], 3)}
    rt = decode_latents(bb, encode_video(bb, torch.from_numpy(g["rgb"]).float() / 255)).float().clamp(0, 1).numpy()
    m = M.compute(rt, g["rgb"], material=g["material"])
    scores["VAE round trip of the truth"] = {"psnr": round(m["psnr"], 2), "part_colour": round(m["part_colour"], 3)}
    diff = lambda x, y: round(float(np.abs(videos[x] - videos[y]).mean()), 5)  # noqa: E731
    write_result("reference_effect", {"spec": vars(a), "scores": scores,
                                      "mean_abs_diff_own_vs_plain": diff("own reference", "plain"),
                                      "mean_abs_diff_own_vs_other_reference": diff("own reference", "other identity as reference")})


if __name__ == "__main__":
    main()
