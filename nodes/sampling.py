"""Sampling nodes."""
from __future__ import annotations

import torch
from comfy_api.latest import io

from ._common import CATEGORY, PIPE, Progress


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
    def execute(cls, pipe, prompt, negative, frames, width, height, steps, cfg, seed, decode_chunk) -> io.NodeOutput:
        from ..models.sampling import decode_latents, sample_text2video

        lat = sample_text2video(pipe, prompt, negative, frames, width, height, steps, cfg, seed, callback=Progress(steps))
        images = decode_latents(pipe, lat, chunk=decode_chunk, callback=Progress(frames))
        samples = (lat[0].permute(1, 0, 2, 3).float() / pipe.vae.config.scaling_factor).cpu()
        return io.NodeOutput(images, {"samples": samples})


NODES = [PerformerSampleVideo]
