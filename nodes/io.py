"""Loader nodes: backbones, motion modules, ControlNets -> PERFORMER_PIPE (each returns a new pipe)."""
from __future__ import annotations

from comfy_api.latest import io

from ._common import CATEGORY, DTYPE_INPUT, NONE, PIPE, comfy_tokenizer_dir, device_and_dtype, resolve, weight_choices

BACKBONE_KINDS = ("checkpoints", "diffusers")
MEMORY_CHOICES = ("keep loaded", "offload after use")


class PerformerLoadBackbone(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PerformerLoadBackbone",
            display_name="Load Backbone (SD1.5 / SVD) 🎭",
            category=f"{CATEGORY}/loaders",
            description="Loads an SD1.5 or Stable Video Diffusion model, from a single-file checkpoint "
                        "(models/checkpoints) or a diffusers folder (models/diffusers). The family is recognised "
                        "from the weights. Nothing is downloaded.",
            inputs=[
                io.Combo.Input("model", options=weight_choices(*BACKBONE_KINDS),
                               tooltip="Single file in models/checkpoints, or a diffusers folder in models/diffusers."),
                io.Combo.Input("dtype", **DTYPE_INPUT),
                io.Combo.Input("memory", options=list(MEMORY_CHOICES), default=MEMORY_CHOICES[0],
                               tooltip="keep loaded: the pipe stays on the GPU after a node used it, until ComfyUI needs "
                                       "the memory for another model (fastest); offload after use: it goes back to the "
                                       "offload device after every node that used it (least VRAM between nodes)."),
            ],
            outputs=[PIPE.Output(display_name="pipe", tooltip="The loaded backbone; add a motion module or ControlNet with the Add nodes.")],
        )

    @classmethod
    def execute(cls, model, dtype, memory=MEMORY_CHOICES[0]) -> io.NodeOutput:
        from ..models.backbones.loaders import load_backbone

        import comfy.model_management as mm

        path = resolve(model, BACKBONE_KINDS)
        device, dt = device_and_dtype(dtype)
        # loaded on ComfyUI's offload device; the nodes that compute with the pipe load it onto `device` through
        # ComfyUI's model management (use_pipe). No module-level cache: ComfyUI's node cache keeps the pipe while the
        # workflow does, and "Free model and node cache" releases it.
        from ..models.errors import BadInputError

        if memory not in MEMORY_CHOICES:
            raise BadInputError(f"memory must be one of {', '.join(MEMORY_CHOICES)}; got {memory!r}.")
        bb = load_backbone(path, device=mm.unet_offload_device(), dtype=dt, tokenizer_dirs=[comfy_tokenizer_dir()])
        return io.NodeOutput(bb.with_parts(device=device, offload_after_use=memory == MEMORY_CHOICES[1]))


class PerformerAddMotionModule(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PerformerAddMotionModule",
            display_name="Add Motion Module (AnimateDiff) 🎭",
            category=f"{CATEGORY}/loaders",
            description="Adds an AnimateDiff motion module (mm_sd_v15_v2-style file or diffusers MotionAdapter folder "
                        "from models/animatediff_models) to an SD1.5 pipe. Returns a new pipe; the input pipe is untouched.",
            inputs=[
                PIPE.Input("pipe", tooltip="An SD1.5 pipe from Load Backbone."),
                io.Combo.Input("motion_module", options=weight_choices("animatediff_models"),
                               tooltip="Motion module file or folder in models/animatediff_models."),
            ],
            outputs=[PIPE.Output(display_name="pipe", tooltip="A new pipe whose UNet carries the motion module.")],
        )

    @classmethod
    def execute(cls, pipe, motion_module) -> io.NodeOutput:
        from ..models.backbones.loaders import with_motion_module

        return io.NodeOutput(with_motion_module(pipe, resolve(motion_module, ("animatediff_models",))))


class PerformerAddControlNet(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PerformerAddControlNet",
            display_name="Add ControlNet (OpenPose) 🎭",
            category=f"{CATEGORY}/loaders",
            description="Adds an SD1.5 ControlNet (e.g. control_v11p_sd15_openpose, single file or diffusers folder "
                        "from models/controlnet). Returns a new pipe.",
            inputs=[
                PIPE.Input("pipe", tooltip="An SD1.5 pipe."),
                io.Combo.Input("controlnet", options=weight_choices("controlnet"),
                               tooltip="ControlNet file or diffusers folder in models/controlnet."),
            ],
            outputs=[PIPE.Output(display_name="pipe", tooltip="A new pipe with the ControlNet attached.")],
        )

    @classmethod
    def execute(cls, pipe, controlnet) -> io.NodeOutput:
        from ..models.backbones.loaders import with_controlnet

        return io.NodeOutput(with_controlnet(pipe, resolve(controlnet, ("controlnet",))))


