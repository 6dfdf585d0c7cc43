"""Native patches that run released models' parts on core's MODEL (Apply PoseNet (MimicMotion) works the same way on
SVD, with MimicMotion's conventions: images in [−1, 1], conditional half only, frame 0 = the reference's pose).

Apply Pose Guider (AnimateAnyone / MusePose, native): the released ``pose_guider.pth`` encodes each frame's pose image
and its 320-channel output is added to the output of core's first input block (the UNet's ``conv_in``), as the
released pipelines add it after ``conv_in``, in both CFG halves:

* ``OUTER_SAMPLE`` encodes every frame once per run at 8 × the run's latent size on the model's load device and drops
  the features when the run ends (also on error and interrupt);
* an ``input_block_patch`` adds each row's frame's features when ``transformer_options["block"] == ("input", 0)``; the
  rows' frames come from core's or AnimateDiff-Evolved's context window (:func:`.native.frame_indices`);
* the causal reference's write pass gets no pose (the released ReferenceNets see none).
"""
from __future__ import annotations

from typing import Optional

import torch
from comfy_api.latest import io

from .native import CAT, REFERENCE_PASS, _check_percents, _in_range, _model_io, _range_inputs, _sigma_range, row_frames

POSE_GUIDER_KEY = "performer_released_pose_guider"
CHUNK = 16  # frames encoded at once


class _Run:
    def __init__(self, feats, sigma_range):
        self.feats, self.sigma_range = feats, sigma_range
        self.calls: list = []


class ReleasedPoseGuiderPatch:
    """Features of a released pose encoder added after core's ``conv_in``: AnimateAnyone / MusePose's pose guider (both
    CFG halves, pose images in [0, 1]) or MimicMotion's PoseNet (``cond_only``: the conditional half, images in
    [−1, 1])."""

    def __init__(self, parts, strength: float, start_percent: float, end_percent: float, signed: bool = False,
                 cond_only: bool = False, who: str = "Apply Pose Guider"):
        self.parts = list(parts)  # [(module (CPU, eval), IMAGE batch, swap red and blue, input name)]; features summed
        self.strength, self.who = float(strength), who
        self.signed, self.cond_only = bool(signed), bool(cond_only)
        self.start_percent, self.end_percent = float(start_percent), float(end_percent)
        self.run: Optional[_Run] = None
        self.runs = 0
        self.last_calls: list = []

    def __deepcopy__(self, memo):
        return self

    def features(self, frames: int, h: int, w: int, device) -> torch.Tensor:
        from ..models.guidance.pose_controller import maps_to_tensor

        total = None
        for guider, images, swap_rb, name in self.parts:
            ds = guider.downsample
            x = maps_to_tensor(images, h * ds, w * ds, frames, name)
            if swap_rb:
                x = x[:, [2, 1, 0]]
            if self.signed:
                x = x * 2 - 1
            g = guider.to(device)
            try:
                with torch.no_grad():  # in chunks of frames: a long clip's full-resolution activations would not fit at once
                    f = torch.cat([g(x[i:i + CHUNK].to(device)) * self.strength for i in range(0, len(x), CHUNK)])
            finally:
                guider.to("cpu")
            total = f if total is None else total + f
        return total

    def outer_sample(self, executor, noise, latent_image, *args, **kwargs):
        if self.strength == 0.0:  # exactly the unpatched model: nothing computed, nothing checked
            return executor(noise, latent_image, *args, **kwargs)
        guider = executor.class_obj
        ms = guider.model_patcher.get_model_object("model_sampling")
        frames, h, w = latent_image.shape[0], latent_image.shape[-2], latent_image.shape[-1]
        self.run = _Run(self.features(frames, h, w, guider.model_patcher.load_device),
                        _sigma_range(ms, self.start_percent, self.end_percent))
        self.runs += 1
        try:
            return executor(noise, latent_image, *args, **kwargs)
        finally:
            self.last_calls, self.run = self.run.calls, None

    def input_block_patch(self, h, transformer_options):
        run = self.run
        if run is None or self.strength == 0.0 or transformer_options.get("block") != ("input", 0) \
                or transformer_options.get(REFERENCE_PASS) or not _in_range(run.sigma_range, transformer_options.get("sigmas")):
            return h
        cond_or_uncond, idx = row_frames(transformer_options, h.shape[0], run.feats.shape[0], self.who)
        if run.feats.shape[-2:] != h.shape[-2:] or run.feats.shape[1] != h.shape[1]:
            raise ValueError(f"{self.who}: features {tuple(run.feats.shape[1:])} do not fit the first block's output "
                             f"{tuple(h.shape[1:])}.")
        run.calls.append(idx)
        f = run.feats[idx].to(h.device, h.dtype)
        add = torch.cat([f if (c == 0 or not self.cond_only) else torch.zeros_like(f) for c in cond_or_uncond])
        return h + add


