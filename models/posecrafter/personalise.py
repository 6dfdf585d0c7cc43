"""One-shot personalisation: finetune a copy of the pipe's UNet on the frames of one video.

What trains (``target``):
* ``posecrafter`` — self-attention output projections (``attn1.to_out``) and the motion module's temporal
  attention (PoseCrafter/ControlVideo train ``attn1.to_out`` + temporal attention);
* ``temporal`` — the motion module only (DiffPerformer's temporal layers);
* plus, optionally, the pose controller and the identity adapter of the pipe.

Defaults follow thu-ml ControlVideo's one-shot config (PoseCrafter's base): 8 frames per step drawn at random
from the video (sorted), AdamW lr 3e-5, weight decay 1e-2, gradient clipping 1.0, MSE on the weights' own target (ε or v, from the
scheduler config) with one timestep shared
by all frames of a step, 300 steps; gradient checkpointing on; fp32 master weights of the trained tensors with autocast
in the pipe's dtype for half-precision pipes (bf16 autocast on CUDA devices that support it for fp32 pipes).
An 80/20 split keeps every fifth frame out of training for evaluation.

The pipe is never modified: training runs on clones.  Checkpoints are safetensors holding the trained tensors
(full values) with metadata: base-model fingerprint, trained parameter names, steps, loss curve, settings.
:func:`apply_personalised` loads them onto a clone and refuses checkpoints of another base model.  An
interruption (the callback raising) saves a usable checkpoint first; ``resume`` continues one.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Optional

import torch
import torch.nn.functional as F

from ..errors import BadInputError

TARGETS = ("posecrafter", "temporal")


@dataclass
class TrainSettings:
    steps: int = 300
    lr: float = 3e-5
    weight_decay: float = 1e-2
    grad_clip: float = 1.0
    frames_per_step: int = 8
    target: str = "posecrafter"
    train_pose_controller: bool = False
    train_identity: bool = False
    train_vae_decoder: bool = False  # DiffPerformer Eq. 2: the decoder also learns to reconstruct the frames
    vae_lr: float = 1e-5
    holdout: bool = False  # keep every 5th frame out (80/20)
    gradient_checkpointing: bool = True
    prompt: str = ""
    seed: int = 0


def trainable_names(unet: torch.nn.Module, target: str) -> List[str]:
    if target not in TARGETS:
        raise BadInputError(f"Unknown personalisation target {target!r}; choose {', '.join(TARGETS)}.")
    names = []
    for n, _ in unet.named_parameters():
        motion = "motion_modules" in n
        if target == "temporal" and motion:
            names.append(n)
        elif target == "posecrafter" and ((".attn1.to_out." in n and not motion) or (motion and ".attn" in n)):
            names.append(n)
    if not names:
        raise BadInputError(f"The pipe's UNet has no parameters for target {target!r}" +
                            (" (it needs a motion module)." if target == "temporal" else "."))
    return names


def base_fingerprint(unet: torch.nn.Module, names: List[str]) -> str:
    """Hash of the base values of the trained tensors (plus their names and shapes): a checkpoint applies only to
    the base model it was trained from."""
    h = hashlib.sha256()
    sd = dict(unet.named_parameters())
    for n in sorted(names):
        t = sd[n].detach().float().cpu().contiguous()
        h.update(n.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()[:32]


@dataclass
class Personalised:
    tensors: Dict[str, torch.Tensor]
    meta: Dict[str, object] = field(default_factory=dict)

    def save(self, path: str) -> str:
        from safetensors.torch import save_file

        d = os.path.dirname(os.path.abspath(path))
        os.makedirs(d, exist_ok=True)
        tmp = path + ".tmp"
        save_file({k: v.detach().contiguous().cpu() for k, v in self.tensors.items()}, tmp,
                  metadata={"performer.kind": "personalised", "performer.meta": json.dumps(self.meta)})
        os.replace(tmp, path)  # a partial write never replaces a good checkpoint
        return path


def load_personalised(path: str) -> Personalised:
    from ..backbones.weights import read_performer_file

    meta, tensors = read_performer_file(path, "personalised", "personalised checkpoint", key="performer.meta")
    return Personalised(tensors, meta)


def apply_personalised(bb, p: Personalised):
    """A new pipe whose UNet (a clone) carries the personalised tensors; ``bb`` is untouched."""
    from ..backbones.loaders import clone_module

    names = p.meta.get("unet_params", [])
    sd = dict(bb.unet.named_parameters())
    missing = [n for n in names if n not in sd]
    if missing:
        raise BadInputError(f"This personalised checkpoint was trained on another base model: the pipe's UNet has no {missing[0]} "
                            "(add the same motion module / use the same checkpoint).")
    if base_fingerprint(bb.unet, names) != p.meta.get("base_fingerprint"):
        raise BadInputError("This personalised checkpoint was trained from another base model (its base-weight fingerprint "
                            f"differs; trained from {p.meta.get('base_source', 'unknown')}).")
    unet = clone_module(bb.unet)
    with torch.no_grad():
        own = dict(unet.named_parameters())
        for n in names:
            own[n].copy_(p.tensors["unet." + n].to(own[n].device, own[n].dtype))
    parts = {"unet": unet}
    vsub = {k[len("vae."):]: v for k, v in p.tensors.items() if k.startswith("vae.")}
    if vsub:
        vae = clone_module(bb.vae)
        missing = [k for k in vsub if k not in vae.state_dict()]
        if missing:
            raise BadInputError(f"The checkpoint's VAE decoder does not fit this pipe's VAE (no {missing[0]}).")
        vae.load_state_dict(vsub, strict=False)
        parts_vae = vae
    else:
        parts_vae = None
    for key, attr in (("pose_controller.", "pose_controller"), ("identity.", "identity_adapter")):
        sub = {k[len(key):]: v for k, v in p.tensors.items() if k.startswith(key)}
        if sub:
            mod = getattr(bb, attr)
            if mod is None:
                raise BadInputError(f"The checkpoint carries a trained {attr.replace('_', ' ')} but the pipe has none; add one first.")
            mod = clone_module(mod)
            mod.load_state_dict(sub)
            parts[attr] = mod
    if parts_vae is not None:
        parts["vae"] = parts_vae
    return bb.with_parts(source={"personalised": p.meta.get("name", "")}, **parts)


def _frame_split(n: int, holdout: bool):
    train = [i for i in range(n) if not (holdout and i % 5 == 4)]
    held = [i for i in range(n) if holdout and i % 5 == 4]
    return train, held


def _trainable_copy(module: torch.nn.Module) -> torch.nn.Module:
    """A deep copy whose tensors are ordinary (ComfyUI loads models under inference mode; inference tensors
    cannot take part in autograd)."""
    from ..backbones.loaders import clone_module

    m = clone_module(module)
    with torch.no_grad():
        for mod in m.modules():
            for k, p in list(mod._parameters.items()):
                if p is not None:
                    mod._parameters[k] = torch.nn.Parameter(p.detach().clone(), requires_grad=p.requires_grad)
            for k, b in list(mod._buffers.items()):
                if b is not None:
                    mod._buffers[k] = b.clone()
    return m


def personalise(*args, **kwargs):
    """See :func:`_personalise`; runs with gradients on even inside ComfyUI's inference mode."""
    from ..common import gradients

    with gradients():
        return _personalise(*args, **kwargs)


