"""Synthetic performer (ground truth) and metrics nodes."""
from __future__ import annotations

import json

import numpy as np
import torch
from comfy_api.latest import io

from ._common import BODY, CATEGORY, FLOW, PARTS, POSE, preview

CAT = f"{CATEGORY}/evaluate"


class PerformerSyntheticPerformer(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        from ..models.evaluate.performer import MOTIONS

        return io.Schema(
            node_id="PerformerSyntheticPerformer", display_name="Synthetic Performer (ground truth) 🎭", category=CAT,
            description="Renders a seeded synthetic person (embedded procedural body, textured clothes and face) over a "
                        "static background in a procedural motion, with full ground truth: frames, masks, whole-body "
                        "poses, SMPL-X bodies and the true flow. The same settings always give the same video.",
            inputs=[io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFF, control_after_generate=True,
                                         tooltip="Sequence seed (motion phase, background)."),
                    io.Int.Input("character", default=0, min=0, max=0xFFFFFFFF,
                                 tooltip="Identity seed: skin, hair and clothes colours, stripes and body shape are drawn "
                                         "from it. The demo model trained only on seeds below 1000000."),
                    io.Combo.Input("motion", options=list(MOTIONS), default="wave", tooltip="Procedural motion."),
                    io.Int.Input("frames", default=16, min=1, max=512, tooltip="Number of frames."),
                    io.Int.Input("size", default=128, min=16, max=1024, step=8, tooltip="Square frame size in pixels."),
                    io.Boolean.Input("stripes", default=True, tooltip="Striped shirt (patterned clothing)."),
                    io.Float.Input("fps", default=8.0, min=0.1, max=120.0, step=0.1, tooltip="Frame rate.")],
            outputs=[io.Image.Output(display_name="images", tooltip="The rendered frames."),
                     io.Mask.Output(display_name="mask", tooltip="The person's silhouette per frame."),
                     POSE.Output(display_name="pose", tooltip="Ground-truth whole-body keypoints."),
                     BODY.Output(display_name="body", tooltip="Ground-truth SMPL-X parameters (embedded body model)."),
                     FLOW.Output(display_name="flow", tooltip="True per-pixel flow to the next frame, with validity."),
                     io.Image.Output(display_name="background", tooltip="The static background (1 frame)."),
                     PARTS.Output(display_name="parts", tooltip="Body part per pixel (shirt, trousers, skin, hair, …) "
                                                               "for Video Metrics' identity score.")],
        )

    @classmethod
    def execute(cls, seed, character, motion, frames, size, stripes, fps) -> io.NodeOutput:
        from ..models.evaluate.performer import PerformerSpec, generate

        g = generate(PerformerSpec(seed=seed, character=character, motion=motion, frames=frames, size=size, stripes=stripes, fps=fps))
        flow = {"flow": torch.from_numpy(g["flow"]), "valid": torch.from_numpy(g["valid"]), "width": size, "height": size}
        rgb = torch.from_numpy(g["rgb"]).float() / 255.0
        return io.NodeOutput(rgb, torch.from_numpy(g["mask"]).float(), g["pose"], g["body"],
                             flow, torch.from_numpy(g["background"])[None].float() / 255.0, g["material"],
                             ui=preview("performer", images=rgb, pose=g["pose"], label="synthetic performer"))


class PerformerMetrics(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PerformerMetrics", display_name="Video Metrics 🎭", category=CAT, is_output_node=True,
            description="PSNR, SSIM (grey, DisCo convention), L1 (mean, and DisCo's ÷H·W), foreground-mask IoU, face-region "
                        "PSNR, warping error with the true flow, flicker, the flow end-point error of the generated "
                        "motion and the per-part colour distance (identity) of a generated video against ground truth. "
                        "Returns JSON and a contact sheet.",
            inputs=[io.Image.Input("generated", tooltip="The generated frames."),
                    io.Image.Input("ground_truth", tooltip="The ground-truth frames (same size and count)."),
                    io.Mask.Input("gt_mask", optional=True, tooltip="Ground-truth silhouettes (for mask IoU)."),
                    io.Image.Input("background", optional=True, tooltip="Known static background (the predicted mask is what differs from it)."),
                    POSE.Input("gt_pose", optional=True, tooltip="Ground-truth poses (face box for face PSNR)."),
                    FLOW.Input("gt_flow", optional=True, tooltip="True flow (warping error; with gt_mask also the flow "
                                                                 "end-point error of the generated motion)."),
                    PARTS.Input("gt_parts", optional=True, tooltip="Body part per pixel (Synthetic Performer): the "
                                                                   "part-colour distance (identity).")],
            outputs=[io.String.Output(display_name="json", tooltip="The metrics as JSON."),
                     io.Image.Output(display_name="contact_sheet", tooltip="Generated above ground truth.")],
        )

    @classmethod
    def execute(cls, generated, ground_truth, gt_mask=None, background=None, gt_pose=None, gt_flow=None,
                gt_parts=None) -> io.NodeOutput:
        from ..models.evaluate import metrics as M

        kw = {}
        if gt_mask is not None:
            kw["gt_mask"] = gt_mask.cpu().numpy() > 0.5
        if background is not None:
            kw["background"] = background[0].cpu().numpy()
        if gt_pose is not None:
            kw["keypoints"] = gt_pose.keypoints[:, 0]
        if gt_flow is not None:
            kw["flow"], kw["valid"] = gt_flow["flow"].numpy(), gt_flow["valid"].numpy()
        if gt_parts is not None:
            kw["material"] = gt_parts
        m = M.compute(generated, ground_truth, **kw)
        sheet = M.contact_sheet({"generated": generated.cpu().numpy(), "ground truth": ground_truth.cpu().numpy()})
        text = json.dumps(m, indent=1)
        return io.NodeOutput(text, torch.from_numpy(np.ascontiguousarray(sheet)).float()[None] / 255.0,
                             ui={"text": [text], **preview("metrics", metrics=m)})


NODES = [PerformerSyntheticPerformer, PerformerMetrics]