def apply_released_pose_guider(model, guider, poses: torch.Tensor, strength: float = 1.0, swap_rb: bool = False,
                               start_percent: float = 0.0, end_percent: float = 1.0, mimicmotion: bool = False):
    """A clone of a core UNet ``model`` with a released pose encoder's features added after its ``conv_in``: the
    AnimateAnyone / MusePose pose guider (SD1.5 family), or with ``mimicmotion`` MimicMotion's PoseNet (SVD; images in
    [−1, 1], conditional half only). Returns (clone, patch)."""
    what = "Apply PoseNet (MimicMotion)" if mimicmotion else "Apply Pose Guider"
    return _apply(model, [(guider, poses, swap_rb, "poses")], strength, start_percent, end_percent, mimicmotion, what)


def apply_champ_guidance(model, parts, strength: float = 1.0, start_percent: float = 0.0, end_percent: float = 1.0):
    """A clone of a core SD1.5-family ``model`` with Champ's guidance: ``parts`` = [(encoder, images, input name)], each
    encoder's features (images in [0, 1]) summed, as Champ sums its four encoders, and added after ``conv_in`` in both
    CFG halves. Returns (clone, patch)."""
    from ..models.errors import BadInputError

    if not parts:
        raise BadInputError("Apply Champ Guidance: connect at least one guidance (an encoder file with its images).")
    return _apply(model, [(g, im, False, name) for g, im, name in parts], strength, start_percent, end_percent, False,
                  "Apply Champ Guidance")


def _apply(model, parts, strength, start_percent, end_percent, mimicmotion, what):
    import comfy.model_base
    import comfy.patcher_extension as pe

    from ..models.errors import BadInputError

    dm = getattr(model.model, "diffusion_model", None)
    if dm is None or not hasattr(dm, "input_blocks"):
        raise BadInputError(f"{what} supports UNet models ({'SVD' if mimicmotion else 'SD1.5 family'}); this MODEL is "
                            f"{type(model.model).__name__}.")
    family_ok = isinstance(model.model, comfy.model_base.SVD_img2vid) if mimicmotion else \
        type(model.model) is comfy.model_base.BaseModel  # SD1.5 / SD2 (SDXL, SVD and others are subclasses)
    if not family_ok:
        raise BadInputError(f"{what} is for {'SVD' if mimicmotion else 'SD1.5-family'} models; this MODEL is "
                            f"{type(model.model).__name__}" + (" (use Apply PoseNet (MimicMotion) on SVD)." if not mimicmotion
                                                               else " (use Apply Pose Guider on SD1.5)."))
    width = dm.input_blocks[0][0].out_channels
    for guider, images, _, name in parts:
        if width != guider.out_channels:
            raise BadInputError(f"{what}: the encoder for {name} makes {guider.out_channels}-channel features but the "
                                f"model's first block gives {width} channels (SD1.5: 320); they cannot be added.")
        if images is None or images.ndim != 4:
            raise BadInputError(f"{what}: {name}: expected an IMAGE batch, one image per video frame.")
    if strength < 0:
        raise BadInputError(f"strength must be >= 0; got {strength}.")
    _check_percents(start_percent, end_percent)
    if any(getattr(p, "__self__", None).__class__ is ReleasedPoseGuiderPatch
           for p in model.model_options.get("transformer_options", {}).get("patches", {}).get("input_block_patch", [])):
        raise BadInputError(f"This MODEL already has a released pose encoder (Apply Pose Guider / Champ Guidance / "
                            f"PoseNet); apply {what} once (a second would add the poses twice).")
    from ..models.guidance.pose_controller import warn_if_silent

    for g, _, _, name in parts:
        warn_if_silent(g, f"{what}: the encoder for {name}")
    patch = ReleasedPoseGuiderPatch([(g.eval().requires_grad_(False), im, rb, n) for g, im, rb, n in parts], strength,
                                    start_percent, end_percent, signed=mimicmotion, cond_only=mimicmotion, who=what)
    m = model.clone()
    m.set_model_input_block_patch(patch.input_block_patch)
    m.add_wrapper_with_key(pe.WrappersMP.OUTER_SAMPLE, POSE_GUIDER_KEY, patch.outer_sample)
    return m, patch


