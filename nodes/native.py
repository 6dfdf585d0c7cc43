"""Native: the pack's methods as patches on a clone of ComfyUI's own ``MODEL`` (core loaders, LoRAs, samplers, previews,
memory management and context windows all stay the user's).

Apply Causal Reference (SCD) — how the patch works on core models (SD1.5 family and SVD):

* The node returns ``model.clone()`` with one ``patches_replace["attn1"]`` entry per spatial self-attention layer
  (keyed ``(block, id, transformer index)`` as core's ``BasicTransformerBlock`` looks them up) and two wrappers:
  ``OUTER_SAMPLE`` opens and closes one sampling run (its reference cache lives exactly that long, also on error and
  interrupt), ``APPLY_MODEL`` runs the **write pass** before the first model call of the run: the reference latent
  through the same model at t = 0 (σ_min), one row, with the conditional row's conditioning.  Every layer caches its
  reference K/V, keyed by block and transformer index; the reference attends only to itself (causal).
* Later calls, every step and every context window of that run, **read**: target rows attend to
  ``[K_ref, K_target]`` (:func:`models.attention.maths.reference_attention`, the same maths as the pack's diffusers
  processors).  Rows of the unconditional CFG half read it in ``keep`` mode and do not in ``drop`` mode.
* SVD's temporal blocks share the block key with the spatial ones; a layer call is spatial when its rows are the
  frames and its tokens the H·W positions of ``activations_shape``.
* The input ``MODEL`` is never changed: everything lives in the clone's options, and the per-run state is dropped in
  ``finally``.

Apply Pose Guidance (VividPose) — the pack's pose controller on core models:

* ``OUTER_SAMPLE`` computes the controller's features of every frame once per run, at the run's latent size, on the
  model's load device (:func:`models.guidance.pose_controller.pose_features`, the function the pipe uses) and drops
  them when the run ends.
* A ``DIFFUSION_MODEL`` wrapper adds each frame's features to the scaled noisy input the UNet receives (for SVD only
  to the 4 noisy channels of the 8), in both CFG halves, as the pipe adds them after ``scale_model_input``.  The rows'
  frames come from core's context window (``transformer_options["context_window"].index_list``) or
  AnimateDiff-Evolved's (``ad_params["sub_idxs"]``), so long videos in windows get the right poses.
* During the causal reference's write pass (``transformer_options["performer_reference_pass"]``) the reference's own
  skeleton map is added instead, when given, and nothing otherwise.
"""
from __future__ import annotations

import logging
from typing import Dict, Optional, Tuple

import numpy as np
import torch
from comfy_api.latest import io

from ._common import CATEGORY

CAT = f"{CATEGORY}/native"
KEY = "performer_causal_reference"
POSE_KEY = "performer_pose_guidance"
IDENTITY_KEY = "performer_identity"
KEYFRAME_KEY = "performer_keyframe"
LATENT_EDIT_KEY = "performer_latent_edit"
REFERENCE_PASS = "performer_reference_pass"  # transformer_options flag set during the causal reference's write pass


def frame_indices(transformer_options: dict, n: int) -> list:
    """The video frames the rows of this model call hold: core's context window (``context_window.index_list``),
    AnimateDiff-Evolved's (``ad_params["sub_idxs"]``), or all frames in order."""
    win = transformer_options.get("context_window")
    idx = getattr(win, "index_list", None)
    if idx is None:
        ad = transformer_options.get("ad_params") or {}
        idx = ad.get("sub_idxs")
    idx = list(range(n)) if idx is None else [int(i) for i in idx]
    if len(idx) != n:
        raise ValueError(f"The model call holds {n} frames per CFG half but its context window lists {len(idx)}.")
    return idx


