"""Causal reference attention (SCD) as diffusers attention processors.

How it works
------------
* The reference latent goes once through the *same* denoising UNet at t = 0 ("write" pass).  Every
  spatial self-attention layer (``…attentions.N.transformer_blocks.M.attn1``) stores the reference
  keys and values it computed, in a cache keyed by the layer's module name.  During that pass the
  reference attends only to itself, so the reference never sees the target (the causal mask of SCD).
* During sampling ("read" mode) each target query attends to ``[K_ref, K_target]`` / ``[V_ref, V_target]``.
  The cached reference K/V (batch 1) is shared by every frame; both UNet layouts flatten batch-major,
  ``(b f)`` for AnimateDiff's UNetMotionModel and ``(B·F)`` for SVD's spatio-temporal UNet, so row ``r``
  belongs to batch item ``r // frames`` in both.
* Temporal / motion-module attention is never touched: the reference is a single still frame.
* ``strength`` scales the reference's share of the attention: the reference logits get ``log(strength)``
  added, so 1 is SCD as published and 0 removes the reference exactly (its softmax weights are 0).
* Classifier-free guidance: the sampler tells the processors how many leading rows belong to the
  unconditional half (batch order ``[uncond, cond]``).  ``uncond="drop"`` gives those rows plain
  self-attention (Moore-AnimateAnyone's choice: CFG then also pushes toward the reference look);
  ``uncond="keep"`` lets every row read the reference.

The cache is filled once per sampling run (``writes`` counts it) and cleared at the end.  The
:func:`reference_attention` context manager installs the processors and always restores the
UNet's original processor objects, also when sampling raises or is interrupted.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Dict, Iterator, Optional, Tuple

import torch

from . import maths as AM
from ..errors import BadInputError


def is_spatial_self_attention(name: str) -> bool:
    """Processor names of the spatial self-attention layers (not temporal, motion or cross-attention)."""
    return (name.endswith("attn1.processor") and ".attentions." in name and ".transformer_blocks." in name
            and "temporal" not in name and "motion_modules" not in name)


@dataclass
class ReferenceState:
    """Shared by all processors of one run."""

    mode: str = "off"  # "off" | "write" | "read"
    strength: float = 1.0
    uncond: str = "drop"  # "drop" | "keep"
    uncond_rows: int = 0  # leading rows of the current batch that are the unconditional half
    cache: Dict[str, Tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    writes: int = 0  # number of write passes in this run
    write_seconds: float = 0.0  # host wall time spent in write passes (benchmarks split the one-off pass from the steps)
    reads: int = 0  # number of layer reads (for tests / diagnostics)
    keyframe: Optional[int] = None  # key-frame attention (ControlVideo/PoseCrafter): K/V of this frame for every frame
    frames: int = 0  # frames per batch item in the current call (rows are batch-major)
    # a separate reference UNet (AnimateAnyone / Champ / MusePose ReferenceNet) writes each layer's input tokens; the
    # denoising UNet's own to_k / to_v project them at the first read, as those projects' reference attention does
    separate: bool = False


class ReferenceAttnProcessor:
    """Self-attention processor for one layer; equals diffusers' ``AttnProcessor2_0`` when mode is "off".
    The maths is :mod:`.attention_math` (shared with the native patches)."""

    def __init__(self, name: str, state: ReferenceState):
        self.name = name
        self.state = state

    @staticmethod
    def _attend_fn(attn):
        def attend(q, k, v, heads, bias=None):
            if attn.norm_q is not None or attn.norm_k is not None:  # per-head norms (not in SD1.5 / SVD)
                d = q.shape[-1] // heads
                split = lambda x: x.view(x.shape[0], x.shape[1], heads, d).transpose(1, 2)  # noqa: E731
                merge = lambda x: x.transpose(1, 2).reshape(x.shape[0], x.shape[2], heads * d)  # noqa: E731
                if attn.norm_q is not None:
                    q = merge(attn.norm_q(split(q)))
                if attn.norm_k is not None:
                    k = merge(attn.norm_k(split(k)))
            return AM.attention(q, k, v, heads, bias)
        return attend

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        if encoder_hidden_states is not None or attention_mask is not None or attn.group_norm is not None \
                or attn.spatial_norm is not None or hidden_states.ndim != 3:
            raise BadInputError(f"Reference attention expects plain self-attention at {self.name}.")
        st = self.state
        residual = hidden_states
        q = attn.to_q(hidden_states)
        k = attn.to_k(hidden_states)
        v = attn.to_v(hidden_states)
        attend = self._attend_fn(attn)
        if st.keyframe is not None and st.mode != "write" and st.frames > 1:
            k, v = AM.keyframe_kv(k, v, st.frames, st.keyframe)
        if st.mode == "write":  # (kept in the autograd graph only when the write pass runs with gradients: training)
            st.cache[self.name] = ("tokens", hidden_states[:1]) if st.separate else (k, v)
            out = attend(q, k, v, attn.heads)
        elif st.mode == "read" and self.name in st.cache:
            st.reads += 1
            if isinstance(st.cache[self.name][0], str):  # tokens of the separate reference UNet: project them once here
                tokens = st.cache[self.name][1].to(q.dtype)
                st.cache[self.name] = (attn.to_k(tokens), attn.to_v(tokens))
            kr, vr = st.cache[self.name]
            reads = None
            if st.uncond == "drop" and st.uncond_rows:
                reads = torch.arange(q.shape[0], device=q.device) >= st.uncond_rows
            try:
                out = AM.reference_attention(q, k, v, attn.heads, kr, vr, st.strength, reads, attend=attend)
            except ValueError as e:
                raise BadInputError(str(e)) from e
        else:
            out = attend(q, k, v, attn.heads)
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


@contextlib.contextmanager
def patched_processors(unet: torch.nn.Module, make) -> Iterator[Dict[str, object]]:
    """Install ``make(name, original)`` processors (where it returns one) and restore the originals on exit.

    The UNet is the cached one another node holds, so restoring in ``finally`` is what makes this safe."""
    original = dict(unet.attn_processors)
    new = {}
    for name, proc in original.items():
        p = make(name, proc)
        new[name] = proc if p is None else p
    try:
        unet.set_attn_processor(new)
        yield new
    finally:
        unet.set_attn_processor(original)


@contextlib.contextmanager
def reference_attention(unet: torch.nn.Module, strength: float = 1.0, uncond: str = "drop",
                        state: Optional[ReferenceState] = None, keyframe: Optional[int] = None) -> Iterator[ReferenceState]:
    """Install reference processors on ``unet`` for one sampling run; yields the shared state."""
    if uncond not in ("drop", "keep"):
        raise BadInputError(f"reference uncond mode must be 'drop' or 'keep'; got {uncond!r}.")
    if not 0.0 <= strength:
        raise BadInputError(f"reference strength must be >= 0; got {strength}.")
    st = state or ReferenceState()
    st.strength, st.uncond, st.keyframe = float(strength), uncond, keyframe
    found = []

    def make(name, proc):
        if is_spatial_self_attention(name):
            found.append(name)
            return ReferenceAttnProcessor(name[: -len(".processor")], st)
        return None

    with patched_processors(unet, make):
        if not found:
            raise BadInputError("This UNet has no spatial self-attention layers to attach the reference to.")
        try:
            yield st
        finally:
            st.cache.clear()
            st.mode = "off"


def reference_unet_writer(reference_unet: torch.nn.Module, state: ReferenceState, target_names):
    """Context manager: the separate reference UNet's spatial self-attention layers write their input tokens into
    ``state`` (under the same layer names as the denoising UNet's); every one must exist in ``target_names``."""
    layers = [n[: -len(".processor")] for n in reference_unet.attn_processors if is_spatial_self_attention(n)]
    missing = [n for n in layers if n not in set(target_names)]
    if missing or not layers:
        raise BadInputError(f"The reference UNet's self-attention layers do not match the denoising UNet's (first "
                            f"unmatched: {(missing or ['none found'])[0]}); use the ReferenceNet made for this UNet (SD1.5 layout).")
    return patched_processors(reference_unet, lambda name, proc: ReferenceAttnProcessor(name[: -len(".processor")], state)
                              if is_spatial_self_attention(name) else None)


def write_reference(state: ReferenceState, run_unet, grad: bool = False) -> None:
    """Fill the cache with one pass ``run_unet()`` of the reference through the UNet (at t = 0).

    ``grad=True`` (training) keeps the cached K/V in the autograd graph, so the loss on the target also trains the
    reference path, as SCD and AnimateAnyone train their reference branch jointly."""
    state.mode = "write"
    state.cache.clear()
    t0 = time.perf_counter()
    try:
        with torch.set_grad_enabled(grad):
            run_unet()
    finally:
        state.mode = "read"
    state.writes += 1
    state.write_seconds += time.perf_counter() - t0