class PerformerApplyPoseGuider(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        from ._common import weight_choices

        return io.Schema(
            node_id="PerformerApplyPoseGuider", display_name="Apply Pose Guider (AnimateAnyone / MusePose, native) 🎭",
            category=CAT,
            description="The released pose guider of Moore-AnimateAnyone or MusePose (pose_guider.pth) on the MODEL your "
                        "loaders give (SD1.5 family, ideally those projects' own denoising UNet): each frame's pose image "
                        "is encoded and added after the UNet's conv_in, in both CFG halves, also inside core's and "
                        "AnimateDiff-Evolved's context windows. Returns a patched copy; the input MODEL is unchanged.",
            inputs=[_model_io()[0],
                    io.Combo.Input("pose_guider", options=weight_choices("performer_adapters", with_dirs=False),
                                   tooltip="pose_guider.pth (Moore-AnimateAnyone or MusePose) in models/performer/adapters."),
                    io.Image.Input("poses", tooltip="Pose images, one per video frame (Draw Skeleton Maps: ControlNet colours)."),
                    io.Combo.Input("colours", options=["controlnet (AnimateAnyone)", "red-blue swapped (MusePose)"],
                                   tooltip="The colour order the guider was trained on: AnimateAnyone draws ControlNet's "
                                           "colours; MusePose's videos have red and blue swapped."),
                    io.Float.Input("strength", default=1.0, min=0.0, max=4.0, step=0.05,
                                   tooltip="Scale of the pose features: 1 = as released, 0 = off (exactly the unpatched model)."),
                    *_range_inputs("Guide")],
            outputs=[_model_io()[1]],
        )

    @classmethod
    def execute(cls, model, pose_guider, poses, colours, strength, start_percent, end_percent) -> io.NodeOutput:
        from ..models.guidance.pose_guider import load_released_pose_guider
        from ._common import resolve

        g = load_released_pose_guider(resolve(pose_guider, ("performer_adapters",)))
        m, _ = apply_released_pose_guider(model, g, poses, strength, colours.startswith("red-blue"), start_percent, end_percent)
        return io.NodeOutput(m)


class PerformerApplyPoseNet(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        from ._common import weight_choices

        return io.Schema(
            node_id="PerformerApplyPoseNet", display_name="Apply PoseNet (MimicMotion, native) 🎭", category=CAT,
            description="MimicMotion's released PoseNet on the SVD MODEL your loaders give: each frame's pose image "
                        "(values mapped to [-1, 1]) is encoded and added after the UNet's conv_in in the conditional "
                        "CFG half, as MimicMotion does. As in MimicMotion, frame 0 of the poses is the reference image's "
                        "own pose (the video's first frame is the reference). Returns a patched copy; the input MODEL is "
                        "unchanged.",
            inputs=[_model_io()[0],
                    io.Combo.Input("pose_net", options=weight_choices("performer_adapters", "diffusion_models",
                                                                      with_dirs=False),
                                   tooltip="MimicMotion_1-1.pth (its PoseNet is read; Apply MimicMotion UNet reads its "
                                           "UNet) or a PoseNet-only file (mimic_motion_pose_net.safetensors) in "
                                           "models/performer/adapters or models/diffusion_models."),
                    io.Image.Input("poses", tooltip="Pose images, one per video frame; frame 0 = the reference image's pose."),
                    io.Combo.Input("colours", options=["red-blue swapped (MimicMotion)", "controlnet"],
                                   tooltip="MimicMotion's pose videos have red and blue swapped against ControlNet's colours "
                                           "(Draw Skeleton Maps draws ControlNet's)."),
                    io.Float.Input("strength", default=1.0, min=0.0, max=4.0, step=0.05,
                                   tooltip="Scale of the pose features: 1 = as released, 0 = off (exactly the unpatched model)."),
                    *_range_inputs("Guide")],
            outputs=[_model_io()[1]],
        )

    @classmethod
    def execute(cls, model, pose_net, poses, colours, strength, start_percent, end_percent) -> io.NodeOutput:
        from ..models.guidance.pose_guider import load_mimicmotion_pose_net
        from ._common import resolve

        g = load_mimicmotion_pose_net(resolve(pose_net, ("performer_adapters", "diffusion_models")))
        m, _ = apply_released_pose_guider(model, g, poses, strength, colours.startswith("red-blue"), start_percent,
                                          end_percent, mimicmotion=True)
        return io.NodeOutput(m)


def diffusers_table(unet_config: dict) -> dict:
    """Core's diffusers → core UNet key table (``comfy.utils.unet_to_diffusers``) for a UNet config, also one whose
    ``num_res_blocks`` is a single number (core's UNetModel accepts both)."""
    import comfy.utils

    cfg = dict(unet_config)
    if isinstance(cfg.get("num_res_blocks"), int):
        cfg["num_res_blocks"] = [cfg["num_res_blocks"]] * len(cfg["channel_mult"])
    return comfy.utils.unet_to_diffusers(cfg)


def load_reference_model(model, path: str, denoising: bool = False):
    """A released ReferenceNet (``reference_unet.pth`` of Moore-AnimateAnyone, MusePose or Champ: a diffusers-layout
    SD1.5 UNet without ``conv_norm_out`` / ``conv_out``; a full UNet of the same layout works too) as a core MODEL
    built with ``model``'s own UNet config, so its layers match the ones that read it.  Keys are mapped with core's
    diffusers → core table and checked strictly; the missing output layers (which the reference pass never uses) are
    zero.  ``denoising``: a released denoising UNet (``denoising_unet.pth``), every tensor required, output layers
    included.  Returns a ModelPatcher."""
    import comfy.model_base
    import comfy.model_patcher

    from ..models.backbones.loaders import REFERENCE_UNET_UNUSED
    from ..models.backbones.weights import layout_diff, read_state_dict
    from ..models.errors import BadInputError, BadModelFileError

    if type(getattr(model, "model", None)) is not comfy.model_base.BaseModel:
        raise BadInputError(f"Load Released UNet needs the SD1.5-family MODEL it will read into; this MODEL is "
                            f"{type(getattr(model, 'model', model)).__name__}.")
    config = model.model.model_config
    table = diffusers_table(config.unet_config)  # diffusers name → core name
    sd = read_state_dict(path)
    if sd and all(k.startswith("unet.") for k in sd):
        raise BadModelFileError(f"{path} holds an SVD UNet (MimicMotion's unet.* keys), not an SD1.5 reference UNet.")
    core = model.model.diffusion_model.state_dict()
    want = {k: tuple(core[v].shape) for k, v in table.items() if v in core}
    got = {k: tuple(v.shape) for k, v in sd.items()}
    missing, extra, wrong = layout_diff(want, got, () if denoising else REFERENCE_UNET_UNUSED)
    if missing or extra or wrong:
        what = "denoising_unet.pth" if denoising else "reference_unet.pth"
        raise BadModelFileError(f"{path} is not a {'denoising' if denoising else 'reference'} UNet for this MODEL "
                                f"(expected a diffusers-layout UNet state dict of the same size, as AnimateAnyone / "
                                f"MusePose / Champ's {what}): "
                                f"missing {missing[:3]}, unexpected {extra[:3]}, other shapes "
                                f"{[(k, got[k], want[k]) for k in wrong[:2]]}.")
    new = {table[k]: sd[k] if k in sd else torch.zeros(want[k]) for k in want}
    ref = config.get_model({}, "", device=model.offload_device)
    missing_core, unexpected = ref.diffusion_model.load_state_dict(new, strict=False)
    if missing_core or unexpected:
        raise BadModelFileError(f"{path}: core's UNet did not take every tensor (missing {missing_core[:3]}, unexpected "
                                f"{unexpected[:3]}).")
    return comfy.model_patcher.ModelPatcher(ref.eval(), load_device=model.load_device, offload_device=model.offload_device)


def mimicmotion_unet_patches(model, path: str) -> dict:
    """MimicMotion's UNet (``unet.*`` of ``MimicMotion_1-1.pth``: a diffusers UNetSpatioTemporalConditionModel state
    dict, SVD-xt's layout) as core weight patches ("set") on an SVD ``model``: each core key's diffusers name comes
    from the pack's SVD key table (``models/backbones/convert_svd.py``), every tensor must be there with core's
    shape, and nothing may be left over."""
    import comfy.model_base

    from ..models.backbones.convert_svd import unet_keys_to_diffusers
    from ..models.backbones.weights import layout_diff, read_state_dict
    from ..models.errors import BadInputError, BadModelFileError

    if not isinstance(getattr(model, "model", None), comfy.model_base.SVD_img2vid):
        raise BadInputError(f"Apply MimicMotion UNet is for the SVD MODEL (SVD-xt 1.1, as MimicMotion); this MODEL is "
                            f"{type(getattr(model, 'model', model)).__name__}.")
    sd = read_state_dict(path)
    unet = {k[len("unet."):]: v for k, v in sd.items() if k.startswith("unet.")}
    if not unet:
        raise BadModelFileError(f"{path} is not a MimicMotion checkpoint (no unet.* tensors; it holds keys such as "
                                f"{sorted(sd)[:3]}).")
    core = model.model.diffusion_model.state_dict()
    nrb = model.model.model_config.unet_config["num_res_blocks"]
    layers = nrb if isinstance(nrb, int) else nrb[0]
    names = {next(iter(unet_keys_to_diffusers({k: None}, layers))): k for k in core}
    missing, extra, wrong = layout_diff({d: tuple(core[c].shape) for d, c in names.items()},
                                        {d: tuple(v.shape) for d, v in unet.items()})
    if missing or extra or wrong:
        raise BadModelFileError(f"{path}: its UNet does not fit this SVD MODEL (expected SVD-xt's UNet under unet.*): "
                                f"missing {missing[:3]}, unexpected {extra[:3]}, other shapes "
                                f"{[(d, tuple(unet[d].shape), tuple(core[names[d]].shape)) for d in wrong[:2]]}.")
    return {"diffusion_model." + c: ("set", (unet[d],)) for d, c in names.items()}


def apply_mimicmotion_unet(model, path: str):
    """A clone of an SVD ``model`` whose UNet weights are MimicMotion's (core "set" patches, applied when core loads
    the model and undone when it unloads it; the input MODEL is unchanged)."""
    patches = mimicmotion_unet_patches(model, path)
    m = model.clone()
    taken = m.add_patches(patches, 1.0, 1.0)
    if len(taken) != len(patches):
        raise ValueError(f"Apply MimicMotion UNet: core took {len(taken)} of {len(patches)} weights.")
    return m


CHAMP_KINDS = (("depth", "depth maps (Render Body for Champ)"), ("normal", "normal maps (Render Body for Champ)"),
               ("semantic_map", "semantic maps (Render Body for Champ)"), ("dwpose", "skeleton maps (Draw Skeleton Maps)"))


class PerformerApplyChampGuidance(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        from ._common import weight_choices

        files = ["none"] + weight_choices("performer_adapters", with_dirs=False)
        inputs = [_model_io()[0]]
        for kind, what in CHAMP_KINDS:
            inputs += [io.Combo.Input(f"{kind}_encoder", options=files, default="none",
                                      tooltip=f"Champ's guidance_encoder_{kind}.pth in models/performer/adapters "
                                              f"('none' = this guidance off; then leave {kind} unconnected)."),
                       io.Image.Input(kind, optional=True, tooltip=f"The {what}, one per video frame, for this encoder.")]
        return io.Schema(
            node_id="PerformerApplyChampGuidance", display_name="Apply Champ Guidance (native) 🎭", category=CAT,
            description="Champ's released guidance encoders on the MODEL your loaders give (SD1.5 family, ideally "
                        "Champ's own denoising UNet): each connected guidance (SMPL depth, normal, semantic map, DWPose "
                        "skeleton) goes through its own encoder and the features are summed, as Champ sums them, and "
                        "added after the UNet's conv_in in both CFG halves, also inside core's and AnimateDiff-Evolved's "
                        "context windows. VividPose's SMPL-X + skeleton pose control with released weights. Returns a "
                        "patched copy; the input MODEL is unchanged.",
            inputs=inputs + [io.Float.Input("strength", default=1.0, min=0.0, max=4.0, step=0.05,
                                            tooltip="Scale of the summed features: 1 = as released, 0 = off (exactly "
                                                    "the unpatched model)."),
                             *_range_inputs("Guide")],
            outputs=[_model_io()[1]],
        )

    @classmethod
    def execute(cls, model, strength, start_percent, end_percent, **kw) -> io.NodeOutput:
        from ..models.errors import BadInputError
        from ..models.guidance.pose_guider import load_champ_guidance_encoder
        from ._common import resolve

        parts = []
        for kind, _ in CHAMP_KINDS:
            enc, images = kw.get(f"{kind}_encoder", "none"), kw.get(kind)
            if enc == "none" and images is not None:
                raise BadInputError(f"Apply Champ Guidance: {kind} is connected but {kind}_encoder is 'none'; choose "
                                    f"guidance_encoder_{kind}.pth or disconnect {kind} (it would be ignored).")
            if enc != "none" and images is None:
                raise BadInputError(f"Apply Champ Guidance: {kind}_encoder is set but no {kind} images are connected.")
            if enc != "none":
                parts.append((load_champ_guidance_encoder(resolve(enc, ("performer_adapters",))), images, kind))
        m, _ = apply_champ_guidance(model, parts, strength, start_percent, end_percent)
        return io.NodeOutput(m)


class PerformerLoadReferenceUNet(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        from ._common import weight_choices

        return io.Schema(
            node_id="PerformerLoadReferenceUNet", display_name="Load Released UNet (AnimateAnyone / Champ / MusePose) 🎭",
            category=CAT,
            description="Loads a released UNet of Moore-AnimateAnyone, MusePose or Champ as a MODEL: the ReferenceNet "
                        "(reference_unet.pth, for Apply Causal Reference's reference_model input) or the denoising UNet "
                        "(denoising_unet.pth, to sample with). It is built with the layout of the MODEL you connect "
                        "(an SD1.5 checkpoint: its VAE and text/CLIP parts are used alongside), its keys are checked "
                        "strictly with a clear error for a wrong file, and the output layers a ReferenceNet file leaves "
                        "out (never used by the reference pass) are zero. Core's Load Diffusion Model also loads these "
                        "files at full size.",
            inputs=[io.Model.Input("model", tooltip="An SD1.5-family MODEL with the released UNet's layout (SD1.5): its "
                                                    "config is used, its weights are not."),
                    io.Combo.Input("unet", options=weight_choices("diffusion_models", with_dirs=False),
                                   tooltip="reference_unet.pth or denoising_unet.pth in models/diffusion_models."),
                    io.Combo.Input("role", options=["reference (ReferenceNet)", "denoising"],
                                   tooltip="reference: reference_unet.pth, which lacks the output layers; denoising: "
                                           "denoising_unet.pth, every tensor required.")],
            outputs=[io.Model.Output(display_name="model", tooltip="The released UNet as a MODEL.")],
        )

    @classmethod
    def execute(cls, model, unet, role) -> io.NodeOutput:
        from ._common import resolve

        return io.NodeOutput(load_reference_model(model, resolve(unet, ("diffusion_models",)), role == "denoising"))


def clip_vision_conditioning(clip_vision_output, width: int = 768):
    """(positive, negative) CONDITIONING for the AnimateAnyone family's UNets, whose cross-attention reads the reference's
    projected CLIP image embedding as its one context token (instead of text): positive = the embedding, negative =
    zeros, as those projects' pipelines make the unconditional half."""
    from ..models.errors import BadInputError

    emb = getattr(clip_vision_output, "image_embeds", None)
    if emb is None or emb.ndim != 2:
        raise BadInputError("clip_vision_output has no projected image embedding (image_embeds); use a CLIP vision model "
                            "with a projection (CLIP ViT-L/14).")
    if emb.shape[-1] != width:
        raise BadInputError(f"The image embedding is {emb.shape[-1]}-wide; AnimateAnyone / Champ / MusePose read CLIP "
                            f"ViT-L/14's {width}-wide embedding (the image encoder of sd-image-variations-diffusers).")
    tok = emb[:1, None].float().cpu()
    return [[tok, {}]], [[torch.zeros_like(tok), {}]]


class PerformerClipVisionConditioning(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PerformerClipVisionConditioning",
            display_name="CLIP Vision Conditioning (AnimateAnyone / Champ / MusePose) 🎭", category=CAT,
            description="The conditioning those projects' UNets were trained with: the reference's projected CLIP image "
                        "embedding as the one cross-attention token (no text); the negative is zeros, as their "
                        "pipelines make the unconditional half.",
            inputs=[io.ClipVisionOutput.Input("clip_vision_output",
                                              tooltip="CLIP Vision Encode of the reference with a CLIP ViT-L/14 (the image "
                                                      "encoder of lambdalabs/sd-image-variations-diffusers).")],
            outputs=[io.Conditioning.Output(display_name="positive", tooltip="The image embedding as context."),
                     io.Conditioning.Output(display_name="negative", tooltip="Zeros of the same shape.")],
        )

    @classmethod
    def execute(cls, clip_vision_output) -> io.NodeOutput:
        pos, neg = clip_vision_conditioning(clip_vision_output)
        return io.NodeOutput(pos, neg)


class PerformerApplyMimicMotionUNet(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        from ._common import weight_choices

        return io.Schema(
            node_id="PerformerApplyMimicMotionUNet", display_name="Apply MimicMotion UNet (native) 🎭", category=CAT,
            description="MimicMotion's finetuned UNet (the unet.* tensors of MimicMotion_1-1.pth) on the SVD MODEL your "
                        "loader gives (SVD-xt 1.1, which supplies the VAE and CLIP vision as in MimicMotion): core "
                        "weight patches, applied when the model is loaded, so the input MODEL is unchanged. Pair with "
                        "Apply PoseNet (MimicMotion) on the same file.",
            inputs=[_model_io()[0],
                    io.Combo.Input("checkpoint", options=weight_choices("performer_adapters", "diffusion_models",
                                                                        with_dirs=False),
                                   tooltip="MimicMotion_1-1.pth in models/performer/adapters or models/diffusion_models "
                                           "(its PoseNet is read by Apply PoseNet).")],
            outputs=[_model_io()[1]],
        )

    @classmethod
    def execute(cls, model, checkpoint) -> io.NodeOutput:
        from ._common import resolve

        return io.NodeOutput(apply_mimicmotion_unet(model, resolve(checkpoint, ("performer_adapters", "diffusion_models"))))


NODES = [PerformerApplyPoseGuider, PerformerApplyPoseNet, PerformerApplyChampGuidance, PerformerLoadReferenceUNet,
         PerformerApplyMimicMotionUNet, PerformerClipVisionConditioning]
