"""Train the demo's tiny pose-conditioned AnimateDiff-style model on synthetic performer videos (CPU, about 1.5 h).

    .venv/bin/python scripts/train_demo_models.py [--out assets/demo_models] [--steps 5000] [--seed 0] [--work out/train_demo]

What it writes (real diffusers classes, in the layouts the pack's loaders read):
  sd15/                 a diffusers SD1.5-style folder: unet/ (UNet2DConditionModel), vae/ (AutoencoderKL, 4× downscale),
                        text_encoder/ (tiny CLIP), tokenizer/ (ComfyUI's SD1 tokenizer), scheduler/ (DDIM)
  motion_adapter/       a diffusers MotionAdapter folder (+ scheduler_config.json: the betas it was trained with)
  pose_controller.safetensors   the pack's VividPose-style pose controller
  train_log.json        seeds, sizes, step counts, final losses

Data: only the performer generator's *training* range (identity and sequence seeds below models.evaluate.performer.EVAL_BASE;
the demo and the benchmark use seeds from EVAL_BASE up, so they are unseen by construction).  A pool of posed bodies
(``--pool`` sequences: body shape and motion instance from training seeds, all five motions, 16 frames, 64 px) is
rendered once; every training step paints a **new identity** on one of them (colours and stripes drawn from a fresh
training identity seed, background from a fresh training sequence seed), so the model cannot memorise anyone's
appearance: plain sampling cannot know the colours, only the reference can give them.

Training: (1) the VAE as an autoencoder (L1 + small KL) on such frames; (2) UNet + motion module + pose controller
jointly, ε-prediction on 8-frame clips, with causal reference attention on a frame of the same identity (half the time
from the same clip's sequence, half from another posed body of the pool in the same clothes and scene), 10 % without it.
Checkpoints every ``--ckpt-every`` steps in ``--work``; a rerun with the same arguments resumes from the last one and
ends with the same weights (every random draw comes from one seeded generator whose state is checkpointed).
Everything is seeded; the run is deterministic on one CPU thread (TRAIN_THREADS=1, the default).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "tests"))

SIZE, FRAMES, CLIP = 64, 16, 8


def pool_specs(n: int, seed: int):
    """The specs of the pooled bodies: sequence and identity (body shape) seeds from the training range only."""
    import numpy as np

    from performer_pkg.models.evaluate.performer import EVAL_BASE, MOTIONS, PerformerSpec

    r = np.random.default_rng([seed, 1])
    return [PerformerSpec(seed=int(s), character=int(c), motion=MOTIONS[i % len(MOTIONS)], frames=FRAMES, size=SIZE)
            for i, (s, c) in enumerate(r.integers(0, EVAL_BASE, (n, 2)))]


def training_seed(g) -> int:
    """A fresh identity / background seed for one training step: the training range only."""
    from performer_pkg.models.evaluate.performer import EVAL_BASE

    return _draw_int(g, EVAL_BASE)


def pool(n: int, seed: int, render: str = "normal"):
    """n posed bodies from training seeds: materials per pixel, shading, skeleton maps, SMPL-X renders (``render``:
    normal maps, or the pack's semantic part maps as Render Body's ``semantic`` output draws them)."""
    import numpy as np

    from performer_pkg.models.body.smplx import get_body_model
    from performer_pkg.models.evaluate.performer import geometry
    from performer_pkg.models.pose.sequence import draw
    from performer_pkg.models.body.render import render_maps

    geos, maps, renders = [], [], []
    for spec in pool_specs(n, seed):
        geo = geometry(spec, with_flow=False)
        geos.append({k: geo[k] for k in ("face_id", "shade", "materials")})
        maps.append(draw(geo["pose"], SIZE, SIZE, stick_width=1))
        renders.append(render_maps(geo["body"], get_body_model(), SIZE, SIZE, render))
    return geos, np.stack(maps), np.stack(renders)


def paint(geo, ident_seed: int, bg_seed: int, frames):
    """Frames of a pooled body in the clothes of a training identity over a training background, in [-1, 1] (F, 3, H, W)."""
    import numpy as np
    import torch

    from performer_pkg.models.evaluate.performer import background, colourise, identity

    g = {"face_id": geo["face_id"][frames], "shade": geo["shade"][frames], "materials": geo["materials"]}
    rgb = colourise(g, identity(ident_seed)["palette"], background(SIZE, bg_seed))["rgb"]
    return torch.from_numpy(rgb.astype(np.float32) / 127.5 - 1.0).permute(0, 3, 1, 2)


def _draw_int(g, hi: int) -> int:
    import torch

    return int(torch.randint(hi, (1,), generator=g))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(REPO, "assets", "demo_models"))
    ap.add_argument("--work", default=os.path.join(REPO, "out", "train_demo"), help="checkpoints (resumed when present)")
    ap.add_argument("--pool", type=int, default=200, help="posed bodies rendered once; identities are drawn per step")
    ap.add_argument("--vae-steps", type=int, default=800)
    ap.add_argument("--steps", type=int, default=5000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lr", type=float, default=5e-4, help="peak learning rate of the UNet stage (cosine decay to 0)")
    ap.add_argument("--ckpt-every", type=int, default=250)
    ap.add_argument("--heads", type=int, default=8, help="spatial attention heads of the 32-channel level (8: 4-channel heads)")
    ap.add_argument("--prediction", choices=["epsilon", "v_prediction"], default="epsilon",
                    help="training target, saved in the scheduler config the pipe samples with; benchmarks/reference_learning.py "
                         "shows only v-prediction rewards taking appearance from the reference; personalisation and DDIM "
                         "inversion follow the saved prediction type")
    ap.add_argument("--zero-snr", action="store_true",
                    help="rescale the betas to zero terminal SNR and sample with trailing timesteps (Lin et al. 2024, "
                         "'Common diffusion noise schedules and sample steps are flawed'; needs v-prediction): at t = T "
                         "the noisy latent then leaks no colour, so the reference is the only place appearance can come from")
    ap.add_argument("--reference-pose", action="store_true",
                    help="add the reference frame's own skeleton map, through the pose controller, to the reference pass "
                         "(SCD's pose injection; the pipe's reference_pose option and Encode Reference's pose input do the "
                         "same at sampling): both sides of the reference attention then carry the limb colours, so a target "
                         "token can find the same body part in the reference")
    ap.add_argument("--person-weight", type=float, default=0.0,
                    help="weight the loss on the person's latent pixels by 1 + this (the generator knows which pixels are "
                         "the person): the clothes are a small part of a 64 px frame and the background is almost the "
                         "same in every scene, so unweighted the loss barely rewards taking the clothes' colours from "
                         "the reference")
    ap.add_argument("--high-t-share", type=float, default=0.0,
                    help="share of the UNet steps whose timestep is drawn from the top 30 %% of the schedule instead of "
                         "all of it: there the noisy input hides the colours, so only the reference can give them")
    ap.add_argument("--same-frame-share", type=float, default=0.0,
                    help="share of the UNet steps whose reference is one of the clip's own frames (same pose, same "
                         "place): a curriculum in which a target token finds its colour at the reference token with the "
                         "same pose features, which teaches the attention to match them; the other steps keep "
                         "references in other poses")
    ap.add_argument("--attn-lr-mult", type=float, default=1.0,
                    help="learning rate of the spatial self-attention layers (the ones the reference is read by) as a "
                         "multiple of --lr: at this size their query/key weights otherwise stay near their initial scale, "
                         "so attention stays almost uniform and cannot pick the matching body part of the reference")
    ap.add_argument("--vae-person-weight", type=float, default=0.0,
                    help="weight the VAE's L1 on the person's pixels by 1 + this: unweighted, a 4x VAE at 64 px spends "
                         "its 4 channels on the background and blurs thin limbs into it, so its round trip alone loses "
                         "much of the clothes' colour (benchmarks/vae_floor.py measures this floor)")
    ap.add_argument("--vae-from", default=None,
                    help="a checkpoint.pt of an earlier run with the same --pool, --vae-steps and --seed: its finished VAE "
                         "stage (which depends on nothing else) is taken instead of training it again, and the UNet stage "
                         "draws from a generator seeded with seed + 1 (a run from scratch continues the VAE stage's "
                         "stream, so the two draw different steps of the same kind); saves 20-30 min per experiment")
    ap.add_argument("--smplx-render", choices=["normal", "semantic"], default="normal",
                    help="what the pose controller's smplx encoder is trained on: SMPL-X normal renders, or semantic part "
                         "maps (Champ's guidance kind; Render Body's semantic output), which name each body part")
    ap.add_argument("--reference-render", action="store_true",
                    help="with --reference-pose: the reference pass also gets its own SMPL-X render (smplx encoder)")
    ap.add_argument("--accumulate", type=int, default=1,
                    help="identities (clips, each with its own reference) per optimiser step, their gradients averaged: "
                         "less gradient noise on the reference signal, at that many times the time per step")
    ap.add_argument("--probe-every", type=int, default=0,
                    help="every this many UNet steps, log how much the reference lowers the loss at t = T - 1 (where "
                         "only the reference can know the colours) on a fixed probe set of training-range clips: the "
                         "person-weighted loss without the reference, with the same identity in another pose, with a "
                         "stranger in that pose, and with one of the clip's own frames (train_log.json keeps the curve); "
                         "0: off. Draws from its own generator, so the run is unchanged")
    ap.add_argument("--export-only", action="store_true",
                    help="write the models of the last checkpoint in --work (same arguments) without training further, "
                         "e.g. to evaluate a run half-way; train_log.json records the step")
    a = ap.parse_args()
    import pack_alias

    pack_alias.register_package()
    import torch
    import torch.nn.functional as F
    from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, MotionAdapter, UNet2DConditionModel, UNetMotionModel

    import tiny_models
    from performer_pkg.models.evaluate.performer import EVAL_BASE
    from performer_pkg.models.guidance.pose_controller import PoseController
    from performer_pkg.models.attention.reference import reference_attention, write_reference

    torch.set_num_threads(int(os.environ.get("TRAIN_THREADS", "1")))
    torch.manual_seed(a.seed)
    g = torch.Generator().manual_seed(a.seed)
    t0 = time.time()
    if a.export_only:  # nothing is drawn from the pool
        geos, M, S, N = None, None, None, a.pool
    else:
        geos, maps, renders = pool(a.pool, a.seed, a.smplx_render)
        M = torch.from_numpy(maps).float() / 255.0  # skeleton maps (N, F, H, W, 3)
        S = torch.from_numpy(renders).float() / 255.0  # SMPL-X renders, --smplx-render's kind (each body's own shape)
        N = len(geos)
        print(f"pool: {N} posed bodies in {time.time() - t0:.1f}s", flush=True)

    os.makedirs(a.work, exist_ok=True)
    ckpt_path = os.path.join(a.work, "checkpoint.pt")
    if a.zero_snr and a.prediction != "v_prediction":
        ap.error("--zero-snr needs --prediction v_prediction (ε is undefined at zero SNR)")
    vae_key = {k: getattr(a, k) for k in ("pool", "vae_steps", "seed")}
    if a.vae_person_weight:  # only when set, so earlier checkpoints still resume
        vae_key["vae_person_weight"] = a.vae_person_weight
    args_key = {**vae_key, **{k: getattr(a, k) for k in ("steps", "lr", "heads", "prediction", "zero_snr", "reference_pose",
                                                        "person_weight", "high_t_share", "same_frame_share",
                                                        "attn_lr_mult")}}
    for k in ("smplx_render", "reference_render", "accumulate"):  # only when not the default, so earlier checkpoints still resume
        if getattr(a, k) != ap.get_default(k):
            args_key[k] = getattr(a, k)
    if a.accumulate < 1:
        ap.error(f"--accumulate must be >= 1; got {a.accumulate}")
    if a.reference_render and not a.reference_pose:
        ap.error("--reference-render needs --reference-pose")

    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 3,
                        up_block_types=("UpDecoderBlock2D",) * 3, block_out_channels=(32, 64, 64), layers_per_block=1,
                        latent_channels=4, norm_num_groups=32, sample_size=SIZE, scaling_factor=0.5)
    text = tiny_models.hf_text_encoder()
    unet2d = UNet2DConditionModel(sample_size=SIZE // 4, in_channels=4, out_channels=4, layers_per_block=1,
                                  block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                  up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
                                  attention_head_dim=a.heads, norm_num_groups=32)
    adapter = MotionAdapter(block_out_channels=(32, 64), motion_layers_per_block=1, motion_num_attention_heads=8,
                            motion_norm_num_groups=32, motion_max_seq_length=32, use_motion_mid_block=True)
    pc = PoseController(latent_channels=4, downsample=4, channels=(16, 32, 64), heads=4)
    unet = UNetMotionModel.from_unet2d(unet2d, adapter)
    params = list(unet.parameters()) + list(pc.parameters())
    attn = [p for n, p in unet.named_parameters() if ".attn1." in n and "transformer_blocks" in n and "motion" not in n]
    ids_attn = {id(p) for p in attn}
    groups = [{"params": [p for p in params if id(p) not in ids_attn]}, {"params": attn, "lr": a.lr * a.attn_lr_mult}] \
        if a.attn_lr_mult != 1.0 else params
    opt = torch.optim.AdamW(groups, lr=a.lr, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: min(1.0, (i + 1) / 100) * 0.5 * (1 + math.cos(math.pi * min(i, a.steps) / a.steps)))
    vae_opt = torch.optim.AdamW(vae.parameters(), lr=1e-3)

    state = {"stage": "vae", "step": 0, "vae_loss": None, "loss": None}
    if os.path.exists(ckpt_path):
        ck = torch.load(ckpt_path, weights_only=True)
        if json.loads(ck["args"]) == args_key:
            vae.load_state_dict(ck["vae"])
            unet.load_state_dict(ck["unet"])
            pc.load_state_dict(ck["pc"])
            opt.load_state_dict(ck["opt"])
            vae_opt.load_state_dict(ck["vae_opt"])
            sched.load_state_dict(ck["sched"])
            g.set_state(ck["rng"])
            state = json.loads(ck["state"])
            print(f"resumed from {ckpt_path}: {state}", flush=True)
        else:
            print(f"{ckpt_path} was made with other arguments; starting afresh", flush=True)

    def save_ckpt():
        tmp = ckpt_path + ".tmp"
        torch.save({"args": json.dumps(args_key), "state": json.dumps(state), "vae": vae.state_dict(), "unet": unet.state_dict(),
                    "pc": pc.state_dict(), "opt": opt.state_dict(), "vae_opt": vae_opt.state_dict(), "sched": sched.state_dict(),
                    "rng": g.get_state()}, tmp)
        os.replace(tmp, ckpt_path)

    def end_step(stage, i, total, loss, key):
        """Bookkeeping after step ``i`` of a stage: the resumable state, a log line every 100 steps, a checkpoint."""
        state.update(step=i + 1, **{key: round(loss.item(), 4)})
        if i % 100 == 0 or i == total - 1:
            print(f"{stage} {i} {loss.item():.4f} ({time.time() - t0:.0f}s)", flush=True)
        if (i + 1) % a.ckpt_every == 0:
            save_ckpt()

    if a.export_only and state["stage"] != "unet":
        ap.error(f"--export-only: {ckpt_path} has no finished VAE stage made with these arguments to export")
    if state["stage"] == "vae" and a.vae_from:
        ck = torch.load(a.vae_from, weights_only=True)
        done = json.loads(ck["state"])
        made = json.loads(ck["args"])
        if ({k: made.get(k) for k in vae_key} != vae_key or made.get("vae_person_weight", 0.0) != a.vae_person_weight
                or done["stage"] != "unet"):
            ap.error(f"--vae-from {a.vae_from}: not a finished VAE stage with --pool {a.pool} --vae-steps {a.vae_steps} "
                     f"--seed {a.seed} --vae-person-weight {a.vae_person_weight}")
        vae.load_state_dict(ck["vae"])
        state.update(stage="unet", step=0, scaling=done["scaling"], vae_loss=done["vae_loss"])
        print(f"VAE stage taken from {a.vae_from}", flush=True)
        g.manual_seed(a.seed + 1)  # the UNet stage's draws then start from here (a run from scratch continues the VAE stage's stream)
        save_ckpt()

    if state["stage"] == "vae":
        for i in range(state["step"], a.vae_steps):
            xs, people = [], []
            for _ in range(16):  # (the draws in the order of the single expression that made the shipped model)
                n, ids, bgs, f = _draw_int(g, N), training_seed(g), training_seed(g), _draw_int(g, FRAMES)
                xs.append(paint(geos[n], ids, bgs, [f]))
                people.append(torch.from_numpy(geos[n]["face_id"][f:f + 1] >= 0).float()[:, None])
            x = torch.cat(xs)
            post = vae.encode(x).latent_dist
            rec = vae.decode(post.sample(generator=g)).sample
            if a.vae_person_weight:  # L1 with the person's pixels weighted 1 + this
                w = 1.0 + a.vae_person_weight * torch.cat(people)
                loss = ((rec - x).abs() * w).mean() / w.mean() + 1e-6 * post.kl().mean()
            else:
                loss = F.l1_loss(rec, x) + 1e-6 * post.kl().mean()
            vae_opt.zero_grad()
            loss.backward()
            vae_opt.step()
            end_step("vae", i, a.vae_steps, loss, "vae_loss")
        with torch.no_grad():  # latent statistics -> scaling factor (unit variance, as SD's 0.18215 was chosen)
            x = torch.cat([paint(geos[i % N], 10 + i, 20 + i, [i % FRAMES]) for i in range(256)])
            z = vae.encode(x).latent_dist.mean
        state.update(stage="unet", step=0, scaling=float(1.0 / z.std()))
        save_ckpt()
    vae.register_to_config(scaling_factor=state["scaling"])
    vae.eval().requires_grad_(False)

    # a scheduler's .config lists the arguments it was not given under "_use_default_values", and from_config drops
    # those keys in favour of its defaults: keep only the plain keys, or the prediction type and zero-SNR settings set
    # below would be silently replaced by ε and ordinary betas, in training and in every pipe that loads the folder
    sched_cfg = {k: v for k, v in DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                                clip_sample=False, set_alpha_to_one=False, steps_offset=1).config.items()
                 if not k.startswith("_")}
    sched_cfg["prediction_type"] = a.prediction
    if a.zero_snr:
        sched_cfg.update(rescale_betas_zero_snr=True, timestep_spacing="trailing")
    ddpm = DDPMScheduler.from_config(sched_cfg)
    if (ddpm.config.prediction_type, ddpm.config.rescale_betas_zero_snr) != (a.prediction, a.zero_snr):
        raise SystemExit(f"the training scheduler did not take the settings: {dict(ddpm.config)}")
    with torch.no_grad():
        tok = torch.tensor([[49406, 49407] + [49407] * 75])
        ctx = text(tok)[0]

    def encode(x):
        with torch.no_grad():
            return vae.encode(x).latent_dist.mean * vae.config.scaling_factor

    def reference_pose(b, f):
        """The reference's own skeleton (and with --reference-render its render) through the pose controller, as
        Encode Reference's pose input adds it at sampling."""
        return pc({"skeleton": M[b, f:f + 1].permute(0, 3, 1, 2),
                   "smplx": S[b, f:f + 1].permute(0, 3, 1, 2) if a.reference_render else None})

    probe_set = None

    def probe(step):
        """Loss at t = T - 1 on a fixed probe set without the reference, with the clip's own identity, with a stranger's."""
        nonlocal probe_set
        if probe_set is None:
            pg = torch.Generator().manual_seed(a.seed + 7)
            probe_set = []
            for _ in range(6):
                n, s0, ids, bgs, other = (_draw_int(pg, N), _draw_int(pg, FRAMES - CLIP + 1), training_seed(pg),
                                          training_seed(pg), training_seed(pg))
                rn, rf = _draw_int(pg, N), _draw_int(pg, FRAMES)
                x0 = encode(paint(geos[n], ids, bgs, list(range(s0, s0 + CLIP)))).permute(1, 0, 2, 3)[None]
                person = torch.from_numpy(geos[n]["face_id"][s0:s0 + CLIP] >= 0).float()[:, None]
                w = 1.0 + max(a.person_weight, 8.0) * F.avg_pool2d(person, SIZE // x0.shape[-1]).permute(1, 0, 2, 3)[None]
                sf = s0 + len(probe_set) % CLIP  # a frame of the clip itself
                refs = [(encode(paint(geos[b], who, bgs, [f])), b, f) for b, f, who in ((rn, rf, ids), (rn, rf, other), (n, sf, ids))]
                probe_set.append((n, s0, x0, w, refs, torch.randn(x0.shape, generator=pg)))
        t = torch.tensor([ddpm.config.num_train_timesteps - 1])
        sums = [0.0] * 4
        unet.eval()
        with torch.no_grad():
            for n, s0, x0, w, refs, noise in probe_set:
                feat = pc({"skeleton": M[n, s0:s0 + CLIP].permute(0, 3, 1, 2),
                           "smplx": S[n, s0:s0 + CLIP].permute(0, 3, 1, 2)}).permute(1, 0, 2, 3)[None]
                target = ddpm.get_velocity(x0, noise, t) if a.prediction == "v_prediction" else noise
                for j, r in enumerate([None] + refs):
                    with reference_attention(unet, uncond="keep") as st:
                        if r is None:
                            st.mode = "off"
                        else:
                            ref, b, f = r
                            if a.reference_pose:  # through the pose controller as it is now
                                ref = ref + reference_pose(b, f)
                            write_reference(st, lambda: unet(ref[:, :, None], torch.zeros((), dtype=torch.long),
                                                             encoder_hidden_states=ctx))
                        st.frames = CLIP
                        pred = unet(ddpm.add_noise(x0, noise, t) + feat, t, encoder_hidden_states=ctx.repeat(CLIP, 1, 1)).sample
                    sums[j] += (((pred - target) ** 2 * w).mean() / w.mean()).item() / len(probe_set)
        unet.train()
        row = {"step": step, "loss_without": round(sums[0], 4), "loss_own": round(sums[1], 4),
               "loss_stranger": round(sums[2], 4), "loss_own_same_clip": round(sums[3], 4),
               "gain_own": round(1 - sums[1] / sums[0], 4), "gain_own_over_stranger": round(1 - sums[1] / sums[2], 4),
               "gain_same_clip": round(1 - sums[3] / sums[0], 4)}
        state.setdefault("probe", []).append(row)
        print(f"probe {json.dumps(row)}", flush=True)

    unet.train()
    if a.probe_every and not a.export_only and state["step"] == 0:
        probe(0)
    for i in range(state["step"], state["step"] if a.export_only else a.steps):
        opt.zero_grad()
        total = 0.0
        for _ in range(a.accumulate):  # --accumulate: several identities per optimiser step (gradients averaged)
            n = _draw_int(g, N)
            s0 = _draw_int(g, FRAMES - CLIP + 1)
            ids, bgs = training_seed(g), training_seed(g)
            x0 = encode(paint(geos[n], ids, bgs, list(range(s0, s0 + CLIP)))).permute(1, 0, 2, 3)[None]  # (1, 4, clip, h, w)
            # per latent pixel: 1 + person_weight × the share of the person in its 4 × 4 image pixels
            person = torch.from_numpy(geos[n]["face_id"][s0:s0 + CLIP] >= 0).float()[:, None]
            weight = 1.0 + a.person_weight * F.avg_pool2d(person, SIZE // x0.shape[-1]).permute(1, 0, 2, 3)[None]
            # the reference: the same identity in the same scene, from this sequence or from another posed body
            rn = n if bool(torch.rand(1, generator=g) < 0.5) else _draw_int(g, N)
            rf = _draw_int(g, FRAMES)
            if a.same_frame_share and bool(torch.rand(1, generator=g) < a.same_frame_share):
                rn, rf = n, s0 + _draw_int(g, CLIP)
            ref = encode(paint(geos[rn], ids, bgs, [rf]))
            if a.reference_pose:
                ref = ref + reference_pose(rn, rf)
            noise = torch.randn(x0.shape, generator=g)
            # (the seed + 1 stream of --vae-from always draws this coin; a run from scratch only when the share is set, so
            # the defaults keep the draws that made the shipped model)
            coin = float(torch.rand(1, generator=g)) if a.high_t_share or a.vae_from else 1.0
            lo = 700 if coin < a.high_t_share else 0
            t = torch.randint(lo, 1000, (1,), generator=g)
            xt = ddpm.add_noise(x0, noise, t)
            # each guidance kind is dropped 25 % of the time, so either alone and both together work at sampling time
            keep_sk, keep_sm = (torch.rand(2, generator=g) > 0.25).tolist()
            if not (keep_sk or keep_sm):
                keep_sk = True
            guide = {"skeleton": M[n, s0:s0 + CLIP].permute(0, 3, 1, 2) if keep_sk else None,
                     "smplx": S[n, s0:s0 + CLIP].permute(0, 3, 1, 2) if keep_sm else None}
            feat = pc(guide).permute(1, 0, 2, 3)[None]
            use_ref = bool(torch.rand(1, generator=g) > 0.1)  # 10 % without reference (CFG-style dropout)
            with reference_attention(unet, uncond="keep") as st:
                if use_ref:
                    write_reference(st, lambda: unet(ref[:, :, None], torch.zeros((), dtype=torch.long), encoder_hidden_states=ctx),
                                    grad=True)
                else:
                    st.mode = "off"
                st.frames = CLIP
                pred = unet(xt + feat, t, encoder_hidden_states=ctx.repeat(CLIP, 1, 1)).sample
            target = ddpm.get_velocity(x0, noise, t) if a.prediction == "v_prediction" else noise
            micro = ((pred - target) ** 2 * weight).mean() / weight.mean() if a.person_weight else F.mse_loss(pred, target)
            (micro / a.accumulate).backward()
            total += micro.item() / a.accumulate
        loss = torch.tensor(total)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        if a.probe_every and (i + 1) % a.probe_every == 0:
            probe(i + 1)
        end_step("unet", i, a.steps, loss, "loss")
    unet.eval()
    out = a.out
    if os.path.isdir(out):
        shutil.rmtree(out)
    sd = os.path.join(out, "sd15")
    unet2d_out = UNet2DConditionModel.from_config(unet2d.config)
    # split the motion UNet back into a 2D UNet + adapter (the on-disk layouts users have)
    missing, _ = unet2d_out.load_state_dict({k: v for k, v in unet.state_dict().items() if "motion_modules" not in k}, strict=False)
    assert not missing, missing[:3]
    unet2d_out.save_pretrained(os.path.join(sd, "unet"))
    vae.save_pretrained(os.path.join(sd, "vae"))
    text.save_pretrained(os.path.join(sd, "text_encoder"))
    shutil.copytree(os.path.join(tiny_models.COMFY_DIR, "comfy", "sd1_tokenizer"), os.path.join(sd, "tokenizer"))
    os.makedirs(os.path.join(sd, "scheduler"), exist_ok=True)
    with open(os.path.join(sd, "scheduler", "scheduler_config.json"), "w") as fh:
        json.dump(sched_cfg, fh, indent=1)
    with open(os.path.join(sd, "model_index.json"), "w") as fh:
        json.dump({"_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.42.1"}, fh)
    ad_out = MotionAdapter.from_config(adapter.config)
    ad_sd = {k.replace("motion_modules.", "motion_modules.", 1): v for k, v in unet.state_dict().items() if "motion_modules" in k}
    mapped = {}
    for k, v in ad_sd.items():  # UNetMotionModel: down_blocks.i.motion_modules.j -> MotionAdapter: down_blocks.i.motion_modules.j
        mapped[k.replace("mid_block.motion_modules", "mid_block.motion_modules")] = v
    missing, unexpected = ad_out.load_state_dict(mapped, strict=False)
    assert not missing, missing[:3]
    ad_out.save_pretrained(os.path.join(out, "motion_adapter"))
    # the motion module was trained with these betas, not AnimateDiff's linear ones: say so beside it (the pack's
    # loader reads this file, models/backbones/loaders.motion_module_betas)
    with open(os.path.join(out, "motion_adapter", "scheduler_config.json"), "w") as fh:
        json.dump(sched_cfg, fh, indent=1)
    pc.save(os.path.join(out, "pose_controller.safetensors"))
    log = {"steps_done": state["step"], "seed": a.seed, "heads": a.heads, "prediction": a.prediction, "zero_snr": a.zero_snr,
           "reference_pose": a.reference_pose, "person_weight": a.person_weight, "high_t_share": a.high_t_share,
           "same_frame_share": a.same_frame_share, "attn_lr_mult": a.attn_lr_mult,
           "smplx_render": a.smplx_render, "reference_render": a.reference_render, "accumulate": a.accumulate, "vae_person_weight": a.vae_person_weight, "vae_from": a.vae_from, "size": SIZE, "frames": FRAMES, "pool": N, "vae_steps": a.vae_steps, "steps": a.steps, "lr": a.lr,
           "lr_schedule": "100-step warm-up, cosine to 0", "vae_final_l1": state["vae_loss"], "unet_final_loss": state["loss"],
           "seconds_this_run": round(time.time() - t0, 1), "probe": state.get("probe", []),
           "train_data": f"training range only (identity and sequence seeds < {EVAL_BASE}): {N} posed bodies (all motions), "
                         f"a new identity painted per step; skeleton and SMPL-X {a.smplx_render} renders (each dropped 25 %)"}
    with open(os.path.join(out, "train_log.json"), "w") as fh:
        json.dump(log, fh, indent=1)
    print(json.dumps(log), flush=True)


if __name__ == "__main__":
    main()
