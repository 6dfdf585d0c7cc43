"""The attention maths of the pack's methods, once, as functions on projected q/k/v tensors ``(rows, tokens, channels)``.

Both adapters call these: the diffusers attention processors (:mod:`.reference`, :mod:`.identity`, the pack's pipe)
and the native patches on ComfyUI's core ``MODEL`` (``nodes/native.py``, through ``patches_replace["attn1"/"attn2"]``).  Nothing here
knows about either library.

* :func:`attention` — plain multi-head attention with an optional additive bias (PyTorch SDPA).
* :func:`reference_attention` — SCD's causal reference attention: the rows that read the reference attend to
  ``[K_ref, K_target]`` / ``[V_ref, V_target]`` (the reference K/V are one row, shared by every target row); the
  reference logits get ``log(strength)`` added, so strength 1 is SCD as published and strength 0 removes the
  reference exactly; rows that do not read it (the unconditional CFG half in "drop" mode) get plain self-attention.
* :func:`decoupled_cross_attention` — IP-Adapter / VividPose identity: the layer's own cross-attention plus, per extra
  token kind (CLIP-image tokens, ArcFace tokens), a scaled attention over that kind's own keys/values.
* :func:`keyframe_kv` — key-frame attention (ControlVideo / PoseCrafter): every frame's keys/values become the key
  frame's.
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

Attend = Callable[..., torch.Tensor]


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Multi-head attention of (rows, n, c) tensors; ``bias`` is added to the logits (broadcast to (rows, heads, n, m))."""
    b, n, c = q.shape
    d = c // heads
    qh, kh, vh = (x.reshape(x.shape[0], x.shape[1], heads, d).transpose(1, 2) for x in (q, k, v))
    out = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=bias, dropout_p=0.0, is_causal=False)
    return out.transpose(1, 2).reshape(b, n, c).to(q.dtype)


def reference_bias(n_ref: int, n_total: int, strength: float, dtype, device) -> Optional[torch.Tensor]:
    """Additive logit bias over ``[reference, target]`` keys: ``log(strength)`` on the reference keys (None at 1)."""
    if strength == 1.0:
        return None
    bias = torch.zeros(1, 1, 1, n_total, dtype=dtype, device=device)
    bias[..., :n_ref] = math.log(strength) if strength > 0 else float("-inf")
    return bias


def reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, k_ref: torch.Tensor,
                        v_ref: torch.Tensor, strength: float = 1.0, reads: Optional[torch.Tensor] = None,
                        attend: Attend = attention, plain: Optional[Attend] = None) -> torch.Tensor:
    """Causal reference attention for the target rows of one layer.

    ``k_ref``/``v_ref``: (1, m, c) from the reference pass.  ``reads``: bool per row, True where the row reads the
    reference (None: every row).  ``attend(q, k, v, heads, bias)`` computes the attention with the reference keys;
    ``plain(q, k, v, heads)`` the rows that do not read it (default: ``attend`` without bias), so an adapter can
    keep its host's own attention kernel there."""
    if k_ref.shape[0] != 1 or v_ref.shape[0] != 1:
        raise ValueError("The reference cache must hold one reference image (one row).")
    plain = plain or (lambda q_, k_, v_, h_: attend(q_, k_, v_, h_, None))
    rows = q.shape[0]
    if reads is None:
        a, b = 0, rows
    else:
        idx = torch.nonzero(reads.to(q.device), as_tuple=False).flatten()
        if idx.numel() == 0:
            return plain(q, k, v, heads)
        a, b = int(idx[0]), int(idx[-1]) + 1
        if b - a != idx.numel():  # not one contiguous block (core batches CFG halves as blocks; this is a fallback)
            out = plain(q, k, v, heads)
            out[idx] = reference_attention(q[idx], k[idx], v[idx], heads, k_ref, v_ref, strength, None, attend, plain)
            return out
    n = b - a
    kk = torch.cat([k_ref.to(k.dtype).expand(n, -1, -1), k[a:b]], 1)
    vv = torch.cat([v_ref.to(v.dtype).expand(n, -1, -1), v[a:b]], 1)
    read = attend(q[a:b], kk, vv, heads, reference_bias(k_ref.shape[1], kk.shape[1], strength, q.dtype, q.device))
    if n == rows:
        return read
    parts = ([plain(q[:a], k[:a], v[:a], heads)] if a else []) + [read] + \
        ([plain(q[b:], k[b:], v[b:], heads)] if b < rows else [])
    return torch.cat(parts, 0)


def decoupled_cross_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int,
                              extra: Sequence[Tuple[torch.Tensor, torch.Tensor, float]],
                              attend: Optional[Attend] = None) -> torch.Tensor:
    """``Attn(q, k, v) + Σ sᵢ·Attn(q, kᵢ, vᵢ)`` over ``extra = [(kᵢ, vᵢ, sᵢ), …]`` (each (rows, tokens, c), already
    projected by that kind's own K/V pair); a kind with scale 0 is skipped, so it costs nothing and changes nothing.
    ``attend(q, k, v, heads)`` is the host's attention kernel (default: :func:`attention`)."""
    attend = attend or (lambda q_, k_, v_, h_: attention(q_, k_, v_, h_))
    out = attend(q, k, v, heads)
    for k_i, v_i, s in extra:
        if s:
            out = out + s * attend(q, k_i.to(q.dtype), v_i.to(q.dtype), heads)
    return out


def keyframe_kv(k: torch.Tensor, v: torch.Tensor, frames: int, keyframe: int):
    """Keys/values of every frame replaced by the key frame's (rows are batch-major: row r is item r // frames)."""
    b = k.shape[0] // frames
    kf = keyframe
    k = k.view(b, frames, *k.shape[1:])[:, kf:kf + 1].expand(-1, frames, -1, -1).reshape(k.shape)
    v = v.view(b, frames, *v.shape[1:])[:, kf:kf + 1].expand(-1, frames, -1, -1).reshape(v.shape)
    return k, v
