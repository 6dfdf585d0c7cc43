"""Personalisation and PoseCrafter nodes."""
from __future__ import annotations

import os

import numpy as np
import torch
from comfy_api.latest import io

from ._common import CATEGORY, PIPE, POSE, Progress, preview, uses_pipe

CAT = f"{CATEGORY}/personalise"


class _TrainProgress:
    """Progress + interruption for training, with the loss in the console every 10 steps."""

    def __init__(self, total):
        self.p = Progress(total)

    def __call__(self, step, total, loss):
        self.p(step, total)
        if step % 10 == 0 or step == total:
            print(f"[Performer] personalise step {step}/{total} loss {loss:.5f}")


class PerformerPersonalise(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        from ..models.posecrafter.personalise import TARGETS

        return io.Schema(
            node_id="PerformerPersonalise", display_name="Personalise on One Video 🎭", category=CAT, is_output_node=True,
            description="One-shot finetuning of a copy of the pipe's UNet on the frames of one video of the person "
                        "(PoseCrafter: self-attention output projections + temporal attention; DiffPerformer: temporal "
                        "layers). Saves safetensors with a record of the base model and loss curve into "
                        "models/performer/personalised. Cancel saves the steps done so far.",
            inputs=[PIPE.Input("pipe", tooltip="AnimateDiff pipe (SD1.5 + motion module; + ControlNet / pose controller)."),
                    io.Image.Input("images", tooltip="Frames of the person's video (the training data)."),
                    POSE.Input("poses", optional=True, tooltip="Their poses (needed with a ControlNet or a trained pose controller)."),
                    io.String.Input("name", default="my_performer", tooltip="File name (without extension) in models/performer/personalised."),
                    io.Combo.Input("target", options=list(TARGETS), default="posecrafter", tooltip="Which parameters train."),
                    io.Int.Input("steps", default=300, min=1, max=100000, tooltip="Training steps (ControlVideo default 300)."),
                    io.Float.Input("lr", default=3e-5, min=1e-7, max=1e-2, step=1e-6, tooltip="AdamW learning rate."),
                    io.Int.Input("frames_per_step", default=8, min=1, max=64, tooltip="Frames per step, drawn at random (memory grows with this, not with the video)."),
                    io.Boolean.Input("train_pose_controller", default=False, tooltip="Also train the pipe's pose controller."),
                    io.Boolean.Input("train_vae_decoder", default=False, tooltip="Also finetune the VAE decoder to reconstruct the frames (DiffPerformer Eq. 2)."),
                    io.Boolean.Input("holdout", default=False, tooltip="Keep every 5th frame out of training (80/20 split)."),
                    io.Boolean.Input("resume", default=False, tooltip="Continue the checkpoint of this name if it exists."),
                    io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFF, control_after_generate=True,
                                 tooltip="Frame/timestep/noise sampling seed.")],
            outputs=[PIPE.Output(display_name="pipe", tooltip="A new pipe with the personalised UNet."),
                     io.String.Output(display_name="checkpoint", tooltip="Path of the saved weights.")],
        )

    @classmethod
    @uses_pipe  # loaded through ComfyUI's model management; offloaded after if Load Backbone says so
    def execute(cls, pipe, images, name, target, steps, lr, frames_per_step, train_pose_controller, train_vae_decoder, holdout,
                resume, seed, poses=None) -> io.NodeOutput:
        import folder_paths

        from ..models.errors import BadInputError
        from ..models.posecrafter.personalise import TrainSettings, load_personalised, personalise
        from ..models.pose.sequence import draw

        if not name or any(c in name for c in "/\\:") or name.startswith("."):
            raise BadInputError(f"name {name!r} must be a plain file name.")
        folder = folder_paths.get_folder_paths("performer_personalised")[0]
        path = os.path.join(folder, name + ".safetensors")
        skeleton = None
        if poses is not None:
            skeleton = torch.from_numpy(draw(poses, images.shape[2], images.shape[1])).float() / 255.0
        prev = load_personalised(path) if resume and os.path.isfile(path) else None
        s = TrainSettings(steps=steps, lr=lr, frames_per_step=frames_per_step, target=target,
                          train_pose_controller=train_pose_controller, train_vae_decoder=train_vae_decoder, holdout=holdout,
                          seed=seed)
        res, tuned = personalise(pipe, images, s, skeleton=skeleton, save_path=path, resume=prev,
                                 callback=_TrainProgress(steps))
        return io.NodeOutput(tuned, path, ui={"text": [f"{res.meta['steps']} steps, final loss {res.meta['loss_curve'][-1]:.5f}"]})


