"""DiffPerformer refinement: implicit video representation + re-noise / re-denoise loop."""
from __future__ import annotations

import torch
from comfy_api.latest import io

from ._common import CATEGORY, FLOW, OPTIONS, PIPE, REFERENCE, Progress, preview, uses_pipe

CAT = f"{CATEGORY}/refine"


class PerformerRefineIVR(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PerformerRefineIVR", display_name="Refine with IVR (DiffPerformer) 🎭", category=CAT,
            description="Distils the video into an implicit video representation (hash-grid canonical image + deformation "
                        "field, CoDeF-style) with the 3D-aware human-flow loss, then repeatedly noises the smoothed video's "
                        "latent to a decreasing strength, re-denoises it with the pipe and pose guidance, and refits. "
                        "Cancel stops it; nothing downstream runs on an unfinished video.",
            inputs=[PIPE.Input("pipe", tooltip="The sampling pipe (AnimateDiff or SVD, with its pose control)."),
                    REFERENCE.Input("reference", tooltip="Encoded reference (also initialises the canonical image)."),
                    io.Image.Input("video", tooltip="The generated video to refine (frames at the reference's size)."),
                    io.Image.Input("skeleton", optional=True, tooltip="Pose maps for re-denoising."),
                    io.Image.Input("smplx", optional=True, tooltip="SMPL-X renders for re-denoising (pose controller)."),
                    FLOW.Input("flow", optional=True, tooltip="3D-aware human flow of the video (from 3D-aware Human Flow, same size)."),
                    OPTIONS.Input("options", optional=True,
                                  tooltip="Sampler Options for the re-generations (scheduler, windows, reference, pose and "
                                          "identity scales, SVD settings), as for Animate."),
                    *_ivr_inputs(),
                    io.Int.Input("steps", default=25, min=1, max=500, tooltip="Sampling steps of each re-generation (scaled by strength)."),
                    io.Float.Input("cfg", default=3.5, min=0.0, max=50.0, step=0.1, tooltip="Guidance of the re-generations."),
                    io.String.Input("prompt", default="", multiline=True, tooltip="AnimateDiff prompt."),
                    io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True, tooltip="Seed."),
                    io.Boolean.Input("init_from_reference", default=True, tooltip="Start the canonical image from the reference photo.")],
            outputs=_ivr_outputs(),
        )

    @classmethod
    @uses_pipe  # loaded through ComfyUI's model management; offloaded after if Load Backbone says so
    def execute(cls, pipe, reference, video, total_steps, refresh_every, strength_start, strength_end, flow_weight, steps, cfg,
                prompt, seed, init_from_reference, skeleton=None, smplx=None, flow=None, options=None) -> io.NodeOutput:
        from ..models.errors import BadInputError
        from ..models.refine.ivr import IVRConfig, LoopSettings, refine_loop
        from ..models.sampling.sampler import decode_latents, encode_video, sample_video
        from .sampling import video_settings

        Fr, H, W = video.shape[0], video.shape[1], video.shape[2]
        if (W, H) != (reference.width, reference.height):
            raise BadInputError(f"The video is {W}×{H} but the reference is {reference.width}×{reference.height}.")
        fl = _check_inputs(video, {"skeleton": skeleton, "smplx": smplx}, flow)
        ls = LoopSettings(total_steps=total_steps, refresh_every=refresh_every, strength_start=strength_start,
                          strength_end=strength_end, flow_weight=flow_weight)
        progress = Progress(total_steps)

        def regenerate(vs, strength, r):
            s = video_settings(options, frames=Fr, width=W, height=H, steps=steps, cfg=cfg, seed=seed + r, prompt=prompt,
                               denoise=strength)
            lat = sample_video(pipe, s, reference, skeleton=skeleton, smplx=smplx, init_latents=encode_video(pipe, vs))
            return decode_latents(pipe, lat)

        from ..models.common import gradients

        with gradients():
            vp, vs, previews, used = refine_loop(video.float().clone(), regenerate, ls, flow=fl,
                                                 reference=reference.image.clone() if init_from_reference else None,
                                                 cfg=IVRConfig(), callback=progress, device=pipe.device)
        return _result(video, vp, vs, previews, used)


