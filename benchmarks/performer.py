"""The synthetic-performer ablation: does each method in the pack improve the result?  (issue: synthetic performer)

    .venv/bin/python benchmarks/performer.py [--seed 1000021 --character 1000007 --motion walk --cross-motion dance --seeds 0 1]
    … --rows 1-3 --guidance skeleton+smplx   (rows 1-3 only, every row guided by skeletons and SMPL-X renders)

The reference's own pose and render and the kind of SMPL-X render follow the model's train_log.json (how
scripts/train_demo_models.py trained it) unless --reference-pose / --[no-]reference-render / --smplx-render say
otherwise.

Data (models/evaluate/performer.py, a seed and a spec → ground truth): one performer from the generator's evaluation range
(identity and sequence seeds >= EVAL_BASE; the demo model trained only below it, so identity, background and motion
instance are unseen; the script refuses specs outside that range),
``--frames`` frames of ``--motion`` at ``--size`` px.  DiffPerformer's split: the first 80 % of the frames are the
one-shot training video, the last 20 % (a contiguous block, so the true flow between its frames exists) are the
held-out poses.  The cross-motion sequence is the same performer doing ``--cross-motion`` (16 frames).  The reference
photo is training frame 0.

Model: the demo model (assets/demo_models: SD1.5-layout UNet + AnimateDiff motion adapter + the pack's pose
controller with skeleton and SMPL-X encoders, trained by scripts/train_demo_models.py on other performers).

Baselines: the ground truth with Gaussian noise (σ = ``--noise`` grey levels) and a frozen video (the sequence's first
true frame repeated): a frozen video must score worse on motion (flow end-point error) than every generated row.

Rows, every one generated with the same sampling seeds (``--seeds``), scores averaged over seeds:

1. plain — base model, skeleton maps, no reference attention
2. + SCD — causal reference attention to the reference photo
3. + VividPose — and the SMPL-X (normal) renders of the target bodies carrying the reference's shape
4. one-shot personalised (PoseCrafter target layers on the 80 % training frames), skeleton only, then PoseCrafter's
   steps added one by one: + reference-frame selection (nearest training pose, DDIM-inverted, replicated) ·
   + key-frame insertion · + latent affine editing of face and hands
5. DiffPerformer on the personalised model's output (row 4's first line): IVR refinement loop without flow ·
   with the 3D-aware human flow from the body meshes

Writes out/benchmarks/performer.json and prints a Markdown table per sequence.  Deterministic on one thread.
"""
from __future__ import annotations

import argparse
import os
import time

from _common import REPO, trained_with, write_result

ROWS = [
    ("gt+noise", "baseline: ground truth + noise"),
    ("frozen", "baseline: frozen first frame"),
    ("1", "plain sampling (no reference attention)"),
    ("2", "+ causal reference attention (SCD)"),
    ("3", "+ pose controller with SMPL-X renders, reference shape (VividPose)"),
    ("4", "one-shot personalised, plain"),
    ("4a", "PoseCrafter: + reference-frame selection (inverted)"),
    ("4b", "PoseCrafter: + key-frame insertion"),
    ("4c", "PoseCrafter: + latent affine editing"),
    ("5a", "DiffPerformer: + IVR refinement, no flow"),
    ("5b", "DiffPerformer: + IVR refinement, 3D-aware flow"),
]
COLUMNS = [("psnr", "PSNR ↑", "{:.2f}"), ("ssim", "SSIM ↑", "{:.3f}"), ("l1", "L1 ↓", "{:.4f}"),
           ("mask_iou", "mask IoU ↑", "{:.3f}"), ("face_psnr", "face PSNR ↑", "{:.2f}"),
           ("part_colour", "part colour ↓", "{:.3f}"), ("flow_epe", "flow EPE ↓", "{:.3f}"),
           ("warp_error", "warp err ↓", "{:.4f}"), ("flicker", "flicker ↓", "{:.4f}")]


def load_demo_pipe(models: str):
    from performer_pkg.models.backbones.loaders import load_backbone, with_motion_module, with_pose_controller

    bb = load_backbone(os.path.join(models, "sd15"), tokenizer_dirs=[os.path.join(models, "sd15", "tokenizer")])
    bb = with_motion_module(bb, os.path.join(models, "motion_adapter"))
    return with_pose_controller(bb, os.path.join(models, "pose_controller.safetensors"))


