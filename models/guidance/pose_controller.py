"""VividPose-style pose controller: light encoders for pose maps, summed into the noisy latent.

Each guidance kind (``skeleton`` = DWPose/OpenPose skeleton map, ``smplx`` = SMPL-X render carrying the
reference person's shape) has its own encoder::

    conv_in 3→c0 · per stage: conv3×3 + SiLU, stride-2 conv + SiLU · one self-attention block at the
    lowest resolution · zero-initialised conv_out → latent channels

There are ``log2(vae_scale_factor)`` stride-2 stages, so the output has the latent's size.  The
encoders' outputs are summed and added to the noisy latent (the ⊕ of VividPose's figure); for SVD only
to the noisy half of the 8-channel input.  Because ``conv_out`` starts at zero, an untrained controller
leaves sampling unchanged and training starts from the base model's behaviour (ControlNet's trick).
Unlike Champ's GuidanceEncoder, the attention block that exists is the one that runs.

Weights are saved as safetensors with the architecture in the metadata (``performer.config``).
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import BadInputError

KINDS = ("skeleton", "smplx")


class _SelfAttention(nn.Module):
    def __init__(self, ch: int, heads: int):
        super().__init__()
        self.norm = nn.GroupNorm(max(g for g in (32, 16, 8, 4, 2, 1) if ch % g == 0), ch)
        self.attn = nn.MultiheadAttention(ch, heads, batch_first=True)

    def forward(self, x):
        b, c, h, w = x.shape
        t = self.norm(x).flatten(2).transpose(1, 2)
        t, _ = self.attn(t, t, t, need_weights=False)
        return x + t.transpose(1, 2).reshape(b, c, h, w)


class PoseEncoder(nn.Module):
    def __init__(self, channels: Sequence[int], out_channels: int, downsample: int, heads: int = 8, in_channels: int = 3):
        super().__init__()
        stages = int(round(math.log2(downsample)))
        if 2 ** stages != downsample:
            raise BadInputError(f"downsample must be a power of two; got {downsample}.")
        chans = list(channels)
        while len(chans) < stages + 1:
            chans.append(chans[-1])
        self.conv_in = nn.Conv2d(in_channels, chans[0], 3, padding=1)
        blocks = []
        for i in range(stages):
            blocks += [nn.Conv2d(chans[i], chans[i], 3, padding=1), nn.SiLU(),
                       nn.Conv2d(chans[i], chans[i + 1], 3, padding=1, stride=2), nn.SiLU()]
        self.blocks = nn.Sequential(*blocks)
        top = chans[stages]
        h = max([d for d in range(1, heads + 1) if top % d == 0 and top // d >= 8] or [1])
        self.attention = _SelfAttention(top, h)
        self.conv_out = nn.Conv2d(top, out_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, x):
        return self.conv_out(self.attention(self.blocks(F.silu(self.conv_in(x)))))


class PoseController(nn.Module):
    """Encoders per guidance kind; ``forward(maps)`` sums their features (maps in 0..1, (N,3,H,W))."""

    def __init__(self, latent_channels: int = 4, downsample: int = 8, channels: Sequence[int] = (16, 32, 96, 256),
                 kinds: Sequence[str] = KINDS, heads: int = 8):
        super().__init__()
        for k in kinds:
            if k not in KINDS:
                raise BadInputError(f"Unknown pose guidance kind {k!r}; known: {', '.join(KINDS)}.")
        self.config = dict(latent_channels=int(latent_channels), downsample=int(downsample),
                           channels=[int(c) for c in channels], kinds=list(kinds), heads=int(heads))
        self.encoders = nn.ModuleDict({k: PoseEncoder(channels, latent_channels, downsample, heads) for k in kinds})

    def forward(self, maps: Dict[str, Optional[torch.Tensor]]) -> Optional[torch.Tensor]:
        out = None
        for kind, x in maps.items():
            if x is None:
                continue
            if kind not in self.encoders:
                raise BadInputError(f"This pose controller has no {kind!r} encoder (it has: {', '.join(self.encoders)}).")
            p = next(self.encoders[kind].parameters())
            y = self.encoders[kind](x.to(p.device, p.dtype) * 2 - 1)
            out = y if out is None else out + y
        return out

    def save(self, path: str, extra_metadata: Optional[Dict[str, str]] = None) -> None:
        from ..backbones.weights import write_performer_file

        write_performer_file(self, path, "pose_controller", self.config, extra_metadata)


def pose_features(pc: "PoseController", skeleton: Optional[torch.Tensor], smplx: Optional[torch.Tensor],
                  scale: float = 1.0, chunk: int = 16) -> Optional[torch.Tensor]:
    """The controller's features for a video's pose maps, ``(F, C, h, w)``, or None when the controller has no encoder
    for any given kind.  Maps are ``(F, 3, H, W)`` in 0..1; encoder memory is bounded by chunks of ``chunk`` frames.
    Both adapters add exactly this to the (scaled) noisy latent: the pack's pipe and the native Apply Pose Guidance."""
    n = skeleton.shape[0] if skeleton is not None else smplx.shape[0] if smplx is not None else 0
    feats = []
    for i in range(0, n, chunk):
        maps = {"skeleton": None if skeleton is None else skeleton[i:i + chunk],
                "smplx": None if smplx is None else smplx[i:i + chunk]}
        maps = {k: v for k, v in maps.items() if v is not None and k in pc.encoders}
        if maps:
            feats.append(pc(maps) * scale)
    return torch.cat(feats) if feats else None


