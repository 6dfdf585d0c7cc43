"""Does the demo model use its reference?  Sampling the same evaluation-range performer with the reference, without
it, and with another identity's frame as the reference, plus the VAE round trip of the true frames (the floor).

    .venv/bin/python benchmarks/reference_effect.py [--models assets/demo_models --frames 8 --steps 20]

A model that copies appearance from its reference gives a large difference between "its own reference" and "another
identity's reference", and a part-colour distance well below plain sampling's.  ``attention_on_own_reference`` says
how the reference is read: the softmax mass on the reference keys and the mean largest weight per query, beside the
largest weight of uniform attention (a model whose attention stays near uniform only adds the reference's average)."""
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
    ap.add_argument("--reference-pose", action="store_true",
                    help="give each reference its own skeleton map (Encode Reference's pose input, SCD's pose injection), "
                         "as models trained with scripts/train_demo_models.py --reference-pose expect")
    ap.add_argument("--smplx-render", choices=["off", "normal", "semantic"], default="off",
                    help="also guide the target with SMPL-X renders of this kind (the pose controller's smplx encoder; "
                         "semantic for models trained with --smplx-render semantic)")
    ap.add_argument("--reference-render", action="store_true",
                    help="with --reference-pose: give each reference its own SMPL-X render of --smplx-render's kind too")
    a = ap.parse_args()
    if a.reference_render and (a.smplx_render == "off" or not a.reference_pose):
        ap.error("--reference-render needs --reference-pose and --smplx-render normal|semantic")
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
    rend = {}
    if a.smplx_render != "off":
        from performer_pkg.models.body.render import render_maps
        from performer_pkg.models.body.smplx import get_body_model

        # the other identity's render is read only as its reference's own render
        for key, x in (("own", g), ("other", o))[:2 if a.reference_render else 1]:
            rend[key] = torch.from_numpy(render_maps(x["body"], get_body_model(), 64, 64, a.smplx_render)).float() / 255
    s = VideoSettings(frames=a.frames, width=64, height=64, steps=a.steps, cfg=a.cfg, seed=0, window=16, stride=8,
                      reference_uncond="drop")
    videos, scores = {}, {}
    # how the attention treats the reference: per read, the share of the softmax mass on the reference keys and the
    # mean largest weight (uniform attention over [reference, target] puts 0.5 on the reference and 1/keys everywhere)
    from performer_pkg.models.attention import maths as AM

    seen, inner = [], AM.reference_attention

    def observed(q, k, v, heads, k_ref, v_ref, *args, **kw):
        b, n, c = q.shape
        d = c // heads
        kk = torch.cat([k_ref.to(k.dtype).expand(b, -1, -1), k], 1)
        w = (q.view(b, n, heads, d).transpose(1, 2) @ kk.view(b, -1, heads, d).permute(0, 2, 3, 1) / d ** 0.5).softmax(-1)
        seen.append((float(w[..., :k_ref.shape[1]].sum(-1).mean()), float(w.max(-1).values.mean()), kk.shape[1]))
        return inner(q, k, v, heads, k_ref, v_ref, *args, **kw)
    osk = torch.from_numpy(draw(o["pose"], 64, 64, stick_width=1)).float() / 255
    for name, img, rp, who, use in (("plain", g["rgb"][:1], sk[:1], "own", False),
                                    ("own reference", g["rgb"][:1], sk[:1], "own", True),
                                    ("other identity as reference", o["rgb"][:1], osk[:1], "other", True)):
        ref = encode_reference(bb, torch.from_numpy(img).float() / 255, noise_aug=0.0, face="off",
                               pose=rp if a.reference_pose else None,
                               pose_render=rend[who][:1] if a.reference_render else None)
        AM.reference_attention = observed if name == "own reference" else inner
        try:
            v = decode_latents(bb, sample_video(bb, s, ref, skeleton=sk, smplx=rend.get("own"),
                                                           use_reference_attention=use)).float().clamp(0, 1).numpy()
        finally:
            AM.reference_attention = inner
        videos[name] = v
        m = M.compute(v, g["rgb"], material=g["material"])
        scores[name] = {"psnr": round(m["psnr"], 2), "part_colour": round(m["part_colour"], 3)}
    rt = decode_latents(bb, encode_video(bb, torch.from_numpy(g["rgb"]).float() / 255)).float().clamp(0, 1).numpy()
    m = M.compute(rt, g["rgb"], material=g["material"])
    scores["VAE round trip of the truth"] = {"psnr": round(m["psnr"], 2), "part_colour": round(m["part_colour"], 3)}
    diff = lambda x, y: round(float(np.abs(videos[x] - videos[y]).mean()), 5)  # noqa: E731
    write_result("reference_effect", {"spec": vars(a), "scores": scores,
                                      "mean_abs_diff_own_vs_plain": diff("own reference", "plain"),
                                      "mean_abs_diff_own_vs_other_reference": diff("own reference", "other identity as reference"),
                                      "attention_on_own_reference": {
                                          "reads": len(seen),
                                          "mass_on_reference": round(sum(x[0] for x in seen) / max(len(seen), 1), 3),
                                          "mean_peak_weight": round(sum(x[1] for x in seen) / max(len(seen), 1), 4),
                                          "uniform_peak_weight": round(sum(1 / x[2] for x in seen) / max(len(seen), 1), 4)}})


if __name__ == "__main__":
    main()