def _check_video_vae_frames(vae, frames: int) -> None:
    """A video VAE (Wan's: 4k + 1 frames ↔ k + 1 latent frames) must give back as many frames as it is given; refuse a
    count it cannot keep before any work is done."""
    from ..models.errors import BadInputError

    down, up = getattr(vae, "downscale_ratio", None), getattr(vae, "upscale_ratio", None)
    if getattr(vae, "latent_dim", 2) != 3 or not (isinstance(down, tuple) and callable(down[0]) and callable(up[0])):
        return
    back = up[0](down[0](frames))
    if back != frames:
        keeps = [f for f in range(1, 2 * frames + 16) if up[0](down[0](f)) == f]
        below, above = max((f for f in keeps if f < frames), default=None), min((f for f in keeps if f > frames), default=None)
        near = " or ".join(str(f) for f in (below, above) if f is not None)
        raise BadInputError(f"video: {frames} frames, but this video VAE encodes frames in groups and would give back "
                            f"{back}; use a frame count it keeps (e.g. {near}; Wan's: 4k + 1) — Pose Frames (4k+1) "
                            "sets it for the whole workflow.")


def _check_inputs(video, maps: dict, flow):
    """Frame counts of the maps and the flow against the video; returns the flow as refine_loop takes it (or None)."""
    from ..models.errors import BadInputError

    Fr, H, W = video.shape[0], video.shape[1], video.shape[2]
    for name, m in maps.items():
        if m is not None and m.shape[0] != Fr:
            raise BadInputError(f"{name} has {m.shape[0]} frames but the video has {Fr}.")
    if flow is None:
        return None
    if flow["flow"].shape[0] != Fr - 1 or tuple(flow["flow"].shape[1:3]) != (H, W):
        raise BadInputError(f"The flow covers {flow['flow'].shape[0] + 1} frames at {flow['flow'].shape[2]}×{flow['flow'].shape[1]}; "
                            f"the video has {Fr} frames at {W}×{H}.")
    return {"flow": flow["flow"], "valid": flow["valid"]}


def _result(video, vp, vs, previews, used) -> io.NodeOutput:
    print(f"[Performer] IVR refinement: strengths {['%.2f' % s for s in used]}")
    prev = torch.cat(previews) if previews else vs
    groups = [video.float()] + [p.clamp(0, 1) for p in previews] + [vp.clamp(0, 1)]
    labels = (["input"] + [f"IVR render {i + 1} (then strength {used[i]:.2f})" for i in range(len(previews))] + ["refined"])
    return io.NodeOutput(vp.clamp(0, 1), vs.clamp(0, 1), prev.clamp(0, 1),
                         ui=preview("ivr", images=groups, groups=labels, label="IVR refinement loop"))


def _ivr_inputs() -> list:
    """The IVR loop's settings, shared by the pipe's and the native node."""
    return [io.Int.Input("total_steps", default=2000, min=1, max=100000, tooltip="IVR optimisation steps in all."),
            io.Int.Input("refresh_every", default=500, min=1, max=100000, tooltip="Steps between re-generations of the target video."),
            io.Float.Input("strength_start", default=0.5, min=0.01, max=1.0, step=0.01, tooltip="Noise strength of the first re-generation."),
            io.Float.Input("strength_end", default=0.2, min=0.01, max=1.0, step=0.01, tooltip="Noise strength of the last one (linear in between)."),
            io.Float.Input("flow_weight", default=1.0, min=0.0, max=100.0, step=0.1, tooltip="λ of the human-flow loss (0 = off).")]


def _ivr_outputs() -> list:
    return [io.Image.Output(display_name="refined", tooltip="The last re-generated video."),
            io.Image.Output(display_name="smoothed", tooltip="The IVR's render (smooth by construction)."),
            io.Image.Output(display_name="previews", tooltip="The IVR render after each refresh, one after another.")]