def _personalise(bb, frames: torch.Tensor, settings: TrainSettings, skeleton: Optional[torch.Tensor] = None,
                callback: Optional[Callable[[int, int, float], None]] = None, save_path: Optional[str] = None,
                resume: Optional[Personalised] = None):
    """Train; returns (Personalised, personalised pipe).  ``frames``: IMAGE (F, H, W, 3); ``skeleton``: their pose
    maps (needed when the pipe has a ControlNet or the pose controller trains)."""
    from ..guidance.pose_controller import maps_to_tensor
    from ..sampling.sampler import check_size, controlnet_hint, encode_prompts, encode_video, training_target, unet_video

    s = settings
    if bb.family != "sd15":
        raise BadInputError("Personalisation trains AnimateDiff/SD1.5 pipes.")
    if frames.ndim != 4 or frames.shape[0] == 0:
        raise BadInputError(f"frames must be an IMAGE batch of a video; got shape {tuple(frames.shape)}.")
    Fr, H, W = frames.shape[0], frames.shape[1], frames.shape[2]
    check_size(W, H, bb.vae_scale_factor)
    train_idx, held_idx = _frame_split(Fr, s.holdout)
    if len(train_idx) < s.frames_per_step:
        raise BadInputError(f"There are {len(train_idx)} training frames but frames_per_step is {s.frames_per_step}; "
                            "use more frames or a smaller frames_per_step.")
    need_maps = bb.controlnet is not None or (s.train_pose_controller and bb.pose_controller is not None)
    maps = None
    if skeleton is not None:
        if skeleton.shape[0] != Fr:
            raise BadInputError(f"Poses are given for {skeleton.shape[0]} frames but the video has {Fr}; every training frame needs its pose.")
        maps = maps_to_tensor(skeleton, H, W, Fr, "training poses")
    elif need_maps:
        raise BadInputError("The pipe has a ControlNet or a trainable pose controller, so every training frame needs its pose map.")
    if s.train_pose_controller and bb.pose_controller is None:
        raise BadInputError("train_pose_controller is on but the pipe has no pose controller.")
    if s.train_identity:
        raise BadInputError("Training the identity adapter needs face embeddings per frame; not supported in this version.")
    dev, dt = bb.device, bb.dtype
    unet = _trainable_copy(bb.unet).to(dev)
    names = trainable_names(unet, s.target)
    if resume is not None:
        if resume.meta.get("unet_params") != names or resume.meta.get("base_fingerprint") != base_fingerprint(bb.unet, names):
            raise BadInputError("The checkpoint to resume was trained from another base model or with another target.")
    fingerprint = base_fingerprint(bb.unet, names)
    unet.requires_grad_(False)
    params = dict(unet.named_parameters())
    if resume is not None:
        with torch.no_grad():
            for n in names:
                params[n].copy_(resume.tensors["unet." + n])
    for n in names:
        params[n].requires_grad_(True)
    pc = _trainable_copy(bb.pose_controller) if (s.train_pose_controller and bb.pose_controller is not None) else bb.pose_controller
    train_params = [params[n] for n in names]
    if s.train_pose_controller and pc is not None:
        pc.requires_grad_(True).train()
        train_params += list(pc.parameters())
    vae = None
    if s.train_vae_decoder:
        vae = _trainable_copy(bb.vae).to(dev)
        vae.requires_grad_(False)
        vae.decoder.requires_grad_(True).train()
        if getattr(vae, "post_quant_conv", None) is not None:
            vae.post_quant_conv.requires_grad_(True)
        vae_params = [p for p in vae.parameters() if p.requires_grad]
    if s.gradient_checkpointing and hasattr(unet, "enable_gradient_checkpointing"):
        unet.enable_gradient_checkpointing()
    unet.train()
    with torch.no_grad():
        lat = torch.cat([encode_video(bb, frames[i:i + 8]) for i in range(0, Fr, 8)], 2).clone()  # (1, C, F, h, w), chunked VAE
        ctx = encode_prompts(bb, [s.prompt]).clone()
    if maps is not None:
        maps = maps.clone()
    from diffusers import DDPMScheduler

    sched = DDPMScheduler.from_config(bb.scheduler_config)
    # fp32 master weights: in a half-precision pipe the trained tensors (UNet targets, pose controller, VAE decoder)
    # are held and updated in fp32 (AdamW's moments too) and the forward runs under autocast in the pipe's dtype, so
    # small updates are not rounded away; they go back to the pipe's dtype when training ends
    half = dt in (torch.float16, torch.bfloat16)
    masters = train_params + (vae_params if vae is not None else [])
    dtypes = {k: v.dtype for k, v in pc.state_dict().items()} if (s.train_pose_controller and pc is not None) else {}
    orig = [p_.dtype for p_ in masters]
    for p_ in masters:
        p_.data = p_.data.float()
    if vae is not None:
        vae_opt = torch.optim.AdamW(vae_params, lr=s.vae_lr, weight_decay=s.weight_decay)
    opt = torch.optim.AdamW(train_params, lr=s.lr, weight_decay=s.weight_decay)
    g = torch.Generator("cpu").manual_seed(int(s.seed))
    losses: List[float] = list(resume.meta.get("loss_curve", [])) if resume else []
    done0 = int(resume.meta.get("steps", 0)) if resume else 0
    first_loss = len(losses)
    use_autocast = half or (dev.type == "cuda" and torch.cuda.is_bf16_supported())
    amp_dtype = dt if half else torch.bfloat16

    def autocast():
        return torch.autocast(dev.type, dtype=amp_dtype, enabled=use_autocast)

    def snapshot(step: int, interrupted: bool = False) -> Personalised:
        tensors = {"unet." + n: params[n].detach().clone().to(bb.dtype) for n in names}
        if s.train_pose_controller and pc is not None:
            tensors.update({"pose_controller." + k: v.detach().clone().to(dtypes.get(k, v.dtype)) for k, v in pc.state_dict().items()})
        if vae is not None:
            tensors.update({"vae." + k: v.detach().clone().to(bb.dtype) for k, v in vae.state_dict().items()
                            if k.startswith(("decoder.", "post_quant_conv."))})
        meta = {"base_fingerprint": fingerprint, "base_source": bb.source.get("backbone", ""),
                "motion_module": bb.source.get("motion_module", ""), "unet_params": names, "steps": step,
                "loss_curve": [round(x, 6) for x in losses], "settings": asdict(s), "train_frames": train_idx,
                "heldout_frames": held_idx, "interrupted": interrupted,
                "name": os.path.basename(save_path) if save_path else ""}
        return Personalised(tensors, meta)

    motion = bb.motion_adapter is not None
    step = done0
    try:
        for step in range(done0 + 1, s.steps + 1):
            pick = sorted(torch.randperm(len(train_idx), generator=g)[: s.frames_per_step].tolist())
            idx = [train_idx[i] for i in pick]
            x0 = lat[:, :, idx].to(dev, dt)
            noise = torch.randn(x0.shape, generator=g).to(dev, dt)
            t = torch.randint(0, sched.config.num_train_timesteps, (1,), generator=g).to(dev)
            xt = sched.add_noise(x0, noise, t)
            n = len(idx)
            with autocast():
                if pc is not None and maps is not None:
                    feat = pc({"skeleton": maps[idx].to(dev)}).to(xt.dtype).permute(1, 0, 2, 3)[None]
                    xt = xt + feat
                extra = {}
                if bb.controlnet is not None:
                    with torch.no_grad():
                        flat = xt.permute(0, 2, 1, 3, 4).reshape(n, xt.shape[1], *xt.shape[-2:])
                        hint = controlnet_hint(bb.controlnet, maps[idx], *xt.shape[-2:]).to(dev, dt)
                        down, mid = bb.controlnet(flat, t, encoder_hidden_states=ctx.repeat_interleave(n, 0),
                                                  controlnet_cond=hint, return_dict=False)
                    extra = dict(down_block_additional_residuals=down, mid_block_additional_residual=mid)
                pred = unet_video(unet, motion, xt, t, ctx.repeat_interleave(n, 0), **extra)
                loss = F.mse_loss(pred.float(), training_target(sched, x0, noise, t).float())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if s.grad_clip:
                torch.nn.utils.clip_grad_norm_(train_params, s.grad_clip)
            opt.step()
            if vae is not None:  # reconstruct the picked frames through the decoder (Eq. 2)
                z = x0[0].permute(1, 0, 2, 3).float() / bb.vae.config.scaling_factor  # (n, C, h, w)
                with autocast():
                    rec = vae.decode(z).sample
                target = frames[idx].permute(0, 3, 1, 2).to(dev, torch.float32) * 2 - 1
                vloss = F.l1_loss(rec.float(), target)
                vae_opt.zero_grad(set_to_none=True)
                vloss.backward()
                if s.grad_clip:
                    torch.nn.utils.clip_grad_norm_(vae_params, s.grad_clip)
                vae_opt.step()
            losses.append(float(loss.detach()))
            if callback:
                callback(step, s.steps, losses[-1])
    except BaseException:
        completed = done0 + len(losses) - first_loss
        if save_path and completed > done0:
            snapshot(completed, interrupted=True).save(save_path)  # a usable checkpoint of the finished steps
        raise
    result = snapshot(done0 + len(losses) - first_loss)
    if save_path:
        result.save(save_path)
    for p_, d in zip(masters, orig):  # the trained modules sample in their own dtype again, as the frozen rest
        p_.data = p_.data.to(d)
    unet.eval().requires_grad_(False)
    if hasattr(unet, "disable_gradient_checkpointing"):
        unet.disable_gradient_checkpointing()
    parts = {"unet": unet}
    if s.train_pose_controller and pc is not None:
        parts["pose_controller"] = pc.eval().requires_grad_(False)
    if vae is not None:
        parts["vae"] = vae.eval().requires_grad_(False)
    return result, bb.with_parts(source={"personalised": result.meta["name"]}, **parts)


