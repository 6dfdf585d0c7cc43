"""Sampling nodes."""
from __future__ import annotations

from comfy_api.latest import io

from ._common import CATEGORY, OPTIONS, PIPE, REFERENCE, Progress, preview, uses_pipe


class PerformerSampleVideo(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PerformerSampleVideo",
            display_name="Sample Video (text, AnimateDiff) 🎭",
            category=f"{CATEGORY}/sampling",
            description="DDIM sampling of a short video with an SD1.5 pipe (+ motion module). Seeded: the same "
                        "inputs give the same frames. Shows progress and stops on Cancel.",
            inputs=[
                PIPE.Input("pipe", tooltip="SD1.5 pipe, ideally with a motion module."),
                io.String.Input("prompt", multiline=True, default="a person dancing", tooltip="What to generate."),
                io.String.Input("negative", multiline=True, default="", tooltip="What to steer away from (used when cfg > 1)."),
                io.Int.Input("frames", default=8, min=1, max=1024, tooltip="Number of frames."),
                io.Int.Input("width", default=512, min=8, max=4096, step=8, tooltip="Width in pixels (multiple of 8)."),
                io.Int.Input("height", default=512, min=8, max=4096, step=8, tooltip="Height in pixels (multiple of 8)."),
                io.Int.Input("steps", default=25, min=1, max=500, tooltip="DDIM steps (at most 500 with the SD1.5 schedule)."),
                io.Float.Input("cfg", default=7.5, min=0.0, max=50.0, step=0.1, tooltip="Classifier-free guidance scale; <= 1 disables it."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True, tooltip="Noise seed."),
                io.Int.Input("decode_chunk", default=8, min=1, max=256, tooltip="Frames decoded at once by the VAE (lower = less memory)."),
            ],
            outputs=[
                io.Image.Output(display_name="images", tooltip="Decoded frames as an IMAGE batch (one image per frame)."),
                io.Latent.Output(display_name="latent", tooltip="The video latent (frames as batch), unscaled VAE space like core LATENTs."),
            ],
        )

    @classmethod
    @uses_pipe  # loaded through ComfyUI's model management; offloaded after if Load Backbone says so
    def execute(cls, pipe, prompt, negative, frames, width, height, steps, cfg, seed, decode_chunk) -> io.NodeOutput:
        from ..models.sampling.sampler import decode_latents, sample_text2video

        lat = sample_text2video(pipe, prompt, negative, frames, width, height, steps, cfg, seed,
                                callback=Progress(steps).with_previews(pipe))
        images = decode_latents(pipe, lat, chunk=decode_chunk, callback=Progress(frames))
        samples = (lat[0].permute(1, 0, 2, 3).float() / pipe.vae.config.scaling_factor).cpu()
        return io.NodeOutput(images, {"samples": samples}, ui=preview("video", images=images, label="generated"))


OPTION_DEFAULTS = dict(window=16, stride=8, scheduler="ddim", reference_strength=1.0, reference_uncond="auto",
                       reference_pose=True, controlnet_scale=1.0, pose_scale=1.0, image_scale=1.0, face_scale=1.0,
                       fps=7, motion_bucket_id=127, min_cfg=1.0, beta_schedule="auto", anchor_first_frame=False)


def video_settings(options, **run):
    """The pipe's VideoSettings from a Sampler Options set (defaults where none is connected) and the node's own run
    values (frames, size, steps, cfg, seed, prompts, denoise)."""
    from ..models.sampling.sampler import VideoSettings

    o = dict(OPTION_DEFAULTS)
    o.update(options or {})
    return VideoSettings(**run, scheduler=o["scheduler"], window=o["window"], stride=min(o["stride"], o["window"]),
                         reference_strength=o["reference_strength"],
                         reference_uncond=None if o["reference_uncond"] == "auto" else o["reference_uncond"],
                         reference_pose=o["reference_pose"], controlnet_scale=o["controlnet_scale"],
                         pose_scale=o["pose_scale"], image_scale=o["image_scale"], face_scale=o["face_scale"], fps=o["fps"],
                         motion_bucket_id=o["motion_bucket_id"], min_cfg=o["min_cfg"], beta_schedule=o["beta_schedule"],
                         anchor_first_frame=o["anchor_first_frame"])


