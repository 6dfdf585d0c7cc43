"""Shared glue: model-folder registration, device/dtype choice, progress + interruption, socket types."""
from __future__ import annotations

import os
from typing import List, Sequence

import folder_paths
import torch
from comfy_api.latest import io

PIPE = io.Custom("PERFORMER_PIPE")
REFERENCE = io.Custom("PERFORMER_REFERENCE")
OPTIONS = io.Custom("PERFORMER_SAMPLER_OPTIONS")
POSE = io.Custom("PERFORMER_POSE")
POSE_KEYPOINT = io.Custom("POSE_KEYPOINT")
BODY = io.Custom("PERFORMER_BODY")
FLOW = io.Custom("PERFORMER_FLOW")
PARTS = io.Custom("PERFORMER_PARTS")  # the synthetic performer's material index per pixel (identity metric)  # comfyui_controlnet_aux's OpenPose-JSON type
NONE = "none"
CATEGORY = "Performer"

# Folder kinds the pack reads.  Core kinds are reused where users already keep weights;
# ``animatediff_models`` is also what AnimateDiff-Evolved registers, so both packs share it.
PACK_FOLDERS = {
    "performer_pose": ("performer/pose", {".onnx", ".pt", ".torchscript"}),
    "performer_body": ("performer/body", {".npz"}),
    "performer_adapters": ("performer/adapters", {".safetensors", ".pth"}),  # .pth: released pose guiders (weights only)
    "performer_personalised": ("performer/personalised", {".safetensors"}),
    "performer_face": ("performer/face", {".onnx"}),
    "animatediff_models": ("animatediff_models", {".ckpt", ".pt", ".pth", ".safetensors"}),
    "ipadapter": ("ipadapter", {".safetensors", ".bin"}),  # IP-Adapter files, the folder ComfyUI_IPAdapter_plus uses
}


def register_folders() -> None:
    """Add the pack's folder kinds (idempotent; keeps paths added by extra_model_paths.yaml)."""
    for kind, (sub, exts) in PACK_FOLDERS.items():
        default = os.path.join(folder_paths.models_dir, sub)
        entry = folder_paths.folder_names_and_paths.get(kind)
        if entry is None:
            folder_paths.folder_names_and_paths[kind] = ([default], set(exts))
            continue
        paths, known = entry
        if default not in paths:
            paths.append(default)
        if known:  # an empty set means "any file"; keep it that way
            known.update(exts)


def weight_choices(*kinds: str, with_dirs: bool = True) -> List[str]:
    """Files in the given folder kinds, plus diffusers-style sub-folders (those with a config)."""
    out: List[str] = []
    for kind in kinds:
        out += folder_paths.get_filename_list(kind)
        if with_dirs:
            out += diffusers_dirs(kind)
    return sorted(set(out))


def diffusers_dirs(kind: str) -> List[str]:
    found = []
    for base in folder_paths.get_folder_paths(kind):
        if not os.path.isdir(base):
            continue
        for root, dirs, files in os.walk(base, followlinks=True):
            if "model_index.json" in files or ("config.json" in files and any(f.endswith((".safetensors", ".bin")) for f in files)):
                found.append(os.path.relpath(root, base))
                dirs[:] = []
    return found


def resolve(name: str, kinds: Sequence[str]) -> str:
    """Full path of a file or diffusers folder chosen in a combo; a clear error if it is gone."""
    from ..models.errors import MissingModelError

    for kind in kinds:
        p = folder_paths.get_full_path(kind, name)
        if p:
            return p
        for base in folder_paths.get_folder_paths(kind):
            d = os.path.join(base, name)
            if os.path.isdir(d):
                return d
    searched = [p for k in kinds for p in folder_paths.get_folder_paths(k)]
    raise MissingModelError("/".join(kinds), [name], searched)


def input_files(ext: str) -> List[str]:
    """Files with extension ``ext`` in ComfyUI's input folder (for a file combo)."""
    d = folder_paths.get_input_directory()
    return sorted(f for f in os.listdir(d) if f.endswith(ext)) if os.path.isdir(d) else []


