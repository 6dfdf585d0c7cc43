"""Train the demo's tiny pose-conditioned AnimateDiff-style model on synthetic performer videos (CPU, minutes).

    .venv/bin/python scripts/train_demo_models.py [--out assets/demo_models] [--steps 4000] [--seed 0]

What it writes (real diffusers classes, in the layouts the pack's loaders read):
  sd15/                 a diffusers SD1.5-style folder: unet/ (UNet2DConditionModel), vae/ (AutoencoderKL, 4× downscale),
                        text_encoder/ (tiny CLIP), tokenizer/ (ComfyUI's SD1 tokenizer), scheduler/ (DDIM)
  motion_adapter/       a diffusers MotionAdapter folder
  pose_controller.safetensors   the pack's VividPose-style pose controller
  train_log.json        seeds, sizes, step counts, final losses

Data: performer sequences (characters 0–5 × all motions, 16 frames, 64 px) from models/performer.py, seeds 0–1;
the benchmark and demo use other seeds/characters.  Training: (1) the VAE as an autoencoder (L1 + small KL);
(2) UNet + motion module + pose controller jointly, ε-prediction on 8-frame clips, with causal reference attention
on a random frame of the same sequence as the reference (so the model learns to copy appearance from it).
Everything is seeded; the run is deterministic on one CPU thread.
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

SIZE, FRAMES = 64, 16


def data(seeds=(0, 1), characters=range(6)):
    import numpy as np

    from performer_pkg.models.performer import MOTIONS, PerformerSpec, generate
    from performer_pkg.models.pose import draw

    from performer_pkg.models.body import get_body_model
    from performer_pkg.models.render import render_normals

    vids, maps, normals = [], [], []
    for s in seeds:
        for c in characters:
            for m in MOTIONS:
                g = generate(PerformerSpec(seed=s, character=c, motion=m, frames=FRAMES, size=SIZE))
                vids.append(g["rgb"])
                maps.append(draw(g["pose"], SIZE, SIZE, stick_width=1))
                normals.append(render_normals(g["body"], get_body_model(), SIZE, SIZE))
    return np.stack(vids), np.stack(maps), np.stack(normals)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(REPO, "assets", "demo_models"))
    ap.add_argument("--vae-steps", type=int, default=600)
    ap.add_argument("--steps", type=int, default=4000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lr", type=float, default=5e-4, help="peak learning rate of the UNet stage (cosine decay to 0)")
    a = ap.parse_args()
    import pack_alias

    pack_alias.register_package()
    import torch
    import torch.nn.functional as F
    from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, MotionAdapter, UNet2DConditionModel, UNetMotionModel

    import tiny_models
    from performer_pkg.models.backbones import Backbone
    from performer_pkg.models.pose_controller import PoseController
    from performer_pkg.models.reference_attention import reference_attention, write_reference

    torch.set_num_threads(int(os.environ.get("TRAIN_THREADS", "2")))
    torch.manual_seed(a.seed)
    g = torch.Generator().manual_seed(a.seed)
    t0 = time.time()
    vids, maps, normals = data()
    V = torch.from_numpy(vids).float() / 255.0  # (N, F, H, W, 3)
    M = torch.from_numpy(maps).float() / 255.0
    S = torch.from_numpy(normals).float() / 255.0  # SMPL-X normal renders (the performer's own shape)
    N = V.shape[0]
    print(f"data: {N} sequences in {time.time() - t0:.1f}s", flush=True)

    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 3,
                        up_block_types=("UpDecoderBlock2D",) * 3, block_out_channels=(32, 64, 64), layers_per_block=1,
                        latent_channels=4, norm_num_groups=32, sample_size=SIZE, scaling_factor=0.5)
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3)
    flat = V.reshape(-1, SIZE, SIZE, 3)
    for i in range(a.vae_steps):
        idx = torch.randint(flat.shape[0], (16,), generator=g)
        x = flat[idx].permute(0, 3, 1, 2) * 2 - 1
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample(generator=g)).sample
        loss = F.l1_loss(rec, x) + 1e-6 * post.kl().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i % 100 == 0 or i == a.vae_steps - 1:
            print(f"vae {i} {loss.item():.4f}", flush=True)
    vae_loss = loss.item()
    vae.eval().requires_grad_(False)
    with torch.no_grad():  # latent statistics -> scaling factor (unit variance, as SD's 0.18215 was chosen)
        z = vae.encode(flat[:256].permute(0, 3, 1, 2) * 2 - 1).latent_dist.mean
        vae.register_to_config(scaling_factor=float(1.0 / z.std()))
        lat = torch.cat([vae.encode(flat[i:i + 64].permute(0, 3, 1, 2) * 2 - 1).latent_dist.mean for i in range(0, flat.shape[0], 64)])
        lat = (lat * vae.config.scaling_factor).reshape(N, FRAMES, 4, SIZE // 4, SIZE // 4)

    text = tiny_models.hf_text_encoder()
    unet2d = UNet2DConditionModel(sample_size=SIZE // 4, in_channels=4, out_channels=4, layers_per_block=1,
                                  block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                  up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
                                  attention_head_dim=8, norm_num_groups=32)
    adapter = MotionAdapter(block_out_channels=(32, 64), motion_layers_per_block=1, motion_num_attention_heads=8,
                            motion_norm_num_groups=32, motion_max_seq_length=32, use_motion_mid_block=True)
    pc = PoseController(latent_channels=4, downsample=4, channels=(16, 32, 64), heads=4)
    unet = UNetMotionModel.from_unet2d(unet2d, adapter)
    sched_cfg = dict(DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                                   set_alpha_to_one=False, steps_offset=1).config)
    ddpm = DDPMScheduler.from_config(sched_cfg)
    bb = Backbone(family="sd15", unet=unet, vae=vae, scheduler_config=sched_cfg, dtype=torch.float32, device=torch.device("cpu"),
                  text_encoder=text)
    with torch.no_grad():
        tok = torch.tensor([[49406, 49407] + [49407] * 75])
        ctx = text(tok)[0]
    params = list(unet.parameters()) + list(pc.parameters())
    opt = torch.optim.AdamW(params, lr=a.lr, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: min(1.0, (i + 1) / 100) * 0.5 * (1 + math.cos(math.pi * min(i, a.steps) / a.steps)))
    unet.train()
    clip = 8
    for i in range(a.steps):
        n = int(torch.randint(N, (1,), generator=g))
        s0 = int(torch.randint(FRAMES - clip + 1, (1,), generator=g))
        x0 = lat[n, s0:s0 + clip].permute(1, 0, 2, 3)[None]  # (1, 4, clip, h, w)
        ref_f = int(torch.randint(FRAMES, (1,), generator=g))
        ref = lat[n, ref_f][None]
        noise = torch.randn(x0.shape, generator=g)
        t = torch.randint(0, 1000, (1,), generator=g)
        xt = ddpm.add_noise(x0, noise, t)
        # each guidance kind is dropped 25 % of the time, so either alone and both together work at sampling time
        keep_sk, keep_sm = (torch.rand(2, generator=g) > 0.25).tolist()
        if not (keep_sk or keep_sm):
            keep_sk = True
        guide = {"skeleton": M[n, s0:s0 + clip].permute(0, 3, 1, 2) if keep_sk else None,
                 "smplx": S[n, s0:s0 + clip].permute(0, 3, 1, 2) if keep_sm else None}
        feat = pc(guide).permute(1, 0, 2, 3)[None]
        use_ref = bool(torch.rand(1, generator=g) > 0.1)  # 10 % without reference (CFG-style dropout)
        with reference_attention(unet, uncond="keep") as st:
            if use_ref:
                write_reference(st, lambda: unet(ref[:, :, None], torch.zeros((), dtype=torch.long), encoder_hidden_states=ctx))
            else:
                st.mode = "off"
            st.frames = clip
            pred = unet(xt + feat, t, encoder_hidden_states=ctx.repeat(clip, 1, 1)).sample
        loss = F.mse_loss(pred, noise)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        if i % 100 == 0 or i == a.steps - 1:
            print(f"unet {i} {loss.item():.4f} ({time.time() - t0:.0f}s)", flush=True)
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
    pc.save(os.path.join(out, "pose_controller.safetensors"))
    log = {"seed": a.seed, "size": SIZE, "frames": FRAMES, "sequences": N, "vae_steps": a.vae_steps, "steps": a.steps, "lr": a.lr, "lr_schedule": "100-step warm-up, cosine to 0",
           "vae_final_l1": round(vae_loss, 4), "unet_final_loss": round(loss.item(), 4), "seconds": round(time.time() - t0, 1),
           "train_data": "performer seeds 0-1, characters 0-5, all motions; skeleton and SMPL-X normal renders (each dropped 25 %)"}
    with open(os.path.join(out, "train_log.json"), "w") as fh:
        json.dump(log, fh, indent=1)
    print(json.dumps(log), flush=True)
    del bb


if __name__ == "__main__":
    main()