class PerformerAddPoseController(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PerformerAddPoseController",
            display_name="Add Pose Controller (VividPose) 🎭",
            category=f"{CATEGORY}/loaders",
            description="Adds a VividPose-style pose controller (skeleton-map and SMPL-X-render encoders ending in zero "
                        "convs, summed into the noisy latent) from models/performer/adapters. Returns a new pipe.",
            inputs=[
                PIPE.Input("pipe", tooltip="An SD1.5 (AnimateDiff) or SVD pipe."),
                io.Combo.Input("pose_controller", options=weight_choices("performer_adapters", with_dirs=False),
                               tooltip="Pose controller .safetensors in models/performer/adapters (trained with the Personalise node)."),
            ],
            outputs=[PIPE.Output(display_name="pipe", tooltip="A new pipe with the pose controller.")],
        )

    @classmethod
    def execute(cls, pipe, pose_controller) -> io.NodeOutput:
        from ..models.backbones.loaders import with_pose_controller

        return io.NodeOutput(with_pose_controller(pipe, resolve(pose_controller, ("performer_adapters",))))


class PerformerAddReferenceUNet(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PerformerAddReferenceUNet",
            display_name="Add Reference UNet (AnimateAnyone / Champ / MusePose) 🎭",
            category=f"{CATEGORY}/loaders",
            description="A separate reference model for causal reference attention: the reference image's pass (once "
                        "per run, t = 0) goes through this ReferenceNet instead of the denoising UNet; each of its "
                        "self-attention layers hands its input tokens to the same layer of the denoising UNet, whose "
                        "own key/value projections read them. Still causal: the reference never sees the video. "
                        "Returns a new pipe.",
            inputs=[
                PIPE.Input("pipe", tooltip="An SD1.5 (AnimateDiff) pipe, ideally with the same project's denoising UNet."),
                io.Combo.Input("reference_unet", options=weight_choices("diffusion_models", with_dirs=False),
                               tooltip="reference_unet.pth of Moore-AnimateAnyone, MusePose or Champ in "
                                       "models/diffusion_models."),
            ],
            outputs=[PIPE.Output(display_name="pipe", tooltip="A new pipe with the reference UNet.")],
        )

    @classmethod
    def execute(cls, pipe, reference_unet) -> io.NodeOutput:
        from ..models.backbones.loaders import with_reference_unet

        return io.NodeOutput(with_reference_unet(pipe, resolve(reference_unet, ("diffusion_models",))))


class PerformerAddIdentityAdapter(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PerformerAddIdentityAdapter",
            display_name="Add Identity Adapter (CLIP + ArcFace) 🎭",
            category=f"{CATEGORY}/loaders",
            description="Identity through decoupled cross-attention: an adapter (models/performer/adapters) that turns the "
                        "reference's CLIP image embedding (SD1.5; SVD uses its own) and ArcFace face embedding into extra "
                        "tokens with their own K/V per cross-attention layer. Returns a new pipe.",
            inputs=[
                PIPE.Input("pipe", tooltip="An SD1.5 (AnimateDiff) or SVD pipe."),
                io.Combo.Input("adapter", options=[NONE] + weight_choices("performer_adapters", "ipadapter", with_dirs=False),
                               tooltip="Identity adapter: the pack's .safetensors in models/performer/adapters, a released "
                                       "SD1.5 IP-Adapter (ip-adapter_sd15.safetensors, ip-adapter-faceid_sd15.bin) in "
                                       "models/ipadapter, or none (only load encoders)."),
                io.Combo.Input("clip_vision", options=[NONE] + weight_choices("clip_vision", with_dirs=False),
                               tooltip="SD1.5 only: CLIP vision model in models/clip_vision (e.g. the ViT-H one IP-Adapter uses)."),
                io.Combo.Input("arcface", options=[NONE] + weight_choices("performer_face", with_dirs=False),
                               tooltip="ArcFace ONNX in models/performer/face (insightface w600k_r50.onnx or similar)."),
            ],
            outputs=[PIPE.Output(display_name="pipe", tooltip="A new pipe with the identity adapter and encoders.")],
        )

    @classmethod
    def execute(cls, pipe, adapter, clip_vision, arcface) -> io.NodeOutput:
        from ..models.backbones.loaders import with_identity_adapter

        pick = lambda name, kind: None if name == NONE else resolve(name, (kind,))  # noqa: E731
        ad = None if adapter == NONE else resolve(adapter, ("performer_adapters", "ipadapter"))
        return io.NodeOutput(with_identity_adapter(pipe, ad, pick(clip_vision, "clip_vision"),
                                                   pick(arcface, "performer_face")))


NODES = [PerformerLoadBackbone, PerformerAddMotionModule, PerformerAddControlNet, PerformerAddPoseController,
         PerformerAddReferenceUNet, PerformerAddIdentityAdapter]
