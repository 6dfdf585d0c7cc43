"""Native, Wan 2.x: causal reference attention (SCD) on core's Wan DiT (``comfy.ldm.wan.model.WanModel``: Wan 2.1 / 2.2
text-to-video, image-to-video and TI2V, and ``AnimateWanModel``: Wan 2.2 Animate).  Core's other Wan variants (VACE,
camera, S2V, HuMo) run extra blocks or call the block replacement differently; they are refused until tested.

How it hooks into core, on a clone of the user's ``MODEL`` (never replacing a class):

* One ``patches_replace["dit"][("double_block", i)]`` entry per transformer block.  It runs the block as core would
  (or through a replacement another node set before, which it keeps and calls), with an
  ``optimized_attention_override`` added to that block's ``transformer_options`` for the duration of the call.  The
  override takes the block's **first** attention call whose queries and keys both have the block's token count: in
  core's ``WanAttentionBlock.forward`` that is the self-attention (cross-attention reads the text / image tokens and
  runs after it).  Its q/k/v arrive projected, normalised and **after RoPE**.  Every other attention call goes on to
  the override that was there before, or to core's kernel.
* ``OUTER_SAMPLE`` and ``APPLY_MODEL`` wrappers as on the UNet models (:class:`.native.CausalReferencePatch`): the
  first model call of a sampling run first runs the **write pass** — the reference latent frame alone, one row,
  through the same DiT at σ_min, with the conditional row's text (and CLIP-vision) conditioning and the first latent
  frame of the video's own image conditioning (``c_concat``: image-to-video's start frame, Wan-Animate's reference
  frame).  Each block caches the reference tokens' K/V.  Video-length conditioning (pose latents, face pixels,
  ``time_dim_concat``, ``reference_latent``) is left out of the write pass; it describes the video, not the reference.
* **Positions.** The reference tokens take core's RoPE at temporal position **−1** and the video's own spatial grid:
  the write pass runs with ``rope_options["shift_t"]`` lowered by one (core's own RoPE option, added to any shift the
  user set).  The reference therefore sits one latent frame *before* the first frame, as Wan-Animate's reference frame
  sits before its video, and at the same place before every core context window (core restarts RoPE at 0 in each
  window).
* Later calls **read**: target tokens attend to ``[K_ref, K_target]`` with
  :func:`models.attention.maths.reference_attention` — the maths the UNet patch and the pack's diffusers processors
  use.  The reference never reads the video.  Strength 0 skips everything (exactly the unpatched model).
"""
from __future__ import annotations

import logging

import torch

from .native import REFERENCE_PASS, CausalReferencePatch

REFERENCE_T = -1.0  # the reference frame's temporal RoPE position, relative to the video's (or the window's) first frame
LENGTH_CONDS = ("time_dim_concat", "reference_latent", "pose_latents", "face_pixel_values")


def wan_diffusion_model(model):
    """Core's Wan DiT inside ``model`` (a ModelPatcher), or None when it holds another kind of model."""
    try:
        from comfy.ldm.wan.model import WanModel
    except ImportError:  # a core without Wan
        return None
    dm = getattr(getattr(model, "model", None), "diffusion_model", None)
    return dm if isinstance(dm, WanModel) else None