def row_frames(transformer_options: dict, rows: int, available: int, who: str) -> Tuple[list, list]:
    """(cond_or_uncond of the call, the video frame of each row of one CFG half) for a patch that adds per-frame
    features: the rows must split into the call's CFG halves, and every frame of the context window must have
    features (``available`` frames)."""
    cond_or_uncond = list(transformer_options.get("cond_or_uncond", [0])) or [0]
    halves = len(cond_or_uncond)
    if rows % halves:
        raise ValueError(f"{who}: {rows} rows do not split into {halves} CFG halves.")
    idx = frame_indices(transformer_options, rows // halves)
    if max(idx) >= available:
        raise ValueError(f"{who}: frame {max(idx)} is sampled but pose features exist for {available} frames.")
    return cond_or_uncond, idx


class _Run:
    """One sampling run's reference state."""

    def __init__(self):
        self.cache: Dict[Tuple, Tuple[torch.Tensor, torch.Tensor]] = {}
        self.mode = "off"  # off | write | read
        self.written = False
        self.reads_rows: Optional[torch.Tensor] = None  # bool per row of the current call
        self.active = False  # inside start/end percent at the current call
        self.sigma_range = (0.0, float("inf"))  # (σ at end_percent, σ at start_percent), set with the write pass
        self.targets: dict = {}  # with a separate reference model: layer key → the denoising model's attn1


class CausalReferencePatch:
    """The patch object the clone's options hold (shared, not copied, when ComfyUI deep-copies model options)."""

    def __init__(self, latent: torch.Tensor, strength: float, uncond: str, start_percent: float, end_percent: float,
                 reference_model=None):
        self.latent = latent  # (1, C, h, w) raw VAE latent of the reference (process_latent_in at run time)
        # a separate reference model (AnimateAnyone / Champ / MusePose ReferenceNet, a core ModelPatcher): the write pass
        # runs through it and caches each self-attention's input tokens, which the denoising model's own to_k / to_v
        # project at the first read (as those projects' reference attention does); None: SCD, the same model
        self.reference_model = reference_model
        self.strength, self.uncond = float(strength), uncond
        self.start_percent, self.end_percent = float(start_percent), float(end_percent)
        self.run: Optional[_Run] = None
        self.runs = 0  # sampling runs seen (diagnostics / tests)
        self.writes = 0  # reference passes run, over all runs
        self.reads = 0  # layer reads, over all runs
        self.last_run: Optional[_Run] = None

    def __deepcopy__(self, memo):
        return self  # immutable settings + per-run state that only a running sampler touches

    # ------------------------------------------------------------------ OUTER_SAMPLE: one run
    def outer_sample(self, executor, *args, **kwargs):
        self.run = _Run()
        self.runs += 1
        try:
            return executor(*args, **kwargs)
        finally:
            self.last_run, self.run = self.run, None
            self.last_run.cache.clear()

    # ------------------------------------------------------------------ APPLY_MODEL: write once, then read
    def apply_model(self, executor, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options={}, **kwargs):
        run = self.run
        if run is None or self.strength == 0.0:
            return executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)
        base = executor.class_obj
        ms = base.model_sampling
        cond_or_uncond = list(transformer_options.get("cond_or_uncond", [0]))
        n = x.shape[0] // max(len(cond_or_uncond), 1)
        if not run.written:
            if self.reference_model is not None:
                self._write_separate(base, x, c_crossattn, cond_or_uncond, n)
            else:
                self._write(executor, base, x, c_concat, c_crossattn, transformer_options, kwargs, cond_or_uncond, n)
            run.sigma_range = _sigma_range(ms, self.start_percent, self.end_percent)
        run.active = _in_range(run.sigma_range, t)
        run.reads_rows = None if self.uncond == "keep" else \
            torch.tensor([cond_or_uncond[min(r // n, len(cond_or_uncond) - 1)] == 0 for r in range(x.shape[0])])
        run.mode = "read"
        try:
            return executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)
        finally:
            run.mode = "off"

    def _write(self, executor, base, x, c_concat, c_crossattn, topts, kwargs, cond_or_uncond, n):
        """The reference pass: one row, t = 0 (σ_min), the first conditional row's conditioning."""
        run = self.run
        ms = base.model_sampling
        row = cond_or_uncond.index(0) * n if 0 in cond_or_uncond else 0
        lat = base.process_latent_in(self.latent.to(x.device, torch.float32))
        if lat.shape[-2:] != x.shape[-2:]:
            raise ValueError(f"Apply Causal Reference: the reference latent is {tuple(lat.shape[-2:])} but the video latent "
                             f"is {tuple(x.shape[-2:])}; resize the reference image to the video size.")
        sigma = ms.sigma_min.to(x.device, torch.float32).reshape(1)
        # core's calculate_input divides by √(σ²+1); the UNet then sees what the pack's pipe gives it in its own
        # reference pass: SVD x/√(σ_min²+1) at σ_min; the SD family the clean latent at t = 0 (σ_min maps to t = 0).
        import comfy.model_base

        x_ref = lat if isinstance(base, comfy.model_base.SVD_img2vid) else lat * (sigma ** 2 + 1) ** 0.5
        # AnimateDiff-Evolved's motion modules reshape the rows into clips of its current window length: there the
        # reference passes as a still clip of that length and every layer keeps frame 0's K/V (one row, as always)
        reps = n if "ad_params" in topts else 1
        one = lambda v: (v[row:row + 1].repeat(reps, *[1] * (v.ndim - 1))  # noqa: E731
                         if torch.is_tensor(v) and v.shape[:1] == x.shape[:1] else v)
        kw = {k: one(v) for k, v in kwargs.items()}
        if "num_video_frames" in kw:
            kw["num_video_frames"] = 1
        topts = {**topts, "cond_or_uncond": [0], REFERENCE_PASS: True}
        x_ref = x_ref.repeat(reps, 1, 1, 1)
        run.mode = "write"
        try:
            with torch.no_grad():
                executor(x_ref.to(x.dtype), sigma.expand(reps).to(x.dtype), one(c_concat), one(c_crossattn), None, topts,
                         **kw)
        finally:
            run.mode = "off"
        run.written = True
        self.writes += 1

    def _write_separate(self, base, x, c_crossattn, cond_or_uncond, n):
        """The reference pass through the separate reference model: one row at its σ_min (t = 0), the first conditional
        row's cross-attention context; an ``attn1_patch`` keeps each self-attention's (normed) input tokens."""
        run = self.run
        ref = self.reference_model.model
        row = cond_or_uncond.index(0) * n if 0 in cond_or_uncond else 0
        lat = ref.process_latent_in(self.latent.to(x.device, torch.float32))
        if lat.shape[-2:] != x.shape[-2:]:
            raise ValueError(f"Apply Causal Reference: the reference latent is {tuple(lat.shape[-2:])} but the video latent "
                             f"is {tuple(x.shape[-2:])}; resize the reference image to the video size.")
        sigma = ref.model_sampling.sigma_min.to(x.device, torch.float32).reshape(1)
        run.targets = {k: blk.attn1 for k, blk in _transformer_blocks(base.diffusion_model)}

        def keep(h, context, value, extra_options):
            if context is h and value is h:  # plain self-attention (nothing else rewrote its keys)
                key = (*extra_options["block"], extra_options.get("block_index", 0))
                run.cache[key] = ("tokens", h[:1].detach())
            return h, context, value

        topts = dict(self.reference_model.model_options.get("transformer_options", {}))
        patches = dict(topts.get("patches", {}))
        patches["attn1_patch"] = list(patches.get("attn1_patch", [])) + [keep]
        topts.update(patches=patches, cond_or_uncond=[0], sigmas=sigma)
        topts[REFERENCE_PASS] = True
        ctx = c_crossattn[row:row + 1] if torch.is_tensor(c_crossattn) else c_crossattn
        run.mode = "write"
        try:
            with torch.no_grad():
                ref.apply_model(lat * (sigma ** 2 + 1) ** 0.5, sigma, c_crossattn=ctx, transformer_options=topts)
        finally:
            run.mode = "off"
        if not run.cache:
            raise ValueError("Apply Causal Reference: the reference model's pass reached no self-attention layer, so there "
                             "is nothing to read; is it an SD1.5-family UNet?")
        if len(run.cache) < len(run.targets):
            logging.warning("Apply Causal Reference: the reference model gave tokens to %d of %d self-attention layers "
                            "(another patch on it rewrote the others' keys); those layers read no reference.",
                            len(run.cache), len(run.targets))
        run.written = True
        self.writes += 1

    # ------------------------------------------------------------------ attn1 replace
    def attn1(self, q, k, v, extra_options):
        from comfy.ldm.modules.attention import optimized_attention

        heads = extra_options["n_heads"]
        prec = extra_options.get("attn_precision")

        def plain(q_, k_, v_, h_):
            return optimized_attention(q_, k_, v_, h_, attn_precision=prec)

        run = self.run
        if run is None or run.mode == "off" or not self._spatial(q, extra_options):
            return plain(q, k, v, heads)
        key = (*extra_options["block"], extra_options.get("block_index", 0))
        if run.mode == "write":
            if self.reference_model is None:
                run.cache[key] = (k[:1].detach(), v[:1].detach())  # one row (frame 0 of ADE's still clip)
            return plain(q, k, v, heads)
        if not run.active or key not in run.cache:
            return plain(q, k, v, heads)
        from ..models.attention import maths as AM

        if isinstance(run.cache[key][0], str):  # the separate reference model's tokens, projected once by this layer
            attn1 = run.targets.get(key)
            if attn1 is None:
                raise ValueError(f"Apply Causal Reference: the reference model has a self-attention at {key} that the "
                                 "denoising model lacks; both must be the same UNet layout (SD1.5).")
            with torch.no_grad():
                tokens = run.cache[key][1].to(q.device, q.dtype)
                run.cache[key] = (attn1.to_k(tokens).to(k.dtype), attn1.to_v(tokens).to(v.dtype))
        kr, vr = run.cache[key]
        self.reads += 1

        def attend(q_, k_, v_, h_, bias):  # core's own attention kernel (its back-end choice), the bias as its mask
            return optimized_attention(q_, k_, v_, h_, mask=bias, attn_precision=prec)

        return AM.reference_attention(q, k, v, heads, kr, vr, self.strength, run.reads_rows, attend=attend, plain=plain)

    @staticmethod
    def _spatial(q, extra_options) -> bool:
        shape = extra_options.get("activations_shape")
        if not shape or len(shape) < 4:
            return True
        return q.shape[0] == shape[0] and q.shape[1] == shape[-2] * shape[-1]


def _spatial_transformers(diffusion_model):
    """(block name, block id, layer) of every spatial transformer of core's UNet (``SpatialVideoTransformer`` is a
    subclass), in the order core runs them: input blocks, middle block, output blocks."""
    from comfy.ldm.modules.attention import SpatialTransformer

    blocks = [("input", i, b) for i, b in enumerate(diffusion_model.input_blocks)] + [("middle", 0, diffusion_model.middle_block)] \
        + [("output", i, b) for i, b in enumerate(diffusion_model.output_blocks)]
    for name, i, block in blocks:
        for layer in block:
            if isinstance(layer, SpatialTransformer):
                yield name, i, layer


def _transformer_blocks(diffusion_model):
    """((block name, block id, transformer index), transformer block) of every spatial transformer block."""
    return [((name, i, j), blk) for name, i, layer in _spatial_transformers(diffusion_model)
            for j, blk in enumerate(layer.transformer_blocks)]


def spatial_self_attention_keys(diffusion_model) -> list:
    """(block name, block id, transformer index) of every spatial self-attention layer core's UNet will look up."""
    return [(name, i, j) for name, i, layer in _spatial_transformers(diffusion_model)
            for j in range(len(layer.transformer_blocks))]


def _check_percents(start_percent: float, end_percent: float) -> None:
    from ..models.errors import BadInputError

    if not 0.0 <= start_percent <= end_percent <= 1.0:
        raise BadInputError(f"Need 0 <= start_percent <= end_percent <= 1; got {start_percent}, {end_percent}.")


def _sigma_range(model_sampling, start_percent: float, end_percent: float) -> Tuple[float, float]:
    """(σ at end_percent, σ at start_percent): a call is inside the patch's range when its σ lies between them."""
    return float(model_sampling.percent_to_sigma(end_percent)), float(model_sampling.percent_to_sigma(start_percent))


def _in_range(sigma_range, sigma) -> bool:
    """Whether a call's σ (a tensor, or None when the caller passes none) lies in ``sigma_range`` (None: always)."""
    if sigma_range is None or sigma is None:
        return True
    return sigma_range[0] <= float(sigma.flatten()[0]) <= sigma_range[1]


def _replaced(model, kind: str, keys) -> Tuple[list, dict]:
    """The layers among ``keys`` that already carry a ``patches_replace[kind]`` entry (per layer or per block)."""
    taken = model.model_options.get("transformer_options", {}).get("patches_replace", {}).get(kind, {})
    return [k for k in keys if k in taken or k[:2] in taken], taken


def apply_causal_reference(model, latent: torch.Tensor, strength: float = 1.0, uncond: str = "auto",
                           start_percent: float = 0.0, end_percent: float = 1.0, reference_model=None):
    """A clone of core ``model`` with causal reference attention to ``latent`` (raw VAE latent, (1, C, h, w)).
    ``reference_model``: a separate reference model (core MODEL, SD1.5 family) for the write pass.
    Returns (clone, patch)."""
    import comfy.model_base
    import comfy.patcher_extension as pe

    from ..models.errors import BadInputError

    if strength < 0:
        raise BadInputError(f"strength must be >= 0; got {strength}.")
    _check_percents(start_percent, end_percent)
    from .native_wan import apply_wan_causal_reference, wan_diffusion_model

    if wan_diffusion_model(model) is not None:
        if reference_model is not None:
            raise BadInputError("A separate reference model is for SD1.5-family UNets (AnimateAnyone / Champ / MusePose "
                                "ReferenceNets); on Wan the reference passes through the same model. Disconnect "
                                "reference_model.")
        return apply_wan_causal_reference(model, latent, strength, uncond, start_percent, end_percent)
    dm = getattr(model.model, "diffusion_model", None)
    if dm is None or not hasattr(dm, "input_blocks"):
        raise BadInputError(f"Apply Causal Reference supports UNet models (SD1.5 family, SVD) and Wan 2.x; this MODEL is "
                            f"{type(model.model).__name__}.")
    keys = spatial_self_attention_keys(dm)
    if not keys:
        raise BadInputError("This MODEL has no spatial self-attention layers to attach the reference to.")
    if latent.ndim != 4 or latent.shape[0] != 1:
        raise BadInputError(f"The reference latent must be one image (1, C, h, w); got {tuple(latent.shape)}.")
    if uncond == "auto":
        uncond = "keep" if isinstance(model.model, comfy.model_base.SVD_img2vid) else "drop"
    if uncond not in ("drop", "keep"):
        raise BadInputError(f"uncond must be auto, drop or keep; got {uncond!r}.")
    clash, taken = _replaced(model, "attn1", keys)
    if clash:
        owner = getattr(getattr(taken.get(clash[0], taken.get(clash[0][:2])), "__self__", None), "__class__", type(None)).__name__
        raise BadInputError(f"This MODEL already has a self-attention replacement on {len(clash)} layers (first {clash[0]}, "
                            f"from {owner}); a second one would silently replace it. Apply Causal Reference once, to a "
                            "model without other attn1 replacements.")
    if reference_model is not None:
        _check_reference_model(model, reference_model)
    patch = CausalReferencePatch(latent.detach().to("cpu", torch.float32), strength, uncond, start_percent, end_percent,
                                 reference_model)
    m = model.clone()
    if reference_model is not None:  # loaded and freed with the sampled model, under core's memory management
        m.set_additional_models(KEY, [reference_model])
    for name, i, j in keys:
        m.set_model_attn1_replace(patch.attn1, name, i, j)
    m.add_wrapper_with_key(pe.WrappersMP.OUTER_SAMPLE, KEY, patch.outer_sample)
    m.add_wrapper_with_key(pe.WrappersMP.APPLY_MODEL, KEY, patch.apply_model)
    return m, patch


def _check_reference_model(model, reference_model) -> None:
    import comfy.model_base

    from ..models.errors import BadInputError

    for what, m in (("model", model), ("reference_model", reference_model)):
        if type(getattr(m, "model", None)) is not comfy.model_base.BaseModel:
            raise BadInputError(f"A separate reference model works on SD1.5-family UNets (AnimateAnyone / Champ / "
                                f"MusePose); {what} is {type(getattr(m, 'model', m)).__name__}.")
    if reference_model is model or reference_model.model is model.model:
        raise BadInputError("reference_model is the sampled model itself; leave reference_model unconnected for SCD's "
                            "same-model reference pass.")
    a = {k: tuple(b.attn1.to_k.weight.shape) for k, b in _transformer_blocks(model.model.diffusion_model)}
    r = {k: tuple(b.attn1.to_k.weight.shape) for k, b in _transformer_blocks(reference_model.model.diffusion_model)}
    if a != r:
        raise BadInputError(f"reference_model's self-attention layers ({len(r)}) do not match the model's ({len(a)}) in "
                            "place and width; the reference tokens could not be projected. Use the ReferenceNet made for "
                            "this denoising UNet (SD1.5).")


class _PoseRun:
    def __init__(self, feats, ref_feat, sigma_range):
        self.feats, self.ref_feat, self.sigma_range = feats, ref_feat, sigma_range
        self.calls: list = []  # frame indices per call (diagnostics / tests)


class PoseGuidancePatch:
    """VividPose's pose guidance on a core MODEL: the controller's features of each frame's skeleton map / SMPL-X render
    are added to the model's (scaled) noisy input, as the pack's pipe adds them, through a ``DIFFUSION_MODEL`` wrapper.
    Features are computed once per sampling run (``OUTER_SAMPLE``) at the run's latent size on the model's device and
    released when it ends; each call picks its frames by the context window's indices."""

    def __init__(self, controller, skeleton, smplx, reference_pose, strength: float, start_percent: float, end_percent: float,
                 reference_smplx=None):
        self.controller = controller  # the pack's PoseController (CPU, eval); moved to the load device for the run only
        self.skeleton, self.smplx = skeleton, smplx  # IMAGE batches or None
        self.reference_pose, self.reference_smplx = reference_pose, reference_smplx  # one IMAGE each, or None
        self.strength, self.start_percent, self.end_percent = float(strength), float(start_percent), float(end_percent)
        self.run: Optional[_PoseRun] = None
        self.runs = 0
        self.last_calls: list = []

    def __deepcopy__(self, memo):
        return self

    def _features(self, frames: int, h: int, w: int, device):
        from ..models.guidance.pose_controller import maps_to_tensor, pose_features

        ds = self.controller.config["downsample"]
        sk = None if self.skeleton is None else maps_to_tensor(self.skeleton, h * ds, w * ds, frames, "skeleton maps")
        sm = None if self.smplx is None else maps_to_tensor(self.smplx, h * ds, w * ds, frames, "SMPL-X renders")
        pc = self.controller.to(device)
        try:
            with torch.no_grad():
                feats = pose_features(pc, sk, sm, self.strength)
                ref = None
                if self.reference_pose is not None or self.reference_smplx is not None:
                    rp = None if self.reference_pose is None else \
                        maps_to_tensor(self.reference_pose, h * ds, w * ds, 1, "reference pose")
                    rs = None if self.reference_smplx is None else \
                        maps_to_tensor(self.reference_smplx, h * ds, w * ds, 1, "reference SMPL-X render")
                    ref = pose_features(pc, rp, rs, self.strength)
        finally:
            self.controller.to("cpu")
        return feats, ref

    def outer_sample(self, executor, noise, latent_image, *args, **kwargs):
        guider = executor.class_obj
        ms = guider.model_patcher.get_model_object("model_sampling")
        frames, h, w = latent_image.shape[0], latent_image.shape[-2], latent_image.shape[-1]
        feats, ref = self._features(frames, h, w, guider.model_patcher.load_device)
        self.run = _PoseRun(feats, ref, _sigma_range(ms, self.start_percent, self.end_percent))
        self.runs += 1
        try:
            return executor(noise, latent_image, *args, **kwargs)
        finally:
            self.last_calls, self.run = self.run.calls, None

    def diffusion_model(self, executor, x, timesteps, context=None, y=None, control=None, transformer_options={}, **kwargs):
        run = self.run
        if run is None or run.feats is None or self.strength == 0.0:
            return executor(x, timesteps, context, y, control, transformer_options, **kwargs)
        if transformer_options.get(REFERENCE_PASS):
            add = run.ref_feat  # the reference's own pose / render, when given (the pipe's reference_pose option)
        else:
            if not _in_range(run.sigma_range, transformer_options.get("sigmas")):
                return executor(x, timesteps, context, y, control, transformer_options, **kwargs)
            cond_or_uncond, idx = row_frames(transformer_options, x.shape[0], run.feats.shape[0], "Apply Pose Guidance")
            run.calls.append(idx)
            add = run.feats[idx].repeat(len(cond_or_uncond), 1, 1, 1)
        if add is not None:
            c = add.shape[1]
            x = torch.cat([x[:, :c] + add.to(x.device, x.dtype), x[:, c:]], 1)  # SVD: only the noisy half of 8 channels
        return executor(x, timesteps, context, y, control, transformer_options, **kwargs)


def apply_pose_guidance(model, controller, skeleton=None, smplx=None, reference_pose=None, strength: float = 1.0,
                        start_percent: float = 0.0, end_percent: float = 1.0, reference_smplx=None):
    """A clone of core ``model`` whose input gets the pose controller's features (``controller``: the pack's
    ``PoseController``; maps: IMAGE batches). Returns (clone, patch)."""
    import comfy.patcher_extension as pe

    from ..models.errors import BadInputError

    if not hasattr(getattr(model.model, "diffusion_model", None), "input_blocks"):
        raise BadInputError(f"Apply Pose Guidance supports UNet models (SD1.5 family, SVD); this MODEL is "
                            f"{type(model.model).__name__}. For Wan 2.2 Animate, connect the skeleton maps to "
                            "WanAnimateToVideo's pose_video.")
    if skeleton is None and smplx is None:
        raise BadInputError("Apply Pose Guidance needs skeleton maps, SMPL-X renders or both; neither is connected.")
    kinds = [k for k, v in (("skeleton", skeleton), ("smplx", smplx)) if v is not None]
    from ..models.guidance.pose_controller import warn_if_silent

    warn_if_silent(controller, "Apply Pose Guidance: this pose controller")
    missing = [k for k in kinds if k not in controller.encoders]
    if missing:
        raise BadInputError(f"This pose controller has no encoder for {', '.join(missing)} (it has: "
                            f"{', '.join(controller.encoders)}); those maps would be ignored. Disconnect them or use a "
                            "controller trained on them.")
    if reference_pose is not None and "skeleton" not in controller.encoders:
        raise BadInputError("reference_pose is a skeleton map, but this pose controller has no skeleton encoder.")
    if reference_smplx is not None and "smplx" not in controller.encoders:
        raise BadInputError("reference_smplx is an SMPL-X render, but this pose controller has no smplx encoder.")
    if skeleton is not None and smplx is not None and skeleton.shape[0] != smplx.shape[0]:
        raise BadInputError(f"skeleton has {skeleton.shape[0]} frames but smplx has {smplx.shape[0]}; they must come "
                            "from the same driving video.")
    if strength < 0:
        raise BadInputError(f"strength must be >= 0; got {strength}.")
    _check_percents(start_percent, end_percent)
    lc = controller.config["latent_channels"]
    mc = getattr(model.model.latent_format, "latent_channels", lc)
    if lc != mc:
        raise BadInputError(f"The pose controller makes {lc}-channel features but this MODEL's latent has {mc} channels.")
    if POSE_KEY in model.wrappers.get(pe.WrappersMP.DIFFUSION_MODEL, {}):
        raise BadInputError("This MODEL already has Apply Pose Guidance; apply it once (a second would add the poses twice).")
    patch = PoseGuidancePatch(controller.eval().requires_grad_(False), skeleton, smplx, reference_pose, strength,
                              start_percent, end_percent, reference_smplx)
    m = model.clone()
    m.add_wrapper_with_key(pe.WrappersMP.OUTER_SAMPLE, POSE_KEY, patch.outer_sample)
    m.add_wrapper_with_key(pe.WrappersMP.DIFFUSION_MODEL, POSE_KEY, patch.diffusion_model)
    return m, patch


def cross_attention_keys(diffusion_model) -> Dict[Tuple, str]:
    """Core ``attn2`` key ``(block, id, transformer index)`` → the diffusers name of the same layer
    (``down_blocks.i.attentions.j.transformer_blocks.t.attn2`` …), for the SD1.5-family UNet layout: input block ids
    count a conv, then per level its res(+attention) blocks and a downsample; output blocks count res(+attention)
    blocks per level, the upsample living inside the level's last block."""
    nrb = list(diffusion_model.num_res_blocks)

    def level(i: int, per_level: list) -> Tuple[int, int]:  # block id (from the level's first) → (level, index)
        lvl = 0
        while i > per_level[lvl]:
            i -= per_level[lvl] + 1
            lvl += 1
        return lvl, i

    out: Dict[Tuple, str] = {}
    for name, i, layer in _spatial_transformers(diffusion_model):
        if name == "input":
            lvl, j = level(i - 1, nrb)
            prefix = f"down_blocks.{lvl}.attentions.{j}"
        elif name == "middle":
            prefix = "mid_block.attentions.0"
        else:
            lvl, j = level(i, list(reversed(nrb)))
            prefix = f"up_blocks.{lvl}.attentions.{j}"
        for t in range(len(layer.transformer_blocks)):
            out[(name, i, t)] = f"{prefix}.transformer_blocks.{t}.attn2"
    return out


def temporal_cross_attention_keys(diffusion_model) -> Dict[Tuple, str]:
    """SVD: core ``attn2`` key → the diffusers name of the *temporal* block's cross-attention that core runs under the
    same key (``SpatialVideoTransformer.time_stack[t]``, diffusers' ``temporal_transformer_blocks.t``)."""
    from comfy.ldm.modules.attention import SpatialVideoTransformer

    video = {(name, i) for name, i, layer in _spatial_transformers(diffusion_model) if isinstance(layer, SpatialVideoTransformer)}
    return {k: n.replace(".transformer_blocks.", ".temporal_transformer_blocks.")
            for k, n in cross_attention_keys(diffusion_model).items() if k[:2] in video}


class _RunRangePatch:
    """Base of the patches that act between start_percent and end_percent of each sampling run: ``OUTER_SAMPLE`` sets
    the run's σ range and clears it when the run ends (also on error and interrupt); :meth:`active` tests a call."""

    def __init__(self, start_percent: float, end_percent: float):
        self.start_percent, self.end_percent = float(start_percent), float(end_percent)
        self.sigma_range: Optional[Tuple[float, float]] = None

    def __deepcopy__(self, memo):
        return self  # settings + state only a running sampler touches: shared, not copied, with the options

    def outer_sample(self, executor, *args, **kwargs):
        ms = executor.class_obj.model_patcher.get_model_object("model_sampling")
        self.sigma_range = _sigma_range(ms, self.start_percent, self.end_percent)
        try:
            return executor(*args, **kwargs)
        finally:
            self.sigma_range = None

    def active(self, extra_options) -> bool:
        return _in_range(self.sigma_range, extra_options.get("sigmas"))


class IdentityPatch(_RunRangePatch):
    """Decoupled cross-attention (IP-Adapter / VividPose) as ``attn2`` replacements on a core MODEL: the layer's own
    cross-attention plus, per token kind, a scaled attention over that kind's keys/values, which are projected once
    here (conditional tokens from the embeddings, unconditional ones from zero embeddings, as in the pipe), so the
    adapter module itself is not kept."""

    def __init__(self, kv: Dict[Tuple, list], scales: Tuple[float, float], start_percent: float, end_percent: float,
                 kv_temporal: Optional[Dict[Tuple, list]] = None):
        self.kv = kv  # core key → [(k_cond, v_cond, k_uncond, v_uncond, kind)], each (1, tokens, c) on the CPU
        super().__init__(start_percent, end_percent)
        self.kv_temporal = kv_temporal or {}  # SVD: the same for the temporal block under that key
        self.temporal_reads = 0
        self.scales = {"image": float(scales[0]), "face": float(scales[1])}
        self.reads = 0

    def attn2(self, q, k, v, extra_options):
        from comfy.ldm.modules.attention import optimized_attention

        from ..models.attention import maths as AM

        heads, prec = extra_options["n_heads"], extra_options.get("attn_precision")

        def attend(q_, k_, v_, h_):
            return optimized_attention(q_, k_, v_, h_, attn_precision=prec)

        if not self.active(extra_options):
            return attend(q, k, v, heads)
        key = (*extra_options["block"], extra_options.get("block_index", 0))
        spatial = CausalReferencePatch._spatial(q, extra_options)
        table = self.kv if spatial else self.kv_temporal
        if key not in table:
            return attend(q, k, v, heads)
        # rows are CFG-half-major in both kinds of call: frames of each half (spatial), or each half's h·w positions
        # (SVD's temporal blocks, whose tokens are the frames)
        halves = list(extra_options.get("cond_or_uncond", [0])) or [0]
        n = q.shape[0] // len(halves)
        extra = []
        for kc, vc, ku, vu, kind in table[key]:
            pick = lambda c, u: torch.cat([(c if h == 0 else u).to(q.device).expand(n, -1, -1) for h in halves])  # noqa: E731
            extra.append((pick(kc, ku), pick(vc, vu), self.scales[kind]))
        self.reads += 1
        self.temporal_reads += not spatial
        return AM.decoupled_cross_attention(q, k, v, heads, extra, attend)


def apply_identity(model, adapter, clip_embeds: Optional[torch.Tensor] = None, face_embeds: Optional[torch.Tensor] = None,
                   image_scale: float = 1.0, face_scale: float = 1.0, start_percent: float = 0.0, end_percent: float = 1.0,
                   uncond_clip: Optional[torch.Tensor] = None):
    """A clone of core ``model`` (SD1.5 family, or SVD: then face tokens in the spatial and the temporal blocks'
    cross-attention, as the pipe's SVD adapter has them) with the pack's identity adapter on every cross-attention
    layer. ``clip_embeds``: (1, D) projected CLIP image embedding, or for an IP-Adapter plus (1, tokens, D) penultimate
    hidden states, then with ``uncond_clip`` those of the unconditional image; ``face_embeds``: (1, 512) ArcFace.
    Returns (clone, patch)."""
    import comfy.model_base
    import comfy.patcher_extension as pe

    from ..models.attention.identity import _key
    from ..models.errors import BadInputError

    c = adapter.config
    dm = getattr(model.model, "diffusion_model", None)
    if dm is None or not hasattr(dm, "input_blocks"):
        raise BadInputError(f"Apply Identity supports UNet models (SD1.5 family, SVD); this MODEL is {type(model.model).__name__}.")
    is_svd = isinstance(model.model, comfy.model_base.SVD_img2vid)
    if min(image_scale, face_scale) < 0:
        raise BadInputError(f"image_scale and face_scale must be >= 0; got {image_scale}, {face_scale}.")
    _check_percents(start_percent, end_percent)
    uses_image = bool(c["num_image_tokens"]) and image_scale > 0
    if uses_image and clip_embeds is None:
        raise BadInputError("This identity adapter has CLIP-image tokens but no clip_vision_output is connected; connect "
                            "CLIP Vision Encode of the reference, or set image_scale to 0.")
    if clip_embeds is not None and not c["num_image_tokens"]:
        raise BadInputError("clip_vision_output is connected but this identity adapter has no CLIP-image tokens; it "
                            "would be ignored. Disconnect it" + (" (SVD reads the CLIP embedding through its own "
                                                                  "conditioning)." if is_svd else "."))
    if uses_image and adapter.reads_hidden_states and uncond_clip is None:
        raise BadInputError("This identity adapter (IP-Adapter plus) needs the unconditional image's CLIP hidden states "
                            "too; connect the CLIP vision model (clip_vision).")
    has_face = bool(c["num_face_tokens"])
    if face_embeds is not None and not has_face:
        raise BadInputError("face_image is connected but this identity adapter has no face tokens (a plain IP-Adapter "
                            "reads CLIP image embeddings only); it would be ignored. Disconnect it, or use a FaceID "
                            "adapter.")
    if face_scale > 0 and face_embeds is None and not uses_image:
        raise BadInputError("Apply Identity has nothing to apply: no face embedding and no CLIP-image tokens.")
    if has_face and face_scale > 0 and face_embeds is None:
        logging.warning("Apply Identity: no face embedding, so the face tokens use the unconditional (zero) embedding; "
                        "connect face_image and an ArcFace model, or set face_scale to 0.")
    keys = cross_attention_keys(dm)
    tkeys = temporal_cross_attention_keys(dm) if is_svd else {}
    names = list(keys.values()) + list(tkeys.values())
    missing = [n for n in names if n not in c["layers"]]
    if missing or len(names) != len(c["layers"]):
        raise BadInputError(f"The identity adapter was made for another UNet: this model's layers "
                            f"({len(names)}, e.g. {names[0] if names else '-'}) do not match the adapter's "
                            f"({len(c['layers'])}).")
    layers = {(b, i): layer for b, i, layer in _spatial_transformers(dm)}
    to_k = {name: layers[key[:2]].transformer_blocks[key[2]].attn2.to_k for key, name in keys.items()}
    to_k.update({name: layers[key[:2]].time_stack[key[2]].attn2.to_k for key, name in tkeys.items()})
    probe = adapter.kinds[0]
    for name, lin in to_k.items():  # same names, other widths: the projections must fit the layer
        if tuple(adapter.kv[_key(name) + f"__k_{probe}"].weight.shape) != tuple(lin.weight.shape):
            raise BadInputError(f"The identity adapter was made for another UNet: its projections at {name} are "
                                f"{tuple(adapter.kv[_key(name) + f'__k_{probe}'].weight.shape)}, the model's "
                                f"{tuple(lin.weight.shape)}.")
    if _replaced(model, "attn2", keys)[0]:
        raise BadInputError("This MODEL already has cross-attention replacements (another IP-Adapter or Apply Identity); a "
                            "second one would silently replace them. Apply Identity once, to a model without them.")
    from ..models.attention.identity import warn_if_silent

    warn_if_silent(adapter, "Apply Identity: this identity adapter")
    with torch.no_grad():
        adapter = adapter.to("cpu", torch.float32)  # the node's own freshly loaded module
        cond = adapter.tokens(None if clip_embeds is None else clip_embeds.float(),
                              None if face_embeds is None else face_embeds.float())
        unc = adapter.tokens(uncond_clip.float() if adapter.reads_hidden_states and uncond_clip is not None else None, None)
        n_img = c["num_image_tokens"]

        def entries(name):
            out = []
            for kind, sl in (("image", slice(0, n_img)), ("face", slice(n_img, None))):
                if (kind == "image" and not n_img) or (kind == "face" and not has_face):
                    continue
                suffix = "img" if kind == "image" else "face"
                kp, vp = adapter.kv[_key(name) + f"__k_{suffix}"], adapter.kv[_key(name) + f"__v_{suffix}"]
                out.append((kp(cond[:, sl]), vp(cond[:, sl]), kp(unc[:, sl]), vp(unc[:, sl]), kind))
            return out

        kv = {k: entries(n) for k, n in keys.items()}
        kv_t = {k: entries(n) for k, n in tkeys.items()}
    patch = IdentityPatch(kv, (image_scale, face_scale), start_percent, end_percent, kv_t)
    m = model.clone()
    for name, i, t in keys:
        m.set_model_attn2_replace(patch.attn2, name, i, t)
    m.add_wrapper_with_key(pe.WrappersMP.OUTER_SAMPLE, IDENTITY_KEY, patch.outer_sample)
    return m, patch


class KeyframePatch(_RunRangePatch):
    """Key-frame attention (ControlVideo / PoseCrafter) on a core MODEL: in every spatial self-attention layer each
    frame's keys/values come from the key frame (:func:`models.attention.maths.keyframe_kv`, the pipe's maths), as an
    ``attn1_patch`` on the layer's input.  The key/value projections are per token, so replacing the rows there
    equals replacing the projected keys/values, and the patch composes with any ``attn1`` replacement (Apply Causal
    Reference reads ``[reference, key frame]`` as the pipe does).  The causal reference's write pass is left alone."""

    def __init__(self, keyframe: int, start_percent: float, end_percent: float):
        super().__init__(start_percent, end_percent)
        self.keyframe = int(keyframe)
        self.applied = 0  # layer calls that read the key frame (diagnostics / tests)

    def attn1_patch(self, n, context, value, extra_options):
        from ..models.attention import maths as AM
        from ..models.errors import BadInputError

        if extra_options.get(REFERENCE_PASS) or not CausalReferencePatch._spatial(n, extra_options) \
                or not self.active(extra_options):
            return n, context, value
        halves = max(len(extra_options.get("cond_or_uncond", [0])), 1)
        frames = n.shape[0] // halves
        if frames < 2:
            return n, context, value
        idx = frame_indices(extra_options, frames)
        if self.keyframe not in idx:
            raise BadInputError(f"Apply Key-frame Attention: key frame {self.keyframe} is not among the frames this "
                                f"model call samples ({idx[0]}…{idx[-1]}): with context windows every window must "
                                "hold the key frame; use one window or key frame 0 with windows that keep it.")
        pos = idx.index(self.keyframe)
        self.applied += 1
        if value is context:
            k, _ = AM.keyframe_kv(context, context, frames, pos)
            return n, k, k
        k, v = AM.keyframe_kv(context, value, frames, pos)
        return n, k, v


def apply_keyframe_attention(model, keyframe: int = 0, start_percent: float = 0.0, end_percent: float = 1.0):
    """A clone of core ``model`` (SD1.5 family) whose spatial self-attention reads the key frame's keys/values in
    every frame. Returns (clone, patch)."""
    import comfy.patcher_extension as pe

    from ..models.errors import BadInputError

    dm = getattr(model.model, "diffusion_model", None)
    if dm is None or not hasattr(dm, "input_blocks"):
        raise BadInputError(f"Apply Key-frame Attention supports UNet models (SD1.5 family); this MODEL is "
                            f"{type(model.model).__name__}.")
    if keyframe < 0:
        raise BadInputError(f"keyframe must be >= 0; got {keyframe}.")
    _check_percents(start_percent, end_percent)
    if KEYFRAME_KEY in model.wrappers.get(pe.WrappersMP.OUTER_SAMPLE, {}):
        raise BadInputError("This MODEL already has Apply Key-frame Attention; apply it once.")
    patch = KeyframePatch(keyframe, start_percent, end_percent)
    m = model.clone()
    m.set_model_attn1_patch(patch.attn1_patch)
    m.add_wrapper_with_key(pe.WrappersMP.OUTER_SAMPLE, KEYFRAME_KEY, patch.outer_sample)
    return m, patch


class LatentEditPatch:
    """PoseCrafter's latent affine editing at a chosen sampling step, on a core MODEL: a ``SAMPLER_SAMPLE`` wrapper runs
    the sampler to step ``k``, pastes the warped inverted reference latent into each frame's face and hand boxes
    (:func:`models.posecrafter.editing.edit_latents`, the pipe's function) and runs the rest from there (the same
    split as two KSampler (Advanced) nodes; exact for deterministic samplers).  The pipe edits the model's input
    variables (√ᾱ-scaled), so the source, given at the run's first σ, is rescaled to step ``k``'s σ the same way."""

    def __init__(self, source: torch.Tensor, ref_landmarks: dict, target_landmarks: list, pose_size: Tuple[int, int],
                 step: int, margin: float):
        self.source = source  # (1, C, h, w) LATENT space, the inverted reference at the run's first σ
        self.ref_landmarks, self.target_landmarks = ref_landmarks, target_landmarks
        self.pose_size, self.step, self.margin = pose_size, int(step), float(margin)
        self.reports: list = []
        self.boxes: list = []
        self.runs = 0

    def __deepcopy__(self, memo):
        return self

    def _edit(self, x, model_wrap, sigma_0, sigma_k):
        from ..models.errors import BadInputError
        from ..models.posecrafter.editing import edit_latents

        frames, _, h, w = x.shape
        if len(self.target_landmarks) != frames:
            raise BadInputError(f"Apply Latent Edit: target_poses has {len(self.target_landmarks)} frames but the "
                                f"sampled latent has {frames}.")
        base = model_wrap.inner_model
        src = base.process_latent_in(self.source.to(x.device, torch.float32))
        if tuple(src.shape[-2:]) != (h, w):
            raise BadInputError(f"Apply Latent Edit: the source latent is {tuple(src.shape[-2:])} but the video latent is "
                                f"{(h, w)}.")
        ms = base.model_sampling
        one = torch.ones(1, 1, 1, 1, device=x.device)
        ratio = ms.calculate_input(sigma_0.reshape(1).to(x.device), one) / ms.calculate_input(sigma_k.reshape(1).to(x.device), one)
        pw, ph = self.pose_size
        f = pw / w  # pose-canvas pixels per latent cell
        sy = (h * f) / ph
        scale = lambda lm: {r: a * np.array([1.0, sy, 1.0], np.float32) for r, a in lm.items()}  # noqa: E731
        edited, reps, boxes = edit_latents(x.permute(1, 0, 2, 3)[None].float(), (src[0] * ratio.flatten()[0]).float(),
                                           scale(self.ref_landmarks), [scale(t) for t in self.target_landmarks], f,
                                           margin=self.margin)
        self.reports, self.boxes = reps, boxes
        return edited[0].permute(1, 0, 2, 3).to(x.dtype)

    def sampler_sample(self, executor, model_wrap, sigmas, extra_args, callback, noise, latent_image=None,
                       denoise_mask=None, disable_pbar=False):
        from ..models.errors import BadInputError

        steps = len(sigmas) - 1
        k = self.step
        if not 0 <= k < steps:
            raise BadInputError(f"Apply Latent Edit: edit_step is {k} but this sampler runs {steps} steps; the edit "
                                f"would never happen. Use an edit_step between 0 and {steps - 1}.")
        self.runs += 1
        ms = model_wrap.inner_model.model_sampling
        zeros = torch.zeros_like(noise)
        if k == 0:  # the start latent as the sampler would make it, edited, then sampled from as it is
            x = ms.noise_scaling(sigmas[0], noise, latent_image, executor.class_obj.max_denoise(model_wrap, sigmas))
        else:
            cb1 = None if callback is None else (lambda i, d, x_, t: callback(i, d, x_, steps))
            x = executor(model_wrap, sigmas[:k + 1], extra_args, cb1, noise, latent_image, denoise_mask, disable_pbar)
        x = self._edit(x, model_wrap, sigmas[0], sigmas[k])
        cb2 = None if callback is None else (lambda i, d, x_, t: callback(i + k, d, x_, steps))
        return executor(model_wrap, sigmas[k:], extra_args, cb2, zeros, x, denoise_mask, disable_pbar)


def pose_landmarks(pose, frame: int) -> dict:
    """Face and hand landmarks of one frame of a PERFORMER_POSE, in its canvas pixels (confidence 0 = not visible)."""
    from ..models.pose.sequence import landmarks

    return {r: landmarks(pose, r, frame).copy() for r in ("face", "left_hand", "right_hand")}


def apply_latent_edit(model, source: torch.Tensor, reference_pose, reference_frame: int, target_poses, edit_step: int = 0,
                      margin: float = 4.0, edit_first_frame: bool = True):
    """A clone of core ``model`` whose sampling runs PoseCrafter's latent editing at step ``edit_step``.
    ``source``: LATENT samples (1, C, h, w) of the inverted reference frame at the run's first σ. Returns (clone, patch)."""
    import comfy.model_sampling
    import comfy.patcher_extension as pe

    from ..models.errors import BadInputError

    ms = model.get_model_object("model_sampling")
    if not isinstance(ms, comfy.model_sampling.EPS) or isinstance(ms, comfy.model_sampling.CONST):
        raise BadInputError(f"Apply Latent Edit supports ε- and v-prediction models (SD1.5 family); this MODEL samples "
                            f"with {type(ms).__name__}.")
    if source.ndim != 4 or source.shape[0] != 1:
        raise BadInputError(f"source: expected the latent of one frame (1, C, h, w); got {tuple(source.shape)}.")
    if edit_step < 0 or margin < 0:
        raise BadInputError(f"edit_step and margin must be >= 0; got {edit_step}, {margin}.")
    if (reference_pose.width, reference_pose.height) != (target_poses.width, target_poses.height):
        raise BadInputError(f"reference_pose is on a {reference_pose.width}×{reference_pose.height} canvas but "
                            f"target_poses on {target_poses.width}×{target_poses.height}; draw both at the video size.")
    if LATENT_EDIT_KEY in model.wrappers.get(pe.WrappersMP.SAMPLER_SAMPLE, {}):
        raise BadInputError("This MODEL already has Apply Latent Edit; apply it once.")
    ref = pose_landmarks(reference_pose, reference_frame)
    if not any((a[:, 2] > 0).sum() >= 3 for a in ref.values()):
        raise BadInputError(f"reference_pose frame {reference_frame} has no face or hand with 3 visible landmarks; "
                            "the edit would do nothing. Use a whole-body pose (face and hands).")
    tgt = [pose_landmarks(target_poses, i) for i in range(target_poses.frames)]
    if not edit_first_frame:
        tgt[0] = {r: np.zeros((1, 3), np.float32) for r in tgt[0]}
    patch = LatentEditPatch(source.detach().to("cpu", torch.float32), ref, tgt,
                            (target_poses.width, target_poses.height), edit_step, margin)
    m = model.clone()
    m.add_wrapper_with_key(pe.WrappersMP.SAMPLER_SAMPLE, LATENT_EDIT_KEY, patch.sampler_sample)
    return m, patch


def _model_io():
    return (io.Model.Input("model", tooltip="The model to patch (a copy is returned)."),
            io.Model.Output(display_name="model", tooltip="The patched copy of the model."))


def _range_inputs(verb: str) -> list:
    """The start/end percent pair every native patch takes."""
    return [io.Float.Input("start_percent", default=0.0, min=0.0, max=1.0, step=0.01,
                           tooltip=f"{verb} from this point of the schedule …"),
            io.Float.Input("end_percent", default=1.0, min=0.0, max=1.0, step=0.01, tooltip="… until this point.")]


class PerformerApplyCausalReference(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PerformerApplyCausalReference", display_name="Apply Causal Reference (SCD, native) 🎭", category=CAT,
            description="Causal reference attention (SCD) on the MODEL your loaders give (SD1.5 family, SVD): the "
                        "reference image passes once per sampling run through the same model at t = 0, every spatial "
                        "self-attention layer caches its keys/values, and the video's queries attend to [reference, "
                        "video]; the reference never sees the video. Returns a patched copy; the input MODEL is "
                        "unchanged. Works with core's samplers and core's context windows (one reference pass per run).",
            inputs=[_model_io()[0],
                    io.Vae.Input("vae", tooltip="The VAE of that model, to encode the reference."),
                    io.Image.Input("reference", tooltip="The reference photo, the video's size (first image is used)."),
                    io.Float.Input("strength", default=1.0, min=0.0, max=4.0, step=0.05,
                                   tooltip="The reference's share of attention: 1 = SCD as published, 0 = off "
                                           "(exactly the unpatched model)."),
                    io.Combo.Input("uncond", options=["auto", "drop", "keep"], default="auto",
                                   tooltip="Whether the unconditional (negative) CFG half reads the reference: drop "
                                           "(SD1.5 default: CFG also pushes toward the reference look) or keep (SVD default)."),
                    *_range_inputs("Read the reference"),
                    io.Model.Input("reference_model", optional=True,
                                   tooltip="Optional separate reference model (SD1.5 family): a ReferenceNet such as "
                                           "AnimateAnyone / Champ / MusePose's reference_unet.pth loaded with Load "
                                           "Diffusion Model. The reference pass runs through it and each self-attention "
                                           "layer's input tokens are read by the same layer of the sampled model. "
                                           "Unconnected: the sampled model itself (SCD).")],
            outputs=[_model_io()[1]],
        )

    @classmethod
    def execute(cls, model, vae, reference, strength, uncond, start_percent, end_percent,
                reference_model=None) -> io.NodeOutput:
        from ..models.errors import BadInputError

        if reference is None or reference.ndim != 4 or reference.shape[0] < 1:
            raise BadInputError("reference: expected an IMAGE batch with at least one image.")
        if reference.shape[0] > 1:
            logging.warning("Apply Causal Reference: %d reference images given; using the first.", reference.shape[0])
        latent = vae.encode(reference[:1, :, :, :3])
        m, _ = apply_causal_reference(model, latent, strength, uncond, start_percent, end_percent, reference_model)
        return io.NodeOutput(m)


class PerformerApplyPoseGuidance(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        from ._common import weight_choices

        return io.Schema(
            node_id="PerformerApplyPoseGuidance", display_name="Apply Pose Guidance (VividPose, native) 🎭", category=CAT,
            description="VividPose's pose guidance on the MODEL your loaders give (SD1.5 family, SVD): a pose controller "
                        "encodes each frame's skeleton map and/or SMPL-X render (the reference person's shape) and adds "
                        "the features to the noisy latent of that frame, also inside core's and AnimateDiff-Evolved's "
                        "context windows. Returns a patched copy; the input MODEL is unchanged.",
            inputs=[_model_io()[0],
                    io.Combo.Input("pose_controller", options=weight_choices("performer_adapters", with_dirs=False),
                                   tooltip="A pose controller .safetensors in models/performer/adapters."),
                    io.Image.Input("skeleton", optional=True,
                                   tooltip="Skeleton maps, one per video frame (Draw Pose Maps)."),
                    io.Image.Input("smplx", optional=True,
                                   tooltip="SMPL-X renders in the reference person's shape, one per video frame."),
                    io.Image.Input("reference_pose", optional=True,
                                   tooltip="The reference image's own skeleton map, added to the causal reference's "
                                           "pass (used with Apply Causal Reference)."),
                    io.Image.Input("reference_smplx", optional=True,
                                   tooltip="The reference image's own SMPL-X render (the same kind as smplx), added "
                                           "to the causal reference's pass with reference_pose; for controllers "
                                           "trained with it (the demo model: --reference-render)."),
                    io.Float.Input("strength", default=1.0, min=0.0, max=4.0, step=0.05,
                                   tooltip="Scale of the pose features: 1 = as trained, 0 = off (exactly the unpatched model)."),
                    *_range_inputs("Guide")],
            outputs=[_model_io()[1]],
        )

    @classmethod
    def execute(cls, model, pose_controller, strength, start_percent, end_percent, skeleton=None, smplx=None,
                reference_pose=None, reference_smplx=None) -> io.NodeOutput:
        from ..models.guidance.pose_controller import load_pose_controller
        from ._common import resolve

        pc = load_pose_controller(resolve(pose_controller, ("performer_adapters",)), device="cpu")
        m, _ = apply_pose_guidance(model, pc, skeleton, smplx, reference_pose, strength, start_percent, end_percent,
                                   reference_smplx)
        return io.NodeOutput(m)


class PerformerApplyIdentity(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        from ._common import NONE, weight_choices

        return io.Schema(
            node_id="PerformerApplyIdentity", display_name="Apply Identity (VividPose, native) 🎭", category=CAT,
            description="VividPose's identity on the MODEL your loaders give (SD1.5 family; SVD with face tokens, in its spatial "
                        "and temporal cross-attention): decoupled cross-attention "
                        "adds, in every cross-attention layer, attention over the reference's CLIP-image tokens (from "
                        "CLIP Vision Encode) and ArcFace face tokens, through the identity adapter's own key/value "
                        "projections. Returns a patched copy; the input MODEL is unchanged.",
            inputs=[_model_io()[0],
                    io.Combo.Input("identity_adapter", options=weight_choices("performer_adapters", "ipadapter", with_dirs=False),
                                   tooltip="An identity adapter: the pack's (.safetensors in models/performer/adapters) or "
                                           "a released SD1.5 IP-Adapter in models/ipadapter (ip-adapter_sd15.safetensors: "
                                           "CLIP-image tokens; ip-adapter-faceid_sd15.bin: face tokens, with its LoRA "
                                           "loaded by a LoRA loader)."),
                    io.ClipVisionOutput.Input("clip_vision_output", optional=True,
                                              tooltip="CLIP Vision Encode of the reference image (for the CLIP-image tokens)."),
                    io.ClipVision.Input("clip_vision", optional=True,
                                        tooltip="The CLIP vision model (ViT-H), needed by IP-Adapter plus / plus-face: "
                                                "its unconditional tokens come from a neutral image (zero after CLIP's "
                                                "normalisation), as IP-Adapter's own code makes them."),
                    io.Image.Input("face_image", optional=True,
                                   tooltip="The reference image, for the ArcFace face tokens (needs an ArcFace model)."),
                    io.Combo.Input("arcface", options=[NONE] + weight_choices("performer_face", with_dirs=False),
                                   tooltip="ArcFace ONNX in models/performer/face, to embed face_image."),
                    io.Float.Input("image_scale", default=1.0, min=0.0, max=4.0, step=0.05,
                                   tooltip="Weight of the CLIP-image tokens (0 = off)."),
                    io.Float.Input("face_scale", default=1.0, min=0.0, max=4.0, step=0.05,
                                   tooltip="Weight of the face tokens (0 = off)."),
                    *_range_inputs("Apply")],
            outputs=[_model_io()[1]],
        )

    @classmethod
    def execute(cls, model, identity_adapter, arcface, image_scale, face_scale, start_percent, end_percent,
                clip_vision_output=None, face_image=None, clip_vision=None) -> io.NodeOutput:
        from ..models.attention.identity import load_identity_adapter
        from ..models.errors import BadInputError
        from ._common import NONE, resolve

        ad = load_identity_adapter(resolve(identity_adapter, ("performer_adapters", "ipadapter")), device="cpu")
        clip = uncond_clip = None
        if clip_vision_output is not None and ad.reads_hidden_states:
            clip = getattr(clip_vision_output, "penultimate_hidden_states", None)
            if clip is None:
                raise BadInputError("clip_vision_output has no penultimate_hidden_states, which IP-Adapter plus reads.")
            clip = clip[:1].float().cpu()
            if clip_vision is not None:
                uncond_clip = clip_vision.encode_image(neutral_clip_image()).penultimate_hidden_states[:1].float().cpu()
        elif clip_vision_output is not None:
            clip = getattr(clip_vision_output, "image_embeds", None)
            if clip is None:
                raise BadInputError("clip_vision_output has no image_embeds (a projected CLIP vision model is needed).")
            clip = clip[:1].float().cpu()
        if clip_vision is not None and not ad.reads_hidden_states:
            raise BadInputError("clip_vision is connected but this identity adapter does not use it (only IP-Adapter plus "
                                "does); it would be ignored. Disconnect it.")
        face = None
        if face_image is not None and face_scale > 0:
            if arcface == NONE:
                raise BadInputError("face_image is connected but arcface is none; choose an ArcFace ONNX model or "
                                    "disconnect face_image.")
            from ..models.pose.face import ArcFace, align_face

            try:
                face = torch.from_numpy(ArcFace(resolve(arcface, ("performer_face",))).embed(align_face(face_image[0])))[None]
            except BadInputError as e:
                logging.warning("Apply Identity: no face found in face_image (%s); the face tokens stay unconditional.", e)
        m, _ = apply_identity(model, ad, clip, face, image_scale, face_scale, start_percent, end_percent, uncond_clip)
        return io.NodeOutput(m)


CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # CLIP's pixel normalisation mean


def neutral_clip_image(size: int = 224) -> torch.Tensor:
    """An IMAGE whose pixels are CLIP's normalisation mean: zero after CLIP's preprocessing, the input IP-Adapter's own
    code encodes for the unconditional tokens (``torch.zeros_like(clip_image)`` on normalised pixels)."""
    return torch.tensor(CLIP_MEAN).view(1, 1, 1, 3).expand(1, size, size, 3).clone()


class PerformerApplyKeyframeAttention(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PerformerApplyKeyframeAttention", display_name="Apply Key-frame Attention (PoseCrafter, native) 🎭",
            category=CAT,
            description="Key-frame attention (ControlVideo, as PoseCrafter samples) on the MODEL your loaders give (SD1.5 "
                        "family, e.g. with an AnimateDiff motion model): every frame's spatial self-attention reads the "
                        "key frame's keys/values, which keeps appearance steady across frames. Composes with Apply Causal "
                        "Reference (then frames read [reference, key frame]). Every context window must hold the key "
                        "frame. Returns a patched copy; the input MODEL is unchanged.",
            inputs=[_model_io()[0],
                    io.Int.Input("keyframe", default=0, min=0, max=100000,
                                 tooltip="The video frame whose keys/values every frame reads (PoseCrafter: the inserted "
                                         "reference-pose frame, 0)."),
                    *_range_inputs("Read the key frame")],
            outputs=[_model_io()[1]],
        )

    @classmethod
    def execute(cls, model, keyframe, start_percent, end_percent) -> io.NodeOutput:
        return io.NodeOutput(apply_keyframe_attention(model, keyframe, start_percent, end_percent)[0])


class PerformerApplyLatentEdit(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        from ._common import POSE

        return io.Schema(
            node_id="PerformerApplyLatentEdit", display_name="Apply Latent Edit (PoseCrafter, native) 🎭", category=CAT,
            description="PoseCrafter's latent affine editing inside core sampling: at sampling step edit_step, for every "
                        "frame, the face and each hand of the inverted reference latent are moved by the least-squares "
                        "affine from the reference pose's landmarks to that frame's, and pasted into the frame's latent "
                        "box. The source is the reference frame's latent at the run's first noise level (e.g. VAE "
                        "Encode → SamplerCustom with FlipSigmas and CFG 1, the usual inversion); sample from it repeated "
                        "(Repeat Latent Batch) without added noise. Returns a patched copy; the input MODEL is unchanged.",
            inputs=[_model_io()[0],
                    io.Latent.Input("source", tooltip="The inverted reference frame (one latent frame) at the run's first σ."),
                    POSE.Input("reference_pose", tooltip="Whole-body pose of the reference frame (face and hands)."),
                    io.Int.Input("reference_frame", default=0, min=0, max=100000,
                                 tooltip="Which frame of reference_pose is the reference (Select Reference Frame gives it)."),
                    POSE.Input("target_poses", tooltip="The driving poses, one per video frame, on the same canvas."),
                    io.Int.Input("edit_step", default=0, min=0, max=10000,
                                 tooltip="The sampling step before which the latents are edited (0 = the start latent)."),
                    io.Float.Input("margin", default=4.0, min=0.0, max=256.0, step=0.5,
                                   tooltip="Pixels (of the pose canvas) added around each region's landmarks."),
                    io.Boolean.Input("edit_first_frame", default=True,
                                     tooltip="Off when frame 0 is an inserted key frame (PoseCrafter's insertion), which "
                                             "is left unedited.")],
            outputs=[_model_io()[1]],
        )

    @classmethod
    def execute(cls, model, source, reference_pose, reference_frame, target_poses, edit_step, margin,
                edit_first_frame) -> io.NodeOutput:
        from ..models.errors import BadInputError

        src = source["samples"]
        if src.ndim != 4:
            raise BadInputError(f"source: expected an image latent (frames, C, h, w); got {tuple(src.shape)}.")
        if src.shape[0] > 1:
            logging.warning("Apply Latent Edit: source holds %d latents; using the first.", src.shape[0])
        m, _ = apply_latent_edit(model, src[:1], reference_pose, reference_frame, target_poses, edit_step, margin,
                                 edit_first_frame)
        return io.NodeOutput(m)


NODES = [PerformerApplyCausalReference, PerformerApplyPoseGuidance, PerformerApplyIdentity, PerformerApplyKeyframeAttention,
         PerformerApplyLatentEdit]
