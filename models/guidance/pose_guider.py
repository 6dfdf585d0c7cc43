"""The pose guider of Moore-AnimateAnyone and MusePose (``pose_guider.pth``), read from the released file.

A small convolutional encoder of the pose images (RGB in [0, 1]) whose output, 320 channels at the latent resolution,
is added to the denoising UNet's ``conv_in`` output (the first input block's output on core's UNet), in both CFG
halves, frame by frame.  Layout (key names and shapes in ``tests/data/released_layouts/moore_musepose_pose_guider.pth.json``,
sources in ``docs/research/released_pose_models.md`` §2): ``conv_in`` 3 → 16; ``blocks.0…5``: per level a 3×3 conv
keeping the width and a 3×3 stride-2 conv widening it (16 → 32 → 96 → 256), so the output is 1/8 of the pixels;
``conv_out`` 256 → 320 (zero-initialised in training); SiLU after every conv but the last.  VividPose's pose encoders
stand in the same place with SMPL-X renders; this is the released model the pack can read today.
"""
from __future__ import annotations

from typing import Dict

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import BadModelFileError

CHANNELS = (16, 32, 96, 256)


class ReleasedPoseGuider(nn.Module):
    def __init__(self, out_channels: int = 320, channels=CHANNELS, in_channels: int = 3):
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, channels[0], 3, padding=1)
        blocks = []
        for a, b in zip(channels[:-1], channels[1:]):
            blocks += [nn.Conv2d(a, a, 3, padding=1), nn.Conv2d(a, b, 3, padding=1, stride=2)]
        self.blocks = nn.ModuleList(blocks)
        self.conv_out = nn.Conv2d(channels[-1], out_channels, 3, padding=1)
        self.out_channels = out_channels
        self.downsample = 2 ** (len(channels) - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(frames, 3, H, W) pose images in [0, 1] → (frames, out_channels, H / 8, W / 8)."""
        x = F.silu(self.conv_in(x))
        for b in self.blocks:
            x = F.silu(b(x))
        return self.conv_out(x)


class _GEGLU(nn.Module):
    def __init__(self, dim: int, inner: int):
        super().__init__()
        self.proj = nn.Linear(dim, inner * 2)

    def forward(self, x):
        h, gate = self.proj(x).chunk(2, dim=-1)
        return h * F.gelu(gate)


class _SelfAttention(nn.Module):
    """Multi-head self-attention in the released layout: ``to_q/k/v`` without bias, ``to_out.0`` with bias."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.to_q, self.to_k, self.to_v = (nn.Linear(dim, dim, bias=False) for _ in range(3))
        self.to_out = nn.ModuleList([nn.Linear(dim, dim), nn.Identity()])

    def forward(self, x):
        from ..attention.maths import attention

        return self.to_out[0](attention(self.to_q(x), self.to_k(x), self.to_v(x), self.heads))


class _Block(nn.Module):
    """Pre-norm transformer block without cross-attention: x + attn1(norm1(x)); x + ff(norm3(x)) (GEGLU, 4×)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm1, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn1 = _SelfAttention(dim, heads)
        self.ff = nn.Module()
        self.ff.net = nn.ModuleList([_GEGLU(dim, dim * 4), nn.Identity(), nn.Linear(dim * 4, dim)])

    def forward(self, x):
        x = x + self.attn1(self.norm1(x))
        h = self.norm3(x)
        for layer in self.ff.net:
            h = layer(h)
        return x + h


class _SpatialTransformer(nn.Module):
    """Per-frame spatial transformer: GroupNorm (ε 1e-6) → 1×1 conv → one block over the H·W tokens → 1×1 conv → + input."""

    def __init__(self, channels: int, heads: int, groups: int):
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6)
        self.proj_in = nn.Conv2d(channels, channels, 1)
        self.transformer_blocks = nn.ModuleList([_Block(channels, heads)])
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x):
        b, c, h, w = x.shape
        t = self.proj_in(self.norm(x)).permute(0, 2, 3, 1).reshape(b, h * w, c)
        for blk in self.transformer_blocks:
            t = blk(t)
        return self.proj_out(t.reshape(b, h, w, c).permute(0, 3, 1, 2)) + x


class ChampGuidanceEncoder(ReleasedPoseGuider):
    """Champ's guidance encoder (``guidance_encoder_{depth,normal,semantic_map,dwpose}.pth``): the pose guider's
    convolution chain with a spatial transformer (8 heads) on the last level before ``conv_out``.  The released module
    also holds a transformer after every other block conv and a ``guidance_attention`` that its forward never calls
    (``docs/research/released_pose_models.md`` §1.2); they are kept here so the file's whole key set loads strictly,
    and, as in Champ, not run.  Images in [0, 1]; Champ sums the four encoders' outputs."""

    def __init__(self, out_channels: int = 320, channels=CHANNELS, heads: int = 8):
        super().__init__(out_channels, channels)
        att = []
        for a, b in zip(channels[:-1], channels[1:]):
            att += [_SpatialTransformer(a, heads, 1), _SpatialTransformer(b, heads, 32)]
        self.attentions = nn.ModuleList(att)
        self.guidance_attention = _SpatialTransformer(channels[-1], heads, 32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.silu(self.conv_in(x))
        for b in self.blocks:
            x = F.silu(b(x))
        return self.conv_out(self.attentions[-1](x))


CHAMP_UNUSED = ("attentions.0.", "attentions.1.", "attentions.2.", "attentions.3.", "attentions.4.", "guidance_attention.")


def load_champ_guidance_encoder(path: str) -> ChampGuidanceEncoder:
    """One of Champ's released ``guidance_encoder_*.pth`` (or the same tensors as safetensors).  The key set must be
    the encoder's; the transformers its forward never runs may be absent (Champ loads with ``strict=False``)."""
    from ..backbones.weights import read_state_dict

    sd = read_state_dict(path)
    sd = {k[len("guidance_encoder."):] if k.startswith("guidance_encoder.") else k: v for k, v in sd.items()}
    if "attentions.5.proj_in.weight" not in sd or "conv_out.weight" not in sd:
        kind = "an AnimateAnyone / MusePose pose guider (use Apply Pose Guider)" if "conv_out.weight" in sd and \
            not any(k.startswith("attentions.") for k in sd) else f"something else (keys such as {sorted(sd)[:3]})"
        raise BadModelFileError(f"{path} is not a Champ guidance encoder (no attentions.5 / conv_out); it looks like {kind}.")
    widths = (sd["conv_in.weight"].shape[0], *(sd[f"blocks.{i}.weight"].shape[0] for i in (1, 3, 5)))
    enc = ChampGuidanceEncoder(out_channels=sd["conv_out.weight"].shape[0], channels=widths)
    full = enc.state_dict()
    if set(full) - set(sd) and all(k.startswith(CHAMP_UNUSED) for k in set(full) - set(sd)):
        sd = {**{k: v for k, v in full.items() if k.startswith(CHAMP_UNUSED)}, **sd}  # the unused parts, as built
    return _strict(enc, sd, path, "Champ guidance encoder")


def load_released_pose_guider(path: str) -> ReleasedPoseGuider:
    """A released ``pose_guider.pth`` (or the same tensors as safetensors); the key set must be exactly the guider's."""
    from ..backbones.weights import read_state_dict

    sd = read_state_dict(path)
    sd = {k[len("pose_guider."):] if k.startswith("pose_guider.") else k: v for k, v in sd.items()}
    if "attentions.5.proj_in.weight" in sd:
        raise BadModelFileError(f"{path} is a Champ guidance encoder, not an AnimateAnyone / MusePose pose guider; load "
                                f"it with Apply Champ Guidance.")
    if "conv_out.weight" not in sd or sd["conv_out.weight"].ndim != 4:
        raise BadModelFileError(f"{path} is not an AnimateAnyone / MusePose pose guider (no conv_out.weight; it holds keys "
                                f"such as {sorted(sd)[:3]}).")
    return _strict(ReleasedPoseGuider(out_channels=sd["conv_out.weight"].shape[0]), sd, path, "pose guider")


class MimicMotionPoseNet(nn.Module):
    """MimicMotion's PoseNet (``pose_net.*`` in ``MimicMotion_1-1.pth``; kijai's ``mimic_motion_pose_net.safetensors``
    holds the same tensors without the prefix): pose images in [−1, 1] → 320 channels at 1/8 of the pixels, times a
    learnt ``scale``, added after the SVD UNet's ``conv_in`` in the conditional half only (``docs/research/
    released_pose_models.md`` §3).  ``conv_layers``: 3×3 3 → 3, then per level a 4×4 stride-2 conv (3 → 16 → 32 → 64)
    and a 3×3 conv, a last 3×3 conv 64 → 128, SiLU after each; ``final_proj`` 1×1 128 → 320."""

    def __init__(self, out_channels: int = 320):
        super().__init__()
        layers, c = [nn.Conv2d(3, 3, 3, padding=1), nn.SiLU()], 3
        for w in (16, 32, 64):
            layers += [nn.Conv2d(c, w, 4, stride=2, padding=1), nn.SiLU(), nn.Conv2d(w, w, 3, padding=1), nn.SiLU()]
            c = w
        layers += [nn.Conv2d(64, 128, 3, padding=1), nn.SiLU()]
        self.conv_layers = nn.Sequential(*layers)
        self.final_proj = nn.Conv2d(128, out_channels, 1)
        self.scale = nn.Parameter(torch.ones(1) * 2)
        self.out_channels, self.downsample = out_channels, 8

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(frames, 3, H, W) pose images in [−1, 1] → (frames, out_channels, H / 8, W / 8)."""
        return self.final_proj(self.conv_layers(x)) * self.scale


def _strict(module: nn.Module, sd: Dict[str, torch.Tensor], path: str, what: str) -> nn.Module:
    want = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in sd.items()}
    if got != want:
        from ..backbones.weights import layout_diff

        missing, extra, wrong = layout_diff(want, got)
        raise BadModelFileError(f"{path} does not have the {what}'s layout (missing {missing[:3]}, unexpected "
                                f"{extra[:3]}, other shapes {[(k, got[k], want[k]) for k in wrong[:2]]}).")
    module.load_state_dict({k: v.float() for k, v in sd.items()})
    return module.eval().requires_grad_(False)


def load_mimicmotion_pose_net(path: str) -> MimicMotionPoseNet:
    """The PoseNet of a MimicMotion checkpoint (``MimicMotion_1-1.pth``: its ``pose_net.*`` tensors, the UNet's are
    skipped) or of a file holding only the PoseNet."""
    from ..backbones.weights import read_state_dict

    sd = read_state_dict(path)
    if any(k.startswith("pose_net.") for k in sd):
        sd = {k[len("pose_net."):]: v for k, v in sd.items() if k.startswith("pose_net.")}
    if "final_proj.weight" not in sd or sd["final_proj.weight"].ndim != 4:
        raise BadModelFileError(f"{path} is not a MimicMotion checkpoint or PoseNet (no pose_net.final_proj.weight; it "
                                f"holds keys such as {sorted(sd)[:3]}).")
    return _strict(MimicMotionPoseNet(sd["final_proj.weight"].shape[0]), sd, path, "MimicMotion PoseNet")
