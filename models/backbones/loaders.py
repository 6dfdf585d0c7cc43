"""Loading the backbones people actually have on disk, fully offline.

Supported families and layouts:

* **SD1.5** – single-file checkpoints with the original LDM key names
  (``model.diffusion_model.*``, ``first_stage_model.*``, ``cond_stage_model.transformer.*``)
  and diffusers folders (``unet/ vae/ text_encoder/ tokenizer/ scheduler/``).
* **SVD** (img2vid / img2vid-xt) – single-file sgm checkpoints (see :mod:`.convert_svd`) and
  diffusers folders (``unet/ vae/ image_encoder/ feature_extractor/ scheduler/``).
* **AnimateDiff motion modules** – ``mm_sd_v15_v2``-style files and diffusers MotionAdapter folders.
* **ControlNet** – original single files (``control_model.*``) and diffusers folders.

Single files carry no architecture config, and diffusers' ``from_single_file`` would fetch one
from the hub.  We never let it: the architecture is *read from the tensor shapes* (so full-size
and tiny test models go through the same path), merged over the reference configs shipped in
``models/backbones/configs/``, written to a private temporary folder and handed to ``from_single_file``
with ``local_files_only=True``.  Settings that shapes cannot reveal (head counts) come from the
reference config of the family.
"""
from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import tempfile
from dataclasses import dataclass, field, replace
from typing import Any, Dict, List, Optional, Sequence

import torch

from ..errors import BadModelFileError, MissingModelError
from .ldm_layout import (_indices, _require, _strip, infer_clip_text_config, infer_ldm_unet_layout,  # noqa: F401
                         infer_ldm_vae_config, reference_config)
