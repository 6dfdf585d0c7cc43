"""PoseCrafter inference on a personalised AnimateDiff pipe.

1. **Selection** — the training frame whose pose is nearest to the target poses (:func:`.pose.nearest_frame`).
2. **Inversion** — that frame's latent is DDIM-inverted (guidance 1, conditional prompt, ControlNet on its own
   pose map, as ControlVideo inverts) and **replicated** to every frame as the initial noise.
3. **Insertion** — the reference frame's pose is inserted as frame 0 (the key frame every frame's self-attention
   reads) and that frame is removed after sampling.
4. **Latent affine editing** — for every target frame, face and hands: the least-squares affine from the
   reference landmarks to the target's, applied to the inverted latent, whose target box is pasted into the
   frame's latent (:mod:`.editing`), at sampling step ``edit_step`` (0 = before the first step).

Each step can be switched off (the benchmark measures what each adds).  Without selection the first training
frame is used; without inversion the initial noise is seeded Gaussian noise, one map shared by all frames.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional

import numpy as np
import torch

from ..errors import BadInputError


@dataclass
class PoseCrafterSettings:
    steps: int = 25
    cfg: float = 7.5
    seed: int = 0
    prompt: str = ""
    negative: str = ""
    select: bool = True
    invert: bool = True
    insert: bool = True
    edit: bool = True
    edit_step: int = 0
    margin: float = 4.0
    invert_refine: int = 0
    stick_width: int = 4


def _landmarks(pose, frame, size_from, size_to):
    from ..pose.sequence import landmarks

    sx, sy = size_to[0] / size_from[0], size_to[1] / size_from[1]
    out = {}
    for r in ("face", "left_hand", "right_hand"):
        l = landmarks(pose, r, frame).copy()
        l[:, 0] *= sx
        l[:, 1] *= sy
        out[r] = l
    return out


def posecrafter(bb, train_images: torch.Tensor, train_poses, target_poses, s: PoseCrafterSettings,
                callback: Optional[Callable[[int, int], None]] = None):
    """Returns (latents (1, C, F, h, w) for the target frames, info dict with the chosen frame and edit reports)."""
    from ..pose.sequence import draw, nearest_frame
    from ..sampling.sampler import VideoSettings, ddim_invert, encode_video, sample_video
    from .editing import edit_latents

    if bb.family != "sd15" or bb.motion_adapter is None:
        raise BadInputError("PoseCrafter runs on an AnimateDiff pipe (SD1.5 + motion module), ideally personalised.")
    if train_images.shape[0] != train_poses.frames:
        raise BadInputError(f"training images have {train_images.shape[0]} frames but training poses have {train_poses.frames}.")
    if target_poses.frames < 1:
        raise BadInputError("There are no target poses.")
    H, W = int(train_images.shape[1]), int(train_images.shape[2])
    f = bb.vae_scale_factor
    idx = nearest_frame(train_poses, target_poses) if s.select else 0
    def maps(pose, frames=None):
        p = pose if frames is None else pose.copy(keypoints=pose.keypoints[frames])
        return torch.from_numpy(draw(p, W, H, stick_width=max(1, round(s.stick_width * W / 512)))).float() / 255.0

    ref_map = maps(train_poses, [idx])
    tgt_maps = maps(target_poses)
    all_maps = torch.cat([ref_map, tgt_maps]) if s.insert else tgt_maps
    n = all_maps.shape[0]
    off = 1 if s.insert else 0
    total = s.steps * (2 if s.invert else 1)
    done = [0]

    def cb(d, t):
        done[0] += 1
        if callback:
            callback(done[0], total)

    settings = VideoSettings(frames=n, width=W, height=H, steps=s.steps, cfg=s.cfg, seed=s.seed, prompt=s.prompt,
                             negative=s.negative, window=n, stride=n, keyframe=0 if s.insert else None)
    ref_lat = encode_video(bb, train_images[idx:idx + 1])  # (1, C, 1, h, w)
    if s.invert:
        inv_s = VideoSettings(frames=1, width=W, height=H, steps=s.steps, cfg=1.0, prompt=s.prompt, window=1, stride=1)
        x_ref = ddim_invert(bb, ref_lat, inv_s, skeleton=ref_map,
                            callback=cb, refine=s.invert_refine)
    else:
        g = torch.Generator("cpu").manual_seed(int(s.seed))
        x_ref = torch.randn(ref_lat.shape, generator=g).to(ref_lat.device, ref_lat.dtype)
    start = x_ref.repeat(1, 1, n, 1, 1)
    reports, boxes = [], []
    hook = None
    if s.edit:
        ref_lm = _landmarks(train_poses, idx, (train_poses.width, train_poses.height), (W, H))
        tgt_lm = [_landmarks(target_poses, i, (target_poses.width, target_poses.height), (W, H)) for i in range(target_poses.frames)]
        if s.insert:
            tgt_lm = [{r: np.zeros((1, 3)) for r in ("face", "left_hand", "right_hand")}] + tgt_lm  # key frame: no edit

        def _edit(i, lat):
            if i != s.edit_step:
                return lat
            edited, rep, bx = edit_latents(lat, x_ref[0, :, 0].to(lat.dtype), ref_lm, tgt_lm, f, margin=s.margin)
            reports.extend(rep[off:])
            boxes.extend(bx[off:])
            return edited

        hook = _edit
        if not 0 <= s.edit_step < s.steps:
            raise BadInputError(f"edit_step must be between 0 and {s.steps - 1}; got {s.edit_step}.")
    lat = sample_video(bb, settings, None, skeleton=all_maps, start_latents=start, callback=cb, step_hook=hook)
    info = {"reference_frame": idx, "edits": reports, "boxes": boxes, "inserted": s.insert}
    return lat[:, :, off:], info


def draw_edit_boxes(images: np.ndarray, boxes: List[dict], scale: int) -> np.ndarray:
    """Outline the edited latent boxes (face yellow, left hand cyan, right hand magenta) on uint8 frames."""
    import cv2

    out = images.copy()
    colours = {"face": (255, 220, 0), "left_hand": (0, 220, 255), "right_hand": (255, 0, 220)}
    for f, bx in enumerate(boxes[: len(out)]):
        for r, (y0, y1, x0, x1) in bx.items():
            cv2.rectangle(out[f], (x0 * scale, y0 * scale), (x1 * scale - 1, y1 * scale - 1), colours[r], 1)
    return out
