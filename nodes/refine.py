"""DiffPerformer refinement: implicit video representation + re-noise / re-denoise loop."""
from __future__ import annotations

import torch
from comfy_api.latest import io

from ._common import CATEGORY, FLOW, PIPE, REFERENCE, Progress, preview

CAT = f"{CATEGORY}/refine"


class PerformerRefineIVR(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PerformerRefineIVR", display_name="Refine with IVR (DiffPerformer) 🎭", category=CAT,
            description="Distils the video into an implicit video representation (hash-grid canonical image + deformation "
                        "field, CoDeF-style) with the 3D-aware human-flow loss, then repeatedly noises the smoothed video's "
                        "latent to a decreasing strength, re-denoises it with the pipe and pose guidance, and refits. "
                        "Cancel returns the best video so far.",
            inputs=[PIPE.Input("pipe", tooltip="The sampling pipe (AnimateDiff or SVD, with its pose control)."),
                    REFERENCE.Input("reference", tooltip="Encoded reference (also initialises the canonical image)."),
                    io.Image.Input("video", tooltip="The generated video to refine (frames at the reference's size)."),
                    io.Image.Input("skeleton", optional=True, tooltip="Pose maps for re-denoising."),
                    io.Image.Input("smplx", optional=True, tooltip="SMPL-X renders for re-denoising (pose controller)."),
                    FLOW.Input("flow", optional=True, tooltip="3D-aware human flow of the video (from 3D-aware Human Flow, same size)."),
                    io.Int.Input("total_steps", default=2000, min=1, max=100000, tooltip="IVR optimisation steps in all."),
                    io.Int.Input("refresh_every", default=500, min=1, max=100000, tooltip="Steps between re-generations of the target video."),
                    io.Float.Input("strength_start", default=0.5, min=0.01, max=1.0, step=0.01, tooltip="Noise strength of the first re-generation."),
                    io.Float.Input("strength_end", default=0.2, min=0.01, max=1.0, step=0.01, tooltip="Noise strength of the last one (linear in between)."),
                    io.Float.Input("flow_weight", default=1.0, min=0.0, max=100.0, step=0.1, tooltip="λ of the human-flow loss (0 = off)."),
                    io.Int.Input("steps", default=25, min=1, max=500, tooltip="Sampling steps of each re-generation (scaled by strength)."),
                    io.Float.Input("cfg", default=3.5, min=0.0, max=50.0, step=0.1, tooltip="Guidance of the re-generations."),
                    io.String.Input("prompt", default="", multiline=True, tooltip="AnimateDiff prompt."),
                    io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True, tooltip="Seed."),
                    io.Boolean.Input("init_from_reference", default=True, tooltip="Start the canonical image from the reference photo.")],
            outputs=[io.Image.Output(display_name="refined", tooltip="The last re-generated video."),
                     io.Image.Output(display_name="smoothed", tooltip="The IVR's render (smooth by construction)."),
                     io.Image.Output(display_name="previews", tooltip="The IVR render after each refresh, one after another.")],
        )

    @classmethod
    def execute(cls, pipe, reference, video, total_steps, refresh_every, strength_start, strength_end, flow_weight, steps, cfg,
                prompt, seed, init_from_reference, skeleton=None, smplx=None, flow=None) -> io.NodeOutput:
        import comfy.model_management as mm

        from ..models.errors import BadInputError
        from ..models.refine.ivr import IVRConfig, LoopSettings, refine_loop
        from ..models.sampling.sampler import VideoSettings, decode_latents, encode_video, sample_video

        Fr, H, W = video.shape[0], video.shape[1], video.shape[2]
        if (W, H) != (reference.width, reference.height):
            raise BadInputError(f"The video is {W}×{H} but the reference is {reference.width}×{reference.height}.")
        for name, maps in (("skeleton", skeleton), ("smplx", smplx)):
            if maps is not None and maps.shape[0] != Fr:
                raise BadInputError(f"{name} has {maps.shape[0]} frames but the video has {Fr}.")
        fl = None
        if flow is not None:
            if flow["flow"].shape[0] != Fr - 1 or tuple(flow["flow"].shape[1:3]) != (H, W):
                raise BadInputError(f"The flow covers {flow['flow'].shape[0] + 1} frames at {flow['flow'].shape[2]}×{flow['flow'].shape[1]}; "
                                    f"the video has {Fr} frames at {W}×{H}.")
            fl = {"flow": flow["flow"], "valid": flow["valid"]}
        ls = LoopSettings(total_steps=total_steps, refresh_every=refresh_every, strength_start=strength_start,
                          strength_end=strength_end, flow_weight=flow_weight)
        progress = Progress(total_steps)

        def regenerate(vs, strength, r):
            s = VideoSettings(frames=Fr, width=W, height=H, steps=steps, cfg=cfg, seed=seed + r, prompt=prompt, denoise=strength,
                              window=16, stride=8)
            lat = sample_video(pipe, s, reference, skeleton=skeleton, smplx=smplx, init_latents=encode_video(pipe, vs))
            return decode_latents(pipe, lat)

        from ..models.common import gradients

        with gradients():
            vp, vs, previews, used = refine_loop(video.float().clone(), regenerate, ls, flow=fl,
                                                 reference=reference.image.clone() if init_from_reference else None,
                                                 cfg=IVRConfig(), callback=progress, stop_exceptions=(mm.InterruptProcessingException,),
                                                 device=pipe.device)
        print(f"[Performer] IVR refinement: strengths {['%.2f' % s for s in used]}")
        prev = torch.cat(previews) if previews else vs
        # a stop can leave one more IVR render than re-generations: label each render with its strength if it had one
        groups = [video.float()] + [p.clamp(0, 1) for p in previews] + [vp.clamp(0, 1)]
        labels = (["input"] + [f"IVR render {i + 1}" + (f" (then strength {used[i]:.2f})" if i < len(used) else "")
                               for i in range(len(previews))] + ["refined"])
        return io.NodeOutput(vp.clamp(0, 1), vs.clamp(0, 1), prev.clamp(0, 1),
                             ui=preview("ivr", images=groups, groups=labels, label="IVR refinement loop"))


NODES = [PerformerRefineIVR]