class WanCausalReferencePatch(CausalReferencePatch):
    """Causal reference attention on a Wan DiT: per-run state as the UNet patch, K/V cached per block index."""

    blocks = 0  # the DiT's block count (set by apply_wan_causal_reference)

    # ------------------------------------------------------------------ the write pass
    def _write(self, executor, base, x, c_concat, c_crossattn, topts, kwargs, cond_or_uncond, n):
        run = self.run
        ms = base.model_sampling
        row = cond_or_uncond.index(0) * n if 0 in cond_or_uncond else 0
        lat = base.process_latent_in(self.latent.to(x.device, torch.float32))  # (1, C, 1, h, w)
        if lat.shape[-2:] != x.shape[-2:]:
            raise ValueError(f"Apply Causal Reference: the reference latent is {tuple(lat.shape[-2:])} but the video latent "
                             f"is {tuple(x.shape[-2:])}; resize the reference image to the video size.")
        sigma = ms.sigma_min.to(x.device, torch.float32).reshape(1)
        # the model input at σ_min for a clean latent: core's calculate_input is the identity for flow models (Wan)
        x_ref = lat * _input_scale(ms, sigma)

        def one(v):
            return v[row:row + 1] if torch.is_tensor(v) and v.shape[:1] == x.shape[:1] else v

        kw = {k: one(v) for k, v in kwargs.items()
              if k not in LENGTH_CONDS and not (torch.is_tensor(v) and v.ndim >= 5)}
        concat = None if c_concat is None else one(c_concat)[:, :, :1]
        rope = dict(topts.get("rope_options") or {})
        rope["shift_t"] = float(rope.get("shift_t", 0.0)) + REFERENCE_T
        topts = {**topts, "cond_or_uncond": [0], REFERENCE_PASS: True, "rope_options": rope}
        run.mode = "write"
        try:
            with torch.no_grad():
                executor(x_ref.to(x.dtype), sigma.to(x.dtype), concat, one(c_crossattn), None, topts, **kw)
        finally:
            run.mode = "off"
        run.written = True
        self.writes += 1
        if not run.cache:  # nothing reached the override: every read would silently be plain attention
            raise RuntimeError("Apply Causal Reference: the reference pass reached no self-attention layer (another node "
                               "replaces the Wan blocks or their attention without core's override); the reference would "
                               "be ignored.")
        if len(run.cache) < self.blocks:
            logging.warning("Apply Causal Reference: the reference pass reached %d of %d Wan blocks; the others run "
                            "without the reference.", len(run.cache), self.blocks)

    # ------------------------------------------------------------------ dit block replacement + attention override
    def block_replace(self, index: int, previous=None):
        """The ``("double_block", index)`` replacement: runs the block (through ``previous`` when another node had
        replaced it) with this patch's attention override in its ``transformer_options``."""

        def replace(args, extra):
            run = self.run
            if run is not None and run.mode != "off":
                args = {**args, "transformer_options": self._with_override(index, args)}
            return previous(args, extra) if previous is not None else extra["original_block"](args)

        replace.performer_patch = self  # lets a second Apply Causal Reference find the first
        return replace

    def _with_override(self, index: int, args) -> dict:
        topts = args["transformer_options"]
        outer = topts.get("optimized_attention_override")
        tokens = args["img"].shape[1]
        taken = [False]

        def override(func, q, k, v, *a, **kw):
            if not taken[0] and q.shape[1] == tokens and k.shape[1] == tokens:
                taken[0] = True
                return self._self_attention(index, func, outer, q, k, v, *a, **kw)
            return outer(func, q, k, v, *a, **kw) if outer is not None else func(q, k, v, *a, **kw)

        return {**topts, "optimized_attention_override": override}

    def _self_attention(self, index, func, outer, q, k, v, *a, **kw):
        if "heads" in kw:
            heads = kw.pop("heads")
        else:
            heads, a = a[0], a[1:]

        def attend(q_, k_, v_, h_, bias=None):
            kk = dict(kw)
            if bias is not None:
                kk["mask"] = bias
            return outer(func, q_, k_, v_, *a, heads=h_, **kk) if outer is not None else func(q_, k_, v_, *a, heads=h_, **kk)

        run = self.run
        if run.mode == "write":
            run.cache[index] = (k[:1].detach(), v[:1].detach())
            return attend(q, k, v, heads)
        if not run.active or index not in run.cache:
            return attend(q, k, v, heads)
        from ..models.attention import maths as AM

        kr, vr = run.cache[index]
        self.reads += 1
        return AM.reference_attention(q, k, v, heads, kr, vr, self.strength, run.reads_rows, attend=attend,
                                      plain=lambda q_, k_, v_, h_: attend(q_, k_, v_, h_))


