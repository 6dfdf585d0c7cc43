"""Sliding context windows for long videos.

Windows of ``window`` frames start every ``stride`` frames; the last one is moved back so it ends
on the last frame, so every frame is covered and no window is shorter than the others.  At each
denoising step the model output of every window is blended into the full-length prediction with
per-frame weights that rise and fall across the window (a triangle; flat at the video's two ends)
and are normalised so the weights of each frame sum to one.  With
``window >= frames`` there is a single window with weight one: exactly single-pass sampling.

The reference is not a frame of the video, so it is "in every window" by construction: its cached
K/V (reference attention), CLIP/face tokens and, for SVD, its conditioning latent are given to each
window's UNet call.

``anchor=True`` (MimicMotion's tiling for long SVD videos) puts frame 0 into every window: the other frames are
planned in windows of ``window - 1``, each window is ``[0] + those``, and frame 0's output is the mean over the
windows, so every window's temporal layers see the first frame (the frame the conditioning image pins down).
"""
from __future__ import annotations

from typing import List, Tuple

import torch

from ..errors import BadInputError


def plan_windows(frames: int, window: int = 16, stride: int = 8, anchor: bool = False) -> List[List[int]]:
    if anchor and frames > window:
        if window < 2:
            raise BadInputError(f"An anchored window holds frame 0 and at least one other frame; got window={window}.")
        rest = plan_windows(frames - 1, window - 1, min(stride, window - 1))
        return [[0] + [i + 1 for i in w] for w in rest]
    if frames < 1:
        raise BadInputError(f"frames must be >= 1; got {frames}.")
    if window < 1 or stride < 1:
        raise BadInputError(f"window and stride must be >= 1; got window={window}, stride={stride}.")
    if stride > window:
        raise BadInputError(f"stride ({stride}) larger than window ({window}) would leave frames uncovered.")
    if window >= frames:
        return [list(range(frames))]
    starts = list(range(0, frames - window + 1, stride))
    if starts[-1] + window < frames:
        starts.append(frames - window)
    return [list(range(s, s + window)) for s in starts]


def window_weights(windows: List[List[int]], frames: int) -> List[torch.Tensor]:
    """Per-window weight vectors (len = window) such that, per frame, the weights over windows sum to 1."""
    if len(windows) == 1:
        return [torch.ones(len(windows[0]))]
    if all(w[0] == 0 for w in windows):  # anchored: frame 0 in every window, the mean of their outputs
        inner = window_weights([[i - 1 for i in w[1:]] for w in windows], frames - 1)
        return [torch.cat([torch.full((1,), 1.0 / len(windows)), iw]) for iw in inner]
    raw = []
    for w in windows:
        n = len(w)
        i = torch.arange(n, dtype=torch.float64)
        tri = torch.minimum(i + 1, n - i)  # 1, 2, …, peak, …, 2, 1: overlaps cross-fade smoothly
        if w[0] == 0:  # first window: no fade-in at the video start
            tri = torch.where(i < n / 2, torch.full_like(tri, tri.max()), tri)
        if w[-1] == frames - 1:  # last window: no fade-out at the end
            tri = torch.where(i >= n / 2, torch.full_like(tri, tri.max()), tri)
        raw.append(tri)
    total = torch.zeros(frames, dtype=torch.float64)
    for w, r in zip(windows, raw):
        total[w] += r
    return [(r / total[w]).float() for w, r in zip(windows, raw)]


def coverage(windows: List[List[int]], frames: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """(times each frame is covered, sum of blending weights per frame) — for checks and tests."""
    count = torch.zeros(frames)
    wsum = torch.zeros(frames)
    for w, wt in zip(windows, window_weights(windows, frames)):
        count[w] += 1
        wsum[w] += wt
    return count, wsum
