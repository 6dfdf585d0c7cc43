"""Reference-conditioned video samplers over :class:`~.backbones.Backbone` (plain diffusers, no ComfyUI).

Two backbones, one loop:

* **AnimateDiff** (SD1.5 UNet + motion module; without a motion module frames are independent):
  DDIM by default (or another diffusers scheduler named in ``VideoSettings.scheduler``) over the betas the weights
  were trained with (``VideoSettings.beta_schedule`` "auto": AnimateDiff's linear betas with a motion module, the
  checkpoint's own without; see ``backbones.loaders.ANIMATEDIFF_BETAS``), the prediction type of the checkpoint's
  scheduler config, text context + optional identity tokens, optional ControlNet on skeleton maps.
* **SVD**: the EDM Euler schedule of the model's scheduler config (Karras sigmas, v-prediction,
  timestep = 0.25·ln σ, input scaled by 1/√(σ²+1) — all done by ``EulerDiscreteScheduler``).  The
  reference's conditioning latent is ``vae.encode(image + noise_aug·ε).mode()`` *unscaled* and is
  concatenated to every frame (zeros in the unconditional half); CLIP image embedding in the
  cross-attention (zeros unconditional); micro-conditioning ``[fps − 1, motion_bucket_id, noise_aug]``;
  per-frame guidance rising linearly from ``min_cfg`` to ``cfg`` over the video.

Both accept causal reference attention (:mod:`.reference_attention`: one reference pass at t = 0 per
run), the VividPose pose controller (:mod:`.pose_controller`, added to the noisy latent in both CFG
halves, like Champ), decoupled identity attention (:mod:`.identity`), sliding windows
(:mod:`.windows`) and ``denoise`` < 1 from ``init_latents`` (noised with the backbone's own rule:
DDPM ``add_noise`` for SD1.5, ``x + σε`` for SVD).  CFG batches are always ``[uncond, cond]``.

Every loop calls ``callback(done, total)`` once per window per step (and, when the callback has a ``preview``
method, ``callback.preview(latents)`` once per step with the step's predicted clean latents, (1, C, F, h, w) in the
UNet's space, for live previews); the node layer turns it into
progress and interruption (the callback raises to stop).  Randomness comes from a CPU generator, so
a seed gives the same video on every run and device.  UNet processors are restored on every exit.
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from typing import Callable, List, Optional

import torch

from ..errors import BadInputError

Callback = Optional[Callable[[int, int], None]]

# Classifier-free guidance choice for the reference per pipeline (see reference_attention.py).
# AnimateDiff: like Moore-AnimateAnyone, the unconditional half runs without the reference.
# SVD: the unconditional half already lacks the image (zero latent + zero CLIP); keeping the reference
# there keeps SVD's small guidance scales about motion rather than over-driving appearance.
DEFAULT_REFERENCE_UNCOND = {"sd15": "drop", "svd": "keep"}


def check_size(width: int, height: int, multiple: int) -> None:
    for name, v in (("width", width), ("height", height)):
        if v <= 0 or v % multiple:
            raise BadInputError(f"{name} must be a positive multiple of {multiple} (the VAE downscale factor); got {v}.")


def _check_finite(x: torch.Tensor, what: str) -> None:
    if not torch.isfinite(x).all():
        raise BadInputError(f"{what} contains NaN or infinite values; try fp32 or another dtype.")


@torch.no_grad()
def encode_prompts(bb, prompts: List[str]) -> torch.Tensor:
    if bb.text_encoder is None or bb.tokenizer is None:
        raise BadInputError(f"This {bb.family} backbone has no text encoder; text prompts need an SD1.5 backbone.")
    tok = bb.tokenizer(prompts, padding="max_length", max_length=bb.tokenizer.model_max_length, truncation=True, return_tensors="pt")
    return bb.text_encoder(tok.input_ids.to(bb.device))[0].to(bb.dtype)


# ----------------------------------------------------------------------------- reference


@dataclass
class Reference:
    """One encoded reference image (``PERFORMER_REFERENCE``)."""

    family: str
    width: int
    height: int
    image: torch.Tensor  # (1, H, W, 3) 0..1, CPU
    latent: torch.Tensor  # (1, C, h, w) in the UNet's (scaled) space
    cond_latent: Optional[torch.Tensor] = None  # SVD: unscaled mode latent of the noise-augmented image
    noise_aug: float = 0.0
    clip_embeds: Optional[torch.Tensor] = None  # (1, D)
    face_embeds: Optional[torch.Tensor] = None  # (1, 512)
    pose: Optional[torch.Tensor] = None  # (1, 3, H, W) skeleton map of the reference pose (SCD pose injection)
    pose_render: Optional[torch.Tensor] = None  # (1, 3, H, W) the reference's own SMPL-X render (the smplx encoder)
    info: dict = field(default_factory=dict)


def _image_to_tensor(image: torch.Tensor, what: str) -> torch.Tensor:
    if image.ndim == 3:
        image = image[None]
    if image.ndim != 4 or image.shape[-1] not in (3, 4):
        raise BadInputError(f"{what} must be an IMAGE (1, height, width, 3); got shape {tuple(image.shape)}.")
    if not torch.isfinite(image).all():
        raise BadInputError(f"{what} contains NaN or infinite values.")
    return image[:1, ..., :3].float().cpu()


@torch.no_grad()
def clip_image_embeds(bb, image: torch.Tensor) -> torch.Tensor:
    """(1, D) projected CLIP image embedding with the pipe's image encoder (SVD's own, or a clip_vision model)."""
    if bb.image_encoder is None or bb.feature_extractor is None:
        raise BadInputError("This pipe has no CLIP image encoder (SD1.5 needs a clip_vision model in Add Identity Adapter).")
    px = bb.feature_extractor(images=(image[0].numpy() * 255).round().astype("uint8"), return_tensors="pt",
                              do_rescale=True).pixel_values
    return bb.image_encoder(px.to(bb.device, bb.dtype)).image_embeds


@torch.no_grad()
def encode_reference(bb, image: torch.Tensor, noise_aug: float = 0.02, seed: int = 0, face: str = "auto",
                     face_landmarks=None, pose: Optional[torch.Tensor] = None,
                     pose_render: Optional[torch.Tensor] = None) -> Reference:
    """Encode a reference photo for ``bb``.  ``face``: "auto" (embed if the pipe has ArcFace), "require", "off".
    ``pose`` / ``pose_render``: the reference's own skeleton map / SMPL-X render, added through the pose controller in
    the reference pass (SCD's pose injection)."""
    img = _image_to_tensor(image, "reference image")
    _, h, w, _ = img.shape
    check_size(w, h, bb.vae_scale_factor)
    x = img.permute(0, 3, 1, 2).to(bb.device, bb.dtype) * 2 - 1
    sf = bb.vae.config.scaling_factor
    ref = Reference(family=bb.family, width=w, height=h, image=img, latent=None)
    ref.latent = (bb.vae.encode(x).latent_dist.mean * sf).float().cpu()
    if bb.family == "svd":
        g = torch.Generator("cpu").manual_seed(int(seed))
        xa = x + noise_aug * torch.randn(x.shape, generator=g).to(x.device, x.dtype)
        ref.cond_latent = bb.vae.encode(xa).latent_dist.mode().float().cpu()
        ref.noise_aug = float(noise_aug)
    if bb.image_encoder is not None and bb.feature_extractor is not None:
        ref.clip_embeds = clip_image_embeds(bb, img).float().cpu()
    if face != "off" and bb.arcface is not None:
        from ..pose.face import align_face

        try:
            crop = align_face(img[0], landmarks=face_landmarks)
            ref.face_embeds = torch.from_numpy(bb.arcface.embed(crop))[None]
            ref.info["face"] = "found"
        except BadInputError:
            if face == "require":
                raise
            ref.info["face"] = "not found (identity tokens use the unconditional face embedding)"
    elif face == "require":
        raise BadInputError("face='require' but the pipe has no ArcFace model (add one with Add Identity Adapter).")
    if pose is not None or pose_render is not None:
        from ..guidance.pose_controller import maps_to_tensor

        pc = getattr(bb, "pose_controller", None)
        given = [(n, k) for n, x, k in (("pose", pose, "skeleton"), ("pose_render", pose_render, "smplx")) if x is not None]
        names = " and ".join(n for n, _ in given)
        if pc is None:
            raise BadInputError(f"The reference's {names} go through the pipe's pose controller, but this pipe has none: "
                                f"add one with Add Pose Controller before Encode Reference, or leave {names} unconnected.")
        for n, k in given:
            if k not in pc.encoders:
                raise BadInputError(f"The reference's {n} needs the pose controller's {k!r} encoder; this one has "
                                    f"{', '.join(pc.encoders)}.")

        if pose is not None:
            ref.pose = maps_to_tensor(pose, h, w, 1, "reference pose")
        if pose_render is not None:
            ref.pose_render = maps_to_tensor(pose_render, h, w, 1, "reference SMPL-X render")
    _check_finite(ref.latent, "The reference latent")
    return ref


# ----------------------------------------------------------------------------- settings


@dataclass
class VideoSettings:
    frames: int
    width: int
    height: int
    steps: int = 25
    cfg: float = 7.5
    seed: int = 0
    prompt: str = ""
    negative: str = ""
    denoise: float = 1.0
    scheduler: str = "ddim"  # sd15: ddim | euler | euler_a | dpm++ | unipc | pndm ; svd: its own EDM Euler
    beta_schedule: str = "auto"  # sd15: auto (the weights' own) | linear | scaled_linear ; svd: its own EDM schedule
    window: int = 16
    stride: int = 8
    anchor_first_frame: bool = False  # frame 0 in every window (MimicMotion's tiling for long SVD videos)
    reference_strength: float = 1.0
    reference_uncond: Optional[str] = None  # None: DEFAULT_REFERENCE_UNCOND[family]
    reference_pose: bool = True  # add the reference pose's controller features in the reference pass (SCD)
    controlnet_scale: float = 1.0
    image_scale: float = 1.0
    face_scale: float = 1.0
    pose_scale: float = 1.0
    fps: int = 7  # svd
    motion_bucket_id: int = 127  # svd
    min_cfg: float = 1.0  # svd: guidance of the first frame
    keyframe: Optional[int] = None  # key-frame attention (PoseCrafter): every frame's self-attention reads this frame's K/V


SD15_SCHEDULERS = {
    "ddim": "DDIMScheduler", "euler": "EulerDiscreteScheduler", "euler_a": "EulerAncestralDiscreteScheduler",
    "dpm++": "DPMSolverMultistepScheduler", "unipc": "UniPCMultistepScheduler", "pndm": "PNDMScheduler",
}


PNDM_MIN_STEPS = 4  # diffusers' PNDMScheduler.set_timesteps fails below this (its Runge–Kutta warm-up needs them)

BETA_SCHEDULES = ("auto", "linear", "scaled_linear")

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def _prediction_type(sched) -> str:
    kind = sched.config.prediction_type
    if kind not in PREDICTION_TYPES:
        raise BadInputError(f"The backbone's scheduler has prediction_type {kind!r}; expected epsilon, v_prediction or sample.")
    return kind


def training_target(sched, x0: torch.Tensor, noise: torch.Tensor, t) -> torch.Tensor:
    """What the UNet is trained to predict, as its scheduler config says (ε, v or x0): personalisation and evaluation
    follow the weights' own ``prediction_type`` instead of assuming ε."""
    kind = _prediction_type(sched)
    if kind == "epsilon":
        return noise
    return sched.get_velocity(x0, noise, t) if kind == "v_prediction" else x0


def output_to_eps(sched, out: torch.Tensor, x: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """The ε the model output implies at a noisy latent ``x`` with ᾱ = ``alpha_bar``."""
    kind = _prediction_type(sched)
    if kind == "epsilon":
        return out
    a, b = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
    return a * out + b * x if kind == "v_prediction" else (x - a * out) / b.clamp_min(1e-8)


def predicted_x0(sched, out: torch.Tensor, x: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """The clean latent the model output implies at a noisy latent ``x`` with ᾱ = ``alpha_bar``."""
    kind = _prediction_type(sched)
    if kind == "sample":
        return out
    a, b = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
    return (x - b * out) / a if kind == "epsilon" else a * x - b * out


def scheduler_config(bb, beta_schedule: str = "auto") -> dict:
    """The scheduler config to sample ``bb`` with.  "auto": the betas its weights were trained with, as the backbone
    carries them (``with_motion_module`` puts AnimateDiff's linear betas over an SD1.5 checkpoint's scaled_linear
    ones); "linear" / "scaled_linear": those betas instead (SD1.5 only; SVD always samples its own EDM schedule)."""
    if beta_schedule not in BETA_SCHEDULES:
        raise BadInputError(f"Unknown beta schedule {beta_schedule!r}; choose one of {', '.join(BETA_SCHEDULES)}.")
    cfg = dict(bb.scheduler_config)
    if beta_schedule != "auto" and bb.family == "sd15":
        cfg.update(beta_schedule=beta_schedule, trained_betas=None)
    return cfg


def make_scheduler(bb, name: str, beta_schedule: str = "auto"):
    import diffusers

    if bb.family == "svd":
        return diffusers.EulerDiscreteScheduler.from_config(bb.scheduler_config)
    if name not in SD15_SCHEDULERS:
        raise BadInputError(f"Unknown scheduler {name!r}; choose one of {', '.join(SD15_SCHEDULERS)}.")
    return getattr(diffusers, SD15_SCHEDULERS[name]).from_config(scheduler_config(bb, beta_schedule))


# ----------------------------------------------------------------------------- the loop


class _Run:
    """Everything fixed for one sampling run (contexts, pose features), built once."""

    def __init__(self, bb, s: VideoSettings, ref: Optional[Reference], skeleton, smplx):
        from ..guidance.pose_controller import maps_to_tensor, pose_features

        self.bb, self.s, self.ref = bb, s, ref
        self.cfg = s.cfg > 1.0 if bb.family == "sd15" else max(s.cfg, s.min_cfg) > 1.0
        self.motion = bb.motion_adapter is not None
        dev, dt = bb.device, bb.dtype
        n_rows = 2 if self.cfg else 1
        # pose maps
        if skeleton is not None and smplx is not None and skeleton.shape[0] != smplx.shape[0]:
            raise BadInputError(f"skeleton maps have {skeleton.shape[0]} frames but SMPL-X renders have {smplx.shape[0]}; "
                                "they must come from the same driving video.")
        self.skeleton = maps_to_tensor(skeleton, s.height, s.width, s.frames, "skeleton maps") if skeleton is not None else None
        self.smplx = maps_to_tensor(smplx, s.height, s.width, s.frames, "SMPL-X renders") if smplx is not None else None
        if self.skeleton is not None and bb.controlnet is None and bb.pose_controller is None:
            raise BadInputError("Skeleton maps are connected but the pipe has neither a ControlNet nor a pose controller, so "
                                "they would be ignored; add one (Add ControlNet / Add Pose Controller) or disconnect them.")
        if self.smplx is not None and bb.pose_controller is None:
            raise BadInputError("SMPL-X renders are connected but the pipe has no pose controller, so they would be "
                                "ignored; add one (Add Pose Controller) or disconnect them.")
        self.pose_feat = None
        if (self.skeleton is not None or self.smplx is not None) and bb.pose_controller is not None:
            feat = pose_features(bb.pose_controller, self.skeleton, self.smplx, s.pose_scale)
            self.pose_feat = feat.to(dt).permute(1, 0, 2, 3)[None] if feat is not None else None  # (1, C, F, h, w)
        self.hint = None
        if bb.controlnet is not None:
            if self.skeleton is None:
                raise BadInputError("The pipe has a ControlNet but no skeleton maps were given; connect pose maps or remove the ControlNet.")
            self.hint = controlnet_hint(bb.controlnet, self.skeleton, s.height // bb.vae_scale_factor, s.width // bb.vae_scale_factor)
        # identity tokens
        ad = bb.identity_adapter
        id_unc = id_cond = None
        if ad is not None:
            clip = ref.clip_embeds if ref is not None else None
            face = ref.face_embeds if ref is not None else None
            for kind, have, scale, fix in (("CLIP-image", clip, s.image_scale, "a clip_vision model in Add Identity Adapter"),
                                           ("face", face, s.face_scale, "an ArcFace model and a face in the reference")):
                n = ad.config["num_image_tokens" if kind == "CLIP-image" else "num_face_tokens"]
                if n and scale > 0 and have is None:
                    logging.warning("Identity adapter: the reference has no %s embedding, so its %s tokens are the "
                                    "unconditional ones and change nothing; give it %s, or set that scale to 0.",
                                    kind, kind, fix)
            id_unc = ad.tokens(None, None).to(dev, dt)
            id_cond = ad.tokens(clip, face).to(dev, dt)
        # base context rows [uncond, cond]
        if bb.family == "sd15":
            base = encode_prompts(bb, [s.negative, s.prompt])
        else:
            if ref is None:
                raise BadInputError("SVD sampling needs a reference image (its first-frame condition).")
            clip = ref.clip_embeds
            if clip is None:
                raise BadInputError("The SVD reference has no CLIP embedding; encode it with an SVD pipe.")
            clip = clip.to(dev, dt)[:, None]
            base = torch.cat([torch.zeros_like(clip), clip])
        self.base_ctx = base[-n_rows:]
        self.ctx = base if id_unc is None else torch.cat([base, torch.cat([id_unc, id_cond])], 1)
        self.ctx = self.ctx[-n_rows:]
        self.ref_ctx = self.ctx[-1:]  # the reference pass is conditional
        if bb.family == "svd":
            fps = max(1, int(s.fps)) - 1
            self.time_ids = torch.tensor([[fps, s.motion_bucket_id, ref.noise_aug]], device=dev, dtype=dt).repeat(n_rows, 1)
            cl = ref.cond_latent.to(dev, dt)
            self.cond_lat = torch.cat([torch.zeros_like(cl), cl])[-n_rows:]  # (rows, C, h, w)
            g = torch.linspace(s.min_cfg, s.cfg, s.frames) if s.frames > 1 else torch.tensor([s.cfg])
            self.frame_cfg = g

    # -- one UNet call over a window of frames; returns model output (1, C, n, h, w)
    def predict(self, sched, x: torch.Tensor, t, idx: List[int], ref_state) -> torch.Tensor:
        bb, s = self.bb, self.s
        n = len(idx)
        rows = 2 if self.cfg else 1
        xin = torch.cat([x] * rows) if rows == 2 else x
        xin = sched.scale_model_input(xin, t)
        if self.pose_feat is not None:
            xin = xin + self.pose_feat[:, :, idx].to(xin.dtype)
        if ref_state is not None:
            ref_state.uncond_rows = n if rows == 2 else 0
            ref_state.frames = n
        if bb.family == "svd":
            sample = torch.cat([xin.permute(0, 2, 1, 3, 4), self.cond_lat[:, None].expand(-1, n, -1, -1, -1)], 2)
            out = bb.unet(sample, t, encoder_hidden_states=self.ctx, added_time_ids=self.time_ids).sample
            out = out.permute(0, 2, 1, 3, 4)  # (rows, C, n, h, w)
            if rows == 2:
                unc, cond = out.chunk(2)
                gs = self.frame_cfg[idx].to(out.device, out.dtype).view(1, 1, n, 1, 1)
                out = unc + gs * (cond - unc)
            return out
        ctx = self.ctx.repeat_interleave(n, 0)
        extra = {}
        if bb.controlnet is not None and s.controlnet_scale:  # the 2-D ControlNet sees frames flattened batch-major
            flat = xin.permute(0, 2, 1, 3, 4).reshape(rows * n, xin.shape[1], *xin.shape[-2:])
            cond_img = self.hint[idx].to(bb.device, bb.dtype).repeat(rows, 1, 1, 1)
            down, mid = bb.controlnet(flat, t, encoder_hidden_states=self.base_ctx.repeat_interleave(n, 0),
                                      controlnet_cond=cond_img, conditioning_scale=float(s.controlnet_scale),
                                      return_dict=False)
            extra = dict(down_block_additional_residuals=down, mid_block_additional_residual=mid)
        out = unet_video(bb.unet, self.motion, xin, t, ctx, **extra)
        if rows == 2:
            unc, cond = out.chunk(2)
            out = unc + s.cfg * (cond - unc)
        return out

    def reference_pass(self, sched, state=None) -> None:
        """The reference through the same UNet at t = 0 (one frame, conditional context), or through the pipe's
        separate reference UNet, whose layers write their input tokens into ``state``."""
        bb, ref = self.bb, self.ref
        lat = ref.latent.to(bb.device, bb.dtype)
        if self.s.reference_pose and (ref.pose is not None or ref.pose_render is not None) and bb.pose_controller is not None:
            lat = lat + bb.pose_controller({"skeleton": ref.pose, "smplx": ref.pose_render}).to(lat.dtype) * self.s.pose_scale
        if bb.family == "svd":
            sigma = float(sched.config.sigma_min)
            t = torch.tensor(0.25 * torch.log(torch.tensor(sigma)).item(), device=bb.device)
            x = lat / (sigma ** 2 + 1) ** 0.5
            sample = torch.cat([x, ref.cond_latent.to(bb.device, bb.dtype)], 1)[:, None]
            bb.unet(sample, t, encoder_hidden_states=self.ref_ctx, added_time_ids=self.time_ids[-1:])
            return
        t = torch.zeros((), dtype=torch.long, device=bb.device)
        if state is not None:
            state.separate = bb.reference_unet is not None
        if bb.reference_unet is not None:  # a separate ReferenceNet (AnimateAnyone / Champ / MusePose): its layers' tokens
            from ..attention.reference import is_spatial_self_attention, reference_unet_writer

            names = [n[: -len(".processor")] for n in bb.unet.attn_processors if is_spatial_self_attention(n)]
            with reference_unet_writer(bb.reference_unet, state, names):
                bb.reference_unet(lat.to(bb.reference_unet.dtype), t, encoder_hidden_states=self.ref_ctx)
            return
        if self.motion:
            bb.unet(lat[:, :, None], t, encoder_hidden_states=self.ref_ctx)
        else:
            bb.unet(lat, t, encoder_hidden_states=self.ref_ctx)


def controlnet_hint(controlnet, maps: torch.Tensor, latent_h: int, latent_w: int) -> torch.Tensor:
    """Pose maps (N, 3, H, W) at the size the ControlNet expects: its hint encoder downsamples by
    2^(stages−1), so the latent size times that (the image size for real SD1.5 ControlNets)."""
    hf = 2 ** (len(controlnet.config.conditioning_embedding_out_channels) - 1)
    lh, lw = latent_h * hf, latent_w * hf
    if tuple(maps.shape[-2:]) == (lh, lw):
        return maps
    return torch.nn.functional.interpolate(maps, size=(lh, lw), mode="bilinear", align_corners=False)


def unet_video(unet, motion: bool, x: torch.Tensor, t, ctx: torch.Tensor, **extra) -> torch.Tensor:
    """An SD1.5 UNet on video latents (rows, C, F, h, w): a UNetMotionModel takes them as they are; a 2-D UNet gets
    the frames flattened batch-major ((rows·F), C, h, w).  ``ctx`` has one row per (row, frame)."""
    if motion:
        return unet(x, t, encoder_hidden_states=ctx, **extra).sample
    rows, c, n = x.shape[:3]
    flat = x.permute(0, 2, 1, 3, 4).reshape(rows * n, c, *x.shape[-2:])
    out = unet(flat, t, encoder_hidden_states=ctx, **extra).sample
    return out.reshape(rows, n, c, *x.shape[-2:]).permute(0, 2, 1, 3, 4)


@contextlib.contextmanager
def _attention_patches(bb, s: "VideoSettings", reference, use_reference_attention: bool, ref_state=None):
    """Identity and reference / key-frame processors for one run (originals restored on exit).
    Yields (the reference state to hand to ``_Run.predict`` or None, whether the reference pass must run)."""
    from ..attention.identity import identity_attention
    from ..attention.reference import reference_attention

    use_ref = use_reference_attention and reference is not None and s.reference_strength > 0
    uncond = s.reference_uncond or DEFAULT_REFERENCE_UNCOND[bb.family]
    patch = use_ref or s.keyframe is not None
    ref_cm = (reference_attention(bb.unet, s.reference_strength if use_ref else 0.0, uncond, state=ref_state, keyframe=s.keyframe)
              if patch else contextlib.nullcontext())
    id_cm = (identity_attention(bb.unet, bb.identity_adapter, s.image_scale, s.face_scale)
             if bb.identity_adapter is not None else contextlib.nullcontext())
    with id_cm, ref_cm as st:
        yield (st if patch else None), use_ref


def _check_motion_window(bb, window: int) -> None:
    if bb.motion_adapter is None:
        return
    cfg = getattr(bb.motion_adapter, "config", {})
    max_len = cfg.get("motion_max_seq_length") if hasattr(cfg, "get") else None
    if max_len and window > max_len:
        raise BadInputError(f"The motion module handles at most {max_len} frames at once; use a context window "
                            f"of at most {max_len} frames (got {window}).")


@torch.no_grad()
def sample_video(bb, s: VideoSettings, reference: Optional[Reference] = None, skeleton: Optional[torch.Tensor] = None,
                 smplx: Optional[torch.Tensor] = None, init_latents: Optional[torch.Tensor] = None,
                 callback: Callback = None, use_reference_attention: bool = True, ref_state=None,
                 start_latents: Optional[torch.Tensor] = None,
                 step_hook: Optional[Callable[[int, torch.Tensor], torch.Tensor]] = None) -> torch.Tensor:
    """Sample a video; returns latents ``(1, C, F, h, w)`` in the UNet's (scaled) space.

    ``skeleton``/``smplx``: IMAGE batches (F, H, W, 3) in 0..1 (pose maps / body renders).
    ``init_latents`` + ``denoise`` < 1 start from a given video latent (PoseCrafter, DiffPerformer).
    ``start_latents``: use this as the noisy latent at the first timestep as it is (e.g. a DDIM inversion).
    ``step_hook(i, latents)``: called before step ``i`` (0 = before the first); returns the latents to use
    (PoseCrafter's latent editing at a chosen step).
    """
    from ..attention.reference import write_reference
    from .windows import plan_windows, window_weights

    if bb.family not in ("sd15", "svd"):
        raise BadInputError(f"Unknown backbone family {bb.family!r}.")
    if s.frames < 1:
        raise BadInputError(f"frames must be >= 1; got {s.frames}.")
    if not 0.0 < s.denoise <= 1.0:
        raise BadInputError(f"denoise must be in (0, 1]; got {s.denoise}.")
    f = bb.vae_scale_factor
    check_size(s.width, s.height, f)
    if reference is not None:
        if reference.family != bb.family:
            raise BadInputError(f"The reference was encoded for a {reference.family} pipe; this pipe is {bb.family}.")
        if (reference.width, reference.height) != (s.width, s.height):
            raise BadInputError(f"The reference is {reference.width}×{reference.height} but the video is {s.width}×{s.height}; "
                                "resize the reference image to the video size.")
    windows = plan_windows(s.frames, s.window, s.stride, anchor=s.anchor_first_frame)
    _check_motion_window(bb, len(windows[0]))
    weights = window_weights(windows, s.frames)
    run = _Run(bb, s, reference, skeleton, smplx)

    sched = make_scheduler(bb, s.scheduler, s.beta_schedule)
    if bb.family == "sd15" and s.scheduler == "pndm" and s.steps < PNDM_MIN_STEPS:
        raise BadInputError(f"The pndm scheduler needs at least {PNDM_MIN_STEPS} steps (its warm-up steps); got {s.steps}. "
                            "Use more steps or another scheduler.")
    sched.set_timesteps(s.steps, device=bb.device)
    timesteps = sched.timesteps
    g = torch.Generator("cpu").manual_seed(int(s.seed))
    c = 4 if bb.family == "svd" else bb.unet.config.in_channels
    noise = torch.randn((1, c, s.frames, s.height // f, s.width // f), generator=g, dtype=torch.float32)
    if init_latents is not None:
        if tuple(init_latents.shape) != tuple(noise.shape):
            raise BadInputError(f"The initial latent has shape {tuple(init_latents.shape)}; expected {tuple(noise.shape)} "
                                f"({s.frames} frames at {s.width}×{s.height}).")
        _check_finite(init_latents, "The initial latent")
    if init_latents is not None and s.denoise < 1.0:
        start = max(0, min(len(timesteps) - 1, int(round(len(timesteps) * (1 - s.denoise)))))
        timesteps = timesteps[start:]
        if hasattr(sched, "set_begin_index"):
            sched.set_begin_index(start)
        latents = sched.add_noise(init_latents.float().to(bb.device), noise.to(bb.device), timesteps[:1])
    elif start_latents is not None:
        if tuple(start_latents.shape) != tuple(noise.shape):
            raise BadInputError(f"The start latent has shape {tuple(start_latents.shape)}; expected {tuple(noise.shape)}.")
        _check_finite(start_latents, "The start latent")
        latents = start_latents.float().to(bb.device)
    else:
        latents = noise.to(bb.device) * sched.init_noise_sigma
    latents = latents.to(bb.dtype)

    if s.keyframe is not None:
        if len(windows) > 1:
            raise BadInputError("Key-frame attention samples all frames in one window; raise the window to the frame count.")
        if not 0 <= s.keyframe < s.frames:
            raise BadInputError(f"Key frame {s.keyframe} is outside the {s.frames} frames.")
    total = len(timesteps) * len(windows)
    done = 0
    # stochastic schedulers (euler_a, DDIM with η > 0, SDE solvers) draw their step noise from this run's own
    # generator, never from the global RNG other nodes reseed: the same seed gives the same video
    import inspect

    step_kw = {"generator": g} if "generator" in inspect.signature(sched.step).parameters else {}
    with _attention_patches(bb, s, reference, use_reference_attention, ref_state) as (st, use_ref):
        if use_ref:
            write_reference(st, lambda: run.reference_pass(sched, st))
        for i, t in enumerate(timesteps):
            if step_hook is not None:
                latents = step_hook(i, latents).to(bb.dtype)
            if len(windows) == 1:
                pred = run.predict(sched, latents, t, windows[0], st)
                done += 1
                if callback:
                    callback(done, total)
            else:
                pred = torch.zeros_like(latents)
                for idx, wt in zip(windows, weights):
                    out = run.predict(sched, latents[:, :, idx], t, idx, st)
                    pred[:, :, idx] += out * wt.to(out.device, out.dtype).view(1, 1, -1, 1, 1)
                    done += 1
                    if callback:
                        callback(done, total)
            out = sched.step(pred, t, latents, **step_kw)
            latents = out.prev_sample.to(bb.dtype)
            _check_finite(latents, "The sampled latent")
            preview = getattr(callback, "preview", None)
            if preview is not None:  # live previews: the step's predicted clean video where the scheduler gives it
                x0 = getattr(out, "pred_original_sample", None)
                preview(x0 if x0 is not None else latents)
    return latents


@torch.no_grad()
def ddim_invert(bb, latents: torch.Tensor, s: VideoSettings, reference: Optional[Reference] = None,
                skeleton: Optional[torch.Tensor] = None, smplx: Optional[torch.Tensor] = None, callback: Callback = None,
                use_reference_attention: bool = True, refine: int = 0) -> torch.Tensor:
    """DDIM inversion of clean latents ``(1, C, F, h, w)`` to the first timestep of a ``s.steps``-step DDIM run.

    Same UNet path as :func:`sample_video` (motion module, ControlNet on ``skeleton``, pose controller, reference
    attention, identity), with ``s.cfg`` as guidance — PoseCrafter/ControlVideo invert at guidance 1 (conditional
    only) with the ControlNet on; sampling the result with the *same* settings retraces the inversion.
    Timesteps run upward; the model is evaluated on the current latent at the next timestep (Tune-A-Video / null-text
    style): the ε the model output implies is held fixed (the plain rule PoseCrafter used), for ε, v and x0 models; at
    zero terminal SNR the last step holds x̂0 fixed instead, since ε and x_T coincide there. ``refine`` > 0 adds fixed-point iterations per step (the model
    re-evaluated on the new latent), which makes the inversion the exact inverse of the DDIM step up to convergence.
    """
    from diffusers import DDIMScheduler

    from ..attention.reference import write_reference

    if bb.family != "sd15":
        raise BadInputError("DDIM inversion works with AnimateDiff/SD1.5 pipes (SVD samples with EDM).")
    _check_finite(latents, "The latent to invert")
    f = bb.vae_scale_factor
    if tuple(latents.shape[-2:]) != (s.height // f, s.width // f) or latents.shape[2] != s.frames:
        raise BadInputError(f"The latent to invert has shape {tuple(latents.shape)}; expected {s.frames} frames at {s.width}×{s.height}.")
    run = _Run(bb, s, reference, skeleton, smplx)
    sched = DDIMScheduler.from_config(scheduler_config(bb, s.beta_schedule))
    sched.set_timesteps(s.steps, device=bb.device)
    ts = list(reversed(sched.timesteps.tolist()))
    ac = sched.alphas_cumprod.to(torch.float64)
    step = sched.config.num_train_timesteps // s.steps
    x = latents.to(bb.device, bb.dtype)
    idx = list(range(s.frames))
    with _attention_patches(bb, s, reference, use_reference_attention) as (st, use_ref):
        if use_ref:
            write_reference(st, lambda: run.reference_pass(sched, st))
        for i, t in enumerate(ts):
            a_cur = ac[t - step] if t - step >= 0 else sched.final_alpha_cumprod.to(torch.float64)
            a_next = ac[t]
            tt = torch.tensor(t, device=bb.device)
            xd = x.to(torch.float64)
            guess = x
            for _ in range(1 + max(0, int(refine))):
                out = run.predict(sched, guess, tt, idx, st).to(torch.float64)
                if a_next > 1e-6:  # ε held fixed between neighbouring latents (Tune-A-Video / PoseCrafter's rule)
                    eps = output_to_eps(sched, out, guess.to(torch.float64), a_next)
                    x0 = (xd - (1 - a_cur).sqrt() * eps) / a_cur.sqrt()
                else:  # zero terminal SNR: ε and x_T coincide there, so x̂0 is held fixed instead
                    x0 = predicted_x0(sched, out, guess.to(torch.float64), a_next)
                    eps = (xd - a_cur.sqrt() * x0) / (1 - a_cur).sqrt()
                guess = (a_next.sqrt() * x0 + (1 - a_next).sqrt() * eps).to(bb.dtype)
            x = guess
            _check_finite(x, "The inverted latent")
            if callback:
                callback(i + 1, len(ts))
    return x


@torch.no_grad()
def sample_text2video(bb, prompt: str, negative: str, frames: int, width: int, height: int, steps: int,
                      cfg: float, seed: int, callback: Callback = None, init_latents: Optional[torch.Tensor] = None,
                      denoise: float = 1.0) -> torch.Tensor:
    """Text-only AnimateDiff sampling (no reference); see :func:`sample_video`."""
    if bb.family != "sd15":
        raise BadInputError(f"Text-to-video sampling needs an SD1.5 backbone (got {bb.family}).")
    s = VideoSettings(frames=frames, width=width, height=height, steps=steps, cfg=cfg, seed=seed, prompt=prompt,
                      negative=negative, denoise=denoise, window=max(frames, 1), stride=max(frames, 1))
    return sample_video(bb, s, init_latents=init_latents, callback=callback)


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


@torch.no_grad()
def encode_video(bb, images: torch.Tensor, chunk: int = 8) -> torch.Tensor:
    """IMAGE batch (F, H, W, 3) -> (1, C, F, h, w) UNet-space latents (VAE mean, scaled)."""
    if images.ndim != 4 or images.shape[0] < 1:
        raise BadInputError(f"Expected an IMAGE batch (frames, height, width, 3); got shape {tuple(images.shape)}.")
    check_size(images.shape[2], images.shape[1], bb.vae_scale_factor)
    out = []
    for s in range(0, images.shape[0], max(1, chunk)):
        x = images[s:s + chunk, ..., :3].permute(0, 3, 1, 2).to(bb.device, bb.dtype) * 2 - 1
        out.append(bb.vae.encode(x).latent_dist.mean.float())
    return (torch.cat(out) * bb.vae.config.scaling_factor).permute(1, 0, 2, 3)[None]