OUTPUT_LAYERS = ("conv_out", "final_proj")  # the zero-initialised last layer of the pack's and the released encoders


def warn_if_silent(module: nn.Module, what: str) -> bool:
    """A visible warning, and True, when every output layer of a pose encoder is all zeros: an untrained (freshly
    initialised) controller adds nothing, so the pose guidance would be ignored."""
    import logging

    outs = [m for n, m in module.named_modules() if n.split(".")[-1] in OUTPUT_LAYERS]
    silent = bool(outs) and all(all(not p.detach().any() for p in m.parameters()) for m in outs)
    scale = getattr(module, "scale", None)
    if torch.is_tensor(scale) and not scale.detach().any():
        silent = True
    if silent:
        logging.warning("%s: its output layer is all zeros (an untrained controller), so it adds nothing and the pose "
                        "guidance is ignored. Train it (Personalise on One Video) or load trained weights.", what)
    return silent


def load_pose_controller(path: str, device=None, dtype=torch.float32) -> PoseController:
    from ..backbones.weights import load_performer_module

    return load_performer_module(PoseController, path, "pose_controller", "pose controller", device, dtype)


def maps_to_tensor(images: torch.Tensor, height: int, width: int, frames: int, what: str) -> torch.Tensor:
    """ComfyUI IMAGE (N,H,W,3) → (frames,3,height,width), resized if needed; clear errors on mismatch."""
    if images.ndim != 4 or images.shape[-1] not in (3, 4):
        raise BadInputError(f"{what} must be an IMAGE batch (frames, height, width, 3); got shape {tuple(images.shape)}.")
    if images.shape[0] < frames:
        raise BadInputError(f"{what} has {images.shape[0]} frames but {frames} frames are sampled; give at least as many pose frames as frames.")
    x = images[:frames, ..., :3].permute(0, 3, 1, 2).float()
    h0, w0 = x.shape[-2:]
    if abs(w0 / h0 - width / height) > 0.01 * (width / height):
        raise BadInputError(f"{what} are {w0}×{h0} but the video (the reference image) is {width}×{height}; give maps with the "
                            "same aspect ratio (they are resized to the video size).")
    if x.shape[-2:] != (height, width):
        x = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False)
    if not torch.isfinite(x).all():
        raise BadInputError(f"{what} contains NaN or infinite values.")
    return x