@torch.no_grad()
def eval_loss(bb, frames: torch.Tensor, indices: List[int], seed: int = 123, timesteps=(100, 400, 700), prompt: str = "") -> float:
    """MSE of the pipe's prediction (ε, v or x0, as its scheduler config says) on the given frames at fixed timesteps
    and noise (deterministic; for tests and reports)."""
    from diffusers import DDPMScheduler

    from ..sampling.sampler import encode_prompts, encode_video, training_target, unet_video

    lat = encode_video(bb, frames[indices])
    ctx = encode_prompts(bb, [prompt])
    sched = DDPMScheduler.from_config(bb.scheduler_config)
    g = torch.Generator("cpu").manual_seed(seed)
    tot = 0.0
    n = len(indices)
    for tv in timesteps:
        noise = torch.randn(lat.shape, generator=g).to(bb.device, bb.dtype)
        t = torch.tensor([tv], device=bb.device)
        xt = sched.add_noise(lat.to(bb.device, bb.dtype), noise, t)
        pred = unet_video(bb.unet, bb.motion_adapter is not None, xt, t, ctx.repeat_interleave(n, 0))
        tot += F.mse_loss(pred.float(), training_target(sched, lat.to(bb.device, bb.dtype), noise, t).float()).item()
    return tot / len(timesteps)


