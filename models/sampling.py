"""Samplers over :class:`~.backbones.Backbone` (plain diffusers modules, no ComfyUI).

Every loop takes ``callback(done, total)``; the node layer turns it into ComfyUI progress and
interruption (the callback raises to stop).  Randomness comes from a CPU generator seeded by the
caller, so a given seed gives the same video on every run and device.
"""
from __future__ import annotations

from typing import Callable, List, Optional

import torch

from .errors import BadInputError

Callback = Optional[Callable[[int, int], None]]


def check_size(width: int, height: int, multiple: int) -> None:
    for name, v in (("width", width), ("height", height)):
        if v <= 0 or v % multiple:
            raise BadInputError(f"{name} must be a positive multiple of {multiple} (the VAE downscale factor); got {v}.")


@torch.no_grad()
def encode_prompts(bb, prompts: List[str]) -> torch.Tensor:
    if bb.text_encoder is None or bb.tokenizer is None:
        raise BadInputError(f"This {bb.family} backbone has no text encoder; text prompts need an SD1.5 backbone.")
    tok = bb.tokenizer(prompts, padding="max_length", max_length=bb.tokenizer.model_max_length, truncation=True, return_tensors="pt")
    return bb.text_encoder(tok.input_ids.to(bb.device))[0].to(bb.dtype)


def _check_finite(x: torch.Tensor, what: str) -> None:
    if not torch.isfinite(x).all():
        raise BadInputError(f"{what} contains NaN or infinite values; try fp32 or another dtype.")


@torch.no_grad()
def sample_text2video(bb, prompt: str, negative: str, frames: int, width: int, height: int, steps: int,
                      cfg: float, seed: int, callback: Callback = None, init_latents: Optional[torch.Tensor] = None,
                      denoise: float = 1.0) -> torch.Tensor:
    """AnimateDiff-style sampling (SD1.5 UNet + motion module; without a motion module every frame is
    sampled independently).  Returns latents in the UNet's space, shape ``(1, C, F, h, w)``.

    ``init_latents`` + ``denoise`` < 1 start from a given video latent (img2img-style strength)."""
    from diffusers import DDIMScheduler

    if bb.family != "sd15":
        raise BadInputError(f"Text-to-video sampling needs an SD1.5 backbone (got {bb.family}).")
    if frames < 1:
        raise BadInputError(f"frames must be >= 1; got {frames}.")
    f = bb.vae_scale_factor
    check_size(width, height, f)
    sched = DDIMScheduler.from_config(bb.scheduler_config)
    sched.set_timesteps(steps, device=bb.device)
    timesteps = sched.timesteps
    g = torch.Generator("cpu").manual_seed(int(seed))
    c = bb.unet.config.in_channels
    noise = torch.randn((1, c, frames, height // f, width // f), generator=g, dtype=torch.float32)
    if init_latents is not None:
        if tuple(init_latents.shape) != tuple(noise.shape):
            raise BadInputError(f"init latent has shape {tuple(init_latents.shape)}; expected {tuple(noise.shape)} for these settings.")
        start = max(0, min(steps, int(round(steps * (1 - denoise)))))
        timesteps = timesteps[start:]
        latents = sched.add_noise(init_latents.float(), noise, timesteps[:1].cpu()) if len(timesteps) else init_latents.float()
    else:
        latents = noise * sched.init_noise_sigma
    latents = latents.to(bb.device, bb.dtype)
    ctx = encode_prompts(bb, [negative, prompt])  # batch order [uncond, cond]
    use_cfg = cfg > 1.0
    if not use_cfg:
        ctx = ctx[1:]
    ctx = ctx.repeat_interleave(frames, 0)  # one context row per frame, as both UNet layouts expect
    motion = bb.motion_adapter is not None  # UNetMotionModel takes (b, c, f, h, w) directly
    total = len(timesteps)
    for i, t in enumerate(timesteps):
        x = torch.cat([latents] * 2) if use_cfg else latents
        x = sched.scale_model_input(x, t)
        b = x.shape[0]
        if motion:
            eps = bb.unet(x, t, encoder_hidden_states=ctx).sample
        else:
            flat = x.permute(0, 2, 1, 3, 4).reshape(b * frames, c, *x.shape[-2:])
            eps = bb.unet(flat, t, encoder_hidden_states=ctx).sample
            eps = eps.reshape(b, frames, c, *x.shape[-2:]).permute(0, 2, 1, 3, 4)
        if use_cfg:
            unc, cond = eps.chunk(2)
            eps = unc + cfg * (cond - unc)
        latents = sched.step(eps, t, latents).prev_sample
        _check_finite(latents, "The sampled latent")
        if callback:
            callback(i + 1, total)
    return latents


@torch.no_grad()
def decode_latents(bb, latents: torch.Tensor, chunk: int = 8, callback: Callback = None) -> torch.Tensor:
    """(1, C, F, h, w) UNet-space latents -> IMAGE batch (F, H, W, 3) in 0..1, decoded ``chunk`` frames at a time."""
    _check_finite(latents, "The latent to decode")
    x = latents[0].permute(1, 0, 2, 3) / bb.vae.config.scaling_factor
    out = []
    for s in range(0, x.shape[0], max(1, chunk)):
        part = x[s:s + chunk].to(bb.device, bb.dtype)
        if bb.family == "svd":
            img = bb.vae.decode(part, num_frames=part.shape[0]).sample
        else:
            img = bb.vae.decode(part).sample
        out.append(((img.float() + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1).cpu())
        if callback:
            callback(min(s + chunk, x.shape[0]), x.shape[0])
    return torch.cat(out)