class PerformerSamplerOptions(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        from ..models.sampling.sampler import BETA_SCHEDULES, SD15_SCHEDULERS

        return io.Schema(
            node_id="PerformerSamplerOptions",
            display_name="Sampler Options 🎭",
            category=f"{CATEGORY}/sampling",
            description="Advanced settings for Animate. Chain several: each returns a new set with its values over the "
                        "previous ones (the input is never changed).",
            inputs=[
                OPTIONS.Input("options", optional=True, tooltip="Options to start from (values here override them)."),
                io.Int.Input("window", default=16, min=1, max=256, tooltip="Context window in frames (long videos are sampled in overlapping windows)."),
                io.Int.Input("stride", default=8, min=1, max=256, tooltip="Frames between window starts (window - stride frames overlap)."),
                io.Combo.Input("scheduler", options=list(SD15_SCHEDULERS), default="ddim",
                               tooltip="AnimateDiff scheduler (SVD always uses its EDM Euler schedule)."),
                io.Float.Input("reference_strength", default=1.0, min=0.0, max=4.0, step=0.05,
                               tooltip="Weight of the reference in self-attention (0 = off, 1 = SCD as published)."),
                io.Combo.Input("reference_uncond", options=["auto", "drop", "keep"], default="auto",
                               tooltip="Reference in the unconditional CFG half: auto = drop for AnimateDiff, keep for SVD."),
                io.Boolean.Input("reference_pose", default=True, tooltip="Inject the reference's own pose into the reference pass (SCD)."),
                io.Float.Input("controlnet_scale", default=1.0, min=0.0, max=4.0, step=0.05, tooltip="ControlNet strength."),
                io.Float.Input("pose_scale", default=1.0, min=0.0, max=4.0, step=0.05, tooltip="Pose controller strength."),
                io.Float.Input("image_scale", default=1.0, min=0.0, max=4.0, step=0.05, tooltip="Identity adapter: CLIP image tokens weight."),
                io.Float.Input("face_scale", default=1.0, min=0.0, max=4.0, step=0.05, tooltip="Identity adapter: ArcFace face tokens weight."),
                io.Int.Input("fps", default=7, min=1, max=60, tooltip="SVD micro-conditioning fps."),
                io.Int.Input("motion_bucket_id", default=127, min=0, max=1023, tooltip="SVD motion amount."),
                io.Float.Input("min_cfg", default=1.0, min=0.0, max=50.0, step=0.1, tooltip="SVD: guidance at the first frame (rises to cfg at the last)."),
                io.Combo.Input("beta_schedule", options=list(BETA_SCHEDULES), default="auto", optional=True,
                               tooltip="AnimateDiff noise schedule: auto = the one the weights were trained with (linear betas "
                                       "with a motion module, as AnimateDiff was trained; the checkpoint's own without). "
                                       "SVD always uses its EDM schedule."),
                io.Boolean.Input("anchor_first_frame", default=False, optional=True,
                                 tooltip="Long videos: put frame 0 into every context window (MimicMotion's tiling), so "
                                         "every window's temporal layers see the first frame; its output is the mean "
                                         "over the windows. benchmarks/svd_seams.py measures the seams with and without."),
            ],
            outputs=[OPTIONS.Output(display_name="options", tooltip="The combined options, for Animate or another Sampler Options node.")],
        )

    @classmethod
    def execute(cls, options=None, **values) -> io.NodeOutput:
        merged = dict(OPTION_DEFAULTS)
        merged.update(options or {})
        merged.update(values)
        return io.NodeOutput(merged)


class PerformerAnimate(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PerformerAnimate",
            display_name="Animate Reference 🎭",
            category=f"{CATEGORY}/sampling",
            description="Generates a video of the reference person following the pose maps: causal reference attention "
                        "(SCD), ControlNet and/or pose controller, identity tokens, on AnimateDiff or SVD. Long videos are "
                        "sampled in overlapping windows. Seeded; shows progress and stops on Cancel.",
            inputs=[
                PIPE.Input("pipe", tooltip="SD1.5 + motion module (+ ControlNet / pose controller / identity), or SVD."),
                REFERENCE.Input("reference", tooltip="From Encode Reference; its size is the video size."),
                io.Image.Input("skeleton", optional=True, tooltip="Pose skeleton maps, one per frame (for ControlNet and the pose controller)."),
                io.Image.Input("smplx", optional=True, tooltip="SMPL-X renders with the reference's body shape, one per frame (pose controller)."),
                io.Latent.Input("init_latent", optional=True, tooltip="Start from this video latent (with denoise < 1)."),
                OPTIONS.Input("options", optional=True, tooltip="Advanced settings from Sampler Options."),
                io.Int.Input("frames", default=0, min=0, max=4096, tooltip="Frames to generate; 0 = as many as skeleton/SMPL-X frames."),
                io.Int.Input("steps", default=25, min=1, max=500, tooltip="Sampling steps."),
                io.Float.Input("cfg", default=3.5, min=0.0, max=50.0, step=0.1,
                               tooltip="Guidance scale (<= 1 disables CFG). AnimateDiff: 3.5 (Moore); SVD: max of a per-frame ramp, ~2.5."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True, tooltip="Noise seed."),
                io.Float.Input("denoise", default=1.0, min=0.01, max=1.0, step=0.01, tooltip="Strength when starting from init_latent."),
                io.String.Input("prompt", multiline=True, default="", tooltip="AnimateDiff only: text prompt (SVD ignores it)."),
                io.String.Input("negative", multiline=True, default="", tooltip="AnimateDiff only: negative prompt."),
                io.Int.Input("decode_chunk", default=8, min=1, max=256, tooltip="Frames decoded at once by the VAE (lower = less memory)."),
            ],
            outputs=[
                io.Image.Output(display_name="images", tooltip="Decoded frames as an IMAGE batch."),
                io.Latent.Output(display_name="latent", tooltip="The video latent (frames as batch, unscaled VAE space like core LATENTs)."),
            ],
        )

    @classmethod
    @uses_pipe  # loaded through ComfyUI's model management; offloaded after if Load Backbone says so
    def execute(cls, pipe, reference, frames, steps, cfg, seed, denoise, prompt, negative, decode_chunk,
                skeleton=None, smplx=None, init_latent=None, options=None) -> io.NodeOutput:
        from ..models.errors import BadInputError
        from ..models.sampling.sampler import decode_latents, sample_video

        counts = [x.shape[0] for x in (skeleton, smplx) if x is not None]
        if frames == 0:
            if not counts:
                raise BadInputError("frames is 0 (= as many as the pose maps) but no skeleton or SMPL-X maps are connected.")
            frames = min(counts)
        init = None
        if init_latent is not None:
            lat = init_latent["samples"]
            if lat.ndim != 4:
                raise BadInputError(f"init_latent must be a video latent (frames, 4, h, w); got shape {tuple(lat.shape)}.")
            init = (lat.float() * pipe.vae.config.scaling_factor).permute(1, 0, 2, 3)[None]
        s = video_settings(options, frames=frames, width=reference.width, height=reference.height, steps=steps, cfg=cfg,
                           seed=seed, prompt=prompt, negative=negative, denoise=denoise)
        from ..models.sampling.windows import plan_windows

        total = len(plan_windows(frames, s.window, s.stride, anchor=s.anchor_first_frame)) * steps
        lat = sample_video(pipe, s, reference, skeleton=skeleton, smplx=smplx, init_latents=init,
                           callback=Progress(total).with_previews(pipe))
        images = decode_latents(pipe, lat, chunk=decode_chunk, callback=Progress(frames))
        samples = (lat[0].permute(1, 0, 2, 3).float() / pipe.vae.config.scaling_factor).cpu()
        return io.NodeOutput(images, {"samples": samples}, ui=preview("video", images=images, label="generated"))


class PerformerDecode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PerformerDecode",
            display_name="Decode Video 🎭",
            category=f"{CATEGORY}/sampling",
            description="Decodes a video LATENT with the pipe's VAE in chunks of frames (SVD: its temporal decoder).",
            inputs=[
                PIPE.Input("pipe", tooltip="The pipe whose VAE made the latent."),
                io.Latent.Input("latent", tooltip="Video latent (frames as batch)."),
                io.Int.Input("decode_chunk", default=8, min=1, max=256, tooltip="Frames decoded at once (lower = less memory)."),
            ],
            outputs=[io.Image.Output(display_name="images", tooltip="Decoded frames as an IMAGE batch.")],
        )

    @classmethod
    @uses_pipe  # loaded through ComfyUI's model management; offloaded after if Load Backbone says so
    def execute(cls, pipe, latent, decode_chunk) -> io.NodeOutput:
        from ..models.sampling.sampler import decode_latents

        lat = (latent["samples"].float() * pipe.vae.config.scaling_factor).permute(1, 0, 2, 3)[None]
        images = decode_latents(pipe, lat, chunk=decode_chunk, callback=Progress(lat.shape[2]))
        return io.NodeOutput(images, ui=preview("video", images=images, label="decoded"))


NODES = [PerformerSampleVideo, PerformerSamplerOptions, PerformerAnimate, PerformerDecode]