def _read_frames(path: str, size: Optional[int]) -> torch.Tensor:
    import numpy as np
    from PIL import Image

    if os.path.isdir(path):
        files = sorted(f for f in os.listdir(path) if f.lower().endswith((".png", ".jpg", ".jpeg", ".webp")))
        imgs = [np.asarray(Image.open(os.path.join(path, f)).convert("RGB")) for f in files]
    else:
        import cv2

        cap = cv2.VideoCapture(path)
        imgs = []
        while True:
            ok, fr = cap.read()
            if not ok:
                break
            imgs.append(fr[..., ::-1].copy())
        cap.release()
    if not imgs:
        raise BadInputError(f"No frames found in {path}.")
    x = torch.from_numpy(np.stack(imgs)).float() / 255.0
    if size:
        x = F.interpolate(x.permute(0, 3, 1, 2), size=(size, size), mode="area").permute(0, 2, 3, 1)
    return x


def main(argv=None):
    """``python -m models.posecrafter.personalise`` from the pack's folder: the same training as the Personalise node."""
    import argparse

    from ..backbones.loaders import load_backbone, with_controlnet, with_motion_module

    ap = argparse.ArgumentParser(description="One-shot personalisation of an AnimateDiff pipe on one video.")
    ap.add_argument("--backbone", required=True, help="SD1.5 single file or diffusers folder")
    ap.add_argument("--motion-module", required=True)
    ap.add_argument("--controlnet", default="")
    ap.add_argument("--tokenizer-dir", action="append", default=[], help="folder with the CLIP tokenizer (ComfyUI's comfy/sd1_tokenizer)")
    ap.add_argument("--frames", required=True, help="a folder of images or a video file")
    ap.add_argument("--poses", default="", help="OpenPose-JSON pose file for the frames (needed with --controlnet)")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--out", required=True, help="output .safetensors")
    ap.add_argument("--resume", default="")
    for k, v in asdict(TrainSettings()).items():
        ap.add_argument("--" + k.replace("_", "-"), type=type(v) if not isinstance(v, bool) else (lambda x: x.lower() in ("1", "true", "yes")), default=v)
    a = ap.parse_args(argv)
    bb = with_motion_module(load_backbone(a.backbone, tokenizer_dirs=a.tokenizer_dir), a.motion_module)
    if a.controlnet:
        bb = with_controlnet(bb, a.controlnet)
    frames = _read_frames(a.frames, a.size)
    skeleton = None
    if a.poses:
        from ..pose.sequence import draw, load_json

        skeleton = torch.from_numpy(draw(load_json(a.poses), frames.shape[2], frames.shape[1])).float() / 255.0
    s = TrainSettings(**{k: getattr(a, k) for k in asdict(TrainSettings())})
    res, _ = personalise(bb, frames, s, skeleton=skeleton, save_path=a.out,
                         resume=load_personalised(a.resume) if a.resume else None,
                         callback=lambda i, n, l: print(f"step {i}/{n} loss {l:.5f}", flush=True) if i % 10 == 0 or i == n else None)
    print(f"saved {a.out}: {res.meta['steps']} steps, final loss {res.meta['loss_curve'][-1]:.5f}")


if __name__ == "__main__":
    main()
