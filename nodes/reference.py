"""Reference nodes: encode the reference photo once for a pipe (-> PERFORMER_REFERENCE)."""
from __future__ import annotations

from comfy_api.latest import io

from ._common import CATEGORY, PIPE, REFERENCE, uses_pipe


class PerformerEncodeReference(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PerformerEncodeReference",
            display_name="Encode Reference 🎭",
            category=f"{CATEGORY}/reference",
            description="Encodes the reference photo for a pipe: VAE latent (for causal reference attention), SVD's "
                        "conditioning latent, CLIP image embedding and, when the pipe has ArcFace, the face embedding. "
                        "The image size must equal the video size.",
            inputs=[
                PIPE.Input("pipe", tooltip="The pipe that will sample the video."),
                io.Image.Input("image", tooltip="Reference photo of the person (first image of the batch is used), at the video's size."),
                io.Float.Input("noise_aug", default=0.02, min=0.0, max=1.0, step=0.01,
                               tooltip="SVD only: noise added to the image before encoding its conditioning latent."),
                io.Combo.Input("face", options=["auto", "require", "off"], default="auto",
                               tooltip="auto: embed the face when found; require: error if no face; off: no face tokens."),
                io.Image.Input("pose", optional=True,
                               tooltip="Optional skeleton map of the reference's own pose, injected in the reference pass (SCD)."),
                io.Image.Input("smplx", optional=True,
                               tooltip="Optional SMPL-X render of the reference's own body (Render Body, the same kind "
                                       "as Animate's smplx), injected in the reference pass with the pose. Needs a pose "
                                       "controller with an SMPL-X encoder; the demo model was trained with both."),
            ],
            outputs=[REFERENCE.Output(display_name="reference", tooltip="The encoded reference, for Animate.")],
        )

    @classmethod
    @uses_pipe  # loaded through ComfyUI's model management; offloaded after if Load Backbone says so
    def execute(cls, pipe, image, noise_aug, face, pose=None, smplx=None) -> io.NodeOutput:
        from ..models.sampling.sampler import encode_reference

        return io.NodeOutput(encode_reference(pipe, image, noise_aug=noise_aug, face=face, pose=pose, pose_render=smplx))


NODES = [PerformerEncodeReference]