def _input_scale(ms, sigma) -> torch.Tensor:
    """What core's ``calculate_input`` divides by at ``sigma`` (1 for flow models), so a clean latent passes as itself."""
    probe = torch.ones(1, device=sigma.device)
    return probe / ms.calculate_input(sigma, probe).reshape(-1)[0]


def _check_core_features(dm) -> None:
    """The core features the Wan patch stands on (ComfyUI 0.3.75 has them; older cores lack some): the attention
    override (``wrap_attn``), RoPE options in Wan's ``rope_encode`` and Wan-Animate's module.  Without them the patch
    would crash or silently put the reference at frame 0's position, so it refuses."""
    import inspect

    import comfy.ldm.modules.attention as attention
    from ..models.errors import BadInputError

    missing = []
    if not hasattr(attention, "wrap_attn"):
        missing.append("the attention override (optimized_attention_override)")
    if "transformer_options" not in inspect.signature(dm.rope_encode).parameters:
        missing.append("RoPE options in Wan's rope_encode")
    try:
        import comfy.ldm.wan.model_animate  # noqa: F401
    except ImportError:
        missing.append("Wan 2.2 Animate (comfy.ldm.wan.model_animate)")
    if missing:
        raise BadInputError("Apply Causal Reference on Wan needs a newer ComfyUI (0.3.75 is tested); this one lacks "
                            + ", ".join(missing) + ".")


def apply_wan_causal_reference(model, latent: torch.Tensor, strength: float, uncond: str, start_percent: float,
                               end_percent: float):
    """A clone of a core Wan ``model`` with causal reference attention to ``latent`` (one Wan VAE latent frame,
    (1, C, 1, h, w) or (1, C, h, w)). Returns (clone, patch)."""
    import comfy.patcher_extension as pe

    from ..models.errors import BadInputError
    from .native import KEY

    dm = wan_diffusion_model(model)
    _check_core_features(dm)
    from comfy.ldm.wan.model import WanModel
    from comfy.ldm.wan.model_animate import AnimateWanModel

    if type(dm) not in (WanModel, AnimateWanModel):
        raise BadInputError(f"Apply Causal Reference supports core's Wan 2.1 / 2.2 text-to-video, image-to-video, TI2V and "
                            f"Animate models; this one is {type(dm).__name__} (VACE, camera, S2V and HuMo are not tested "
                            "with it yet).")
    if latent.ndim == 4:
        latent = latent[:, :, None]
    if latent.ndim != 5 or latent.shape[0] != 1 or latent.shape[2] != 1:
        raise BadInputError(f"The reference latent must be one Wan latent frame (1, C, 1, h, w); got {tuple(latent.shape)}.")
    channels = getattr(model.model.latent_format, "latent_channels", latent.shape[1])
    if latent.shape[1] != channels:
        raise BadInputError(f"The reference latent has {latent.shape[1]} channels but this Wan MODEL's latent has {channels}; "
                            "encode the reference with the VAE that belongs to this model (Wan 2.1 VAE: 16 channels, "
                            "Wan 2.2 5B VAE: 48).")
    if uncond == "auto":
        uncond = "keep"
    if uncond not in ("drop", "keep"):
        raise BadInputError(f"uncond must be auto, drop or keep; got {uncond!r}.")
    taken = model.model_options.get("transformer_options", {}).get("patches_replace", {}).get("dit", {})
    if any(getattr(f, "performer_patch", None) is not None for f in taken.values()):
        raise BadInputError("This MODEL already has Apply Causal Reference; apply it once (a second reference pass would "
                            "replace the first one's cache).")
    patch = WanCausalReferencePatch(latent.detach().to("cpu", torch.float32), strength, uncond, start_percent, end_percent)
    patch.blocks = len(dm.blocks)
    m = model.clone()
    for i in range(len(dm.blocks)):
        m.set_model_patch_replace(patch.block_replace(i, taken.get(("double_block", i))), "dit", "double_block", i)
    m.add_wrapper_with_key(pe.WrappersMP.OUTER_SAMPLE, KEY, patch.outer_sample)
    m.add_wrapper_with_key(pe.WrappersMP.APPLY_MODEL, KEY, patch.apply_model)
    return m, patch