def input_path(name: str, what: str) -> str:
    """Full path of a file chosen from ComfyUI's input folder; a clear error naming the folder if it is gone."""
    from ..models.errors import BadInputError

    path = folder_paths.get_annotated_filepath(name) if name else ""
    if not name or not os.path.isfile(path):
        raise BadInputError(f"{what} {name!r} not found in ComfyUI's input folder ({folder_paths.get_input_directory()}).")
    return path


def comfy_tokenizer_dir() -> str:
    import comfy.sd1_clip

    return os.path.join(os.path.dirname(comfy.sd1_clip.__file__), "sd1_tokenizer")


def device_and_dtype(dtype_name: str):
    import comfy.model_management as mm

    from ..models.backbones.loaders import resolve_dtype

    device = mm.get_torch_device()
    if dtype_name == "auto":
        if device.type == "cpu":
            return device, resolve_dtype("fp32", device)
        return device, (resolve_dtype("bf16", device) if mm.should_use_bf16(device) else resolve_dtype("fp16", device))
    return device, resolve_dtype(dtype_name, device)


class _Held(torch.nn.Module):
    """A plain container, so core's ModelPatcher can set its bookkeeping attributes (``device`` is a read-only
    property on diffusers modules)."""

    def __init__(self, module: torch.nn.Module):
        super().__init__()
        self.held = module


def use_pipe(pipe) -> None:
    """Load every module of a pipe through ComfyUI's model management before a node computes with it: one core
    ``ModelPatcher`` per module (kept in ``pipe.managed``, shared by the pipes derived from it, so a shared module has
    one), fully loaded (the diffusers modules cannot run partly offloaded). ComfyUI then sees the pipe in its
    loaded-model list, can offload it to make room for other models, and "Free model and node cache" releases it: the
    patchers live only as long as the pipes that hold them."""
    import comfy.model_management as mm
    import comfy.model_patcher

    patchers = []
    for m in pipe.modules():
        p = pipe.managed.get(id(m))
        if p is None or p.model.held is not m:
            p = comfy.model_patcher.ModelPatcher(_Held(m), load_device=pipe.device, offload_device=mm.unet_offload_device())
            pipe.managed[id(m)] = p
        patchers.append(p)
    mm.load_models_gpu(patchers, force_full_load=True)


def release_pipe(pipe) -> None:
    """After a node computed with a pipe whose Load Backbone chose "offload after use" (``pipe.offload_after_use``):
    move its modules back to the offload device now (ComfyUI would otherwise keep them loaded until it needs the
    memory)."""
    if pipe is None or not pipe.offload_after_use:
        return
    import comfy.model_management as mm

    mine = {id(p) for p in pipe.managed.values()}
    for i in range(len(mm.current_loaded_models) - 1, -1, -1):
        lm = mm.current_loaded_models[i]
        if id(lm.model) in mine and lm.model_unload():
            mm.current_loaded_models.pop(i)
    mm.soft_empty_cache()


def uses_pipe(execute):
    """Decorator for a node's ``execute(cls, pipe, …)``: the pipe is loaded through ComfyUI's model management before
    (:func:`use_pipe`) and, when its Load Backbone said so, offloaded after, also on an error or Cancel."""
    import functools

    @functools.wraps(execute)
    def run(cls, *args, **kwargs):
        pipe = kwargs["pipe"] if "pipe" in kwargs else args[0]
        use_pipe(pipe)
        try:
            return execute(cls, *args, **kwargs)
        finally:
            release_pipe(pipe)

    return run