class PerformerRefineIVRNative(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        import comfy.samplers

        return io.Schema(
            node_id="PerformerRefineIVRNative", display_name="Refine with IVR (DiffPerformer, native) 🎭",
            category=f"{CATEGORY}/native",
            description="DiffPerformer's refinement with the MODEL your loaders give: distils the video into an implicit "
                        "video representation (hash-grid canonical image + deformation field) with the 3D-aware human-flow "
                        "loss, then repeatedly VAE-encodes the smoothed video, noises it to a decreasing strength and "
                        "re-denoises it with core sampling (the model's patches — causal reference, pose guidance, "
                        "ControlNet in the conditioning, LoRAs, context windows — all apply), and refits. Shows the "
                        "re-generations as live previews; Cancel stops it and nothing downstream runs.",
            inputs=[io.Model.Input("model", tooltip="The (patched) model that re-denoises, e.g. after Apply Causal "
                                                    "Reference and Apply Pose Guidance."),
                    io.Conditioning.Input("positive", tooltip="Positive conditioning (with its ControlNet, if any)."),
                    io.Conditioning.Input("negative", tooltip="Negative conditioning."),
                    io.Vae.Input("vae", tooltip="The model's VAE."),
                    io.Image.Input("video", tooltip="The generated video to refine (frames as a batch)."),
                    io.Image.Input("reference", optional=True,
                                   tooltip="The reference photo: the canonical image starts from it (resized to the video)."),
                    FLOW.Input("flow", optional=True, tooltip="3D-aware human flow of the video (from 3D-aware Human Flow, same size)."),
                    *_ivr_inputs(),
                    io.Int.Input("steps", default=25, min=1, max=500, tooltip="Sampling steps of each re-generation (as "
                                                                              "KSampler's with denoise = strength)."),
                    io.Float.Input("cfg", default=3.5, min=0.0, max=50.0, step=0.1, tooltip="Guidance of the re-generations."),
                    io.Combo.Input("sampler_name", options=list(comfy.samplers.KSampler.SAMPLERS), default="euler",
                                   tooltip="Core sampler of the re-generations."),
                    io.Combo.Input("scheduler", options=list(comfy.samplers.KSampler.SCHEDULERS), default="normal",
                                   tooltip="Core scheduler of the re-generations."),
                    io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                                 tooltip="Seed; re-generation r uses seed + r.")],
            outputs=_ivr_outputs(),
        )

    @classmethod
    def execute(cls, model, positive, negative, vae, video, total_steps, refresh_every, strength_start, strength_end,
                flow_weight, steps, cfg, sampler_name, scheduler, seed, reference=None, flow=None) -> io.NodeOutput:
        import comfy.model_management as mm
        import comfy.sample
        import comfy.utils
        import latent_preview

        from ..models.common import gradients
        from ..models.errors import BadInputError
        from ..models.refine.ivr import IVRConfig, LoopSettings, refine_loop

        if video.ndim != 4 or video.shape[0] < 2:
            raise BadInputError(f"video: expected an IMAGE batch of at least 2 frames; got {tuple(video.shape)}.")
        fl = _check_inputs(video, {}, flow)
        _check_video_vae_frames(vae, video.shape[0])
        ls = LoopSettings(total_steps=total_steps, refresh_every=refresh_every, strength_start=strength_start,
                          strength_end=strength_end, flow_weight=flow_weight)
        progress = Progress(total_steps)
        frames = video.shape[0]

        def regenerate(vs, strength, r):
            """V_s → VAE → noise to ``strength`` → core sampling with the MODEL and conditioning → VAE → V_p."""
            with torch.no_grad():
                lat = comfy.sample.fix_empty_latent_channels(model, vae.encode(vs[..., :3].clamp(0, 1)))
                noise = comfy.sample.prepare_noise(lat, seed + r)
                out = comfy.sample.sample(model, noise, steps, cfg, sampler_name, scheduler, positive, negative, lat,
                                          denoise=strength, callback=latent_preview.prepare_callback(model, steps),
                                          disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED, seed=seed + r)
                img = vae.decode(out)
            img = img.reshape(-1, *img.shape[-3:]).float().cpu()
            if img.shape[0] != frames:
                raise BadInputError(f"The VAE gave {img.shape[0]} frames for a {frames}-frame video.")
            return img

        ref = None if reference is None else reference[0, :, :, :3].float().clone()
        with gradients():
            vp, vs, previews, used = refine_loop(video[..., :3].float().clone(), regenerate, ls, flow=fl, reference=ref,
                                                 cfg=IVRConfig(), callback=progress, device=mm.get_torch_device())
        return _result(video, vp, vs, previews, used)


NODES = [PerformerRefineIVR, PerformerRefineIVRNative]
