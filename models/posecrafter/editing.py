"""PoseCrafter's latent affine editing.

For each target frame and each region (face, left hand, right hand):

1. solve the 6-DOF affine ``A`` (2×3) that maps the reference frame's landmarks to the target frame's by least
   squares, using only landmarks visible in both (at least 3, not collinear — otherwise the region is left
   unedited and the report says why);
2. warp the whole inverted reference latent with ``A`` expressed in latent coordinates (pixel / scale);
3. paste the target region's box — the bounding box of the target landmarks plus ``margin`` pixels, divided by
   the VAE scale and rounded *outward* (floor for the start, ceil for the end), clipped to the latent — from the
   warped latent into that frame's initial latent.

Coordinates are continuous with pixel centres at +0.5 (pixel ``i`` spans ``[i, i+1)``); latent cell ``j`` spans
pixels ``[s·j, s·(j+1))``.  Warping samples bilinearly (``grid_sample``, ``align_corners=False``, zeros outside).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

REGIONS = ("face", "left_hand", "right_hand")


def solve_affine(src: np.ndarray, dst: np.ndarray, visible: Optional[np.ndarray] = None) -> Tuple[Optional[np.ndarray], str]:
    """Least-squares ``A`` (2×3) with ``dst ≈ A @ [src, 1]``; (None, reason) when fewer than 3 usable points."""
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    vis = np.ones(len(src), bool) if visible is None else np.asarray(visible, bool)
    vis &= np.isfinite(src).all(1) & np.isfinite(dst).all(1)
    n = int(vis.sum())
    if n < 3:
        return None, f"only {n} landmark(s) visible in both frames (need 3)"
    X = np.concatenate([src[vis], np.ones((n, 1))], 1)
    if np.linalg.matrix_rank(X, tol=1e-6 * max(1.0, np.abs(X).max())) < 3:
        return None, "the shared landmarks are collinear"
    sol, *_ = np.linalg.lstsq(X, dst[vis], rcond=None)
    return sol.T, f"fitted on {n} landmarks"


def latent_box(points: np.ndarray, visible: np.ndarray, latent_hw: Tuple[int, int], scale: int, margin: float = 0.0):
    """(y0, y1, x0, x1) in latent cells covering the visible points' bounding box (+ margin px), rounded outward."""
    p = np.asarray(points, np.float64)[np.asarray(visible, bool)]
    if len(p) == 0:
        return None
    h, w = latent_hw
    x0, y0 = p.min(0) - margin
    x1, y1 = p.max(0) + margin
    bx0, by0 = int(np.floor(x0 / scale)), int(np.floor(y0 / scale))
    bx1, by1 = int(np.ceil(x1 / scale)), int(np.ceil(y1 / scale))
    bx0, by0, bx1, by1 = max(bx0, 0), max(by0, 0), min(bx1, w), min(by1, h)
    if bx1 <= bx0 or by1 <= by0:
        return None
    return by0, by1, bx0, bx1


def warp_latent(latent: torch.Tensor, A: np.ndarray, scale: int) -> torch.Tensor:
    """Warp (C, h, w) so that content at pixel p moves to A·p (A in pixel coordinates)."""
    C, h, w = latent.shape
    M = np.concatenate([np.asarray(A, np.float64), [[0, 0, 1]]], 0)
    S = np.diag([1.0 / scale, 1.0 / scale, 1.0])
    M_lat = S @ M @ np.linalg.inv(S)  # latent-coordinate affine
    inv = np.linalg.inv(M_lat)
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64) + 0.5, torch.arange(w, dtype=torch.float64) + 0.5, indexing="ij")
    src_x = inv[0, 0] * xs + inv[0, 1] * ys + inv[0, 2]
    src_y = inv[1, 0] * xs + inv[1, 1] * ys + inv[1, 2]
    grid = torch.stack([2 * src_x / w - 1, 2 * src_y / h - 1], -1)[None].to(latent.dtype)
    return F.grid_sample(latent[None].float(), grid.float(), mode="bilinear", padding_mode="zeros", align_corners=False)[0].to(latent.dtype)


def edit_latents(init: torch.Tensor, ref_latent: torch.Tensor, ref_landmarks: Dict[str, np.ndarray],
                 target_landmarks: List[Dict[str, np.ndarray]], scale: int, margin: float = 4.0,
                 regions=REGIONS) -> Tuple[torch.Tensor, List[Dict[str, str]], List[Dict[str, tuple]]]:
    """Apply PoseCrafter's editing to ``init`` (1, C, F, h, w).  Landmarks are (n, 3) arrays (x, y, confidence;
    confidence 0 = not visible).  Returns (edited latents, per-frame report, per-frame latent boxes)."""
    out = init.clone()
    _, C, Fr, h, w = init.shape
    if len(target_landmarks) != Fr:
        from ..errors import BadInputError

        raise BadInputError(f"Landmarks are given for {len(target_landmarks)} frames but the latent has {Fr}.")
    reports, boxes = [], []
    for f in range(Fr):
        rep, bx = {}, {}
        for r in regions:
            src, dst = ref_landmarks.get(r), target_landmarks[f].get(r)
            if src is None or dst is None:
                rep[r] = "skipped: no landmarks"
                continue
            vis = (src[:, 2] > 0) & (dst[:, 2] > 0)
            A, why = solve_affine(src[:, :2], dst[:, :2], vis)
            if A is None:
                rep[r] = f"skipped: {why}"
                continue
            box = latent_box(dst[:, :2], dst[:, 2] > 0, (h, w), scale, margin)
            if box is None:
                rep[r] = "skipped: the target box is outside the frame"
                continue
            warped = warp_latent(ref_latent, A, scale)
            y0, y1, x0, x1 = box
            out[0, :, f, y0:y1, x0:x1] = warped[:, y0:y1, x0:x1].to(out.dtype)
            rep[r] = f"edited ({why})"
            bx[r] = box
        reports.append(rep)
        boxes.append(bx)
    return out, reports, boxes