class Progress:
    """Step callback for ``models/`` loops: ComfyUI progress bar + interruption check."""

    def __init__(self, total: int):
        import comfy.utils

        self.bar = comfy.utils.ProgressBar(total)
        self.done, self.total = 0, total
        self.previewer = None
        self.previews = 0  # previews sent (diagnostics / tests)

    def __call__(self, done: int, total: int) -> None:
        import comfy.model_management as mm

        mm.throw_exception_if_processing_interrupted()
        self.done, self.total = done, total
        self.bar.update_absolute(done, total)

    def with_previews(self, pipe) -> "Progress":
        """Live latent previews for a pipe's sampling, with core's previewer (its --preview-method; latent-to-RGB
        factors or TAESD of the SD1.5 latent space, which SVD shares), as core's KSampler shows them."""
        import comfy.latent_formats
        import latent_preview

        self.previewer = latent_preview.get_previewer(pipe.device, comfy.latent_formats.SD15())
        return self

    def preview(self, latents) -> None:
        """One frame (the first) of the step's predicted clean video, sent with the progress."""
        if self.previewer is None:
            return
        img = self.previewer.decode_latent_to_preview_image("JPEG", latents[:1, :, 0].float())
        self.previews += 1
        self.bar.update_absolute(self.done, self.total, img)


DTYPE_INPUT = dict(options=["auto", "fp32", "fp16", "bf16"], default="auto",
                   tooltip="Weights/compute dtype. auto: bf16/fp16 on GPU (per ComfyUI's device checks), fp32 on CPU.")


# ---------------------------------------------------------------------------------------------------------- previews
# What the web extension (web/js/performer.js) draws under a node after it runs.  Custom ``ui`` keys, so the core
# image preview does not show the same frames twice:
#   performer_frames  — temp PNGs of (up to PREVIEW_FRAMES, downscaled) frames, played with a scrubber
#   performer_pose    — whole-body keypoints per frame (pixels of the pose canvas, confidence), drawn over the frames
#   performer_meta    — fps, label, and for grouped frames (IVR refreshes) the group sizes and labels
#   performer_metrics — a metrics dict, shown as a compact table
PREVIEW_FRAMES = 48
PREVIEW_SIDE = 256


def _preview_images(images, prefix: str):
    import torch
    import torch.nn.functional as F
    from comfy_api.latest import ui

    x = images[:PREVIEW_FRAMES].float().clamp(0, 1)
    h, w = int(x.shape[1]), int(x.shape[2])
    if max(h, w) > PREVIEW_SIDE:
        s = PREVIEW_SIDE / max(h, w)
        x = F.interpolate(x.permute(0, 3, 1, 2), size=(max(1, round(h * s)), max(1, round(w * s))), mode="area").permute(0, 2, 3, 1)
    with torch.no_grad():
        return [dict(r) for r in ui.ImageSaveHelper.save_images(x.cpu(), "performer_preview_" + prefix, io.FolderType.temp, None,
                                                               compress_level=1)]


def pose_json(pose, max_frames: int = PREVIEW_FRAMES) -> dict:
    """A compact, JSON-safe view of a PERFORMER_POSE (first person) for the browser."""
    import numpy as np

    k = np.nan_to_num(np.asarray(pose.keypoints[:max_frames, 0], np.float64))
    return {"width": int(pose.width), "height": int(pose.height), "fps": float(pose.fps), "frames": int(pose.frames),
            "keypoints": np.round(k, 2).tolist()}


def preview(prefix: str, images=None, pose=None, metrics=None, label: str = "", fps: float = 8.0, groups=None) -> dict:
    """The ``ui`` dict of a node: frames (IMAGE batch or a list of batches = groups), pose overlay, metrics."""
    out: dict = {}
    meta = {"label": label, "fps": float(fps)}
    if images is not None:
        grouped = isinstance(images, (list, tuple))
        saved = [_preview_images(b, f"{prefix}_{i}") for i, b in enumerate(images if grouped else [images])]
        out["performer_frames"] = [f for batch in saved for f in batch]
        if grouped:
            meta["groups"] = [len(batch) for batch in saved]
            meta["group_labels"] = list(groups or [f"{i + 1}" for i in range(len(saved))])
    if pose is not None:
        out["performer_pose"] = [pose_json(pose)]
        meta["fps"] = float(pose.fps)
    if metrics is not None:
        out["performer_metrics"] = [{k: (round(v, 5) if isinstance(v, float) else v) for k, v in metrics.items()}]
    out["performer_meta"] = [meta]
    return out