def table(results: dict, seq: str) -> str:
    head = "| setting | " + " | ".join(c[1] for c in COLUMNS) + " |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 1)]
    for key, label in ROWS:
        m = results.get(key, {}).get(seq)
        if m is None:
            continue
        cells = [fmt.format(m[c]) if c in m else "–" for c, _, fmt in COLUMNS]
        lines.append(f"| {key + '. ' if key[0].isdigit() else ''}{label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=os.path.join(REPO, "assets", "demo_models"))
    ap.add_argument("--seed", type=int, default=1_000_021, help="performer sequence seed (background, motion phase); "
                    "evaluation range only (>= models.evaluate.performer.EVAL_BASE)")
    ap.add_argument("--character", type=int, default=1_000_007, help="performer identity seed, evaluation range only")
    ap.add_argument("--noise", type=float, default=8.0, help="σ in grey levels of the ground-truth-with-noise baseline")
    ap.add_argument("--motion", default="walk")
    ap.add_argument("--cross-motion", default="dance")
    ap.add_argument("--frames", type=int, default=40)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=20, help="sampling steps (DDIM)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="sampling seeds, shared by every row")
    ap.add_argument("--personalise-steps", type=int, default=300)
    ap.add_argument("--personalise-lr", type=float, default=1e-4)
    ap.add_argument("--ivr-steps", type=int, default=600)
    ap.add_argument("--ivr-refresh", type=int, default=200)
    ap.add_argument("--reference-pose", choices=["auto", "on", "off"], default="auto",
                    help="give the reference photo its own skeleton map (Encode Reference's pose input, SCD's pose "
                         "injection); auto: as the model was trained (its train_log.json, scripts/train_demo_models.py "
                         "--reference-pose)")
    ap.add_argument("--smplx-render", choices=["auto", "normal", "semantic"], default="auto",
                    help="the kind of SMPL-X render the pose controller gets (Render Body's outputs); auto: as the model "
                         "was trained (train_log.json's smplx_render; normal for models from before the option)")
    ap.add_argument("--guidance", choices=["skeleton", "skeleton+smplx"], default="skeleton",
                    help="what rows 1 and 2 are guided by; skeleton+smplx gives them the SMPL-X renders too (row 3 is "
                         "then row 2 and is left out)")
    ap.add_argument("--reference-render", action=argparse.BooleanOptionalAction, default=None,
                    help="the reference photo also carries its own SMPL-X render (Encode Reference's smplx input; needs "
                         "the reference pose); default: as the model was trained (train_log.json's reference_render)")
    ap.add_argument("--rows", choices=["all", "1-3", "baselines"], default="all",
                    help="1-3: the baselines and rows 1-3 only (no personalisation, PoseCrafter or IVR), minutes instead "
                         "of an hour; baselines: ground truth + noise and the frozen video only (seconds, no model: how "
                         "much a spec's sequences move)")
    ap.add_argument("--cfg", type=float, default=1.0,
                    help="guidance scale of every row; above 1 the unconditional branch of the reference rows drops the "
                         "reference (Sampler Options' reference_uncond)")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("BENCH_THREADS", "1")))
    a = ap.parse_args()
    trained = trained_with(a.models)
    if a.reference_pose == "auto":
        a.reference_pose = "on" if trained["reference_pose"] else "off"
    if a.smplx_render == "auto":
        a.smplx_render = trained["smplx_render"]
    if a.reference_render is None:
        a.reference_render = trained["reference_render"] and a.reference_pose == "on"
    if a.reference_render and a.reference_pose == "off":
        ap.error("--reference-render needs --reference-pose on")

    import sys

    sys.path.insert(0, os.path.join(REPO, "tests"))
    import pack_alias

    pack_alias.register_package()
    import numpy as np
    import torch

    torch.set_num_threads(a.threads)
    from performer_pkg.models.evaluate import metrics as M
    from performer_pkg.models.body.smplx import get_body_model, transfer_shape
    from performer_pkg.models.refine.ivr import IVRConfig, LoopSettings, refine_loop
    from performer_pkg.models.evaluate.performer import PerformerSpec, generate, split_of
    from performer_pkg.models.posecrafter.personalise import TrainSettings, personalise
    from performer_pkg.models.pose.sequence import draw
    from performer_pkg.models.posecrafter.inference import PoseCrafterSettings, posecrafter
    from performer_pkg.models.body.render import render_maps
    from performer_pkg.models.sampling.sampler import (VideoSettings, decode_latents, encode_reference, encode_video,
                                               sample_video)

    t_start = time.time()
    S = a.size
    for sd in (a.seed, a.seed + 1000):
        if split_of(sd, a.character) != "eval":
            raise SystemExit(f"seed {sd} / character {a.character} is not in the evaluation range (both >= 1000000): "
                             "the demo model may have trained on it")
    bm = get_body_model()
    main_seq = generate(PerformerSpec(seed=a.seed, character=a.character, motion=a.motion, frames=a.frames, size=S))
    cross = generate(PerformerSpec(seed=a.seed + 1000, character=a.character, motion=a.cross_motion, frames=16, size=S))
    n_train = int(round(a.frames * 0.8))
    train_rgb = torch.from_numpy(main_seq["rgb"][:n_train]).float() / 255
    train_pose = main_seq["pose"].copy(keypoints=main_seq["pose"].keypoints[:n_train])
    ref_img = train_rgb[:1]
    ref_body = main_seq["body"].slice(0, 1)  # the reference photo's body (its shape)

    def sub(g, lo, hi):
        """A ground-truth slice: frames lo..hi-1 with the flow between them."""
        return {"rgb": g["rgb"][lo:hi], "mask": g["mask"][lo:hi], "pose": g["pose"].copy(keypoints=g["pose"].keypoints[lo:hi]),
                "body": g["body"].slice(lo, hi), "flow": g["flow"][lo:hi - 1], "valid": g["valid"][lo:hi - 1],
                "background": g["background"], "material": g["material"][lo:hi]}

    seqs = {"held-out 20 %": sub(main_seq, n_train, a.frames), "cross-motion": sub(cross, 0, 16)}
    for g in seqs.values():
        g["skeleton"] = torch.from_numpy(draw(g["pose"], S, S, stick_width=1)).float() / 255
        shaped = transfer_shape(g["body"], ref_body)  # the target bodies with the reference person's shape
        g["smplx"] = torch.from_numpy(render_maps(shaped, bm, S, S, a.smplx_render)).float() / 255

    base = load_demo_pipe(a.models) if a.rows != "baselines" else None
    ref_pose = None if a.reference_pose == "off" else \
        torch.from_numpy(draw(train_pose.copy(keypoints=train_pose.keypoints[:1]), S, S, stick_width=1)).float() / 255
    ref_render = torch.from_numpy(render_maps(ref_body, bm, S, S, a.smplx_render)).float() / 255 \
        if a.reference_render else None
    ref = None if base is None else encode_reference(base, ref_img, noise_aug=0.0, face="off", pose=ref_pose, pose_render=ref_render)

    def score(video, g):
        v = video.detach().float().clamp(0, 1).cpu().numpy()
        return M.compute(v, g["rgb"], gt_mask=g["mask"], background=g["background"], keypoints=g["pose"].keypoints[:, 0],
                         flow=g["flow"], valid=g["valid"], material=g["material"])

    def settings(g, seed):
        n = g["rgb"].shape[0]
        return VideoSettings(frames=n, width=S, height=S, steps=a.steps, cfg=a.cfg, seed=seed, window=16, stride=8)

    results, videos, timings = {}, {}, {}

    def record(key, seq, seed, video, t0):
        m = score(video, seqs[seq])
        results.setdefault(key, {}).setdefault(seq, []).append(m)
        videos.setdefault(seq, {}).setdefault(key, []).append(video.detach().float().clamp(0, 1).cpu())
        timings[key] = timings.get(key, 0.0) + time.time() - t0
        print(f"  {key:>8} {seq:<14} seed {seed}: PSNR {m['psnr']:.2f}  part colour {m.get('part_colour', float('nan')):.3f}  "
              f"flow EPE {m['flow_epe']:.3f}  face {m.get('face_psnr', float('nan')):.2f}  warp {m['warp_error']:.4f}", flush=True)

    print("baselines", flush=True)
    for seq, g in seqs.items():
        for seed in a.seeds:
            gt = torch.from_numpy(g["rgb"]).float() / 255
            noisy = (gt + torch.randn(gt.shape, generator=torch.Generator().manual_seed(seed)) * (a.noise / 255)).clamp(0, 1)
            record("gt+noise", seq, seed, noisy, time.time())
            record("frozen", seq, seed, gt[:1].expand_as(gt).clone(), time.time())

    print("rows 1-3 (base model)", flush=True)
    for seq, g in (seqs.items() if base is not None else ()):
        for seed in a.seeds:
            s = settings(g, seed)
            variants = (("1", dict(use_reference_attention=False)), ("2", dict()), ("3", dict(smplx=g["smplx"])))
            if a.guidance == "skeleton+smplx":  # rows 1 and 2 get the renders too, so row 3 would be row 2
                variants = tuple((k, {**kw, "smplx": g["smplx"]}) for k, kw in variants[:2])
            for key, kw in variants:
                t0 = time.time()
                lat = sample_video(base, s, ref, skeleton=g["skeleton"], **kw)
                record(key, seq, seed, decode_latents(base, lat), t0)

    if a.rows == "all":  # rows 4 and 5
        print(f"one-shot personalisation on {n_train} frames ({a.personalise_steps} steps)", flush=True)
        t0 = time.time()
        train_maps = torch.from_numpy(draw(train_pose, S, S, stick_width=1)).float() / 255
        _, pers = personalise(base, train_rgb, TrainSettings(steps=a.personalise_steps, lr=a.personalise_lr, seed=0),
                              skeleton=train_maps)
        timings["personalise"] = time.time() - t0

        pc_steps = {"4a": dict(select=True, invert=True, insert=False, edit=False),
                    "4b": dict(select=True, invert=True, insert=True, edit=False),
                    "4c": dict(select=True, invert=True, insert=True, edit=True)}
        for seq, g in seqs.items():
            for seed in a.seeds:
                t0 = time.time()
                lat = sample_video(pers, settings(g, seed), None, skeleton=g["skeleton"], use_reference_attention=False)
                record("4", seq, seed, decode_latents(pers, lat), t0)
                for key, kw in pc_steps.items():
                    t0 = time.time()
                    lat, _ = posecrafter(pers, train_rgb, train_pose, g["pose"],
                                         PoseCrafterSettings(steps=a.steps, cfg=1.0, seed=seed, stick_width=1, **kw))
                    record(key, seq, seed, decode_latents(pers, lat), t0)

        print("DiffPerformer IVR loop", flush=True)
        ls = LoopSettings(total_steps=a.ivr_steps, refresh_every=a.ivr_refresh, strength_start=0.5, strength_end=0.2)
        for seq, g in seqs.items():
            flow = {"flow": torch.from_numpy(g["flow"]).float(), "valid": torch.from_numpy(g["valid"])}
            for i, seed in enumerate(a.seeds):
                start = videos[seq]["4"][i]

                def regenerate(vs, strength, r, g=g, seed=seed):
                    s = settings(g, seed + 100 * (r + 1))
                    s.denoise = strength
                    lat = sample_video(pers, s, None, skeleton=g["skeleton"], init_latents=encode_video(pers, vs),
                                       use_reference_attention=False)
                    return decode_latents(pers, lat)

                for key, fl in (("5a", None), ("5b", flow)):
                    t0 = time.time()
                    torch.manual_seed(seed)
                    vp, _, _, _ = refine_loop(start.clone(), regenerate, ls, flow=fl, reference=ref_img,
                                              cfg=IVRConfig(seed=seed), device=pers.device)
                    record(key, seq, seed, vp, t0)

    mean = {k: {seq: {c: float(np.mean([m[c] for m in ms if c in m])) for c in ms[0]} for seq, ms in v.items()}
            for k, v in results.items()}
    out_dir = os.environ.get("BENCH_OUT") or os.path.join(REPO, "out", "benchmarks")  # as write_result
    os.makedirs(out_dir, exist_ok=True)
    for seq in seqs:
        rows = {"ground truth": seqs[seq]["rgb"], **{k: videos[seq][k][0].numpy() for k, _ in ROWS if k in videos[seq]}}
        sheet = M.contact_sheet(rows)
        from PIL import Image

        Image.fromarray(sheet).save(os.path.join(out_dir, f"performer_{seq.split()[0].replace('-', '_')}.png"))
    tables = {seq: table(mean, seq) for seq in seqs}
    spec = {"models": os.path.relpath(a.models, REPO), "performer_seed": a.seed, "character": a.character, "motion": a.motion,
            "noise": a.noise,
            "cross_motion": a.cross_motion, "frames": a.frames, "train_frames": n_train, "size": S, "steps": a.steps,
            "seeds": a.seeds, "personalise_steps": a.personalise_steps, "personalise_lr": a.personalise_lr,
            "ivr_steps": a.ivr_steps, "ivr_refresh": a.ivr_refresh, "threads": a.threads, "reference_pose": a.reference_pose,
            "reference_render": a.reference_render, "smplx_render": a.smplx_render, "guidance": a.guidance, "rows": a.rows,
            "cfg": a.cfg}
    write_result("performer", {"spec": spec, "mean": mean, "per_seed": results, "seconds": {k: round(v, 1) for k, v in timings.items()},
                               "total_seconds": round(time.time() - t_start, 1), "tables": tables})
    for seq, t in tables.items():
        print(f"\n### {seq}\n\n{t}")


if __name__ == "__main__":
    main()