class PerformerLoadPersonalised(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        from ._common import weight_choices

        return io.Schema(
            node_id="PerformerLoadPersonalised", display_name="Load Personalised Weights 🎭", category=CAT,
            description="Applies personalised weights (from Personalise or `python -m models.posecrafter.personalise`) to a copy of "
                        "the pipe. Refuses weights trained from another base model.",
            inputs=[PIPE.Input("pipe", tooltip="The same base pipe the weights were trained from."),
                    io.Combo.Input("weights", options=weight_choices("performer_personalised", with_dirs=False),
                                   tooltip="A .safetensors in models/performer/personalised.")],
            outputs=[PIPE.Output(display_name="pipe", tooltip="A new, personalised pipe.")],
        )

    @classmethod
    def execute(cls, pipe, weights) -> io.NodeOutput:
        from ..models.posecrafter.personalise import apply_personalised, load_personalised
        from ._common import resolve

        return io.NodeOutput(apply_personalised(pipe, load_personalised(resolve(weights, ("performer_personalised",)))))


class PerformerPoseCrafter(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PerformerPoseCrafter", display_name="PoseCrafter (drive a personalised pipe) 🎭", category=CAT,
            description="PoseCrafter inference: picks the training frame nearest the target poses, DDIM-inverts and "
                        "replicates it, inserts its pose as the key frame, edits face and hand regions of the latent by "
                        "affine transforms from landmarks, samples with key-frame attention. Each step can be switched off.",
            inputs=[PIPE.Input("pipe", tooltip="A personalised AnimateDiff pipe (with an OpenPose ControlNet)."),
                    io.Image.Input("training_images", tooltip="The frames the pipe was personalised on."),
                    POSE.Input("training_poses", tooltip="Their poses (with face and hand landmarks for editing)."),
                    POSE.Input("target_poses", tooltip="The poses to generate."),
                    io.Int.Input("steps", default=50, min=1, max=500, tooltip="DDIM steps (inversion uses the same number)."),
                    io.Float.Input("cfg", default=12.0, min=0.0, max=50.0, step=0.1, tooltip="Guidance at sampling (ControlVideo uses 12)."),
                    io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True, tooltip="Seed (used when inversion is off)."),
                    io.String.Input("prompt", default="", multiline=True, tooltip="Text prompt (the personalisation prompt)."),
                    io.Boolean.Input("select_frame", default=True, tooltip="Pick the nearest training pose (else the first frame)."),
                    io.Boolean.Input("invert", default=True, tooltip="Start from the inverted reference frame (else shared noise)."),
                    io.Boolean.Input("insert_key_frame", default=True, tooltip="Insert the reference pose as key frame 0."),
                    io.Boolean.Input("edit_latents", default=True, tooltip="Affine-edit face and hand regions."),
                    io.Int.Input("edit_step", default=0, min=0, max=499, tooltip="Sampling step at which to edit (0 = before the first)."),
                    io.Int.Input("decode_chunk", default=8, min=1, max=256, tooltip="Frames decoded at once.")],
            outputs=[io.Image.Output(display_name="images", tooltip="The generated frames."),
                     io.Latent.Output(display_name="latent", tooltip="Their latent."),
                     io.Image.Output(display_name="edit_preview", tooltip="Target skeletons with the edited latent boxes outlined."),
                     io.Int.Output(display_name="reference_frame", tooltip="Index of the training frame used.")],
        )

    @classmethod
    @uses_pipe  # loaded through ComfyUI's model management; offloaded after if Load Backbone says so
    def execute(cls, pipe, training_images, training_poses, target_poses, steps, cfg, seed, prompt, select_frame, invert,
                insert_key_frame, edit_latents, edit_step, decode_chunk) -> io.NodeOutput:
        from ..models.pose.sequence import draw
        from ..models.posecrafter.inference import PoseCrafterSettings, draw_edit_boxes, posecrafter
        from ..models.sampling.sampler import decode_latents

        s = PoseCrafterSettings(steps=steps, cfg=cfg, seed=seed, prompt=prompt, select=select_frame, invert=invert,
                                insert=insert_key_frame, edit=edit_latents, edit_step=edit_step)
        lat, info = posecrafter(pipe, training_images, training_poses, target_poses, s,
                                callback=Progress(steps * (2 if invert else 1)))
        images = decode_latents(pipe, lat, chunk=decode_chunk, callback=Progress(lat.shape[2]))
        H, W = images.shape[1], images.shape[2]
        sk = draw(target_poses, W, H)
        prev = draw_edit_boxes(sk, info["boxes"], pipe.vae_scale_factor) if info["boxes"] else sk
        for f, rep in enumerate(info["edits"]):
            print(f"[Performer] PoseCrafter frame {f}: " + "; ".join(f"{k} {v}" for k, v in rep.items()))
        samples = (lat[0].permute(1, 0, 2, 3).float() / pipe.vae.config.scaling_factor).cpu()
        return io.NodeOutput(images, {"samples": samples}, torch.from_numpy(np.ascontiguousarray(prev)).float() / 255.0,
                             info["reference_frame"], ui=preview("posecrafter", images=images, fps=target_poses.fps,
                                                                 label=f"PoseCrafter (training frame {info['reference_frame']})"))


NODES = [PerformerPersonalise, PerformerLoadPersonalised, PerformerPoseCrafter]
