"""Where does the reference's identity get lost?  A layer-by-layer look at one sampling run of a demo-style model.

    .venv/bin/python benchmarks/reference_signal.py --models DIR [--smplx-render off|normal|semantic] [--reference-render]

Samples the same evaluation performer as benchmarks/reference_effect.py (seed 1000011, identity 1000002, dance,
8 frames, 20 DDIM steps, cfg 1) twice with the same noise: once with its own frame 0 as the reference, once with
another identity's (1000005).  Reports, for the two runs:

* per reference read at the first step: how different the reference values are (``|V_own − V_other| / |V_own|``),
  how different the layer's attention output is, and how far it is from the same queries without the reference;
* per spatial transformer and for the UNet's prediction, at steps 1, 10 and 20: ``|own − other| / |own|``;
* the clean video the model predicts at the first step (zero terminal SNR: x0 = −v there), decoded and scored
  (PSNR, part colour per part) — if the reference's colours reached the prediction, its own reference scores better
  than the stranger's.

For models trained with ``--prediction v_prediction --zero-snr`` (the first-step x0 needs zero terminal SNR).
"""
from __future__ import annotations

import argparse

from _common import setup, write_result


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", required=True)
    ap.add_argument("--smplx-render", choices=["off", "normal", "semantic"], default="semantic")
    ap.add_argument("--reference-render", action="store_true",
                    help="give each reference its own skeleton and SMPL-X render (models trained with --reference-render)")
    a = ap.parse_args()
    setup(models=False)
    import torch

    from performer import load_demo_pipe
    from performer_pkg.models.attention import maths as AM
    from performer_pkg.models.body.render import render_maps
    from performer_pkg.models.body.smplx import get_body_model
    from performer_pkg.models.evaluate import metrics as M
    from performer_pkg.models.evaluate.performer import PerformerSpec, generate
    from performer_pkg.models.pose.sequence import draw
    from performer_pkg.models.sampling.sampler import VideoSettings, decode_latents, encode_reference, sample_video

    bb = load_demo_pipe(a.models)
    if not (bb.scheduler_config.get("rescale_betas_zero_snr") and bb.scheduler_config.get("prediction_type") == "v_prediction"):
        raise SystemExit("this diagnostic needs a v-prediction model with zero terminal SNR (x0 = −v at the first step)")
    people = {k: generate(PerformerSpec(seed=1_000_011, character=c, motion="dance", frames=8, size=64))
              for k, c in (("own", 1_000_002), ("other", 1_000_005))}
    skel = {k: torch.from_numpy(draw(p["pose"], 64, 64, stick_width=1)).float() / 255 for k, p in people.items()}
    rend = {k: None for k in people}
    if a.smplx_render != "off":
        rend = {k: torch.from_numpy(render_maps(p["body"], get_body_model(), 64, 64, a.smplx_render)).float() / 255
                for k, p in people.items()}
    g = people["own"]
    s = VideoSettings(frames=8, width=64, height=64, steps=20, cfg=1.0, seed=0, window=16, stride=8, reference_uncond="drop")
    unet = bb.unet
    mods = [(n, m) for n, m in unet.named_modules() if n.endswith(("attentions.0", "attentions.1")) and "motion" not in n]
    mods.append(("unet", unet))
    reads, outs, inner = {}, {}, AM.reference_attention
    for key in people:
        reads[key], outs[key] = [], {}

        def observed(q, k, v, heads, k_ref, v_ref, *args, _key=key, **kw):
            out = inner(q, k, v, heads, k_ref, v_ref, *args, **kw)
            reads[_key].append((out.detach().clone(), AM.attention(q, k, v, heads).detach(), v_ref.detach().clone()))
            return out

        def hook(name, _key=key):
            def f(m, i, o):
                x = o[0] if isinstance(o, tuple) else getattr(o, "sample", o)
                outs[_key].setdefault(name, []).append(x.detach().clone())
            return f

        hs = [m.register_forward_hook(hook(n)) for n, m in mods]
        AM.reference_attention = observed
        try:
            ref = encode_reference(bb, torch.from_numpy(people[key]["rgb"][:1]).float() / 255, noise_aug=0.0, face="off",
                                   pose=skel[key][:1] if a.reference_render else None,
                                   pose_render=rend[key][:1] if a.reference_render and rend[key] is not None else None)
            sample_video(bb, s, ref, skeleton=skel["own"], smplx=rend["own"])
        finally:
            AM.reference_attention = inner
            for h in hs:
                h.remove()
    rel = lambda x, y: round(float((x - y).norm() / x.norm()), 4)  # noqa: E731
    per_step = len(reads["own"]) // s.steps
    first_reads = [{"values_own_vs_other": rel(reads["own"][i][2], reads["other"][i][2]),
                    "output_own_vs_other": rel(reads["own"][i][0], reads["other"][i][0]),
                    "output_vs_without_reference": rel(reads["own"][i][0], reads["own"][i][1])} for i in range(per_step)]
    # call 0 of every hooked module is the reference pass; calls 1..steps are the sampling steps
    layers = {n: {f"step {i}": rel(outs["own"][n][i], outs["other"][n][i]) for i in (1, s.steps // 2, s.steps)}
              for n, _ in mods}
    x0 = {}
    for key in people:
        v = outs[key]["unet"][1]  # (1, 4, F, h, w) at t = T
        img = decode_latents(bb, -v).float().clamp(0, 1).numpy()
        m = M.compute(img, g["rgb"], material=g["material"])
        x0[f"{key} reference"] = {k: round(v_, 3) for k, v_ in m.items() if k == "psnr" or k.startswith("part_colour")}
    write_result("reference_signal", {"spec": vars(a), "first_step_reads": first_reads, "own_vs_other_by_layer": layers,
                                      "x0_predicted_at_first_step": x0})


if __name__ == "__main__":
    main()