from .weights import detect_family, file_hash, layout_diff, read_state_dict

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
TOKENIZER_FILES = ("vocab.json", "merges.txt")


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto`` -> fp16 on CUDA, fp32 elsewhere; otherwise the named dtype."""
    if name == "auto":
        return torch.float16 if torch.device(device).type == "cuda" else torch.float32
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of auto, {', '.join(DTYPES)}; got {name!r}")
    return DTYPES[name]


@dataclass
class Backbone:
    """Everything a sampler needs from one loaded base model.  Treated as immutable by the pack:
    nodes that add parts return :meth:`with_parts` copies, never edit one in place."""

    family: str  # "sd15" | "svd"
    unet: torch.nn.Module
    vae: torch.nn.Module
    scheduler_config: Dict[str, Any]
    dtype: torch.dtype
    device: torch.device
    text_encoder: Optional[torch.nn.Module] = None
    tokenizer: Any = None
    image_encoder: Optional[torch.nn.Module] = None
    feature_extractor: Any = None
    motion_adapter: Optional[torch.nn.Module] = None
    controlnet: Optional[torch.nn.Module] = None
    pose_controller: Optional[torch.nn.Module] = None  # models.guidance.pose_controller.PoseController
    identity_adapter: Optional[torch.nn.Module] = None  # models.attention.identity.IdentityAdapter
    arcface: Any = None  # models.pose.face.ArcFace
    reference_unet: Optional[torch.nn.Module] = None  # a separate ReferenceNet (AnimateAnyone / Champ / MusePose)
    source: Dict[str, str] = field(default_factory=dict)
    # a host's memory-manager handles per module (ComfyUI: one ModelPatcher per module, nodes/_common.use_pipe), shared
    # by reference with every pipe derived by with_parts, so modules two pipes share have one handle
    managed: Dict[int, Any] = field(default_factory=dict, repr=False, compare=False)
    offload_after_use: bool = False  # the host moves the pipe off its device after each use (Load Backbone's choice)

    def modules(self) -> List[torch.nn.Module]:
        """Every torch module of the pipe, once each."""
        out, seen = [], set()
        for m in (self.unet, self.vae, self.text_encoder, self.image_encoder, self.motion_adapter, self.controlnet,
                  self.pose_controller, self.identity_adapter, self.reference_unet):
            if isinstance(m, torch.nn.Module) and id(m) not in seen:
                seen.add(id(m))
                out.append(m)
        return out

    def with_parts(self, **parts) -> "Backbone":
        src = dict(self.source)
        src.update(parts.pop("source", {}))
        return replace(self, source=src, **parts)

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)


# ----------------------------------------------------------------------------- helpers


@contextlib.contextmanager
def _config_dir(config: Dict[str, Any]):
    with tempfile.TemporaryDirectory(prefix="performer_cfg_") as d:
        with open(os.path.join(d, "config.json"), "w", encoding="utf-8") as fh:
            json.dump(config, fh)
        yield d


def _place(module: torch.nn.Module, device, dtype) -> torch.nn.Module:
    return module.to(device=device, dtype=dtype).eval().requires_grad_(False)


def _sd15_unet_config(lay: Dict[str, Any]) -> Dict[str, Any]:
    cfg = reference_config("sd15_unet.json")
    n = len(lay["channel_mult"])
    cfg.update(
        in_channels=lay["in_channels"],
        out_channels=lay["out_channels"],
        block_out_channels=[lay["model_channels"] * m for m in lay["channel_mult"]],
        layers_per_block=lay["layers_per_block"],
        cross_attention_dim=lay["context_dim"],
        transformer_layers_per_block=lay["transformer_depth"],
        use_linear_projection=lay["linear_proj"],
        down_block_types=["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in lay["attention"]],
        up_block_types=["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(lay["attention"])],
    )
    cfg["norm_num_groups"] = min(cfg["norm_num_groups"], lay["model_channels"])
    assert len(cfg["down_block_types"]) == n
    return cfg





def _text_encoder_state(sd: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    te = _strip(sd, "cond_stage_model.transformer.")
    te = {(k[len("text_model."):] if k.startswith("text_model.") else k): v for k, v in te.items()}
    te.pop("embeddings.position_ids", None)
    return te


# ----------------------------------------------------------------------------- tokenizer


def load_clip_tokenizer(search_dirs: Sequence[str]):
    """CLIP BPE tokenizer from the first directory holding ``vocab.json`` + ``merges.txt``.

    Single-file SD1.5 checkpoints do not contain the tokenizer.  Inside ComfyUI the nodes pass
    ComfyUI's own ``comfy/sd1_tokenizer`` (the same OpenAI CLIP BPE); a diffusers folder brings
    its own ``tokenizer/``.
    """
    from transformers import CLIPTokenizer

    for d in search_dirs:
        if d and all(os.path.isfile(os.path.join(d, f)) for f in TOKENIZER_FILES):
            return CLIPTokenizer(os.path.join(d, "vocab.json"), os.path.join(d, "merges.txt"), model_max_length=77)
    raise MissingModelError(
        "tokenizer", ["vocab.json + merges.txt"], search_dirs,
        "Single-file SD1.5 checkpoints need the CLIP tokenizer; ComfyUI ships it in comfy/sd1_tokenizer.",
    )


# ----------------------------------------------------------------------------- SD1.5


def load_sd15(path: str, *, device=None, dtype=torch.float32, tokenizer_dirs: Sequence[str] = (),
              state_dict: Optional[Dict[str, torch.Tensor]] = None) -> Backbone:
    """SD1.5 from a single-file LDM checkpoint or a diffusers folder (``state_dict``: the file's contents if already read)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    device = torch.device(device or default_device())
    if os.path.isdir(path):
        _need_dirs(path, ("unet", "vae", "text_encoder"), "SD1.5 diffusers folder")
        kw = dict(local_files_only=True)
        unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet", **kw)
        vae = AutoencoderKL.from_pretrained(path, subfolder="vae", **kw)
        text_encoder = CLIPTextModel.from_pretrained(os.path.join(path, "text_encoder"), **kw)
        tokenizer = load_clip_tokenizer([os.path.join(path, "tokenizer"), *tokenizer_dirs])
        sched = _scheduler_from_folder(path, "sd15_scheduler.json")
        src = {"backbone": path, "backbone_layout": "diffusers"}
    else:
        sd = state_dict if state_dict is not None else read_state_dict(path)
        fam = detect_family(sd, path)
        if fam != "sd15":
            raise BadModelFileError(f"'{os.path.basename(path)}' is a {fam} checkpoint, not SD1.5.")
        unet_sd = _strip(sd, "model.diffusion_model.")
        with _config_dir(_sd15_unet_config(infer_ldm_unet_layout(unet_sd, path))) as d:
            unet = UNet2DConditionModel.from_single_file(sd, config=d, local_files_only=True)
        with _config_dir(infer_ldm_vae_config(_strip(sd, "first_stage_model."), path)) as d:
            vae = AutoencoderKL.from_single_file(sd, config=d, local_files_only=True)
        te_sd = _text_encoder_state(sd)
        text_encoder = CLIPTextModel(infer_clip_text_config(te_sd, path))
        missing, unexpected = text_encoder.load_state_dict(te_sd, strict=False)
        if missing or unexpected:
            raise BadModelFileError(f"'{path}': text encoder keys do not match CLIP (missing {missing[:3]}, unexpected {unexpected[:3]}).")
        tokenizer = load_clip_tokenizer(tokenizer_dirs)
        sched = reference_config("sd15_scheduler.json")
        src = {"backbone": path, "backbone_layout": "single_file", "backbone_hash": file_hash(path)}
    return Backbone(
        family="sd15", unet=_place(unet, device, dtype), vae=_place(vae, device, dtype),
        text_encoder=_place(text_encoder, device, dtype), tokenizer=tokenizer,
        scheduler_config=sched, dtype=dtype, device=device, source=src,
    )


def _need_dirs(path: str, subdirs: Sequence[str], what: str) -> None:
    missing = [s for s in subdirs if not os.path.isdir(os.path.join(path, s))]
    if missing:
        raise MissingModelError(
            os.path.basename(path.rstrip("/")), [f"{s}/" for s in missing], [path],
            f"A {what} needs the sub-folders {', '.join(subdirs)}.",
        )


def _scheduler_from_folder(path: str, fallback: str) -> Dict[str, Any]:
    p = os.path.join(path, "scheduler", "scheduler_config.json")
    if os.path.isfile(p):
        with open(p, encoding="utf-8") as fh:
            cfg = json.load(fh)
        # diffusers never saves "_use_default_values"; a file that has it was written from a live config and then
        # edited, and from_config would replace every key it lists (prediction type, zero SNR, spacing) with the
        # library's default: the values the file states are the ones the weights were trained with
        stale = [k for k in cfg.pop("_use_default_values", None) or [] if k in cfg]
        if stale:
            logging.info("'%s': honouring the stated %s (listed under _use_default_values)", p, ", ".join(sorted(stale)))
        return cfg
    return reference_config(fallback)


# ----------------------------------------------------------------------------- SVD


def load_svd(path: str, *, device=None, dtype=torch.float32, state_dict: Optional[Dict[str, torch.Tensor]] = None) -> Backbone:
    """Stable Video Diffusion (img2vid / -xt) from a single sgm checkpoint or a diffusers folder
    (``state_dict``: the file's contents if already read)."""
    from diffusers import AutoencoderKLTemporalDecoder, UNetSpatioTemporalConditionModel
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

    from . import convert_svd

    device = torch.device(device or default_device())
    if os.path.isdir(path):
        _need_dirs(path, ("unet", "vae", "image_encoder"), "SVD diffusers folder")
        kw = dict(local_files_only=True)
        unet = UNetSpatioTemporalConditionModel.from_pretrained(path, subfolder="unet", **kw)
        vae = AutoencoderKLTemporalDecoder.from_pretrained(path, subfolder="vae", **kw)
        image_encoder = CLIPVisionModelWithProjection.from_pretrained(os.path.join(path, "image_encoder"), **kw)
        fe_dir = os.path.join(path, "feature_extractor")
        fe = CLIPImageProcessor.from_pretrained(fe_dir, **kw) if os.path.isdir(fe_dir) else convert_svd.default_image_processor()
        sched = _scheduler_from_folder(path, "svd_scheduler.json")
        src = {"backbone": path, "backbone_layout": "diffusers"}
    else:
        sd = state_dict if state_dict is not None else read_state_dict(path)
        fam = detect_family(sd, path)
        if fam != "svd":
            raise BadModelFileError(f"'{os.path.basename(path)}' is a {fam} checkpoint, not Stable Video Diffusion.")
        unet, vae, image_encoder = convert_svd.build_from_sgm(sd, path)
        fe = convert_svd.default_image_processor()
        sched = reference_config("svd_scheduler.json")
        src = {"backbone": path, "backbone_layout": "single_file", "backbone_hash": file_hash(path)}
    return Backbone(
        family="svd", unet=_place(unet, device, dtype), vae=_place(vae, device, dtype),
        image_encoder=_place(image_encoder, device, dtype), feature_extractor=fe,
        scheduler_config=sched, dtype=dtype, device=device, source=src,
    )


# ----------------------------------------------------------------------------- auto


def load_backbone(path: str, *, device=None, dtype=torch.float32, tokenizer_dirs: Sequence[str] = ()) -> Backbone:
    """Recognise the family (SD1.5 or SVD) of a file or diffusers folder and load it."""
    sd = None
    if os.path.isdir(path):
        fam = "svd" if os.path.isdir(os.path.join(path, "image_encoder")) else "sd15"
        idx = os.path.join(path, "model_index.json")
        if os.path.isfile(idx):
            with open(idx, encoding="utf-8") as fh:
                cls = json.load(fh).get("_class_name", "")
            fam = "svd" if "VideoDiffusion" in cls else "sd15"
    elif path.endswith(".safetensors") and os.path.isfile(path):
        # Peek at the keys only (safetensors reads the header without the tensors).
        from safetensors import safe_open

        try:
            with safe_open(path, framework="pt") as f:
                fam = "svd" if any(".time_stack." in k for k in f.keys()) else "sd15"
        except Exception as exc:  # noqa: BLE001
            raise BadModelFileError(f"Could not read weight file '{path}': {exc}") from exc
    else:  # pickle-free tensor checkpoint: read it once and hand it on
        sd = read_state_dict(path)
        fam = detect_family(sd, path)
    if fam == "svd":
        return load_svd(path, device=device, dtype=dtype, state_dict=sd)
    return load_sd15(path, device=device, dtype=dtype, tokenizer_dirs=tokenizer_dirs, state_dict=sd)


# ----------------------------------------------------------------------------- AnimateDiff


def infer_motion_adapter_config(sd: Dict[str, torch.Tensor]) -> Dict[str, Any]:
    cfg = reference_config("motion_adapter.json")
    downs = _indices(sd, r"down_blocks\.(\d+)\.motion_modules\.")
    chans, layers = [], 1
    for i in downs:
        mods = _indices(sd, rf"down_blocks\.{i}\.motion_modules\.(\d+)\.")
        layers = len(mods)
        w = next(v for k, v in sd.items() if k.startswith(f"down_blocks.{i}.motion_modules.0.") and k.endswith("proj_in.weight"))
        chans.append(w.shape[0])
    mid = _indices(sd, r"mid_block\.motion_modules\.(\d+)\.")
    pe = next((v for k, v in sd.items() if k.endswith("pos_encoder.pe")), None)
    tb = _indices(sd, r"down_blocks\.0\.motion_modules\.0\.(?:temporal_transformer\.)?transformer_blocks\.(\d+)\.")
    cfg.update(
        block_out_channels=chans,
        motion_layers_per_block=layers,
        motion_transformer_layers_per_block=max(1, len(tb)),
        use_motion_mid_block=bool(mid),
        motion_mid_block_layers_per_block=max(1, len(mid)),
        motion_max_seq_length=pe.shape[1] if pe is not None else cfg["motion_max_seq_length"],
        motion_norm_num_groups=min(cfg["motion_norm_num_groups"], min(chans)),
    )
    return cfg


def load_motion_adapter(path: str, *, device=None, dtype=torch.float32):
    """AnimateDiff motion module (``mm_sd_v15_v2.safetensors``-style file, or a diffusers MotionAdapter folder)."""
    from diffusers import MotionAdapter

    device = torch.device(device or default_device())
    if os.path.isdir(path):
        ad = MotionAdapter.from_pretrained(path, local_files_only=True)
    else:
        sd = read_state_dict(path)
        if detect_family(sd, path) != "motion_module":
            raise BadModelFileError(f"'{os.path.basename(path)}' is not an AnimateDiff motion module.")
        with _config_dir(infer_motion_adapter_config(sd)) as d:
            ad = MotionAdapter.from_single_file(sd, config=d, local_files_only=True)
    return _place(ad, device, dtype)


# ----------------------------------------------------------------------------- ControlNet


def load_controlnet(path: str, *, device=None, dtype=torch.float32):
    """ControlNet (SD1.5) from an original single file (``control_v11p_sd15_openpose.pth``) or a diffusers folder."""
    from diffusers import ControlNetModel

    device = torch.device(device or default_device())
    if os.path.isdir(path):
        cn = ControlNetModel.from_pretrained(path, local_files_only=True)
    else:
        sd = read_state_dict(path)
        if detect_family(sd, path) != "controlnet":
            raise BadModelFileError(f"'{os.path.basename(path)}' is not a ControlNet checkpoint.")
        if not any(k.startswith("control_model.") for k in sd):
            sd = {"control_model." + k: v for k, v in sd.items()}
        inner = _strip(sd, "control_model.")
        lay = infer_ldm_unet_layout({**inner, "out.2.weight": torch.empty(4)}, path)
        cfg = _sd15_unet_config(lay)
        hint = [inner[f"input_hint_block.{i}.weight"] for i in _indices(inner, r"input_hint_block\.(\d+)\.weight")]
        cn_cfg = reference_config("sd15_controlnet.json")
        cn_cfg.update({k: cfg[k] for k in (
            "in_channels", "block_out_channels", "layers_per_block", "cross_attention_dim",
            "transformer_layers_per_block", "use_linear_projection", "down_block_types", "norm_num_groups")})
        cn_cfg["conditioning_channels"] = hint[0].shape[1]
        cn_cfg["conditioning_embedding_out_channels"] = [w.shape[0] for w in hint[:-1]][::2]
        with _config_dir(cn_cfg) as d:
            cn = ControlNetModel.from_single_file(sd, config=d, local_files_only=True)
    return _place(cn, device, dtype)


# The noise schedule AnimateDiff's motion modules were trained with: linear betas from 0.00085 to 0.012, not SD1.5's
# scaled_linear (guoyww/AnimateDiff configs/training/v1/training.yaml and configs/inference/inference-v1.yaml,
# inference-v2.yaml, inference-v3.yaml: ``noise_scheduler_kwargs: beta_start 0.00085, beta_end 0.012,
# beta_schedule "linear"``).  AnimateDiff-Evolved's "autoselect" picks "sqrt_linear (AnimateDiff)" for SD1.5 motion
# modules (animatediff/motion_module_ad.py get_best_beta_schedule), ldm's name for the same
# ``linspace(beta_start, beta_end)`` (ldm's own "linear" is diffusers' "scaled_linear").
ANIMATEDIFF_BETAS = {"beta_schedule": "linear", "beta_start": 0.00085, "beta_end": 0.012, "trained_betas": None}
BETA_KEYS = ("beta_schedule", "beta_start", "beta_end", "trained_betas")
MOTION_SCHEDULE_FILE = "scheduler_config.json"  # optional, in a motion-module folder: the betas it was trained with


def motion_module_betas(path: str) -> Dict[str, Any]:
    """The betas the motion module at ``path`` was trained with: those a MotionAdapter folder states in its own
    ``scheduler_config.json`` (the pack's demo model, trained with its checkpoint's scaled_linear betas), else
    AnimateDiff's (:data:`ANIMATEDIFF_BETAS`)."""
    p = os.path.join(path, MOTION_SCHEDULE_FILE)
    if os.path.isdir(path) and os.path.isfile(p):
        with open(p, encoding="utf-8") as fh:
            stated = json.load(fh)
        betas = {k: stated[k] for k in BETA_KEYS if k in stated}
        if "beta_schedule" not in betas and betas.get("trained_betas") is None:
            raise BadModelFileError(f"'{p}' names no beta_schedule (or trained_betas) for the motion module.")
        return {**ANIMATEDIFF_BETAS, **betas}
    return dict(ANIMATEDIFF_BETAS)


def with_motion_module(bb: Backbone, path: str) -> Backbone:
    """A new SD1.5 backbone whose UNet carries the motion module at ``path``; ``bb`` is left untouched
    (``UNetMotionModel.from_unet2d`` copies the 2D weights into a new module).  Its scheduler config takes the betas the
    motion module was trained with (:func:`motion_module_betas`: AnimateDiff's linear ones) over the checkpoint's;
    everything else (prediction type, timestep spacing, zero terminal SNR) stays the checkpoint's."""
    from diffusers import UNetMotionModel

    from ..errors import BadInputError

    if bb.family != "sd15":
        raise BadInputError(f"Motion modules work with SD1.5 pipes; this pipe is {bb.family}.")
    if bb.motion_adapter is not None:
        raise BadInputError("This pipe already has a motion module.")
    adapter = load_motion_adapter(path, device=bb.device, dtype=bb.dtype)
    unet = _place(UNetMotionModel.from_unet2d(bb.unet, adapter), bb.device, bb.dtype)
    sched = {**bb.scheduler_config, **motion_module_betas(path)}
    return bb.with_parts(unet=unet, motion_adapter=adapter, scheduler_config=sched,
                         source={"motion_module": path, "beta_schedule": sched["beta_schedule"]})


def unet2d_config(unet: torch.nn.Module) -> Dict[str, Any]:
    """The 2-D UNet config of an SD1.5 pipe's UNet (a ``UNet2DConditionModel``, or the 2-D part of a
    ``UNetMotionModel``)."""
    from diffusers import UNet2DConditionModel

    cfg = dict(unet.config)
    if isinstance(unet, UNet2DConditionModel):
        return {k: v for k, v in cfg.items() if not k.startswith("_")}
    two_d = {"CrossAttnDownBlockMotion": "CrossAttnDownBlock2D", "DownBlockMotion": "DownBlock2D",
             "CrossAttnUpBlockMotion": "CrossAttnUpBlock2D", "UpBlockMotion": "UpBlock2D"}
    heads = cfg.get("num_attention_heads") or cfg.get("attention_head_dim")
    return dict(sample_size=cfg.get("sample_size"), in_channels=cfg["in_channels"], out_channels=cfg["out_channels"],
                down_block_types=[two_d[t] for t in cfg["down_block_types"]],
                up_block_types=[two_d[t] for t in cfg["up_block_types"]],
                block_out_channels=cfg["block_out_channels"], layers_per_block=cfg["layers_per_block"],
                norm_num_groups=cfg["norm_num_groups"], cross_attention_dim=cfg["cross_attention_dim"],
                attention_head_dim=heads)


REFERENCE_UNET_UNUSED = ("conv_norm_out.", "conv_out.")  # the released ReferenceNets drop the output layers


def load_reference_unet(path: str, config: Dict[str, Any], device=None, dtype=None) -> torch.nn.Module:
    """A released ReferenceNet (``reference_unet.pth`` of Moore-AnimateAnyone, MusePose or Champ: a diffusers
    UNet2DConditionModel state dict without ``conv_norm_out`` / ``conv_out``) or any UNet of the same layout
    (a denoising UNet works too: SCD's reference is the denoising UNet itself), strictly."""
    from diffusers import UNet2DConditionModel

    from ..errors import BadModelFileError
    from .weights import read_state_dict

    sd = read_state_dict(path)
    with torch.device("meta"):
        unet = UNet2DConditionModel(**config)
    want = {k: tuple(v.shape) for k, v in unet.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in sd.items()}
    missing, extra, wrong = layout_diff(want, got, REFERENCE_UNET_UNUSED)
    if missing or extra or wrong:
        raise BadModelFileError(f"{path} is not a reference UNet for this pipe (a diffusers SD1.5-layout UNet2DConditionModel "
                                f"state dict, as AnimateAnyone / MusePose / Champ's reference_unet.pth): missing "
                                f"{missing[:3]}, unexpected {extra[:3]}, other shapes {[(k, got[k], want[k]) for k in wrong[:2]]}.")
    full = {k: sd[k] if k in sd else torch.zeros(want[k]) for k in want}  # output layers: unused by the write pass
    unet.load_state_dict(full, strict=True, assign=True)
    return _place(unet, device, dtype)


def with_reference_unet(bb: Backbone, path: str) -> Backbone:
    """A new SD1.5 backbone whose causal reference pass runs through the separate reference UNet at ``path``."""
    from ..errors import BadInputError

    if bb.family != "sd15":
        raise BadInputError(f"A separate reference UNet works with SD1.5 pipes (AnimateAnyone / Champ / MusePose); this "
                            f"pipe is {bb.family}.")
    ref = load_reference_unet(path, unet2d_config(bb.unet), bb.device, bb.dtype)
    return bb.with_parts(reference_unet=ref, source={"reference_unet": path})


def with_controlnet(bb: Backbone, path: str) -> Backbone:
    """A new SD1.5 backbone with the ControlNet at ``path`` attached; ``bb`` is left untouched."""
    from ..errors import BadInputError

    if bb.family != "sd15":
        raise BadInputError(f"ControlNets here are SD1.5 ControlNets; this pipe is {bb.family}.")
    cn = load_controlnet(path, device=bb.device, dtype=bb.dtype)
    return bb.with_parts(controlnet=cn, source={"controlnet": path})


def clone_module(module: torch.nn.Module) -> torch.nn.Module:
    """Deep copy for patch-a-clone workflows (processors, LoRA deltas) that must not touch the original."""
    return copy.deepcopy(module)


# ----------------------------------------------------------------------------- add-ons


def infer_clip_vision_config(sd: Dict[str, torch.Tensor], path: str = ""):
    """CLIPVisionConfig from a transformers-layout state dict (ComfyUI's ``models/clip_vision`` files)."""
    from transformers import CLIPVisionConfig

    pre = "vision_model."
    emb = _require(sd, pre + "embeddings.patch_embedding.weight", path, "a CLIP vision model")
    hidden, patch = emb.shape[0], emb.shape[-1]
    grid = int(round((sd[pre + "embeddings.position_embedding.weight"].shape[0] - 1) ** 0.5))
    layers = len(_indices(sd, r"vision_model\.encoder\.layers\.(\d+)\."))
    heads = hidden // 80 if hidden >= 1280 and hidden % 80 == 0 else max(1, hidden // 64)  # ViT-H/bigG: 80-d heads
    ref = reference_config("svd_image_encoder.json")
    ref.update(hidden_size=hidden, patch_size=patch, image_size=grid * patch, num_hidden_layers=layers,
               intermediate_size=sd[pre + "encoder.layers.0.mlp.fc1.weight"].shape[0], num_attention_heads=heads,
               projection_dim=sd["visual_projection.weight"].shape[0] if "visual_projection.weight" in sd else hidden,
               hidden_act="quick_gelu" if hidden == 1024 else "gelu")
    return CLIPVisionConfig(**ref)


def load_clip_vision(path: str, *, device=None, dtype=torch.float32):
    """A CLIP image encoder (``CLIPVisionModelWithProjection``, image processor) from ``models/clip_vision``:
    transformers layout (what ComfyUI ships/uses) or an open_clip ``visual.*`` state dict."""
    from transformers import CLIPVisionModelWithProjection

    from . import convert_svd

    sd = read_state_dict(path)
    if any(k.startswith("visual.") for k in sd):
        sd = convert_svd.clip_vision_keys_to_hf({k[len("visual."):]: v for k, v in sd.items() if k.startswith("visual.")})
    elif "conv1.weight" in sd:
        sd = convert_svd.clip_vision_keys_to_hf(sd)
    if "vision_model.embeddings.patch_embedding.weight" not in sd:
        raise BadModelFileError(f"'{os.path.basename(path)}' is not a CLIP vision model (no vision_model.* or visual.* keys).")
    model = CLIPVisionModelWithProjection(infer_clip_vision_config(sd, path))
    missing, unexpected = model.load_state_dict({k: v for k, v in sd.items() if not k.endswith("position_ids")}, strict=False)
    if missing:
        raise BadModelFileError(f"'{os.path.basename(path)}' lacks CLIP vision weights such as {missing[0]}.")
    return _place(model, device, dtype), convert_svd.default_image_processor()


def with_pose_controller(bb: Backbone, path: str) -> Backbone:
    from ..errors import BadInputError
    from ..guidance.pose_controller import load_pose_controller

    pc = load_pose_controller(path, device=bb.device, dtype=bb.dtype)
    lat = 4
    if pc.config["latent_channels"] != lat or pc.config["downsample"] != bb.vae_scale_factor:
        raise BadInputError(f"This pose controller outputs {pc.config['latent_channels']} channels at 1/{pc.config['downsample']} "
                            f"size; the pipe's latent has {lat} channels at 1/{bb.vae_scale_factor}.")
    from ..guidance.pose_controller import warn_if_silent

    warn_if_silent(pc, f"Add Pose Controller: {os.path.basename(path)}")
    return bb.with_parts(pose_controller=pc, source={"pose_controller": path})


def with_identity_adapter(bb: Backbone, path: Optional[str], clip_vision: Optional[str] = None,
                          arcface: Optional[str] = None) -> Backbone:
    """Attach an identity adapter (+ a CLIP image encoder for SD1.5, + an ArcFace ONNX model)."""
    from ..errors import BadInputError
    from ..attention.identity import load_identity_adapter

    parts: Dict[str, Any] = {}
    src: Dict[str, str] = {}
    if path:
        ad = load_identity_adapter(path, device=bb.device, dtype=bb.dtype)
        if ad.reads_hidden_states:
            raise BadInputError(f"{os.path.basename(path)} is an IP-Adapter plus / plus-face file (CLIP hidden states "
                                "through a resampler); the pipe feeds identity adapters CLIP image embeddings. Use it "
                                "with Apply Identity (native) on the MODEL.")
        from ..attention.identity import cross_attention_layers, warn_if_silent

        warn_if_silent(ad, f"Add Identity Adapter: {os.path.basename(path)}")

        missing = [n for n in cross_attention_layers(bb.unet) if n not in ad.config["layers"]]
        if missing:
            raise BadInputError(f"The identity adapter {os.path.basename(path)} was made for another UNet (no weights for {missing[0]}).")
        parts["identity_adapter"] = ad
        src["identity_adapter"] = path
    if clip_vision:
        if bb.family == "svd":
            raise BadInputError("SVD pipes already have their own CLIP image encoder; leave clip_vision empty.")
        enc, fe = load_clip_vision(clip_vision, device=bb.device, dtype=bb.dtype)
        parts.update(image_encoder=enc, feature_extractor=fe)
        src["clip_vision"] = clip_vision
    if arcface:
        from ..pose.face import ArcFace

        parts["arcface"] = ArcFace(arcface)
        src["arcface"] = arcface
    ad = parts.get("identity_adapter", bb.identity_adapter)
    enc = parts.get("image_encoder", bb.image_encoder)
    if ad is not None and clip_vision and not ad.config["num_image_tokens"]:
        raise BadInputError("clip_vision is given but this identity adapter has no CLIP-image tokens (a FaceID or face-only "
                            "adapter); it would be ignored. Set clip_vision to none.")
    if ad is not None and arcface and not ad.config["num_face_tokens"]:
        raise BadInputError("arcface is given but this identity adapter has no face tokens (a plain IP-Adapter); it would "
                            "be ignored. Set arcface to none, or use a FaceID adapter.")
    if ad is not None and ad.config["clip_dim"] and enc is not None and enc.config.projection_dim != ad.config["clip_dim"]:
        raise BadInputError(f"The identity adapter expects {ad.config['clip_dim']}-d CLIP embeddings; the CLIP vision model gives "
                            f"{enc.config.projection_dim}-d.")
    return bb.with_parts(source=src, **parts)
